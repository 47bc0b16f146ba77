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

/** True when the runner asked for the smoke variant: the smallest run that shows a benchmark works. */
export const SMOKE: boolean = Deno.args.includes("--smoke");

/** True when the runner asked for the quick (or smoke) variant of a benchmark. */
export const QUICK: boolean = SMOKE || Deno.args.includes("--quick");

/** Prefix for this script's namespaces: the runner's (plus `tag`), else a fresh random one. */
export function namePrefix(tag: string): string {
  const given = Deno.env.get(PREFIX_ENV);
  if (given) return `${given}${tag}`;
  return `${tag}${(Date.now() % 46656).toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}

/**
 * Runs `cleanup` once on SIGINT or SIGTERM, or when the script has run for `limitMs`, then exits
 * (130 / 143 / 124). Returns a function that removes the handlers and the limit (call it when the
 * script cleans up normally).
 */
export function onInterrupt(cleanup: () => Promise<unknown>, limitMs?: number): () => void {
  // every process this script starts from now on inherits the mark, so what the clean-up does not
  // know of (a CLI call in flight, a server's helper) is found too
  const mark = `${Deno.pid}-${Math.floor(Math.random() * 1e9)}`;
  Deno.env.set(OWNER_ENV, mark);
  const stop = (why: string, code: number) => {
    if (interrupting) return;
    interrupting = true;
    console.error(`bench: ${why}, cleaning up`);
    for (const c of tools) {
      try {
        c.kill("SIGKILL");
      } catch { /* exited */ }
    }
    // a clean-up that itself hangs must not keep the process alive
    const limit = setTimeout(() => Deno.exit(code), 20000);
    cleanup().catch((e) => console.error(`bench: clean-up failed: ${e}`)).finally(() => {
      killMarked(OWNER_ENV, mark);
      clearTimeout(limit);
      Deno.exit(code);
    });
  };
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => stop(sig, sig === "SIGINT" ? 130 : 143);
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  const timer = limitMs === undefined
    ? undefined
    : setTimeout(() => stop(`no result within ${limitMs / 1000} s`, 124), limitMs);
  if (timer !== undefined) Deno.unrefTimer(timer);
  return () => {
    clearTimeout(timer);
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  };
}

/** Environment variable marking the processes started by one benchmark script (see onInterrupt). */
export const OWNER_ENV = "NETMANAGER_BENCH_OWNER";

/** PIDs of live processes (other than this one) whose environment has `name=value`. */
export function processesMarked(name: string, value: string): number[] {
  const token = new TextEncoder().encode(`${name}=${value}\0`);
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    let env: Uint8Array;
    try {
      env = Deno.readFileSync(`/proc/${e.name}/environ`);
    } catch {
      continue;
    }
    if (hasVariable(env, token)) out.push(Number(e.name));
  }
  return out;
}

/** SIGKILLs every process {@link processesMarked} finds; returns their PIDs. */
export function killMarked(name: string, value: string): number[] {
  const killed: number[] = [];
  for (const pid of processesMarked(name, value)) {
    try {
      Deno.kill(pid, "SIGKILL");
      killed.push(pid);
    } catch { /* gone */ }
  }
  return killed;
}

/** True when the NUL-separated environment block `env` has the entry `token` (`NAME=value\0`). */
function hasVariable(env: Uint8Array, token: Uint8Array): boolean {
  outer: for (let i = 0; i + token.length <= env.length; i++) {
    if (i > 0 && env[i - 1] !== 0) continue; // an entry starts at 0 or after a NUL
    for (let j = 0; j < token.length; j++) if (env[i + j] !== token[j]) continue outer;
    return true;
  }
  return false;
}

let interrupting = false;

/**
 * Call first in a script's `finally`: during an interrupt's clean-up it never resolves, so an
 * error the clean-up caused in the main flow cannot end the process before the clean-up does
 * (which exits 130 / 143).
 */
export function afterInterrupt(): Promise<void> {
  return interrupting ? new Promise(() => {}) : Promise.resolve();
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
