/**
 * A diagnostic trace of the handshakes (issue 11: where a handshake's milliseconds go), off unless
 * `NETMANAGER_HS_TRACE` names a directory: each event is then kept with its wall-clock time (µs,
 * comparable between the processes of one machine) and the calling thread's CPU and run-queue wait
 * so far (`/proc/thread-self/schedstat`), and written as JSON lines to `<dir>/hs-<pid>.jsonl` at
 * {@link flushTrace} (never in the middle of a handshake). Tests and `scripts/hs_trace_report.ts` read it.
 *
 * @example
 * ```ts
 * import { trace, tracing } from "./hs_trace.ts";
 * if (tracing) trace("init-sent", { peer: "10.0.0.2:50103" });
 * console.log(typeof tracing); // boolean
 * ```
 * @module
 */

const dir = (() => {
  try {
    return Deno.env.get("NETMANAGER_HS_TRACE") ?? "";
  } catch {
    return "";
  }
})();

/** True when events are recorded (`NETMANAGER_HS_TRACE` set). */
export const tracing: boolean = dir !== "";

let buf: string[] = [];
let where = "";

/** Names the calling isolate in its events (e.g. `main`, `w0`). */
export function traceAs(name: string): void {
  where = name;
}

function schedstat(): [number, number] {
  try {
    const [run, wait] = Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ");
    return [Number(run) / 1000, Number(wait) / 1000];
  } catch {
    return [0, 0];
  }
}

/** Records event `ev` now with `fields` (nothing unless {@link tracing}). */
export function trace(ev: string, fields: Record<string, unknown> = {}, atMs?: number): void {
  if (!tracing) return;
  const [cpuUs, waitUs] = schedstat();
  const t = Math.round((performance.timeOrigin + (atMs ?? performance.now())) * 1000);
  buf.push(JSON.stringify({ t, ev, pid: Deno.pid, in: where, cpuUs, waitUs, ...fields }));
  if (buf.length > 10_000) buf = buf.slice(-5000);
}

/** Appends the events kept so far to the trace file. */
export function flushTrace(): void {
  if (!tracing || buf.length === 0) return;
  const lines = buf.join("\n") + "\n";
  buf = [];
  try {
    Deno.writeTextFileSync(`${dir}/hs-${Deno.pid}.jsonl`, lines, { append: true });
  } catch {
    // a diagnostic only
  }
}
