/**
 * iptables rule text for a node (pure). netmanager keeps all its rules in its own chains, so set-up
 * is one idempotent restore (declaring a chain in `iptables-restore --noflush` empties it, then we
 * refill it) and clean-up removes exactly what it added:
 *
 * | table  | chain             | hooked from          | holds                                   |
 * |--------|-------------------|----------------------|-----------------------------------------|
 * | filter | `<NAT>-FWD`       | FORWARD (first)      | bridge accept rules, per-instance rules |
 * | nat    | `<NAT>` (OAKESTRA)| PREROUTING, OUTPUT   | port-mapping DNAT                       |
 * | nat    | `<NAT>-POST`      | POSTROUTING          | MASQUERADE of the node subnet           |
 *
 * @example
 * ```ts
 * import { parsePortMappings } from "./ports.ts";
 * const names = chainNames("OAKESTRA", "goProxyBridge");
 * const ports = parsePortMappings("8080:80", 50103);
 * restoreScript([{ table: "nat", lines: dnatRules(4, ports, "10.18.0.66").map(add(names.nat)) }]);
 * // "*nat\n-A OAKESTRA -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 -j DNAT
 * //  --to-destination 10.18.0.66:80\nCOMMIT\n"
 * ```
 */
import type { Family } from "../sys/iptables.ts";
import type { PortMapping } from "./ports.ts";

/** The chain and interface names one node uses. */
export interface ChainNames {
  bridge: string;
  nat: string;
  fwd: string;
  post: string;
  /** The TUN device, when the data plane runs. */
  tun?: string;
}

/** Derives the chain names from the configured NAT chain name. */
export function chainNames(natChain: string, bridge: string, tun?: string): ChainNames {
  return { bridge, nat: natChain, fwd: `${natChain}-FWD`, post: `${natChain}-POST`, tun };
}

/** A rule body (everything after `-A CHAIN`). */
export type RuleBody = string;

/** One section of a restore script. */
export interface Section {
  table: "filter" | "nat";
  /** Chains to declare (emptied) before the lines. */
  declare?: string[];
  lines: string[];
}

/** Prefixes rule bodies with `-A chain`. */
export function add(chain: string): (body: RuleBody) => string {
  return (body) => `-A ${chain} ${body}`;
}

/** Prefixes rule bodies with `-D chain`. */
export function del(chain: string): (body: RuleBody) => string {
  return (body) => `-D ${chain} ${body}`;
}

/** Renders sections as an `iptables-restore` script. */
export function restoreScript(sections: Section[]): string {
  let out = "";
  for (const s of sections) {
    if ((s.declare?.length ?? 0) === 0 && s.lines.length === 0) continue;
    out += `*${s.table}\n`;
    for (const c of s.declare ?? []) out += `:${c} - [0:0]\n`;
    for (const l of s.lines) out += l + "\n";
    out += "COMMIT\n";
  }
  return out;
}

/** Node-level forward rules (filter `<NAT>-FWD`). */
export function nodeForwardRules(n: ChainNames): RuleBody[] {
  const rules = [`-i ${n.bridge} -j ACCEPT`, `-o ${n.bridge} -j ACCEPT`];
  if (n.tun) rules.push(`-i ${n.tun} -j ACCEPT`, `-o ${n.tun} -j ACCEPT`);
  return rules;
}

/** Node-level masquerade rules (nat `<NAT>-POST`): the subnet leaving the overlay is NATed. */
export function nodeMasqueradeRules(family: Family, subnet: string): RuleBody[] {
  const overlay = family === 4 ? "10.16.0.0/12" : "fc00::/7";
  return [`-s ${subnet} ! -d ${overlay} -j MASQUERADE`];
}

/** Per-instance forward rules (filter `<NAT>-FWD`), as Oakestra adds them (IPv4). */
export function instanceForwardRules(n: ChainNames, hostVeth: string): RuleBody[] {
  return [`-i ${hostVeth} -o ${n.bridge} -j ACCEPT`, `-i ${n.bridge} -o ${hostVeth} -j ACCEPT`];
}

/**
 * Port-mapping DNAT rules (nat `<NAT>`): traffic to a local address of the node on the host port
 * goes to the instance. Unlike Oakestra we match only local destinations, so an instance's own
 * outgoing connections to port 80 elsewhere are not captured.
 */
export function dnatRules(family: Family, ports: readonly PortMapping[], nsip: string): RuleBody[] {
  const to = family === 4 ? nsip : `[${nsip}]`;
  return ports.map((p) =>
    `-p ${p.proto} -m addrtype --dst-type LOCAL -m ${p.proto} --dport ${p.hostPort} -j DNAT --to-destination ${to}:${p.containerPort}`
  );
}

/** The jump rules hooking our chains into the built-in ones. */
export function jumpRules(n: ChainNames): Array<{ table: "filter" | "nat"; chain: string; body: RuleBody }> {
  return [
    { table: "filter", chain: "FORWARD", body: `-j ${n.fwd}` },
    { table: "nat", chain: "PREROUTING", body: `-j ${n.nat}` },
    { table: "nat", chain: "OUTPUT", body: `-j ${n.nat}` },
    { table: "nat", chain: "POSTROUTING", body: `-j ${n.post}` },
  ];
}

/** Jump rules missing from an `iptables-save` dump (both tables concatenated). */
export function missingJumps(n: ChainNames, saved: string): Array<{ table: "filter" | "nat"; line: string }> {
  const have = new Set(saved.split("\n").map((l) => l.trim()));
  return jumpRules(n)
    .filter((j) => !have.has(`-A ${j.chain} ${j.body}`))
    .map((j) => ({
      table: j.table,
      line: j.chain === "FORWARD" ? `-I FORWARD 1 ${j.body}` : `-A ${j.chain} ${j.body}`,
    }));
}

/** True when a chain exists in an `iptables-save` dump. */
export function chainExists(saved: string, chain: string): boolean {
  return saved.split("\n").some((l) => l.startsWith(`:${chain} `));
}

/** Script removing our jumps (those present) and chains (those present) from a dump. */
export function teardownScript(n: ChainNames, saved: string): string {
  const lines = new Set(saved.split("\n").map((l) => l.trim()));
  const filter: string[] = [];
  const nat: string[] = [];
  for (const j of jumpRules(n)) {
    const rule = `-A ${j.chain} ${j.body}`;
    if (lines.has(rule)) (j.table === "filter" ? filter : nat).push(`-D ${j.chain} ${j.body}`);
  }
  for (const c of [n.fwd]) if (chainExists(saved, c)) filter.push(`-F ${c}`, `-X ${c}`);
  for (const c of [n.nat, n.post]) if (chainExists(saved, c)) nat.push(`-F ${c}`, `-X ${c}`);
  return restoreScript([{ table: "filter", lines: filter }, { table: "nat", lines: nat }]);
}
