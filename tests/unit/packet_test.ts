/**
 * Unit tests for src/proxy/packet.ts: parsing (fields, every drop reason, truncation at every
 * length without reading outside [off, off+len)), in-place rewrites for IPv4/IPv6 × TCP/UDP/ICMP
 * echo checked byte-for-byte against freshly built packets and by full checksum recomputation,
 * CHECKSUM_PARTIAL mode, UDP checksum 0 and 0xFFFF, extension headers and fragments.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  buildIcmpEcho4,
  buildIcmpEcho6,
  buildIPv4,
  buildIPv4Tcp,
  buildIPv4Udp,
  buildIPv6,
  buildIPv6Tcp,
  buildIPv6Udp,
  type ExtHeader,
  fragmentIPv4,
  fragmentIPv6,
  ip4,
  ip6,
  prng,
  randomBytes,
  reassembleIPv4,
  reassembleIPv6,
} from "../helpers/packets.ts";
import {
  checksumsValid,
  computeIpHeaderChecksum,
  computeL4Checksum,
  fixChecksums,
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv6Copy,
  ipv6Equal,
  ipv6Key,
  MAX_EXT_HEADERS,
  PacketInfo,
  PARSE_RESULT_COUNT,
  PARSE_RESULT_NAMES,
  parsePacket,
  ParseResult,
  read32,
  rewriteAddrs4,
  rewriteDst4,
  rewriteDst6,
  rewriteSrc4,
  rewriteSrc6,
  write32,
} from "../../src/proxy/packet.ts";

const info = new PacketInfo();

function parseOk(b: Uint8Array, off = 0, len = b.length - off): PacketInfo {
  const r = parsePacket(b, off, len, info);
  assertEquals(PARSE_RESULT_NAMES[r], "ok");
  return info;
}

function reason(b: Uint8Array, off = 0, len = b.length - off): string {
  return PARSE_RESULT_NAMES[parsePacket(b, off, len, info)];
}

function read16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

/** A view that records the lowest and highest index read, to prove parsing stays inside [off, off+len). */
function tracked(bytes: Uint8Array): { view: Uint8Array; lo: () => number; hi: () => number } {
  let lo = Infinity;
  let hi = -Infinity;
  const view = new Proxy(bytes, {
    get(t, p) {
      if (typeof p === "string" && /^\d+$/.test(p)) {
        const i = Number(p);
        if (i < lo) lo = i;
        if (i > hi) hi = i;
        return t[i];
      }
      const v = Reflect.get(t, p, t);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { view, lo: () => lo, hi: () => hi };
}

const A4 = "10.30.0.1";
const B4 = "10.30.0.2";
const V6A = "fdff:2000::1";
const V6B = "fdff:2000::a:2";
const TCP_OPTS = new Uint8Array([2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]); // MSS, SACKperm, TS, NOP, WS
const IP_OPTS = new Uint8Array([0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]); // Router Alert, NOPs, EOL

// ---------------------------------------------------------------------------------------------
// Parsing: fields
// ---------------------------------------------------------------------------------------------

Deno.test("parse: IPv4 TCP with IP options (IHL 7) and TCP options", () => {
  const p = buildIPv4Tcp({
    src: A4,
    dst: B4,
    ipOptions: IP_OPTS,
    srcPort: 40000,
    dstPort: 80,
    tcpFlags: 0x12,
    tcpOptions: TCP_OPTS,
    payload: 101,
    id: 0xbeef,
  });
  const i = parseOk(p);
  assertEquals(
    [i.version, i.ipHeaderLen, i.totalLen, i.protocol, i.l4Offset, i.l4Len, i.l4HeaderLen],
    [4, 28, p.length, IPPROTO_TCP, 28, p.length - 28, 40],
  );
  assertEquals([i.srcOffset, i.dstOffset, i.src4, i.dst4], [12, 16, ip4(A4), ip4(B4)]);
  assertEquals([i.srcPort, i.dstPort, i.tcpFlags, i.icmpType], [40000, 80, 0x12, -1]);
  assertEquals([i.isFragment, i.isFirstFragment, i.fragOffset, i.fragId], [false, false, 0, 0xbeef]);
  assertEquals(i.l4ChecksumOffset, 28 + 16);
  assert(checksumsValid(p, i));
});

Deno.test("parse: IPv4 UDP at an offset, with trailing link padding beyond totalLen", () => {
  const p = buildIPv4Udp({ src: A4, dst: B4, srcPort: 5353, dstPort: 53, payload: 3 });
  const buf = new Uint8Array(p.length + 40).fill(0xaa);
  buf.set(p, 11);
  const i = parseOk(buf, 11, p.length + 20);
  assertEquals([i.off, i.totalLen, i.l4Offset, i.l4Len, i.srcPort, i.dstPort], [
    11,
    p.length,
    31,
    11,
    5353,
    53,
  ]);
  assertEquals([i.srcOffset, i.dstOffset, i.l4ChecksumOffset], [23, 27, 37]);
  assert(checksumsValid(buf, i));
});

Deno.test("parse: UDP length shorter than the IP payload is accepted; l4Len follows the UDP length", () => {
  const p = buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 10 });
  p[20 + 4] = 0;
  p[20 + 5] = 12; // claims 4 bytes of data, IP carries 10
  fixChecksums(p, parseOk(p));
  const i = parseOk(p);
  assertEquals([i.l4Len, i.totalLen], [12, 38]);
  assert(checksumsValid(p, i));
});

Deno.test("parse: ICMP and ICMPv6 echo use the identifier as both ports", () => {
  for (const reply of [false, true]) {
    const p4 = buildIcmpEcho4({ src: A4, dst: B4, echoId: 0x4242, seq: 7, reply, payload: 56 });
    const i4 = parseOk(p4);
    assertEquals([i4.protocol, i4.srcPort, i4.dstPort, i4.icmpType], [
      IPPROTO_ICMP,
      0x4242,
      0x4242,
      reply ? 0 : 8,
    ]);
    assertEquals(i4.l4ChecksumOffset, -1); // no pseudo-header: address rewrites leave ICMP alone
    assert(checksumsValid(p4, i4));
    const p6 = buildIcmpEcho6({ src: V6A, dst: V6B, echoId: 0x1717, reply, payload: 5 });
    const i6 = parseOk(p6);
    assertEquals(
      [i6.protocol, i6.srcPort, i6.dstPort, i6.icmpType],
      [IPPROTO_ICMPV6, 0x1717, 0x1717, reply ? 129 : 128],
    );
    assertEquals(i6.l4ChecksumOffset, 42);
    assert(checksumsValid(p6, i6));
  }
});

Deno.test("parse: IPv6 TCP and UDP fields", () => {
  const t = buildIPv6Tcp({
    src: V6A,
    dst: V6B,
    srcPort: 1234,
    dstPort: 443,
    tcpOptions: TCP_OPTS,
    payload: 7,
  });
  const i = parseOk(t);
  assertEquals(
    [i.version, i.ipHeaderLen, i.totalLen, i.protocol, i.l4Offset, i.l4HeaderLen, i.srcOffset, i.dstOffset],
    [6, 40, t.length, IPPROTO_TCP, 40, 40, 8, 24],
  );
  assertEquals([i.srcPort, i.dstPort, i.src4, i.dst4, i.isFragment], [1234, 443, 0, 0, false]);
  assert(checksumsValid(t, i));
  const u = buildIPv6Udp({ src: V6A, dst: V6B, srcPort: 9, dstPort: 10, payload: 0 });
  const j = parseOk(u);
  assertEquals([j.protocol, j.l4Len, j.srcPort, j.dstPort, j.l4ChecksumOffset], [IPPROTO_UDP, 8, 9, 10, 46]);
});

Deno.test("parse: IPv6 extension headers (hop-by-hop, destination options, routing with 0 segments left)", () => {
  const ext: ExtHeader[] = [{ type: 0 }, { type: 60, data: new Uint8Array(14) }, { type: 43 }, { type: 60 }];
  const p = buildIPv6Tcp({ src: V6A, dst: V6B, ext, srcPort: 5, dstPort: 6, payload: 33 });
  const i = parseOk(p);
  assertEquals([i.ipHeaderLen, i.l4Offset, i.protocol, i.srcPort, i.dstPort], [
    40 + 8 + 16 + 8 + 8,
    80,
    6,
    5,
    6,
  ]);
  assert(checksumsValid(p, i));
  // Exactly MAX_EXT_HEADERS is fine, one more is not.
  const many = (n: number) => Array.from({ length: n }, (): ExtHeader => ({ type: 60 }));
  parseOk(buildIPv6Udp({ src: V6A, dst: V6B, ext: many(MAX_EXT_HEADERS), srcPort: 1, dstPort: 2 }));
  assertEquals(
    reason(buildIPv6Udp({ src: V6A, dst: V6B, ext: many(MAX_EXT_HEADERS + 1), srcPort: 1, dstPort: 2 })),
    "ext_header_limit",
  );
});

Deno.test("parse: IPv6 extension header drop reasons", () => {
  const u = (ext: ExtHeader[]) =>
    buildIPv6Udp({ src: V6A, dst: V6B, ext, srcPort: 1, dstPort: 2, payload: 4 });
  assertEquals(reason(u([{ type: 43, segmentsLeft: 1 }])), "unsupported_ext_header");
  assertEquals(reason(u([{ type: 60 }, { type: 0 }])), "bad_ext_header"); // hop-by-hop not first
  // ESP / AH / mobility as next header.
  for (const nh of [50, 51, 135, 139, 140, 253, 254]) {
    const p = u([]);
    p[6] = nh;
    assertEquals(reason(p), "unsupported_ext_header", `nh ${nh}`);
  }
  // Header length running past the payload.
  const over = u([{ type: 60 }]);
  over[41] = 3;
  assertEquals(reason(over), "bad_ext_header");
  // Extension header that does not even fit its first 8 bytes.
  const tiny = buildIPv6(
    { src: V6A, dst: V6B },
    60,
    new Uint8Array([17, 0, 0, 0]),
    { rawSegment: true },
  );
  assertEquals(reason(tiny), "bad_ext_header");
  // Two fragment headers.
  const two = buildIPv6(
    {
      src: V6A,
      dst: V6B,
      ext: [{ type: 44, offset: 0, more: true, id: 1 }, { type: 44, offset: 0, more: true, id: 1 }],
    },
    17,
    new Uint8Array(16),
    { rawSegment: true },
  );
  assertEquals(reason(two), "bad_ext_header");
});

// ---------------------------------------------------------------------------------------------
// Parsing: drop reasons and truncation
// ---------------------------------------------------------------------------------------------

Deno.test("parse: wrong versions", () => {
  const p = buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 30 });
  for (let v = 0; v < 16; v++) {
    if (v === 4 || v === 6) continue;
    const q = p.slice();
    q[0] = (v << 4) | 5;
    assertEquals(reason(q), "bad_version", `version ${v}`);
  }
  assertEquals(PARSE_RESULT_NAMES.length, PARSE_RESULT_COUNT);
  assertEquals(Object.keys(ParseResult).length, PARSE_RESULT_COUNT);
  for (const [k, v] of Object.entries(ParseResult)) assertEquals(PARSE_RESULT_NAMES[v], k.toLowerCase());
});

