/**
 * The data path's use of each peer's path MTU (pmtu.ts), between the engine and the bind:
 * - a packet (or a super-packet's segments) larger than the tunnel to its peer carries, which will
 *   not travel as a JUMBO message (those are sliced to the path by the bind), is not sent: with DF
 *   (always for IPv6) the sending instance gets an ICMP "fragmentation needed" / "packet too big"
 *   written back into the TUN (too_big.ts, rate-limited); without DF it is dropped and counted
 *   (`path_too_big`), as the tunnel socket itself sends with DF;
 * - TCP SYNs crossing the tunnel in either direction get their MSS clamped to the peer's inner MTU
 *   (mss.ts), so connections start with segments that fit.
 *
 * The check costs one comparison per packet while every peer's path carries the full inner MTU: the
 * head of a packet is saved (for the error's quote) only when it is larger than the smallest inner
 * MTU of any peer, recomputed on the peers' timer.
 *
 * @example
 * ```ts
 * import { PathGuard } from "./guard.ts";
 * const guard = new PathGuard(1450);
 * guard.innerFor(undefined) === 1450; // no peer: the configured MTU
 * ```
 * @module
 */
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_NONE,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  type VnetHdr,
} from "../../ffi/vnet.ts";
import { FAST_HEADER_LEN } from "../proxy/wire.ts";
import type { Peer } from "../proxy/peers.ts";
import { buildTooBig, TOO_BIG_MAX_LEN, TOO_BIG_QUOTE, TooBigLimiter } from "./too_big.ts";
import { clampMss, mssFor } from "./mss.ts";

/** What {@link PathGuard.check} decided. */
export const Fit = { SEND: 0, TOO_BIG_ICMP: 1, TOO_BIG_DROP: 2 } as const;
/** A value of {@link Fit}. */
export type Fit = typeof Fit[keyof typeof Fit];

/** Per-worker path-MTU enforcement (see the module). */
export class PathGuard {
  /** ICMP errors written, packets dropped for size without DF, SYNs clamped. */
  icmpSent = 0;
  tooBigDropped = 0;
  mssClamped = 0;
  /** The last error built ({@link check} returned TOO_BIG_ICMP): `error[0 .. errorLen)`. */
  readonly error: Uint8Array = new Uint8Array(TOO_BIG_MAX_LEN);
  errorLen = 0;
  readonly limiter: TooBigLimiter;
  readonly #mtu: number;
  readonly #head = new Uint8Array(TOO_BIG_QUOTE);
  #headLen = 0;
  #minInner: number;
  /**
   * Extra bytes a layer above the bind adds to every datagram to `peer` (the secure tunnel's
   * envelope while the peer has a session); set by the worker that owns the layer.
   */
  overheadFor: ((peer: Peer) => number) | undefined = undefined;

  /** `mtu`: the configured inner MTU (the TUN's). */
  constructor(mtu: number, limiter: TooBigLimiter = new TooBigLimiter()) {
    this.#mtu = mtu;
    this.#minInner = mtu;
    this.limiter = limiter;
  }

  /** Largest inner packet the tunnel to `peer` carries (the configured MTU without a peer). */
  innerFor(peer: Peer | undefined): number {
    if (peer === undefined) return this.#mtu;
    const extra = this.overheadFor === undefined ? 0 : this.overheadFor(peer);
    const m = peer.path.inner(peer.family, (peer.fast ? FAST_HEADER_LEN : 0) + extra);
    return m < this.#mtu ? m : this.#mtu;
  }

  /** Recomputes the smallest inner MTU of all `peers` (on the peers' timer). */
  refresh(peers: Iterable<Peer>): void {
    let m = this.#mtu;
    for (const p of peers) {
      const i = this.innerFor(p);
      if (i < m) m = i;
    }
    this.#minInner = m;
  }

  /** Size on the wire of the largest datagram the packet becomes (a GSO packet: one segment). */
  static wireSize(buf: Uint8Array, off: number, len: number, meta: VnetHdr): number {
    const type = meta.gsoType & ~VNET_GSO_ECN;
    if (type === VNET_GSO_NONE || meta.gsoSize === 0 || (meta.flags & VNET_F_NEEDS_CSUM) === 0) return len;
    const l4 = off + meta.csumStart;
    if (l4 + 13 > off + len) return len;
    const l4Header = type === VNET_GSO_TCPV4 || type === VNET_GSO_TCPV6 ? (buf[l4 + 12] >>> 4) * 4 : 8;
    return Math.min(len, meta.csumStart + l4Header + meta.gsoSize);
  }

  /** Before the engine rewrites the packet: keeps its head when it may be too big for some peer. */
  before(buf: Uint8Array, off: number, len: number, size: number): void {
    if (size <= this.#minInner) {
      this.#headLen = 0;
      return;
    }
    const n = len < TOO_BIG_QUOTE ? len : TOO_BIG_QUOTE;
    this.#head.set(buf.subarray(off, off + n));
    this.#headLen = n;
  }

  /**
   * After the engine chose `peer`: SEND, or the packet is too big for it (`size` on the wire; a TCP
   * super-packet to a JUMBO peer always fits). TOO_BIG_ICMP leaves the error in {@link error}.
   */
  check(peer: Peer | undefined, size: number, meta: VnetHdr, now: number): Fit {
    if (this.#headLen === 0) return Fit.SEND;
    const inner = this.innerFor(peer);
    if (size <= inner) return Fit.SEND;
    const type = meta.gsoType & ~VNET_GSO_ECN;
    if (peer?.jumbo === true && (type === VNET_GSO_TCPV4 || type === VNET_GSO_TCPV6)) return Fit.SEND;
    const h = this.#head;
    const df = (h[0] >>> 4) === 6 || (h[6] & 0x40) !== 0;
    if (!df) {
      this.tooBigDropped++;
      return Fit.TOO_BIG_DROP;
    }
    if (!this.limiter.take(now)) return Fit.TOO_BIG_DROP;
    this.errorLen = buildTooBig(h, 0, this.#headLen, inner, this.error);
    if (this.errorLen === 0) return Fit.TOO_BIG_DROP;
    this.icmpSent++;
    return Fit.TOO_BIG_ICMP;
  }

  /** Clamps the MSS of a TCP SYN at `buf[off ..]` crossing the tunnel to or from `peer`. */
  clamp(buf: Uint8Array, off: number, len: number, peer: Peer | undefined, partial: boolean): void {
    const v = buf[off] >>> 4;
    if (v !== 4 && v !== 6) return;
    if (clampMss(buf, off, len, mssFor(v, this.innerFor(peer)), partial)) this.mssClamped++;
  }
}
