/**
 * Unit tests for src/proxy/offload.ts: GSO splitting of TCP (v4/v6, options, extension headers,
 * flags, wrap-around) and UDP (USO) super-packets, checked byte for byte against segments built
 * independently with the test packet builders (as the kernel would emit them with TSO off), in full
 * and partial checksum modes; NEEDS_CSUM completion; rejected vnet headers; arena limits and
 * layouts. Coalescing: split → coalesce round trips back to the original super-packet (v4/v6,
 * partial and complete), and the cases that must not coalesce (order, gaps, flows, flags, header
 * fields, checksums, IDs, the 64 KB bound, batch limits).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  buildIPv4Tcp,
  buildIPv4Udp,
  buildIPv6Tcp,
  buildIPv6Udp,
  type ExtHeader,
  type IPv4Header,
  type IPv6Header,
  prng,
  randomBytes,
  type TcpFields,
} from "../helpers/packets.ts";
import { onesSum } from "../../src/proxy/checksum.ts";
import {
  checksumsValid,
  computeL4Checksum,
  PacketInfo,
  parsePacket,
  ParseResult,
} from "../../src/proxy/packet.ts";
import {
  Coalescer,
  CoalesceResult,
  GSO_ERROR_NAMES,
  GsoError,
  MAX_SUPER_PACKET,
  OffloadConfigError,
  SegmentBatch,
  Segmenter,
} from "../../src/proxy/offload.ts";
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_NONE,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_GSO_UDP,
  VNET_GSO_UDP_L4,
  VNET_HDR_LEN,
  VnetHdr,
} from "../../ffi/vnet.ts";
import { assertThrows } from "../helpers/assert.ts";

const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const PSH = 0x08;
const ACK = 0x10;
const URG = 0x20;
const ECE = 0x40;
const CWR = 0x80;

/** TCP options as Linux sends on data segments: NOP NOP timestamp (12 bytes). */
const TS_OPTS = new Uint8Array([1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78]);
/** IPv4 options: NOP ×3, end of list (walked by the parser, copied verbatim by GSO). */
const IP_OPTS = new Uint8Array([1, 1, 1, 0]);

const H4: IPv4Header = { src: "10.30.0.1", dst: "10.30.0.2", id: 0x4321, ttl: 63, tos: 0x10 };
const H6: IPv6Header = {
  src: "fdff::1",
  dst: "fdff:1::2",
  hopLimit: 61,
  flowLabel: 0xabcde,
  trafficClass: 0x20,
};
const TCP: TcpFields = { srcPort: 40000, dstPort: 5201, seq: 0x10000000, ack: 0x22334455, window: 501 };

const info = new PacketInfo();

function parseOk(b: Uint8Array): PacketInfo {
  const r = parsePacket(b, 0, b.length, info);
  assertEquals(r, ParseResult.OK);
  return info;
}

function u16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v & 0xff;
}

/** The field value the kernel stores for a complete checksum (skb_checksum_help: 0 → 0xFFFF). */
function kernelFull(c: number): number {
  return c === 0 ? 0xffff : c;
}

/** Offset of the L4 checksum field of a parsed TCP/UDP packet. */
function fieldOf(i: PacketInfo): number {
  return i.l4Offset + (i.protocol === 6 ? 16 : 6);
}

/** Replaces a CHECKSUM_PARTIAL L4 field by the complete checksum, as the kernel would (in place). */
function completePartial(b: Uint8Array): Uint8Array {
  const i = parseOk(b);
  const f = fieldOf(i);
  put16(b, f, kernelFull(~onesSum(b, i.l4Offset, i.l4Len, 0) & 0xffff));
  return b;
}

/** True when the segment's checksums are complete and correct (full recomputation, checksum.ts). */
function fullValid(b: Uint8Array): boolean {
  const i = parseOk(b);
  if (checksumsValid(b, i)) return true;
  return u16(b, fieldOf(i)) === 0xffff && computeL4Checksum(b, i) === 0;
}

function vnet(
  gsoType: number,
  gsoSize: number,
  csumStart: number,
  csumOffset: number,
  hdrLen: number,
  flags = VNET_F_NEEDS_CSUM,
): VnetHdr {
  const h = new VnetHdr();
  h.flags = flags;
  h.gsoType = gsoType;
  h.gsoSize = gsoSize;
  h.csumStart = csumStart;
  h.csumOffset = csumOffset;
  h.hdrLen = hdrLen;
  return h;
}

interface TcpSuper {
  /** The super-packet as a TUN read returns it (L4 field partial). */
  pkt: Uint8Array;
  hdr: VnetHdr;
  payload: Uint8Array;
}

function super4(payload: Uint8Array, mss: number, extra: Partial<IPv4Header & TcpFields> = {}): TcpSuper {
  const pkt = buildIPv4Tcp({ ...H4, ...TCP, ...extra, payload, partial: true });
  const ihl = (pkt[0] & 15) * 4;
  const thl = (pkt[ihl + 12] >>> 4) * 4;
  return { pkt, payload, hdr: vnet(VNET_GSO_TCPV4, mss, ihl, 16, ihl + thl) };
}

function super6(
  payload: Uint8Array,
  mss: number,
  extra: Partial<IPv6Header & TcpFields> = {},
): TcpSuper {
  const pkt = buildIPv6Tcp({ ...H6, ...TCP, ...extra, payload, partial: true });
  const i = parseOk(pkt);
  const l4 = i.l4Offset;
  return { pkt, payload, hdr: vnet(VNET_GSO_TCPV6, mss, l4, 16, l4 + i.l4HeaderLen) };
}

/**
 * The segments the kernel emits for a TCP super-packet, built independently: the same headers with
 * IPv4 ID + k, seq + k·mss, FIN/PSH only on the last, CWR only on the first, lengths and checksums
 * (complete, with 0 stored as 0xFFFF, or partial).
 */
