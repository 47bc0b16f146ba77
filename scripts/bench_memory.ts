/**
 * Memory of a real daemon (standalone mode, its own network namespace): VmRSS and its parts from
 * /proc/<pid>/status, idle and with a static table of N entries. Prints JSON. As root.
 *
 *   deno run -A scripts/bench_memory.ts [--entries 10000] [--settle 5] [--workers N] [--packaged]
 *     [--extra "--flag …"]
 *
 * `--workers`: DataPlaneWorkers (default: one per CPU). `--packaged`: the daemon runs as the release's
 * launcher runs it: the main program and the Worker minified and split into chunks (built into a
 * temporary directory as scripts/package.sh does). `VmRSS` is the figure of issue 9;
 * `exeRssMB` is the part that is the deno binary's code pages.
 */
import { TestNode } from "../tests/helpers/node.ts";
import { bigTable } from "../tests/helpers/big_table.ts";
import { bundleWorker } from "./worker_bundle.ts";

const args = Deno.args;
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const entries = Number(opt("--entries", "10000"));
const settle = Number(opt("--settle", "5"));
const extra = opt("--extra", "").split(" ").filter((s) => s);
const workers = opt("--workers", "");
if (workers) Deno.env.set("DataPlaneWorkers", workers); // (inherited by the daemon)
let bundleDir: string | undefined;
if (args.includes("--packaged")) {
  bundleDir = await Deno.makeTempDir({ prefix: "nmmem-bundle-" });
  const root = new URL("../", import.meta.url).pathname;
  const run = async (...a: string[]) => {
    const r = await new Deno.Command(Deno.execPath(), { args: a }).output();
    if (r.code !== 0) throw new Error(`deno ${a.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  };
  await run("bundle", "--quiet", "--minify", "--code-splitting", "--outdir", bundleDir, `${root}main.ts`);
  await bundleWorker(Deno.execPath(), root, [bundleDir]);
  await run("cache", "--quiet", `${bundleDir}/main.js`); // as the launcher does
  Deno.env.set("NETMANAGER_TEST_MAIN", `${bundleDir}/main.js`);
}

/** VmRSS, RssAnon, RssFile (kB) of a process. */
async function rss(pid: number): Promise<Record<string, number>> {
  const text = await Deno.readTextFile(`/proc/${pid}/status`);
  const out: Record<string, number> = {};
  for (const k of ["VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"]) {
    const m = text.match(new RegExp(`^${k}:\\s+(\\d+)`, "m"));
    if (m) out[k] = Number(m[1]);
  }
  // The deno binary's resident code pages (all its mappings).
  const exe = await Deno.readLink(`/proc/${pid}/exe`);
  let kb = 0;
  let ours = false;
  for (const line of (await Deno.readTextFile(`/proc/${pid}/smaps`)).split("\n")) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) ours = head[1] === exe;
    else if (ours && line.startsWith("Rss:")) kb += Number(/(\d+)/.exec(line)![1]);
  }
  out.exeRssMB = +(kb / 1024).toFixed(1);
  return out;
}

async function measure(table: number): Promise<Record<string, number>> {
  const dir = await Deno.makeTempDir({ prefix: "nmmem-" });
  const file = `${dir}/table.json`;
  await Deno.writeTextFile(file, JSON.stringify(bigTable(table)));
  const node = await TestNode.start("10.18.0.64/26", ["--static-table", file, ...extra]);
  try {
    // Standalone mode starts the data plane (the Worker, the table copy) on /register.
    const reg = await node.register();
    if (reg.status !== 200) throw new Error(`register: ${reg.status}`);
    await new Promise((r) => setTimeout(r, settle * 1000));
    const st = (await node.api.getJson("/status")) as {
      memory: { heapUsed: number; heapTotal: number; external: number };
      dataPlane: { heap?: { used: number; total: number; external: number } };
    };
    const mb = (n: number | undefined) => n === undefined ? -1 : +(n / 1048576).toFixed(1);
    return {
      entries: table,
      ...(await rss(node.proc!.pid)),
      mainHeapUsedMB: mb(st.memory.heapUsed),
      mainHeapTotalMB: mb(st.memory.heapTotal),
      mainExternalMB: mb(st.memory.external),
      workerHeapUsedMB: mb(st.dataPlane.heap?.used),
      workerHeapTotalMB: mb(st.dataPlane.heap?.total),
      workerExternalMB: mb(st.dataPlane.heap?.external),
    };
  } finally {
    await node.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

const idle = await measure(0).catch(async (e) => {
  if (bundleDir) await Deno.remove(bundleDir, { recursive: true });
  throw e;
});
const full = entries > 0 ? await measure(entries) : undefined;
if (bundleDir) await Deno.remove(bundleDir, { recursive: true });
console.log(JSON.stringify({
  workers: workers || "default",
  packaged: bundleDir !== undefined,
  idle,
  full,
  deltaMB: full ? +((full.VmRSS - idle.VmRSS) / 1024).toFixed(1) : undefined,
  bytesPerEntry: full ? Math.round((full.VmRSS - idle.VmRSS) * 1024 / entries) : undefined,
}));