Deno.test("parse: bad IHL, bad and oversize total length", () => {
  const p = buildIPv4Tcp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 20 });
  for (let ihl = 0; ihl < 5; ihl++) {
    const q = p.slice();
    q[0] = 0x40 | ihl;
    assertEquals(reason(q), "bad_header_len", `ihl ${ihl}`);
  }
  const big = p.slice();
  big[0] = 0x4f; // 60-byte header, total length 40
  big[2] = 0;
  big[3] = 40;
  assertEquals(reason(big, 0, 40), "bad_total_len");
  const small = p.slice();
  small[2] = 0;
  small[3] = 19;
  assertEquals(reason(small), "bad_total_len");
  const zero = p.slice();
  zero[2] = 0;
  zero[3] = 0;
  assertEquals(reason(zero), "bad_total_len");
  const over = p.slice();
  over[3] += 1; // totalLen > len
  assertEquals(reason(over), "truncated");
  const v6 = buildIPv6Udp({ src: V6A, dst: V6B, srcPort: 1, dstPort: 2, payload: 4 });
  v6[5] += 1;
  assertEquals(reason(v6), "truncated");
  // off/len that do not fit the buffer.
  assertEquals(reason(p, 1, p.length), "truncated");
  assertEquals(reason(p, -1, 10), "truncated");
  assertEquals(reason(p, 0, -5), "truncated");
});

