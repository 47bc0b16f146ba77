/**
 * Kernel fast path, I/O part: creates the VXLAN device and the nftables table, programs plan diffs
 * (peers: FDB, neighbour, routing table and rule; services: DNAT chains and map elements), cuts the
 * connection-tracking entries of candidates that left, and removes everything on stop and in
 * `netmanager clean` (also what a killed daemon left: found by name, mark and rule priority).
 *
 * @example
 * ```ts
 * import { KernelFastPath } from "./kernel.ts";
 * import { emptyPlan } from "./plan.ts";
 * const k = await KernelFastPath.start({ localIp: "192.168.1.1", bridge: "goProxyBridge", mtu: 1450 });
 * await k.apply(emptyPlan());
 * await k.stop();
 * ```
 */
import { mustRun, runTool, ToolError } from "../sys/command.ts";
import { logger } from "../log.ts";
import { formatIPv4, tryParseIPv4 } from "../addr/mod.ts";
import { type KernelFlow, parseKernelFlows } from "./conntrack.ts";
import { diffPlans, emptyDiff, emptyPlan, type KfastPlan } from "./plan.ts";
import { type Pin, pinKey } from "./move.ts";
import {
  hopOf,
  KFAST_DEVICE,
  KFAST_MARK_BASE,
  KFAST_MARK_MASK,
  KFAST_RULE_PREF_LOCAL,
  KFAST_RULE_PREF_PEER,
  KFAST_TABLE,
  KFAST_VNI,
  macOfNode,
  markOf,
  renderBase,
  renderDiffNft,
  serviceChain,
} from "./render.ts";

const log = logger("kfast");

/** The kernel could not be set up for the fast path (tool missing, no VXLAN, no nf_tables). */
/** `ip rule` arguments that send a peer's marked flows to its routing table (same number as the mark). */
function peerRule(op: "add" | "del", mark: string): string[] {
  return ["rule", op, "fwmark", mark, "lookup", mark, "pref", String(KFAST_RULE_PREF_PEER)];
}

export class KernelFastPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KernelFastPathError";
  }
}

/** Options of {@link KernelFastPath.start}. */
export interface KernelFastPathOptions {
  /** This node's underlay IPv4 (VXLAN source; the device MAC derives from it). */
  localIp: string;
  /** The instances' bridge. */
  bridge: string;
  /** MTU of the device (the instances' MTU: underlay − 50). */
  mtu: number;
  /** VXLAN UDP port (default 4789). */
  port?: number;
  /** Device name (default nmkfast0). */
  device?: string;
}

/** What is programmed, for `status`. */
export interface KernelFastPathStatus {
  device: string;
  port: number;
  peers: string[];
  services: string[];
  /** Commands that failed since start (the plan is retried from scratch after one). */
  errors: number;
  /** Running TUN flows moved onto the kernel path since start, and the pins in place now. */
  moved: number;
  pins: number;
  /** tc mode: new flows the kernel decided itself (first packets never on the TUN) since the programs loaded. */
  decided?: number;
  /** Packets and bytes into (`tx`) and out of (`rx`) the device, as last read from the kernel. */
  counters: { tx: { packets: number; bytes: number }; rx: { packets: number; bytes: number } };
  /**
   * tc mode only: what the receive program (`nm_kf_in`) did with tunnel datagrams to our port besides
   * unwrapping them (bpf/kfast.c STAT_IN_*): `gso` of the unwrapped were GSO super-packets; the
   * others went on to userspace — from no known peer, no plain inner TCP/UDP, flow not in the map
   * (`missGso` of them GSO), no device to deliver to, several datagrams in one skb (`train`).
   * `veth`: of the unwrapped, those handed straight to the instance's veth (`nm_kf_locals`, learnt from
   * the bridge's neighbour and FDB tables); the rest crossed the bridge device (software GSO there).
   */
  rxReasons?: {
    gso: number;
    noPeer: number;
    noFlow: number;
    miss: number;
    missGso: number;
    noDev: number;
    train: number;
    veth?: number;
  };
}

/**
 * The kernel fast path of one node. {@link apply} is serialized (each call waits for the previous
 * one) and programs only the difference to what is in the kernel.
 */
export class KernelFastPath {
  readonly device: string;
  readonly port: number;
  #current: KfastPlan = emptyPlan();
  #index = new Map<string, number>();
  #nextIndex = 1;
  #queue: Promise<void> = Promise.resolve();
  #errors = 0;
  #stopped = false;
  #counters = { tx: { packets: 0, bytes: 0 }, rx: { packets: 0, bytes: 0 } };
  #countersAt = 0;
  /** Pinned flows (key → pin and when it was made, ms). */
  #pins = new Map<string, { pin: Pin; at: number }>();
  #moved = 0;

