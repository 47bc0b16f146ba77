/**
 * In-band path-MTU discovery per peer (packetization-layer PMTUD, RFC 8899, in the spirit of
 * WireGuard deployments and QUIC): the node sends padded PROBE datagrams of several sizes at once,
 * with the don't-fragment bit set and the kernel's PMTU cache ignored (`IP_PMTUDISC_PROBE` on the
 * tunnel socket), and takes the largest size the peer answered as the path MTU. ICMP from routers is
 * not needed (it is often filtered: a silent black hole is the case this covers). A round repeats
 * every `reprobeMs`, and sooner (at most every `lossGapMs`) when the data path reports loss towards
 * the peer, so a path that shrank is found again; a path that grew is found by the periodic round.
 *
 * Wire: a PMTU probe is a PROBE (wire.ts, 0x12) with flag {@link PROBE_FLAG_PMTU} in its flags byte,
 * padded with zeros to the probed size (decoders ignore bytes after 16); every netmanager answers a
 * PROBE by echoing it whole with the type changed, so the reply has the same size and flags — an
 * answered size crossed the path both ways. Sequence numbers carry the round, the size's index and
 * the worker's lane tag (last byte: replies steer back to the asking worker, see lanes.ts).
 *
 * Sizes are outer IP packet sizes (what a router's MTU limits); the UDP payload is 28 (IPv4) or 48
 * (IPv6) bytes less. Pure logic: time comes from the caller, sending goes through a callback.
 *
 * @example
 * ```ts
 * import { PathMtu, PMTU_LADDER } from "./pmtu.ts";
 * const path = new PathMtu();
 * path.tick(0, 4, 0, (seq, payload) => console.log("probe", seq, payload));
 * path.onReply(path.seqOf(PMTU_LADDER.indexOf(1400)), 1400 - 28, 4, 3);
 * path.tick(600, 4, 0, () => {}); // round over: path.mtu === 1400
 * ```
 * @module
 */

/** PROBE flag (wire.ts flags byte, offset 1): a padded path-MTU probe, not an RTT probe. */
export const PROBE_FLAG_PMTU = 0x01;
/** Outer sizes probed, largest first (Ethernet, PPPoE, common tunnel overheads, IPv6's minimum). */
export const PMTU_LADDER: readonly number[] = [
  1500,
  1492,
  1480,
  1472,
  1460,
  1450,
  1440,
  1420,
  1400,
  1380,
  1360,
  1340,
  1320,
  1300,
  1280,
];
/** Outer MTU assumed before a peer answered a probe (and for peers that cannot: raw Oakestra nodes). */
export const DEFAULT_PATH_MTU = 1500;
/** Outer overhead of a tunnel datagram: IP header + UDP header. */
export function outerOverhead(family: 4 | 6): number {
  return family === 4 ? 28 : 48;
}

/** Options of a {@link PathMtu}. */
export interface PathMtuOptions {
  /** How long a round waits for replies (500 ms). */
  roundMs?: number;
  /** Time between rounds while nothing is lost (600 000 ms). */
  reprobeMs?: number;
  /** Shortest time between rounds started by loss (5 000 ms). */
  lossGapMs?: number;
  /** Time before retrying after a round that got no reply at all (10 000 ms, doubling to 5 min). */
  retryMs?: number;
  /** Largest size probed (the local link's MTU; 1500). */
  max?: number;
}

/** One peer's path MTU and its probing state (see the module). */
export class PathMtu {
  /** Outer path MTU in use (bytes of an outer IP packet). */
  mtu: number = DEFAULT_PATH_MTU;
  /** A round has measured {@link mtu}. */
  probed = false;
  /** Rounds run, and rounds that got no reply at all. */
  rounds = 0;
  failedRounds = 0;
  /** When the last round was decided (ms; -Infinity: never). */
  decidedAt: number = -Infinity;
  readonly #roundMs: number;
  readonly #reprobeMs: number;
  readonly #lossGapMs: number;
  readonly #retryMs: number;
  readonly #max: number;
  #round = 0;
  #roundStart: number = -Infinity;
  #inRound = false;
  #best = 0;
  #nextAt = 0;
  #failStreak = 0;
  #losses = 0;

