import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { DatabaseSync } from "node:sqlite";
import { setImmediate } from "node:timers";
import {
  DB_FILE_NAME,
  SqliteStore,
  STATE_FILE_NAME,
  StateFileError,
  stateOfRows,
  writeAtomic,
} from "../../src/cluster/store.ts";
import { ClusterState, rrAddresses } from "../../src/cluster/state.ts";
import { claimsOf, parseRow, rowsOfStateFile, rowText, stateFileOfRows } from "../../src/cluster/rows.ts";
import { EtcdClient, EtcdError, prefixEnd } from "../../src/cluster/etcd.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nmctl-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SVC = { app_name: "a", app_ns: "b", microservice_name: "c", microservice_namespace: "d" };

function rowCount(path: string): number {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return Number(db.prepare("SELECT count(*) AS n FROM rows").get()!.n);
  } finally {
    db.close();
  }
}

Deno.test("sqlite store: empty start; changes survive a reopen; mode 0600", () =>
  withDir(async (dir) => {
    const sub = `${dir}/a/b`; // created on open
    const store = await SqliteStore.open(sub);
    assertEquals(store.state.jobs().length, 0);
    assertEquals(store.path, `${sub}/${DB_FILE_NAME}`);
    await store.change((s) => s.nodeSubnet("w1"));
    const j = await store.change((s) => s.deployService({ _id: "j", ...SVC }));
    await store.change((s) => s.deployInstance(j.job._id, 0));
    const before = store.state.toFile();
    await store.close();
    const again = await SqliteStore.open(sub);
    assertEquals(again.state.toFile(), before);
    assertEquals(again.state.nodeSubnet("w1").node.subnet, "10.18.0.0");
    assertEquals((await again.change((s) => s.nodeSubnet("w2"))).node.subnet, "10.18.0.64");
    await again.close();
    assertEquals((await Deno.stat(store.path)).mode! & 0o777, 0o600);
  }));

Deno.test("sqlite store: a change writes only its rows (O(changed)), releases and reuse survive", () =>
  withDir(async (dir) => {
    const store = await SqliteStore.open(dir);
    const j = await store.change((s) => s.deployService({ _id: "j", ...SVC }));
    for (let n = 0; n < 50; n++) await store.change((s) => s.deployInstance("j", n));
    // 1 job + 50 instances + the 4 pools used (service4, rr6, closest6, instance6)
    assertEquals(rowCount(store.path), 55);
    const updates: string[] = [];
    store.onUpdate = (u) => updates.push(`${u.job} ${u.type}`);
    await store.change((s) => s.removeInstance("j", 7), (r) => r.updates);
    assertEquals(updates, [`${j.job.job_name} UNDEPLOYMENT`]);
    assertEquals(rowCount(store.path), 54);
    const freed = "10.30.0.9"; // RR took .0, Closest .1; instance 7 had .9
    await store.close();
    const again = await SqliteStore.open(dir);
    assertEquals(again.state.allocator.service4.freeList(), [freed]);
    const i = await again.change((s) => s.deployInstance("j", 99));
    assertEquals(i.instance.instance_ip, freed);
    await again.close();
  }));

Deno.test("sqlite store: a refused change stores nothing and rejects with the refusal", () =>
  withDir(async (dir) => {
    const store = await SqliteStore.open(dir);
    await store.change((s) => s.deployService({ _id: "j", ...SVC }));
    const n = rowCount(store.path);
    await assertRejects(() => store.change((s) => s.removeInstance("j", 3)), Error, "no instance 3");
    assertEquals(rowCount(store.path), n);
    await store.close();
  }));

Deno.test("sqlite store: changes of one event-loop turn share one commit; each resolves once on disk", () =>
  withDir(async (dir) => {
    const store = await SqliteStore.open(dir);
    const db = new DatabaseSync(store.path);
    const count = () => (db.prepare("SELECT count(*) AS n FROM rows").get() as { n: number }).n;
    const before = count();
    // 100 registrations issued at once (as a burst of MQTT requests is) plus one refused change.
    const all = Array.from({ length: 100 }, (_, k) => store.change((s) => s.nodeSubnet(`w${k}`)));
    const refused = store.change((s) => s.removeInstance("none", 0)).then(() => "stored", (e) => String(e));
    assertEquals(count(), before, "nothing is committed before the turn ends");
    const nodes = await Promise.all(all);
    assertMatch(await refused, /no service with id or name "none"/);
    assertEquals(new Set(nodes.map((n) => n.node.subnet)).size, 100);
    assertEquals(count(), before + 100 + 2, "100 node rows and the two subnet pools");
    db.close();
    await store.close();
    const again = await SqliteStore.open(dir);
    assertEquals(again.state.nodes().length, 100);
    await again.close();
  }));

