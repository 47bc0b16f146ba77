/**
 * The whole machine's busy CPU during each TCP 1-stream test of a bench_overlay.sh run, per Gbit/s.
 *
 * The harness's own CPU column counts only the slot daemons' processes: a kernel path's packet work
 * (softirq, the iperf3 processes' system time) is not in it, nor is VXLAN's. Both simulated nodes live
 * on this machine, so the machine's busy time (user+nice+system+irq+softirq+steal from /proc/stat)
 * during a test is a fair cost of every path alike. bench_overlay.sh samples the `cpu` line of
 * /proc/stat with a timestamp every 0.2 s (`<epoch seconds> cpu …` per line); a test's window is
 * taken from its raw iperf3 JSON (file written when the client exits: end = mtime, start = end − the
 * test's seconds), and the samples just inside it give the busy share.
 *
 *   deno run -A scripts/bench_machine_cpu.ts RESULTS_DIR [CPUS]   (one JSON line per path and repetition;
 *   CPUS: the number of CPUs /proc/stat's `cpu` line sums, default: its cpuN lines)
 *
 * @example
 * ```ts
 * import { busyOver, parseStatLog } from "./bench_machine_cpu.ts";
 * const s = parseStatLog("10.0 cpu 100 0 50 800 0 0 0 0\n11.0 cpu 200 0 100 850 0 0 0 0\n");
 * console.log(busyOver(s, 10, 11, 2)); // { pctCore: 150, seconds: 1 } (of 200 % on 2 CPUs)
 * ```
 */
import { z } from "zod";

/** One /proc/stat `cpu` line at a time: busy and total ticks. */
export interface StatSample {
  /** seconds since the epoch */
  t: number;
  busy: number;
  total: number;
}

/** Parses the sampler's log (`<epoch seconds> cpu user nice system idle iowait irq softirq steal …`). */
export function parseStatLog(text: string): StatSample[] {
  const out: StatSample[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 9 || f[1] !== "cpu") continue;
    const t = Number(f[0]);
    const v = f.slice(2, 10).map(Number);
    if (!Number.isFinite(t) || v.some((x) => !Number.isFinite(x))) continue;
    const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = v;
    out.push({
      t,
      busy: user + nice + system + irq + softirq + steal,
      total: user + nice + system + idle + iowait + irq + softirq + steal,
    });
  }
  return out.sort((a, b) => a.t - b.t);
}

/**
 * Busy CPU in % of one core between the first sample at or after `t0` and the last at or before `t1`
 * (null when fewer than two samples fall inside, i.e. the window is shorter than the sampling step).
 */
export function busyOver(
  samples: StatSample[],
  t0: number,
  t1: number,
  cpus: number,
): { pctCore: number; seconds: number } | null {
  const a = samples.find((s) => s.t >= t0);
  const b = samples.findLast((s) => s.t <= t1);
  if (!a || !b || b.t <= a.t || b.total <= a.total) return null;
  return { pctCore: ((b.busy - a.busy) / (b.total - a.total)) * cpus * 100, seconds: b.t - a.t };
}

const Iperf = z.object({
  end: z.object({ sum_received: z.object({ seconds: z.number().positive(), bits_per_second: z.number() }) }),
});

/** One TCP 1 test's machine CPU. */
export interface MachineCpu {
  path: string;
  rep: number;
  gbit: number;
  /** the machine's busy CPU during the test, % of one core (all CPUs: up to 100 × cpus) */
  pctCore: number;
  /** pctCore / gbit */
  pctCorePerGbit: number;
  seconds: number;
}

/** The machine CPU of every `raw/<path>-r<rep>/tcp1.json` of a results directory. */
export async function machineCpuOf(dir: string, cpus: number): Promise<MachineCpu[]> {
  const samples = parseStatLog(await Deno.readTextFile(`${dir}/procstat.log`).catch(() => ""));
  const out: MachineCpu[] = [];
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(`${dir}/raw`)) entries.push(e);
  } catch {
    return [];
  }
  for (const e of entries) {
    const m = /^(.+)-r(\d+)$/.exec(e.name);
    if (!e.isDirectory || !m) continue;
    const file = `${dir}/raw/${e.name}/tcp1.json`;
    const [text, st] = await Promise.all([Deno.readTextFile(file), Deno.stat(file)]).catch(
      () => [null, null],
    );
    if (text == null || st?.mtime == null) continue;
    let parsed;
    try {
      parsed = Iperf.safeParse(JSON.parse(text));
    } catch {
      continue;
    }
    if (!parsed.success) continue;
    const { seconds, bits_per_second } = parsed.data.end.sum_received;
    // the client writes its JSON on exit, a few ms after the test: skip 0.2 s at both ends (ramp-up, exit)
    const end = st.mtime.getTime() / 1000;
    const w = busyOver(samples, end - seconds + 0.2, end - 0.1, cpus);
    const gbit = bits_per_second / 1e9;
    if (!w || gbit <= 0) continue;
    out.push({
      path: m[1],
      rep: Number(m[2]),
      gbit: round(gbit, 3),
      pctCore: round(w.pctCore, 1),
      pctCorePerGbit: round(w.pctCore / gbit, 2),
      seconds: round(w.seconds, 2),
    });
  }
  return out.sort((a, b) => a.path.localeCompare(b.path) || a.rep - b.rep);
}

const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;

if (import.meta.main) {
  const dir = Deno.args[0];
  if (!dir) {
    console.error("usage: bench_machine_cpu.ts RESULTS_DIR");
    Deno.exit(2);
  }
  const cpus = Number(Deno.args[1] ?? (await Deno.readTextFile("/proc/stat")).match(/^cpu\d+ /gm)?.length);
  if (!Number.isInteger(cpus) || cpus < 1) {
    console.error("bench_machine_cpu: the number of CPUs is not known");
    Deno.exit(2);
  }
  for (const r of await machineCpuOf(dir, cpus)) console.log(JSON.stringify(r));
}
