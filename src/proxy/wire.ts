/**
 * The tunnel's wire format: what a UDP datagram on the tunnel port (50103) carries, and our in-band
 * control messages.
 *
 * **Raw mode** (Oakestra-compatible, reference §5.4): the UDP payload is a bare IPv4 or IPv6 packet,
 * recognised by its first nibble (4 or 6). Every other first nibble is *not* an IP packet; old Go
 * nodes drop such datagrams silently, so we use first bytes `0x1T` (high nibble 1, low nibble = type)
 * for our own messages:
 *
 * | byte | message | layout (big-endian) | size |
 * |---|---|---|---|
 * | 0x10 | HELLO | `[0x10][version u8][magic u16 "NM"][caps u32][nonce hi u32][nonce lo u32][host port u16][id len u8][id…]` | 19 + id |
 * | 0x11 | HELLO_ACK | same as HELLO; the nonce is the HELLO's, echoed; caps/id/port are the responder's | 19 + id |
 * | 0x12 | PROBE | `[0x12][flags u8 = 0][reserved u16 = 0][seq u32][send time µs f64]` | 16 |
 * | 0x13 | PROBE_REPLY | same as PROBE, `seq` and time echoed unchanged | 16 |
 * | 0x14 | FAST data | `[0x14][flags u8][csum_start u16][csum_offset u16][reserved u16 = 0]` then one IP packet | 8 + packet |
 * | 0x15 | JUMBO chunk | `[0x15][index u8][count u8][flags u8][message id u32]`, chunk 0 then `[gso_type u8][0][gso_size u16][csum_start u16][csum_offset u16]`, then a slice of one super-packet | 8 (+ 8) + slice |
 * | 0x16 | HS_INIT | `[0x16][version u8 = 1][lane key u16][sender index u32]` then Noise XX message 1 (32) | 40 |
 * | 0x17 | HS_RESP | `[0x17][version u8 = 1][lane key u16][sender index u32][receiver index u32]` then Noise XX message 2 (certificate inside) | 12 + 96 + cert + 16 |
 * | 0x18 | HS_FINISH | as HS_RESP, then Noise XX message 3 (certificate inside) | 12 + 48 + cert + 16 |
 * | 0x19 | SECURE data | `[0x19][flags u8 = 0][lane key u16][receiver index u32][counter u64]` then one raw, FAST or JUMBO datagram sealed (AES-256-GCM, the 16-byte header as associated data), then its 16-byte tag | 32 + datagram |
 *
 * - **Capabilities** (`caps`): {@link CAP_FAST} (bit 0), {@link CAP_PROBE} (bit 1); {@link CAP_SECURE}
 *   (bit 2: runs the secure tunnel's handshakes, 0x16..0x19, codecs in src/secure/secure_wire.ts);
 *   {@link CAP_JUMBO} (bit 3); {@link CAP_LANES} (bit 4); unknown
 *   bits are carried and ignored. A node sends FAST data to a peer only when both announced
 *   {@link CAP_FAST}, JUMBO chunks only when both announced {@link CAP_FAST} and {@link CAP_JUMBO}.
 * - **JUMBO chunks** carry a TCP super-packet (up to 64 KB, as the TUN returned it with TSO) cut
 *   into `count` (2..{@link JUMBO_MAX_CHUNKS}) slices, each behind an 8-byte tag, so one UDP GSO
 *   send carries it and the receiver (UDP GRO) writes it back to its TUN as one super-packet: no
 *   per-segment headers, checksums or coalescing on either side. Every chunk but the last has the
 *   same datagram size. Chunk 0 adds the virtio offload fields; the inner L4 checksum is partial
 *   (pseudo-header sum, as with {@link FAST_F_NEEDS_CSUM}). A message is delivered only when all its
 *   chunks arrived in order; a lost chunk loses the whole super-packet (TCP retransmits it).
 * - **Node id**: the sender's worker id, 0..{@link MAX_NODE_ID_LEN} bytes of printable ASCII
 *   (0x21..0x7e); empty means "not registered yet".
 * - **Forward compatibility**: decoders accept any `version ≥ 1` and ignore bytes after the fixed
 *   part (HELLO after the id, PROBE after 16 bytes) so later versions may append fields or pad
 *   probes (e.g. for path-MTU probing). An incompatible change takes a new message type.
 *   {@link classify} reports unknown `0x1T` types as {@link WireKind.UNKNOWN} (a newer peer's message,
 *   to be ignored) and anything else unusable as {@link WireKind.INVALID}.
 * - **Probe time** is the sender's own clock in microseconds (any origin, e.g. `performance.now() *
 *   1000`), echoed verbatim, so the sender computes RTT without synchronised clocks.
 * - **FAST header** is 8 bytes: fixed-size, so every segment of a UDP GSO send carries its own copy
 *   (the sender writes header + segment per `gso_size` slot), its 16-bit fields sit at even offsets,
 *   and being a multiple of 4 it keeps the inner IP header at the alignment the UDP payload had.
 *   The inner packet's L4 checksum field holds the pseudo-header partial sum when
 *   {@link FAST_F_NEEDS_CSUM} is set (Linux `CHECKSUM_PARTIAL`, as in `virtio_net_hdr`):
 *   `csum_start` is the offset of the L4 header from the start of the IP packet (not of the
 *   datagram), `csum_offset` the offset of the checksum field within it. The receiver passes the
 *   three values into the TUN's virtio header unchanged.
 *
 * All functions are pure and bounds-checked. Classification and decoding never throw on datagram
 * contents; encoders throw {@link WireError} when the caller's buffer is too small or a field is
 * out of range (a programming error). The FAST header encode/decode allocates nothing; HELLO
 * decoding builds the node id string (control path only).
 *
 * @example
 * ```ts
 * declare const buf: Uint8Array, n: number; // one received datagram at buf[0..n]
 * declare function handleIp(buf: Uint8Array, off: number, len: number): void;
 * declare function handleControl(buf: Uint8Array, off: number, len: number): void;
 * const fast = new FastHeader();
 * switch (classify(buf, 0, n)) {
 *   case WireKind.RAW_V4:
 *   case WireKind.RAW_V6:
 *     handleIp(buf, 0, n);
 *     break;
 *   case WireKind.FAST:
 *     if (decodeFast(buf, 0, n, fast)) handleIp(buf, fast.packetOffset, fast.packetLength);
 *     break;
 *   default:
 *     handleControl(buf, 0, n);
 * }
 * ```
 * @module
 */

