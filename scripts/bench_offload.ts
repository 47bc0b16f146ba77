/**
 * Micro-benchmark of src/proxy/offload.ts: splitting a maximal TCP super-packet (IPv4, timestamp
 * option, 65535 bytes) into segments for a 1400-byte tunnel MTU, in full and partial checksum mode,
 * with the input in the arena's ArrayBuffer (copyWithin, zero allocation) or in a separate buffer;
 * and coalescing 46 segments back into one super-packet (partial inputs, complete inputs verified,
 * complete inputs trusted). Prints one JSON object.
 *
 * Usage: `deno run scripts/bench_offload.ts [--iterations N] [--runs R]`
 *
 * Each case runs R times over N operations after a warm-up and reports the median and best µs per
 * operation plus the payload rate that implies for one core. After timing, the results are checked
 * (segment count, coalesced length), so the work cannot have been optimised away.
 */
import { onesSum } from "../src/proxy/checksum.ts";
import { Coalescer, SegmentBatch, Segmenter } from "../src/proxy/offload.ts";
import { VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_HDR_LEN, VnetHdr } from "../ffi/vnet.ts";
import { buildIPv4Tcp, prng, randomBytes } from "../tests/helpers/packets.ts";

/** One benchmark case's result. */
export interface CaseResult {
  usPerOp: number;
  bestUsPerOp: number;
  /** Payload Gbit/s one core sustains at the median (TCP payload bytes per op × 8 / time). */
  gbps: number;
}

function argNumber(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  if (i < 0 || i + 1 >= Deno.args.length) return fallback;
  const n = Number(Deno.args[i + 1]);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

const ITER = argNumber("--iterations", 3000);
const RUNS = argNumber("--runs", 7);
const MTU = 1400;
const TS = new Uint8Array([1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78]);
const HDR = 20 + 32;
const MSS = MTU - HDR; // 1348
const SUPER_PAYLOAD = 65535 - HDR; // a maximal TSO super-packet

function measure(body: () => void, payloadBytes: number): CaseResult {
  for (let i = 0; i < Math.min(ITER, 500); i++) body(); // warm-up (JIT)
  const per: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    for (let i = 0; i < ITER; i++) body();
    per.push(((performance.now() - t0) * 1000) / ITER);
  }
  per.sort((a, b) => a - b);
  const med = per[Math.floor(per.length / 2)];
  return {
    usPerOp: Number(med.toFixed(2)),
    bestUsPerOp: Number(per[0].toFixed(2)),
    gbps: Number(((payloadBytes * 8) / (med * 1000)).toFixed(2)),
  };
}

const payload = randomBytes(prng(1), SUPER_PAYLOAD);
const superPkt = buildIPv4Tcp({
  src: "10.30.0.1",
  dst: "10.30.0.2",
  srcPort: 40000,
  dstPort: 5201,
  tcpOptions: TS,
  tcpFlags: 0x18,
  payload,
  partial: true,
});
const hdr = new VnetHdr();
hdr.flags = VNET_F_NEEDS_CSUM;
hdr.gsoType = VNET_GSO_TCPV4;
hdr.gsoSize = MSS;
hdr.hdrLen = HDR;
hdr.csumStart = 20;
hdr.csumOffset = 16;

// One ArrayBuffer holding the TUN read region and the segment arena (the zero-allocation layout).
const whole = new ArrayBuffer(VNET_HDR_LEN + 65535 + 64 * (4 + MTU));
const readRegion = new Uint8Array(whole, 0, VNET_HDR_LEN + 65535);
readRegion.set(superPkt, VNET_HDR_LEN);
const shared = new SegmentBatch({
  mtu: MTU,
  headroom: 4,
  capacity: 64,
  packed: true,
  buf: new Uint8Array(whole, VNET_HDR_LEN + 65535),
});
const separateRead = new Uint8Array(VNET_HDR_LEN + 65535);
separateRead.set(superPkt, VNET_HDR_LEN);
const separate = new SegmentBatch({ mtu: MTU, headroom: 4, capacity: 64, packed: true });
const seg = new Segmenter();
let segCount = 0;

