/**
 * Worker for tests/unit/shared_table_test.ts: reads the shared table (SharedTableView) as fast as it
 * can while the main isolate rewrites it, and checks every answer against the encoding of
 * {@link hammerEntries}: all candidates of a ServiceIP are of one job and one version, and each row's
 * namespace IPs, Instance IPs, node and job name belong together. With `check: false` it ignores the
 * seqlock (no retry), to show what unguarded reads would see.
 */
import { SharedTableView } from "../../src/table/shared_view.ts";
import { decodeNsip4, hammerJob, hammerNode, hammerRR4 } from "./hammer_table.ts";

// deno-lint-ignore no-explicit-any
const scope = self as any;
let view: SharedTableView | undefined;
let stop = false;

scope.onmessage = (ev: MessageEvent) => {
  const m = ev.data;
  if (m.type === "layout") {
    if (view) view.attach(m.layout);
    else view = new SharedTableView(m.layout);
  } else if (m.type === "stop") stop = true;
  else if (m.type === "start") run(m.jobs, m.check);
};

async function run(jobs: number, check: boolean): Promise<void> {
  scope.postMessage({ type: "started" });
  const rows: number[] = [];
  const a6 = new Uint8Array(16);
  const i6 = new Uint8Array(16);
  let reads = 0, retries = 0, bad = 0, hits = 0;
  const problems: string[] = [];
  const fail = (why: string) => {
    bad++;
    if (problems.length < 5) problems.push(why);
  };
  let layouts = 0;
  let lastVersion = -1;
  while (!stop) {
    const t = view!;
    if (t.version !== lastVersion) {
      layouts++;
      lastVersion = t.version;
    }
    const until = performance.now() + 5;
    while (performance.now() < until) {
      const j = (Math.random() * jobs) | 0;
      let v = 0, n = 0, ok = "";
      for (;;) {
        v = t.readBegin();
        ok = "";
        n = 0;
        const g = t.groupOf4(hammerRR4(j));
        if (g >= 0) {
          n = t.groupRows(g, rows);
          let version = -1;
          for (let i = 0; i < n && ok === ""; i++) {
            const r = rows[i];
            const ns = decodeNsip4(t.rowNsip4(r));
            if (!ns || ns.job !== j) ok = `row ${r}: nsip4 of job ${ns?.job} in group of job ${j}`;
            else if (version >= 0 && ns.version !== version) ok = `group of job ${j} mixes versions`;
            else {
              version = ns.version;
              if (t.rowInstanceIp4(r) !== (t.rowNsip4(r) ^ 0x00010000)) ok = `row ${r}: instance IP`;
              else if (t.rowNode(r) !== hammerNode(j, ns.version)) ok = `row ${r}: node ${t.rowNode(r)}`;
              else if (t.rowJob(r) !== hammerJob(j)) ok = `row ${r}: job ${t.rowJob(r)}`;
              else if (t.rowInstance(r) !== ns.instance) ok = `row ${r}: instance number`;
              else if (
                !t.rowNsip6(r, a6) || a6[15] !== (t.rowNsip4(r) & 255) ||
                a6[14] !== ((t.rowNsip4(r) >>> 8) & 255)
              ) {
                ok = `row ${r}: nsip6`;
              } else if (!t.rowInstanceIp6(r, i6) || i6[15] !== a6[15] || i6[0] !== 0xfd) {
                ok = `row ${r}: instance IPv6`;
              } else if (t.rowOf4(t.rowNsip4(r)) !== r) ok = `row ${r}: nsip4 index`;
            }
          }
          if (ok === "" && n === 0) ok = `job ${j}: empty group`;
        }
        reads++;
        if (!check || t.readValid(v)) break;
        retries++;
      }
      if (n > 0) hits++;
      if (ok !== "") fail(ok);
    }
    await new Promise((r) => setTimeout(r, 0)); // take layout and stop messages
  }
  scope.postMessage({ type: "report", reads, retries, bad, hits, layouts, problems });
}
