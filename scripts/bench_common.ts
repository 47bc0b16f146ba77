/**
 * What the benchmark scripts share: the namespace-name prefix the runner (scripts/bench.ts) hands
 * down, clean-up on SIGINT/SIGTERM, and commands with a time limit.
 *
 * @example
 * ```ts
 * import { namePrefix, onInterrupt, runLimited } from "./bench_common.ts";
 * const prefix = namePrefix("x");
 * const off = onInterrupt(async () => {});
 * const r = await runLimited(["true"], 1000);
 * off();
 * ```
 */

/**
 * Environment variable carrying the runner's per-run prefix: every namespace a benchmark creates
 * starts with it, and every process it starts inherits it, so the runner can find and remove
 * exactly what its run left behind (and nothing of anybody else's).
 */
export const PREFIX_ENV = "NETMANAGER_BENCH_PREFIX";

/** True when the runner asked for the quick (smoke) variant of a benchmark. */
export const QUICK: boolean = Deno.args.includes("--quick");

/** Prefix for this script's namespaces: the runner's (plus `tag`), else a fresh random one. */
export function namePrefix(tag: string): string {
  const given = Deno.env.get(PREFIX_ENV);
  if (given) return `${given}${tag}`;
  return `${tag}${(Date.now() % 46656).toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}

/**
 * Runs `cleanup` once on SIGINT or SIGTERM, then exits (130 / 143). Returns a function that removes
 * the handlers (call it when the script cleans up normally).
 */
export function onInterrupt(cleanup: () => Promise<unknown>): () => void {
  let running = false;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => {
      if (running) return;
      running = true;
      console.error(`bench: ${sig}, cleaning up`);
      for (const c of tools) {
        try {
          c.kill("SIGKILL");
        } catch { /* exited */ }
      }
      // a clean-up that itself hangs must not keep the process alive
      const limit = setTimeout(() => Deno.exit(sig === "SIGINT" ? 130 : 143), 20000);
      cleanup().catch((e) => console.error(`bench: clean-up failed: ${e}`)).finally(() => {
        clearTimeout(limit);
        Deno.exit(sig === "SIGINT" ? 130 : 143);
      });
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  return () => {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  };
}

/** Outcome of {@link runLimited}. */
export interface LimitedResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Tools running now (killed first on an interrupt: they may sit in namespaces about to go). */
const tools = new Set<Deno.ChildProcess>();

/** Runs `argv` and kills it (SIGKILL) after `limitMs`; never throws for a non-zero exit. */
export async function runLimited(argv: string[], limitMs: number): Promise<LimitedResult> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  tools.add(child);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, limitMs);
  const out = await child.output().finally(() => tools.delete(child));
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), timedOut };
}

/** Like {@link runLimited}, but returns trimmed stdout and throws on failure or timeout. */
export async function mustRunLimited(argv: string[], limitMs: number): Promise<string> {
  const r = await runLimited(argv, limitMs);
  if (r.timedOut) throw new Error(`${argv.slice(0, 8).join(" ")}: no result within ${limitMs} ms`);
  if (r.code !== 0) throw new Error(`${argv.slice(0, 8).join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}
