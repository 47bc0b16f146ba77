/**
 * Packet builders for tests: IPv4/IPv6 × TCP/UDP/ICMP echo with options, extension headers,
 * fragmentation, and CHECKSUM_PARTIAL fields. Every builder returns a fresh `Uint8Array` holding
 * exactly one packet with correct checksums (unless asked otherwise).
 *
 * @example
 * ```ts
 * const pkt = buildIPv4Tcp({ src: "10.30.0.1", dst: "10.30.0.2", srcPort: 40000, dstPort: 80, payload: 1360 });
 * ```
 */
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv4HeaderChecksum,
  l4Checksum4,
  l4Checksum6,
  partialChecksum4,
  partialChecksum6,
} from "../../src/proxy/checksum.ts";

/** Error for malformed builder input (bad address text, misaligned options). */
export class PacketBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PacketBuildError";
  }
}

/** Parses dotted-quad IPv4 text to a uint32. */
export function ip4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) throw new PacketBuildError(`bad IPv4 address: ${text}`);
  let v = 0;
  for (const p of parts) {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new PacketBuildError(`bad IPv4 address: ${text}`);
    v = v * 256 + n;
  }
  return v;
}

/** Parses IPv6 text (with `::`, no embedded IPv4) to 16 bytes. */
export function ip6(text: string): Uint8Array {
  const out = new Uint8Array(16);
  const halves = text.split("::");
  if (halves.length > 2) throw new PacketBuildError(`bad IPv6 address: ${text}`);
  const head = halves[0] === "" ? [] : halves[0].split(":");
  const tail = halves.length === 2 && halves[1] !== "" ? halves[1].split(":") : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) {
    throw new PacketBuildError(`bad IPv6 address: ${text}`);
  }
  const put = (groups: string[], start: number) => {
    groups.forEach((g, i) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw new PacketBuildError(`bad IPv6 address: ${text}`);
      const n = parseInt(g, 16);
      out[(start + i) * 2] = n >> 8;
      out[(start + i) * 2 + 1] = n & 0xff;
    });
  };
  put(head, 0);
  put(tail, 8 - tail.length);
  return out;
}

/** Formats a uint32 as dotted-quad text. */
export function fmt4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

type Addr4 = string | number;
type Addr6 = string | Uint8Array;

/** Payload as bytes, or a length (filled with a deterministic pattern). */
export type Payload = Uint8Array | number;

/** IPv4 header options for the builders. */
export interface IPv4Header {
  src: Addr4;
  dst: Addr4;
  ttl?: number;
  id?: number;
  tos?: number;
  /** Raw IPv4 options, length a multiple of 4 (≤ 40); makes IHL > 5. */
  ipOptions?: Uint8Array;
  /** Flags bits of the flags/fragment field (0x4000 DF, 0x2000 MF). Default DF. */
  flags?: number;
  /** Fragment offset in bytes (multiple of 8). */
  fragOffset?: number;
}

/** One IPv6 extension header for the builders. */
export type ExtHeader =
  | { type: 0 | 60; data?: Uint8Array }
  | { type: 43; segmentsLeft?: number; data?: Uint8Array }
  | { type: 44; offset: number; more: boolean; id: number };

/** IPv6 header options for the builders. */
export interface IPv6Header {
  src: Addr6;
  dst: Addr6;
  hopLimit?: number;
  flowLabel?: number;
  trafficClass?: number;
  /** Extension headers in order, between the fixed header and the L4 header. */
  ext?: ExtHeader[];
}

/** Shared L4 options. */
export interface L4Common {
  payload?: Payload;
  /** Write the CHECKSUM_PARTIAL pseudo-header sum into the L4 field instead of the checksum. */
  partial?: boolean;
}

/** TCP header fields. */
export interface TcpFields extends L4Common {
  srcPort: number;
  dstPort: number;
  seq?: number;
  ack?: number;
  /** Flags byte; default ACK|PSH (0x18). */
  tcpFlags?: number;
  window?: number;
  /** Raw TCP options, length a multiple of 4 (≤ 40). */
  tcpOptions?: Uint8Array;
}