/** Default tunnel UDP port (Oakestra's `TunnelPort` / `NodePublicPort`). */
export const TUNNEL_PORT = 50103;

/** First byte of a HELLO. */
export const MSG_HELLO = 0x10;
/** First byte of a HELLO_ACK. */
export const MSG_HELLO_ACK = 0x11;
/** First byte of a PROBE. */
export const MSG_PROBE = 0x12;
/** First byte of a PROBE_REPLY. */
export const MSG_PROBE_REPLY = 0x13;
/** First byte of a FAST data datagram. */
export const MSG_FAST = 0x14;
/** First byte of a JUMBO chunk. */
export const MSG_JUMBO = 0x15;
/** First byte of a secure handshake's first message (initiator → responder). */
export const MSG_HS_INIT = 0x16;
/** First byte of a secure handshake's second message (responder → initiator). */
export const MSG_HS_RESP = 0x17;
/** First byte of a secure handshake's third message (initiator → responder). */
export const MSG_HS_FINISH = 0x18;
/** First byte of a SECURE data datagram (a sealed raw/FAST/JUMBO datagram). */
export const MSG_SECURE = 0x19;

/** Wire protocol version written into HELLO/HELLO_ACK. */
export const WIRE_VERSION = 1;
/** HELLO magic: the ASCII bytes "NM". */
export const HELLO_MAGIC = 0x4e4d;

/** Capability: understands FAST data datagrams (0x14). */
export const CAP_FAST = 1 << 0;
/** Capability: answers PROBEs with PROBE_REPLYs. */
export const CAP_PROBE = 1 << 1;
/**
 * Capability: takes part in the secure tunnel (Noise handshakes 0x16..0x18, SECURE data 0x19; see
 * src/secure/). Bit 2, set aside for this since version 1.
 */
