/**
 * Kernel fast path, tc mode (issue 16, design (a); `KernelFastPath: "tc"`), I/O part: loads the tc
 * programs (src/kfast/tc_loader.ts) at the tcx ingress of the instances' bridge and of the underlay
 * device (`nm_kf_out` also at each local instance's host veth once learnt: sends skip the bridge), and
 * programs their maps: peers that announced the capability, and per flow the two entries
 * of src/kfast/tc_flows.ts once the workers decided the flow on the TUN (`move`, called by the
 * controller's sweep). Entries of a flow go when its chosen instance stops being a candidate of the
 * dialled address (undeploy: cut at once) or when their kernel counters stay still for `idleMs`.
 * A killed daemon leaves the programs and maps working; the next start adopts them (its flows are
 * read back from the egress map) or, when it cannot, removes them. `stop` removes everything.
 *
 * @example
 * ```ts
 * import { TcFastPath } from "./tc_path.ts";
 * import { emptyPlan } from "./plan.ts";
 * const k = await TcFastPath.start({ localIp: "192.168.1.1", localPort: 50103, bridge: "goProxyBridge",
 *   peerPort: () => 50103 });
 * await k.apply(emptyPlan());
 * await k.stop();
 * ```
 */
import { formatIPv4, tryParseIPv4 } from "../addr/mod.ts";
import { cstr, libc } from "../../ffi/libc.ts";
import { logger } from "../log.ts";
import { runTool } from "../sys/command.ts";
import type { KernelFlow } from "./conntrack.ts";
import { KernelFastPathError, type KernelFastPathStatus } from "./kernel.ts";
import { type Pin, pinKey } from "./move.ts";
import { emptyPlan, type KfastPlan } from "./plan.ts";
import { tcEntriesOf, type TcFlowEntries, type TcNodeView } from "./tc_flows.ts";
import {
  diffEntries,
  hexOf,
  type MapEntries,
  readEntries,
  snatEntriesOf,
  STAT_DECIDED,
  svcEntriesOf,
} from "./tc_services.ts";
import { cleanTcPrograms, type TcAttachments, TcPrograms } from "./tc_loader.ts";
import { resolveLocals } from "./tc_locals.ts";
import {
  decodeCounters,
  decodeEgress,
  decodeFlowKey,
  decodeIngressKernelPackets,
  EGRESS_PEER_READY,
  encodeConfig,
  encodeEgress,
  encodeFlowKey,
  encodeIngress,
  encodeLocal,
  ipKey,
  setEgressFlags,
  sumPerCpu,
  u32,
} from "./tc_maps.ts";

const log = logger("kfast");
/** How often the locals entries are looked up while a local instance has none (its neighbour entry not there yet). */
const LOCALS_MS = 1000;
/** … and once every local instance has one (a MAC that moved to another port without a table change). */
const LOCALS_IDLE_MS = 10_000;

/** Options of {@link TcFastPath.start}. */
export interface TcFastPathOptions {
  /** This node's underlay IPv4 and tunnel port (outer source of what the kernel sends). */
  localIp: string;
  localPort: number;
  /** The instances' bridge (where their packets enter the node). */
  bridge: string;
  /** A peer's tunnel port, from the workers' peer view (undefined: not known yet). */
  peerPort: (ip: string) => number | undefined;
  /** A flow's entries go after this long without a packet either way (ms, default 30 s). */
  idleMs?: number;
}

interface PinState {
  pin: Pin;
  e: TcFlowEntries;
  /** Packets both ways at the last look, and when they last changed (ms). */
  packets: number;
  changedAt: number;
  /** Read back from a previous daemon's maps: kept until a plan names its service. */
  adopted: boolean;
  /** The peer carries the flow in its kernel too (`EGRESS_PEER_READY` set). */
  ready: boolean;
}

function ifindexOf(dev: string): number {
  const i = libc.if_nametoindex(cstr(dev));
  if (i <= 0) throw new KernelFastPathError(`device ${dev} not found`);
  return i;
}

/** The device holding `ip` (the underlay). */
async function deviceOf(ip: string): Promise<string> {
  const r = await runTool("ip", ["-j", "-4", "addr", "show"]);
  if (r.code !== 0) throw new KernelFastPathError(`ip addr: ${r.stderr.trim()}`);
  const links = JSON.parse(r.stdout) as { ifname: string; addr_info?: { local?: string }[] }[];
  const l = links.find((x) => x.addr_info?.some((a) => a.local === ip));
  if (!l) throw new KernelFastPathError(`no device holds ${ip}`);
  return l.ifname;
}

