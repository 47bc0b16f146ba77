/**
 * The packet loop between the two seams (seams.ts): it drains the TUN side into the engine and
 * on to the bind (egress), drains the bind into the engine and on to the TUN side (ingress), runs
 * the engine's timers, and answers the main isolate's messages. It owns no device and no offload:
 * the Worker (worker.ts) builds it on the real devices and polls their fds; the unit tests build it
 * on in-memory seams.
 *
 * Per packet it only moves a reused {@link PacketResult} between the engine and a seam: no
 * allocation, no closure.
 *
 * @example
 * ```ts
 * import { PacketLoop } from "./loop.ts";
 * import type { Engine } from "./engine.ts";
 * import type { BindSeam, TunSeam } from "./seams.ts";
 * function once(engine: Engine, tun: TunSeam, bind: BindSeam): void {
 *   const loop = new PacketLoop(engine, tun, bind, (m) => console.log(m.type));
 *   const now = performance.now();
 *   loop.drainTun(now);
 *   loop.drainBind(now);
 *   loop.tick(now);
 * }
 * ```
 * @module
 */
import { VNET_F_NEEDS_CSUM } from "../../ffi/vnet.ts";
import { DROP_NAMES, type Engine, PacketResult, type ParkedDatagram, Verdict } from "./engine.ts";
import type { FromWorker, StatsData, ToWorker } from "./messages.ts";
import type { BindSeam, TunSeam } from "./seams.ts";
import { Inbound, type SecureLayer } from "../secure/secure_layer.ts";
import { Opened } from "../secure/keys.ts";
import { SECURE_HEADER_LEN } from "../secure/secure_wire.ts";
import { CAP_SECURE } from "./wire.ts";
import { nodeKey } from "../table/entry.ts";
import { formatIPv4, formatIPv6 } from "../addr/mod.ts";
import { Fit, PathGuard } from "../path/guard.ts";
import { PUNCH_DEADLINE_MS } from "../path/relay_watch.ts";
import { type Endpoint, endpointOf, parseEndpoint } from "./peers.ts";

/** Packets one TUN drain takes at most before the loop looks at the tunnel again. */
export const TUN_DRAIN = 512;
/** Receive batches one tunnel drain takes at most. */
const BIND_DRAIN = 16;
const STATS_EVERY_MS = 1000;
const PEER_TICK_MS = 100;

/** Messages the loop handles (the Worker handles `init` and `stop`). */
export type LoopMessage = Exclude<ToWorker, { type: "init" } | { type: "stop" } | { type: "layout" }>;

/** The packet loop (see the module). */
export class PacketLoop {
  readonly engine: Engine;
  readonly tun: TunSeam;
  readonly bind: BindSeam;
  /** Reassembled JUMBO packets written to the TUN. */
  jumboRx = 0;
  /** The secure tunnel's layer (the same as the bind's), when `TunnelSecurity` is not off. */
  secure: SecureLayer | undefined = undefined;
  /** Drops counted below the seams (the io_uring backend's own operations), added to the stats. */
  extraDrops: ((drops: Record<string, number>) => void) | undefined = undefined;
  /** Each peer's path MTU applied to the packets (src/path/guard.ts). */
  readonly path: PathGuard;
  readonly #post: (m: FromWorker) => void;
  readonly #res = new PacketResult();
  #lastUsage = 0;
  #lastPeerTick = 0;
  #lastStats: number;
  /** The flow table's `added` at the last peer tick. */
  #lastAdded = 0;

  constructor(engine: Engine, tun: TunSeam, bind: BindSeam, post: (m: FromWorker) => void, mtu = 1450) {
    this.engine = engine;
    this.path = new PathGuard(mtu);
    this.tun = tun;
    this.bind = bind;
    this.#post = post;
    this.#lastStats = performance.now();
  }

