/**
 * The benchmark runner (scripts/bench.ts) as a user runs it: the smoke variant of every benchmark
 * once (it must finish and produce a well-formed report with finite numbers — never a timing), a
 * failing and a hanging benchmark recorded as such while the rest goes on, SIGINT to the runner and
 * SIGTERM to a benchmark on its own mid-run (nothing of the run may remain: no namespace with its
 * prefix, no process carrying it), the harness missing.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { BenchRun } from "../../scripts/bench_schema.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;

const prefix = (tag: string) => `nbt${tag}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;

function spawnRunner(args: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/bench.ts`, ...args],
    cwd: ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Waits for the child's exit at most `ms` (then kills it and fails). */
async function finish(child: Deno.ChildProcess, ms: number): Promise<{ code: number; stderr: string }> {
  const t = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, ms);
  const out = await child.output();
  clearTimeout(t);
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.signal === null, `killed by ${out.signal} (our ${ms} ms limit is SIGKILL):\n${stderr}`);
  return { code: out.code, stderr };
}

async function namespacesWith(p: string): Promise<string[]> {
  const o = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output();
  return new TextDecoder().decode(o.stdout).split("\n").map((l) => l.split(" ")[0]).filter((n) =>
    n.startsWith(p)
  );
}

/** Live processes that inherited the run's prefix (everything a run starts does). */
function processesWith(p: string): number[] {
  const token = `NETMANAGER_BENCH_PREFIX=${p}\0`;
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const env = new TextDecoder().decode(Deno.readFileSync(`/proc/${e.name}/environ`));
      if (`\0${env}`.includes(`\0${token}`)) out.push(Number(e.name));
    } catch { /* gone */ }
  }
  return out;
}

async function assertNothingLeft(p: string) {
  assertEquals(await namespacesWith(p), [], "namespaces left behind");
  const left = processesWith(p).map((pid) => {
    try {
      return `${pid}: ${Deno.readTextFileSync(`/proc/${pid}/cmdline`).replaceAll("\0", " ")}`;
    } catch {
      return `${pid}: (exited)`;
    }
  });
  assertEquals(left, [], "processes left behind");
}

/** The simulated cluster is up: underlay, control plane and both nodes, with their daemons. */
async function clusterRunning(p: string): Promise<boolean> {
  const ns = await namespacesWith(p);
  return ns.some((n) => n.endsWith("n2")) && processesWith(p).length >= 5;
}

async function readRun(dir: string): Promise<BenchRun> {
  const parsed = BenchRun.safeParse(JSON.parse(await Deno.readTextFile(`${dir}/bench.json`)));
  assert(parsed.success, `bench.json does not match the schema: ${!parsed.success && parsed.error.message}`);
  return parsed.data;
}

