/**
 * Runs every benchmark once and writes one JSON file (scripts/bench_schema.ts) and a markdown table:
 * the run's date and commit, the machine (CPU model, cores, kernel), whether it was quiet (load,
 * CPU busy and steal before and after), and per benchmark its status and headline figures with the
 * range over repetitions and the ratios to the kernel paths.
 *
 *   deno task bench [--quick | --smoke] [--only a,b] [--skip a,b] [--out DIR] [--harness PATH]
 *                   [--reps N] [--prefix P]          (root)
 *
 * - full (default): the benchmarks as documented (overlay: 3 repetitions of ~3 min per path);
 *   `--quick`: one short repetition of each (minutes); `--smoke`: as quick, with the overlay cut to
 *   VXLAN vs FAST mode with 1-second tests (the test suite's variant: numbers are not figures).
 * - Every step runs in its own session with a time limit: at the limit it gets SIGTERM (it cleans
 *   up), 10 s later SIGKILL. A failed or timed-out step is recorded as such and the next one runs.
 * - Every namespace a step creates starts with the run's prefix, and every process inherits it in
 *   NETMANAGER_BENCH_PREFIX; after each step, and on SIGINT/SIGTERM to the runner, whatever is left
 *   with that prefix is killed and deleted.
 * - The data-plane benchmark needs the shared harness (shared/bench/harness.sh): `--harness`, else
 *   NETMANAGER_BENCH_HARNESS, else the first one found beside the checkout or a parent folder.
 *   Without it that step is skipped (saying so) and the others run.
 * - `--inject fail,hang` adds two steps that fail and hang (the latter leaves a namespace and a
 *   process behind), to show a broken benchmark is reported and cleaned up, not waited for.
 *
 * Exit code: 0 when no step failed or timed out, 1 otherwise, 130/143 when interrupted.
 */
import { type BenchRun, type LoadSample, type StepResult, type StepStatus } from "./bench_schema.ts";
import { BenchRun as BenchRunSchema } from "./bench_schema.ts";
import { killMarked, PREFIX_ENV } from "./bench_common.ts";
import { figuresOf, overlayTable } from "./bench_figures.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const DENO = Deno.execPath();
type Mode = BenchRun["mode"];

/** Thrown for bad command-line arguments. */
export class UsageError extends Error {}

