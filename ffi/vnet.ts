/**
 * The `virtio_net_hdr` that a TUN opened with `IFF_VNET_HDR` puts in front of every packet it reads
 * and expects in front of every packet written to it.
 *
 * Layout (10 bytes, `struct virtio_net_hdr` in `<linux/virtio_net.h>`; multi-byte fields are in the
 * TUN's vnet byte order, which is little-endian on x86_64 and aarch64 — the only arches we support):
 *
 * | offset | size | field | meaning |
 * |---|---|---|---|
 * | 0 | 1 | `flags` | `VNET_F_NEEDS_CSUM` (1): L4 checksum still to be computed from `csum_start` |
 * | 1 | 1 | `gso_type` | `VNET_GSO_NONE` 0, `TCPV4` 1, `UDP` 3 (UFO, obsolete), `TCPV6` 4, `UDP_L4` 5 (USO); `\|0x80` ECN |
 * | 2 | 2 | `hdr_len` | length of the L3+L4 headers of a GSO packet |
 * | 4 | 2 | `gso_size` | payload bytes per segment (MSS) of a GSO packet |
 * | 6 | 2 | `csum_start` | offset of the L4 header from the start of the IP packet |
 * | 8 | 2 | `csum_offset` | offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP) |
 *
 * The 12-byte `virtio_net_hdr_mrg_rxbuf` only adds `num_buffers`, which a TUN never uses; we always
 * set `TUNSETVNETHDRSZ` to 10.
 *
 * All functions here read and write plain byte arrays: no allocation, no FFI.
 *
 * @example
 * ```ts
 * declare const buf: Uint8Array; // filled by a TUN read with IFF_VNET_HDR
 * const hdr = new VnetHdr();
 * hdr.decode(buf, 0);
 * if (hdr.gsoType === VNET_GSO_TCPV4) console.log("super-packet, mss", hdr.gsoSize);
 * ```
 */

/** Size of `struct virtio_net_hdr` (what TUNSETVNETHDRSZ is set to). */
export const VNET_HDR_LEN = 10;

/** `flags`: the L4 checksum must be computed (CHECKSUM_PARTIAL); `csum_start`/`csum_offset` say where. */
export const VNET_F_NEEDS_CSUM = 1;
/** `flags`: the checksum was already verified. */
export const VNET_F_DATA_VALID = 2;

/** `gso_type`: not a GSO packet. */
export const VNET_GSO_NONE = 0;
/** `gso_type`: IPv4 TCP super-packet (TSO). */
export const VNET_GSO_TCPV4 = 1;
/** `gso_type`: IPv4 UFO (obsolete; the kernel no longer produces it). */
export const VNET_GSO_UDP = 3;
/** `gso_type`: IPv6 TCP super-packet (TSO). */
export const VNET_GSO_TCPV6 = 4;
/** `gso_type`: UDP segmentation offload (USO, IPv4 and IPv6; Linux ≥ 6.2). */
export const VNET_GSO_UDP_L4 = 5;
/** `gso_type` bit: the TCP super-packet has ECN CWR set. */
export const VNET_GSO_ECN = 0x80;

/** A decoded `virtio_net_hdr`. Reuse one instance per loop; `decode` overwrites every field. */
export class VnetHdr {
  /** `VNET_F_*` bits. */
  flags = 0;
  /** `VNET_GSO_*` (possibly with `VNET_GSO_ECN`). */
  gsoType = 0;
  /** L3+L4 header length of a GSO packet. */
  hdrLen = 0;
  /** Segment payload size of a GSO packet. */
  gsoSize = 0;
  /** Offset of the L4 header in the IP packet (when `VNET_F_NEEDS_CSUM`). */
  csumStart = 0;
  /** Offset of the checksum field from `csumStart` (when `VNET_F_NEEDS_CSUM`). */
  csumOffset = 0;

  /** Reads the 10 header bytes at `off` of `buf` into this object and returns it. */
  decode(buf: Uint8Array, off = 0): this {
    this.flags = buf[off];
    this.gsoType = buf[off + 1];
    this.hdrLen = buf[off + 2] | (buf[off + 3] << 8);
    this.gsoSize = buf[off + 4] | (buf[off + 5] << 8);
    this.csumStart = buf[off + 6] | (buf[off + 7] << 8);
    this.csumOffset = buf[off + 8] | (buf[off + 9] << 8);
    return this;
  }

  /** Writes this header as 10 bytes at `off` of `buf`. */
  encode(buf: Uint8Array, off = 0): void {
    buf[off] = this.flags;
    buf[off + 1] = this.gsoType;
    buf[off + 2] = this.hdrLen & 0xff;
    buf[off + 3] = this.hdrLen >>> 8;
    buf[off + 4] = this.gsoSize & 0xff;
    buf[off + 5] = this.gsoSize >>> 8;
    buf[off + 6] = this.csumStart & 0xff;
    buf[off + 7] = this.csumStart >>> 8;
    buf[off + 8] = this.csumOffset & 0xff;
    buf[off + 9] = this.csumOffset >>> 8;
  }

  /** Resets every field to zero (a plain, fully checksummed, non-GSO packet). */
  clear(): this {
    this.flags = 0;
    this.gsoType = 0;
    this.hdrLen = 0;
    this.gsoSize = 0;
    this.csumStart = 0;
    this.csumOffset = 0;
    return this;
  }
}

/** Writes an all-zero header (plain packet, checksums complete) at `off` of `buf`. */
export function writeNoneVnetHdr(buf: Uint8Array, off = 0): void {
  buf.fill(0, off, off + VNET_HDR_LEN);
}
