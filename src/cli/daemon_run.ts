/**
 * What `netmanager daemon` / `netmanager debug` do once their options are parsed (by commander or
 * by the fast path in `daemon_flags.ts`): load the configuration, start the daemon, run until it
 * stops. Errors end the process with one `netmanager:` line.
 *
 * @example
 * ```ts
 * import { parseDaemonArgv } from "./daemon_flags.ts";
 * const parsed = parseDaemonArgv(["daemon", "--subnet", "10.18.0.64/26"]);
 * if (parsed) await runDaemon(parsed.flags, parsed.debug); // returns only by exiting
 * ```
 */
import { startDaemon } from "../daemon.ts";
import { type LogLevel, setLogFormat, setLogLevel } from "../log.ts";
import { configFromFlags, fail, UsageError } from "./common.ts";
import type { DaemonFlags } from "./daemon_flags.ts";
import type { TranslationTable } from "../table/table.ts";
import { benchBurnFromEnv } from "../proxy/bench_burn.ts";

/**
 * Reads a static table file straight into a (compact) table, result by result: a 10k-entry file
 * never exists as entry objects all at once, so the daemon's heap stays small after loading.
 */
async function readStaticTable(path: string): Promise<TranslationTable> {
  const bad = (why: unknown): never => {
    throw new Error(`--static-table ${path}: ${why instanceof Error ? why.message : why}`);
  };
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    bad(e);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    bad(`static table is not valid JSON: ${e instanceof Error ? e.message : e}`);
  }
  // The parser and its zod schemas are loaded only when a static table is given.
  const { loadStaticTable, TranslationTable } = await import("../table/mod.ts");
  const table = new TranslationTable();
  try {
    loadStaticTable(value, table);
  } catch (e) {
    bad(e);
  }
  return table;
}

/** Runs the daemon with `flags` until it stops, then exits (`forceDebug`: `netmanager debug`). */
export async function runDaemon(flags: DaemonFlags, forceDebug: boolean): Promise<never> {
  try {
    const cfg = await configFromFlags(flags);
    setLogFormat(cfg.net.LogFormat);
    const level = (forceDebug || cfg.net.Debug ? "debug" : flags.logLevel) as LogLevel;
    if (!["debug", "info", "warn", "error"].includes(level)) {
      throw new UsageError(`invalid --log-level "${level}" (debug | info | warn | error)`);
    }
    setLogLevel(level);
    benchBurnFromEnv(); // a malformed benchmark knob stops the start, not each data-plane Worker in turn
    const d = await startDaemon({
      cfg,
      socketPath: flags.socket,
      handleSignals: true,
      staticTable: flags.staticTable ? await readStaticTable(flags.staticTable) : undefined,
    });
    await d.stopped;
    Deno.exit(0);
  } catch (e) {
    fail(e);
  }
}
