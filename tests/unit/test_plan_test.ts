import { assertEquals } from "../helpers/assert.ts";
import {
  addRun,
  closingLine,
  LIGHT,
  planRuns,
  SOLO,
  summaryOf,
  takeRun,
  WEIGHTS,
} from "../../scripts/test_plan.ts";

Deno.test("suite plan: every file once, parallel part longest first, timing-sensitive files alone at the end", () => {
  const files = [
    "tests/netns/a_test.ts",
    "tests/netns/kfast_test.ts",
    "tests/netns/secure_test.ts",
    "tests/netns/trust_test.ts",
  ];
  const runs = planRuns(files);
  assertEquals(runs.flatMap((r) => r.files).sort(), [...files, "tests/unit/"].sort());
  // The parallel part by the recorded seconds (a file not listed last), then the solo file.
  const parallel = ["tests/netns/secure_test.ts", "tests/netns/trust_test.ts", "tests/unit/"]
    .sort((a, b) => WEIGHTS[b] - WEIGHTS[a]);
  assertEquals(runs.map((r) => r.files[0]), [
    ...parallel,
    "tests/netns/a_test.ts",
    "tests/netns/kfast_test.ts",
  ]);
  assertEquals(runs.map((r) => r.weight).slice(0, 3), parallel.map((f) => WEIGHTS[f]));
  assertEquals(runs.map((r) => r.solo), [false, false, false, false, true]);
  assertEquals(SOLO.has("tests/netns/kfast_test.ts"), true);
});

Deno.test("suite plan: the type check is one more parallel run; the bench runner is alone only beside the harness", () => {
  const files = ["tests/netns/a_test.ts", "tests/netns/bench_runner_test.ts", "tests/netns/kfast_test.ts"];
  const ci = planRuns(files, { typeCheck: true });
  assertEquals(ci.filter((r) => r.typeCheck).map((r) => [r.files, r.solo]), [[[], false]]);
  assertEquals(ci.filter((r) => r.solo).map((r) => r.files[0]), ["tests/netns/kfast_test.ts"]);
  assertEquals(ci[0].files[0], "tests/netns/bench_runner_test.ts"); // the longest first
  const beside = planRuns(files, { harness: true });
  assertEquals(beside.filter((r) => r.typeCheck).length, 0);
  assertEquals(
    beside.filter((r) => r.solo).map((r) => r.files[0]).sort(),
    ["tests/netns/bench_runner_test.ts", "tests/netns/kfast_test.ts"],
  );
});

Deno.test("suite plan: the light lane takes only files that mostly wait; the other lanes take those last", () => {
  const light = [...LIGHT][0];
  assertEquals(LIGHT.has("tests/netns/secure_test.ts"), false);
  const files = ["tests/netns/a_test.ts", light, "tests/netns/secure_test.ts", "tests/netns/kfast_test.ts"];
  const parallel = () => planRuns(files, { typeCheck: true }).filter((r) => !r.solo);
  let queue = parallel();
  assertEquals(takeRun(queue, true)?.files, [light]);
  assertEquals(takeRun(queue, true), undefined, "nothing else for the light lane");
  assertEquals(queue.length, 4);
  // Another lane: the heavy ones longest first, the light file only when nothing else is left.
  queue = parallel();
  const order: string[] = [];
  for (let r = takeRun(queue, false); r; r = takeRun(queue, false)) {
    order.push(r.typeCheck ? "check" : r.files[0]);
  }
  assertEquals(order.at(-1), light);
  assertEquals(order[0], "tests/netns/secure_test.ts");
  assertEquals(order.length, 5);
});

Deno.test("suite plan: closing lines add up; a run without one or with a bare non-zero exit is a failure", () => {
  const none = { passed: 0, failed: 0, ignored: 0 };
  const a = summaryOf("x\nok | 3 passed (2 steps) | 0 failed | 1 ignored (29ms)\n");
  assertEquals(a, { passed: 3, failed: 0, ignored: 1 });
  const b = summaryOf("FAILED | 4 passed | 2 failed (1m2s)");
  assertEquals(b, { passed: 4, failed: 2, ignored: 0 });
  assertEquals(summaryOf("error: Module not found"), undefined);
  let t = addRun(none, a, 0);
  t = addRun(t, b, 1);
  assertEquals(t, { passed: 7, failed: 2, ignored: 1 });
  assertEquals(addRun(t, undefined, 1).failed, 3);
  assertEquals(addRun(t, { passed: 1, failed: 0, ignored: 0 }, 1).failed, 3);
  assertEquals(closingLine(t), "7 passed, 2 failed, 1 skipped");
  assertEquals(closingLine({ passed: 5, failed: 0, ignored: 0 }), "5 passed, 0 failed");
});