function expectedTcp(
  v6: boolean,
  payload: Uint8Array,
  mss: number,
  extra: Partial<IPv4Header & IPv6Header & TcpFields>,
  partial: boolean,
): Uint8Array[] {
  const out: Uint8Array[] = [];
  const n = Math.max(1, Math.ceil(payload.length / mss));
  const flags = extra.tcpFlags ?? 0x18;
  const seq = extra.seq ?? TCP.seq!;
  for (let k = 0; k < n; k++) {
    let f = flags;
    if (k !== n - 1) f &= ~(FIN | PSH);
    if (k !== 0) f &= ~CWR;
    const chunk = payload.slice(k * mss, Math.min(payload.length, (k + 1) * mss));
    const fields = { ...TCP, ...extra, tcpFlags: f, seq: (seq + k * mss) >>> 0, payload: chunk, partial };
    const b = v6
      ? buildIPv6Tcp({ ...H6, ...extra, ...fields })
      : buildIPv4Tcp({ ...H4, ...extra, ...fields, id: ((extra.id ?? H4.id!) + k) & 0xffff });
    if (!partial) {
      const i = parseOk(b);
      put16(b, fieldOf(i), kernelFull(u16(b, fieldOf(i))));
    }
    out.push(b);
  }
  return out;
}

function segBytes(batch: SegmentBatch, i: number): Uint8Array {
  return batch.buf.slice(batch.offsets[i], batch.offsets[i] + batch.lengths[i]);
}

function runSplit(
  s: { pkt: Uint8Array; hdr: VnetHdr },
  mode: "full" | "partial",
  batch = new SegmentBatch({ mtu: 1500, headroom: 4, capacity: 64 }),
  seg = new Segmenter(),
): { n: number; segs: Uint8Array[]; seg: Segmenter; batch: SegmentBatch } {
  // The super-packet sits behind a vnet header in a read buffer, as after tun.read().
  const read = new Uint8Array(VNET_HDR_LEN + s.pkt.length + 7);
  s.hdr.encode(read, 0);
  read.set(s.pkt, VNET_HDR_LEN);
  const n = seg.segment(read, VNET_HDR_LEN, s.pkt.length, s.hdr, mode, batch);
  const segs: Uint8Array[] = [];
  for (let k = 0; k < n; k++) segs.push(segBytes(batch, seg.first + k));
  return { n, segs, seg, batch };
}

