/**
 * `netmanager daemon` and `netmanager debug`: run the node daemon.
 */
import { Command } from "@commander-js/extra-typings";
import { startDaemon } from "../daemon.ts";
import { type LogLevel, setLogFormat, setLogLevel } from "../log.ts";
import { configFromFlags, DEFAULT_SOCKET, fail, UsageError } from "./common.ts";
import { parseStaticTableText, type StaticTable } from "../table/mod.ts";

async function loadStaticTable(path: string): Promise<StaticTable> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`--static-table ${path}: ${e instanceof Error ? e.message : e}`);
  }
  try {
    return parseStaticTableText(text);
  } catch (e) {
    throw new Error(`--static-table ${path}: ${e instanceof Error ? e.message : e}`);
  }
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
        const staticTable = opts.staticTable ? await loadStaticTable(opts.staticTable) : undefined;
        const d = await startDaemon({ cfg, socketPath: opts.socket, handleSignals: true, staticTable });
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
