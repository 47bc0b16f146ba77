/**
 * The relay's forwarding loop (issue 12), run in a Worker by relay.ts so that relayed traffic never
 * waits on the control plane's event loop: one `poll` over every allocation socket (and an eventfd
 * the main isolate signals after posting a message), batched `recvmmsg` with UDP GRO (a burst of
 * same-size datagrams from one sender arrives as one 64 KiB slot) and `sendmmsg` with UDP_SEGMENT
 * GSO out of the other side's socket. Every slot goes through {@link RelayPairState.decide} (locks,
 * rate), so the decisions stay those of relay_core.ts; counters go back to the main isolate.
 *
 * @example
 * ```ts
 * import { RelayForwarder } from "./relay_fwd.ts";
 * const f = new RelayForwarder((m) => console.log(m.type));
 * f.stop();
 * ```
 * @module
 */
import {
  formatIPv4,
  formatIPv6,
  MSG_TRUNC,
  parseIPv4,
  parseIPv6,
  RecvBatch,
  SendBatch,
  udpFromInfo,
  type UdpInfo,
  type UdpSocket,
} from "../../ffi/udp.ts";
import { Poller } from "../../ffi/poll.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { type RelayCounters, RelayPairState } from "./relay_core.ts";

/** Main isolate → forwarder. */
export type RelayFwdCommand =
  | { type: "init"; wakeFd: number; bytesPerSec: number }
  | {
    type: "add";
    key: string;
    a: string;
    b: string;
    socks: [UdpInfo, UdpInfo];
    observed: Record<string, string>;
    /** Where each side was locked (a restarted Worker takes over a crashed one's allocations). */
    locks?: RelayLocks;
  }
  | { type: "remove"; key: string }
  | { type: "observed"; observed: Record<string, string> }
  | { type: "stop" }
  /** Test hook (`NETMANAGER_TEST_RELAY_CRASH=1`, relay.ts): the Worker throws, as a bug would. */
  | { type: "crash" };

/** Each side's locked source endpoint (`null`: not locked yet). */
export type RelayLocks = [RelayLock, RelayLock];
/** One side's lock. */
export type RelayLock = { ip: string; port: number } | null;

/** Forwarder → main isolate. */
export type RelayFwdEvent =
  | { type: "ready" }
  | { type: "stats"; pairs: Record<string, { counters: RelayCounters; lastUsed: number; locks: RelayLocks }> }
  | { type: "removed"; key: string; counters: RelayCounters }
  | { type: "error"; message: string };

interface FwdPair {
  readonly key: string;
  readonly state: RelayPairState;
  readonly socks: [UdpSocket, UdpSocket];
}

/** GRO slots hold up to 64 KiB; 16 of them per receive. */
const SLOT = 65535;
const SLOTS = 16;
/** Counters go to the main isolate at most this often (ms), only when they changed. */
const STATS_MS = 100;

/** See the module. Owns the sockets it was given (closes them on remove/stop). */
export class RelayForwarder {
  readonly #post: (e: RelayFwdEvent) => void;
  readonly #pairs = new Map<string, FwdPair>();
  readonly #observed = new Map<string, string>();
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #rb = new RecvBatch(SLOTS, SLOT);
  readonly #sb = new SendBatch(SLOTS, SLOT);
  readonly #ip4 = new Map<number, string>();
  readonly #dst4 = new Map<string, number>();
  #bytesPerSec = 125_000_000;
  #wake: EventFd | undefined;
  #poller: Poller | undefined;
  /** poll index → [pair, side]; index 0 is the eventfd. */
  #slots: [FwdPair, 0 | 1][] = [];
  #dirty = false;
  #stopped = false;
  #statsAt = 0;

  constructor(post: (e: RelayFwdEvent) => void) {
    this.#post = post;
  }

  /** Applies one command of the main isolate. */
  command(c: RelayFwdCommand): void {
    switch (c.type) {
      case "init":
        this.#wake = new EventFd(c.wakeFd);
        this.#bytesPerSec = c.bytesPerSec;
        this.#rebuild();
        this.#post({ type: "ready" });
        break;
      case "add": {
        for (const [w, ip] of Object.entries(c.observed)) this.#observed.set(w, ip);
        const state = new RelayPairState(c.a, c.b, {
          observedIp: (w) => this.#observed.get(w),
          bytesPerSec: this.#bytesPerSec,
          buckets: this.#buckets,
        }, Date.now());
        c.locks?.forEach((l, i) => {
          if (l) Object.assign(state.sides[i], { ip: l.ip, port: l.port });
        });
        const socks: [UdpSocket, UdpSocket] = [udpFromInfo(c.socks[0]), udpFromInfo(c.socks[1])];
        this.#pairs.set(c.key, { key: c.key, state, socks });
        this.#rebuild();
        break;
      }
      case "remove": {
        const p = this.#pairs.get(c.key);
        if (!p) break;
        this.#pairs.delete(c.key);
        for (const s of p.socks) s.close();
        this.#rebuild();
        this.#post({ type: "removed", key: c.key, counters: p.state.counters });
        break;
      }
      case "observed":
        for (const [w, ip] of Object.entries(c.observed)) this.#observed.set(w, ip);
        break;
      case "stop":
        this.stop();
        break;
    }
  }

  #rebuild(): void {
    this.#slots = [];
    for (const p of this.#pairs.values()) this.#slots.push([p, 0], [p, 1]);
    this.#dirty = true;
  }

