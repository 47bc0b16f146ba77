/**
 * Micro-benchmark of the packet-path lookups: translation table (ServiceIP → group and namespace IP →
 * row, v4 and v6, from packet bytes; the keys in the output keep their historical names) and flow table (forward and reply lookups), each at a small and a
 * large size, to show the cost stays flat. Prints one JSON object with ns per lookup.
 *
 * Usage: `deno run scripts/bench_table.ts [--iterations N] [--runs R]`
 *
 * Lookups walk a pre-built array of keys that all hit; the number of hits is checked so the work
 * cannot be optimised away.
 */
import { parseIPv4, parseIPv6 } from "../src/addr/mod.ts";
import { type TableEntry, TranslationTable } from "../src/table/mod.ts";
import { FlowTable, PROTO_TCP } from "../src/proxy/flows.ts";

function argNumber(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  if (i < 0 || i + 1 >= Deno.args.length) return fallback;
  const n = Number(Deno.args[i + 1]);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

const ITER = argNumber("--iterations", 2_000_000);
const RUNS = argNumber("--runs", 5);
const KEYS = 4096;

/** Median ns per call of `body(n)`, which must return the number of hits (== n). */
function measure(body: (n: number) => number): number {
  body(200_000);
  const per: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    const hits = body(ITER);
    const t1 = performance.now();
    if (hits !== ITER) throw new Error(`expected ${ITER} hits, got ${hits}`);
    per.push(((t1 - t0) * 1e6) / ITER);
  }
  per.sort((a, b) => a - b);
  return Math.round(per[per.length >> 1] * 10) / 10;
}

const v6 = (base: string, i: number): Uint8Array => {
  const a = parseIPv6(base);
  a[12] = i >>> 24;
  a[13] = (i >>> 16) & 255;
  a[14] = (i >>> 8) & 255;
  a[15] = i & 255;
  return a;
};

function buildTable(n: number): TranslationTable {
  const t = new TranslationTable();
  const perJob = Math.min(n, 10);
  for (let j = 0; j * perJob < n; j++) {
    const job = `app.ns.s${j}.ns`;
    const list: TableEntry[] = [];
    for (let i = 0; i < perJob; i++) {
      const k = j * perJob + i;
      list.push({
        job,
        instance: i,
        nodeIp: `131.1.${(k >>> 8) & 255}.${k & 255}`,
        nodePort: 50103,
        nsip4: parseIPv4("10.18.0.0") + k,
        nsip6: v6("fc00::", k),
        serviceIps: [
          { kind: "RoundRobin", v4: parseIPv4("10.30.0.0") + j, v6: v6("fdff:2000::", j) },
          { kind: "Instance", v4: parseIPv4("10.40.0.0") + k, v6: v6("fdff::", k) },
        ],
      });
    }
    t.replaceJob(job, list);
  }
  return t;
}

function tableCases(n: number): Record<string, number> {
  const t = buildTable(n);
  const jobs = Math.ceil(n / Math.min(n, 10));
  // A packet arena: KEYS IPv6 headers (src = nsip6, dst = instance ServiceIP v6).
  const pkts = new Uint8Array(KEYS * 64);
  const svc4 = new Uint32Array(KEYS);
  const ns4 = new Uint32Array(KEYS);
  for (let i = 0; i < KEYS; i++) {
    const k = (i * 7919) % n;
    pkts.set(v6("fc00::", k), i * 64 + 8);
    pkts.set(v6("fdff::", k), i * 64 + 24);
    svc4[i] = parseIPv4("10.30.0.0") + (i % jobs);
    ns4[i] = parseIPv4("10.18.0.0") + k;
  }
  const m = KEYS - 1;
  return {
    service4: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (t.groupOf4(svc4[i & m]) >= 0) h++;
      return h;
    }),
    byNsip4: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (t.rowOf4(ns4[i & m]) >= 0) h++;
      return h;
    }),
    service6: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (t.groupOf6(pkts, (i & m) * 64 + 24) >= 0) h++;
      return h;
    }),
    byNsip6: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (t.rowOf6(pkts, (i & m) * 64 + 8) >= 0) h++;
      return h;
    }),
  };
}

function flowCases(n: number): Record<string, number> {
  const f = new FlowTable({ maxFlows: 2 * n });
  const src = new Uint32Array(KEYS);
  const sport = new Uint16Array(KEYS);
  const pkts = new Uint8Array(KEYS * 64);
  for (let k = 0; k < n; k++) {
    const s = parseIPv4("10.18.0.0") + (k >>> 10);
    const p = 1024 + (k & 1023);
    f.add4({
      proto: PROTO_TCP,
      src: s,
      sport: p,
      dst: parseIPv4("10.30.0.1"),
      dport: 80,
      chosen: parseIPv4("10.18.1.2"),
      senderIp: parseIPv4("10.30.1.2"),
      replySrc: parseIPv4("10.30.1.3"),
      node: "131.1.0.2:50103",
      target: parseIPv4("10.18.1.2"),
      sender: s,
    }, 0);
    const buf = new Uint8Array(40);
    buf.set(v6("fc00::", k >>> 10), 8);
    buf.set(parseIPv6("fdff:2000::1"), 24);
    f.add6({
      proto: PROTO_TCP,
      buf,
      srcOff: 8,
      sport: p,
      dstOff: 24,
      dport: 443,
      chosen: parseIPv6("fc00::1:2"),
      senderIp: parseIPv6("fdff::2"),
      replySrc: parseIPv6("fdff::3"),
      node: "131.1.0.2:50103",
      target: 1,
      sender: 2,
    }, 0);
  }
  for (let i = 0; i < KEYS; i++) {
    const k = (i * 7919) % n;
    src[i] = parseIPv4("10.18.0.0") + (k >>> 10);
    sport[i] = 1024 + (k & 1023);
    pkts.set(v6("fc00::", k >>> 10), i * 64 + 8);
    pkts.set(parseIPv6("fdff:2000::1"), i * 64 + 24);
  }
  const m = KEYS - 1;
  const dst = parseIPv4("10.30.0.1");
  const rsrc = parseIPv4("10.30.1.3");
  return {
    find4: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (f.find4(PROTO_TCP, src[i & m], sport[i & m], dst, 80) >= 0) h++;
      return h;
    }),
    findReply4: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) if (f.findReply4(PROTO_TCP, rsrc, 80, src[i & m], sport[i & m]) >= 0) h++;
      return h;
    }),
    find6: measure((it) => {
      let h = 0;
      for (let i = 0; i < it; i++) {
        if (f.find6(PROTO_TCP, pkts, (i & m) * 64 + 8, sport[i & m], (i & m) * 64 + 24, 443) >= 0) h++;
      }
      return h;
    }),
    touch: measure((it) => {
      for (let i = 0; i < it; i++) f.touch(i % n, i, 1400);
      return it;
    }),
  };
}

const out = {
  bench: "table",
  iterations: ITER,
  runs: RUNS,
  unit: "ns per lookup (median of runs)",
  deno: Deno.version.deno,
  table: { "10": tableCases(10), "100000": tableCases(100_000) },
  flows: { "10": flowCases(10), "100000": flowCases(100_000) },
};
console.log(JSON.stringify(out, null, 2));