  private constructor(device: string, port: number) {
    this.device = device;
    this.port = port;
  }

  /** Removes leftovers, creates the device and the empty table. Throws {@link KernelFastPathError}. */
  static async start(o: KernelFastPathOptions): Promise<KernelFastPath> {
    const device = o.device ?? KFAST_DEVICE;
    const port = o.port ?? 4789;
    await cleanKernelFastPath(device);
    try {
      await mustRun("ip", [
        "link",
        "add",
        device,
        "type",
        "vxlan",
        "id",
        String(KFAST_VNI),
        "local",
        o.localIp,
        "dstport",
        String(port),
        "nolearning",
      ]);
      await mustRun("ip", [
        "link",
        "set",
        device,
        "address",
        macOfNode(o.localIp),
        "mtu",
        String(o.mtu),
        "up",
      ]);
      // Flows arrive with sources (InstanceIPs) only reachable through the marks' tables.
      await Deno.writeTextFile(`/proc/sys/net/ipv4/conf/${device}/rp_filter`, "0");
      await mustRun("ip", [
        "rule",
        "add",
        "fwmark",
        `0x${KFAST_MARK_BASE.toString(16)}/0x${KFAST_MARK_MASK.toString(16)}`,
        "iif",
        "lo",
        "lookup",
        "main",
        "pref",
        String(KFAST_RULE_PREF_LOCAL),
      ]);
      await mustRun("nft", ["-f", "-"], { stdin: renderBase({ device, bridge: o.bridge, port }) });
      // Per-flow packet and byte counters in connection tracking (this namespace), for `--flows`.
      await Deno.writeTextFile("/proc/sys/net/netfilter/nf_conntrack_acct", "1").catch(() => {});
    } catch (e) {
      await cleanKernelFastPath(device);
      throw new KernelFastPathError(`kernel fast path unavailable: ${e instanceof Error ? e.message : e}`);
    }
    log.info("kernel fast path ready", { device, port });
    return new KernelFastPath(device, port);
  }

