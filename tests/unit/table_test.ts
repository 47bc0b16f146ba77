import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { equalIPv6, formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import {
  instanceIp4Of,
  instanceIp6Of,
  ipTypeToKind,
  isJobName,
  kindToIpType,
  nodeKey,
  nodeKeyOf,
  type ServiceGroup,
  type TableDelta,
  type TableEntry,
  TableError,
  TranslationTable,
  U32Map,
  v6Key,
  V6Map,
} from "../../src/table/mod.ts";
import { seededRandom } from "../../src/proxy/balance.ts";

const JOB = "app.ns.web.ns";
const RR4 = parseIPv4("10.30.0.1");
const RR6 = parseIPv6("fdff:2000::1");

function entry(
  n: number,
  opts: Partial<{ job: string; node: string; port: number; rr4: number; rr6: Uint8Array; v6: boolean }> = {},
): TableEntry {
  const job = opts.job ?? JOB;
  return {
    job,
    instance: n,
    nodeIp: opts.node ?? "131.1.0.1",
    nodePort: opts.port ?? 50103,
    nsip4: parseIPv4(`10.18.0.${66 + n}`),
    ...(opts.v6 === false ? {} : { nsip6: parseIPv6(`fc00::${(2 + n).toString(16)}`) }),
    serviceIps: [
      { kind: "RoundRobin", v4: opts.rr4 ?? RR4, v6: opts.rr6 ?? RR6 },
      { kind: "Instance", v4: parseIPv4(`10.30.1.${2 + n}`), v6: parseIPv6(`fdff::${(2 + n).toString(16)}`) },
    ],
  };
}

/** An entry's value as text (lookups return equal copies, not the same object). */
function sig(e: TableEntry): string {
  return JSON.stringify(e, (_k, v) => v instanceof Uint8Array ? formatIPv6(v) : v);
}

/** Brute-force check that every index agrees with entries(). */
function checkConsistent(t: TranslationTable): void {
  const all = [...t.entries()];
  assertEquals(all.length, t.size, "size");
  const has = (list: readonly TableEntry[] | undefined, e: TableEntry) =>
    !!list?.some((x) => sig(x) === sig(e));
  for (const e of all) {
    assertEquals(t.byNsip4(e.nsip4), e, `byNsip4 ${formatIPv4(e.nsip4)}`);
    if (e.nsip6) assertEquals(t.byNsip6(e.nsip6), e, `byNsip6 ${formatIPv6(e.nsip6)}`);
    assert(has(t.job(e.job), e), "job index");
    assert(has(t.node(nodeKeyOf(e)), e), "node index");
    for (const s of e.serviceIps) {
      if (s.v4 !== undefined) assert(has(t.service4(s.v4)?.entries, e), `service4 ${formatIPv4(s.v4)}`);
      if (s.v6 !== undefined) assert(has(t.service6(s.v6)?.entries, e), `service6 ${formatIPv6(s.v6)}`);
    }
  }
  // No stale index entries: everything reachable from an index is a live entry.
  const live = new Set(all.map(sig));
  for (const g of t.services()) {
    assert(g.entries.length > 0, "empty group kept");
    for (const e of g.entries) assert(live.has(sig(e)), "stale entry in a service group");
    assertEquals(new Set(g.entries.map(sig)).size, g.entries.length, "duplicate in a group");
  }
  for (const j of t.jobs()) for (const e of t.job(j)) assert(live.has(sig(e)), "stale entry in job index");
  for (const n of t.nodes()) for (const e of t.node(n)) assert(live.has(sig(e)), "stale entry in node index");
}

Deno.test("IpType mapping and job names", () => {
  assertEquals(ipTypeToKind("RR"), "RoundRobin");
  assertEquals(ipTypeToKind("Closest"), "Closest");
  assertEquals(ipTypeToKind("InstanceNumber"), "Instance");
  assertEquals(ipTypeToKind("instance_ip"), "Instance");
  assertEquals(ipTypeToKind("whatever"), "Instance");
  assertEquals(ipTypeToKind("Random"), "Random");
  assertEquals(ipTypeToKind("RoundRobin"), "RoundRobin");
  assertEquals(kindToIpType("RoundRobin"), "RR");
  assertEquals(kindToIpType("Instance"), "instance_ip");
  assert(isJobName("a.b.c.d"));
  assert(isJobName(`${"x".repeat(30)}.b.c.d`));
  assert(!isJobName(`${"x".repeat(31)}.b.c.d`));
  assert(!isJobName("a.b.c"));
  assert(!isJobName("a.b.c.d.e"));
  assert(!isJobName("a.b-1.c.d"));
  assert(!isJobName("a..c.d"));
  assertEquals(nodeKey("131.1.0.1", 50103), "131.1.0.1:50103");
  assertEquals(nodeKey("2001:db8::1", 50103), "[2001:db8::1]:50103");
});

Deno.test("lookups by ServiceIP, namespace IP, job and node", () => {
  const t = new TranslationTable();
  const a = entry(0);
  const b = entry(1, { node: "131.1.0.2" });
  const ch = t.replaceJob(JOB, [a, b]);
  assertEquals(ch.added, 2);
  assertEquals(ch.removed, 0);
  assertEquals(t.size, 2);
  const g = t.service4(RR4) as ServiceGroup;
  assertEquals(g.kind, "RoundRobin");
  assertEquals(g.key, RR4);
  assertEquals(g.entries, [a, b]);
  // Instance IP → exactly one candidate of kind Instance.
  const i1 = t.service4(parseIPv4("10.30.1.3")) as ServiceGroup;
  assertEquals(i1.kind, "Instance");
  assertEquals(i1.entries, [b]);
  // v6 lookups straight from a packet buffer (dst at offset 24 of an IPv6 header).
  const pkt = new Uint8Array(40);
  pkt.set(RR6, 24);
  const g6 = t.service6(pkt, 24) as ServiceGroup;
  assertEquals(g6.family, 6);
  assertEquals(g6.key, "fdff:2000::1");
  assertEquals(g6.entries.length, 2);
  pkt.set(parseIPv6("fc00::3"), 8);
  assertEquals(t.byNsip6(pkt, 8), b);
  assertEquals(t.byNsip4(parseIPv4("10.18.0.66")), a);
  assertEquals(t.byNsip4(parseIPv4("10.18.0.99")), undefined);
  assertEquals(t.service4(parseIPv4("10.30.9.9")), undefined);
  pkt[39] ^= 1;
  assertEquals(t.service6(pkt, 24), undefined);
  assertEquals(t.service("fdff:2000:0::1"), g6);
  assertEquals(t.service("10.30.0.1"), g);
  assertEquals(t.service("nope"), undefined);
  assertEquals(t.byNsip("fc00::2"), a);
  assertEquals(t.job(JOB), [a, b]);
  assertEquals(t.node("131.1.0.2:50103"), [b]);
  assertEquals(instanceIp4Of(a), parseIPv4("10.30.1.2"));
  assert(equalIPv6(instanceIp6Of(b) as Uint8Array, parseIPv6("fdff::3")));
  checkConsistent(t);
});

Deno.test("replaceJob swaps atomically and removes stale index entries", () => {
  const t = new TranslationTable();
  t.replaceJob(JOB, [entry(0), entry(1), entry(2, { node: "131.1.0.9" })]);
  // Instance 2 leaves, instance 1 moves to another node (new nsip), instance 0 unchanged.
  const moved: TableEntry = { ...entry(1, { node: "131.1.0.7" }), nsip4: parseIPv4("10.18.0.130") };
  const ch = t.replaceJob(JOB, [entry(0), moved]);
  assertEquals(t.size, 2);
  assertEquals(ch.removed, 3);
  assertEquals(
    [...ch.gone].sort().map(formatIPv4),
    ["10.18.0.67", "10.18.0.68"],
    "instance 0 stays, 1 and 2 are gone",
  );
  assertEquals(t.byNsip4(parseIPv4("10.18.0.68")), undefined);
  assertEquals(t.byNsip4(parseIPv4("10.18.0.67")), undefined);
  assertEquals(t.service4(parseIPv4("10.30.1.4")), undefined, "instance IP of the removed instance");
  assertEquals(t.service6(parseIPv6("fdff::4")), undefined);
  assertEquals(t.node("131.1.0.9:50103").length, 0);
  assertEquals(t.nodes().sort(), ["131.1.0.1:50103", "131.1.0.7:50103"]);
  assertEquals(t.service4(RR4)?.entries.length, 2);
  checkConsistent(t);

  // A bad entry anywhere → throws, nothing changes.
  const before = [...t.entries()];
  assertThrows(
    () => t.replaceJob(JOB, [entry(5), { ...entry(6), job: "other.a.b.c" }]),
    TableError,
    "names job",
  );
  assertThrows(() => t.replaceJob(JOB, [entry(5), entry(5)]), TableError, "duplicate");
  assertThrows(() => t.replaceJob(JOB, [{ ...entry(5), serviceIps: [] }]), TableError, "ServiceIP");
  assertThrows(() => t.replaceJob(JOB, [{ ...entry(5), nodePort: 70000 }]), TableError, "node port");
  assertThrows(() => t.replaceJob("bad", [{ ...entry(5), job: "bad" }]), TableError, "4 dot-separated");
  assertEquals([...t.entries()], before);
  checkConsistent(t);

  t.removeJob(JOB);
  assertEquals(t.size, 0);
  assertEquals(t.service4(RR4), undefined);
  assertEquals([...t.services()].length, 0);
  assertEquals(t.jobs(), []);
  assertEquals(t.nodes(), []);
});

Deno.test("upsert replaces by namespace IP (other job) and by job+instance", () => {
  const t = new TranslationTable();
  t.replaceJob(JOB, [entry(0), entry(1)]);
  // Another job's entry reuses instance 0's nsip (the address went back to the pool and was reused).
  const other = entry(0, {
    job: "app.ns.db.ns",
    rr4: parseIPv4("10.30.0.9"),
    rr6: parseIPv6("fdff:2000::9"),
  });
  const ch = t.upsert(other);
  assertEquals(ch.gone, [parseIPv4("10.18.0.66")]);
  assertEquals(t.job(JOB).length, 1);
  assertEquals(t.byNsip4(other.nsip4), other);
  assertEquals(t.service4(RR4)?.entries.length, 1);
  // Same job + instance with a new nsip: the old row goes.
  const migrated: TableEntry = {
    ...entry(1),
    nsip4: parseIPv4("10.18.0.200"),
    nsip6: parseIPv6("fc00:1::2"),
  };
  t.upsert(migrated);
  assertEquals(t.job(JOB), [migrated]);
  assertEquals(t.byNsip4(parseIPv4("10.18.0.67")), undefined);
  assertEquals(t.byNsip6(parseIPv6("fc00::3")), undefined);
  // Re-upserting an identical instance is not "gone".
  assertEquals(t.upsert({ ...migrated }).gone, []);
  t.removeInstance(JOB, 1);
  assertEquals(t.job(JOB).length, 0);
  assertEquals(t.hasJob(JOB), false);
  checkConsistent(t);
});

Deno.test("entries without IPv6 and v6-only ServiceIPs", () => {
  const t = new TranslationTable();
  const e = entry(0, { v6: false });
  const v6only: TableEntry = {
    ...entry(1),
    serviceIps: [{ kind: "Closest", v6: parseIPv6("fdff:1000::5") }],
  };
  t.replaceJob(JOB, [e, v6only]);
  assertEquals(t.byNsip6(parseIPv6("fc00::2")), undefined);
  assertEquals(t.service6(parseIPv6("fdff:1000::5"))?.kind, "Closest");
  checkConsistent(t);
});

Deno.test("v6 keys: computed at any offset, colliding keys resolved by byte compare", () => {
  const a = parseIPv6("fdff::1:101");
  const buf = new Uint8Array(64);
  buf.set(a, 7);
  assertEquals(v6Key(buf, 7), v6Key(a));
  assert(v6Key(a) >= 0 && v6Key(a) < 2 ** 30 && Number.isInteger(v6Key(a)));
  // Find two addresses with the same 30-bit key (birthday search), and use both as ServiceIPs.
  const seen = new Map<number, number>();
  let x = -1;
  let y = -1;
  const addr = (i: number) => {
    const b = parseIPv6("fdff::");
    b[12] = i >>> 24;
    b[13] = (i >>> 16) & 255;
    b[14] = (i >>> 8) & 255;
    b[15] = i & 255;
    return b;
  };
  for (let i = 0; i < 1 << 22 && x < 0; i++) {
    const k = v6Key(addr(i));
    const j = seen.get(k);
    if (j !== undefined) [x, y] = [j, i];
    else seen.set(k, i);
  }
  assert(x >= 0, "found a collision");
  assertEquals(v6Key(addr(x)), v6Key(addr(y)));
  const t = new TranslationTable();
  const ex: TableEntry = { ...entry(0), serviceIps: [{ kind: "Instance", v6: addr(x) }] };
  const ey: TableEntry = {
    ...entry(0, { job: "a.b.c.d" }),
    nsip4: 1,
    nsip6: addr(x),
    serviceIps: [{ kind: "Instance", v6: addr(y) }],
  };
  t.replaceJob(JOB, [ex]);
  t.replaceJob("a.b.c.d", [ey]);
  assertEquals(t.service6(addr(x))?.entries, [ex]);
  assertEquals(t.service6(addr(y))?.entries, [ey]);
  assertEquals(t.byNsip6(addr(x)), ey);
  t.removeJob(JOB);
  assertEquals(t.service6(addr(x)), undefined);
  assertEquals(t.service6(addr(y))?.entries, [ey]);
  checkConsistent(t);
});

Deno.test("snapshot → structuredClone → fromSnapshot, and deltas apply the same way", () => {
  const owner = new TranslationTable();
  owner.replaceJob(JOB, [entry(0), entry(1, { v6: false }), entry(2, { node: "2001:db8::7" })]);
  owner.replaceJob("app.ns.db.ns", [entry(3, { job: "app.ns.db.ns", rr4: parseIPv4("10.30.0.9") })]);
  const snap = owner.snapshot();
  assertEquals(snap.rows.length, 4 * 7);
  const worker = TranslationTable.fromSnapshot(structuredClone(snap));
  const plain = (t: TranslationTable) =>
    [...t.entries()].map((e) => ({
      ...e,
      nsip6: e.nsip6 ? formatIPv6(e.nsip6) : undefined,
      serviceIps: e.serviceIps.map((s) => ({ ...s, v6: s.v6 ? formatIPv6(s.v6) : undefined })),
    })).sort((a, b) => a.nsip4 - b.nsip4);
  assertEquals(plain(worker), plain(owner));
  checkConsistent(worker);
  const deltas: TableDelta[] = [
    { op: "replaceJob", job: JOB, entries: [entry(0), entry(4)] },
    { op: "upsert", entry: entry(5, { job: "app.ns.db.ns", rr4: parseIPv4("10.30.0.9") }) },
    { op: "removeInstance", job: "app.ns.db.ns", instance: 3 },
    { op: "removeJob", job: "nothing.here.at.all" },
  ];
  for (const d of deltas) {
    const a = owner.apply(d);
    const b = worker.apply(structuredClone(d));
    assertEquals([...a.gone].sort(), [...b.gone].sort());
  }
  assertEquals(plain(worker), plain(owner));
  checkConsistent(worker);
  worker.apply({ op: "clear" });
  assertEquals(worker.size, 0);
  assertThrows(() => TranslationTable.fromSnapshot({ ...snap, rows: snap.rows.subarray(1) }), TableError);
  assertThrows(
    () => owner.apply({ op: "bogus" } as unknown as TableDelta),
    TableError,
    "unknown table delta",
  );
});

Deno.test("random operations keep every index consistent", () => {
  const rnd = seededRandom(1234);
  const r = (n: number) => Math.floor(rnd() * n);
  const t = new TranslationTable();
  const jobs = ["a.a.a.a", "b.b.b.b", "c.c.c.c"];
  const mk = (job: string, n: number): TableEntry => ({
    job,
    instance: n,
    nodeIp: `131.1.0.${r(4)}`,
    nodePort: 50103,
    nsip4: parseIPv4(`10.18.0.${r(40)}`),
    ...(r(2) ? { nsip6: parseIPv6(`fc00::${r(40).toString(16)}`) } : {}),
    serviceIps: [
      { kind: "RoundRobin", v4: parseIPv4(`10.30.0.${jobs.indexOf(job)}`) },
      { kind: "Instance", v4: parseIPv4(`10.30.1.${r(50)}`), v6: parseIPv6(`fdff::${r(50).toString(16)}`) },
    ],
  });
  for (let step = 0; step < 2000; step++) {
    const job = jobs[r(3)];
    const op = r(4);
    try {
      if (op === 0) {
        const list: TableEntry[] = [];
        const n = r(6);
        for (let i = 0; i < n; i++) list.push(mk(job, i));
        t.replaceJob(job, list);
      } else if (op === 1) t.upsert(mk(job, r(6)));
      else if (op === 2) t.removeInstance(job, r(6));
      else if (op === 3 && r(5) === 0) t.removeJob(job);
    } catch (e) {
      assert(e instanceof TableError, String(e)); // duplicate nsips in a random set are rejected
    }
    checkConsistent(t);
  }
});

Deno.test("100k entries: flat lookups", () => {
  const t = new TranslationTable();
  const N = 100_000;
  const perJob = 100;
  for (let j = 0; j < N / perJob; j++) {
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
        serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.0") + j }, {
          kind: "Instance",
          v4: parseIPv4("10.40.0.0") + k,
        }],
      });
    }
    t.replaceJob(job, list);
  }
  assertEquals(t.size, N);
  assertEquals(t.service4(parseIPv4("10.30.0.0") + 999)?.entries.length, perJob);
  assertEquals(t.byNsip4(parseIPv4("10.18.0.0") + 54321)?.instance, 21);
  assertEquals(t.service4(parseIPv4("10.40.0.0") + 77777)?.entries[0].job, "app.ns.s777.ns");
  t.replaceJob("app.ns.s5.ns", []);
  assertEquals(t.size, N - perJob);
  assertEquals(t.service4(parseIPv4("10.30.0.5")), undefined);
  const snap = t.snapshot();
  const copy = TranslationTable.fromSnapshot(structuredClone(snap));
  assertEquals(copy.size, N - perJob);
});