interface Options {
  mode: Mode;
  only?: string[];
  skip: string[];
  out?: string;
  harness?: string;
  reps?: number;
  prefix: string;
  inject: string[];
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    mode: "full",
    skip: [],
    prefix: `nb${Math.floor(Math.random() * 36 ** 4).toString(36).padStart(4, "0")}`,
    inject: [],
  };
  const list = (v: string | undefined, flag: string) => {
    if (!v) throw new UsageError(`${flag} needs a comma-separated list`);
    return v.split(",").map((s) => s.trim()).filter(Boolean);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case "--quick":
        o.mode = "quick";
        break;
      case "--smoke":
        o.mode = "smoke";
        break;
      case "--only":
        o.only = list(v, a), i++;
        break;
      case "--skip":
        o.skip = list(v, a), i++;
        break;
      case "--inject":
        o.inject = list(v, a), i++;
        if (o.inject.some((x) => x !== "fail" && x !== "hang")) {
          throw new UsageError("--inject takes fail,hang");
        }
        break;
      case "--out":
        if (!v) throw new UsageError("--out needs a directory");
        o.out = v, i++;
        break;
      case "--harness":
        if (!v) throw new UsageError("--harness needs a path");
        o.harness = v, i++;
        break;
      case "--reps":
        o.reps = Number(v), i++;
        if (!Number.isInteger(o.reps) || o.reps < 1 || o.reps > 50) {
          throw new UsageError("--reps needs an integer from 1 to 50");
        }
        break;
      case "--prefix":
        if (!v || !/^[a-z][a-z0-9]{1,7}$/.test(v)) {
          throw new UsageError("--prefix needs 2-8 lowercase letters/digits, starting with a letter");
        }
        o.prefix = v, i++;
        break;
      case "-h":
      case "--help":
        console.log(
          "usage: deno task bench [--quick | --smoke] [--only a,b] [--skip a,b] [--out DIR] " +
            "[--harness PATH] [--reps N] [--prefix P] [--inject fail,hang]",
        );
        Deno.exit(0);
        break;
      default:
        throw new UsageError(`unknown argument ${a} (see --help)`);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// The machine

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

function cpuTicks(): { busy: number; steal: number; total: number } {
  const f = readText("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1, 9).map(Number);
  // user nice system idle iowait irq softirq steal
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  return {
    busy: user + nice + system + irq + softirq + steal,
    steal,
    total: user + nice + system + idle + iowait + irq + softirq + steal,
  };
}

/** Load average and CPU busy/steal % over `ms`. */
async function loadSample(ms: number): Promise<LoadSample> {
  const a = cpuTicks();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTicks();
  const d = Math.max(1, b.total - a.total);
  return {
    at: new Date().toISOString(),
    loadAvg1: Number(readText("/proc/loadavg").split(" ")[0]) || 0,
    busyPct: Math.round(((b.busy - a.busy) / d) * 1000) / 10,
    stealPct: Math.round(((b.steal - a.steal) / d) * 1000) / 10,
  };
}

const QUIET_BUSY_PCT = 25;
const QUIET_STEAL_PCT = 5;
/** Load average per core allowed before the run (after it, the run's own work is in the average). */
const QUIET_LOAD_PER_CORE = 0.5;
const isQuiet = (s: LoadSample) => s.busyPct <= QUIET_BUSY_PCT && s.stealPct <= QUIET_STEAL_PCT;

async function git(args: string[]): Promise<string> {
  try {
    const o = await new Deno.Command("git", { args: ["-C", ROOT, ...args], stdout: "piped", stderr: "null" })
      .output();
    return o.code === 0 ? new TextDecoder().decode(o.stdout).trim() : "";
  } catch {
    return "";
  }
}

function machine(): BenchRun["machine"] {
  const cpuinfo = readText("/proc/cpuinfo");
  const model = cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1] ??
    cpuinfo.match(/^(?:Model|Hardware|cpu model)\s*:\s*(.*)$/m)?.[1] ?? "unknown";
  const mem = readText("/proc/meminfo").match(/^MemTotal:\s*(\d+)/m)?.[1];
  return {
    cpuModel: model.trim(),
    cores: navigator.hardwareConcurrency || 1,
    kernel: Deno.osRelease(),
    memTotalMiB: mem ? Math.round(Number(mem) / 1024) : null,
    deno: Deno.version.deno,
  };
}

// ---------------------------------------------------------------------------------------------
// The harness

/** The shared harness: the flag, the environment, or shared/bench/harness.sh beside a parent folder. */
export function findHarness(flag?: string): { path: string | null; reason: string } {
  const exists = (p: string) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  };
  const given = flag ?? Deno.env.get("NETMANAGER_BENCH_HARNESS") ?? Deno.env.get("HARNESS");
  if (given) {
    return exists(given) ? { path: given, reason: "" } : {
      path: null,
      reason: `the harness given (--harness / NETMANAGER_BENCH_HARNESS) does not exist: ${given}`,
    };
  }
  let dir = ROOT;
  while (dir !== "/" && dir !== "") {
    dir = dir.replace(/\/[^/]*$/, "") || "/";
    const p = `${dir === "/" ? "" : dir}/shared/bench/harness.sh`;
    if (exists(p)) return { path: p, reason: "" };
  }
  return {
    path: null,
    reason: "the shared data-plane harness (shared/bench/harness.sh) was not found beside the checkout " +
      "or a parent folder: pass --harness PATH or set NETMANAGER_BENCH_HARNESS",
  };
}

// ---------------------------------------------------------------------------------------------
// The steps

interface StepDef {
  name: string;
  kind: StepResult["kind"];
  description: string;
  needsRoot: boolean;
  needsHarness?: boolean;
  /** Limit for each mode, in seconds. */
  limit: Record<Mode, number>;
  argv(o: Options, harness: string | null, outDir: string): string[];
}

