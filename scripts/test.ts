/**
 * Runs the whole test suite (`deno test -A` on tests/) and ends with the plain summary line
 * `N passed, M failed[, K skipped]` that CI readers understand; exits non-zero on any failure.
 * Extra arguments are passed to `deno test` (e.g. a file filter).
 *
 * The whole suite (no arguments) first runs the type check with every JSDoc example
 * (`scripts/check.ts`); it counts as one test, so a broken example fails the suite.
 */
import { typeCheck } from "./check.ts";
import { TEST_CACHE_ENV } from "../tests/helpers/release.ts";

const whole = Deno.args.length === 0;
const args = whole ? ["tests/"] : Deno.args;
const checked = whole ? await typeCheck() : undefined;
if (checked !== undefined) console.log(`type check (deno check --doc) ... ${checked ? "ok" : "FAILED"}`);
const checkPassed = checked === true ? 1 : 0;
const checkFailed = checked === false ? 1 : 0;
// Things several test files build the same way (the release packages) are built once per run here.
const cache = await Deno.makeTempDir({ prefix: "nmtest-cache-" });
const child = new Deno.Command(Deno.execPath(), {
  args: ["test", "-A", "--no-prompt", ...args],
  stdout: "piped",
  stderr: "inherit",
  env: { NO_COLOR: "1", [TEST_CACHE_ENV]: cache },
}).spawn();

let tail = "";
const decoder = new TextDecoder();
for await (const chunk of child.stdout) {
  await Deno.stdout.write(chunk);
  tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4000);
}
const { code } = await child.status;
await Deno.remove(cache, { recursive: true }).catch(() => {});

// Closing line of deno test: "ok | 3 passed (2 steps) | 0 failed | 1 ignored (29ms)" or "FAILED | …".
const m = [...tail.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed[^|\n]*(?:\| (\d+) ignored)?/g)]
  .pop();
if (!m) {
  console.log(`${checkPassed} passed, ${1 + checkFailed} failed`);
  console.error("test runner: deno test printed no summary (exit code " + code + ")");
  Deno.exit(code === 0 ? 1 : code);
}
const passed = Number(m[1]) + checkPassed;
const failed = Number(m[2]) + (code !== 0 && Number(m[2]) === 0 ? 1 : 0) + checkFailed;
const skipped = Number(m[3] ?? 0);
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
Deno.exit(failed > 0 ? 1 : 0);