Deno.test("V6Map: lookups from packet offsets, growth and deletions match a reference map", () => {
  const rnd = seededRandom(5);
  const r = (n: number) => Math.floor(rnd() * n);
  const m = new V6Map<number>(2);
  const ref = new Map<string, number>();
  const addr = (i: number) => {
    const a = parseIPv6("fdff::");
    a[13] = (i >>> 16) & 255;
    a[14] = (i >>> 8) & 255;
    a[15] = i & 255;
    return a;
  };
  const pkt = new Uint8Array(40);
  for (let step = 0; step < 50_000; step++) {
    const i = r(3000);
    const a = addr(i);
    const k = formatIPv6(a);
    pkt.set(a, 24);
    assertEquals(m.get(pkt, 24), ref.get(k), `step ${step}`);
    const op = r(3);
    if (op === 0) {
      assertEquals(m.delete(a), ref.delete(k));
    } else {
      m.set(a, step);
      ref.set(k, step);
    }
    assertEquals(m.size, ref.size);
  }
  for (const [k, v] of ref) assertEquals(m.get(parseIPv6(k)), v);
  assertEquals([...m.values()].sort((x, y) => x - y), [...ref.values()].sort((x, y) => x - y));
  assert(!m.has(parseIPv6("::1")));
  m.clear();
  assertEquals(m.size, 0);
  assertEquals(m.get(addr(1)), undefined);
});

