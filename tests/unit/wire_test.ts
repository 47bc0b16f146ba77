import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { seededRandom } from "../../src/proxy/balance.ts";
import {
  CAP_FAST,
  CAP_PROBE,
  classify,
  decodeFast,
  decodeHello,
  decodeProbe,
  encodeFastHeader,
  encodeHello,
  encodeHelloAck,
  encodeProbe,
  encodeProbeReply,
  FAST_F_DATA_VALID,
  FAST_F_NEEDS_CSUM,
  FAST_HEADER_LEN,
  FastHeader,
  HELLO_FIXED_LEN,
  HELLO_MAX_LEN,
  HelloMessage,
  isValidNodeId,
  MSG_FAST,
  MSG_HELLO,
  MSG_HELLO_ACK,
  MSG_JUMBO,
  MSG_PROBE,
  MSG_PROBE_REPLY,
  PROBE_LEN,
  ProbeMessage,
  probeToReplyInPlace,
  WIRE_KIND_COUNT,
  WIRE_KIND_NAMES,
  WireError,
  WireKind,
} from "../../src/proxy/wire.ts";

const WORKER = "65f1a2b3c4d5e6f708192a3b"; // a 24-hex worker id

/** A minimal IPv4/TCP packet (20 + 20 bytes, 4 payload bytes). */
function tcp4(): Uint8Array {
  const p = new Uint8Array(44);
  p[0] = 0x45;
  p[2] = 0;
  p[3] = 44;
  p[8] = 64;
  p[9] = 6;
  p.set([10, 30, 0, 1], 12);
  p.set([10, 18, 0, 130], 16);
  p[32] = 0x50; // data offset 5
  p.set([1, 2, 3, 4], 40);
  return p;
}

/** A minimal IPv6/UDP packet (40 + 8 bytes). */
function udp6(): Uint8Array {
  const p = new Uint8Array(48);
  p[0] = 0x60;
  p[5] = 8;
  p[6] = 17;
  p[7] = 64;
  p[8] = 0xfd;
  p[24] = 0xfd;
  p[45] = 8;
  return p;
}

Deno.test("classify: raw IPv4/IPv6 by first nibble, ours by 0x1T, the rest invalid", () => {
  const b = new Uint8Array(100);
  for (let first = 0; first < 256; first++) {
    b[0] = first;
    const k = classify(b, 0, 100);
    const hi = first >> 4;
    const want = hi === 4
      ? WireKind.RAW_V4
      : hi === 6
      ? WireKind.RAW_V6
      : first === MSG_HELLO
      ? WireKind.HELLO
      : first === MSG_HELLO_ACK
      ? WireKind.HELLO_ACK
      : first === MSG_PROBE
      ? WireKind.PROBE
      : first === MSG_PROBE_REPLY
      ? WireKind.PROBE_REPLY
      : first === MSG_FAST
      ? WireKind.FAST
      : first === MSG_JUMBO
      ? WireKind.JUMBO
      : hi === 1
      ? WireKind.UNKNOWN
      : WireKind.INVALID;
    assertEquals(k, want, `first byte 0x${first.toString(16)}`);
  }
  assertEquals(classify(tcp4(), 0, 44), WireKind.RAW_V4);
  assertEquals(classify(tcp4(), 0, 20), WireKind.RAW_V4);
  assertEquals(classify(tcp4(), 0, 19), WireKind.INVALID, "shorter than an IPv4 header");
  assertEquals(classify(udp6(), 0, 48), WireKind.RAW_V6);
  assertEquals(classify(udp6(), 0, 39), WireKind.INVALID, "shorter than an IPv6 header");
});

Deno.test("classify: bounds are checked, never throws", () => {
  const p = tcp4();
  const b = new Uint8Array(50);
  b.set(p, 6);
  assertEquals(classify(b, 6, 44), WireKind.RAW_V4);
  assertEquals(classify(b, 6, 45), WireKind.INVALID, "off + len past the end");
  assertEquals(classify(b, 0, 0), WireKind.INVALID, "empty");
  assertEquals(classify(b, -1, 10), WireKind.INVALID);
  assertEquals(classify(b, 50, 1), WireKind.INVALID);
  assertEquals(classify(b, 1.5, 10), WireKind.INVALID);
  assertEquals(classify(new Uint8Array(0), 0, 1), WireKind.INVALID);
});

