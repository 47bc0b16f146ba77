/**
 * "Packet too big" errors for the sending instance: an ICMPv4 "fragmentation needed" (type 3 code
 * 4, RFC 1191) or ICMPv6 "packet too big" (type 2, RFC 8201) built from the head of the packet that
 * could not cross the tunnel, to be written into the TUN towards its sender. The instance's kernel
 * then lowers its path MTU for that destination (TCP re-segments, a DF UDP socket gets `EMSGSIZE`),
 * so an oversized packet is never lost silently.
 *
 * The error's source is the packet's own destination (what the instance dialled: it routes back
 * through the TUN, so the node's reverse-path filter accepts it, where the TUN's own address would be
 * a martian). Pure and bounds-checked: the builder writes into a caller's buffer and returns the
 * length (0 when the input is no IP packet it can answer). {@link TooBigLimiter} bounds how many are
 * made (a token bucket), as routers rate-limit ICMP.
 *
 * @example
 * ```ts
 * import { buildTooBig, TOO_BIG_MAX_LEN } from "./too_big.ts";
 * declare const head: Uint8Array; // the first bytes of the packet as the instance sent it
 * const out = new Uint8Array(TOO_BIG_MAX_LEN);
 * const n = buildTooBig(head, 0, head.length, 1364, out);
 * if (n > 0) console.log("ICMP error of", n, "bytes");
 * ```
 * @module
 */
import { foldSum, ipv4HeaderChecksum, mangledChecksum, onesSum, pseudoSum6 } from "../proxy/checksum.ts";

/** Bytes of the offending packet quoted in the error (enough for any IP header chain and L4 ports). */
export const TOO_BIG_QUOTE = 128;
/** Largest error {@link buildTooBig} writes (IPv6 header + ICMPv6 header + quote). */
export const TOO_BIG_MAX_LEN: number = 40 + 8 + TOO_BIG_QUOTE;
/** Smallest MTU an IPv4 error reports (RFC 791's 68) and an IPv6 one (RFC 8200's 1280). */
export const MIN_MTU4 = 68;
export const MIN_MTU6 = 1280;

/**
 * Writes into `out` the ICMP error telling the sender of the packet whose first `len` bytes are at
 * `pkt[off..]` that at most `mtu` bytes cross. Returns the error's length, or 0 when the input is
 * not an IPv4/IPv6 packet (too short, bad version or header length), is itself an ICMP error (never
 * answer an error with an error), is a non-first IPv4 fragment, or `out` is too small.
 *
 * @example
 * ```ts
 * const pkt = new Uint8Array(60); pkt[0] = 0x45; pkt[9] = 17;
 * const out = new Uint8Array(TOO_BIG_MAX_LEN);
 * buildTooBig(pkt, 0, 60, 1364, out) === 20 + 8 + 60;
 * ```
 */
export function buildTooBig(pkt: Uint8Array, off: number, len: number, mtu: number, out: Uint8Array): number {
  if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 1 || off + len > pkt.length) {
    return 0;
  }
  const v = pkt[off] >>> 4;
  if (v === 4) return build4(pkt, off, len, mtu, out);
  if (v === 6) return build6(pkt, off, len, mtu, out);
  return 0;
}