export const CAP_SECURE = 1 << 2;
/** Capability: reassembles JUMBO chunks (0x15) into super-packets. */
export const CAP_JUMBO = 1 << 3;
/**
 * Capability: understands lane-tagged JUMBO ids. Towards a peer that announced it, a JUMBO message id
 * is `(sequence << 16) | lane key` (see `lanes.ts`), so every chunk — not only chunk 0, which holds the
 * inner header — can be steered to the peer's worker of that flow; the receiver then does not read
 * gaps between ids as losses (it judges loss by incomplete messages only).
 */
export const CAP_LANES = 1 << 4;
/**
 * Capability: runs the kernel fast path (issue 16, src/kfast/): flows between two nodes that both
 * announce it may travel through their kernels (VXLAN device, nftables translation) instead of the TUN.
 */
export const CAP_KFAST = 1 << 5;
/**
 * Capability: runs the kernel fast path in tc mode (`KernelFastPath: "tc"`, eBPF programs that send
 * Oakestra raw IP-in-UDP and take it back in the kernel). Separate from {@link CAP_KFAST}: the two
 * designs do not carry each other's flows (a VXLAN node would send VXLAN to a node without the device).
 */
export const CAP_KTC = 1 << 6;

/** Longest node id a HELLO carries, in bytes. */
export const MAX_NODE_ID_LEN = 64;
/** Fixed part of a HELLO/HELLO_ACK (before the node id bytes). */
export const HELLO_FIXED_LEN = 19;
/** Longest HELLO/HELLO_ACK we produce. */
export const HELLO_MAX_LEN: number = HELLO_FIXED_LEN + MAX_NODE_ID_LEN;
/** Size of a PROBE/PROBE_REPLY. */
export const PROBE_LEN = 16;
/** Size of the FAST data header. */
export const FAST_HEADER_LEN = 8;
/** Size of the tag in front of every JUMBO chunk. */
export const JUMBO_TAG_LEN = 8;
/** Size of the offload fields after chunk 0's tag. */
export const JUMBO_META_LEN = 8;
/** Most chunks in one JUMBO message (the kernel's UDP GSO/GRO segment limit). */
export const JUMBO_MAX_CHUNKS = 64;
/** Smallest IPv4 header; also the smallest IP packet {@link classify} accepts. */
export const MIN_IPV4_LEN = 20;
/** IPv6 fixed header size; the smallest IPv6 packet {@link classify} accepts. */
export const MIN_IPV6_LEN = 40;

/** FAST flag: the inner packet's L4 checksum is partial (pseudo-header sum only). */
export const FAST_F_NEEDS_CSUM = 1 << 0;
/** FAST flag: the sender verified the inner packet's checksum (virtio `DATA_VALID`). */
export const FAST_F_DATA_VALID = 1 << 1;
/** All FAST flags this version knows; a datagram with other bits set is rejected. */
export const FAST_FLAGS_KNOWN: number = FAST_F_NEEDS_CSUM | FAST_F_DATA_VALID;

/**
 * What a tunnel datagram is, from {@link classify}. Small integers (0..{@link WIRE_KIND_COUNT}-1)
 * so a worker can count them in a typed array.
 */
export const WireKind = {
  /** A bare IPv4 packet (Oakestra raw mode), at least 20 bytes. */
  RAW_V4: 0,
  /** A bare IPv6 packet (Oakestra raw mode), at least 40 bytes. */
  RAW_V6: 1,
  /** HELLO, long enough for its node id. */
  HELLO: 2,
  /** HELLO_ACK, long enough for its node id. */
  HELLO_ACK: 3,
  /** PROBE, at least 16 bytes. */
  PROBE: 4,
  /** PROBE_REPLY, at least 16 bytes. */
  PROBE_REPLY: 5,
  /** FAST data: 8-byte header plus at least 20 bytes of packet. */
  FAST: 6,
  /**
   * First byte 0x16..0x1f: the secure tunnel's messages (0x16..0x19, handled by the secure layer before
   * classification) or ours from a newer version; ignore.
   */
  UNKNOWN: 7,
  /** Empty, out of bounds, too short for its kind, or a first nibble that is none of 1, 4, 6. */
  INVALID: 8,
  /** A JUMBO chunk: at least its tag and one byte (chunk 0: tag, offload fields and 20 bytes). */
  JUMBO: 9,
} as const;

/** A value of {@link WireKind}. */
export type WireKind = (typeof WireKind)[keyof typeof WireKind];