Deno.test("parse: IPv4 source-route options and malformed options are dropped", () => {
  const mk = (opts: number[]) =>
    buildIPv4Udp({ src: A4, dst: B4, ipOptions: new Uint8Array(opts), srcPort: 1, dstPort: 2, payload: 4 });
  assertEquals(reason(mk([1, 0x83, 7, 4, 10, 19, 0, 1, 0, 0, 0, 0])), "unsupported_ip_option"); // LSRR
  assertEquals(reason(mk([0x89, 7, 4, 10, 19, 0, 1, 0])), "unsupported_ip_option"); // SSRR
  assertEquals(reason(mk([0x94, 1, 0, 0])), "bad_ip_options"); // length below 2
  assertEquals(reason(mk([1, 1, 0x44, 12, 5, 0, 0, 0])), "bad_ip_options"); // runs past the header
  assertEquals(reason(mk([1, 1, 1, 0x44])), "bad_ip_options"); // no room for the length byte
  assertEquals(reason(mk([0, 0x83, 0xff, 0xff])), "ok"); // after EOL nothing is looked at
  assertEquals(reason(mk([0x44, 8, 5, 0, 0, 0, 0, 0])), "ok"); // timestamp option, left alone
});

Deno.test("parse: bad L4 headers", () => {
  const t = buildIPv4Tcp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 8 });
  for (const doff of [0, 4, 8, 15]) {
    const q = t.slice();
    q[32] = doff << 4; // 28 bytes of TCP: doff 8 (32 bytes) and 15 overrun, 0 and 4 are too small
    assertEquals(reason(q), "bad_l4_header", `doff ${doff}`);
  }
  const shortTcp = buildIPv4(
    { src: A4, dst: B4 },
    IPPROTO_TCP,
    new Uint8Array(19),
    { noL4Checksum: true },
  );
  assertEquals(reason(shortTcp), "bad_l4_header");
  const u = buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 8 });
  for (const ulen of [0, 7, 17, 0xffff]) {
    const q = u.slice();
    q[24] = ulen >>> 8;
    q[25] = ulen & 0xff;
    assertEquals(reason(q), "bad_l4_header", `udp len ${ulen}`);
  }
  const shortUdp = buildIPv4({ src: A4, dst: B4 }, IPPROTO_UDP, new Uint8Array(7), { noL4Checksum: true });
  assertEquals(reason(shortUdp), "bad_l4_header");
  const shortIcmp = buildIPv6({ src: V6A, dst: V6B }, IPPROTO_ICMPV6, new Uint8Array([128, 0, 0, 0, 0, 1]));
  assertEquals(reason(shortIcmp), "bad_l4_header");
});