/** The tc fast path of one node. Map updates are synchronous syscalls; plan steps are serialized. */
export class TcFastPath {
  readonly #p: TcPrograms;
  readonly #o: TcFastPathOptions;
  readonly #at: TcAttachments;
  readonly device: string;
  #current: KfastPlan = emptyPlan();
  #pins = new Map<string, PinState>();
  /** Peers in the peers map, with the port given. */
  #peers = new Map<string, number>();
  /** Underlay ifindex towards each peer (route lookups, cached). */
  #routes = new Map<string, number>();
  #queue: Promise<void> = Promise.resolve();
  #moved = 0;
  #errors = 0;
  /** What nm_kf_svc / nm_kf_snat hold (first packets decided in the kernel, src/kfast/tc_services.ts). */
  #svc: MapEntries = new Map();
  #snat: MapEntries = new Map();
  /** What nm_kf_locals holds (delivery straight to an instance's veth, src/kfast/tc_locals.ts). */
  #locals: MapEntries = new Map();
  #localsAt = 0;
  /** The last look found every local instance (then the look waits LOCALS_IDLE_MS, or a change of them). */
  #localsComplete = false;
  /** Instances' host veths with `nm_kf_out` attached too (their packets skip the bridge on send). */
  #outVeths = new Set<number>();
  /** The programs' decided counter at the last {@link #learn}. */
  #decidedSeen = -1;
  #stopped = false;

  private constructor(p: TcPrograms, o: TcFastPathOptions, at: TcAttachments, device: string) {
    this.#p = p;
    this.#o = o;
    this.#at = at;
    this.device = device;
  }

  /** Adopts a previous daemon's programs or loads and attaches new ones. Throws {@link KernelFastPathError}. */
  static async start(o: TcFastPathOptions): Promise<TcFastPath> {
    let ul: string;
    let at: TcAttachments;
    try {
      ul = await deviceOf(o.localIp);
      at = { out: [ifindexOf(o.bridge)], in: [ifindexOf(ul)] };
    } catch (e) {
      throw e instanceof KernelFastPathError ? e : new KernelFastPathError(String(e));
    }
    let p: TcPrograms | undefined;
    let adopted = 0;
    try {
      p = TcPrograms.adopt(at);
      if (!p) {
        const left = cleanTcPrograms();
        if (left > 0) log.info("tc fast path: removed programs a previous daemon left", { programs: left });
        p = TcPrograms.load();
        p.attach(at);
      }
    } catch (e) {
      p?.close();
      cleanTcPrograms();
      throw new KernelFastPathError(`tc fast path unavailable: ${e instanceof Error ? e.message : e}`);
    }
    p.maps.config.update(u32(0), encodeConfig(o.localPort, at.out[0]));
    const k = new TcFastPath(p, o, at, `tc:${o.bridge}+${ul}`);
    adopted = k.#readBack();
    k.#svc = readEntries(p.maps.svc);
    k.#snat = readEntries(p.maps.snat);
    log.info("tc fast path ready", { bridge: o.bridge, underlay: ul, adoptedFlows: adopted });
    return k;
  }