Deno.test({
  name: "bench: --smoke runs every benchmark once; a failing and a hanging one are recorded, nothing left",
  ...opts,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nm-bench-test-" });
    const p = prefix("s");
    try {
      const child = spawnRunner(["--smoke", "--inject", "fail,hang", "--out", dir, "--prefix", p]);
      const { code, stderr } = await finish(child, 600000);
      assertEquals(code, 1, `the injected failures make the run fail:\n${stderr}`);
      const r = await readRun(dir);
      assertEquals(r.mode, "smoke");
      assertEquals(r.interrupted, false);
      assert(r.machine.cores > 0 && r.machine.kernel.length > 0);
      assert(r.quiet.after !== null);
      const by = new Map(r.steps.map((s) => [s.name, s]));
      assertEquals(by.get("injected-fail")?.status, "failed");
      assertMatch(by.get("injected-fail")?.reason ?? "", /injected failure/);
      assertEquals(by.get("injected-hang")?.status, "timeout");
      for (
        const name of [
          "packet",
          "table",
          "offload",
          "udp",
          "netlink",
          "deploy",
          "cluster",
          "store",
          "scale",
          "dns",
          "overlay",
        ]
      ) {
        const s = by.get(name);
        assert(s, `step ${name} missing`);
        if (name === "overlay" && r.harness === null) {
          assertEquals(s.status, "skipped"); // a checkout without shared/ beside it
          continue;
        }
        assertEquals(s.status, "ok", `${name}: ${s.reason}\n${stderr}`);
        assert(s.figures.length > 0, `${name} has no figures`);
        for (const f of s.figures) {
          assert(typeof f.value === "number" && Number.isFinite(f.value), `${name} ${f.name}: ${f.value}`);
        }
      }
      if (r.harness !== null) {
        // the data-plane figures carry their ratio to kernel VXLAN and a range
        const fast = by.get("overlay")!.figures.find((f) => f.name === "nm-fast TCP 1 stream");
        assert(fast && typeof fast.ratio === "number" && fast.min != null && fast.max != null);
      }
      const md = await Deno.readTextFile(`${dir}/bench.md`);
      assertMatch(md, new RegExp(`run ${r.run}`));
      assertMatch(md, /cores, kernel /);
      assertMatch(md, /\| injected-hang \| timeout \|/);
      await assertNothingLeft(p);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "bench: SIGINT mid-run stops the benchmark, removes its namespaces and processes, still reports",
  ...opts,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nm-bench-test-" });
    const p = prefix("i");
    try {
      const child = spawnRunner(["--smoke", "--only", "cluster,overlay", "--out", dir, "--prefix", p]);
      // mid-run: the simulated cluster's namespaces exist and its daemons run
      const deadline = Date.now() + 90000;
      while (!(await clusterRunning(p))) {
        assert(Date.now() < deadline, "the cluster benchmark never started");
        await new Promise((r) => setTimeout(r, 200));
      }
      child.kill("SIGINT");
      const { code, stderr } = await finish(child, 60000);
      assertEquals(code, 130, stderr);
      const r = await readRun(dir);
      assertEquals(r.interrupted, true);
      const by = new Map(r.steps.map((s) => [s.name, s]));
      assertEquals(by.get("cluster")?.status, "interrupted");
      assertEquals(by.get("overlay")?.status, "not-run");
      await assertNothingLeft(p);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "bench: SIGTERM to a benchmark run on its own (no runner): it cleans up after itself",
  ...opts,
  async fn() {
    const p = prefix("c");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}scripts/bench_cluster.ts`, "--quick"],
      env: { NETMANAGER_BENCH_PREFIX: p },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const deadline = Date.now() + 90000;
    while (!(await clusterRunning(p))) {
      assert(Date.now() < deadline, "the cluster benchmark never started");
      await new Promise((r) => setTimeout(r, 200));
    }
    child.kill("SIGTERM"); // only the script: its children get nothing, it must stop them
    const { code } = await finish(child, 60000);
    assertEquals(code, 143);
    await assertNothingLeft(p);
  },
});

Deno.test({
  name: "bench: without the harness the data-plane step is skipped with the way to give it, the rest runs",
  ...opts,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nm-bench-test-" });
    try {
      const child = spawnRunner(
        ["--smoke", "--only", "overlay,packet", "--out", dir, "--prefix", prefix("h")],
        { NETMANAGER_BENCH_HARNESS: "/nonexistent/harness.sh" },
      );
      const { code, stderr } = await finish(child, 120000);
      assertEquals(code, 0, stderr);
      const r = await readRun(dir);
      const by = new Map(r.steps.map((s) => [s.name, s]));
      assertEquals(by.get("overlay")?.status, "skipped");
      assertMatch(by.get("overlay")?.reason ?? "", /NETMANAGER_BENCH_HARNESS.*\/nonexistent\/harness\.sh/);
      assertEquals(by.get("packet")?.status, "ok");
      // the script on its own says the same
      const o = await new Deno.Command("bash", {
        args: [`${ROOT}scripts/bench_overlay.sh`, "--harness", "/nonexistent/harness.sh"],
        stdout: "null",
        stderr: "piped",
      }).output();
      assertEquals(o.code, 3);
      assertMatch(new TextDecoder().decode(o.stderr), /harness.*not found.*--harness PATH/);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