Deno.test("parse: unsupported protocols and ICMP types", () => {
  assertEquals(
    reason(buildIPv4({ src: A4, dst: B4 }, 47, new Uint8Array(8), { noL4Checksum: true })),
    "unsupported_proto",
  );
  assertEquals(
    reason(buildIPv4({ src: A4, dst: B4 }, 132, new Uint8Array(28), { noL4Checksum: true })),
    "unsupported_proto",
  );
  assertEquals(
    reason(buildIPv4({ src: A4, dst: B4 }, IPPROTO_ICMPV6, new Uint8Array(8), { noL4Checksum: true })),
    "unsupported_proto",
  );
  assertEquals(
    reason(buildIPv6({ src: V6A, dst: V6B }, 59, new Uint8Array(0), { rawSegment: true })),
    "unsupported_proto",
  );
  assertEquals(
    reason(buildIPv6({ src: V6A, dst: V6B }, IPPROTO_ICMP, new Uint8Array(8), { rawSegment: true })),
    "unsupported_proto",
  );
  for (const type of [3, 5, 11, 13]) {
    const seg = new Uint8Array(36);
    seg[0] = type;
    assertEquals(
      reason(buildIPv4({ src: A4, dst: B4 }, IPPROTO_ICMP, seg)),
      "unsupported_icmp",
      `icmp ${type}`,
    );
  }
  for (const type of [1, 2, 3, 133, 135, 136]) {
    const seg = new Uint8Array(24);
    seg[0] = type;
    assertEquals(
      reason(buildIPv6({ src: V6A, dst: V6B }, IPPROTO_ICMPV6, seg)),
      "unsupported_icmp",
      `icmpv6 ${type}`,
    );
  }
});

Deno.test("parse: truncated at every length, never reading outside [off, off+len)", () => {
  const samples: Uint8Array[] = [
    buildIPv4Tcp({
      src: A4,
      dst: B4,
      ipOptions: IP_OPTS,
      srcPort: 1,
      dstPort: 2,
      tcpOptions: TCP_OPTS,
      payload: 13,
    }),
    buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 9 }),
    buildIcmpEcho4({ src: A4, dst: B4, echoId: 3, payload: 4 }),
    buildIPv6Tcp({ src: V6A, dst: V6B, srcPort: 1, dstPort: 2, tcpOptions: TCP_OPTS, payload: 3 }),
    buildIPv6Udp({
      src: V6A,
      dst: V6B,
      ext: [{ type: 0 }, { type: 43 }, { type: 60 }],
      srcPort: 1,
      dstPort: 2,
    }),
    buildIcmpEcho6({ src: V6A, dst: V6B, echoId: 3, payload: 1 }),
    ...fragmentIPv4(buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 50 }), 24),
    ...fragmentIPv6(buildIPv6Tcp({ src: V6A, dst: V6B, srcPort: 1, dstPort: 2, payload: 50 }), 32, 9),
  ];
  for (const p of samples) {
    for (const off of [0, 5]) {
      const buf = new Uint8Array(off + p.length + 16).fill(0x45); // garbage that looks like IPv4 around it
      buf.set(p, off);
      for (let len = 0; len <= p.length; len++) {
        const t = tracked(buf);
        let r = -1;
        try {
          r = parsePacket(t.view, off, len, info);
        } catch (e) {
          throw new Error(`threw at len ${len}: ${e}`);
        }
        if (len === p.length) {
          assertEquals(PARSE_RESULT_NAMES[r], "ok");
        } else {
          assert(r !== ParseResult.OK, `len ${len} of ${p.length} parsed OK`);
          assert(r > 0 && r < PARSE_RESULT_COUNT);
        }
        if (len > 0) {
          assert(
            t.lo() >= off && t.hi() < off + len,
            `read [${t.lo()}, ${t.hi()}] with off ${off} len ${len}`,
          );
        } else {
          assertEquals(t.hi(), -Infinity);
        }
      }
    }
  }
});

Deno.test("parse: random garbage never throws and stays in bounds", () => {
  const rnd = prng(99);
  const base = [
    buildIPv4Tcp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 40 }),
    buildIPv6Udp({
      src: V6A,
      dst: V6B,
      ext: [{ type: 0 }, { type: 44, offset: 0, more: true, id: 5 }],
      srcPort: 1,
      dstPort: 2,
      payload: 40,
    }),
  ];
  const seen = new Set<number>();
  for (let iter = 0; iter < 20000; iter++) {
    const p = base[iter & 1].slice();
    // Corrupt a few bytes in the headers.
    const n = 1 + Math.floor(rnd() * 4);
    for (let k = 0; k < n; k++) p[Math.floor(rnd() * Math.min(p.length, 80))] = Math.floor(rnd() * 256);
    const len = Math.floor(rnd() * (p.length + 1));
    const t = tracked(p);
    const r = parsePacket(t.view, 0, len, info);
    seen.add(r);
    assert(r >= 0 && r < PARSE_RESULT_COUNT);
    if (len > 0) assert(t.hi() < len);
  }
  assert(seen.size >= 8, `only ${seen.size} distinct results`);
});

// ---------------------------------------------------------------------------------------------
// Rewrites
// ---------------------------------------------------------------------------------------------

type Kind = "tcp" | "udp" | "icmp";

interface Case {
  v6: boolean;
  kind: Kind;
  partial: boolean;
  build(src: number | Uint8Array, dst: number | Uint8Array): Uint8Array;
}

/** Well-formed IPv4 options of random size: NOPs and experimental (type 30) options with random data, EOL padding. */
function randomIpOptions(rnd: () => number): Uint8Array {
  const b = new Uint8Array(4 * (1 + Math.floor(rnd() * 10)));
  let p = 0;
  while (p < b.length) {
    const room = b.length - p;
    if (rnd() < 0.3 || room < 2) {
      b[p++] = 1;
    } else if (rnd() < 0.1) {
      break; // EOL: the rest stays 0
    } else {
      const l = 2 + Math.floor(rnd() * (room - 1));
      b[p] = 30;
      b[p + 1] = l;
      for (let k = 2; k < l; k++) b[p + k] = Math.floor(rnd() * 256);
      p += l;
    }
  }
  return b;
}