function assertSegments(got: Uint8Array[], want: Uint8Array[], partial: boolean): void {
  assertEquals(got.length, want.length, "segment count");
  for (let k = 0; k < want.length; k++) {
    assertEquals(got[k], want[k], `segment ${k}`);
    if (partial) {
      const i = parseOk(got[k]);
      assert(checksumsValid(got[k], i, true), `segment ${k}: partial sum`);
      // Completing the partial sum gives the full checksum.
      const full = completePartial(got[k].slice());
      assert(fullValid(full), `segment ${k}: completed partial`);
    } else {
      assert(fullValid(got[k]), `segment ${k}: full checksum`);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Segmentation: TCP
// ------------------------------------------------------------------------------------------------

for (const mode of ["full", "partial"] as const) {
  Deno.test(`split IPv4 TCP super-packet with IP and TCP options, odd last segment (${mode})`, () => {
    const payload = randomBytes(prng(1), 5001);
    const extra = { ipOptions: IP_OPTS, tcpOptions: TS_OPTS, tcpFlags: ACK | PSH };
    const s = super4(payload, 1436, extra);
    const { n, segs, seg } = runSplit(s, mode);
    assertEquals(n, 4);
    assertEquals(segs.map((b) => b.length), [24 + 32 + 1436, 1492, 1492, 24 + 32 + 5001 - 3 * 1436]);
    assertSegments(segs, expectedTcp(false, payload, 1436, extra, mode === "partial"), mode === "partial");
    assertEquals(seg.segmentSize, 1436);
    assertEquals(seg.datagramSize, 4 + 56 + 1436);
    assertEquals(seg.partial, mode === "partial");
    assertEquals(seg.csumStart, mode === "partial" ? 24 : -1);
    assertEquals(seg.csumOffset, mode === "partial" ? 16 : 0);
  });

  Deno.test(`split IPv6 TCP super-packet with an extension header and options (${mode})`, () => {
    const payload = randomBytes(prng(2), 9000);
    const ext: ExtHeader[] = [{ type: 60 }];
    const extra = { ext, tcpOptions: TS_OPTS, tcpFlags: ACK | PSH };
    const s = super6(payload, 1388, extra);
    assertEquals(s.hdr.csumStart, 48);
    const { n, segs } = runSplit(s, mode);
    assertEquals(n, 7);
    assertSegments(segs, expectedTcp(true, payload, 1388, extra, mode === "partial"), mode === "partial");
    for (const b of segs) assertEquals(u16(b, 4), b.length - 40);
  });

  Deno.test(`split keeps FIN/PSH on the last segment only and CWR on the first only (${mode})`, () => {
    for (const v6 of [false, true]) {
      const payload = randomBytes(prng(3), 4000);
      const extra = { tcpFlags: ACK | PSH | FIN | CWR | ECE, tcpOptions: TS_OPTS };
      const s = v6 ? super6(payload, 1000, extra) : super4(payload, 1000, extra);
      s.hdr.gsoType |= VNET_GSO_ECN; // the kernel marks CWR super-packets so; allowed for TCP
      const { n, segs } = runSplit(s, mode);
      assertEquals(n, 4);
      const flags = segs.map((b) => b[parseOk(b).l4Offset + 13]);
      assertEquals(flags, [ACK | ECE | CWR, ACK | ECE, ACK | ECE, ACK | PSH | FIN | ECE]);
      assertSegments(segs, expectedTcp(v6, payload, 1000, extra, mode === "partial"), mode === "partial");
    }
  });
}

Deno.test("split: IPv4 ID and TCP sequence numbers wrap around", () => {
  const payload = randomBytes(prng(4), 3000);
  const extra = { id: 0xfffe, seq: 0xfffffc00 };
  const s = super4(payload, 1000, extra);
  const { segs } = runSplit(s, "full");
  assertEquals(segs.map((b) => u16(b, 4)), [0xfffe, 0xffff, 0]);
  assertEquals(
    segs.map((b) => new DataView(b.buffer).getUint32(24)),
    [0xfffffc00, 0x3e8 - 0x400, 0x7d0 - 0x400]
      .map((v) => v >>> 0),
  );
  assertSegments(segs, expectedTcp(false, payload, 1000, extra, false), false);
});

Deno.test("split: payload not larger than gso_size is one segment with all flags kept", () => {
  for (const len of [0, 1, 1448]) {
    const payload = randomBytes(prng(5), len);
    const extra = { tcpFlags: ACK | PSH | FIN | CWR };
    const s = super4(payload, 1448, extra);
    const { n, segs } = runSplit(s, "full");
    assertEquals(n, 1);
    const want = completePartial(s.pkt.slice());
    assertEquals(segs[0], want);
  }
});

Deno.test("split: a computed checksum of 0 is stored as 0xFFFF (skb_checksum_help)", () => {
  // Find a one-segment TCP packet whose full checksum is 0 by tuning two payload bytes.
  const payload = new Uint8Array(100);
  const probe = buildIPv4Tcp({ ...H4, ...TCP, payload });
  const c = computeL4Checksum(probe, parseOk(probe));
  // Adding c (as a 16-bit word) to the data lowers the complemented sum by c → checksum 0.
  payload[0] = c >>> 8;
  payload[1] = c & 0xff;
  const check = buildIPv4Tcp({ ...H4, ...TCP, payload });
  assertEquals(computeL4Checksum(check, parseOk(check)), 0);
  const { segs } = runSplit(super4(payload, 1448), "full");
  assertEquals(u16(segs[0], 36), 0xffff);
  assert(fullValid(segs[0]));
});

// ------------------------------------------------------------------------------------------------
// Segmentation: UDP (USO) and non-GSO packets
// ------------------------------------------------------------------------------------------------

for (const mode of ["full", "partial"] as const) {
  Deno.test(`USO split of IPv4 and IPv6 UDP super-packets (${mode})`, () => {
    const payload = randomBytes(prng(6), 3001);
    const mss = 1200;
    for (const v6 of [false, true]) {
      const u = { srcPort: 4433, dstPort: 443, partial: true };
      const pkt = v6 ? buildIPv6Udp({ ...H6, ...u, payload }) : buildIPv4Udp({ ...H4, ...u, payload });
      const l4 = v6 ? 40 : 20;
      const { n, segs, seg } = runSplit({ pkt, hdr: vnet(VNET_GSO_UDP_L4, mss, l4, 6, l4 + 8) }, mode);
      assertEquals(n, 3);
      const want = [0, 1, 2].map((k) => {
        const chunk = payload.slice(k * mss, Math.min(payload.length, (k + 1) * mss));
        const f = { srcPort: 4433, dstPort: 443, payload: chunk, partial: mode === "partial" };
        const b = v6 ? buildIPv6Udp({ ...H6, ...f }) : buildIPv4Udp({ ...H4, ...f, id: H4.id! + k });
        if (mode === "full") put16(b, l4 + 6, kernelFull(u16(b, l4 + 6)));
        return b;
      });
      assertSegments(segs, want, mode === "partial");
      assertEquals(segs.map((b) => u16(b, l4 + 4)), [1208, 1208, 609]);
      assertEquals(seg.csumOffset, mode === "partial" ? 6 : 0);
    }
  });
}

Deno.test("NEEDS_CSUM without GSO: full mode completes the checksum, partial mode leaves it", () => {
  const cases = [
    buildIPv4Tcp({ ...H4, ...TCP, payload: 777, partial: true }),
    buildIPv4Udp({ ...H4, srcPort: 53, dstPort: 5353, payload: 301, partial: true }),
    buildIPv6Tcp({ ...H6, ...TCP, payload: 1000, partial: true, ext: [{ type: 0 }] }),
    buildIPv6Udp({ ...H6, srcPort: 1, dstPort: 2, payload: 0, partial: true }),
  ];
  for (const pkt of cases) {
    const i = parseOk(pkt);
    const l4 = i.l4Offset;
    const hdr = vnet(VNET_GSO_NONE, 0, l4, i.protocol === 6 ? 16 : 6, 0);
    const full = runSplit({ pkt, hdr }, "full");
    assertEquals(full.n, 1);
    assertEquals(full.segs[0], completePartial(pkt.slice()));
    assert(fullValid(full.segs[0]));
    assertEquals(full.seg.partial, false);
    const part = runSplit({ pkt, hdr }, "partial");
    assertEquals(part.segs[0], pkt);
    assertEquals([part.seg.partial, part.seg.csumStart, part.seg.csumOffset], [true, l4, hdr.csumOffset]);
  }
});

Deno.test("no NEEDS_CSUM and no GSO: the packet is copied unchanged in both modes", () => {
  const pkt = buildIPv4Udp({ ...H4, srcPort: 1, dstPort: 2, payload: 50 });
  for (const mode of ["full", "partial"] as const) {
    const r = runSplit({ pkt, hdr: new VnetHdr() }, mode);
    assertEquals(r.n, 1);
    assertEquals(r.segs[0], pkt);
    assertEquals(r.seg.partial, false);
  }
  // Not even an IP packet: passed through all the same (the caller judges it).
  const junk = new Uint8Array([0xff, 1, 2, 3]);
  assertEquals(runSplit({ pkt: junk, hdr: new VnetHdr() }, "full").segs[0], junk);
});

Deno.test("GSO without NEEDS_CSUM (TCP) is accepted: checksums are computed from scratch", () => {
  const payload = randomBytes(prng(8), 2500);
  const s = super4(payload, 1000);
  s.hdr.flags = 0;
  s.hdr.csumStart = 0;
  s.hdr.csumOffset = 0;
  put16(s.pkt, 36, 0x1234); // garbage in the L4 field: never trusted
  assertSegments(runSplit(s, "full").segs, expectedTcp(false, payload, 1000, {}, false), false);
});

// ------------------------------------------------------------------------------------------------
// Segmentation: rejected headers and arena limits
// ------------------------------------------------------------------------------------------------

Deno.test("malformed vnet headers and packets are rejected with a code, batch unchanged", () => {
  const payload = randomBytes(prng(9), 3000);
  const good = super4(payload, 1000);
  const udp = buildIPv4Udp({ ...H4, srcPort: 1, dstPort: 2, payload: 3000, partial: true });
  const v6 = super6(payload, 1000);
  const cases: [string, Uint8Array, VnetHdr, number][] = [
    ["gso_size 0", good.pkt, vnet(VNET_GSO_TCPV4, 0, 20, 16, 40), GsoError.BAD_GSO_SIZE],
    ["UFO", udp, vnet(VNET_GSO_UDP, 1000, 20, 6, 28), GsoError.BAD_GSO_TYPE],
    ["unknown type", good.pkt, vnet(2, 1000, 20, 16, 40), GsoError.BAD_GSO_TYPE],
    ["ECN bit alone", good.pkt, vnet(VNET_GSO_ECN, 1000, 20, 16, 40), GsoError.BAD_GSO_TYPE],
    ["ECN with USO", udp, vnet(VNET_GSO_UDP_L4 | VNET_GSO_ECN, 1000, 20, 6, 28), GsoError.BAD_GSO_TYPE],
    ["USO without NEEDS_CSUM", udp, vnet(VNET_GSO_UDP_L4, 1000, 20, 6, 28, 0), GsoError.NO_NEEDS_CSUM],
    ["csum_start not L4", good.pkt, vnet(VNET_GSO_TCPV4, 1000, 24, 16, 40), GsoError.BAD_CSUM_START],
    ["csum_start past end", good.pkt, vnet(VNET_GSO_TCPV4, 1000, 60000, 16, 40), GsoError.BAD_CSUM_START],
    ["csum_offset UDP on TCP", good.pkt, vnet(VNET_GSO_TCPV4, 1000, 20, 6, 40), GsoError.BAD_CSUM_OFFSET],
    ["csum_offset TCP on UDP", udp, vnet(VNET_GSO_UDP_L4, 1000, 20, 16, 28), GsoError.BAD_CSUM_OFFSET],
    ["hdr_len past end", good.pkt, vnet(VNET_GSO_TCPV4, 1000, 20, 16, 5000), GsoError.BAD_HDR_LEN],
    ["TCPV6 on IPv4", good.pkt, vnet(VNET_GSO_TCPV6, 1000, 20, 16, 40), GsoError.PROTO_MISMATCH],
    ["TCPV4 on IPv6", v6.pkt, vnet(VNET_GSO_TCPV4, 1000, 40, 16, 60), GsoError.PROTO_MISMATCH],
    ["TCPV4 on UDP", udp, vnet(VNET_GSO_TCPV4, 1000, 20, 16, 40), GsoError.PROTO_MISMATCH],
    ["USO on TCP", good.pkt, vnet(VNET_GSO_UDP_L4, 1000, 20, 6, 28), GsoError.PROTO_MISMATCH],
    ["truncated", good.pkt.subarray(0, 2000), good.hdr, GsoError.BAD_PACKET],
    ["mss over MTU", good.pkt, vnet(VNET_GSO_TCPV4, 1461, 20, 16, 40), GsoError.TOO_BIG],
    [
      "NONE: csum field past end",
      udp,
      vnet(VNET_GSO_NONE, 0, udp.length - 7, 6, 0),
      GsoError.BAD_CSUM_OFFSET,
    ],
    ["NONE: csum_start < 20", udp, vnet(VNET_GSO_NONE, 0, 10, 6, 0), GsoError.BAD_CSUM_START],
    ["NONE: larger than MTU", udp, new VnetHdr(), GsoError.TOO_BIG],
  ];
  // A fragment (MF set) cannot be a GSO packet.
  const frag = buildIPv4Tcp({ ...H4, ...TCP, payload: 3000, partial: true, flags: 0x2000 });
  cases.push(["fragment", frag, vnet(VNET_GSO_TCPV4, 1000, 20, 16, 40), GsoError.BAD_PACKET]);
  // UDP length disagreeing with the IP length.
  const shortUdp = udp.slice();
  put16(shortUdp, 24, 2000);
  cases.push(["UDP length", shortUdp, vnet(VNET_GSO_UDP_L4, 1000, 20, 6, 28), GsoError.BAD_PACKET]);
  const batch = new SegmentBatch({ mtu: 1500, headroom: 4, capacity: 64 });
  const seg = new Segmenter();
  for (const [name, pkt, hdr, code] of cases) {
    const r = seg.segment(pkt, 0, pkt.length, hdr, "full", batch);
    assertEquals(GSO_ERROR_NAMES[-r], GSO_ERROR_NAMES[-code], name);
    assertEquals([batch.count, batch.used], [0, 0], name);
  }
  assertEquals(seg.segment(good.pkt, 0, 2000, good.hdr, "full", batch), GsoError.BAD_PACKET);
  assertEquals(seg.parseResult, ParseResult.TRUNCATED);
  assertEquals(seg.segment(good.pkt, 10, good.pkt.length, good.hdr, "full", batch), GsoError.BAD_PACKET);
  // The ECN bit with TCP is fine, and hdr_len is only a hint (kernel: skb_headlen).
  for (const hdrLen of [0, 40, 1000]) {
    const h = vnet(VNET_GSO_TCPV4 | VNET_GSO_ECN, 1000, 20, 16, hdrLen);
    assertEquals(seg.segment(good.pkt, 0, good.pkt.length, h, "full", batch), 3);
  }
  assertEquals(GSO_ERROR_NAMES.length, Object.keys(GsoError).length + 1);
});

Deno.test("arena too small: NO_SPACE leaves the batch as it was; reset makes room", () => {
  const payload = randomBytes(prng(10), 4000);
  const s = super4(payload, 1000);
  const seg = new Segmenter();
  // Slot layout: 3 slots for 4 segments.
  const slots = new SegmentBatch({ mtu: 1100, headroom: 4, capacity: 3 });
  assertEquals(seg.segment(s.pkt, 0, s.pkt.length, s.hdr, "partial", slots), GsoError.NO_SPACE);
  assertEquals([slots.count, slots.used], [0, 0]);
  // Packed layout: 4 slots allowed but too few bytes.
  const packed = new SegmentBatch({
    mtu: 1100,
    headroom: 4,
    capacity: 8,
    packed: true,
    buf: new Uint8Array(3000),
  });
  const small = super4(randomBytes(prng(11), 1500), 1000);
  assertEquals(seg.segment(small.pkt, 0, small.pkt.length, small.hdr, "partial", packed), 2);
  const used = packed.used;
  assertEquals(used, 4 + 1040 + 4 + 540);
  assertEquals(seg.segment(small.pkt, 0, small.pkt.length, small.hdr, "partial", packed), GsoError.NO_SPACE);
  assertEquals([packed.count, packed.used], [2, used]);
  packed.reset();
  assertEquals(seg.segment(small.pkt, 0, small.pkt.length, small.hdr, "partial", packed), 2);
  // A batch accumulates several super-packets until full.
  const b = new SegmentBatch({ mtu: 1100, capacity: 10 });
  assertEquals(seg.segment(s.pkt, 0, s.pkt.length, s.hdr, "full", b), 4);
  assertEquals(seg.segment(s.pkt, 0, s.pkt.length, s.hdr, "full", b), 4);
  assertEquals(seg.first, 4);
  assertEquals(seg.segment(s.pkt, 0, s.pkt.length, s.hdr, "full", b), GsoError.NO_SPACE);
  assertEquals(b.count, 8);
  assertEquals(segBytes(b, 5), segBytes(b, 1));
  // Configuration errors throw (not on the packet path).
  assertThrows(() => new SegmentBatch({ mtu: 20 }), OffloadConfigError);
  assertThrows(
    () => new SegmentBatch({ mtu: 1400, capacity: 4, buf: new Uint8Array(1000) }),
    OffloadConfigError,
  );
  assertThrows(() => new SegmentBatch({ mtu: 1400, capacity: 0 }), OffloadConfigError);
});

Deno.test("layouts: slots at fixed strides; packed segments back to back for UDP_SEGMENT", () => {
  const payload = randomBytes(prng(12), 5000);
  const s = super4(payload, 1400, { tcpOptions: TS_OPTS });
  const slots = runSplit(s, "partial", new SegmentBatch({ mtu: 1500, headroom: 4, capacity: 8 }));
  assertEquals(Array.from(slots.batch.offsets.subarray(0, 4)), [4, 1508, 3012, 4516]);
  const packed = runSplit(
    s,
    "partial",
    new SegmentBatch({ mtu: 1500, headroom: 4, capacity: 8, packed: true }),
  );
  const b = packed.batch;
  const dg = packed.seg.datagramSize;
  assertEquals(dg, 4 + 52 + 1400);
  for (let k = 0; k < 4; k++) assertEquals(b.offsets[k], 4 + k * dg);
  assertEquals(b.used, 3 * dg + 4 + b.lengths[3]);
  assertEquals(slots.segs, packed.segs);
});

Deno.test("source in the arena's ArrayBuffer (copyWithin path) gives the same segments", () => {
  const payload = randomBytes(prng(13), 7000);
  const s = super6(payload, 1300, { tcpOptions: TS_OPTS });
  const whole = new ArrayBuffer(200_000);
  const readRegion = new Uint8Array(whole, 0, 70_000);
  readRegion.set(s.pkt, VNET_HDR_LEN);
  const batch = new SegmentBatch({
    mtu: 1400,
    headroom: 4,
    capacity: 32,
    buf: new Uint8Array(whole, 70_000),
  });
  const seg = new Segmenter();
  for (const mode of ["full", "partial"] as const) {
    batch.reset();
    const n = seg.segment(readRegion, VNET_HDR_LEN, s.pkt.length, s.hdr, mode, batch);
    assertEquals(n, 6);
    const got = Array.from({ length: n }, (_, k) => segBytes(batch, k));
    assertSegments(
      got,
      expectedTcp(true, payload, 1300, { tcpOptions: TS_OPTS }, mode === "partial"),
      mode === "partial",
    );
  }
});

// ------------------------------------------------------------------------------------------------
// Coalescing
// ------------------------------------------------------------------------------------------------

interface Out {
  hdr: VnetHdr;
  pkt: Uint8Array;
}

function outputs(gro: Coalescer): Out[] {
  const r: Out[] = [];
  for (let i = 0; i < gro.count; i++) {
    const o = gro.offsets[i];
    r.push({
      hdr: new VnetHdr().decode(gro.arena, o),
      pkt: gro.arena.slice(o + VNET_HDR_LEN, o + gro.lengths[i]),
    });
  }
  return r;
}

/** Adds packets (partial: with csum_start = L4 offset) and finishes. */
function coalesce(pkts: Uint8Array[], partial: boolean, gro = new Coalescer()): Out[] {
  for (const p of pkts) {
    const l4 = partial ? parseOk(p).l4Offset : -1;
    const f = partial ? (parseOk(p).protocol === 6 ? 16 : 6) : 0;
    const r = gro.add(p, 0, p.length, l4, f);
    assert(r === CoalesceResult.NEW || r === CoalesceResult.MERGED, `add: ${r}`);
  }
  gro.finish();
  return outputs(gro);
}

function isSingle(o: Out, pkt: Uint8Array, partial: boolean): void {
  assertEquals(o.pkt, pkt);
  assertEquals(o.hdr.gsoType, VNET_GSO_NONE);
  assertEquals(o.hdr.flags, partial ? VNET_F_NEEDS_CSUM : 0);
}

Deno.test("round trip: split (partial) → coalesce gives back the original super-packet, v4 and v6", () => {
  for (const v6 of [false, true]) {
    const payload = randomBytes(prng(20), 60000);
    const extra = { tcpOptions: TS_OPTS, tcpFlags: ACK | PSH };
    const s = v6 ? super6(payload, 1348, extra) : super4(payload, 1348, extra);
    const { segs } = runSplit(s, "partial", new SegmentBatch({ mtu: 1500, capacity: 64 }));
    assertEquals(segs.length, 45);
    const out = coalesce(segs, true);
    assertEquals(out.length, 1);
    assertEquals(out[0].pkt, s.pkt);
    const h = out[0].hdr;
    assertEquals(
      [h.flags, h.gsoType, h.gsoSize, h.csumStart, h.csumOffset, h.hdrLen],
      [VNET_F_NEEDS_CSUM, v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4, 1348, v6 ? 40 : 20, 16, (v6 ? 40 : 20) + 32],
    );
    // What the kernel makes of it once it computes the checksum: the original, completed.
    const done = completePartial(out[0].pkt.slice());
    assert(fullValid(done));
    assertEquals(done, completePartial(s.pkt.slice()));
    // And segmenting the coalesced packet with its vnet header gives the same segments again.
    assertEquals(runSplit(out[0], "partial", new SegmentBatch({ mtu: 1500, capacity: 64 })).segs, segs);
  }
});

Deno.test("round trip: split (full) → coalesce of complete packets (verified) → same after completion", () => {
  for (const v6 of [false, true]) {
    const payload = randomBytes(prng(21), 20000);
    const s = v6 ? super6(payload, 1400) : super4(payload, 1400);
    const { segs } = runSplit(s, "full");
    const out = coalesce(segs, false);
    assertEquals(out.length, 1);
    assertEquals(out[0].hdr.flags, VNET_F_NEEDS_CSUM);
    assertEquals(out[0].pkt, s.pkt); // partial field for the whole length
    assertEquals(completePartial(out[0].pkt.slice()), completePartial(s.pkt.slice()));
  }
});

Deno.test("coalesce: out-of-order and gaps do not coalesce across the hole; order is kept", () => {
  const payload = randomBytes(prng(22), 4000);
  const { segs } = runSplit(super4(payload, 1000), "partial");
  const [a, b, c, d] = segs;
  const ooo = coalesce([a, c, b, d], true);
  assertEquals(ooo.length, 4);
  [a, c, b, d].forEach((p, i) => isSingle(ooo[i], p, true));
  const gap = coalesce([a, b, d], true);
  assertEquals(gap.length, 2);
  assertEquals(gap[0].hdr.gsoType, VNET_GSO_TCPV4);
  assertEquals(gap[0].pkt.length, 20 + 20 + 2000);
  isSingle(gap[1], d, true);
  // A duplicate (retransmission) closes the group; the next segment follows the duplicate.
  const dup = coalesce([a, b, b, c], true);
  assertEquals(dup.map((o) => o.pkt.length), [2040, 2040]);
});

Deno.test("coalesce: interleaved flows (v4 and v6) each coalesce, in first-arrival order", () => {
  const pa = randomBytes(prng(23), 3000);
  const pb = randomBytes(prng(24), 3000);
  const sa = super4(pa, 1000);
  const sb = super4(pb, 1000, { srcPort: 40001 });
  const sc = super6(pa, 1000);
  const A = runSplit(sa, "partial").segs;
  const B = runSplit(sb, "partial").segs;
  const C = runSplit(sc, "partial").segs;
  const udp = buildIPv4Udp({ ...H4, srcPort: 9, dstPort: 9, payload: 100 });
  const out = coalesce([A[0], B[0], C[0], udp, A[1], C[1], B[1], B[2], A[2], C[2]], true);
  assertEquals(out.length, 4);
  assertEquals(out[0].pkt, sa.pkt);
  assertEquals(out[1].pkt, sb.pkt);
  assertEquals(out[2].pkt, sc.pkt);
  assertEquals(out[2].hdr.gsoType, VNET_GSO_TCPV6);
  assertEquals(out[3].pkt, udp);
  assertEquals(out[3].hdr.flags, VNET_F_NEEDS_CSUM); // added with csum_start given
});

Deno.test("coalesce: many flows in one batch (flow table with probing)", () => {
  const gro = new Coalescer({ maxPackets: 256 });
  const pkts: Uint8Array[] = [];
  for (let round = 0; round < 2; round++) {
    for (let f = 0; f < 100; f++) {
      pkts.push(
        buildIPv4Tcp({
          ...H4,
          ...TCP,
          srcPort: 1000 + f,
          seq: 5000 + round * 100,
          payload: 100,
          tcpFlags: ACK,
        }),
      );
    }
  }
  const out = coalesce(pkts, false, gro);
  assertEquals(out.length, 100);
  for (const o of out) {
    assertEquals(o.pkt.length, 240);
    assertEquals(o.hdr.gsoSize, 100);
  }
  assertEquals(gro.merged, 0); // reset by finish()
});

Deno.test("coalesce: SYN/FIN/RST/URG/CWR packets and pure ACKs stay alone and close the group", () => {
  const payload = randomBytes(prng(25), 3000);
  const { segs } = runSplit(super4(payload, 1000), "full");
  for (const flag of [SYN, FIN, RST, URG, CWR]) {
    const odd = segs[1].slice();
    odd[33] |= flag;
    put16(odd, 36, kernelFull(computeL4Checksum(odd, parseOk(odd))));
    const out = coalesce([segs[0], odd, segs[2]], false);
    assertEquals(out.length, 3, `flag ${flag}`);
    isSingle(out[1], odd, false);
  }
  const pureAck = buildIPv4Tcp({ ...H4, ...TCP, seq: TCP.seq! + 1000, tcpFlags: ACK });
  const out = coalesce([segs[0], pureAck, segs[1]], false);
  assertEquals(out.length, 3);
});

Deno.test("coalesce: PSH ends a group; a PSH head stays alone; ECE must match", () => {
  const payload = randomBytes(prng(26), 4000);
  const split = (f: number) => runSplit(super4(payload, 1000, { tcpFlags: f }), "partial").segs;
  const plain = split(ACK);
  const withPsh = split(ACK | PSH); // PSH on the last
  // PSH in the middle: [0, 1+PSH] then [2, 3].
  const mid = plain[1].slice();
  mid[33] |= PSH;
  const out = coalesce([plain[0], mid, plain[2], plain[3]], true);
  assertEquals(out.length, 2);
  assertEquals(out[0].pkt[33], ACK | PSH);
  assertEquals(out[1].pkt[33], ACK);
  // The last one with PSH is merged and the flag carried over.
  const all = coalesce(withPsh, true);
  assertEquals(all.length, 1);
  assertEquals(all[0].pkt[33], ACK | PSH);
  // A group cannot start with PSH.
  const head = plain[0].slice();
  head[33] |= PSH;
  assertEquals(coalesce([head, plain[1]], true).length, 2);
  // ECE on all segments coalesces; mixed ECE does not.
  const ece = split(ACK | ECE);
  assertEquals(coalesce(ece, true).length, 1);
  assertEquals(coalesce([ece[0], plain[1]], true).length, 2);
});

Deno.test("coalesce: differing ACK, TTL, TOS, DF, options, flow label or sizes do not coalesce", () => {
  const payload = randomBytes(prng(27), 3000);
  const base = { tcpOptions: TS_OPTS };
  const segs = runSplit(super4(payload, 1000, base), "partial").segs;
  const mutate = (i: number, fix: (b: Uint8Array) => void): Uint8Array => {
    const b = segs[i].slice();
    fix(b);
    put16(b, 10, 0);
    let s = 0;
    for (let k = 0; k < 20; k += 2) s += u16(b, k);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    put16(b, 10, ~s & 0xffff);
    return b;
  };
  const cases: [string, Uint8Array][] = [
    ["ack", mutate(1, (b) => b[31]++)],
    ["ttl", mutate(1, (b) => b[8]--)],
    ["tos", mutate(1, (b) => (b[1] = 0x12))],
    ["df", mutate(1, (b) => (b[6] &= ~0x40))],
    ["options", mutate(1, (b) => b[50]++)],
    ["window differs but is fine", mutate(1, (b) => b[34]++)],
  ];
  for (const [name, b] of cases) {
    const n = coalesce([segs[0], b, segs[2]], true).length;
    assertEquals(n, name.startsWith("window") ? 1 : 3, name);
  }
  // Bad IPv4 header checksum: not merged.
  const badIp = segs[1].slice();
  badIp[11] ^= 1;
  assertEquals(coalesce([segs[0], badIp, segs[2]], true).length, 3);
  // IPv6 flow label.
  const v6 = runSplit(super6(payload, 1000), "partial").segs;
  const fl = v6[1].slice();
  fl[3] ^= 1;
  assertEquals(coalesce([v6[0], fl, v6[2]], true).length, 3);
  // A smaller segment ends the group; a larger one cannot follow a smaller one.
  const s1 = buildIPv4Tcp({ ...H4, ...TCP, tcpFlags: ACK, payload: 1000, partial: true });
  const s2 = buildIPv4Tcp({
    ...H4,
    ...TCP,
    tcpFlags: ACK,
    seq: TCP.seq! + 1000,
    payload: 500,
    partial: true,
  });
  const s3 = buildIPv4Tcp({
    ...H4,
    ...TCP,
    tcpFlags: ACK,
    seq: TCP.seq! + 1500,
    payload: 1000,
    partial: true,
  });
  const out = coalesce([s1, s2, s3], true);
  assertEquals(out.map((o) => o.pkt.length), [1540, 1040]);
  const big = buildIPv4Tcp({
    ...H4,
    ...TCP,
    tcpFlags: ACK,
    seq: TCP.seq! + 500,
    payload: 1000,
    partial: true,
  });
  const small = buildIPv4Tcp({ ...H4, ...TCP, tcpFlags: ACK, payload: 500, partial: true });
  assertEquals(coalesce([small, big], true).length, 2);
});

Deno.test("coalesce: without DF the IPv4 IDs must count up", () => {
  const mk = (k: number, id: number) =>
    buildIPv4Tcp({ ...H4, ...TCP, flags: 0, id, tcpFlags: ACK, seq: TCP.seq! + k * 100, payload: 100 });
  assertEquals(coalesce([mk(0, 7), mk(1, 8), mk(2, 9)], false).length, 1);
  assertEquals(coalesce([mk(0, 7), mk(1, 9)], false).length, 2);
  // With DF (the default) IDs are not compared.
  const df = (k: number, id: number) =>
    buildIPv4Tcp({ ...H4, ...TCP, id, tcpFlags: ACK, seq: TCP.seq! + k * 100, payload: 100 });
  assertEquals(coalesce([df(0, 7), df(1, 1000)], false).length, 1);
});

Deno.test("coalesce: complete packets with a bad checksum are not merged (unless verification is off)", () => {
  const payload = randomBytes(prng(28), 4000);
  const s = super4(payload, 1000);
  const segs = runSplit(s, "full").segs;
  const bad = segs[2].slice();
  bad[1000] ^= 0x40; // corrupt payload, checksum now wrong
  const out = coalesce([segs[0], segs[1], bad, segs[3]], false);
  assertEquals(out.length, 3);
  assertEquals(out[0].pkt.length, 2040);
  isSingle(out[1], bad, false);
  isSingle(out[2], segs[3], false);
  // Bad head: nothing merges into it.
  const badHead = segs[0].slice();
  badHead[100] ^= 1;
  const out2 = coalesce([badHead, segs[1], segs[2]], false);
  assertEquals(out2.length, 2);
  isSingle(out2[0], badHead, false);
  assertEquals(out2[1].pkt.length, 2040);
  // Trusting mode merges everything.
  const trusting = new Coalescer({ verifyComplete: false });
  assertEquals(coalesce([segs[0], segs[1], bad, segs[3]], false, trusting).length, 1);
});

Deno.test("coalesce: super-packets stop at 65535 bytes of IP total length", () => {
  for (const v6 of [false, true]) {
    const segs: Uint8Array[] = [];
    for (let k = 0; k < 50; k++) {
      const f = { ...TCP, tcpFlags: ACK, seq: TCP.seq! + k * 1400, payload: 1400, partial: true };
      segs.push(
        v6 ? buildIPv6Tcp({ ...H6, ...f }) : buildIPv4Tcp({ ...H4, ...f, id: (H4.id! + k) & 0xffff }),
      );
    }
    const out = coalesce(segs, true);
    assertEquals(out.length, 2);
    const first = Math.floor((MAX_SUPER_PACKET - (v6 ? 60 : 40)) / 1400); // 46
    assertEquals(out[0].pkt.length, (v6 ? 60 : 40) + first * 1400);
    assert(out[0].pkt.length <= MAX_SUPER_PACKET);
    assertEquals(out[1].pkt.length, (v6 ? 60 : 40) + (50 - first) * 1400);
    assertEquals(v6 ? u16(out[0].pkt, 4) + 40 : u16(out[0].pkt, 2), out[0].pkt.length);
    // Both outputs resegment into exactly the input segments.
    const again = out.flatMap((o) =>
      runSplit(o, "partial", new SegmentBatch({ mtu: 1500, capacity: 64 })).segs
    );
    assertEquals(again, segs);
  }
});

Deno.test("coalesce: batch limits return FULL without side effects; INVALID arguments", () => {
  const gro = new Coalescer({ maxPackets: 3 });
  const udp = buildIPv4Udp({ ...H4, srcPort: 9, dstPort: 9, payload: 100 });
  for (let i = 0; i < 3; i++) assertEquals(gro.add(udp, 0, udp.length), CoalesceResult.NEW);
  assertEquals(gro.add(udp, 0, udp.length), CoalesceResult.FULL);
  assertEquals(gro.finish(), 3);
  assertEquals(gro.add(udp, 0, udp.length), CoalesceResult.NEW);
  // Arena bytes.
  const small = new Coalescer({ maxPackets: 100, arenaBytes: VNET_HDR_LEN + MAX_SUPER_PACKET });
  const big = buildIPv4Udp({ ...H4, srcPort: 9, dstPort: 9, payload: 30000 });
  assertEquals(small.add(big, 0, big.length), CoalesceResult.NEW);
  assertEquals(small.add(big, 0, big.length), CoalesceResult.NEW);
  assertEquals(small.add(big, 0, big.length), CoalesceResult.FULL);
  assertEquals(small.finish(), 2);
  assertEquals(small.lengths[1], VNET_HDR_LEN + big.length);
  // Invalid arguments.
  assertEquals(gro.add(udp, 0, 0), CoalesceResult.INVALID);
  assertEquals(gro.add(udp, 10, udp.length), CoalesceResult.INVALID);
  assertEquals(gro.add(udp, 0, udp.length, udp.length - 1, 0), CoalesceResult.INVALID);
  assertThrows(() => new Coalescer({ arena: new Uint8Array(1000) }), OffloadConfigError);
  assertThrows(() => new Coalescer({ maxPackets: 0 }), OffloadConfigError);
  // reset() drops pending inputs.
  gro.reset();
  assertEquals(gro.finish(), 0);
});

Deno.test("coalesce: inputs in the arena's ArrayBuffer and at offsets; outputs valid until next finish", () => {
  const payload = randomBytes(prng(29), 5000);
  const s = super4(payload, 1200);
  const segs = runSplit(s, "partial").segs;
  const whole = new ArrayBuffer(300_000);
  const rx = new Uint8Array(whole, 0, 100_000);
  const gro = new Coalescer({ arena: new Uint8Array(whole, 100_000) });
  let at = 3;
  for (const p of segs) {
    rx.set(p, at);
    assertEquals(gro.add(rx, at, p.length, 20, 16) >= 0, true);
    at += p.length + 5;
  }
  assertEquals(gro.finish(), 1);
  assertEquals(outputs(gro)[0].pkt, s.pkt);
  rx.fill(0); // inputs may be reused after finish
  assertEquals(outputs(gro)[0].pkt, s.pkt);
});