  /** Programs `plan` (only what differs from the kernel's state); serialized. */
  apply(plan: KfastPlan): Promise<void> {
    const run = this.#queue.then(() => this.#apply(plan));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #apply(next: KfastPlan): Promise<void> {
    if (this.#stopped) return;
    const d = diffPlans(this.#current, next);
    if (emptyDiff(d)) return;
    try {
      for (const p of d.peersAdded) {
        if (!this.#index.has(p)) this.#index.set(p, this.#nextIndex++);
        await this.#peerUp(p, this.#index.get(p) ?? 0);
      }
      // Pins to instances no longer among their service's kernel candidates go with the change.
      const unpin = [...this.#pins].filter(([, { pin }]) => !next.services.get(pin.dst)?.includes(pin.chosen))
        .map(([k]) => k);
      const nft = renderDiffNft(d, (p) => this.#index.get(p) ?? 0) +
        unpin.map((k) => `delete element ip ${KFAST_TABLE} pin4 { ${k} }\n`).join("");
      if (nft) await mustRun("nft", ["-f", "-"], { stdin: nft });
      for (const k of unpin) this.#pins.delete(k);
      for (const p of d.peersGone) {
        await this.#peerDown(p, this.#index.get(p) ?? 0);
        this.#index.delete(p);
      }
      // Flows pinned to candidates that left: their conntrack entries go, so their next packet is a
      // new flow (another candidate, or the TUN path).
      for (const t of d.cut) await this.#cutTo(t);
      this.#current = next;
      if (d.servicesSet.length + d.servicesGone.length > 0) {
        log.debug("kernel fast path programmed", {
          services: next.services.size,
          changed: d.servicesSet.length,
          gone: d.servicesGone.length,
          peers: next.peers.length,
        });
      }
    } catch (e) {
      this.#errors++;
      log.warn("kernel fast path programming failed: rebuilding it", { error: String(e) });
      await this.#rebuild();
      throw e;
    }
  }

  /** After a failed step: empty table and peers, so that the next plan is programmed whole. */
  async #rebuild(): Promise<void> {
    for (const [p, i] of this.#index) await this.#peerDown(p, i).catch(() => {});
    this.#index.clear();
    const t = `ip ${KFAST_TABLE}`;
    this.#pins.clear();
    const flush = ["svc", "svc_addrs", "snat4", "peer_of", "mac_mark", "peer_ips", "pin4"].map((m) =>
      `flush ${m === "svc_addrs" || m === "peer_ips" ? "set" : "map"} ${t} ${m}`
    );
    await runTool("nft", ["-f", "-"], { stdin: flush.join("\n") + "\n" });
    for (const a of this.#current.services.keys()) {
      await runTool("nft", ["delete", "chain", "ip", KFAST_TABLE, serviceChain(a)]);
    }
    this.#current = emptyPlan();
  }

  /**
   * Moves running TUN flows onto the kernel path (serialized with {@link apply}): pins each to its
   * instance, then deletes its un-NATed connection-tracking entry (only that one: reply source = the
   * ServiceIP), so that its next packet opens a kernel entry the pin translates. Returns how many moved.
   */
  move(flows: readonly Pin[], now = Date.now()): Promise<number> {
    const run = this.#queue.then(() => this.#move(flows, now));
    this.#queue = run.then(() => {}, () => {});
    return run;
  }

  async #move(flows: readonly Pin[], now: number): Promise<number> {
    if (this.#stopped) return 0;
    const todo = new Map<string, Pin>();
    for (const p of flows) {
      const k = pinKey(p);
      if (!this.#pins.has(k) && this.#current.services.get(p.dst)?.includes(p.chosen)) todo.set(k, p);
    }
    if (todo.size === 0) return 0;
    const t = `ip ${KFAST_TABLE}`;
    const add = [...todo].map(([k, p]) => `add element ${t} pin4 { ${k} : ${formatIPv4(p.chosen)} }\n`);
    await mustRun("nft", ["-f", "-"], { stdin: add.join("") });
    for (const [k, p] of todo) this.#pins.set(k, { pin: p, at: now });
    for (const p of todo.values()) {
      const r = await runTool("conntrack", [
        "-D",
        "-p",
        String(p.proto),
        "-s",
        formatIPv4(p.src),
        "-d",
        formatIPv4(p.dst),
        "--sport",
        String(p.sport),
        "--dport",
        String(p.dport),
        "--reply-src",
        formatIPv4(p.dst),
      ]);
      if (r.code !== 0 && r.code !== 1) log.debug("conntrack -D of a moved flow failed", { error: r.stderr });
    }
    this.#moved += todo.size;
    log.debug("TUN flows moved onto the kernel path", { flows: todo.size });
    return todo.size;
  }

  /**
   * Removes pins whose flow ended: no connection-tracking entry of ours with that original tuple,
   * and older than `graceMs` (a moved flow's next packet may still be on its way).
   */
  gcPins(now = Date.now(), graceMs = 10_000): Promise<number> {
    const run = this.#queue.then(() => this.#gcPins(now, graceMs));
    this.#queue = run.then(() => {}, () => {});
    return run;
  }

  async #gcPins(now: number, graceMs: number): Promise<number> {
    const old = [...this.#pins].filter(([, v]) => now - v.at >= graceMs);
    if (old.length === 0 || this.#stopped) return 0;
    const r = await runTool("conntrack", ["-L", "-m", String(KFAST_MARK_BASE)]);
    if (r.code !== 0) return 0;
    const live = new Set<string>();
    for (const f of parseKernelFlows(r.stdout, () => "")) {
      const src = tryParseIPv4(f.src);
      const dst = tryParseIPv4(f.dialled);
      if (src === undefined || dst === undefined) continue;
      live.add(pinKey({ proto: f.proto, src, sport: f.sport, dst, dport: f.dport }));
    }
    const gone = old.filter(([k]) => !live.has(k)).map(([k]) => k);
    if (gone.length === 0) return 0;
    const t = `ip ${KFAST_TABLE}`;
    const del = gone.map((k) => `delete element ${t} pin4 { ${k} }\n`).join("");
    await mustRun("nft", ["-f", "-"], { stdin: del });
    for (const k of gone) this.#pins.delete(k);
    return gone.length;
  }

  /** Keys of the pinned flows. */
  pinned(): ReadonlySet<string> {
    return new Set(this.#pins.keys());
  }

  async #peerUp(p: string, i: number): Promise<void> {
    const mac = macOfNode(p);
    const mark = String(markOf(i));
    await mustRun("bridge", ["fdb", "replace", mac, "dev", this.device, "dst", p]);
    await mustRun("ip", [
      "neigh",
      "replace",
      hopOf(i),
      "lladdr",
      mac,
      "dev",
      this.device,
      "nud",
      "permanent",
    ]);
    await mustRun("ip", [
      "route",
      "replace",
      "default",
      "via",
      hopOf(i),
      "dev",
      this.device,
      "onlink",
      "table",
      mark,
    ]);
    await runTool("ip", peerRule("del", mark));
    await mustRun("ip", peerRule("add", mark));
    log.info("kernel fast path to peer", { peer: p, mark: `0x${markOf(i).toString(16)}` });
  }

  async #peerDown(p: string, i: number): Promise<void> {
    const mark = String(markOf(i));
    await runTool("ip", peerRule("del", mark));
    await runTool("ip", ["route", "flush", "table", mark]);
    await runTool("ip", ["neigh", "del", hopOf(i), "dev", this.device]);
    await runTool("bridge", ["fdb", "del", macOfNode(p), "dev", this.device, "dst", p]);
    // Flows that peer's node sent us: their replies would have no route now.
    await runTool("conntrack", ["-D", "-m", mark]);
    log.info("kernel fast path to peer removed", { peer: p });
  }

  async #cutTo(nsip: number): Promise<void> {
    const r = await runTool("conntrack", ["-D", "--reply-src", formatIPv4(nsip)]);
    // 1: nothing matched (fine); anything else is worth a warning.
    if (r.code !== 0 && r.code !== 1) throw new ToolError("conntrack -D", r);
  }

  /** The flows this node originated through the kernel path, from connection tracking. */
  async flows(): Promise<KernelFlow[]> {
    const r = await runTool("conntrack", ["-L", "-m", String(KFAST_MARK_BASE)]);
    if (r.code !== 0) return [];
    const remote = this.#current.remote;
    return parseKernelFlows(r.stdout, (nsip) => {
      const a = tryParseIPv4(nsip);
      return a === undefined ? "" : remote.get(a) ?? "local";
    });
  }

  /** Reads the kernel's counters (at most once a second; `status` shows the last reading). */
  async readCounters(now = Date.now()): Promise<void> {
    if (now - this.#countersAt < 1000 || this.#stopped) return;
    this.#countersAt = now;
    const r = await runTool("nft", ["-j", "list", "counters", "table", "ip", KFAST_TABLE]);
    if (r.code !== 0) return;
    try {
      const j = JSON.parse(r.stdout) as {
        nftables?: Array<{ counter?: { name: string; packets: number; bytes: number } }>;
      };
      for (const o of j.nftables ?? []) {
        const c = o.counter;
        if (c && (c.name === "tx" || c.name === "rx")) {
          this.#counters[c.name] = { packets: c.packets, bytes: c.bytes };
        }
      }
    } catch {
      // an unreadable answer keeps the last reading
    }
  }

  /** What is programmed. */
  status(): KernelFastPathStatus {
    void this.readCounters();
    return {
      counters: structuredClone(this.#counters),
      device: this.device,
      port: this.port,
      peers: [...this.#current.peers],
      services: [...this.#current.services.keys()].map(formatIPv4),
      errors: this.#errors,
      moved: this.#moved,
      pins: this.#pins.size,
    };
  }

  /** The plan in the kernel now. */
  get plan(): KfastPlan {
    return this.#current;
  }

  /** Removes everything (device, table, rules, routing tables, our conntrack entries). */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#queue;
    await cleanKernelFastPath(this.device);
  }
}

/** What {@link cleanKernelFastPath} removed. */
export interface KfastCleanReport {
  table: boolean;
  device: boolean;
  rules: number;
}

/**
 * Removes every trace of the fast path in this network namespace: the nft table, the device, the
 * rules with our priorities and marks and their routing tables, and connection-tracking entries
 * that carry our marks. Idempotent; for shutdown, start (leftovers of a killed daemon) and `clean`.
 */
export async function cleanKernelFastPath(device = KFAST_DEVICE): Promise<KfastCleanReport> {
  const table = (await runTool("nft", ["delete", "table", "ip", KFAST_TABLE])).code === 0;
  const dev = (await runTool("ip", ["link", "del", device])).code === 0;
  let rules = 0;
  const r = await runTool("ip", ["-j", "rule", "show"]);
  if (r.code === 0) {
    let list: Array<{ priority?: number; fwmark?: string; fwmask?: string }> = [];
    try {
      list = JSON.parse(r.stdout);
    } catch {
      list = [];
    }
    for (const rule of list) {
      const mark = rule.fwmark ? Number(rule.fwmark) : NaN;
      if (
        (rule.priority === KFAST_RULE_PREF_LOCAL || rule.priority === KFAST_RULE_PREF_PEER) &&
        ((mark & KFAST_MARK_MASK) >>> 0) === KFAST_MARK_BASE
      ) {
        const sel = rule.fwmask ? `${rule.fwmark}/${rule.fwmask}` : rule.fwmark ?? "";
        const del = await runTool("ip", ["rule", "del", "pref", String(rule.priority), "fwmark", sel]);
        if (del.code === 0) rules++;
        if (rule.priority === KFAST_RULE_PREF_PEER) {
          await runTool("ip", ["route", "flush", "table", String(mark)]);
        }
      }
    }
  }
  if (table || dev || rules > 0) {
    await runTool("conntrack", ["-D", "-m", `${KFAST_MARK_BASE}/${KFAST_MARK_MASK}`]);
  }
  return { table, device: dev, rules };
}
