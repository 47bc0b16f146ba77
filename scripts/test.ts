/**
 * Runs the whole test suite (`deno test -A` on tests/) and ends with the plain summary line
 * `N passed, M failed[, K skipped]` that CI readers understand; exits non-zero on any failure.
 * Extra arguments are passed to `deno test` (e.g. a file filter).
 */
const args = Deno.args.length > 0 ? Deno.args : ["tests/"];
const child = new Deno.Command(Deno.execPath(), {
  args: ["test", "-A", "--no-prompt", ...args],
  stdout: "piped",
  stderr: "inherit",
  env: { NO_COLOR: "1" },
}).spawn();

let tail = "";
const decoder = new TextDecoder();
for await (const chunk of child.stdout) {
  await Deno.stdout.write(chunk);
  tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4000);
}
const { code } = await child.status;

// Closing line of deno test: "ok | 3 passed (2 steps) | 0 failed | 1 ignored (29ms)" or "FAILED | …".
const m = [...tail.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed[^|\n]*(?:\| (\d+) ignored)?/g)]
  .pop();
if (!m) {
  console.log(`0 passed, 1 failed`);
  console.error("test runner: deno test printed no summary (exit code " + code + ")");
  Deno.exit(code === 0 ? 1 : code);
}
const passed = Number(m[1]);
const failed = Number(m[2]) + (code !== 0 && Number(m[2]) === 0 ? 1 : 0);
const skipped = Number(m[3] ?? 0);
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
Deno.exit(failed > 0 ? 1 : 0);