Deno.test("sqlite store: control-state.json is imported once and kept as .imported", () =>
  withDir(async (dir) => {
    const s = new ClusterState();
    s.nodeSubnet("w1");
    s.deployService({ _id: "j", ...SVC, rr_ip: "10.30.9.9" });
    s.deployInstance("j", 0);
    s.removeInstance("j", 0);
    const text = JSON.stringify(s.toFile());
    const json = `${dir}/${STATE_FILE_NAME}`;
    await Deno.writeTextFile(json, text);
    const store = await SqliteStore.open(dir);
    assertEquals(store.state.toFile(), s.toFile());
    await store.close();
    assertEquals(await Deno.readTextFile(`${json}.imported`), text);
    await assertRejects(() => Deno.stat(json));
    // Running twice changes nothing.
    const again = await SqliteStore.open(dir);
    assertEquals(again.state.toFile(), s.toFile());
    await again.close();
    assertEquals(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).filter((n) => n.endsWith(".imported")),
      [
        `${STATE_FILE_NAME}.imported`,
      ],
    );
    // A different JSON beside a filled database: refused, both kept.
    await Deno.writeTextFile(json, JSON.stringify(new ClusterState().toFile()));
    await assertRejects(() => SqliteStore.open(dir), StateFileError, "different one");
    assert(await Deno.stat(json));
  }));

Deno.test("sqlite store: a corrupt JSON or a foreign database is a clear error and is never changed", () =>
  withDir(async (dir) => {
    const json = `${dir}/${STATE_FILE_NAME}`;
    for (
      const text of [
        "{ not json",
        '{"version":1}',
        "",
        '{"version":1,"jobs":[],"nodes":[{"worker_id":"w","subnet":"1.2.3.4","subnet_v6":"fc00::"}],"pools":{"subnet4":{"next":"0","free":[]},"subnet6":{"next":"0","free":[]},"service4":{"next":"0","free":[]},"instance6":{"next":"0","free":[]},"rr6":{"next":"0","free":[]}}}',
      ]
    ) {
      await Deno.writeTextFile(json, text);
      const e = await assertRejects(() => SqliteStore.open(dir), StateFileError, json);
      assert(e.message.includes("fix or move it away"), e.message);
      assertEquals(await Deno.readTextFile(json), text);
      await assertRejects(() => Deno.stat(`${dir}/${DB_FILE_NAME}`)); // no database was created
    }
    await Deno.remove(json);
    // A foreign SQLite database.
    const foreign = new DatabaseSync(`${dir}/${DB_FILE_NAME}`);
    foreign.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
    foreign.close();
    const before = await Deno.readFile(`${dir}/${DB_FILE_NAME}`);
    await assertRejects(() => SqliteStore.open(dir), StateFileError, "not a netmanager state database");
    assertEquals(await Deno.readFile(`${dir}/${DB_FILE_NAME}`), before);
    // Not a database at all.
    await Deno.writeTextFile(`${dir}/${DB_FILE_NAME}`, "hello, I am text ".repeat(100));
    await assertRejects(() => SqliteStore.open(dir), StateFileError, "not a state database");
    // An inconsistent row.
    await Deno.remove(`${dir}/${DB_FILE_NAME}`);
    const store = await SqliteStore.open(dir);
    await store.change((s) => s.nodeSubnet("w1"));
    await store.close();
    const db = new DatabaseSync(`${dir}/${DB_FILE_NAME}`);
    db.exec(
      `INSERT INTO rows VALUES ('node/w2', '{"worker_id":"w2","subnet":"10.18.0.0","subnet_v6":"fc00::100"}')`,
    );
    db.close();
    await assertRejects(() => SqliteStore.open(dir), StateFileError, "used twice");
  }));