function makeCase(rnd: () => number): Case {
  const v6 = rnd() < 0.5;
  const kind = (["tcp", "udp", "icmp"] as const)[Math.floor(rnd() * 3)];
  const partial = kind !== "icmp" && rnd() < 0.25;
  const zeroChecksum = !v6 && kind === "udp" && !partial && rnd() < 0.2;
  const payload = randomBytes(rnd, Math.floor(rnd() * (rnd() < 0.1 ? 1400 : 64)));
  const ipOptions = !v6 && rnd() < 0.3 ? randomIpOptions(rnd) : undefined;
  const tcpOptions = rnd() < 0.5 ? randomBytes(rnd, 4 * Math.floor(rnd() * 11)) : undefined;
  const exts: ExtHeader[] = [];
  if (v6 && rnd() < 0.3) {
    if (rnd() < 0.5) exts.push({ type: 0, data: randomBytes(rnd, Math.floor(rnd() * 20)) });
    if (rnd() < 0.5) exts.push({ type: 43, data: new Uint8Array(6) });
    exts.push({ type: 60 });
  }
  const srcPort = Math.floor(rnd() * 65536);
  const dstPort = Math.floor(rnd() * 65536);
  const id = Math.floor(rnd() * 65536);
  const ipId = Math.floor(rnd() * 65536);
  const ttl = Math.floor(rnd() * 256);
  const reply = rnd() < 0.5;
  return {
    v6,
    kind,
    partial,
    build(src, dst) {
      if (v6) {
        const h = { src: src as Uint8Array, dst: dst as Uint8Array, hopLimit: ttl, ext: exts };
        if (kind === "tcp") return buildIPv6Tcp({ ...h, srcPort, dstPort, tcpOptions, payload, partial });
        if (kind === "udp") return buildIPv6Udp({ ...h, srcPort, dstPort, payload, partial });
        return buildIcmpEcho6({ ...h, echoId: id, reply, payload, partial });
      }
      const h = { src: src as number, dst: dst as number, ttl, id: ipId, ipOptions };
      if (kind === "tcp") return buildIPv4Tcp({ ...h, srcPort, dstPort, tcpOptions, payload, partial });
      if (kind === "udp") return buildIPv4Udp({ ...h, srcPort, dstPort, payload, partial, zeroChecksum });
      return buildIcmpEcho4({ ...h, echoId: id, reply, payload });
    },
  };
}

function randAddr(rnd: () => number, v6: boolean): number | Uint8Array {
  if (v6) return randomBytes(rnd, 16);
  return Math.floor(rnd() * 0x100000000);
}

