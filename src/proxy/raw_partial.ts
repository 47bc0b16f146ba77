/**
 * Raw-mode packets whose TCP/UDP checksum field holds a partial sum (issue 16, tc mode): a peer's
 * kernel fast path (bpf/kfast.c) encapsulates a local instance's CHECKSUM_PARTIAL packet as is. A
 * physical NIC completes the inner checksum on the way out, but over a veth underlay the bytes arrive
 * with the pseudo-header sum in the field; when our tc program does not carry that flow (yet) the
 * userspace tunnel reads them and the TUN would hand the instance a packet its stack drops (a moved
 * low-rate flow — iperf3's control connection — then stalled until it timed out). Recognised here,
 * such a packet goes to the TUN as CHECKSUM_PARTIAL (virtio-net header), like a fast-mode one.
 *
 * Cost per raw packet: the pseudo-header sum. A genuine checksum equal to it (1 in 65536) costs one
 * full sum, which tells the two apart.
 *
 * @example
 * ```ts
 * import { rawPartialStart4 } from "./raw_partial.ts";
 * const pkt = new Uint8Array(40); // an IPv4 packet as read from the tunnel socket
 * rawPartialStart4(pkt, 0, pkt.length); // -1: not TCP/UDP with a partial checksum
 * ```
 */
import { foldSum, onesSum, pseudoSum4 } from "./checksum.ts";

/**
 * The L4 header offset (from `off`) of the IPv4 TCP/UDP packet `buf[off .. off + len)` when its
 * checksum field holds the partial (pseudo-header) sum instead of a full checksum, else -1
 * (not IPv4 TCP/UDP, a fragment, truncated, no UDP checksum, or a full checksum that verifies).
 * The field is at the result + {@link partialFieldOffset}.
 */
export function rawPartialStart4(buf: Uint8Array, off: number, len: number): number {
  if (len < 28 || buf[off] >> 4 !== 4) return -1;
  const ihl = (buf[off] & 15) * 4;
  const proto = buf[off + 9];
  if ((proto !== 6 && proto !== 17) || ihl < 20) return -1;
  if ((buf[off + 6] & 0x3f) !== 0 || buf[off + 7] !== 0) return -1; // a fragment
  const total = (buf[off + 2] << 8) | buf[off + 3];
  const fo = partialFieldOffset(proto);
  if (total > len || total < ihl + fo + 2) return -1;
  const f = off + ihl + fo;
  const field = (buf[f] << 8) | buf[f + 1];
  if (proto === 17 && field === 0) return -1; // UDP without a checksum
  const l4Len = total - ihl;
  const pseudo = pseudoSum4(buf, off + 12, off + 16, proto, l4Len);
  if (field !== foldSum(pseudo)) return -1;
  // A full checksum of this value verifies (the sum over the segment with the pseudo header is 0xFFFF).
  if (onesSum(buf, off + ihl, l4Len, pseudo) === 0xffff) return -1;
  return ihl;
}

/** Offset of the checksum field in a TCP (16) or UDP (6) header. */
export function partialFieldOffset(proto: number): number {
  return proto === 6 ? 16 : 6;
}