Deno.test("rows: state file ↔ rows round trip; bad rows are refused", () => {
  const s = new ClusterState();
  s.nodeSubnet("w1");
  s.deployService({ _id: "j", ...SVC });
  s.deployInstance("j", 0);
  s.deployInstance("j", 2);
  const rows = rowsOfStateFile(s.toFile());
  assertEquals(stateFileOfRows(rows.map((r) => parseRow(r.key, JSON.stringify(r.value)))), s.toFile());
  for (
    const [k, v] of [
      ["job/x.y", "{}"],
      ["node/w1", '{"worker_id":"w2","subnet":"10.18.0.0","subnet_v6":"fc00::"}'],
      ["inst/j/1", '{"instance_number":2,"instance_ip":"10.30.0.1","instance_ip_v6":"fdff::"}'],
      ["pool/zz", '{"next":"0","free":[]}'],
      ["pool/rr6", "{"],
    ]
  ) {
    let threw = false;
    try {
      parseRow(k, v);
    } catch {
      threw = true;
    }
    assert(threw, `${k} ${v} accepted`);
  }
});

Deno.test("state: applyRows mirrors another state's changes exactly", () => {
  const a = new ClusterState();
  const b = new ClusterState();
  const sync = () => b.applyRows(a.takeChanges());
  a.nodeSubnet("w1");
  a.deployService({ _id: "j", ...SVC });
  a.deployInstance("j", 0);
  a.deployInstance("j", 1);
  sync();
  assertEquals(b.toFile(), a.toFile());
  a.removeInstance("j", 0);
  a.markDeployed(
    "w1",
    {
      appname: "a.b.c.d",
      instance_number: 1,
      nsip: "10.18.0.2",
      host_ip: "192.168.1.1",
      host_port: 50103,
      status: "",
    } as Parameters<ClusterState["markDeployed"]>[1],
  );
  sync();
  assertEquals(b.toFile(), a.toFile());
  assertEquals(b.resolve("10.30.0.3")?._id, "j"); // instance 1 (RR .0, Closest .1, instance 0 .2)
  assertEquals(b.resolve("fdff:1000::")?._id, "j");
  assertEquals(b.resolve("10.30.0.1")?._id, "j");
  // Closest IPs moved, then released, then given again: b follows each step.
  a.deployService({ _id: "j", ...SVC, closest_ip: "10.30.8.8", closest_ip_v6: "fdff:1000::8" });
  sync();
  assertEquals(b.toFile(), a.toFile());
  assertEquals([b.resolve("10.30.8.8")?._id, b.resolve("fdff:1000::")], ["j", undefined]);
  a.deployService({ _id: "j", ...SVC, closest: false });
  sync();
  assertEquals(b.toFile(), a.toFile());
  assertEquals(b.resolve("fdff:1000::8"), undefined);
  a.deployService({ _id: "j", ...SVC, closest: true });
  sync();
  assertEquals(b.toFile(), a.toFile());
  assertEquals(b.resolve(a.job("j")!.service_ip_list[1].Address_v6)?._id, "j");
  a.removeService("j", true);
  a.removeNode("w1");
  sync();
  assertEquals(b.toFile(), a.toFile());
  assertEquals(b.resolve("10.30.0.3"), undefined);
  assertEquals(b.resolve("fdff:1000::"), undefined);
  // b allocates next exactly as a would.
  assertEquals(b.nodeSubnet("w9").node.subnet, a.nodeSubnet("w9").node.subnet);
});

Deno.test("store: writeAtomic replaces the file whole", () =>
  withDir(async (dir) => {
    const p = `${dir}/f.json`;
    await writeAtomic(p, "x".repeat(100000));
    await writeAtomic(p, "short");
    assertEquals(await Deno.readTextFile(p), "short");
  }));

Deno.test("store: concurrent writeAtomic calls for one path all succeed and the last one's text stays", () =>
  withDir(async (dir) => {
    const p = `${dir}/f.json`;
    const texts = Array.from({ length: 20 }, (_, i) => `${i} `.repeat(5000 - i * 100));
    await Promise.all(texts.map((t) => writeAtomic(p, t)));
    assertEquals(await Deno.readTextFile(p), texts[texts.length - 1]);
  }));

Deno.test("etcd: prefixEnd is the first key after every key with the prefix; endpoints are checked", () => {
  assertEquals(prefixEnd("/netmanager/a/"), "/netmanager/a0");
  let threw = 0;
  for (const bad of [[], ["ftp://x:2379"], ["not a url"]]) {
    try {
      new EtcdClient(bad);
    } catch (e) {
      assert(e instanceof EtcdError);
      threw++;
    }
  }
  assertEquals(threw, 3);
  assertEquals(new EtcdClient(["http://10.0.0.1:2379/", " http://b:2379"]).endpoints, [
    "http://10.0.0.1:2379",
    "http://b:2379",
  ]);
});