function build4(pkt: Uint8Array, off: number, len: number, mtu: number, out: Uint8Array): number {
  const ihl = (pkt[off] & 0x0f) * 4;
  if (ihl < 20 || len < ihl) return 0;
  if ((((pkt[off + 6] & 0x1f) << 8) | pkt[off + 7]) !== 0) return 0; // a later fragment
  const proto = pkt[off + 9];
  if (proto === 1 && len > ihl && !isEchoOrInfo4(pkt[off + ihl])) return 0;
  const quote = Math.min(len, TOO_BIG_QUOTE);
  const total = 20 + 8 + quote;
  if (out.length < total) return 0;
  out[0] = 0x45;
  out[1] = 0xc0; // network control, as Linux sends ICMP errors
  out[2] = total >>> 8;
  out[3] = total;
  out.fill(0, 4, 8); // id 0, no DF, no offset
  out[8] = 64;
  out[9] = 1;
  out[10] = out[11] = 0;
  out.set(pkt.subarray(off + 16, off + 20), 12); // from what it dialled
  out.set(pkt.subarray(off + 12, off + 16), 16); // to its sender
  const hc = ipv4HeaderChecksum(out, 0, 20);
  out[10] = hc >>> 8;
  out[11] = hc;
  const m = Math.max(MIN_MTU4, Math.min(0xffff, Math.floor(mtu)));
  out[20] = 3;
  out[21] = 4;
  out[22] = out[23] = 0;
  out[24] = out[25] = 0;
  out[26] = m >>> 8;
  out[27] = m;
  out.set(pkt.subarray(off, off + quote), 28);
  const c = ~foldSum(onesSum(out, 20, 8 + quote, 0)) & 0xffff;
  out[22] = c >>> 8;
  out[23] = c;
  return total;
}

/** ICMPv4 types that are queries (echo, timestamp, …), not errors. */
function isEchoOrInfo4(type: number): boolean {
  return type === 0 || type === 8 || type === 13 || type === 14 || type === 15 || type === 16;
}

function build6(pkt: Uint8Array, off: number, len: number, mtu: number, out: Uint8Array): number {
  if (len < 40) return 0;
  // An ICMPv6 error (type < 128) right after the fixed header gets no error back.
  if (pkt[off + 6] === 58 && len > 40 && pkt[off + 40] < 128) return 0;
  const quote = Math.min(len, TOO_BIG_QUOTE);
  const plen = 8 + quote;
  const total = 40 + plen;
  if (out.length < total) return 0;
  out[0] = 0x60;
  out[1] = out[2] = out[3] = 0;
  out[4] = plen >>> 8;
  out[5] = plen;
  out[6] = 58;
  out[7] = 64;
  out.set(pkt.subarray(off + 24, off + 40), 8); // from what it dialled
  out.set(pkt.subarray(off + 8, off + 24), 24); // to its sender
  const m = Math.max(MIN_MTU6, Math.min(0xffffffff, Math.floor(mtu)));
  out[40] = 2;
  out[41] = 0;
  out[42] = out[43] = 0;
  out[44] = m >>> 24;
  out[45] = m >>> 16;
  out[46] = m >>> 8;
  out[47] = m;
  out.set(pkt.subarray(off, off + quote), 48);
  const c = mangledChecksum(onesSum(out, 40, plen, pseudoSum6(out, 8, 24, 58, plen)));
  out[42] = c >>> 8;
  out[43] = c;
  return total;
}

/**
 * A token bucket for ICMP errors: `rate` per second, bursts of `burst`. Time in milliseconds from
 * the caller (`performance.now()`), so tests drive it.
 *
 * @example
 * ```ts
 * const lim = new TooBigLimiter(100, 10);
 * if (lim.take(performance.now())) { /* send one error *\/ }
 * ```
 */
export class TooBigLimiter {
  /** Errors refused by the limit. */
  refused = 0;
  readonly #rate: number;
  readonly #burst: number;
  #tokens: number;
  #at = -Infinity;

  constructor(rate = 100, burst = 20) {
    if (!(rate > 0) || !(burst >= 1)) throw new RangeError(`bad ICMP limit ${rate}/s burst ${burst}`);
    this.#rate = rate;
    this.#burst = burst;
    this.#tokens = burst;
  }

  /** Takes a token at `now` (ms); false (and counts a refusal) when none is left. */
  take(now: number): boolean {
    if (this.#at !== -Infinity) {
      this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#rate / 1000);
    }
    this.#at = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return true;
    }
    this.refused++;
    return false;
  }
}