  /**
   * Runs until {@link RelayForwarder.stop}: polls, forwards, and yields to the isolate's event loop
   * when woken (so posted commands are taken) or every second.
   */
  async run(): Promise<void> {
    while (!this.#stopped) {
      if (this.#dirty || this.#poller === undefined) {
        const fds = [this.#wake?.fd ?? -1, ...this.#slots.map(([p, s]) => p.socks[s].fd)];
        this.#poller = new Poller(fds);
        this.#dirty = false;
      }
      const poller = this.#poller;
      // Counters that changed since the last report go out within STATS_MS.
      const due = this.#statsAt + STATS_MS - Date.now();
      const r = poller.wait(this.#changed() ? Math.max(0, due) : 1000);
      if (r > 0) {
        for (let i = 0; i < this.#slots.length; i++) {
          if (poller.readable(i + 1)) this.#drain(this.#slots[i][0], this.#slots[i][1]);
        }
      }
      const now = Date.now();
      if (now - this.#statsAt >= STATS_MS) this.#stats(now);
      if ((r <= 0 && !this.#changed()) || (r > 0 && poller.readable(0))) {
        this.#wake?.drain();
        await new Promise((res) => setTimeout(res, 0));
      }
    }
  }

  #reported = 0;

  /** A number that grows with every counted datagram (to see whether counters changed). */
  #tally(): number {
    let total = 0;
    for (const p of this.#pairs.values()) {
      const c = p.state.counters;
      total += c.packets + c.relocks + c.drops.stranger + c.drops.not_locked + c.drops.peer_not_locked +
        c.drops.rate;
    }
    return total;
  }

  #changed(): boolean {
    return this.#tally() !== this.#reported;
  }

  #stats(now: number): void {
    const total = this.#tally();
    if (total === this.#reported) return;
    this.#statsAt = now;
    this.#reported = total;
    const pairs: Record<string, { counters: RelayCounters; lastUsed: number; locks: RelayLocks }> = {};
    const lock = (s: { ip: string | undefined; port: number }): RelayLock =>
      s.ip === undefined ? null : { ip: s.ip, port: s.port };
    for (const p of this.#pairs.values()) {
      const [a, b] = p.state.sides;
      pairs[p.key] = { counters: p.state.counters, lastUsed: p.state.lastUsed, locks: [lock(a), lock(b)] };
    }
    this.#post({ type: "stats", pairs });
  }

  #ipOf4(a: number): string {
    let s = this.#ip4.get(a);
    if (s === undefined) {
      if (this.#ip4.size > 4096) this.#ip4.clear();
      s = formatIPv4(a);
      this.#ip4.set(a, s);
    }
    return s;
  }

  #dstOf4(ip: string): number {
    let a = this.#dst4.get(ip);
    if (a === undefined) {
      if (this.#dst4.size > 4096) this.#dst4.clear();
      a = parseIPv4(ip);
      this.#dst4.set(ip, a);
    }
    return a;
  }

  /** Reads side `side`'s socket until empty (at most 64 batches, then others get their turn). */
  #drain(p: FwdPair, side: 0 | 1): void {
    const rb = this.#rb, sb = this.#sb;
    const inSock = p.socks[side], out = p.socks[1 - side];
    for (let round = 0; round < 64; round++) {
      const n = inSock.recvBatch(rb);
      if (n <= 0) return;
      const now = Date.now();
      let k = 0;
      for (let i = 0; i < n; i++) {
        if (rb.msgFlags[i] & MSG_TRUNC) continue;
        const size = rb.sizes[i];
        const seg = rb.gsoSizes[i];
        const first = seg > 0 && seg < size ? seg : size;
        const ip = rb.families[i] === 4 ? this.#ipOf4(rb.addrs4[i]) : formatIPv6(rb.addrs6, i * 16);
        const count = first < size ? Math.ceil(size / first) : 1;
        const v = p.state.decide(side, rb.bufs[i].subarray(0, first), ip, rb.ports[i], now, size, count);
        if (!v.forward) continue;
        sb.bufs[k].set(rb.bufs[i].subarray(0, size));
        sb.offsets[k] = 0;
        sb.sizes[k] = size;
        sb.segSizes[k] = first < size ? first : 0;
        const to = v.forward;
        if (to.ip.includes(":")) sb.setDst6(k, parseIPv6(to.ip), 0, to.port);
        else sb.setDst4(k, this.#dstOf4(to.ip), to.port);
        k++;
      }
      this.#send(out, k);
      if (n < rb.slots) return;
    }
  }

  /** Sends entries 0..k-1, waiting briefly for buffer room when the socket is full. */
  #send(out: UdpSocket, k: number): void {
    let left = k;
    for (let tries = 0; left > 0 && tries < 8; tries++) {
      const r = out.sendBatch(this.#sb, left);
      if (r < 0 || r >= left) return;
      this.#shift(r, left);
      left -= r;
      out.waitWritable(5);
    }
  }

  /** Moves entries from..k-1 of the send batch to 0.. (after a partial send). */
  #shift(from: number, k: number): void {
    const sb = this.#sb;
    for (let j = from; j < k; j++) {
      const d = j - from;
      sb.data.copyWithin(d * sb.slotSize, j * sb.slotSize, j * sb.slotSize + sb.sizes[j]);
      sb.sizes[d] = sb.sizes[j];
      sb.offsets[d] = 0;
      sb.segSizes[d] = sb.segSizes[j];
      sb.dstFamilies[d] = sb.dstFamilies[j];
      sb.dst4[d] = sb.dst4[j];
      sb.dst6.copyWithin(d * 16, j * 16, j * 16 + 16);
      sb.dstScopes[d] = sb.dstScopes[j];
      sb.dstPorts[d] = sb.dstPorts[j];
    }
  }

  /** Stops the loop and closes every socket. */
  stop(): void {
    this.#stopped = true;
    this.#wake?.close();
    for (const p of this.#pairs.values()) for (const s of p.socks) s.close();
    this.#pairs.clear();
    this.#slots = [];
  }
}