Deno.test("rows: claims name a job's name and addresses, an instance's addresses, a node's subnets", () => {
  const s = new ClusterState();
  s.nodeSubnet("w1");
  s.deployService({ _id: "j", ...SVC, rr_ip: "10.30.5.5" });
  s.deployInstance("j", 0);
  const claims = s.rows().flatMap(claimsOf).sort();
  assertEquals(claims, [
    "ip/10.30.0.0", // Closest
    "ip/10.30.0.1", // instance 0
    "ip/10.30.5.5",
    "ip/fdff:1000::",
    "ip/fdff:2000::",
    "ip/fdff::",
    "name/a.b.c.d",
    "subnet/10.18.0.0",
    "subnet/fc00::",
  ]);
});

Deno.test("sqlite store: a durable change syncs off the event loop; many at once all land; close waits", () =>
  withDir(async (dir) => {
    const store = await SqliteStore.open(dir);
    await store.change((s) => s.nodeSubnet("w0")); // the log exists from here on
    // Work queued behind the change runs while its sync is under way (with a synchronous FULL
    // commit, the change resolved inside the event-loop turn that wrote it, before this immediate,
    // queued after the store's group-commit immediate — every time). A sync on the runtime's thread
    // pool can finish before the immediate once in a while (seen once in CI under load), so up to
    // five tries: the synchronous commit never lets the immediate run first.
    let tries = 0, order: string[] = [];
    while (tries < 5 && order[0] !== "timer") {
      const seen: string[] = [];
      const done = store.change((s) => s.nodeSubnet(`w${++tries}`)).then(() => seen.push("change"));
      setImmediate(() => seen.push("timer"));
      await done;
      order = seen;
    }
    assertEquals(order, ["timer", "change"]);
    assertEquals(rowCount(store.path), 3 + tries, "nodes w0..wN and the subnet4 and subnet6 pools committed");
    // 200 changes at once: each resolves, every one is in the database after close (which waits
    // for the sync under way) and a reopen.
    const all = await Promise.all(
      Array.from({ length: 200 }, (_, i) => store.change((s) => s.nodeSubnet(`n${i}`))),
    );
    assertEquals(new Set(all.map((r) => r.node.subnet)).size, 200);
    const last = store.change((s) => s.nodeSubnet("late"));
    await store.close();
    await last;
    const again = await SqliteStore.open(dir);
    assertEquals(again.state.nodes().length, 202 + tries);
    await again.close();
  }));

Deno.test("sqlite store: --state-sync normal resolves a change in the next event-loop turn (an immediate, not a 1-2 ms 0 ms timer)", () =>
  withDir(async (dir) => {
    const store = await SqliteStore.open(dir, { synchronous: "normal" });
    const order: string[] = [];
    const done = store.change((s) => s.nodeSubnet("w1")).then(() => order.push("change"));
    setImmediate(() => order.push("timer"));
    await done;
    await new Promise((r) => setTimeout(r, 5));
    assertEquals(order, ["change", "timer"]);
    await store.close();
  }));

Deno.test("state rows: rowText(key) is the text of row(key) for every kind; instance lists stay ordered", () => {
  const s = new ClusterState({ newId: () => "j1" });
  s.nodeSubnet("w1");
  const { job } = s.deployService({
    app_name: "a",
    app_ns: "b",
    microservice_name: "c",
    microservice_namespace: "d",
  });
  for (const n of [3, 0, 7, 1]) s.deployInstance(job._id, n, n === 7 ? "c7" : undefined);
  s.addInterest(job, "w1");
  assertEquals(job.instance_list.map((i) => i.instance_number), [0, 1, 3, 7]);
  assertEquals(job.instance_list.length, 4);
  const keys = s.takeChangedKeys().sort();
  assertEquals(keys, [
    "inst/j1/0",
    "inst/j1/1",
    "inst/j1/3",
    "inst/j1/7",
    "job/j1",
    "node/w1",
    "pool/closest6",
    "pool/instance6",
    "pool/rr6",
    "pool/service4",
    "pool/subnet4",
    "pool/subnet6",
  ]);
  assertEquals(s.dirty, false);
  for (const k of [...keys, "inst/j1/2", "job/nope", "node/w2"]) {
    assertEquals(s.rowText(k), rowText(s.row(k)), k);
  }
  // The text round-trips: a state rebuilt from it equals the original.
  const rebuilt = stateOfRows(keys.map((k) => [k, s.rowText(k)!] as const), "test");
  assertEquals(rebuilt.toFile(), s.toFile());
});