Deno.test("kind names cover every kind", () => {
  assertEquals(WIRE_KIND_NAMES.length, WIRE_KIND_COUNT);
  assertEquals(Object.keys(WireKind).length, WIRE_KIND_COUNT);
  for (const [name, v] of Object.entries(WireKind)) assertEquals(WIRE_KIND_NAMES[v], name.toLowerCase());
});

Deno.test("HELLO and HELLO_ACK round trip at an offset, exact bytes", () => {
  const buf = new Uint8Array(200).fill(0xee);
  const n = encodeHello(buf, 3, {
    caps: CAP_FAST | CAP_PROBE,
    nonceHi: 0xdeadbeef,
    nonceLo: 0x01020304,
    hostPort: 50103,
    nodeId: "w1",
  });
  assertEquals(n, HELLO_FIXED_LEN + 2);
  assertEquals(
    [...buf.subarray(3, 3 + n)],
    [
      0x10,
      1,
      0x4e,
      0x4d, // type, version, "NM"
      0,
      0,
      0,
      3, // caps
      0xde,
      0xad,
      0xbe,
      0xef,
      1,
      2,
      3,
      4, // nonce
      0xc3,
      0xb7, // 50103
      2,
      0x77,
      0x31, // "w1"
    ],
  );
  assertEquals(buf[2], 0xee, "nothing written before off");
  assertEquals(buf[3 + n], 0xee, "nothing written after the message");
  assertEquals(classify(buf, 3, n), WireKind.HELLO);
  const m = new HelloMessage();
  assert(decodeHello(buf, 3, n, m));
  assertEquals({ ...m }, {
    type: MSG_HELLO,
    version: 1,
    caps: 3,
    nonceHi: 0xdeadbeef,
    nonceLo: 0x01020304,
    hostPort: 50103,
    nodeId: "w1",
  });

  const a = encodeHelloAck(buf, 0, {
    caps: CAP_PROBE,
    nonceHi: 0xdeadbeef,
    nonceLo: 0x01020304,
    hostPort: 1,
    nodeId: WORKER,
  });
  assertEquals(a, HELLO_FIXED_LEN + 24);
  assertEquals(classify(buf, 0, a), WireKind.HELLO_ACK);
  assert(decodeHello(buf, 0, a, m), "the same object is reused");
  assertEquals({ ...m }, {
    type: MSG_HELLO_ACK,
    version: 1,
    caps: CAP_PROBE,
    nonceHi: 0xdeadbeef,
    nonceLo: 0x01020304,
    hostPort: 1,
    nodeId: WORKER,
  });
});

Deno.test("HELLO: empty and 64-byte node ids, all-ones fields, extensions tolerated", () => {
  const buf = new Uint8Array(HELLO_MAX_LEN + 10);
  const m = new HelloMessage();
  const id64 = "x".repeat(64);
  const n = encodeHello(buf, 0, {
    caps: 0xffffffff,
    nonceHi: 0xffffffff,
    nonceLo: 0,
    hostPort: 65535,
    nodeId: id64,
  });
  assertEquals(n, HELLO_MAX_LEN);
  assert(decodeHello(buf, 0, n, m));
  assertEquals([m.caps, m.nonceHi, m.nonceLo, m.hostPort, m.nodeId], [
    0xffffffff,
    0xffffffff,
    0,
    65535,
    id64,
  ]);
  assert(decodeHello(buf, 0, n + 10, m), "trailing bytes are ignored");
  assertEquals(m.nodeId, id64);

  const e = encodeHello(buf, 0, { caps: 0, nonceHi: 0, nonceLo: 0, hostPort: 0, nodeId: "" });
  assertEquals(e, HELLO_FIXED_LEN);
  assert(decodeHello(buf, 0, e, m));
  assertEquals(m.nodeId, "");

  buf[1] = 7; // a later version with the same prefix
  assert(decodeHello(buf, 0, e, m));
  assertEquals(m.version, 7);
});