const ts = (script: string, ...args: string[]) => [DENO, "run", "-A", `${ROOT}/scripts/${script}`, ...args];
const short = (o: Options) => o.mode !== "full";
/** The size flags a step script understands: smoke is quick and smaller still. */
const size = (o: Options) =>
  o.mode === "smoke" ? ["--quick", "--smoke"] : o.mode === "quick" ? ["--quick"] : [];

/** The benchmarks, in the order they run (cheap and independent ones first). */
export const STEPS: StepDef[] = [
  {
    name: "packet",
    kind: "micro",
    description: "packet parse + address rewrite (ns/packet)",
    needsRoot: false,
    limit: { full: 300, quick: 60, smoke: 60 },
    argv: (o) => ts("bench_packet.ts", ...(short(o) ? ["--iterations", "100000", "--runs", "1"] : [])),
  },
  {
    name: "table",
    kind: "micro",
    description: "translation and flow table lookups at 10 and 100k entries (ns/lookup)",
    needsRoot: false,
    limit: { full: 300, quick: 60, smoke: 60 },
    argv: (o) =>
      ts(
        "bench_table.ts",
        ...(short(o) ? ["--iterations", o.mode === "smoke" ? "5000" : "50000", "--runs", "1"] : []),
      ),
  },
  {
    name: "offload",
    kind: "micro",
    description: "TSO split / GRO coalesce of 64 KB super-packets (µs/op)",
    needsRoot: false,
    limit: { full: 300, quick: 60, smoke: 60 },
    argv: (o) => ts("bench_offload.ts", ...(short(o) ? ["--iterations", "200", "--runs", "1"] : [])),
  },
  {
    name: "udp",
    kind: "micro",
    description: "ffi/udp.ts batch / GSO / GRO between two namespaces",
    needsRoot: true,
    limit: { full: 120, quick: 60, smoke: 60 },
    argv: (o) => ts("bench_udp.ts", short(o) ? "1" : "3"),
  },
  {
    name: "netlink",
    kind: "micro",
    description: "per-instance network set-up through rtnetlink",
    needsRoot: true,
    limit: { full: 180, quick: 60, smoke: 60 },
    argv: (o) => ts("bench_netlink.ts", "--instances", short(o) ? "5" : "50"),
  },
  {
    name: "deploy",
    kind: "deploy",
    description: "instance deploy/undeploy latency through the unix-socket API",
    needsRoot: true,
    limit: { full: 300, quick: 120, smoke: 120 },
    argv: (o) => ts("bench_env.ts", ...(short(o) ? ["--quick"] : [])),
  },
  {
    name: "cluster",
    kind: "control",
    description: "control plane in a simulated 2-node cluster",
    needsRoot: true,
    limit: { full: 600, quick: 240, smoke: 240 },
    argv: (o) => ts("bench_cluster.ts", ...size(o)),
  },
  {
    name: "store",
    kind: "control",
    description: "control-plane state store: allocations through the HTTP API (latency, RSS growth)",
    needsRoot: false,
    limit: { full: 900, quick: 120, smoke: 120 },
    argv: (o) => ts("bench_store.ts", ...size(o)),
  },
  {
    name: "scale",
    kind: "control",
    description:
      "1,000 simulated nodes (MQTT) registering and querying: embedded vs etcd (3 members, 2 replicas)",
    needsRoot: true,
    limit: { full: 1200, quick: 600, smoke: 300 },
    argv: (o) =>
      ts(
        "bench_scale.ts",
        ...(o.mode === "smoke"
          ? ["--smoke", "--nodes", "10", "--seconds", "1"]
          : o.mode === "quick"
          ? ["--quick"]
          : []),
      ),
  },
  {
    name: "dns",
    kind: "control",
    description: "node DNS server (table hits) vs dnsmasq serving the same names, dnsperf",
    needsRoot: true,
    limit: { full: 300, quick: 120, smoke: 120 },
    argv: (o) => ts("bench_dns.ts", ...size(o)),
  },
  {
    name: "relay",
    kind: "dataplane",
    description:
      "relay vs direct between NAT'd nodes (iperf3 TCP, ping RTT), punch time and time to decide on a relay",
    needsRoot: true,
    limit: { full: 300, quick: 180, smoke: 180 },
    argv: (o) => ts("bench_relay.ts", ...size(o)),
  },
  {
    name: "aead",
    kind: "micro",
    description: "secure tunnel AEAD per datagram: node:crypto vs libcrypto by FFI, 1400 B and 64 KB",
    needsRoot: false,
    limit: { full: 120, quick: 60, smoke: 60 },
    argv: (o) =>
      ts(
        "bench_aead.ts",
        ...(o.mode === "smoke" ? ["--ms", "10", "--smoke"] : ["--ms", short(o) ? "200" : "1500"]),
      ),
  },
  {
    name: "overlay",
    kind: "dataplane",
    description:
      "overlay data plane (raw, FAST, secure) vs underlay, kernel VXLAN and wireguard-go (shared harness)",
    needsRoot: true,
    needsHarness: true,
    limit: { full: 7200, quick: 1400, smoke: 240 },
    argv: (o, harness, outDir) => [
      "bash",
      `${ROOT}/scripts/bench_overlay.sh`,
      "--harness",
      harness ?? "",
      ...(o.mode === "smoke" ? ["--smoke"] : o.mode === "quick" ? ["--quick"] : []),
      ...(o.reps ? ["--reps", String(o.reps)] : []),
      "--results",
      `${outDir}/overlay`,
    ],
  },
];