/** Number of {@link WireKind} values. */
export const WIRE_KIND_COUNT = 10;

/** Names of the {@link WireKind} values, indexed by value (for logs and metric labels). */
export const WIRE_KIND_NAMES: readonly string[] = [
  "raw_v4",
  "raw_v6",
  "hello",
  "hello_ack",
  "probe",
  "probe_reply",
  "fast",
  "unknown",
  "invalid",
  "jumbo",
];

/** An encoder was given a buffer too small or a field out of range. */
export class WireError extends Error {
  /** Creates the error with `message` (what is wrong). */
  constructor(message: string) {
    super(message);
    this.name = "WireError";
  }
}

function inBounds(buf: Uint8Array, off: number, len: number): boolean {
  return Number.isInteger(off) && Number.isInteger(len) && off >= 0 && len > 0 && off + len <= buf.length;
}

/**
 * Classifies the datagram `buf[off..off+len]`. Checks that it is long enough for its kind (for a
 * HELLO including its node id) but not the fields' values: decode ours with the matching decoder,
 * raw packets with `parsePacket`. Never throws; `off`/`len` outside `buf` give `INVALID`.
 *
 * @example
 * ```ts
 * classify(new Uint8Array([0x45, ...new Array(19).fill(0)]), 0, 20) === WireKind.RAW_V4;
 * ```
 */
export function classify(buf: Uint8Array, off: number, len: number): WireKind {
  if (!inBounds(buf, off, len)) return WireKind.INVALID;
  const b = buf[off];
  switch (b >>> 4) {
    case 4:
      return len >= MIN_IPV4_LEN ? WireKind.RAW_V4 : WireKind.INVALID;
    case 6:
      return len >= MIN_IPV6_LEN ? WireKind.RAW_V6 : WireKind.INVALID;
    case 1:
      return classifyOurs(buf, off, len, b);
    default:
      return WireKind.INVALID;
  }
}

function classifyOurs(buf: Uint8Array, off: number, len: number, b: number): WireKind {
  switch (b) {
    case MSG_HELLO:
    case MSG_HELLO_ACK:
      if (len < HELLO_FIXED_LEN || len < HELLO_FIXED_LEN + buf[off + 18]) return WireKind.INVALID;
      return b === MSG_HELLO ? WireKind.HELLO : WireKind.HELLO_ACK;
    case MSG_PROBE:
      return len >= PROBE_LEN ? WireKind.PROBE : WireKind.INVALID;
    case MSG_PROBE_REPLY:
      return len >= PROBE_LEN ? WireKind.PROBE_REPLY : WireKind.INVALID;
    case MSG_FAST:
      return len >= FAST_HEADER_LEN + MIN_IPV4_LEN ? WireKind.FAST : WireKind.INVALID;
    case MSG_JUMBO:
      return len >= (buf[off + 1] === 0 ? JUMBO_TAG_LEN + JUMBO_META_LEN + MIN_IPV4_LEN : JUMBO_TAG_LEN + 1)
        ? WireKind.JUMBO
        : WireKind.INVALID;
    default:
      return WireKind.UNKNOWN;
  }
}

// ---------------------------------------------------------------------------------------------
// Byte helpers (no DataView per call: a module-level scratch converts float64).

function rd16(buf: Uint8Array, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}

function wr16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v;
}

function rd32(buf: Uint8Array, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}

function wr32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}