Deno.test("sqlite store: checkpoints its log itself (off the event loop); changes made meanwhile land; the log is reused", () =>
  withDir(async (dir) => {
    const EVERY = 300; // fewer than the default: the test runs 3 checkpoints per mode in ~2 s
    await assertRejects(() => SqliteStore.open(`${dir}/bad`, { checkpointCommits: 0 }), RangeError);
    for (const synchronous of ["full", "normal"] as const) {
      const sub = `${dir}/${synchronous}`;
      const store = await SqliteStore.open(sub, { synchronous, checkpointCommits: EVERY });
      const wal = `${store.path}-wal`;
      // One commit per change (each awaited), past the first checkpoint.
      for (let i = 0; i < EVERY + 20; i++) {
        await store.change((s) => s.deployService({ _id: `j${i}`, ...SVC, microservice_name: `s${i}` }));
      }
      // The database file alone (without its log) holds what the checkpoint copied: SQLite no
      // longer checkpoints by itself (wal_autocheckpoint = 0), so this is the store's checkpoint.
      const copy = `${dir}/copy-${synchronous}.db`;
      await Deno.copyFile(store.path, copy);
      assert(rowCount(copy) >= EVERY, `${rowCount(copy)} rows checkpointed`);
      // Changes arriving in bursts, across more checkpoints: all resolve, none is lost.
      let n = 0;
      for (let round = 0; round < 3 * EVERY; round += 10) {
        await Promise.all(
          Array.from({ length: 10 }, () => store.change((s) => s.nodeSubnet(`w${n++}`))),
        );
        await store.change((s) => s.deployInstance(`j${round % EVERY}`, round));
      }
      // The log is reused from its start after each checkpoint: it stays at about one
      // checkpoint's worth of commits (each ≤ 4 pages) instead of growing with every commit.
      const walBytes = (await Deno.stat(wal)).size;
      assert(walBytes < EVERY * 5 * 4096, `log ${walBytes} bytes`);
      // Jobs and nodes sorted (a reopened state lists rows in key order).
      const canon = (s: ClusterState) => ({
        jobs: s.jobs(),
        nodes: s.nodes(),
        pools: s.allocator.snapshot(),
      });
      const before = structuredClone(canon(store.state));
      await store.close();
      assertEquals(await Deno.stat(wal).then(() => "log kept", () => "log gone"), "log gone");
      const again = await SqliteStore.open(sub);
      assertEquals(canon(again.state), before);
      assertEquals(again.state.nodes().length, n);
      await again.close();
    }
  }));

Deno.test("sqlite store: a process killed (SIGKILL) right after its changes resolved keeps every one of them", () =>
  withDir(async (dir) => {
    // A separate process allocates in bursts of 8 (group commits, past checkpoints) and prints each
    // job's RR IP once its change resolved, as the HTTP API answers 200 then; it is killed mid-run.
    const store = new URL("../../src/cluster/store.ts", import.meta.url).href;
    const state = new URL("../../src/cluster/state.ts", import.meta.url).href;
    const code = `
      import { SqliteStore } from "${store}";
      import { rrAddresses } from "${state}";
      const store = await SqliteStore.open(${JSON.stringify(dir)}, { checkpointCommits: 100 });
      const out = (t) => Deno.stdout.writeSync(new TextEncoder().encode(t));
      for (let i = 0; ; i += 8) {
        await Promise.all(Array.from({ length: 8 }, async (_, k) => {
          const id = "j" + (i + k);
          const { job } = await store.change((s) => s.deployService({ _id: id, app_name: "a", app_ns: "b",
            microservice_name: id, microservice_namespace: "d" }));
          out(id + " " + rrAddresses(job).rr_ip + "\\n");
        }));
      }`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
    const acked = new Map<string, string>();
    let text = "";
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      while (acked.size < 100 * 8 + 100) {
        const r = await reader.read();
        if (r.done) break;
        text += r.value;
        const lines = text.split("\n");
        text = lines.pop()!;
        for (const l of lines) {
          const [id, ip] = l.split(" ");
          acked.set(id, ip);
        }
      }
    } finally {
      child.kill("SIGKILL");
      await reader.cancel();
      await child.stderr.cancel();
      await child.status;
    }
    assert(acked.size >= 100 * 8, `only ${acked.size} changes acknowledged before the kill`);
    const again = await SqliteStore.open(dir);
    try {
      for (const [id, ip] of acked) {
        assertEquals(rrAddresses(again.state.findJob(id)).rr_ip, ip, id);
      }
    } finally {
      await again.close();
    }
  }));