Deno.test("HELLO: malformed contents are rejected", () => {
  const m = new HelloMessage();
  const good = new Uint8Array(HELLO_MAX_LEN + 8);
  const n = encodeHello(good, 0, { caps: 1, nonceHi: 2, nonceLo: 3, hostPort: 4, nodeId: "node-1" });
  const bad = (mutate: (b: Uint8Array) => void, why: string) => {
    const b = good.slice();
    mutate(b);
    assertEquals(decodeHello(b, 0, n + 8, m), false, why);
  };
  bad((b) => b[0] = MSG_PROBE, "not a hello type");
  bad((b) => b[1] = 0, "version 0");
  bad((b) => b[2] = 0x4f, "bad magic");
  bad((b) => b[3] = 0, "bad magic (low byte)");
  bad((b) => b[18] = 65, "id longer than 64");
  bad((b) => b[HELLO_FIXED_LEN + 1] = 0x20, "space in id");
  bad((b) => b[HELLO_FIXED_LEN] = 0x7f, "DEL in id");
  bad((b) => b[HELLO_FIXED_LEN + 2] = 0xc3, "non-ASCII in id");
  assert(decodeHello(good, 0, n, m));
  assertEquals(decodeHello(good, 0, n + 1000, m), false, "len past the buffer");
});

Deno.test("encoders throw WireError on caller errors", () => {
  const buf = new Uint8Array(64);
  const f = { caps: 0, nonceHi: 0, nonceLo: 0, hostPort: 50103, nodeId: "w" };
  assertThrows(() => encodeHello(buf, 0, { ...f, nodeId: "y".repeat(65) }), WireError, "node id");
  assertThrows(() => encodeHello(buf, 0, { ...f, nodeId: "a b" }), WireError, "node id");
  assertThrows(() => encodeHello(buf, 0, { ...f, nodeId: "é" }), WireError, "node id");
  assertThrows(() => encodeHello(buf, 0, { ...f, hostPort: 65536 }), WireError, "port");
  assertThrows(() => encodeHello(buf, 0, { ...f, caps: -1 }), WireError, "uint32");
  assertThrows(() => encodeHello(buf, 0, { ...f, nonceLo: 2 ** 32 }), WireError, "uint32");
  assertThrows(() => encodeHello(buf, 45, f), WireError, "needs 20 bytes");
  assertThrows(() => encodeHelloAck(buf, -1, f), WireError);
  assertThrows(() => encodeProbe(buf, 49, 1, 0), WireError, "needs 16 bytes");
  assertThrows(() => encodeProbe(buf, 0, -1, 0), WireError, "uint32");
  assertThrows(() => encodeProbe(buf, 0, 1, NaN), WireError, "finite");
  assertThrows(() => encodeProbeReply(buf, 0, 1, Infinity), WireError, "finite");
  assertThrows(() => encodeFastHeader(buf, 57, 0, 0, 0), WireError, "needs 8 bytes");
  assertThrows(() => encodeFastHeader(buf, 0, 4, 0, 0), WireError, "flags");
  assertThrows(() => encodeFastHeader(buf, 0, 1, 70000, 0), WireError, "offsets");
  assert(isValidNodeId(WORKER));
  assert(!isValidNodeId("tab\there"));
});

