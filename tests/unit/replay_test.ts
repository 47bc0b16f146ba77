import { assert, assertEquals } from "../helpers/assert.ts";
import { REPLAY_WINDOW, ReplayWindow } from "../../src/secure/replay.ts";
import { seededRandom } from "../../src/proxy/balance.ts";

Deno.test("replay: each counter is accepted once, in any order within the window", () => {
  const w = new ReplayWindow();
  assert(REPLAY_WINDOW >= 2048);
  for (const c of [0, 2, 1, 5, 3, 4]) assert(w.accept(c), `counter ${c}`);
  for (const c of [0, 1, 2, 3, 4, 5]) assert(!w.check(c) && !w.accept(c), `replayed ${c}`);
  assertEquals(w.last, 5);
});

Deno.test("replay: counters older than the window are refused, those just inside accepted", () => {
  const w = new ReplayWindow();
  assert(w.accept(100_000));
  assert(!w.check(100_000 - REPLAY_WINDOW));
  assert(w.accept(100_000 - REPLAY_WINDOW + 1));
  assert(w.accept(100_000 - 2048));
  assert(!w.accept(-1) && !w.accept(1.5) && !w.accept(Number.NaN) && !w.accept(2 ** 53));
});

Deno.test("replay: a jump far ahead clears the old bits; check never changes the window", () => {
  const w = new ReplayWindow();
  for (let c = 0; c < 5000; c++) assert(w.accept(c));
  assert(w.check(1_000_000));
  assertEquals(w.last, 4999);
  assert(w.accept(1_000_000));
  // Counters that map to the same ring bits as earlier ones are new here.
  for (let c = 1_000_000 - REPLAY_WINDOW + 1; c < 1_000_000; c += 37) assert(w.accept(c), `counter ${c}`);
  w.reset();
  assert(w.accept(3));
});

Deno.test("replay: agrees with a reference set model on 200k random reordered counters", () => {
  const rnd = seededRandom(11);
  const w = new ReplayWindow();
  const seen = new Set<number>();
  let last = -1;
  let next = 0;
  for (let i = 0; i < 200_000; i++) {
    // Mostly forward, sometimes reordered back, sometimes a duplicate, sometimes a jump.
    const r = rnd();
    let c: number;
    if (r < 0.6) c = next++;
    else if (r < 0.9) c = Math.max(0, next - 1 - Math.floor(rnd() * (REPLAY_WINDOW + 200)));
    else if (r < 0.99) c = Math.max(0, next - 1 - Math.floor(rnd() * 8));
    else c = next += Math.floor(rnd() * 10_000);
    const expect = c > last || (last - c < REPLAY_WINDOW && !seen.has(c));
    assertEquals(w.accept(c), expect, `counter ${c} (last ${last})`);
    if (expect) {
      seen.add(c);
      if (c > last) last = c;
    }
  }
});