  constructor(opts: PathMtuOptions = {}) {
    this.#roundMs = opts.roundMs ?? 500;
    this.#reprobeMs = opts.reprobeMs ?? 600_000;
    this.#lossGapMs = opts.lossGapMs ?? 5_000;
    this.#retryMs = opts.retryMs ?? 10_000;
    this.#max = Math.max(1280, opts.max ?? 1500);
  }

  /** The inner MTU (largest IP packet) this path carries behind `header` bytes of tunnel header. */
  inner(family: 4 | 6, header: number): number {
    return this.mtu - outerOverhead(family) - header;
  }

  /** Sequence number of size index `i` in the current round (last byte: `lane`). */
  seqOf(i: number, lane = 0): number {
    return (((this.#round & 0xffff) << 16) | ((i & 0xff) << 8) | (lane & 0xff)) >>> 0;
  }

  /**
   * Runs the schedule at `now`: decides a round whose wait is over, starts one when due (calling
   * `send(seq, payloadBytes)` per size). `lane` is the worker's tag for the sequence numbers.
   */
  tick(now: number, family: 4 | 6, lane: number, send: (seq: number, payload: number) => void): void {
    if (this.#inRound && (now - this.#roundStart >= this.#roundMs || this.#best >= this.#top())) {
      this.#decide(now);
    }
    if (this.#inRound || now < this.#nextAt) return;
    this.#round = (this.#round + 1) & 0xffff;
    this.#inRound = true;
    this.#roundStart = now;
    this.#best = 0;
    this.rounds++;
    const o = outerOverhead(family);
    PMTU_LADDER.forEach((size, i) => {
      if (size <= this.#max) send(this.seqOf(i, lane), size - o);
    });
  }

  /**
   * A reply to a PMTU probe arrived: `seq` as echoed, `payload` its UDP payload length. Returns
   * false when it belongs to no probe of the current round (late, forged or mangled).
   */
  onReply(seq: number, payload: number, family: 4 | 6, now: number): boolean {
    if (!this.#inRound || (seq >>> 16) !== (this.#round & 0xffff)) return false;
    const i = (seq >>> 8) & 0xff;
    const size = PMTU_LADDER[i];
    if (size === undefined || payload !== size - outerOverhead(family)) return false;
    if (size > this.#best) this.#best = size;
    if (this.#best >= this.#top()) this.#decide(now);
    return true;
  }

  /** The data path saw loss towards this peer: probe again soon (rate-limited). */
  lossSignal(now: number): void {
    if (this.#inRound) return;
    const at = Math.max(this.decidedAt + this.#lossGapMs, now);
    if (at < this.#nextAt) this.#nextAt = at;
  }

  /**
   * Feeds a running count of losses seen towards or from the peer (lost RTT probes, lost JUMBO
   * messages): an increase is a {@link lossSignal}.
   */
  noteLosses(total: number, now: number): void {
    if (total > this.#losses) this.lossSignal(now);
    this.#losses = total;
  }

  /** Probe now (the peer's capabilities became known, or its address changed). */
  restart(now: number): void {
    this.#inRound = false;
    this.#nextAt = now;
  }

  #top(): number {
    for (const s of PMTU_LADDER) if (s <= this.#max) return s;
    return 1280;
  }

  #decide(now: number): void {
    this.#inRound = false;
    this.decidedAt = now;
    if (this.#best > 0) {
      this.mtu = this.#best;
      this.probed = true;
      this.#failStreak = 0;
      this.#nextAt = now + this.#reprobeMs;
    } else {
      // No answer at all: the peer is away or drops probes; keep what we had and retry later.
      this.failedRounds++;
      this.#nextAt = now + Math.min(300_000, this.#retryMs * 2 ** Math.min(this.#failStreak++, 5));
    }
  }
}
