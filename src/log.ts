/**
 * Levelled, structured logging to stderr.
 *
 * Lines look like `INFO  2026-11-22T10:00:00.000Z proxy: started {"workers":2}` so that both people
 * and `grep` can read them. Debug lines cost nothing when the level is above debug: callers pass a
 * closure or plain values and no formatting happens unless the line is written.
 *
 * With `setLogFormat("json")` (netcfg `LogFormat: json`) each line is one JSON object instead —
 * `{"time":…,"level":"info","component":"env","msg":"bridge ready","name":"goProxyBridge"}` — for
 * log shippers.
 *
 * @example
 * ```ts
 * const log = logger("env");
 * log.info("bridge ready", { name: "goProxyBridge" });
 * ```
 */

/** Log levels in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
let threshold: number = ORDER.info;

/** Sets the global minimum level written. */
export function setLogLevel(level: LogLevel): void {
  threshold = ORDER[level];
}

/** Line formats: `text` for people, `json` for log shippers. */
export type LogFormat = "text" | "json";

let format: LogFormat = "text";

/** Sets the line format of every logger. */
export function setLogFormat(f: LogFormat): void {
  format = f;
}

/** True when lines of `level` are written; use it to skip building expensive fields. */
export function logEnabled(level: LogLevel): boolean {
  return ORDER[level] >= threshold;
}

/** A logger bound to one component name. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const encoder = new TextEncoder();

function write(level: LogLevel, component: string, msg: string, fields?: Record<string, unknown>): void {
  if (ORDER[level] < threshold) return;
  let line: string;
  if (format === "json") {
    const o: Record<string, unknown> = { time: new Date().toISOString(), level, component, msg };
    for (const k in fields) if (!(k in o)) o[k] = fields[k]; // a field cannot overwrite the fixed keys
    line = safeJson(o) + "\n";
  } else {
    const tag = level.toUpperCase().padEnd(5);
    const extra = fields && Object.keys(fields).length > 0 ? " " + safeJson(fields) : "";
    line = `${tag} ${new Date().toISOString()} ${component}: ${msg}${extra}\n`;
  }
  try {
    Deno.stderr.writeSync(encoder.encode(line));
  } catch {
    // stderr closed (daemon detached): nothing sensible left to do with a log line.
  }
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
  } catch {
    return String(value);
  }
}

/** Returns a logger whose lines carry `component`. */
export function logger(component: string): Logger {
  return {
    debug: (m, f) => write("debug", component, m, f),
    info: (m, f) => write("info", component, m, f),
    warn: (m, f) => write("warn", component, m, f),
    error: (m, f) => write("error", component, m, f),
  };
}

/**
 * Logs a cause once, then at most once per `intervalMs` with the number suppressed in between, and
 * counts every occurrence (by cause) — so a flood of bad input costs a counter increment, not a log
 * line each.
 *
 * @example
 * ```ts
 * const r = new RateLimitedLog((msg, fields) => console.warn(msg, fields), 10_000);
 * r.note("host_loopback", "rejected route", { detail: "x" }, 0); // logged
 * r.note("host_loopback", "rejected route", { detail: "y" }, 5); // counted only
 * r.counts.host_loopback; // 2
 * ```
 */
export class RateLimitedLog {
  /** Occurrences by cause. */
  readonly counts: Record<string, number> = {};
  readonly #last = new Map<string, { at: number; suppressed: number }>();
  readonly #emit: (msg: string, fields: Record<string, unknown>) => void;
  readonly #interval: number;

  constructor(emit: (msg: string, fields: Record<string, unknown>) => void, intervalMs = 10_000) {
    this.#emit = emit;
    this.#interval = intervalMs;
  }

  /**
   * Counts `n` (default 1) occurrences of `cause`; logs `msg` with `fields` unless the cause was
   * logged less than the interval ago.
   */
  note(cause: string, msg: string, fields: Record<string, unknown>, now = performance.now(), n = 1): void {
    this.counts[cause] = (this.counts[cause] ?? 0) + n;
    const l = this.#last.get(cause);
    if (l && now - l.at < this.#interval) {
      l.suppressed += n;
      return;
    }
    this.#emit(msg, { cause, ...fields, ...(l && l.suppressed > 0 ? { suppressed: l.suppressed } : {}) });
    this.#last.set(cause, { at: now, suppressed: 0 });
  }
}