Deno.test("a real Worker keeps a read-only copy from a snapshot plus deltas", async () => {
  const mod = new URL("../../src/table/mod.ts", import.meta.url).href;
  const code = `
    import { TranslationTable } from "${mod}";
    let t;
    self.onmessage = (ev) => {
      const m = ev.data;
      if (m.kind === "snapshot") t = TranslationTable.fromSnapshot(m.snap);
      else if (m.kind === "delta") t.apply(m.delta);
      const g = t.service4(m.probe);
      self.postMessage({ size: t.size, candidates: g ? g.entries.map((e) => e.instance) : [] });
    };`;
  const w = new Worker(`data:application/javascript,${encodeURIComponent(code)}`, { type: "module" });
  const replies: { size: number; candidates: number[] }[] = [];
  let wake: () => void = () => {};
  w.onmessage = (ev) => {
    replies.push(ev.data);
    wake();
  };
  const ask = (msg: unknown) =>
    new Promise<void>((res) => {
      wake = res;
      w.postMessage(msg);
    });
  try {
    const owner = new TranslationTable();
    owner.replaceJob(JOB, [entry(0), entry(1)]);
    const snap = owner.snapshot();
    await ask({ kind: "snapshot", snap, probe: RR4 });
    const delta: TableDelta = { op: "replaceJob", job: JOB, entries: [entry(1), entry(2), entry(3)] };
    owner.apply(delta);
    await ask({ kind: "delta", delta, probe: RR4 });
    await ask({ kind: "delta", delta: { op: "removeInstance", job: JOB, instance: 2 }, probe: RR4 });
    assertEquals(replies, [
      { size: 2, candidates: [0, 1] },
      { size: 3, candidates: [1, 2, 3] },
      { size: 2, candidates: [1, 3] },
    ]);
  } finally {
    w.terminate();
  }
});

