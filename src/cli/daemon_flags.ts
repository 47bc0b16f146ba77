/**
 * The options of `netmanager daemon` / `netmanager debug`, declared once: commander builds the
 * commands (help, errors) from {@link DAEMON_OPTIONS}, and {@link parseDaemonArgv} reads a plain
 * daemon command line without loading commander, so a running node does not keep the CLI library
 * and the other subcommands in memory (~3 MB resident). Anything it does not accept as plain
 * (help, an unknown or malformed option, a stray argument) is left to commander, so every message
 * and exit status stays commander's.
 *
 * @example
 * ```ts
 * const fast = parseDaemonArgv(["daemon", "--subnet", "10.18.0.64/26"]);
 * // { debug: false, flags: { socket: "/etc/netmanager/netmanager.sock", logLevel: "info", subnet: "10.18.0.64/26" } }
 * parseDaemonArgv(["daemon", "--help"]); // undefined: commander prints the help
 * ```
 */
import { parseArgs } from "node:util";
import { DEFAULT_SOCKET } from "./common.ts";

/** The parsed options (commander's camelCase keys). */
export interface DaemonFlags {
  cfg?: string;
  tuncfg?: string;
  socket: string;
  stateDir?: string;
  subnet?: string;
  logLevel: string;
  metricsAddr?: string;
  logFormat?: string;
  staticTable?: string;
}

/** One `--name <value>` option: its key in {@link DaemonFlags}, help text and default. */
export interface DaemonOption {
  name: string;
  key: keyof DaemonFlags;
  value: string;
  help: string;
  /** Default for `daemon` and for `debug` (the same unless given twice). */
  default?: { daemon: string; debug: string };
}

/** Every option of the two commands, in help order. */
export const DAEMON_OPTIONS: readonly DaemonOption[] = [
  { name: "cfg", key: "cfg", value: "<file>", help: "netcfg.json (default /etc/netmanager/netcfg.json)" },
  {
    name: "tuncfg",
    key: "tuncfg",
    value: "<file>",
    help: "tuncfg.json (default /etc/netmanager/tuncfg.json)",
  },
  {
    name: "socket",
    key: "socket",
    value: "<path>",
    help: "unix socket of the API",
    default: { daemon: DEFAULT_SOCKET, debug: DEFAULT_SOCKET },
  },
  {
    name: "state-dir",
    key: "stateDir",
    value: "<dir>",
    help: "state directory (default from netcfg StateDir: /var/lib/netmanager)",
  },
  {
    name: "subnet",
    key: "subnet",
    value: "<cidr4[,cidr6]>",
    help: "standalone mode: use this node subnet, no cluster needed",
  },
  {
    name: "log-level",
    key: "logLevel",
    value: "<level>",
    help: "debug | info | warn | error",
    default: { daemon: "info", debug: "debug" },
  },
  {
    name: "metrics-addr",
    key: "metricsAddr",
    value: "<host:port>",
    help: "serve /metrics and /healthz over TCP (netcfg MetricsAddress)",
  },
  { name: "log-format", key: "logFormat", value: "<format>", help: "text | json (netcfg LogFormat)" },
  {
    name: "static-table",
    key: "staticTable",
    value: "<file>",
    help: "static-table mode: JSON array of table-query results (no cluster)",
  },
];

/**
 * Reads `daemon …` / `debug …` (argv without the program name) when every argument is one of
 * {@link DAEMON_OPTIONS} with its value; undefined for anything else (commander handles it).
 */
export function parseDaemonArgv(argv: readonly string[]): { debug: boolean; flags: DaemonFlags } | undefined {
  const [command, ...rest] = argv;
  if (command !== "daemon" && command !== "debug") return undefined;
  const debug = command === "debug";
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: rest,
      options: Object.fromEntries(DAEMON_OPTIONS.map((o) => [o.name, { type: "string" as const }])),
      strict: true,
      allowPositionals: false,
    }).values;
  } catch {
    return undefined;
  }
  const flags: DaemonFlags = { socket: DEFAULT_SOCKET, logLevel: debug ? "debug" : "info" };
  for (const o of DAEMON_OPTIONS) {
    const v = values[o.name];
    if (typeof v === "string") flags[o.key] = v;
  }
  return { debug, flags };
}