Deno.test("rewrite: random v4/v6 × TCP/UDP/ICMP echo packets equal freshly built ones, byte for byte", () => {
  const rnd = prng(7);
  const counts = new Map<string, number>();
  for (let iter = 0; iter < 4000; iter++) {
    const c = makeCase(rnd);
    const s0 = randAddr(rnd, c.v6), d0 = randAddr(rnd, c.v6);
    const s1 = rnd() < 0.05 ? s0 : randAddr(rnd, c.v6);
    const d1 = rnd() < 0.05 ? d0 : randAddr(rnd, c.v6);
    const mode = Math.floor(rnd() * 4); // 0 src only, 1 dst only, 2 both (two calls), 3 both (one call, v4)
    const before = c.build(s0, d0);
    const expected = c.build(mode === 1 ? s0 : s1, mode === 0 ? d0 : d1);
    const off = Math.floor(rnd() * 16);
    const buf = new Uint8Array(off + before.length + 8).fill(0xcc);
    buf.set(before, off);
    const i = parseOk(buf, off, before.length);
    if (c.v6) {
      if (mode !== 1) rewriteSrc6(buf, i, s1 as Uint8Array, 0, c.partial);
      if (mode !== 0) rewriteDst6(buf, i, d1 as Uint8Array, 0, c.partial);
    } else if (mode === 3) {
      rewriteAddrs4(buf, i, s1 as number, d1 as number, c.partial);
    } else {
      if (mode !== 1) rewriteSrc4(buf, i, s1 as number, c.partial);
      if (mode !== 0) rewriteDst4(buf, i, d1 as number, c.partial);
    }
    const tag = `iter ${iter} v6=${c.v6} ${c.kind} partial=${c.partial} mode=${mode}`;
    assertEquals(Array.from(buf.subarray(off, off + before.length)), Array.from(expected), tag);
    for (let k = 0; k < off; k++) assertEquals(buf[k], 0xcc);
    for (let k = off + before.length; k < buf.length; k++) assertEquals(buf[k], 0xcc);
    if (!c.v6) assertEquals([i.src4, i.dst4], [read32(buf, off + 12), read32(buf, off + 16)]);
    assert(checksumsValid(buf, parseOk(buf, off, before.length), c.partial), tag);
    const key = `${c.v6 ? 6 : 4}/${c.kind}${c.partial ? "/partial" : ""}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  // Every combination was exercised.
  assertEquals(counts.size, 10);
});

Deno.test("rewrite: IPv4 TCP with IP and TCP options, odd payload: src, dst and both", () => {
  const mk = (s: string, d: string) =>
    buildIPv4Tcp({
      src: s,
      dst: d,
      ipOptions: IP_OPTS,
      srcPort: 33000,
      dstPort: 8080,
      tcpOptions: TCP_OPTS,
      payload: 1357,
    });
  const p = mk("10.19.0.5", "10.30.0.9");
  const i = parseOk(p);
  rewriteSrc4(p, i, ip4("10.30.1.1"));
  assertEquals(p, mk("10.30.1.1", "10.30.0.9"));
  rewriteDst4(p, i, ip4("10.19.4.130"));
  assertEquals(p, mk("10.30.1.1", "10.19.4.130"));
  rewriteAddrs4(p, i, ip4("10.19.0.5"), ip4("10.30.0.9"));
  assertEquals(p, mk("10.19.0.5", "10.30.0.9"));
  assertEquals(read16(p, 10), computeIpHeaderChecksum(p, i));
  assertEquals(read16(p, 28 + 16), computeL4Checksum(p, i));
});

Deno.test("rewrite: ICMPv4 echo changes only addresses and the IP header checksum", () => {
  const p = buildIcmpEcho4({ src: A4, dst: B4, echoId: 77, payload: 31 });
  const icmpBefore = p.slice(20);
  const i = parseOk(p);
  rewriteAddrs4(p, i, ip4("10.19.0.1"), ip4("10.19.0.2"));
  assertEquals(p.slice(20), icmpBefore);
  assertEquals(p, buildIcmpEcho4({ src: "10.19.0.1", dst: "10.19.0.2", echoId: 77, payload: 31 }));
});

Deno.test("rewrite: UDP over IPv4 with checksum 0 keeps checksum 0", () => {
  const p = buildIPv4Udp({ src: A4, dst: B4, srcPort: 1000, dstPort: 2000, payload: 17, zeroChecksum: true });
  const i = parseOk(p);
  assertEquals(i.l4ChecksumOffset, -1);
  rewriteSrc4(p, i, ip4("10.19.7.7"));
  rewriteDst4(p, i, ip4("10.19.8.8"));
  assertEquals(read16(p, 26), 0);
  assertEquals(
    p,
    buildIPv4Udp({
      src: "10.19.7.7",
      dst: "10.19.8.8",
      srcPort: 1000,
      dstPort: 2000,
      payload: 17,
      zeroChecksum: true,
    }),
  );
  assert(checksumsValid(p, i));
});

/** Returns a payload whose last word makes the UDP checksum for (src, dst) compute to 0 (sent as 0xFFFF). */
function payloadForZeroSum(
  build: (payload: Uint8Array) => Uint8Array,
  l4Off: number,
  payloadLen: number,
): Uint8Array {
  const payload = new Uint8Array(payloadLen);
  for (let k = 0; k < payloadLen - 2; k++) payload[k] = k * 13;
  const p = build(payload);
  const c = read16(p, l4Off + 6); // ~sum with the last word 0; adding c makes the sum 0xFFFF
  payload[payloadLen - 2] = c >>> 8;
  payload[payloadLen - 1] = c & 0xff;
  return payload;
}

Deno.test("rewrite: a UDP result of 0 is written as 0xFFFF (v4 and v6), and 0xFFFF rewrites correctly", () => {
  // IPv4
  {
    const b4 = (s: string, d: string, payload: Uint8Array) =>
      buildIPv4Udp({ src: s, dst: d, srcPort: 4000, dstPort: 53, payload });
    const payload = payloadForZeroSum((pl) => b4("10.19.0.9", "10.30.0.3", pl), 20, 20);
    const target = b4("10.19.0.9", "10.30.0.3", payload);
    assertEquals(read16(target, 26), 0xffff);
    // Start from other addresses; rewrite into the target ones: the result must be 0xFFFF, not 0.
    const p = b4("10.30.0.77", "10.30.0.3", payload);
    assert(read16(p, 26) !== 0xffff);
    const i = parseOk(p);
    rewriteSrc4(p, i, ip4("10.19.0.9"));
    assertEquals(p, target);
    // And from 0xFFFF back out again.
    rewriteSrc4(p, i, ip4("10.30.0.77"));
    assertEquals(p, b4("10.30.0.77", "10.30.0.3", payload));
    // Same as TCP data would allow 0 (TCP has no substitution): a TCP result of 0 stays 0.
  }
  // IPv6
  {
    const b6 = (s: string, payload: Uint8Array) =>
      buildIPv6Udp({ src: s, dst: V6B, srcPort: 4000, dstPort: 53, payload });
    const payload = payloadForZeroSum((pl) => b6("fdff::5", pl), 40, 30);
    const target = b6("fdff::5", payload);
    assertEquals(read16(target, 46), 0xffff);
    const p = b6("fdff:2000::99", payload);
    const i = parseOk(p);
    rewriteSrc6(p, i, ip6("fdff::5"), 0);
    assertEquals(p, target);
    rewriteSrc6(p, i, ip6("fdff:2000::99"), 0);
    assertEquals(p, b6("fdff:2000::99", payload));
  }
});

Deno.test("rewrite: a TCP result of 0 is written as 0", () => {
  const bt = (s: string, payload: Uint8Array) =>
    buildIPv4Tcp({ src: s, dst: B4, srcPort: 1, dstPort: 2, payload });
  const payload = new Uint8Array(10);
  const c = read16(bt("10.19.0.9", payload), 36);
  payload[8] = c >>> 8;
  payload[9] = c & 0xff;
  const target = bt("10.19.0.9", payload);
  assertEquals(read16(target, 36), 0);
  const p = bt("10.30.5.5", payload);
  rewriteSrc4(p, parseOk(p), ip4("10.19.0.9"));
  assertEquals(p, target);
});

Deno.test("rewrite: CHECKSUM_PARTIAL fields are updated uncomplemented (TCP/UDP v4 and v6)", () => {
  const t4 = (s: string, d: string) =>
    buildIPv4Tcp({ src: s, dst: d, srcPort: 5, dstPort: 6, payload: 1448, partial: true });
  const p = t4(A4, B4);
  const i = parseOk(p);
  assertEquals(read16(p, 36), computeL4Checksum(p, i, true));
  rewriteAddrs4(p, i, ip4("10.19.0.1"), ip4("10.19.0.2"), true);
  assertEquals(p, t4("10.19.0.1", "10.19.0.2"));
  assert(checksumsValid(p, i, true));
  assert(!checksumsValid(p, i, false));
  const u6 = (s: string) =>
    buildIPv6Udp({ src: s, dst: V6B, srcPort: 5, dstPort: 6, payload: 999, partial: true });
  const q = u6(V6A);
  const j = parseOk(q);
  rewriteSrc6(q, j, ip6("fdff::1234"), 0, true);
  assertEquals(q, u6("fdff::1234"));
  // Completing a partial checksum (what the device does) yields the full checksum.
  const full = buildIPv6Udp({ src: "fdff::1234", dst: V6B, srcPort: 5, dstPort: 6, payload: 999 });
  fixChecksums(q, j);
  assertEquals(q, full);
});

Deno.test("rewrite: IPv6 with extension headers, source address taken from another buffer at an offset", () => {
  const ext: ExtHeader[] = [{ type: 0 }, { type: 60 }];
  const mk = (s: string, d: string) =>
    buildIPv6Tcp({ src: s, dst: d, ext, srcPort: 7, dstPort: 8, tcpOptions: TCP_OPTS, payload: 77 });
  const p = mk(V6A, V6B);
  const table = new Uint8Array(64);
  table.set(ip6("fdff:2000:1::42"), 5);
  table.set(ip6("fc00::abcd"), 30);
  const i = parseOk(p);
  rewriteSrc6(p, i, table, 5);
  rewriteDst6(p, i, table, 30);
  assertEquals(p, mk("fdff:2000:1::42", "fc00::abcd"));
});

// ---------------------------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------------------------

Deno.test("fragments: IPv4 first/non-first parse and rewrite; the reassembled datagram checks out", () => {
  for (const kind of ["udp", "tcp", "icmp"] as const) {
    const mk = (s: string, d: string) => {
      const h = { src: s, dst: d, ipOptions: IP_OPTS, id: 0x7777, flags: 0 };
      if (kind === "udp") return buildIPv4Udp({ ...h, srcPort: 1111, dstPort: 2222, payload: 1001 });
      if (kind === "tcp") {
        return buildIPv4Tcp({ ...h, srcPort: 1111, dstPort: 2222, payload: 1001, tcpOptions: TCP_OPTS });
      }
      return buildIcmpEcho4({ ...h, echoId: 1111, payload: 1001 });
    };
    const frags = fragmentIPv4(mk(A4, B4), 248);
    assert(frags.length === 5);
    frags.forEach((f, k) => {
      const i = parseOk(f);
      assertEquals([i.isFragment, i.isFirstFragment, i.fragOffset, i.fragId], [
        true,
        k === 0,
        k * 248,
        0x7777,
      ]);
      if (k === 0) {
        assertEquals([i.srcPort, i.dstPort], [1111, kind === "icmp" ? 1111 : 2222]);
        assertEquals(i.l4ChecksumOffset >= 0, kind !== "icmp");
      } else {
        assertEquals([i.srcPort, i.dstPort, i.l4HeaderLen, i.l4ChecksumOffset, i.l4Offset], [
          0,
          0,
          0,
          -1,
          28,
        ]);
      }
      assertEquals(computeL4Checksum(f, i), -1);
      rewriteSrc4(f, i, ip4("10.19.0.3"));
      rewriteDst4(f, i, ip4("10.19.0.4"));
      assert(checksumsValid(f, i), `fragment ${k}`);
    });
    assertEquals(reassembleIPv4(frags), mk("10.19.0.3", "10.19.0.4"), kind);
  }
});

Deno.test("fragments: IPv6 first/non-first parse and rewrite; atomic fragments are not fragments", () => {
  for (const kind of ["udp", "tcp", "icmp"] as const) {
    const mk = (s: string, d: string) => {
      const h = { src: s, dst: d };
      if (kind === "udp") return buildIPv6Udp({ ...h, srcPort: 1111, dstPort: 2222, payload: 1001 });
      if (kind === "tcp") return buildIPv6Tcp({ ...h, srcPort: 1111, dstPort: 2222, payload: 1001 });
      return buildIcmpEcho6({ ...h, echoId: 1111, payload: 1001 });
    };
    const frags = fragmentIPv6(mk(V6A, V6B), 256, 0xdeadbeef);
    frags.forEach((f, k) => {
      const i = parseOk(f);
      assertEquals(
        [i.isFragment, i.isFirstFragment, i.fragOffset, i.fragId, i.ipHeaderLen],
        [true, k === 0, k * 256, 0xdeadbeef, 48],
      );
      if (k > 0) assertEquals([i.srcPort, i.dstPort, i.l4ChecksumOffset], [0, 0, -1]);
      else assertEquals(i.srcPort, 1111);
      rewriteSrc6(f, i, ip6("fdff::3"), 0);
      rewriteDst6(f, i, ip6("fdff::4"), 0);
    });
    assertEquals(reassembleIPv6(frags), mk("fdff::3", "fdff::4"), kind);
  }
  const atomic = buildIPv6Udp({
    src: V6A,
    dst: V6B,
    ext: [{ type: 44, offset: 0, more: false, id: 1 }],
    srcPort: 3,
    dstPort: 4,
    payload: 5,
  });
  const i = parseOk(atomic);
  assertEquals([i.isFragment, i.isFirstFragment, i.srcPort, i.l4ChecksumOffset], [false, false, 3, 54]);
  assert(checksumsValid(atomic, i));
});

Deno.test("fragments: tiny first fragments and the RFC 1858 offset are dropped as bad_fragment", () => {
  const t = buildIPv4Tcp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 100 });
  const tiny = fragmentIPv4(t, 8);
  assertEquals(reason(tiny[0]), "bad_fragment");
  assertEquals(reason(tiny[1]), "bad_fragment"); // TCP at offset 8 could overwrite the flags
  assertEquals(reason(tiny[2]), "ok");
  const u = buildIPv4Udp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, payload: 100 });
  assertEquals(reason(fragmentIPv4(u, 8)[0]), "ok"); // a UDP header fits in 8 bytes
  const tcp16 = fragmentIPv4(
    buildIPv4Tcp({ src: A4, dst: B4, srcPort: 1, dstPort: 2, tcpOptions: TCP_OPTS, payload: 9 }),
    32,
  );
  assertEquals(reason(tcp16[0]), "bad_fragment"); // 40-byte TCP header in a 32-byte first fragment
  const t6 = fragmentIPv6(buildIPv6Tcp({ src: V6A, dst: V6B, srcPort: 1, dstPort: 2, payload: 40 }), 16, 1);
  assertEquals(reason(t6[0]), "bad_fragment");
  assertEquals(reason(t6[1]), "ok");
  // A non-first IPv6 fragment whose next header is an extension header.
  const odd = buildIPv6(
    { src: V6A, dst: V6B, ext: [{ type: 44, offset: 64, more: false, id: 1 }] },
    60,
    new Uint8Array(16),
    { rawSegment: true },
  );
  assertEquals(reason(odd), "unsupported_ext_header");
  const odd2 = buildIPv6(
    { src: V6A, dst: V6B, ext: [{ type: 44, offset: 64, more: false, id: 1 }] },
    132,
    new Uint8Array(16),
    { rawSegment: true },
  );
  assertEquals(reason(odd2), "unsupported_proto");
});

// ---------------------------------------------------------------------------------------------
// Address helpers
// ---------------------------------------------------------------------------------------------

Deno.test("read32/write32 round-trip unsigned values", () => {
  const b = new Uint8Array(8);
  write32(b, 2, 0xfedcba98);
  assertEquals(Array.from(b), [0, 0, 0xfe, 0xdc, 0xba, 0x98, 0, 0]);
  assertEquals(read32(b, 2), 0xfedcba98);
  write32(b, 0, ip4(A4));
  assertEquals(read32(b, 0), 0x0a1e0001);
});

Deno.test("ipv6Equal / ipv6Copy / ipv6Key", () => {
  const a = new Uint8Array(40);
  a.set(ip6(V6A), 3);
  const b = new Uint8Array(16);
  ipv6Copy(b, 0, a, 3);
  assert(ipv6Equal(a, 3, b, 0));
  b[15] ^= 1;
  assert(!ipv6Equal(a, 3, b, 0));
  assertEquals(ipv6Key(a, 3), ipv6Key(ip6(V6A), 0));
  assert(ipv6Key(a, 3) !== ipv6Key(b, 0));
  // Keys are integers in [0, 2^52) and do not collide over structured and random address sets.
  const rnd = prng(5);
  const keys = new Set<number>();
  const base = ip6("fdff:2000::");
  const x = new Uint8Array(16);
  let n = 0;
  for (let k = 0; k < 65536; k++, n++) {
    x.set(base);
    x[14] = k >>> 8;
    x[15] = k & 0xff;
    keys.add(ipv6Key(x, 0));
    x.set(base);
    x[2] = k >>> 8; // vary the prefix instead
    x[3] = k & 0xff;
    keys.add(ipv6Key(x, 0));
    n++;
  }
  for (let k = 0; k < 100000; k++, n++) {
    const r = randomBytes(rnd, 16);
    const key = ipv6Key(r, 0);
    assert(Number.isSafeInteger(key) && key >= 0 && key < 2 ** 52);
    keys.add(key);
  }
  assertEquals(keys.size, n - 1); // fdff:2000:: itself appears in both structured loops once
});
