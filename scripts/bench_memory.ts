/**
 * Memory of a real daemon (standalone mode, its own network namespace): VmRSS and its parts from
 * /proc/<pid>/status, idle and with a static table of N entries. Prints JSON. As root.
 *
 *   deno run -A scripts/bench_memory.ts [--entries 10000] [--settle 5] [--extra "--flag …"]
 */
import { TestNode } from "../tests/helpers/node.ts";
import { bigTable } from "../tests/helpers/big_table.ts";

const args = Deno.args;
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const entries = Number(opt("--entries", "10000"));
const settle = Number(opt("--settle", "5"));
const extra = opt("--extra", "").split(" ").filter((s) => s);

/** VmRSS, RssAnon, RssFile (kB) of a process. */
async function rss(pid: number): Promise<Record<string, number>> {
  const text = await Deno.readTextFile(`/proc/${pid}/status`);
  const out: Record<string, number> = {};
  for (const k of ["VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"]) {
    const m = text.match(new RegExp(`^${k}:\\s+(\\d+)`, "m"));
    if (m) out[k] = Number(m[1]);
  }
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

const idle = await measure(0);
const full = entries > 0 ? await measure(entries) : undefined;
console.log(JSON.stringify({
  idle,
  full,
  deltaMB: full ? +((full.VmRSS - idle.VmRSS) / 1024).toFixed(1) : undefined,
  bytesPerEntry: full ? Math.round((full.VmRSS - idle.VmRSS) * 1024 / entries) : undefined,
}));
