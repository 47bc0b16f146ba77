/**
 * `netmanager daemon` and `netmanager debug`: run the node daemon.
 */
import { Command } from "@commander-js/extra-typings";
import { startDaemon } from "../daemon.ts";
import { type LogLevel, setLogFormat, setLogLevel } from "../log.ts";
import { configFromFlags, DEFAULT_SOCKET, fail, UsageError } from "./common.ts";
import { loadStaticTable, TranslationTable } from "../table/mod.ts";

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
  const table = new TranslationTable();
  try {
    loadStaticTable(value, table);
  } catch (e) {
    bad(e);
  }
  return table;
}

function daemonCommand(name: string, description: string, forceDebug: boolean) {
  return new Command(name)
    .description(description)
    .option("--cfg <file>", "netcfg.json (default /etc/netmanager/netcfg.json)")
    .option("--tuncfg <file>", "tuncfg.json (default /etc/netmanager/tuncfg.json)")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--state-dir <dir>", "state directory (default from netcfg StateDir: /var/lib/netmanager)")
    .option("--subnet <cidr4[,cidr6]>", "standalone mode: use this node subnet, no cluster needed")
    .option("--log-level <level>", "debug | info | warn | error", forceDebug ? "debug" : "info")
    .option("--metrics-addr <host:port>", "serve /metrics and /healthz over TCP (netcfg MetricsAddress)")
    .option("--log-format <format>", "text | json (netcfg LogFormat)")
    .option("--static-table <file>", "static-table mode: JSON array of table-query results (no cluster)")
    .action(async (opts) => {
      try {
        const cfg = await configFromFlags(opts);
        setLogFormat(cfg.net.LogFormat);
        const level = (forceDebug || cfg.net.Debug ? "debug" : opts.logLevel) as LogLevel;
        if (!["debug", "info", "warn", "error"].includes(level)) {
          throw new UsageError(`invalid --log-level "${level}" (debug | info | warn | error)`);
        }
        setLogLevel(level);
        const d = await startDaemon({
          cfg,
          socketPath: opts.socket,
          handleSignals: true,
          staticTable: opts.staticTable ? await readStaticTable(opts.staticTable) : undefined,
        });
        await d.stopped;
        Deno.exit(0);
      } catch (e) {
        fail(e);
      }
    });
}

/** `netmanager daemon`. */
export function daemonCmd() {
  return daemonCommand("daemon", "run the node network manager", false);
}

/** `netmanager debug`: the daemon with debug logging. */
export function debugCmd() {
  return daemonCommand("debug", "run the daemon with debug logging", true);
}