const split = (src: Uint8Array, batch: SegmentBatch, mode: "full" | "partial") => () => {
  batch.reset();
  segCount = seg.segment(src, VNET_HDR_LEN, superPkt.length, hdr, mode, batch);
};

const cases: Record<string, CaseResult> = {};
cases["split_64k_partial_shared_buffer"] = measure(split(readRegion, shared, "partial"), SUPER_PAYLOAD);
cases["split_64k_full_shared_buffer"] = measure(split(readRegion, shared, "full"), SUPER_PAYLOAD);
cases["split_64k_partial_separate_buffer"] = measure(split(separateRead, separate, "partial"), SUPER_PAYLOAD);
cases["split_64k_full_separate_buffer"] = measure(split(separateRead, separate, "full"), SUPER_PAYLOAD);
const segmentsPerSuper = segCount;

// Coalescing: 46 segments of one flow (as a UDP_GRO receive batch delivers them).
const N_SEG = 46;
const small = buildIPv4Tcp({
  src: "10.30.0.1",
  dst: "10.30.0.2",
  srcPort: 40000,
  dstPort: 5201,
  tcpOptions: TS,
  tcpFlags: 0x18,
  payload: payload.subarray(0, N_SEG * MSS),
  partial: true,
});
hdr.hdrLen = HDR;
const rxBatch = new SegmentBatch({ mtu: MTU, capacity: 64 });
const rxPartial = new SegmentBatch({ mtu: MTU, capacity: 64 });
if (seg.segment(small, 0, small.length, hdr, "full", rxBatch) !== N_SEG) throw new Error("setup: full split");
if (seg.segment(small, 0, small.length, hdr, "partial", rxPartial) !== N_SEG) throw new Error("setup: split");
const groVerify = new Coalescer({ maxPackets: 64 });
const groTrust = new Coalescer({ maxPackets: 64, verifyComplete: false });
let outLen = 0;
const coalesce = (gro: Coalescer, b: SegmentBatch, partial: boolean) => () => {
  for (let i = 0; i < b.count; i++) gro.add(b.buf, b.offsets[i], b.lengths[i], partial ? 20 : -1, 16);
  gro.finish();
  outLen = gro.lengths[0];
};
const coalescedPayload = N_SEG * MSS;
cases["coalesce_46_partial"] = measure(coalesce(groVerify, rxPartial, true), coalescedPayload);
const okPartial = groVerify.count === 1 && outLen === VNET_HDR_LEN + small.length;
cases["coalesce_46_complete_verified"] = measure(coalesce(groVerify, rxBatch, false), coalescedPayload);
const okVerified = groVerify.count === 1 && outLen === VNET_HDR_LEN + small.length;
cases["coalesce_46_complete_trusted"] = measure(coalesce(groTrust, rxBatch, false), coalescedPayload);
const okTrusted = groTrust.count === 1 && outLen === VNET_HDR_LEN + small.length;

// Checksum kernels on 1400 bytes, for reference.
const buf = randomBytes(prng(2), 1 << 16);
let sink = 0;
const sumCase = (fn: (o: number) => number): number => {
  const r = measure(() => {
    for (let k = 0; k < 40; k++) sink += fn((k * 1601) & 0x7fff);
  }, 0);
  return Number(((r.usPerOp * 1000) / 40).toFixed(0));
};
const nsSum = sumCase((o) => onesSum(buf, o, 1400, 0));

console.log(JSON.stringify(
  {
    deno: Deno.version.deno,
    iterations: ITER,
    runs: RUNS,
    mtu: MTU,
    superPacketBytes: superPkt.length,
    mss: MSS,
    segmentsPerSuperPacket: segmentsPerSuper,
    cases,
    checksum1400: { onesSumNs: nsSum },
    verified: segmentsPerSuper === Math.ceil(SUPER_PAYLOAD / MSS) && okPartial && okVerified && okTrusted &&
      sink >= 0,
  },
  null,
  2,
));
