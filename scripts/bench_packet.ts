/**
 * Micro-benchmark of the packet hot path (src/proxy/packet.ts): parse + in-place rewrite of source
 * and destination address with incremental checksum updates, on 1400-byte packets held in a
 * preallocated arena (as the engine does). Prints one JSON object; the headline figure is
 * `cases["v4tcp_parse_rewrite_src_dst"].nsPerPacket`.
 *
 * Usage: `deno run scripts/bench_packet.ts [--iterations N] [--runs R]`
 *
 * Each case runs R times over N packets (after a warm-up) and reports the median and the best
 * ns per packet. After timing, every packet in the arena is re-parsed and its checksums verified
 * by full recomputation, so the work cannot have been optimised away or gone wrong.
 */
import {
  checksumsValid,
  fixChecksums,
  PacketInfo,
  parsePacket,
  ParseResult,
  rewriteAddrs4,
  rewriteDst4,
  rewriteDst6,
  rewriteSrc4,
  rewriteSrc6,
} from "../src/proxy/packet.ts";
import { buildIPv4Tcp, buildIPv6Tcp, ip6 } from "../tests/helpers/packets.ts";

/** One benchmark case's result. */
export interface CaseResult {
  nsPerPacket: number;
  bestNsPerPacket: number;
  mpps: number;
}

function argNumber(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  if (i < 0 || i + 1 >= Deno.args.length) return fallback;
  const n = Number(Deno.args[i + 1]);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

const ITER = argNumber("--iterations", 4_000_000);
const RUNS = argNumber("--runs", 7);
const BATCH = 64;
const SLOT = 2048;
const PKT_LEN = 1400;

/** An arena of BATCH slots, each holding a copy of `pkt`, like the engine's receive batch. */
function arena(pkt: Uint8Array): Uint8Array {
  const a = new Uint8Array(BATCH * SLOT);
  for (let k = 0; k < BATCH; k++) a.set(pkt, k * SLOT);
  return a;
}

function measure(body: (n: number) => number, iterations = ITER): CaseResult {
  body(Math.min(iterations, 200_000)); // warm-up (JIT)
  const per: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    const bad = body(iterations);
    const t1 = performance.now();
    if (bad !== 0) throw new Error(`${bad} packets failed to parse`);
    per.push(((t1 - t0) * 1e6) / iterations);
  }
  per.sort((a, b) => a - b);
  const median = per[Math.floor(per.length / 2)];
  return {
    nsPerPacket: Math.round(median * 10) / 10,
    bestNsPerPacket: Math.round(per[0] * 10) / 10,
    mpps: Math.round((1000 / median) * 100) / 100,
  };
}

function verify(buf: Uint8Array, len: number, info: PacketInfo): void {
  for (let k = 0; k < BATCH; k++) {
    if (parsePacket(buf, k * SLOT, len, info) !== ParseResult.OK || !checksumsValid(buf, info)) {
      throw new Error(`packet ${k} invalid after the benchmark`);
    }
  }
}

const info = new PacketInfo();
const v4 = buildIPv4Tcp({
  src: "10.19.0.5",
  dst: "10.30.0.9",
  srcPort: 40000,
  dstPort: 80,
  tcpOptions: new Uint8Array([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
  payload: PKT_LEN - 52,
});
const v6 = buildIPv6Tcp({
  src: "fdff:2000::5",
  dst: "fdff:2000::9",
  srcPort: 40000,
  dstPort: 80,
  payload: PKT_LEN - 60,
});
if (v4.length !== PKT_LEN || v6.length !== PKT_LEN) throw new Error("packet size");

// Addresses alternate per packet so every rewrite really changes bytes and checksums.
const SRC4 = [0x0a1e0001, 0x0a130005];
const DST4 = [0x0a130a0b, 0x0a1e0009];
const V6ADDR = new Uint8Array(64);
V6ADDR.set(ip6("fdff:2000:1::42"), 0);
V6ADDR.set(ip6("fdff:2000::5"), 16);
V6ADDR.set(ip6("fdff:2000:7::1"), 32);
V6ADDR.set(ip6("fdff:2000::9"), 48);

const cases: Record<string, CaseResult> = {};

{
  const buf = arena(v4);
  cases["v4tcp_parse_rewrite_src_dst"] = measure((n) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const off = (i & (BATCH - 1)) * SLOT;
      if (parsePacket(buf, off, PKT_LEN, info) !== ParseResult.OK) {
        bad++;
        continue;
      }
      const flip = (i >>> 6) & 1;
      rewriteSrc4(buf, info, SRC4[flip]);
      rewriteDst4(buf, info, DST4[flip]);
    }
    return bad;
  });
  verify(buf, PKT_LEN, info);
}

{
  const buf = arena(v4);
  cases["v4tcp_parse_rewriteAddrs4"] = measure((n) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const off = (i & (BATCH - 1)) * SLOT;
      if (parsePacket(buf, off, PKT_LEN, info) !== ParseResult.OK) {
        bad++;
        continue;
      }
      const flip = (i >>> 6) & 1;
      rewriteAddrs4(buf, info, SRC4[flip], DST4[flip]);
    }
    return bad;
  });
  verify(buf, PKT_LEN, info);
}

{
  const buf = arena(v4);
  cases["v4tcp_parse_only"] = measure((n) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      if (parsePacket(buf, (i & (BATCH - 1)) * SLOT, PKT_LEN, info) !== ParseResult.OK) bad++;
    }
    return bad;
  });
}

{
  const buf = arena(v6);
  cases["v6tcp_parse_rewrite_src_dst"] = measure((n) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const off = (i & (BATCH - 1)) * SLOT;
      if (parsePacket(buf, off, PKT_LEN, info) !== ParseResult.OK) {
        bad++;
        continue;
      }
      const flip = (i >>> 6) & 1;
      rewriteSrc6(buf, info, V6ADDR, flip * 16);
      rewriteDst6(buf, info, V6ADDR, 32 + flip * 16);
    }
    return bad;
  });
  verify(buf, PKT_LEN, info);
}

{
  // Baseline: what Oakestra does per packet (new addresses, then full checksum recomputation).
  const buf = arena(v4);
  cases["v4tcp_parse_rewrite_full_recompute_baseline"] = measure((n) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const off = (i & (BATCH - 1)) * SLOT;
      if (parsePacket(buf, off, PKT_LEN, info) !== ParseResult.OK) {
        bad++;
        continue;
      }
      const flip = (i >>> 6) & 1;
      buf[info.srcOffset + 3] = SRC4[flip] & 0xff;
      buf[info.dstOffset + 3] = DST4[flip] & 0xff;
      fixChecksums(buf, info);
    }
    return bad;
  }, Math.max(1, Math.floor(ITER / 16)));
  verify(buf, PKT_LEN, info);
}

console.log(JSON.stringify(
  {
    bench: "packet",
    packetBytes: PKT_LEN,
    iterations: ITER,
    runs: RUNS,
    batch: BATCH,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    headline: {
      case: "v4tcp_parse_rewrite_src_dst",
      nsPerPacket: cases["v4tcp_parse_rewrite_src_dst"].nsPerPacket,
    },
    cases,
  },
  null,
  2,
));
