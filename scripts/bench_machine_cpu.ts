/**
 * The whole machine's busy CPU during each TCP 1-stream test of a bench_overlay.sh run, per Gbit/s.
 *
 * The harness's own CPU column counts only the slot daemons' processes: a kernel path's packet work
 * (softirq, the iperf3 processes' system time) is not in it, nor is VXLAN's. Both simulated nodes live
 * on this machine, so the machine's busy time (user+nice+system+irq+softirq+steal from /proc/stat)
 * during a test is a fair cost of every path alike — on a quiet machine. On a busy one the other work is
 * in it too, so the same window also gives an attributed figure: the CPU ticks of the processes in the
 * harness's namespaces (iperf3 both ends, the slot daemons) and of the ksoftirqd threads. With tick
 * accounting (no CONFIG_IRQ_TIME_ACCOUNTING, as on this machine) softirq time is charged to the task it
 * interrupted too, so the packet work run in those processes' context is in their ticks and the deferred
 * part in ksoftirqd's (other work's softirq there too); softirq that interrupted the idle task is not in
 * it. bench_overlay.sh samples every 0.25 s
 * (`<epoch seconds> <those processes' ticks> cpu …` per line, the `cpu` line of /proc/stat); a test's
 * window is taken from its raw iperf3 JSON (file written when the client exits: end = mtime, start = end −
 * the test's seconds), and the samples just inside it give the busy share.
 *
 *   deno run -A scripts/bench_machine_cpu.ts RESULTS_DIR [CPUS]   (one JSON line per path and repetition;
 *   CPUS: the number of CPUs /proc/stat's `cpu` line sums, default: its cpuN lines)
 *
 * @example
 * ```ts
 * import { busyOver, parseStatLog } from "./bench_machine_cpu.ts";
 * const s = parseStatLog("10.0 5 cpu 100 0 50 800 0 0 0 0\n11.0 65 cpu 200 0 100 850 0 0 0 0\n");
 * console.log(busyOver(s, 10, 11, 2)); // { pctCore: 150, ownPctCore: 60, seconds: 1 } (of 200 % on 2 CPUs)
 * ```
 */
import { z } from "zod";

/** One /proc/stat `cpu` line at a time: busy and total ticks. */
export interface StatSample {
  /** seconds since the epoch */
  t: number;
  busy: number;
  total: number;
  /** irq + softirq ticks of the machine */
  irq: number;
  /** CPU ticks so far of the processes in the harness's namespaces (undefined in a log without them) */
  own?: number;
}

/**
 * Parses the sampler's log: `<epoch seconds> [<own ticks>] cpu user nice system idle iowait irq softirq
 * steal …` per line (malformed lines are skipped).
 */
export function parseStatLog(text: string): StatSample[] {
  const out: StatSample[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    const at = f.indexOf("cpu");
    if ((at !== 1 && at !== 2) || f.length < at + 8) continue;
    const t = Number(f[0]);
    const own = at === 2 ? Number(f[1]) : undefined;
    const v = f.slice(at + 1, at + 9).map((x) => Number(x ?? 0));
    if (
      !Number.isFinite(t) || v.some((x) => !Number.isFinite(x)) ||
      (own !== undefined && !Number.isFinite(own))
    ) {
      continue;
    }
    const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = v;
    out.push({
      t,
      busy: user + nice + system + irq + softirq + steal,
      total: user + nice + system + idle + iowait + irq + softirq + steal,
      irq: irq + softirq,
      ...(own !== undefined ? { own } : {}),
    });
  }
  return out.sort((a, b) => a.t - b.t);
}

/**
 * Busy CPU in % of one core between the first sample at or after `t0` and the last at or before `t1`
 * (null when fewer than two samples fall inside, i.e. the window is shorter than the sampling step);
 * `ownPctCore`: the sampled processes' ticks — the harness's and ksoftirqd (null without them in the log).
 */
export function busyOver(
  samples: StatSample[],
  t0: number,
  t1: number,
  cpus: number,
): { pctCore: number; ownPctCore: number | null; seconds: number } | null {
  const a = samples.find((s) => s.t >= t0);
  const b = samples.findLast((s) => s.t <= t1);
  if (!a || !b || b.t <= a.t || b.total <= a.total) return null;
  const share = (ticks: number) => (ticks / (b.total - a.total)) * cpus * 100;
  // a process that exited inside the window takes its ticks along: never below 0
  const own = a.own !== undefined && b.own !== undefined ? Math.max(0, b.own - a.own) : null;
  return {
    pctCore: share(b.busy - a.busy),
    ownPctCore: own === null ? null : Math.min(share(own), share(b.busy - a.busy)),
    seconds: b.t - a.t,
  };
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
  /** the harness's processes (iperf3, slot daemons) and ksoftirqd, % of one core (null: not sampled) */
  ownPctCore: number | null;
  /** ownPctCore / gbit */
  ownPctCorePerGbit: number | null;
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
      ownPctCore: w.ownPctCore === null ? null : round(w.ownPctCore, 1),
      ownPctCorePerGbit: w.ownPctCore === null ? null : round(w.ownPctCore / gbit, 2),
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
