/**
 * TCP MSS clamping in the data path: a SYN (or SYN-ACK) crossing the tunnel gets its MSS option
 * lowered to what the tunnel to that peer carries, so neither end sends segments the path cannot
 * take. Done here rather than with an iptables `TCPMSS` rule because the limit is per peer (each
 * peer's probed path MTU), which only the data path knows after choosing the instance; a kernel
 * rule could only clamp to the TUN's one MTU.
 *
 * Pure and bounds-checked: {@link clampMss} walks the TCP options of the packet at `buf[off..]` and
 * rewrites an MSS option above the limit. A full checksum is updated incrementally; a partial one
 * (`CHECKSUM_PARTIAL`: the field holds the pseudo-header sum, options not included) is left alone.
 *
 * @example
 * ```ts
 * import { clampMss, mssFor } from "./mss.ts";
 * declare const pkt: Uint8Array;
 * clampMss(pkt, 0, pkt.length, mssFor(4, 1364), false); // true when it lowered the MSS
 * ```
 * @module
 */
import { adjustChecksum, delta16 } from "../proxy/checksum.ts";

const TCP_SYN = 0x02;

/** The MSS that fits an inner MTU of `mtu` bytes (IPv4: − 40, IPv6: − 60 for the headers). */
export function mssFor(version: 4 | 6, mtu: number): number {
  return Math.max(0, mtu - (version === 4 ? 40 : 60));
}

/**
 * Lowers the MSS option of the TCP SYN at `buf[off .. off+len)` to `maxMss` when it is larger.
 * Returns true when it changed the packet; false for anything else (not TCP, no SYN, no MSS option,
 * already small enough, malformed or truncated headers, IPv6 with extension headers before TCP).
 *
 * @example
 * ```ts
 * declare const syn: Uint8Array; // an IPv4 SYN announcing MSS 1460
 * clampMss(syn, 0, syn.length, 1324, false); // now announces 1324, checksum updated
 * ```
 */
export function clampMss(
  buf: Uint8Array,
  off: number,
  len: number,
  maxMss: number,
  partial: boolean,
): boolean {
  if (off < 0 || len < 20 || off + len > buf.length || !(maxMss > 0)) return false;
  const v = buf[off] >>> 4;
  let t: number;
  if (v === 4) {
    const ihl = (buf[off] & 0x0f) * 4;
    if (buf[off + 9] !== 6 || ihl < 20) return false;
    if ((((buf[off + 6] & 0x1f) << 8) | buf[off + 7]) !== 0) return false;
    t = off + ihl;
  } else if (v === 6) {
    if (len < 40 || buf[off + 6] !== 6) return false;
    t = off + 40;
  } else {
    return false;
  }
  const end = off + len;
  if (t + 20 > end || (buf[t + 13] & TCP_SYN) === 0) return false;
  const optEnd = t + (buf[t + 12] >>> 4) * 4;
  if (optEnd > end || optEnd < t + 20) return false;
  let o = t + 20;
  while (o < optEnd) {
    const kind = buf[o];
    if (kind === 0) return false; // end of options
    if (kind === 1) {
      o++;
      continue;
    }
    if (o + 1 >= optEnd) return false;
    const l = buf[o + 1];
    if (l < 2 || o + l > optEnd) return false;
    if (kind === 2 && l === 4) {
      const mss = (buf[o + 2] << 8) | buf[o + 3];
      if (mss <= maxMss) return false;
      const want = Math.min(maxMss, 0xffff);
      buf[o + 2] = want >>> 8;
      buf[o + 3] = want;
      if (!partial) {
        // The option's word sits at an even or odd offset from the TCP header: sum the right word.
        const rel = o + 2 - t;
        const field = (buf[t + 16] << 8) | buf[t + 17];
        const next = o + 4 < end ? buf[o + 4] : 0;
        const d = (rel & 1) === 0
          ? delta16(mss, want)
          : delta16((buf[o + 1] << 8) | (mss >>> 8), (buf[o + 1] << 8) | (want >>> 8)) +
            delta16(((mss & 0xff) << 8) | next, ((want & 0xff) << 8) | next);
        const c = adjustChecksum(field, d, false);
        buf[t + 16] = c >>> 8;
        buf[t + 17] = c;
      }
      return true;
    }
    o += l;
  }
  return false;
}