const F64 = new Float64Array(1);
const F64_BYTES = new Uint8Array(F64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function wrF64(buf: Uint8Array, off: number, v: number): void {
  F64[0] = v;
  for (let i = 0; i < 8; i++) buf[off + i] = F64_BYTES[LITTLE_ENDIAN ? 7 - i : i];
}

function rdF64(buf: Uint8Array, off: number): number {
  for (let i = 0; i < 8; i++) F64_BYTES[LITTLE_ENDIAN ? 7 - i : i] = buf[off + i];
  return F64[0];
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

function room(buf: Uint8Array, off: number, need: number, what: string): void {
  if (!Number.isInteger(off) || off < 0 || off + need > buf.length) {
    throw new WireError(`${what} needs ${need} bytes at offset ${off}, buffer has ${buf.length}`);
  }
}

// ---------------------------------------------------------------------------------------------
// HELLO / HELLO_ACK

/** The fields of a HELLO or HELLO_ACK to encode. */
export interface HelloFields {
  /** The sender's capability bits ({@link CAP_FAST} | {@link CAP_PROBE} …), uint32. */
  readonly caps: number;
  /** Nonce high 32 bits (a HELLO's fresh random nonce; in an ACK, the HELLO's, echoed). */
  readonly nonceHi: number;
  /** Nonce low 32 bits. */
  readonly nonceLo: number;
  /** The sender's advertised tunnel port (0 when unknown). */
  readonly hostPort: number;
  /** The sender's node (worker) id: ≤ 64 printable ASCII characters, may be empty. */
  readonly nodeId: string;
}

/** A decoded HELLO or HELLO_ACK; reuse one instance across calls to {@link decodeHello}. */
export class HelloMessage implements HelloFields {
  /** {@link MSG_HELLO} or {@link MSG_HELLO_ACK}. */
  type = 0;
  /** The sender's wire version (≥ 1). */
  version = 0;
  /** The sender's capability bits. */
  caps = 0;
  /** Nonce high 32 bits. */
  nonceHi = 0;
  /** Nonce low 32 bits. */
  nonceLo = 0;
  /** The sender's advertised tunnel port (0 when it did not say). */
  hostPort = 0;
  /** The sender's node id ("" when not registered). */
  nodeId = "";
}

function isIdChar(c: number): boolean {
  return c >= 0x21 && c <= 0x7e;
}

/** True when `id` can travel in a HELLO (≤ 64 printable ASCII characters, no spaces). */
export function isValidNodeId(id: string): boolean {
  if (id.length > MAX_NODE_ID_LEN) return false;
  for (let i = 0; i < id.length; i++) if (!isIdChar(id.charCodeAt(i))) return false;
  return true;
}

function encodeHelloType(type: number, buf: Uint8Array, off: number, f: HelloFields): number {
  if (!isValidNodeId(f.nodeId)) {
    throw new WireError(
      `node id must be at most ${MAX_NODE_ID_LEN} printable ASCII characters: "${f.nodeId}"`,
    );
  }
  if (!isU32(f.caps) || !isU32(f.nonceHi) || !isU32(f.nonceLo)) {
    throw new WireError("caps and nonce words must be uint32");
  }
  if (!Number.isInteger(f.hostPort) || f.hostPort < 0 || f.hostPort > 0xffff) {
    throw new WireError(`host port out of range: ${f.hostPort}`);
  }
  const n = f.nodeId.length;
  const total = HELLO_FIXED_LEN + n;
  room(buf, off, total, "HELLO");
  buf[off] = type;
  buf[off + 1] = WIRE_VERSION;
  wr16(buf, off + 2, HELLO_MAGIC);
  wr32(buf, off + 4, f.caps);
  wr32(buf, off + 8, f.nonceHi);
  wr32(buf, off + 12, f.nonceLo);
  wr16(buf, off + 16, f.hostPort);
  buf[off + 18] = n;
  for (let i = 0; i < n; i++) buf[off + HELLO_FIXED_LEN + i] = f.nodeId.charCodeAt(i);
  return total;
}

/**
 * Writes a HELLO at `buf[off..]`; returns its length (19 + node id length).
 * Throws {@link WireError} when the buffer is too small or a field is out of range.
 *
 * @example
 * ```ts
 * const buf = new Uint8Array(HELLO_MAX_LEN);
 * const n = encodeHello(buf, 0, { caps: CAP_FAST | CAP_PROBE, nonceHi: 1, nonceLo: 2, hostPort: 50103, nodeId: "w1" });
 * ```
 */
export function encodeHello(buf: Uint8Array, off: number, f: HelloFields): number {
  return encodeHelloType(MSG_HELLO, buf, off, f);
}

/**
 * Writes a HELLO_ACK at `buf[off..]`: `f.nonceHi/Lo` must echo the HELLO's nonce, the other fields
 * are the responder's own. Returns its length.
 */
export function encodeHelloAck(buf: Uint8Array, off: number, f: HelloFields): number {
  return encodeHelloType(MSG_HELLO_ACK, buf, off, f);
}

/**
 * Decodes a HELLO or HELLO_ACK at `buf[off..off+len]` into `out`. Returns false (and leaves `out`
 * unspecified) when it is neither, truncated, has a bad magic, version 0, a node id over 64 bytes
 * or with non-printable bytes. Bytes after the node id are ignored.
 */
export function decodeHello(buf: Uint8Array, off: number, len: number, out: HelloMessage): boolean {
  if (!inBounds(buf, off, len) || len < HELLO_FIXED_LEN) return false;
  const type = buf[off];
  if (type !== MSG_HELLO && type !== MSG_HELLO_ACK) return false;
  const version = buf[off + 1];
  if (version < 1 || rd16(buf, off + 2) !== HELLO_MAGIC) return false;
  const n = buf[off + 18];
  if (n > MAX_NODE_ID_LEN || len < HELLO_FIXED_LEN + n) return false;
  const idOff = off + HELLO_FIXED_LEN;
  for (let i = 0; i < n; i++) if (!isIdChar(buf[idOff + i])) return false;
  out.type = type;
  out.version = version;
  out.caps = rd32(buf, off + 4);
  out.nonceHi = rd32(buf, off + 8);
  out.nonceLo = rd32(buf, off + 12);
  out.hostPort = rd16(buf, off + 16);
  out.nodeId = n === 0 ? "" : String.fromCharCode(...buf.subarray(idOff, idOff + n));
  return true;
}

// ---------------------------------------------------------------------------------------------
// PROBE / PROBE_REPLY

/** A decoded PROBE or PROBE_REPLY; reuse one instance across calls to {@link decodeProbe}. */
export class ProbeMessage {
  /** {@link MSG_PROBE} or {@link MSG_PROBE_REPLY}. */
  type = 0;
  /** Sequence number (uint32). */
  seq = 0;
  /** The prober's send time in microseconds on its own clock (finite). */
  timestampUs = 0;
}

function encodeProbeType(
  type: number,
  buf: Uint8Array,
  off: number,
  seq: number,
  timestampUs: number,
): number {
  if (!isU32(seq)) throw new WireError(`probe sequence must be uint32: ${seq}`);
  if (!Number.isFinite(timestampUs)) throw new WireError(`probe timestamp must be finite: ${timestampUs}`);
  room(buf, off, PROBE_LEN, "PROBE");
  buf[off] = type;
  buf[off + 1] = 0;
  wr16(buf, off + 2, 0);
  wr32(buf, off + 4, seq);
  wrF64(buf, off + 8, timestampUs);
  return PROBE_LEN;
}

/**
 * Writes a PROBE (16 bytes) at `buf[off..]`; returns 16.
 *
 * @example
 * ```ts
 * const buf = new Uint8Array(PROBE_LEN);
 * encodeProbe(buf, 0, 7, performance.now() * 1000);
 * ```
 */
export function encodeProbe(buf: Uint8Array, off: number, seq: number, timestampUs: number): number {
  return encodeProbeType(MSG_PROBE, buf, off, seq, timestampUs);
}

/** Writes a PROBE_REPLY echoing a PROBE's `seq` and `timestampUs`; returns 16. */
export function encodeProbeReply(buf: Uint8Array, off: number, seq: number, timestampUs: number): number {
  return encodeProbeType(MSG_PROBE_REPLY, buf, off, seq, timestampUs);
}

/**
 * Decodes a PROBE or PROBE_REPLY at `buf[off..off+len]` into `out`. False when it is neither, is
 * shorter than 16 bytes or the timestamp is not finite. Flags, reserved bytes and bytes after the
 * first 16 are ignored.
 */
export function decodeProbe(buf: Uint8Array, off: number, len: number, out: ProbeMessage): boolean {
  if (!inBounds(buf, off, len) || len < PROBE_LEN) return false;
  const type = buf[off];
  if (type !== MSG_PROBE && type !== MSG_PROBE_REPLY) return false;
  const ts = rdF64(buf, off + 8);
  if (!Number.isFinite(ts)) return false;
  out.type = type;
  out.seq = rd32(buf, off + 4);
  out.timestampUs = ts;
  return true;
}

/**
 * Turns the PROBE at `buf[off..]` into its PROBE_REPLY in place (only the type byte changes), so a
 * responder can send the received bytes straight back. False when it is not a PROBE.
 */
export function probeToReplyInPlace(buf: Uint8Array, off: number, len: number): boolean {
  if (!inBounds(buf, off, len) || len < PROBE_LEN || buf[off] !== MSG_PROBE) return false;
  buf[off] = MSG_PROBE_REPLY;
  return true;
}

// ---------------------------------------------------------------------------------------------
// FAST data

/** A decoded FAST header; reuse one instance across calls to {@link decodeFast}. */
export class FastHeader {
  /** {@link FAST_F_NEEDS_CSUM} | {@link FAST_F_DATA_VALID}. */
  flags = 0;
  /** Offset of the L4 header from the start of the IP packet (meaningful with NEEDS_CSUM). */
  csumStart = 0;
  /** Offset of the checksum field within the L4 header (meaningful with NEEDS_CSUM). */
  csumOffset = 0;
  /** Offset in the buffer of the inner IP packet (datagram offset + 8). */
  packetOffset = 0;
  /** Length of the inner IP packet (datagram length − 8). */
  packetLength = 0;
}

/**
 * Writes the 8-byte FAST header at `buf[off..]`; returns 8. Without {@link FAST_F_NEEDS_CSUM} the
 * checksum offsets should be 0. Allocation-free; throws {@link WireError} only on caller error
 * (no room, unknown flags, offsets beyond uint16).
 *
 * @example
 * ```ts
 * declare const segment: Uint8Array; // a TCP/IPv4 segment with a 20-byte IP header
 * const buf = new Uint8Array(FAST_HEADER_LEN + segment.length);
 * // checksum field at 20 + 16
 * const h = encodeFastHeader(buf, 0, FAST_F_NEEDS_CSUM, 20, 16);
 * buf.set(segment, h);
 * ```
 */
export function encodeFastHeader(
  buf: Uint8Array,
  off: number,
  flags: number,
  csumStart: number,
  csumOffset: number,
): number {
  if (off < 0 || off + FAST_HEADER_LEN > buf.length) room(buf, off, FAST_HEADER_LEN, "FAST header");
  if ((flags & ~FAST_FLAGS_KNOWN) !== 0 || flags < 0 || flags > 0xff) {
    throw new WireError(`unknown FAST flags: ${flags}`);
  }
  if (!(csumStart >= 0 && csumStart <= 0xffff && csumOffset >= 0 && csumOffset <= 0xffff)) {
    throw new WireError(`checksum offsets out of range: ${csumStart}/${csumOffset}`);
  }
  buf[off] = MSG_FAST;
  buf[off + 1] = flags;
  buf[off + 2] = csumStart >>> 8;
  buf[off + 3] = csumStart;
  buf[off + 4] = csumOffset >>> 8;
  buf[off + 5] = csumOffset;
  buf[off + 6] = 0;
  buf[off + 7] = 0;
  return FAST_HEADER_LEN;
}

/**
 * Decodes a FAST datagram's header at `buf[off..off+len]` into `out` (allocation-free). False when
 * it is not FAST, is shorter than 8 + 20 bytes, has unknown flag bits, the inner packet's first
 * nibble is not 4 or 6, or — with {@link FAST_F_NEEDS_CSUM} — `csumStart` is below 20 or the
 * checksum field (`csumStart + csumOffset`, 2 bytes) lies beyond the packet.
 */
export function decodeFast(buf: Uint8Array, off: number, len: number, out: FastHeader): boolean {
  if (!inBounds(buf, off, len) || len < FAST_HEADER_LEN + MIN_IPV4_LEN || buf[off] !== MSG_FAST) return false;
  const flags = buf[off + 1];
  if ((flags & ~FAST_FLAGS_KNOWN) !== 0) return false;
  const pkt = off + FAST_HEADER_LEN;
  const plen = len - FAST_HEADER_LEN;
  const v = buf[pkt] >>> 4;
  if (v === 6 ? plen < MIN_IPV6_LEN : v !== 4) return false;
  const start = (buf[off + 2] << 8) | buf[off + 3];
  const offset = (buf[off + 4] << 8) | buf[off + 5];
  if ((flags & FAST_F_NEEDS_CSUM) !== 0 && (start < MIN_IPV4_LEN || start + offset + 2 > plen)) return false;
  out.flags = flags;
  out.csumStart = start;
  out.csumOffset = offset;
  out.packetOffset = pkt;
  out.packetLength = plen;
  return true;
}
