/**
 * The benchmark report's pure parts: a benchmark's output is checked before it is charted (a
 * malformed one is an error, not a row of nonsense), the overlay figures carry range and ratio,
 * and the markdown names the run, machine and quietness.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { figuresOf } from "../../scripts/bench_figures.ts";
import { markdown } from "../../scripts/bench.ts";
import { BenchRun } from "../../scripts/bench_schema.ts";

const stat = (median: number, min: number, max: number) => ({ median, min, max, n: 3 });
const overlayOutput = {
  paths: {
    "nm-fast": {
      tcp1_gbit: stat(28.6, 23, 33.1),
      tcp4_gbit: stat(29.1, 28, 30),
      rr_udp_avg_us: stat(22.7, 22.7, 29),
      udp_lossfree_kpps: stat(363, 329, 367),
    },
    vxlan: {
      tcp1_gbit: stat(38.2, 37.3, 38.4),
      tcp4_gbit: stat(41.6, 41, 42),
      rr_udp_avg_us: stat(16.2, 14.5, 16.8),
      udp_lossfree_kpps: stat(216, 213, 217),
    },
  },
  ratiosToVxlan: { "nm-fast": { tcp1: 0.75, tcp4: 0.7, rr_udp_latency: 1.4, udp_lossfree_rate: 1.68 } },
  harnessRun: { params: "reps=3" },
};

Deno.test("bench figures: overlay medians keep their range and ratio to kernel VXLAN, kernel paths first", () => {
  const f = figuresOf("overlay", overlayOutput);
  assert(f.ok);
  assertEquals(f.figures[0].name, "vxlan TCP 1 stream");
  const fast = f.figures.find((x) => x.name === "nm-fast TCP 1 stream")!;
  assertEquals([fast.value, fast.min, fast.max, fast.ratio, fast.ratioTo], [
    28.6,
    23,
    33.1,
    0.75,
    "kernel VXLAN",
  ]);
  assert(!f.figures.some((x) => x.name.includes("handshake")), "no handshake row without the secure slot");
  const hs = figuresOf("overlay", { ...overlayOutput, secureHandshakeMs: stat(1.8, 1.2, 3.4) });
  assert(hs.ok);
  const row = hs.figures.find((x) => x.name === "nm-secure cold handshake: both daemons just started (LAN)")!;
  assertEquals([row.value, row.unit, row.min, row.max], [1.8, "ms", 1.2, 3.4]);
  // Cold start and running peers apart: each row only when its field is there.
  const both = figuresOf("overlay", {
    ...overlayOutput,
    secureHandshakeMs: stat(30, 4, 90),
    secureHandshakeAttemptMs: stat(31, 4, 300),
    secureRekeyHandshakeMs: stat(3.1, 2.5, 6),
    secureRunningHandshakeMs: stat(2.4, 1.9, 4.8),
    secureRunningResponderMs: stat(2.1, 1.5, 4),
    secureRunningLoadavg1: stat(3.5, 3.4, 3.6),
  });
  assert(both.ok);
  const names = both.figures.filter((x) => x.unit === "ms" && x.name.startsWith("nm-secure")).map((x) => [
    x.name,
    x.value,
  ]);
  assertEquals(names, [
    [
      "nm-secure handshake between running nodes, initiator: INIT sent → keys (rekey API, LAN, load 3.5)",
      2.4,
    ],
    ["nm-secure handshake between running nodes, responder: INIT received → keys (rekey API, LAN)", 2.1],
    ["nm-secure scheduled rekeys during the traffic (LAN)", 3.1],
    ["nm-secure cold handshake: both daemons just started (LAN)", 30],
    ["nm-secure cold first session from first INIT: both daemons just started (LAN)", 31],
  ]);
});

Deno.test("bench figures: malformed or missing numbers are an error naming the field", () => {
  const bad = figuresOf("deploy", { instances: 5, deployMs: { p50: "fast" } });
  assert(!bad.ok);
  assertMatch(bad.error, /deployMs/);
  const empty = figuresOf("cluster", {
    deployToReachableMs: { samples: [], median: 1 },
  });
  assert(!empty.ok);
  const nan = figuresOf("netlink", { instances: 5, p50_ms: NaN, p99_ms: 1, min_ms: 1, max_ms: 1 });
  assert(!nan.ok, "NaN is not a figure");
});

Deno.test("bench report: the markdown names the run, commit, machine and whether it was quiet", () => {
  const f = figuresOf("overlay", overlayOutput);
  assert(f.ok);
  const sample = { at: "2026-12-05T20:00:00Z", loadAvg1: 0.1, busyPct: 3, stealPct: 0 };
  const run: BenchRun = {
    schema: "netmanager-bench/1",
    run: "20261205T2000Z-abc1234",
    mode: "full",
    startedAt: "2026-12-05T20:00:00Z",
    finishedAt: "2026-12-05T21:00:00Z",
    commit: "abc1234",
    dirty: false,
    machine: { cpuModel: "Test CPU", cores: 2, kernel: "6.1.0", memTotalMiB: 1024, deno: "2.9.6" },
    quiet: { before: sample, after: { ...sample, busyPct: 80 }, quiet: false, rule: "busy ≤ 25 %" },
    harness: "/x/harness.sh",
    interrupted: false,
    steps: [{
      name: "overlay",
      kind: "dataplane",
      description: "",
      status: "ok",
      command: [],
      timeoutMs: 1,
      startedAt: null,
      durationMs: 1,
      exitCode: 0,
      busyBeforePct: 3,
      figures: f.figures,
      output: overlayOutput,
      log: null,
    }, {
      name: "cluster",
      kind: "control",
      description: "",
      status: "timeout",
      reason: "killed after 600 s",
      command: [],
      timeoutMs: 1,
      startedAt: null,
      durationMs: 1,
      exitCode: null,
      busyBeforePct: null,
      figures: [],
      log: null,
    }],
    summary: { ok: 1, failed: 1, skipped: 0 },
  };
  assert(BenchRun.safeParse(run).success);
  const md = markdown(run);
  assertMatch(md, /run 20261205T2000Z-abc1234/);
  assertMatch(md, /Test CPU, 2 cores, kernel 6\.1\.0/);
  assertMatch(md, /quiet: NO/);
  assertMatch(md, /\| netmanager, RR ServiceIP, FAST mode \| 28\.6 Gbit\/s \(23\.0–33\.1\) — 0\.75× \|/);
  assertMatch(md, /\| cluster \| timeout \| killed after 600 s \|/);
});

Deno.test("bench figures: the machine CPU per Gbit/s column (TCP 1) carries its ratio, and old outputs have no such row", () => {
  const withCpu = {
    ...overlayOutput,
    paths: {
      ...overlayOutput.paths,
      vxlan: { ...overlayOutput.paths.vxlan, machine_cpu_tcp1_pct_core_per_gbit: stat(9.5, 9, 10) },
      "nm-fast": { ...overlayOutput.paths["nm-fast"], machine_cpu_tcp1_pct_core_per_gbit: stat(19, 18, 20) },
    },
    ratiosToVxlan: { "nm-fast": { ...overlayOutput.ratiosToVxlan["nm-fast"], machine_cpu_per_gbit: 2 } },
  };
  const f = figuresOf("overlay", withCpu);
  assert(f.ok);
  const row = f.figures.find((x) => x.name === "nm-fast machine CPU per Gbit/s (TCP 1)")!;
  assertEquals([row.value, row.unit, row.min, row.max, row.ratio], [19, "%core", 18, 20, 2]);
  const old = figuresOf("overlay", overlayOutput);
  assert(old.ok);
  assert(!old.figures.some((x) => x.name.includes("machine CPU")));
});
