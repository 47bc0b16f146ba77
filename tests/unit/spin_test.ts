import { assert, assertEquals } from "../helpers/assert.ts";
import { ReadPolicy, SpinPolicy } from "../../src/proxy/spin.ts";

/** Drives the policy like the loop: one wake every `gapMs` handling `packets` in `workMs`. */
function run(p: SpinPolicy, fromMs: number, toMs: number, gapMs: number, packets: number, workMs: number) {
  let spins = 0, polls = 0;
  for (let t = fromMs; t < toMs; t += gapMs) {
    polls++;
    if (p.shouldSpin(t)) spins++;
    p.active(t + workMs, workMs, packets);
  }
  return spins / polls;
}

Deno.test("spin: off when spinMs is 0", () => {
  const p = new SpinPolicy({ spinMs: 0 });
  assertEquals(run(p, 0, 500, 0.03, 1, 0.005), 0);
});

Deno.test("spin: request/response (one packet per wake, light work) spins right after traffic", () => {
  const p = new SpinPolicy({ spinMs: 0.1 });
  const share = run(p, 0, 1000, 0.03, 1, 0.005);
  assert(share > 0.9, `spun on ${share} of the polls`);
  assertEquals(p.shouldSpin(2000), false, "not long after the last packet");
});

Deno.test("spin: batches (bulk or floods) or heavy work stop spinning from the next window", () => {
  const bulk = new SpinPolicy({ spinMs: 0.1 });
  assert(run(bulk, 0, 100, 0.05, 20, 0.01) > 0.9, "the first window knows nothing yet");
  assertEquals(run(bulk, 100, 1000, 0.05, 20, 0.01), 0, "20 packets per wake");
  const heavy = new SpinPolicy({ spinMs: 0.1 });
  run(heavy, 0, 100, 0.05, 1, 0.04);
  assertEquals(run(heavy, 100, 1000, 0.05, 1, 0.04), 0, "work took 80 % of the time");
  // Back to light traffic: spinning resumes after a quiet window.
  run(heavy, 1000, 1100, 0.05, 1, 0.001);
  assert(run(heavy, 1100, 1500, 0.05, 1, 0.001) > 0.9);
});

Deno.test("spin: at most the budget of each window is spent spinning", () => {
  const p = new SpinPolicy({ spinMs: 1, budget: 0.2, windowMs: 100 });
  let spun = 0;
  p.active(0, 0, 1);
  for (let t = 0; t < 100; t += 0.01) {
    if (p.shouldSpin(t)) {
      p.idle(0.01);
      spun += 0.01;
      p.active(t, 0, 1); // keeps the traffic "recent"
    }
  }
  assert(spun <= 20.01 && spun >= 19.9, `spun ${spun} ms of 100`);
});

Deno.test("reads: one packet per wake-up (request/response) reads one packet per drain; bursts drain fully", () => {
  const p = new ReadPolicy(512, 0.05);
  const drain = (now: number, queued: number) => {
    const max = p.limit(now);
    const read = Math.min(max, queued);
    p.done(now, read, max);
    return max;
  };
  assertEquals(drain(0, 1), 512, "nothing known yet: a full drain (it found one packet)");
  assertEquals(drain(1, 1), 1, "request/response: one read");
  assertEquals(drain(2, 1), 1);
  assertEquals(p.limit(2.01), 512, "a drain right after the last one: packets were queued");
  assertEquals(drain(2.01, 5), 512);
  assertEquals(drain(3, 5), 512, "a full drain found several: stays full");
  assertEquals(drain(4, 1), 512, "and finds one");
  p.done(5, 0, 1); // a spurious wake-up changes nothing
  assertEquals(p.limit(6), 1);
});