/** Steps that show what happens to a broken benchmark (`--inject`). */
function injected(o: Options): StepDef[] {
  const out: StepDef[] = [];
  if (o.inject.includes("fail")) {
    out.push({
      name: "injected-fail",
      kind: "injected",
      description: "a benchmark that exits 1",
      needsRoot: false,
      limit: { full: 30, quick: 30, smoke: 30 },
      argv: () => ["bash", "-c", "echo 'injected failure' >&2; exit 1"],
    });
  }
  if (o.inject.includes("hang")) {
    out.push({
      name: "injected-hang",
      kind: "injected",
      description: "a benchmark that never ends, leaving a namespace with a process in it",
      needsRoot: true,
      limit: { full: 3, quick: 3, smoke: 3 },
      // the process in the namespace has its own session, so only the prefix sweep can find it
      argv: () => [
        "bash",
        "-c",
        `ip netns add "\${${PREFIX_ENV}}hang" && setsid ip netns exec "\${${PREFIX_ENV}}hang" sleep 3600 & ` +
        `sleep 3600`,
      ],
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running one step, and cleaning up after it

/** The step running now: what SIGINT/SIGTERM to the runner must stop. */
let current: { pid: number; status: Promise<Deno.CommandStatus> } | undefined;

function killGroup(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(-pid, sig); // the step runs in its own session: its process group has its pid
  } catch { /* gone */ }
}

/** Stops the current step: SIGTERM to its group, SIGKILL after `graceMs`. */
async function stopCurrent(graceMs: number): Promise<void> {
  const c = current;
  if (!c) return;
  killGroup(c.pid, "SIGTERM");
  const t = setTimeout(() => killGroup(c.pid, "SIGKILL"), graceMs);
  await c.status;
  clearTimeout(t);
  killGroup(c.pid, "SIGKILL"); // members that outlived the leader
}

/**
 * Kills every process that inherited this run's prefix and deletes every namespace named with it
 * (killing what still runs inside). Returns what it removed.
 */
export async function sweep(prefix: string): Promise<{ processes: number[]; namespaces: string[] }> {
  const processes = killMarked(PREFIX_ENV, prefix);
  const namespaces: string[] = [];
  const list = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped", stderr: "null" })
    .output();
  for (const line of new TextDecoder().decode(list.stdout).split("\n")) {
    const ns = line.split(" ")[0];
    if (!ns.startsWith(prefix)) continue;
    const pids = await new Deno.Command("ip", {
      args: ["netns", "pids", ns],
      stdout: "piped",
      stderr: "null",
    })
      .output();
    for (const p of new TextDecoder().decode(pids.stdout).split(/\s+/).filter(Boolean)) {
      try {
        Deno.kill(Number(p), "SIGKILL");
        processes.push(Number(p));
      } catch { /* gone */ }
    }
    await new Deno.Command("ip", { args: ["netns", "del", ns], stdout: "null", stderr: "null" }).output();
    namespaces.push(ns);
  }
  return { processes, namespaces };
}

/** Runs a command to its end or for at most `ms`. */
async function runBounded(argv: string[], ms: number): Promise<void> {
  const c = new Deno.Command(argv[0], { args: argv.slice(1), stdout: "null", stderr: "null" }).spawn();
  const t = setTimeout(() => {
    try {
      c.kill("SIGKILL");
    } catch { /* exited */ }
  }, ms);
  await c.status;
  clearTimeout(t);
}

const HARNESS_NS = ["ob-h1", "ob-h2", "ob-w1", "ob-w2"];

async function existingNamespaces(): Promise<string[]> {
  const o = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(o.stdout).split("\n").map((l) => l.split(" ")[0]).filter(Boolean);
}

async function runStep(
  def: StepDef,
  o: Options,
  harness: string | null,
  outDir: string,
): Promise<StepResult> {
  const argv = def.argv(o, harness, outDir);
  const timeoutMs = def.limit[o.mode] * 1000 *
    (def.name === "overlay" && o.reps ? Math.max(1, o.reps / 3) : 1);
  const base: StepResult = {
    name: def.name,
    kind: def.kind,
    description: def.description,
    status: "skipped",
    command: argv,
    timeoutMs,
    startedAt: null,
    durationMs: null,
    exitCode: null,
    busyBeforePct: null,
    figures: [],
    log: null,
  };
  if (def.needsRoot && Deno.uid() !== 0) return { ...base, reason: "needs root" };
  if (def.needsHarness) {
    if (!harness) return { ...base, reason: findHarness(o.harness).reason };
    const busy = (await existingNamespaces()).filter((n) => HARNESS_NS.includes(n));
    if (busy.length) {
      return {
        ...base,
        status: "failed",
        reason: `namespaces ${busy.join(", ")} exist: another harness run is in progress (not touched)`,
      };
    }
  }
  const busyBeforePct = (await loadSample(o.mode === "full" ? 1000 : o.mode === "quick" ? 300 : 100)).busyPct;
  // no await from here to `current = …`: a signal either came before (nothing starts) or finds it
  if (interrupted) return { ...base, status: "not-run", reason: `runner got ${interrupted}` };
  const logPath = `${outDir}/${def.name}.log`;
  const log = Deno.openSync(logPath, { create: true, write: true, truncate: true });
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const child = new Deno.Command("setsid", {
    args: argv,
    cwd: ROOT,
    env: { [PREFIX_ENV]: o.prefix, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  current = { pid: child.pid, status: child.status };
  let timedOut = false;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    console.error(`bench: ${def.name}: no result within ${timeoutMs / 1000} s, stopping it`);
    killGroup(child.pid, "SIGTERM");
    killTimer = setTimeout(() => killGroup(child.pid, "SIGKILL"), 10000);
  }, timeoutMs);
  let tail = "";
  const dec = new TextDecoder();
  const pumpErr = (async () => {
    for await (const chunk of child.stderr) {
      for (let off = 0; off < chunk.length;) off += log.writeSync(chunk.subarray(off));
      tail = (tail + dec.decode(chunk, { stream: true })).slice(-2000);
    }
  })();
  const chunks: Uint8Array[] = [];
  const pumpOut = (async () => {
    for await (const chunk of child.stdout) chunks.push(chunk);
  })();
  const status = await child.status;
  clearTimeout(timer);
  clearTimeout(killTimer);
  killGroup(child.pid, "SIGKILL"); // anything of the step's group that is still around
  // what escaped the group (own sessions, namespaces) may hold the output pipes: remove it first
  const left = await sweep(o.prefix);
  // the pipes close when the last holder exits; a holder we cannot see must not hang us
  await Promise.race([Promise.all([pumpErr, pumpOut]), new Promise((r) => setTimeout(r, 5000))]);
  current = undefined;
  log.close();
  const durationMs = Math.round(performance.now() - t0);
  const stdout = dec.decode(concat(chunks));
  if (left.namespaces.length || left.processes.length) {
    console.error(
      `bench: ${def.name} left ${left.namespaces.length} namespaces and ${left.processes.length} processes: removed`,
    );
  }
  const done: StepResult = {
    ...base,
    startedAt,
    durationMs,
    exitCode: status.code,
    busyBeforePct,
    log: logPath,
  };
  if (interrupted) return { ...done, status: "interrupted", reason: `runner got ${interrupted}` };
  if (timedOut) return { ...done, status: "timeout", reason: `killed after ${timeoutMs / 1000} s` };
  if (status.code !== 0) {
    return { ...done, status: "failed", reason: `exit ${status.code}: ${lastLines(tail, 5)}` };
  }
  let output: unknown;
  try {
    output = JSON.parse(stdout);
  } catch {
    return { ...done, status: "failed", reason: `output is not JSON: ${stdout.slice(0, 200)}` };
  }
  const f = figuresOf(def.name, output);
  if (!f.ok) return { ...done, output, status: "failed", reason: `malformed output: ${f.error}` };
  return { ...done, output, figures: f.figures, status: "ok" };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) out.set(c, o), o += c.length;
  return out;
}

const lastLines = (s: string, n: number) => s.trim().split("\n").slice(-n).join(" | ");

// ---------------------------------------------------------------------------------------------
// Markdown

function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined) return "–";
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : x.toPrecision(2);
}

/** The markdown report of a run. */
export function markdown(r: BenchRun): string {
  const q = r.quiet;
  const sample = (s: LoadSample | null) =>
    s ? `load ${s.loadAvg1}, CPU busy ${s.busyPct} %, steal ${s.stealPct} %` : "not taken";
  const lines = [
    `# netmanager benchmarks — run ${r.run}`,
    "",
    `- date: ${r.startedAt} – ${r.finishedAt} (mode: ${r.mode}${r.interrupted ? ", INTERRUPTED" : ""})`,
    `- commit: ${r.commit}${r.dirty ? " (with uncommitted changes)" : ""}`,
    `- machine: ${r.machine.cpuModel}, ${r.machine.cores} cores, kernel ${r.machine.kernel}` +
    `${r.machine.memTotalMiB ? `, ${r.machine.memTotalMiB} MiB` : ""}, Deno ${r.machine.deno}`,
    `- quiet: ${q.quiet ? "yes" : "NO"} (${q.rule}); before: ${sample(q.before)}; after: ${sample(q.after)}`,
    `- steps: ${r.summary.ok} ok, ${r.summary.failed} failed, ${r.summary.skipped} skipped`,
    "",
  ];
  const ov = r.steps.find((s) => s.name === "overlay" && s.status === "ok");
  if (ov) lines.push(...overlayTable(ov.output), "");
  lines.push(
    "| benchmark | status | figure | value | range | ratio |",
    "| --------- | ------ | ------ | ----- | ----- | ----- |",
  );
  for (const s of r.steps) {
    if (s.status !== "ok") {
      lines.push(
        `| ${s.name} | ${s.status} | ${(s.reason ?? "").replaceAll("|", "/").slice(0, 160)} | | | |`,
      );
      continue;
    }
    for (const f of s.figures) {
      const range = f.min != null && f.max != null ? `${fmt(f.min)}–${fmt(f.max)}` : "";
      const ratio = f.ratio != null ? `${fmt(f.ratio)}× ${f.ratioTo ?? ""}` : "";
      lines.push(`| ${s.name} | ok | ${f.name} | ${fmt(f.value)} ${f.unit} | ${range} | ${ratio} |`);
    }
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// Main

let interrupted: Deno.Signal | undefined;

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseArgs(Deno.args);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`bench: ${e.message}`);
      return 2;
    }
    throw e;
  }
  const startedAt = new Date();
  const commit = (await git(["rev-parse", "--short", "HEAD"])) || "unknown";
  const dirty = (await git(["status", "--porcelain", "--untracked-files=no"])) !== "";
  const stamp = startedAt.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z").replace(/\d\dZ$/, "Z");
  const run = `${stamp}-${commit}`;
  const outDir = o.out ?? `${ROOT}/bench-results/${run}`;
  await Deno.mkdir(outDir, { recursive: true });
  const { path: harness } = findHarness(o.harness);

  const known = new Set(STEPS.map((s) => s.name));
  for (const n of [...(o.only ?? []), ...o.skip]) {
    if (!known.has(n)) {
      console.error(`bench: no benchmark named ${n} (known: ${[...known].join(", ")})`);
      return 2;
    }
  }
  const chosen = STEPS.filter((s) => (!o.only || o.only.includes(s.name)) && !o.skip.includes(s.name));
  const defs = [...injected(o), ...chosen];

  const onSignal = (sig: Deno.Signal) => () => {
    if (interrupted) return;
    interrupted = sig;
    console.error(`bench: ${sig}: stopping the running benchmark and cleaning up`);
    stopCurrent(10000);
  };
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);

  console.error(`bench: run ${run} (${o.mode}), prefix ${o.prefix}, results in ${outDir}`);
  // the smoke run (the test suite's) samples for 0.5 s: its numbers are not figures
  const quietMs = o.mode === "smoke" ? 500 : 2000;
  const before = await loadSample(quietMs);
  const steps: StepResult[] = [];
  for (const def of defs) {
    if (interrupted) {
      steps.push({
        name: def.name,
        kind: def.kind,
        description: def.description,
        status: "not-run",
        reason: `runner got ${interrupted}`,
        command: def.argv(o, harness, outDir),
        timeoutMs: def.limit[o.mode] * 1000,
        startedAt: null,
        durationMs: null,
        exitCode: null,
        busyBeforePct: null,
        figures: [],
        log: null,
      });
      continue;
    }
    console.error(`bench: ${def.name} …`);
    const r = await runStep(def, o, harness, outDir);
    if (def.needsHarness && r.startedAt !== null) {
      // the harness's own trap did not get to run (killed): its fixed-name namespaces are ours
      const left = (await existingNamespaces()).filter((n) => HARNESS_NS.includes(n));
      if (left.length) {
        console.error(`bench: ${def.name} left ${left.join(", ")}: removing them`);
        await runBounded(["bash", harness!, "--cleanup"], 60000);
      }
    }
    console.error(
      `bench: ${def.name}: ${r.status}${r.reason ? ` (${r.reason})` : ""}${
        r.durationMs != null ? ` in ${(r.durationMs / 1000).toFixed(1)} s` : ""
      }`,
    );
    steps.push(r);
  }
  const after = interrupted ? null : await loadSample(quietMs);
  const host = machine();
  const cores = host.cores;
  const count = (...st: StepStatus[]) => steps.filter((s) => st.includes(s.status)).length;
  const result: BenchRun = {
    schema: "netmanager-bench/1",
    run,
    mode: o.mode,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    commit,
    dirty,
    machine: host,
    quiet: {
      before,
      after,
      quiet: isQuiet(before) && before.loadAvg1 <= QUIET_LOAD_PER_CORE * cores &&
        (after === null || isQuiet(after)),
      rule:
        `CPU busy ≤ ${QUIET_BUSY_PCT} % and steal ≤ ${QUIET_STEAL_PCT} % over ${
          quietMs / 1000
        } s before and after, ` +
        `and load average ≤ ${QUIET_LOAD_PER_CORE} per core before`,
    },
    harness,
    interrupted: interrupted !== undefined,
    steps,
    summary: {
      ok: count("ok"),
      failed: count("failed", "timeout", "interrupted"),
      skipped: count("skipped", "not-run"),
    },
  };
  BenchRunSchema.parse(result); // our own output is well-formed, or we say so loudly
  await Deno.writeTextFile(`${outDir}/bench.json`, JSON.stringify(result, null, 2) + "\n");
  const md = markdown(result);
  await Deno.writeTextFile(`${outDir}/bench.md`, md);
  console.log(md);
  console.error(`bench: wrote ${outDir}/bench.json and bench.md`);
  for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  if (interrupted) return interrupted === "SIGINT" ? 130 : 143;
  return result.summary.failed > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
