/**
 * The `nm_kf_locals` entries of the tc fast path (issue 16): for each local instance's namespace IP,
 * the bridge port (host-side veth) its MAC sits behind, its MAC and the bridge's MAC. With an entry,
 * nm_kf_in hands a decapsulated packet straight to that veth (bpf_redirect); without one it goes
 * through the bridge device, which has no `hw_enc_features`: a GSO super-packet that still carries
 * the tunnel's GSO state (skb->encapsulation; kernels before BPF_F_ADJ_ROOM_DECAP_L4_UDP cannot clear
 * it) is then segmented and checksummed in software — measured: TCP 1 stream 0.41–0.51× kernel VXLAN
 * through the bridge, 0.91× through the veth (docs in README, Data plane → kernel fast path).
 *
 * Learnt from the kernel's own tables (so instances the daemon did not create — e.g. the benchmark's —
 * count too): the bridge's neighbour entry of the IP (its MAC) and the bridge's forwarding database
 * (the port of that MAC). No entry yet (no neighbour): the bridge path, until a later look.
 *
 * @example
 * ```ts
 * import { localsOf } from "./tc_locals.ts";
 * const l = localsOf(["10.19.1.2"], [{ dst: "10.19.1.2", lladdr: "02:00:00:00:00:02", state: ["REACHABLE"] }],
 *   [{ mac: "02:00:00:00:00:02", ifname: "veth1" }], new Map([["veth1", 7]]), "02:00:00:00:00:01");
 * // l.get("10.19.1.2") → { ifindex: 7, mac: "02:00:00:00:00:02", gwMac: "02:00:00:00:00:01" }
 * ```
 */
import { z } from "zod";
import { runTool } from "../sys/command.ts";
import type { TcLocal } from "./tc_maps.ts";

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const Neigh = z.object({
  dst: z.string(),
  lladdr: z.string().optional(),
  state: z.array(z.string()).optional(),
});
const Fdb = z.object({
  mac: z.string(),
  ifname: z.string().optional(),
  flags: z.array(z.string()).optional(),
});
const Link = z.object({
  ifindex: z.number().int().positive(),
  ifname: z.string(),
  address: z.string().optional(),
});

/** A neighbour entry (`ip -j neigh`). */
export type NeighEntry = z.infer<typeof Neigh>;
/** A forwarding database entry (`bridge -j fdb`). */
export type FdbEntry = z.infer<typeof Fdb>;

/**
 * The locals entries of `nsips` (pure): a usable neighbour MAC (not FAILED / INCOMPLETE) that the FDB
 * places on a port in `ports` (name → ifindex). IPs without one are left out (the bridge path).
 */
export function localsOf(
  nsips: readonly string[],
  neigh: readonly NeighEntry[],
  fdb: readonly FdbEntry[],
  ports: ReadonlyMap<string, number>,
  bridgeMac: string,
): Map<string, TcLocal> {
  const out = new Map<string, TcLocal>();
  if (!MAC.test(bridgeMac)) return out;
  const want = new Set(nsips);
  const portOf = new Map<string, number>();
  for (const f of fdb) {
    const ifindex = f.ifname === undefined ? undefined : ports.get(f.ifname);
    if (ifindex !== undefined && !f.flags?.includes("self")) portOf.set(f.mac.toLowerCase(), ifindex);
  }
  for (const n of neigh) {
    if (!want.has(n.dst) || !n.lladdr) continue;
    if (n.state?.some((s) => s === "FAILED" || s === "INCOMPLETE")) continue;
    const mac = n.lladdr.toLowerCase();
    const ifindex = portOf.get(mac);
    if (!MAC.test(mac) || ifindex === undefined) continue;
    out.set(n.dst, { ifindex, mac, gwMac: bridgeMac });
  }
  return out;
}

async function json(cmd: string, args: string[]): Promise<unknown[]> {
  const r = await runTool(cmd, args);
  if (r.code !== 0 || r.stdout.trim() === "") return [];
  const v: unknown = JSON.parse(r.stdout);
  return Array.isArray(v) ? v : [];
}

function parsed<T>(schema: z.ZodType<T>, rows: unknown[]): T[] {
  const out: T[] = [];
  for (const r of rows) {
    const p = schema.safeParse(r);
    if (p.success) out.push(p.data);
  }
  return out;
}

/** Reads the bridge's neighbours, FDB and ports and returns the locals entries of `nsips`. */
export async function resolveLocals(bridge: string, nsips: readonly string[]): Promise<Map<string, TcLocal>> {
  if (nsips.length === 0) return new Map();
  const [neigh, fdb, ports, br] = await Promise.all([
    json("ip", ["-j", "-4", "neigh", "show", "dev", bridge]),
    json("bridge", ["-j", "fdb", "show", "br", bridge]),
    json("ip", ["-j", "link", "show", "master", bridge]),
    json("ip", ["-j", "link", "show", "dev", bridge]),
  ]);
  const portMap = new Map(parsed(Link, ports).map((l) => [l.ifname, l.ifindex]));
  const bridgeMac = parsed(Link, br)[0]?.address?.toLowerCase() ?? "";
  return localsOf(nsips, parsed(Neigh, neigh), parsed(Fdb, fdb), portMap, bridgeMac);
}
