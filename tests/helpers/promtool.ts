/**
 * `promtool check metrics` on a metrics exposition, for the tests that check what a node or the
 * control plane serves at `/metrics`.
 *
 * @example
 * ```ts
 * import { promtool } from "./promtool.ts";
 * const r = await promtool("# TYPE up gauge\nup 1\n");
 * if (r.code !== 0) throw new Error(r.out);
 * ```
 */

/** `promtool check metrics` on `text`: exit code and what it printed. */
export async function promtool(text: string): Promise<{ code: number; out: string }> {
  const p = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const o = await p.output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}