  /**
   * TUN → engine → bind (or back into the TUN: same node). Reads until the TUN is empty or `max`
   * packets (then sends them without the read that would find it empty; see ReadPolicy in spin.ts).
   * Returns the packets read.
   */
  drainTun(now: number, max = TUN_DRAIN): number {
    const tun = this.tun;
    const limit = Math.min(max, TUN_DRAIN);
    let k = 0;
    for (; k < limit; k++) {
      const n = tun.read();
      if (n <= 0) break;
      this.#egress(n, now);
    }
    this.bind.flush();
    this.#reportMisses();
    return k;
  }

  #egress(len: number, now: number): void {
    const tun = this.tun;
    const res = this.#res;
    res.gather = tun.scattered ? tun : undefined;
    const partial = (tun.meta.flags & VNET_F_NEEDS_CSUM) !== 0;
    const guard = this.path;
    const size = PathGuard.wireSize(tun.buf, tun.off, len, tun.meta);
    guard.before(tun.buf, tun.off, len, size);
    const v = this.engine.egress(tun.buf, tun.off, len, now, partial, tun.off, res);
    if (v === Verdict.TO_PEER) {
      const peer = res.route!.peer;
      const fit = guard.check(peer, size, tun.meta, now);
      if (fit === Fit.SEND) {
        if (res.info!.protocol === 6 && (res.info!.tcpFlags & 2) !== 0) {
          guard.clamp(tun.buf, tun.off, len, peer, partial);
        }
        this.bind.send(tun, len, res);
      } else {
        if (tun.scattered) tun.gather();
        if (fit === Fit.TOO_BIG_ICMP) tun.writeLocal?.(guard.error, 0, guard.errorLen);
      }
    } else if (v === Verdict.TO_TUN) tun.writeBack(len);
    else if (tun.scattered) tun.gather(); // reads go plain again until a JUMBO send
  }

  /** Bind → engine → TUN (coalesced, or reassembled JUMBO messages). Returns the datagrams handled. */
  drainBind(now: number): number {
    const e = this.engine;
    const bind = this.bind;
    const tun = this.tun;
    let count = 0;
    const sec = this.secure !== undefined && this.secure.active ? this.secure : undefined;
    const wall = sec !== undefined ? Date.now() : 0;
    for (let k = 0; k < BIND_DRAIN; k++) {
      const c = bind.recv();
      if (c <= 0) break;
      while (bind.next()) {
        count++;
        let unverified = false; // a sealed JUMBO part before its message's tag was checked
        let run = 0; // further parts of the same message opened with this one (one AEAD update)
        if (sec !== undefined) {
          const src = bind.family === 4
            ? e.peers.lookup4(bind.addr4, bind.port)
            : e.peers.lookup6(bind.addr6!, 0, bind.port);
          const exact = src !== undefined &&
            (bind.family === 4 ? src.isAt4(bind.addr4, bind.port) : src.isAt6(bind.addr6!, 0, bind.port));
          const r = sec.inbound(bind.buf, bind.off, bind.len, src?.key, this.#sourceKey, wall, exact);
          if (r === Inbound.DONE) continue;
          if (r === Inbound.OPENED) {
            unverified = sec.part === Opened.PART;
            // The rest of a GRO run from the same source: the message's next parts in one go.
            const more = unverified ? bind.runAfter() : 0;
            if (more > 0) run = sec.openRun(bind.buf, bind.off, bind.step, more);
            bind.narrow(bind.off + SECURE_HEADER_LEN, sec.innerLen);
          }
        }
        if (run > 0) this.#deliverParts(now, run);
        else count += this.#deliverFromBind(now, unverified, sec === undefined);
        if (run > 0) {
          bind.skip(run);
          count += run;
        }
      }
      tun.flush(); // before the next receive reuses the buffers
      if (c < bind.batchSize) break;
    }
    this.#sendControl();
    this.#reportMisses();
    const e2 = this.engine;
    if (e2.observedChanged && e2.reflect?.observedIp !== undefined) {
      e2.observedChanged = false;
      this.#post({ type: "observed", ip: e2.reflect.observedIp, port: e2.reflect.observedPort });
    }
    return count;
  }

  /**
   * Engine → TUN or reassembly for the datagram at the bind's `buf[off .. off+len)` (drainBind).
   * With `plain` (no secure layer), the JUMBO chunks after it in its receive run go to the
   * reassembly in one call (BindSeam.reassembleRun); returns how many further datagrams it took.
   */
  #deliverFromBind(now: number, unverified: boolean, plain: boolean): number {
    const bind = this.bind;
    const tun = this.tun;
    const res = this.#res;
    const v = this.engine.receive(
      bind.buf,
      bind.off,
      bind.len,
      bind.family,
      bind.addr4,
      bind.addr6,
      bind.port,
      now,
      res,
    );
    if (v === Verdict.JUMBO) {
      // Only an authenticated datagram may complete a message (secure_layer.ts: parts).
      if (bind.reassemble(res.peer!, now)) {
        if (unverified) this.secure!.refuseCompletion();
        else if (tun.writeAssembled(bind.assembled)) this.jumboRx++;
      } else if (plain) {
        // The rest of its GRO run: same source, so no engine call per chunk (one per run).
        const peer = res.peer!;
        let taken = 0;
        for (;;) {
          const n = bind.reassembleRun(peer, now);
          if (n === 0) break;
          taken += n;
          this.engine.receivedRun(peer, n, n * bind.step, now);
          if (!bind.runCompleted) break;
          if (tun.writeAssembled(bind.assembled)) this.jumboRx++;
        }
        return taken;
      }
    } else if (unverified) {
      return 0; // (the engine saw a JUMBO type byte; not expected)
    } else if (v === Verdict.TO_TUN) {
      this.path.clamp(bind.buf, res.off, res.len, res.peer, res.csumStart >= 0);
      tun.add(bind.buf, res.off, res.len, res.csumStart, res.csumOffset);
    }
    return 0;
  }

  /**
   * The first part of a sealed JUMBO message (at the bind's `off`, `len` bytes) and the `run` parts
   * the secure layer opened with it, laid out back to back behind it with the same length
   * (SecureLayer.openRun; none is authenticated yet): the first through the engine, the rest to the
   * reassembly in one call where the bind can (BindSeam.reassembleParts, counted once as a plain GRO
   * run's chunks are), one by one otherwise. A reassembly they complete is refused, never written.
   */
  #deliverParts(now: number, run: number): void {
    const bind = this.bind;
    const res = this.#res;
    const at = bind.off, stride = bind.len;
    this.#deliverFromBind(now, true, false);
    for (let j = 0; j < run;) {
      const peer = res.verdict === Verdict.JUMBO ? res.peer : undefined;
      if (peer !== undefined && bind.reassembleParts !== undefined) {
        const n = bind.reassembleParts(peer, at + (j + 1) * stride, stride, run - j, now);
        if (n > 0) {
          this.engine.receivedRun(peer, n, n * stride, now);
          if (bind.runCompleted) this.secure!.refuseCompletion();
          j += n;
          continue;
        }
      }
      bind.narrow(at + (j + 1) * stride, stride); // part j+1's chunk, moved behind part j's
      this.#deliverFromBind(now, true, false);
      j++;
    }
  }

  /** The endpoint key of the datagram the bind last stepped to (control path: builds a string). */
  readonly #sourceKey = (): string => {
    const b = this.bind;
    return nodeKey(b.family === 4 ? formatIPv4(b.addr4) : formatIPv6(b.addr6!), b.port);
  };

  /**
   * Follows peer `key` to the source of the datagram the bind last stepped to (its secure session
   * authenticated it there: roaming, NAT rebinding) and tells the main isolate, which tells the
   * other workers. False when `key` is not a peer here (a stranger's session).
   */
  readonly follow = (key: string): boolean => {
    const p = this.engine.peers.get(key);
    if (p === undefined) return false;
    const b = this.bind;
    let ep: Endpoint;
    if (b.family === 4) ep = endpointOf(formatIPv4(b.addr4), b.port);
    else {
      const a = b.addr6!;
      const mapped = a.subarray(0, 10).every((x) => x === 0) && a[10] === 0xff && a[11] === 0xff;
      ep = endpointOf(mapped ? `${a[12]}.${a[13]}.${a[14]}.${a[15]}` : formatIPv6(a), b.port);
    }
    if (this.engine.follow(p, ep)) {
      this.#post({ type: "secure-moved", peer: key, endpoint: ep.key });
    }
    return true;
  };

  /** The engine's timers: peers' HELLO/PROBE schedule (every 100 ms), housekeeping and stats (1 s). */
  tick(now: number): void {
    if (now - this.#lastPeerTick > PEER_TICK_MS) {
      this.secure?.tick(Date.now());
      this.engine.peerTick(now);
      this.path.refresh(this.engine.peers.peers());
      this.#sendControl();
      // A punch just failed: stats (and so the relay request) go out now, not within 1 s.
      if (this.engine.peers.punchStalled(this.#lastPeerTick, now, PUNCH_DEADLINE_MS)) {
        this.#lastStats = -Infinity;
      }
      this.#lastPeerTick = now;
      // New flows: the kernel fast path may move them soon (one small message per tick at most).
      if (this.engine.flows.added !== this.#lastAdded) {
        this.#lastAdded = this.engine.flows.added;
        this.#post({ type: "newFlows" });
      }
    }
    if (now - this.#lastStats > STATS_EVERY_MS) {
      this.engine.tick(now);
      this.#post({ type: "stats", stats: this.stats() });
      this.#lastStats = now;
    }
  }

  /** Handles a message of the main isolate. */
  handle(m: LoopMessage): void {
    const e = this.engine;
    switch (m.type) {
      case "delta":
        e.applyDelta(m.delta, performance.now());
        break;
      case "table":
        e.tableChanged(m.gone, performance.now());
        break;
      case "resolved":
        this.#replay(e.resolved(m.addr, m.ok));
        this.#replayIn(e.resolvedStrangers(m.addr, m.ok));
        break;
      case "self":
        e.setSelf(m.ip, performance.now());
        break;
      case "deadLocal":
        e.setDeadLocal(m.nsip4s);
        break;
      case "observedSelf":
        e.setObservedSelf(m.ip, m.port, performance.now());
        break;
      case "reflectNow":
        e.reflect?.refresh(performance.now());
        break;
      case "punch":
        if (m.stop) e.unpunch(m.key, performance.now());
        else e.punch(m.key, performance.now());
        break;
      case "flows": {
        const out = [...e.flows.ids()].slice(0, m.limit).map((id) => e.flows.info(id));
        this.#post({ type: "flows", id: m.id, flows: out });
        break;
      }
      case "secure-mode": {
        this.secure?.setMode(m.mode);
        // Announce CAP_SECURE while sessions can be made (informational: handshakes are tried anyway).
        const caps = m.mode === 0 ? e.peers.localCaps & ~CAP_SECURE : e.peers.localCaps | CAP_SECURE;
        if (caps !== e.peers.localCaps) e.peers.setLocalCaps(caps, performance.now());
        break;
      }
      case "secure-keys":
        for (const k of m.keys) this.secure?.install(k);
        this.path.refresh(e.peers.peers()); // sealed datagrams are longer: the smallest inner MTU shrinks
        break;
      case "secure-remove":
        for (const p of m.peers) this.secure?.remove(p, m.forget);
        break;
      case "secure-block":
        for (const p of m.peers) {
          if (m.blocked) this.secure?.blocked.add(p);
          else this.secure?.blocked.delete(p);
        }
        break;
      case "secure-moved":
        e.followKey(m.peer, parseEndpoint(m.endpoint));
        break;
      case "secure-send":
        this.bind.sendRaw(m.bytes, m.family, m.addr4, m.addr6, m.port);
        this.bind.flush();
        break;
    }
  }

  /** Sends queued HELLO/PROBE datagrams and replies. */
  #sendControl(): void {
    const q = this.engine.control;
    const bind = this.bind;
    while (q.length > 0) {
      const m = q.shift()!;
      bind.sendRaw(m.bytes, m.family, m.addr4, m.addr6, m.port);
    }
    bind.flush();
  }

  #reportMisses(): void {
    const m = this.engine.misses;
    if (m.length === 0) return;
    const from = this.engine.missSources;
    while (m.length > 0) {
      const addr = m.shift()!;
      const src = from.get(addr);
      from.delete(addr);
      this.#post({ type: "miss", addr, ...(src !== undefined ? { from: src } : {}) });
    }
  }

  /** Sends parked packets (each with its metadata) again, now that their destination is known. */
  #replay(packets: Uint8Array[]): void {
    const now = performance.now();
    for (const p of packets) this.#egress(this.tun.replay(p), now);
    this.bind.flush();
    this.#reportMisses();
  }

  /** Receives again datagrams whose sender became known (one by one, no coalescing). */
  #replayIn(items: ParkedDatagram[]): void {
    const e = this.engine;
    const res = this.#res;
    const now = performance.now();
    for (const d of items) {
      if (
        e.receive(d.bytes, 0, d.bytes.length, d.family, d.src4, d.src6, d.srcPort, now, res) ===
          Verdict.TO_TUN
      ) {
        this.tun.writeOne(d.bytes, res.off, res.len, res.csumStart, res.csumOffset);
      }
    }
    this.#sendControl();
  }

  /** Counters of the engine and both seams. */
  stats(): StatsData {
    const e = this.engine;
    const c = e.counters;
    const drops: Record<string, number> = {};
    c.drops.forEach((v, i) => {
      if (v > 0) drops[DROP_NAMES[i]] = v;
    });
    this.bind.addDrops(drops);
    // Too big for the peer's path without DF, or beyond the ICMP error rate (src/path/guard.ts).
    const tooBig = this.path.tooBigDropped + this.path.limiter.refused;
    if (tooBig > 0) drops.path_too_big = tooBig;
    this.tun.addDrops(drops);
    this.secure?.addDrops(drops);
    this.extraDrops?.(drops);
    // Judged against each peer's window of message ids (made-up ids do not count).
    if (e.peers.jumboLost > 0) drops.jumbo_lost = e.peers.jumboLost;
    const now = performance.now();
    const jobs = e.usedJobs(this.#lastUsage);
    this.#lastUsage = now;
    const m = Deno.memoryUsage(); // heap fields are per isolate; rss is the process's
    const securePeerDrops = this.secure?.peerDrops();
    return {
      tunRx: c.tunRx,
      tunRxBytes: c.tunRxBytes,
      tunTx: c.tunTx,
      tunTxBytes: c.tunTxBytes,
      udpRx: c.udpRx,
      udpRxBytes: c.udpRxBytes,
      udpTx: c.udpTx,
      udpTxBytes: c.udpTxBytes,
      localHandoff: c.localHandoff,
      jumboTx: this.bind.jumboTx,
      jumboRx: this.jumboRx,
      jumboTxInPlace: this.bind.jumboTxInPlace,
      parked: c.parked,
      released: c.released,
      parkedNow: e.parkedNow,
      flows: e.flows.size,
      drops,
      peers: e.peers.stats(now),
      ...(securePeerDrops ? { securePeerDrops } : {}),
      services: e.services.report(),
      usedJobs: jobs,
      ...(e.choices.size > 0 ? { choices: Object.fromEntries(e.choices) } : {}),
      heap: { used: m.heapUsed, total: m.heapTotal, external: m.external },
    };
  }
}