/** UDP header fields. */
export interface UdpFields extends L4Common {
  srcPort: number;
  dstPort: number;
  /** IPv4 only: send with checksum 0 (no checksum). */
  zeroChecksum?: boolean;
}

/** ICMP echo fields. */
export interface EchoFields extends L4Common {
  /** Echo identifier (named apart from the IPv4 header's `id`). */
  echoId: number;
  seq?: number;
  /** true: echo reply (ICMP 0 / ICMPv6 129); default request (8 / 128). */
  reply?: boolean;
}

function payloadBytes(p: Payload | undefined): Uint8Array {
  if (p === undefined) return new Uint8Array(0);
  if (typeof p !== "number") return p;
  const b = new Uint8Array(p);
  for (let i = 0; i < p; i++) b[i] = (i * 7 + 3) & 0xff;
  return b;
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

function checkOptions(o: Uint8Array | undefined, what: string): Uint8Array {
  const b = o ?? new Uint8Array(0);
  if (b.length % 4 !== 0 || b.length > 40) {
    throw new PacketBuildError(`${what} length must be a multiple of 4 ≤ 40`);
  }
  return b;
}

function tcpSegment(f: TcpFields): Uint8Array {
  const opts = checkOptions(f.tcpOptions, "TCP options");
  const data = payloadBytes(f.payload);
  const hl = 20 + opts.length;
  const s = new Uint8Array(hl + data.length);
  put16(s, 0, f.srcPort);
  put16(s, 2, f.dstPort);
  put32(s, 4, f.seq ?? 0x01020304);
  put32(s, 8, f.ack ?? 0x0a0b0c0d);
  s[12] = (hl / 4) << 4;
  s[13] = f.tcpFlags ?? 0x18;
  put16(s, 14, f.window ?? 64240);
  s.set(opts, 20);
  s.set(data, hl);
  return s;
}

function udpSegment(f: UdpFields): Uint8Array {
  const data = payloadBytes(f.payload);
  const s = new Uint8Array(8 + data.length);
  put16(s, 0, f.srcPort);
  put16(s, 2, f.dstPort);
  put16(s, 4, s.length);
  s.set(data, 8);
  return s;
}

function echoSegment(f: EchoFields, v6: boolean): Uint8Array {
  const data = payloadBytes(f.payload);
  const s = new Uint8Array(8 + data.length);
  s[0] = v6 ? (f.reply ? 129 : 128) : (f.reply ? 0 : 8);
  put16(s, 4, f.echoId);
  put16(s, 6, f.seq ?? 1);
  s.set(data, 8);
  return s;
}

function csumField(proto: number): number {
  return proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : 2;
}

/**
 * Wraps an L4 segment (checksum field zero) in an IPv4 header and fills all checksums.
 * `opts.noL4Checksum` leaves the L4 checksum 0 (UDP without checksum).
 */
export function buildIPv4(
  h: IPv4Header,
  proto: number,
  segment: Uint8Array,
  opts: { partial?: boolean; noL4Checksum?: boolean } = {},
): Uint8Array {
  const ipOpts = checkOptions(h.ipOptions, "IPv4 options");
  const ihl = 20 + ipOpts.length;
  const total = ihl + segment.length;
  if (total > 0xffff) throw new PacketBuildError(`IPv4 packet too long: ${total}`);
  const b = new Uint8Array(total);
  b[0] = 0x40 | (ihl / 4);
  b[1] = h.tos ?? 0;
  put16(b, 2, total);
  put16(b, 4, h.id ?? 0x1234);
  put16(b, 6, (h.flags ?? 0x4000) | ((h.fragOffset ?? 0) >>> 3));
  b[8] = h.ttl ?? 64;
  b[9] = proto;
  put32(b, 12, typeof h.src === "number" ? h.src : ip4(h.src));
  put32(b, 16, typeof h.dst === "number" ? h.dst : ip4(h.dst));
  b.set(ipOpts, 20);
  b.set(segment, ihl);
  if (!opts.noL4Checksum) {
    const c = opts.partial && proto !== IPPROTO_ICMP
      ? partialChecksum4(b, 12, 16, proto, segment.length)
      : l4Checksum4(b, 12, 16, proto, ihl, segment.length);
    put16(b, ihl + csumField(proto), c);
  }
  put16(b, 10, ipv4HeaderChecksum(b, 0, ihl));
  return b;
}

function extBytes(e: ExtHeader, next: number): Uint8Array {
  if (e.type === 44) {
    const b = new Uint8Array(8);
    b[0] = next;
    put16(b, 2, (e.offset & 0xfff8) | (e.more ? 1 : 0));
    put32(b, 4, e.id);
    return b;
  }
  // Generic TLV-style header: next, hdr ext len, then data padded to a multiple of 8.
  const data = e.data ?? new Uint8Array(e.type === 43 ? 2 : 6);
  const len = Math.ceil((2 + data.length) / 8) * 8;
  const b = new Uint8Array(len);
  b[0] = next;
  b[1] = len / 8 - 1;
  b.set(data, 2);
  if (e.type === 43) {
    b[3] = e.segmentsLeft ?? 0; // b[2], the routing type, comes from data (0 by default)
  } else if (!e.data) {
    b[2] = 1; // PadN option covering the rest
    b[3] = len - 4;
  }
  return b;
}

/**
 * Wraps an L4 segment (checksum field zero) in an IPv6 header plus extension headers and fills the
 * L4 checksum (unless a fragment header says this is a fragment, in which case the segment is
 * taken as-is).
 */
export function buildIPv6(
  h: IPv6Header,
  proto: number,
  segment: Uint8Array,
  opts: { partial?: boolean; rawSegment?: boolean } = {},
): Uint8Array {
  const ext = h.ext ?? [];
  const parts: Uint8Array[] = [];
  for (let i = 0; i < ext.length; i++) {
    parts.push(extBytes(ext[i], i + 1 < ext.length ? ext[i + 1].type : proto));
  }
  const extLen = parts.reduce((n, p) => n + p.length, 0);
  const payloadLen = extLen + segment.length;
  if (payloadLen > 0xffff) throw new PacketBuildError(`IPv6 payload too long: ${payloadLen}`);
  const b = new Uint8Array(40 + payloadLen);
  const fl = h.flowLabel ?? 0x12345;
  const tc = h.trafficClass ?? 0;
  put32(b, 0, ((6 << 28) | (tc << 20) | (fl & 0xfffff)) >>> 0);
  put16(b, 4, payloadLen);
  b[6] = ext.length > 0 ? ext[0].type : proto;
  b[7] = h.hopLimit ?? 64;
  b.set(typeof h.src === "string" ? ip6(h.src) : h.src, 8);
  b.set(typeof h.dst === "string" ? ip6(h.dst) : h.dst, 24);
  let p = 40;
  for (const part of parts) {
    b.set(part, p);
    p += part.length;
  }
  b.set(segment, p);
  if (!opts.rawSegment) {
    const c = opts.partial
      ? partialChecksum6(b, 8, 24, proto, segment.length)
      : l4Checksum6(b, 8, 24, proto, p, segment.length);
    put16(b, p + csumField(proto), c);
  }
  return b;
}

/** An IPv4 TCP packet. */
export function buildIPv4Tcp(o: IPv4Header & TcpFields): Uint8Array {
  return buildIPv4(o, IPPROTO_TCP, tcpSegment(o), { partial: o.partial });
}

/** An IPv4 UDP packet (`zeroChecksum` for checksum 0). */
export function buildIPv4Udp(o: IPv4Header & UdpFields): Uint8Array {
  return buildIPv4(o, IPPROTO_UDP, udpSegment(o), { partial: o.partial, noL4Checksum: o.zeroChecksum });
}

/** An IPv6 TCP packet. */
export function buildIPv6Tcp(o: IPv6Header & TcpFields): Uint8Array {
  return buildIPv6(o, IPPROTO_TCP, tcpSegment(o), { partial: o.partial });
}

/** An IPv6 UDP packet. */
export function buildIPv6Udp(o: IPv6Header & UdpFields): Uint8Array {
  return buildIPv6(o, IPPROTO_UDP, udpSegment(o), { partial: o.partial });
}

/** An ICMP echo request/reply over IPv4. */
export function buildIcmpEcho4(o: IPv4Header & EchoFields): Uint8Array {
  return buildIPv4(o, IPPROTO_ICMP, echoSegment(o, false));
}

/** An ICMPv6 echo request/reply. */
export function buildIcmpEcho6(o: IPv6Header & EchoFields): Uint8Array {
  return buildIPv6(o, IPPROTO_ICMPV6, echoSegment(o, true), { partial: o.partial });
}

/**
 * Splits a complete IPv4 packet (no fragmentation yet) into fragments carrying at most `chunk`
 * payload bytes each (`chunk` a multiple of 8), with correct header checksums.
 */
export function fragmentIPv4(pkt: Uint8Array, chunk: number): Uint8Array[] {
  if (chunk % 8 !== 0 || chunk <= 0) {
    throw new PacketBuildError("fragment size must be a positive multiple of 8");
  }
  const ihl = (pkt[0] & 15) * 4;
  const total = (pkt[2] << 8) | pkt[3];
  const out: Uint8Array[] = [];
  for (let o = 0; o < total - ihl; o += chunk) {
    const n = Math.min(chunk, total - ihl - o);
    const f = new Uint8Array(ihl + n);
    f.set(pkt.subarray(0, ihl), 0);
    f.set(pkt.subarray(ihl + o, ihl + o + n), ihl);
    put16(f, 2, ihl + n);
    const more = o + n < total - ihl;
    put16(f, 6, (more ? 0x2000 : 0) | (o >>> 3));
    put16(f, 10, 0);
    put16(f, 10, ipv4HeaderChecksum(f, 0, ihl));
    out.push(f);
  }
  return out;
}

/** Reassembles IPv4 fragments (in order, as made by {@link fragmentIPv4}) into one packet. */
export function reassembleIPv4(frags: Uint8Array[]): Uint8Array {
  const ihl = (frags[0][0] & 15) * 4;
  const dataLen = frags.reduce((n, f) => n + f.length - ihl, 0);
  const b = new Uint8Array(ihl + dataLen);
  b.set(frags[0].subarray(0, ihl), 0);
  let p = ihl;
  for (const f of frags) {
    b.set(f.subarray(ihl), p);
    p += f.length - ihl;
  }
  put16(b, 2, b.length);
  put16(b, 6, 0);
  put16(b, 10, 0);
  put16(b, 10, ipv4HeaderChecksum(b, 0, ihl));
  return b;
}

/**
 * Splits a complete IPv6 packet without extension headers into fragments (fragment header right
 * after the fixed header), each carrying at most `chunk` bytes (multiple of 8) of the original payload.
 */
export function fragmentIPv6(pkt: Uint8Array, chunk: number, id: number): Uint8Array[] {
  if (chunk % 8 !== 0 || chunk <= 0) {
    throw new PacketBuildError("fragment size must be a positive multiple of 8");
  }
  const payload = pkt.subarray(40, 40 + ((pkt[4] << 8) | pkt[5]));
  const nh = pkt[6];
  const out: Uint8Array[] = [];
  for (let o = 0; o < payload.length; o += chunk) {
    const n = Math.min(chunk, payload.length - o);
    const f = new Uint8Array(48 + n);
    f.set(pkt.subarray(0, 40), 0);
    put16(f, 4, 8 + n);
    f[6] = 44;
    f[40] = nh;
    put16(f, 42, o | (o + n < payload.length ? 1 : 0));
    put32(f, 44, id);
    f.set(payload.subarray(o, o + n), 48);
    out.push(f);
  }
  return out;
}

/** Reassembles IPv6 fragments made by {@link fragmentIPv6} (in order) into one packet. */
export function reassembleIPv6(frags: Uint8Array[]): Uint8Array {
  const dataLen = frags.reduce((n, f) => n + f.length - 48, 0);
  const b = new Uint8Array(40 + dataLen);
  b.set(frags[0].subarray(0, 40), 0);
  b[6] = frags[0][40];
  put16(b, 4, dataLen);
  let p = 40;
  for (const f of frags) {
    b.set(f.subarray(48), p);
    p += f.length - 48;
  }
  return b;
}

/** Deterministic PRNG (mulberry32) returning floats in [0, 1), so randomized tests reproduce. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` bytes from `rnd`. */
export function randomBytes(rnd: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}
