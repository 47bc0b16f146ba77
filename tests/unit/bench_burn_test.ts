import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  BENCH_BURN_ENV,
  BenchBurnError,
  BURN_MIN_READ,
  parseBenchBurn,
  spin,
} from "../../src/proxy/bench_burn.ts";
import { BurningTun } from "../../src/proxy/bench_burn_tun.ts";
import type { TunFd } from "../../src/proxy/tun_device.ts";
import { Counters, Verdict } from "../../src/proxy/engine.ts";
import type { AssembledPacket } from "../../src/proxy/seams.ts";
import { VNET_HDR_LEN } from "../../ffi/vnet.ts";

Deno.test("bench burn: parses tx,rx microseconds and refuses anything else", () => {
  assertEquals(parseBenchBurn("5,4"), { txUs: 5, rxUs: 4 });
  assertEquals(parseBenchBurn(" 0 , 2.5 "), { txUs: 0, rxUs: 2.5 });
  assertEquals(parseBenchBurn(undefined), undefined);
  assertEquals(parseBenchBurn("  "), undefined);
  for (const bad of ["5", "a,b", "-1,2", "5,4,3", "2000,1", "5,", ",4", "NaN,1"]) {
    const e = assertThrows(() => parseBenchBurn(bad), BenchBurnError);
    assert(e.message.includes(BENCH_BURN_ENV), e.message);
  }
});

Deno.test("bench burn: spin keeps the CPU for at least the time asked", () => {
  const t0 = performance.now();
  spin(3000);
  assert(performance.now() - t0 >= 3, "spun less than 3 ms");
  const t1 = performance.now();
  spin(0);
  assert(performance.now() - t1 < 3, "spin(0) should return at once");
});

/** A device that returns queued packet lengths (bytes left zero): enough for read()'s length logic. */
function queuedDevice(lengths: number[]): TunFd {
  return {
    fd: -1,
    read: (buf: Uint8Array) => Math.min(lengths.shift() ?? 0, buf.length),
    readv: () => 0,
    write: () => 0,
    writev: () => 0,
  };
}

Deno.test("bench burn: a super-packet read and a reassembled write spin, small reads do not", () => {
  const big = VNET_HDR_LEN + BURN_MIN_READ + 1;
  const small = VNET_HDR_LEN + 100;
  const dev = queuedDevice([big, ...Array(20).fill(small)]);
  let delivered = 0;
  const tun = new BurningTun({ txUs: 4000, rxUs: 4000 }, dev, {
    mtu: 1450,
    counters: new Counters(),
    deliverer: {
      deliver: () => {
        delivered++;
        return Verdict.DROP; // (nothing written: only the spin before it is measured)
      },
    },
  });
  let t = performance.now();
  assertEquals(tun.read(), BURN_MIN_READ + 1);
  assert(performance.now() - t >= 4, "a super-packet read must spin txUs");
  t = performance.now();
  for (let i = 0; i < 20; i++) assertEquals(tun.read(), 100);
  // 20 reads that each spun would take ≥ 80 ms.
  assert(performance.now() - t < 40, "small reads must not spin");
  const p: AssembledPacket = {
    data: new Uint8Array(2048),
    offset: 0,
    length: 100,
    meta: { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 },
    parts: 1,
    partOffsets: new Int32Array([0]),
    partLengths: new Int32Array([100]),
  };
  t = performance.now();
  assertEquals(tun.writeAssembled(p), false);
  assert(performance.now() - t >= 4, "a reassembled write must spin rxUs");
  assertEquals(delivered, 1);
});