Deno.test("PROBE and PROBE_REPLY round trip: seq and µs timestamp echoed exactly", () => {
  const buf = new Uint8Array(40);
  assertEquals(encodeProbe(buf, 0, 1, 1.0), PROBE_LEN);
  assertEquals([...buf.subarray(0, 16)], [0x12, 0, 0, 0, 0, 0, 0, 1, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
  const m = new ProbeMessage();
  const ts = 1234567890.123456; // fractional µs survive
  assertEquals(encodeProbe(buf, 5, 0xffffffff, ts), 16);
  assertEquals(classify(buf, 5, 16), WireKind.PROBE);
  assert(decodeProbe(buf, 5, 16, m));
  assertEquals({ ...m }, { type: MSG_PROBE, seq: 0xffffffff, timestampUs: ts });

  assert(probeToReplyInPlace(buf, 5, 16));
  assertEquals(classify(buf, 5, 16), WireKind.PROBE_REPLY);
  assert(decodeProbe(buf, 5, 16, m));
  assertEquals({ ...m }, { type: MSG_PROBE_REPLY, seq: 0xffffffff, timestampUs: ts });
  assertEquals(probeToReplyInPlace(buf, 5, 16), false, "already a reply");

  encodeProbeReply(buf, 0, 42, -5.5);
  assert(decodeProbe(buf, 0, 16, m));
  assertEquals({ ...m }, { type: MSG_PROBE_REPLY, seq: 42, timestampUs: -5.5 });
  assert(decodeProbe(buf, 0, 40, m), "padding after 16 bytes is ignored");
  buf[1] = 0xff;
  assert(decodeProbe(buf, 0, 16, m), "flags/reserved are ignored");
});

Deno.test("PROBE: non-finite timestamps and wrong types are rejected", () => {
  const m = new ProbeMessage();
  const b = new Uint8Array(16);
  encodeProbe(b, 0, 1, 0);
  b.set([0x7f, 0xf8, 0, 0, 0, 0, 0, 0], 8); // NaN
  assertEquals(decodeProbe(b, 0, 16, m), false);
  b.set([0x7f, 0xf0, 0, 0, 0, 0, 0, 0], 8); // +Inf
  assertEquals(decodeProbe(b, 0, 16, m), false);
  b.set([0, 0, 0, 0, 0, 0, 0, 0], 8);
  assert(decodeProbe(b, 0, 16, m));
  b[0] = MSG_HELLO;
  assertEquals(decodeProbe(b, 0, 16, m), false);
});

Deno.test("FAST header: exact bytes, decode, object reuse", () => {
  const pkt = tcp4();
  const buf = new Uint8Array(FAST_HEADER_LEN + pkt.length + 4);
  assertEquals(encodeFastHeader(buf, 2, FAST_F_NEEDS_CSUM, 20, 16), FAST_HEADER_LEN);
  assertEquals([...buf.subarray(2, 10)], [MSG_FAST, 1, 0, 20, 0, 16, 0, 0]);
  buf.set(pkt, 10);
  const n = FAST_HEADER_LEN + pkt.length;
  assertEquals(classify(buf, 2, n), WireKind.FAST);
  const h = new FastHeader();
  assert(decodeFast(buf, 2, n, h));
  assertEquals({ ...h }, { flags: 1, csumStart: 20, csumOffset: 16, packetOffset: 10, packetLength: 44 });
  assertEquals(buf[h.packetOffset], 0x45);

  // IPv6/UDP without NEEDS_CSUM, DATA_VALID only; offsets are ignored then.
  const p6 = udp6();
  const b6 = new Uint8Array(FAST_HEADER_LEN + p6.length);
  encodeFastHeader(b6, 0, FAST_F_DATA_VALID, 0, 0);
  b6.set(p6, 8);
  assert(decodeFast(b6, 0, b6.length, h), "same object, new values");
  assertEquals({ ...h }, { flags: 2, csumStart: 0, csumOffset: 0, packetOffset: 8, packetLength: 48 });
  b6[2] = 0xff; // garbage csum_start is fine without NEEDS_CSUM
  assert(decodeFast(b6, 0, b6.length, h));
  // IPv6/UDP with NEEDS_CSUM: checksum field at 40 + 6
  encodeFastHeader(b6, 0, FAST_F_NEEDS_CSUM, 40, 6);
  assert(decodeFast(b6, 0, b6.length, h));
  assertEquals([h.csumStart, h.csumOffset], [40, 6]);
});

Deno.test("FAST header: malformed datagrams are rejected", () => {
  const pkt = tcp4();
  const good = new Uint8Array(FAST_HEADER_LEN + pkt.length);
  encodeFastHeader(good, 0, FAST_F_NEEDS_CSUM, 20, 16);
  good.set(pkt, 8);
  const h = new FastHeader();
  const bad = (mutate: (b: Uint8Array) => void, why: string, len = good.length) => {
    const b = good.slice();
    mutate(b);
    assertEquals(decodeFast(b, 0, len, h), false, why);
  };
  bad((b) => b[1] = 0x04, "unknown flag");
  bad((b) => b[1] = 0x81, "unknown high flag");
  bad((b) => b[3] = 19, "csum_start inside the IPv4 header minimum");
  bad((b) => b[5] = 23, "checksum field past the packet (20 + 23 + 2 > 44)");
  bad((b) => b[2] = 1, "csum_start 276 past the packet");
  bad((b) => b[8] = 0x55, "inner packet is not IPv4/IPv6");
  bad((b) => b[8] = 0x15, "a FAST inside FAST");
  bad((b) => b[8] = 0x60, "IPv6 shorter than 40 bytes", 8 + 39);
  bad((b) => b[0] = MSG_PROBE, "not FAST");
  bad(() => {}, "shorter than header + 20", 27);
  const edge = good.slice();
  edge[5] = 22; // 20 + 22 + 2 = 44: the last two bytes
  assert(decodeFast(edge, 0, edge.length, h));
});

/** Every strict prefix of a valid message classifies INVALID and fails to decode, without throwing. */
function checkTruncations(
  msg: Uint8Array,
  kind: WireKind,
  decode: (b: Uint8Array, off: number, len: number) => boolean,
): void {
  for (let len = 0; len < msg.length; len++) {
    // prefix given by length inside a larger buffer
    assertEquals(classify(msg, 0, len), WireKind.INVALID, `classify len ${len}`);
    assertEquals(decode(msg, 0, len), false, `decode len ${len}`);
    // a buffer physically cut short but the caller claiming the full length
    const cut = msg.slice(0, len);
    assertEquals(classify(cut, 0, msg.length), WireKind.INVALID, `classify cut ${len}`);
    assertEquals(decode(cut, 0, msg.length), false, `decode cut ${len}`);
  }
  assertEquals(classify(msg, 0, msg.length), kind);
  assert(decode(msg, 0, msg.length));
}

Deno.test("truncated inputs at every length: INVALID / false, never a throw", () => {
  const hm = new HelloMessage();
  const pm = new ProbeMessage();
  const fh = new FastHeader();
  const dh = (b: Uint8Array, o: number, l: number) => decodeHello(b, o, l, hm);
  const dp = (b: Uint8Array, o: number, l: number) => decodeProbe(b, o, l, pm);
  const df = (b: Uint8Array, o: number, l: number) => decodeFast(b, o, l, fh);
  const f = { caps: 3, nonceHi: 9, nonceLo: 8, hostPort: 50103, nodeId: WORKER };

  let b = new Uint8Array(HELLO_MAX_LEN);
  checkTruncations(b.slice(0, encodeHello(b, 0, f)), WireKind.HELLO, dh);
  b = new Uint8Array(HELLO_MAX_LEN);
  checkTruncations(b.slice(0, encodeHelloAck(b, 0, f)), WireKind.HELLO_ACK, dh);
  b = new Uint8Array(PROBE_LEN);
  checkTruncations(b.slice(0, encodeProbe(b, 0, 7, 123.5)), WireKind.PROBE, dp);
  b = new Uint8Array(PROBE_LEN);
  checkTruncations(b.slice(0, encodeProbeReply(b, 0, 7, 123.5)), WireKind.PROBE_REPLY, dp);
  // FAST with the shortest acceptable inner packet (a bare IPv4 header, no checksum work)
  b = new Uint8Array(FAST_HEADER_LEN + 20);
  encodeFastHeader(b, 0, 0, 0, 0);
  b[8] = 0x45;
  checkTruncations(b, WireKind.FAST, df);
});

Deno.test("fuzz: random datagrams never throw; a successful decode agrees with classify", () => {
  const rnd = seededRandom(1234);
  const hm = new HelloMessage();
  const pm = new ProbeMessage();
  const fh = new FastHeader();
  const buf = new Uint8Array(128);
  const counts = new Array<number>(WIRE_KIND_COUNT).fill(0);
  for (let i = 0; i < 20000; i++) {
    for (let j = 0; j < buf.length; j++) buf[j] = (rnd() * 256) | 0;
    // bias towards our types and short id lengths so the decoders get exercised
    if (i % 2 === 0) buf[0] = 0x10 + ((rnd() * 6) | 0);
    if (i % 3 === 0) buf[18] = (rnd() * 80) | 0;
    if (i % 4 === 0) buf.set([1, 0x4e, 0x4d], 1);
    const len = (rnd() * 129) | 0;
    const k = classify(buf, 0, len);
    counts[k]++;
    const h = decodeHello(buf, 0, len, hm);
    const p = decodeProbe(buf, 0, len, pm);
    const f = decodeFast(buf, 0, len, fh);
    if (h) assert(k === WireKind.HELLO || k === WireKind.HELLO_ACK);
    if (p) assert(k === WireKind.PROBE || k === WireKind.PROBE_REPLY);
    if (f) assertEquals(k, WireKind.FAST);
  }
  for (const kind of [WireKind.HELLO, WireKind.PROBE, WireKind.FAST, WireKind.UNKNOWN, WireKind.INVALID]) {
    assert(counts[kind] > 0, `fuzz reached ${WIRE_KIND_NAMES[kind]}`);
  }
});