Deno.test("U32Map agrees with a Map under random set/delete, full uint32 range", () => {
  const r = seededRandom(9);
  const m = new U32Map();
  const ref = new Map<number, number>();
  for (let i = 0; i < 20000; i++) {
    // Few distinct keys (collisions, deletes of present keys) plus large ones (≥ 2^31).
    const k = r() < 0.5 ? Math.floor(r() * 300) : 0xffffff00 + Math.floor(r() * 256);
    if (r() < 0.6) {
      m.set(k, i);
      ref.set(k, i);
    } else assertEquals(m.delete(k), ref.delete(k));
  }
  assertEquals(m.size, ref.size);
  for (const [k, v] of ref) assertEquals(m.get(k), v);
  assertEquals(m.get(12345678), -1);
  assertEquals([...m.values()].sort((a, b) => a - b), [...ref.values()].sort((a, b) => a - b));
  m.reserve(5000);
  for (const [k, v] of ref) assertEquals(m.get(k), v, "kept across reserve");
});

Deno.test("row/group view (packet path) agrees with the object view", () => {
  const t = new TranslationTable();
  const a = entry(0);
  const b = entry(1, { node: "131.1.0.2" });
  const c = { ...entry(2), serviceIps: [{ kind: "Closest" as const, v4: parseIPv4("10.30.0.9") }] };
  t.replaceJob(JOB, [a, b, c]);
  const row = t.rowOf4(b.nsip4);
  assert(row >= 0);
  assertEquals(t.entryAt(row), b);
  assertEquals(t.rowNsip4(row), b.nsip4);
  assertEquals(t.rowNode(row), "131.1.0.2:50103");
  assertEquals(t.rowJob(row), JOB);
  assertEquals(t.rowInstance(row), 1);
  assertEquals(t.rowInstanceIp4(row), instanceIp4Of(b));
  const out = new Uint8Array(20);
  assert(t.rowInstanceIp6(row, out, 4));
  assert(equalIPv6(out, instanceIp6Of(b) as Uint8Array, 4));
  assert(t.rowNsip6(row, out));
  assert(equalIPv6(out, b.nsip6 as Uint8Array));
  assertEquals(t.rowOf6(b.nsip6 as Uint8Array), row);
  assertEquals(t.rowInstanceIp4(t.rowOf4(c.nsip4)), -1, "no instance IP");
  assertEquals(t.rowOf4(parseIPv4("10.18.9.9")), -1);
  const g = t.groupOf4(RR4);
  assertEquals(t.groupKind(g), "RoundRobin");
  assertEquals(t.groupKey(g), RR4);
  const rows: number[] = [];
  assertEquals(t.groupRows(g, rows), 2);
  assertEquals(rows.slice(0, 2).map((x) => t.rowInstance(x)), [0, 1]);
  const g6 = t.groupOf6(RR6);
  assertEquals(t.groupKey(g6), "fdff:2000::1");
  assertEquals(t.groupSize(g6), 2);
  assertEquals(t.groupOf4(parseIPv4("10.30.7.7")), -1);
  assertEquals(t.groupOf6(parseIPv6("fdff::dead")), -1);
  assertEquals(t.nodeEndpoint("131.1.0.2:50103"), { ip: "131.1.0.2", port: 50103 });
  assert(t.nodeHasKind("131.1.0.1:50103", "Closest"));
  assert(!t.nodeHasKind("131.1.0.2:50103", "Closest"));
  // Removing the head of a group: the next candidate's kind and the address stay right.
  t.removeInstance(JOB, 0);
  const g2 = t.groupOf4(RR4);
  assertEquals(t.groupKey(g2), RR4);
  assertEquals(t.groupSize(g2), 1);
  assertEquals(t.groupRows(g2, rows), 1);
  assertEquals(t.rowInstance(rows[0]), 1);
  t.removeInstance(JOB, 1);
  assertEquals(t.groupOf4(RR4), -1, "an empty group leaves the index");
  assertEquals(t.groupOf6(RR6), -1);
  checkConsistent(t);
});

Deno.test("table: serviceJobs4 names the distinct jobs of a ServiceIP without copying entries", () => {
  const t = new TranslationTable();
  t.replaceJob(JOB, [entry(0), entry(1, { node: "131.1.0.2" })]);
  assertEquals(t.serviceJobs4(RR4), [JOB]);
  assertEquals(t.serviceJobs4(parseIPv4("10.30.1.3")), [JOB]);
  assertEquals(t.serviceJobs4(parseIPv4("10.30.9.99")), undefined);
  assertEquals(t.serviceJobs6(parseIPv6("fdff:ffff::99")), undefined);
});