  /** Rebuilds the pins of a previous daemon's flows from the egress map. */
  #readBack(): number {
    const now = Date.now();
    // The ingress key needs the chosen instance's InstanceIP: index the entries answering each flow.
    const answers = new Map<string, string>();
    for (const ik of this.#p.maps.ingress.keys()) {
      const g = decodeFlowKey(ik);
      answers.set(`${g.proto} ${g.daddr} ${g.dport} ${g.sport}`, g.saddr);
    }
    for (const [k, v] of this.#p.maps.egress.entries()) {
      const f = decodeFlowKey(k);
      const e = decodeEgress(v);
      const src = tryParseIPv4(f.saddr)!, dst = tryParseIPv4(f.daddr)!, chosen = tryParseIPv4(e.newDaddr)!;
      const pin: Pin = { proto: f.proto, src, sport: f.sport, dst, dport: f.dport, chosen };
      const ingress = {
        flow: {
          proto: f.proto,
          saddr: answers.get(`${f.proto} ${f.saddr} ${f.sport} ${f.dport}`) ?? "",
          sport: f.dport,
          daddr: f.saddr,
          dport: f.sport,
        },
        value: {},
      };
      this.#pins.set(pinKey(pin), {
        pin,
        e: { peer: e.peerIp, egress: { flow: f, value: e }, ingress },
        packets: decodeCounters(v).packets,
        changedAt: now,
        adopted: true,
        ready: ((e.flags ?? 0) & EGRESS_PEER_READY) !== 0,
      });
    }
    return this.#pins.size;
  }

  /** Programs `plan` (peers; cuts flows whose instance left); serialized. */
  apply(plan: KfastPlan): Promise<void> {
    const run = this.#queue.then(() => this.#apply(plan));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #apply(next: KfastPlan): Promise<void> {
    if (this.#stopped) return;
    try {
      for (const peer of next.peers) {
        const port = this.#o.peerPort(peer);
        if (port !== undefined && this.#peers.get(peer) !== port) {
          this.#p.maps.peers.update(ipKey(peer), u32(port));
          this.#peers.set(peer, port);
        }
        if (!this.#routes.has(peer)) await this.#route(peer);
      }
      // A peer that left the capable set (down, restarting) stays while flows to it run in the kernel.
      const keep = new Set(next.peers);
      for (const s of this.#pins.values()) keep.add(s.e.peer);
      for (const peer of this.#peers.keys()) {
        if (keep.has(peer)) continue;
        this.#p.maps.peers.delete(ipKey(peer));
        this.#peers.delete(peer);
        this.#routes.delete(peer);
      }
      this.#program(next);
      this.#learn(Date.now());
      let cut = 0;
      for (const [k, s] of this.#pins) {
        // Cut when the chosen instance left (undeploy) or moved; a node that stopped answering keeps
        // its running flows (the kernel carries them; idle ones go by gcPins).
        const exists = next.nodes.get(s.pin.chosen) === s.e.peer;
        if (exists) s.adopted = false;
        else if (!s.adopted) {
          this.#unpin(k, s);
          cut++;
        }
      }
      if (cut > 0) log.debug("tc fast path: flows to instances that left were cut", { flows: cut });
      this.#current = next;
    } catch (e) {
      this.#errors++;
      throw e;
    }
  }

  #node(): TcNodeView {
    return {
      localIp: this.#o.localIp,
      localPort: this.#o.localPort,
      peerPort: (ip: string) => this.#peers.get(ip),
      ifindexTo: (ip: string) => this.#routes.get(ip),
    };
  }

  /**
   * Writes what changed in nm_kf_snat and nm_kf_svc. Order: senders first, then services; a service
   * removed (or changed) goes before the cut of its flows, so no new flow picks a leaving instance.
   */
  #program(next: KfastPlan): void {
    const snat = snatEntriesOf(next);
    const ds = diffEntries(this.#snat, snat);
    for (const e of ds.set) this.#p.maps.snat.update(e.key, e.value);
    const svc = svcEntriesOf(next, this.#node());
    const dv = diffEntries(this.#svc, svc);
    for (const k of dv.gone) this.#p.maps.svc.delete(k);
    for (const e of dv.set) this.#p.maps.svc.update(e.key, e.value);
    for (const k of ds.gone) this.#p.maps.snat.delete(k);
    if (ds.set.length + ds.gone.length > 0) {
      this.#localsAt = 0; // local instances came or went: their locals entries at the next look
      this.#localsComplete = false;
    }
    this.#snat = snat;
    this.#svc = svc;
    if (dv.set.length + dv.gone.length > 0) {
      log.debug("tc fast path: services decided in the kernel", { set: dv.set.length, gone: dv.gone.length });
    }
  }

  /**
   * Picks up the flows the program decided itself (egress entries without a pin): from now on they are
   * listed, counted, cut on undeploy and removed when idle like moved ones. O(flows in the map).
   */
  #learn(now: number): void {
    // Only when the program decided something since the last look (one counter read, not a map walk).
    const decided = this.#stat(STAT_DECIDED);
    if (decided === this.#decidedSeen) return;
    this.#decidedSeen = decided;
    for (const [k, v] of this.#p.maps.egress.entries()) {
      const f = decodeFlowKey(k);
      const src = tryParseIPv4(f.saddr)!, dst = tryParseIPv4(f.daddr)!;
      const e = decodeEgress(v);
      const pin: Pin = {
        proto: f.proto,
        src,
        sport: f.sport,
        dst,
        dport: f.dport,
        chosen: tryParseIPv4(e.newDaddr)!,
      };
      const key = pinKey(pin);
      if (this.#pins.has(key)) continue;
      const theirs = e.replySaddr ?? "";
      this.#pins.set(key, {
        pin,
        e: {
          peer: e.peerIp,
          egress: { flow: f, value: e },
          ingress: {
            flow: { proto: f.proto, saddr: theirs, sport: f.dport, daddr: f.saddr, dport: f.sport },
            value: theirs === f.daddr ? {} : { newSaddr: f.daddr },
          },
        },
        packets: decodeCounters(v).packets,
        changedAt: now,
        adopted: false,
        ready: ((e.flags ?? 0) & EGRESS_PEER_READY) !== 0,
      });
    }
  }

  async #route(peer: string): Promise<void> {
    const r = await runTool("ip", ["-j", "route", "get", peer]);
    if (r.code !== 0) return;
    const dev = (JSON.parse(r.stdout) as { dev?: string }[])[0]?.dev;
    const i = dev ? libc.if_nametoindex(cstr(dev)) : 0;
    if (i > 0) this.#routes.set(peer, i);
  }

  #unpin(k: string, s: PinState): void {
    this.#p.maps.egress.delete(encodeFlowKey(s.e.egress.flow));
    if (s.e.ingress.flow.saddr) this.#p.maps.ingress.delete(encodeFlowKey(s.e.ingress.flow));
    this.#pins.delete(k);
  }

  /** Installs the entries of running TUN flows the controller chose (returns how many). */
  move(flows: readonly Pin[], now = Date.now()): Promise<number> {
    if (this.#stopped) return Promise.resolve(0);
    let n = 0;
    const node = this.#node();
    if (flows.length > 0) this.#learn(now); // a flow the program decided is not moved over
    for (const pin of flows) {
      const k = pinKey(pin);
      if (this.#pins.has(k) || !this.#current.services.get(pin.dst)?.includes(pin.chosen)) continue;
      const e = tcEntriesOf(pin, this.#current, node);
      if (!e) continue;
      try {
        // Answers first: once the egress entry exists, they may come back through the kernel.
        this.#p.maps.ingress.update(encodeFlowKey(e.ingress.flow), encodeIngress(e.ingress.value));
        this.#p.maps.egress.update(encodeFlowKey(e.egress.flow), encodeEgress(e.egress.value));
      } catch (err) {
        this.#errors++;
        log.debug("tc fast path: a flow entry was refused", { error: String(err) });
        continue;
      }
      this.#pins.set(k, { pin, e, packets: 0, changedAt: now, adopted: false, ready: false });
      n++;
    }
    this.#moved += n;
    return Promise.resolve(n);
  }

  #packets(s: PinState): { packets: number; bytes: number } {
    const a = this.#p.maps.egress.lookup(encodeFlowKey(s.e.egress.flow));
    const b = s.e.ingress.flow.saddr
      ? this.#p.maps.ingress.lookup(encodeFlowKey(s.e.ingress.flow))
      : undefined;
    const ca = a ? decodeCounters(a) : { packets: 0, bytes: 0 };
    const cb = b ? decodeCounters(b) : { packets: 0, bytes: 0 };
    return { packets: ca.packets + cb.packets, bytes: ca.bytes + cb.bytes };
  }

  /** Removes the entries of flows idle for `idleMs` (returns how many). */
  async gcPins(now = Date.now()): Promise<number> {
    const idle = this.#o.idleMs ?? 30_000;
    let n = 0;
    // 4 ip/bridge commands per look: every second only while an instance is missing (or its set just changed)
    if (now - this.#localsAt >= (this.#localsComplete ? LOCALS_IDLE_MS : LOCALS_MS)) {
      this.#localsAt = now;
      await this.#syncLocals().catch((e) =>
        log.debug("tc fast path: locals not resolved", { error: String(e) })
      );
    }
    this.#learn(now);
    for (const [k, s] of this.#pins) {
      if (!s.ready) this.#checkReady(s);
      const c = this.#packets(s).packets;
      if (c !== s.packets) {
        s.packets = c;
        s.changedAt = now;
      } else if (now - s.changedAt >= idle) {
        this.#unpin(k, s);
        n++;
      }
    }
    return n;
  }

  /**
   * Points nm_kf_locals at the local instances' bridge ports (learnt from the bridge's neighbour and
   * forwarding tables), so that nm_kf_in delivers to their veths and not through the bridge device
   * (whose missing hw_enc_features make the kernel segment every received super-packet in software).
   */
  async #syncLocals(): Promise<void> {
    if (this.#stopped) return;
    const nsips = [...this.#current.snat.keys()].map((n) => formatIPv4(n));
    const found = await resolveLocals(this.#o.bridge, nsips);
    const want: MapEntries = new Map();
    for (const [ip, l] of found) {
      const key = ipKey(ip);
      want.set(hexOf(key), { key, value: encodeLocal(l) });
    }
    const d = diffEntries(this.#locals, want);
    if (this.#stopped) return;
    for (const e of d.set) this.#p.maps.locals.update(e.key, e.value);
    for (const k of d.gone) this.#p.maps.locals.delete(k);
    this.#locals = want;
    this.#localsComplete = found.size === nsips.length;
    this.#syncOutVeths(new Set([...found.values()].map((l) => l.ifindex)));
  }

  /**
   * Attaches `nm_kf_out` at the ingress of each local instance's host veth as well (the bridge keeps
   * its own for instances not learnt yet): a packet the kernel carries then leaves before the bridge —
   * no FDB lookup, no br_netfilter hooks (bridge-nf-call-iptables: conntrack and iptables PREROUTING of
   * every bridged frame), no pass up to the bridge device — as VXLAN's does not. A packet the program
   * leaves (TCX_NEXT) goes on to the bridge, whose program sees it again and leaves it too.
   */
  #syncOutVeths(want: Set<number>): void {
    for (const i of want) {
      if (this.#outVeths.has(i)) continue;
      try {
        this.#p.attachOut(i);
        this.#outVeths.add(i);
      } catch (e) {
        log.debug("tc fast path: nm_kf_out not attached to an instance's veth", {
          ifindex: i,
          error: String(e),
        });
      }
    }
    for (const i of this.#outVeths) {
      if (want.has(i)) continue;
      this.#outVeths.delete(i);
      try {
        this.#p.detachOut(i);
      } catch (e) {
        log.debug("tc fast path: nm_kf_out not detached from a veth", { ifindex: i, error: String(e) });
      }
    }
  }

  /**
   * Once the peer's kernel sends this flow to us (our ingress entry counts its program's packets, not
   * the raw-mode ones of its userspace), it has both of its entries: our GSO super-packets may go
   * through the kernel too (bpf/kfast.c EGRESS_PEER_READY).
   */
  #checkReady(s: PinState): void {
    if (!s.e.ingress.flow.saddr) return;
    const iv = this.#p.maps.ingress.lookup(encodeFlowKey(s.e.ingress.flow));
    if (!iv || decodeIngressKernelPackets(iv) === 0) return;
    const key = encodeFlowKey(s.e.egress.flow);
    const ev = this.#p.maps.egress.lookup(key);
    if (!ev) return;
    setEgressFlags(ev, EGRESS_PEER_READY);
    this.#p.maps.egress.update(key, ev);
    s.ready = true;
  }

  /** Keys of the flows carried (src/kfast/move.ts `pinKey`). */
  pinned(): ReadonlySet<string> {
    return new Set(this.#pins.keys());
  }

  /** The flows carried, with their kernel counters (`table show --flows`). */
  flows(): Promise<KernelFlow[]> {
    const out: KernelFlow[] = [];
    for (const s of this.#pins.values()) {
      const c = this.#packets(s);
      out.push({
        path: "kernel",
        version: 4,
        proto: s.pin.proto,
        src: formatIPv4(s.pin.src),
        sport: s.pin.sport,
        dialled: formatIPv4(s.pin.dst),
        dport: s.pin.dport,
        chosen: formatIPv4(s.pin.chosen),
        senderIp: s.e.egress.value.newSaddr,
        node: `${s.e.peer}:${s.e.egress.value.peerPort}`,
        packets: c.packets,
        bytes: c.bytes,
      });
    }
    return Promise.resolve(out);
  }

  /** A per-CPU counter of the programs, summed (0 when unreadable). */
  #stat(i: number): number {
    try {
      const v = this.#p.maps.stats.lookup(u32(i));
      return v ? sumPerCpu(v) : 0;
    } catch {
      return 0;
    }
  }

  /** What is programmed; counters are the programs' (sent: tx, received: rx). */
  status(): KernelFastPathStatus {
    const stat = (i: number) => this.#stat(i);
    return {
      device: this.device,
      port: this.#o.localPort,
      peers: [...this.#current.peers],
      services: [...this.#current.services.keys()].map(formatIPv4),
      errors: this.#errors + stat(4),
      moved: this.#moved,
      pins: this.#pins.size,
      decided: stat(STAT_DECIDED),
      counters: {
        tx: { packets: stat(0), bytes: stat(1) },
        rx: { packets: stat(2), bytes: stat(3) },
      },
      rxReasons: {
        gso: stat(8),
        noPeer: stat(9),
        noFlow: stat(10),
        miss: stat(11),
        missGso: stat(12),
        noDev: stat(13),
        train: stat(14),
        veth: stat(15),
      },
    };
  }

  get plan(): KfastPlan {
    return this.#current;
  }

  /** Detaches the programs and closes the maps (shutdown: nothing stays in the kernel). */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#queue;
    try {
      this.#p.detach(this.#at);
      for (const i of this.#outVeths) this.#p.detachOut(i);
      this.#outVeths.clear();
    } finally {
      this.#p.close();
      this.#pins.clear();
    }
  }
}
