/**
 * The instance lifecycle under faults, against a real daemon in its own namespace with "containers"
 * as processes in fresh namespaces: SIGKILL in the middle of concurrent deploys, undeploys and
 * redeploys (then every record, veth, address and DNAT rule must agree), rejected redeploys that
 * must leave the running instance alone, concurrent deploys of one instance, changed port
 * mappings, a state file that is a FIFO, and the API's body cap and request timeouts.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, inNs, isRoot, run } from "../helpers/netns.ts";
import { deployBody, jobName, ruleDump, TestContainer, TestNode } from "../helpers/node.ts";
import { nodeCli, nodeFileArgs, withNode } from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const BRIDGE = "goProxyBridge";

interface Rec {
  serviceName: string;
  instanceNumber: number;
  pid: number;
  nsAddress: string;
  nsAddressv6: string;
  veth: string;
  portMappings: Array<{ proto: string; hostPort: number; containerPort: number }>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Names of the veths enslaved to the bridge, and of every veth of the node namespace. */
async function nodeVeths(ns: string): Promise<{ onBridge: string[]; all: string[] }> {
  const links = JSON.parse(await inNs(ns, ["ip", "-j", "-d", "link", "show"])) as Array<
    { ifname: string; master?: string; linkinfo?: { info_kind?: string } }
  >;
  const veths = links.filter((l) => l.linkinfo?.info_kind === "veth");
  return {
    onBridge: veths.filter((l) => l.master === BRIDGE).map((l) => l.ifname).sort(),
    all: veths.map((l) => l.ifname.split("@")[0]).sort(),
  };
}

/** IPv4 addresses of the node subnet (10.18.0.64/26) a process's namespace holds. */
async function subnetAddrs(pid: number): Promise<string[]> {
  const r = await run(["nsenter", "-t", String(pid), "-n", "ip", "-j", "-4", "addr", "show"]);
  if (r.code !== 0) return []; // the process is gone
  const out: string[] = [];
  for (const l of JSON.parse(r.stdout) as Array<{ addr_info: Array<{ local: string }> }>) {
    for (const a of l.addr_info) {
      const last = Number(a.local.split(".")[3]);
      if (a.local.startsWith("10.18.0.") && last >= 64 && last < 128) out.push(a.local);
    }
  }
  return out;
}

/** DNAT rules of our chain as `proto/hostPort->dest` (v4 and v6). */
async function dnatRules(ns: string): Promise<string[]> {
  const out: string[] = [];
  for (const tool of ["iptables-save", "ip6tables-save"]) {
    for (const l of (await inNs(ns, [tool, "-t", "nat"])).split("\n")) {
      const m = l.match(/^-A OAKESTRA -p (\w+) .*--dport (\d+) -j DNAT --to-destination (\S+)$/);
      if (m) out.push(`${m[1]}/${m[2]}->${m[3]}`);
    }
  }
  return out.sort();
}

function expectedDnat(recs: Rec[]): string[] {
  return recs.flatMap((r) =>
    r.portMappings.flatMap((p) => [
      `${p.proto}/${p.hostPort}->${r.nsAddress}:${p.containerPort}`,
      `${p.proto}/${p.hostPort}->[${r.nsAddressv6}]:${p.containerPort}`,
    ])
  ).sort();
}

/**
 * The invariants after a restart: the bridge's veths are exactly the records' veths, no other veth
 * of ours exists, every record's container holds its address, no address has two holders or a
 * holder the node does not know, and the DNAT rules are exactly the records' mappings.
 */
async function checkInvariants(node: TestNode, pids: number[], tag: string): Promise<Rec[]> {
  const recs = (await node.api.getJson("/instances")) as Rec[];
  const veths = await nodeVeths(node.ns);
  assertEquals(veths.onBridge, recs.map((r) => r.veth).sort(), `${tag}: veths on the bridge = records`);
  assertEquals(veths.all, veths.onBridge, `${tag}: no veth outside the bridge`);
  const holders = new Map<string, number[]>();
  for (const pid of new Set([...pids, ...recs.map((r) => r.pid)])) {
    for (const a of await subnetAddrs(pid)) holders.set(a, [...(holders.get(a) ?? []), pid]);
  }
  for (const [addr, ps] of holders) {
    assertEquals(ps.length, 1, `${tag}: ${addr} is held by ${ps.length} containers (${ps})`);
    const rec = recs.find((r) => r.nsAddress === addr);
    assert(rec, `${tag}: ${addr} is held by pid ${ps[0]} but no record has it`);
    assertEquals(rec.pid, ps[0], `${tag}: ${addr} is held by pid ${ps[0]}, recorded for pid ${rec.pid}`);
  }
  for (const r of recs) {
    assert(holders.has(r.nsAddress), `${tag}: ${r.serviceName}#${r.instanceNumber} lost its address`);
  }
  assertEquals(new Set(recs.map((r) => r.nsAddress)).size, recs.length, `${tag}: duplicate addresses`);
  assertEquals(await dnatRules(node.ns), expectedDnat(recs), `${tag}: DNAT rules = records`);
  return recs;
}

Deno.test({
  name:
    "lifecycle: 20 rounds of concurrent deploy/undeploy/redeploy + SIGKILL at 0–60 ms keep node consistent",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    assertEquals((await node.register()).status, 200);
    const job = jobName("k");
    const probeJob = jobName("p");
    const SLOTS = 5;
    const slot: TestContainer[] = [];
    for (let i = 0; i < SLOTS; i++) slot.push(await TestContainer.start());
    const probe = await TestContainer.start();
    cs.push(probe);
    const dead: TestContainer[] = [];
    const ports = (s: number, alt: boolean) => alt ? `${7100 + s}:80;${7200 + s}:81/udp` : `${7000 + s}:80`;
    const rnd = (n: number) => Math.floor(Math.random() * n);
    const t0 = Date.now();
    let answered = 0;
    for (let round = 1; round <= 20; round++) {
      const calls: Array<Promise<unknown>> = [];
      const plan: string[] = [];
      for (let k = 0; k < 3; k++) {
        const s = rnd(SLOTS);
        const op = ["deploy", "deploy", "undeploy", "ports", "replace"][rnd(5)];
        plan.push(`${op}#${s}`);
        if (op === "replace") {
          // The container is recreated: the old namespace vanishes, the new PID is deployed.
          dead.push(slot[s]);
          await slot[s].stop();
          slot[s] = await TestContainer.start();
        }
        const call = op === "undeploy"
          ? node.api.post("/container/undeploy", { serviceName: job, instanceNumber: s })
          : node.api.post("/container/deploy", deployBody(slot[s].pid, job, s, ports(s, op === "ports")));
        calls.push(call.then((r) => r.status < 500 && answered++).catch(() => {}));
      }
      await sleep(rnd(61));
      await node.signal("SIGKILL");
      await Promise.allSettled(calls);
      await node.startDaemon();
      const tag = `round ${round} (${plan.join(", ")})`;
      const recs = await checkInvariants(node, slot.map((c) => c.pid), tag);
      // A new deploy succeeds and gets an address nobody holds.
      const r = await node.api.post("/container/deploy", deployBody(probe.pid, probeJob, 0));
      assertEquals(r.status, 200, `${tag}: probe deploy: ${r.body}`);
      const addr = (r.json as { nsAddress: string }).nsAddress;
      assert(!recs.some((x) => x.nsAddress === addr), `${tag}: probe got ${addr}, which is in use`);
      assertEquals(
        (await node.api.post("/container/undeploy", { serviceName: probeJob, instanceNumber: 0 })).status,
        200,
      );
      await node.settled();
    }
    cs.push(...slot);
    const log = await node.log();
    const count = (re: RegExp) => log.match(re)?.length ?? 0;
    console.log(
      `20 rounds in ${Date.now() - t0} ms; ${answered} of 60 calls answered before the kill; restarts ` +
        `found ${count(/removing an unfinished deploy/g)} unfinished deploys/undeploys and ` +
        `${count(/removing an instance that is not intact/g)} broken records`,
    );
    // Finally everything undeploys cleanly.
    for (let s = 0; s < SLOTS; s++) {
      await node.api.post("/container/undeploy", { serviceName: job, instanceNumber: s });
    }
    await node.settled();
    assertEquals((await nodeVeths(node.ns)).all, []);
    assertEquals(await dnatRules(node.ns), []);
  });
});

Deno.test({
  name:
    "lifecycle: rejected redeploys (pid 0, dead pid, port clash, another live pid, bad mapping) keep the instance",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    await node.register();
    const job = jobName("r");
    const a = await TestContainer.start(["sleep", "600"]);
    const b = await TestContainer.start();
    const other = await TestContainer.start();
    const gone = await TestContainer.start();
    cs.push(a, b, other);
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(a.pid, job, 0, "7000:80"))).status,
      200,
    );
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(b.pid, job, 1, "7001:80"))).status,
      200,
    );
    await gone.stop();
    const snapshot = async () => ({
      instances: await node.api.getJson("/instances"),
      veths: await nodeVeths(node.ns),
      rules: await ruleDump(node.ns),
      addrs: await subnetAddrs(a.pid),
    });
    const before = await snapshot();
    assertEquals(before.addrs, ["10.18.0.66"]);
    const cases: Array<[string, Record<string, unknown>, number, RegExp]> = [
      ["pid 0", deployBody(0, job, 0, "7000:80"), 400, /invalid pid 0/],
      ["dead pid", deployBody(gone.pid, job, 0, "7000:80"), 400, new RegExp(`pid ${gone.pid}`)],
      ["port clash (same pid)", deployBody(a.pid, job, 0, "7001:80"), 409, /7001\/tcp is already mapped/],
      ["port clash (new pid)", deployBody(other.pid, job, 0, "7001:80"), 409, /already mapped|running/],
      ["another live pid", deployBody(other.pid, job, 0, "7000:80"), 409, /is running .*undeploy it/],
      ["bad mapping", deployBody(a.pid, job, 0, "70000:80"), 400, /invalid port mapping/],
    ];
    for (const [what, body, status, re] of cases) {
      const r = await node.api.post("/container/deploy", body);
      assertEquals(r.status, status, `${what}: ${r.body}`);
      assertMatch(r.body, re);
      await node.settled();
      assertEquals(await snapshot(), before, `${what}: the running instance must stay as it was`);
    }
    // The instance still answers through its mapping... and after undeploy a new PID may take over.
    assertEquals(
      (await node.api.post("/container/undeploy", { serviceName: job, instanceNumber: 0 })).status,
      200,
    );
    const r = await node.api.post("/container/deploy", deployBody(other.pid, job, 0, "7000:80"));
    assertEquals(r.status, 200, r.body);
    // A container that died without an undeploy is replaced by a deploy with its new PID.
    await b.stop();
    const b2 = await TestContainer.start();
    cs.push(b2);
    const r2 = await node.api.post("/container/deploy", deployBody(b2.pid, job, 1, "7001:80"));
    assertEquals(r2.status, 200, r2.body);
    await node.settled();
    assertEquals((await subnetAddrs(b2.pid)).length, 1);
    assertEquals(await dnatRules(node.ns), expectedDnat((await node.api.getJson("/instances")) as Rec[]));
  });
});

Deno.test({
  name: "lifecycle: concurrent deploys of one instance — one wins, the other gets 409; new mappings apply",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    await node.register();
    const job = jobName("c");
    const cons: TestContainer[] = [];
    for (let i = 0; i < 4; i++) cons.push(await TestContainer.start());
    cs.push(...cons);
    const res = await Promise.all(
      cons.map((c) => node.api.post("/container/deploy", deployBody(c.pid, job, 0, "7000:80"))),
    );
    const ok = res.filter((r) => r.status === 200);
    assertEquals(ok.length, 1, res.map((r) => `${r.status} ${r.body}`).join("\n"));
    for (const r of res.filter((r) => r.status !== 200)) {
      assertEquals(r.status, 409, r.body);
      assertMatch(r.body, /in progress|is running/);
    }
    const recs = (await node.api.getJson("/instances")) as Rec[];
    assertEquals(recs.length, 1);
    const holders = [];
    for (const c of cons) if ((await subnetAddrs(c.pid)).length > 0) holders.push(c.pid);
    assertEquals(holders, [recs[0].pid], "exactly the winner has networking");

    // Different instances racing for one host port: exactly one gets it, every time.
    const rest = cons.filter((c) => c.pid !== recs[0].pid);
    for (let round = 0; round < 3; round++) {
      const race = await Promise.all(
        rest.map((c, i) => node.api.post("/container/deploy", deployBody(c.pid, job, 1 + i, "7200:80"))),
      );
      const won = race.flatMap((r, i) => r.status === 200 ? [1 + i] : []);
      assertEquals(won.length, 1, race.map((r) => `${r.status} ${r.body}`).join("\n"));
      for (const r of race.filter((r) => r.status !== 200)) {
        assertMatch(r.body, /7200\/tcp is already mapped/);
      }
      const undo = await node.api.post("/container/undeploy", { serviceName: job, instanceNumber: won[0] });
      assertEquals(undo.status, 200, undo.body);
    }

    // Same PID, new mappings: applied (200), old ones gone, the new one reaches the container.
    const winner = cons.find((c) => c.pid === recs[0].pid)!;
    const up = await node.api.post(
      "/container/deploy",
      deployBody(winner.pid, job, 0, "7100:81;7101:82/udp"),
    );
    assertEquals(up.status, 200, up.body);
    assertEquals(up.json, {
      serviceName: job,
      nsAddress: recs[0].nsAddress,
      nsAddressv6: recs[0].nsAddressv6,
    });
    const after = (await node.api.getJson("/instances")) as Rec[];
    assertEquals(after[0].portMappings.map((p) => `${p.hostPort}/${p.proto}`), ["7100/tcp", "7101/udp"]);
    assertEquals(await dnatRules(node.ns), expectedDnat(after));
    // The same mappings again change nothing.
    const rules = await ruleDump(node.ns);
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(winner.pid, job, 0, "7101:82/udp;7100:81")))
        .status,
      200,
    );
    assertEquals(await ruleDump(node.ns), rules);
  });
});

Deno.test({
  name: "lifecycle: a state file that is a FIFO is refused at once with a clear error; clean recovers",
  ...opts,
}, async () => {
  const node = await TestNode.start();
  // A unikernel namespace shaped like ours that still has its veth belongs to someone else.
  const foreign = `${jobName("f")}.instance.0`;
  const uk = jobName("u");
  try {
    await node.register();
    const r = await node.api.post("/unikernel/deploy", {
      pid: 0,
      serviceName: uk,
      instanceNumber: 0,
      portMappings: "",
    });
    assertEquals(r.status, 200, r.body);
    await run(["ip", "netns", "add", foreign]);
    await run(["ip", "-n", foreign, "link", "add", "virbr0", "type", "bridge"]);
    await run(["ip", "-n", foreign, "link", "add", "fa0", "type", "veth", "peer", "name", "fb0"]);
    await node.signal("SIGKILL");
    const state = `${node.dir}/state/state.json`;
    await Deno.remove(state);
    await run(["mkfifo", state]);
    const t0 = Date.now();
    let err = "";
    try {
      await node.startDaemon();
    } catch (e) {
      err = String(e);
    }
    assert(Date.now() - t0 < 10000, "no hang");
    assertMatch(err, /daemon exited early/);
    assertMatch(err, /state\.json is not a regular file.*netmanager clean/s);
    const clean = await nodeCli(node, ["clean", "--json", ...nodeFileArgs(node)]);
    assertEquals(clean.code, 0, clean.stderr);
    const report = JSON.parse(clean.stdout) as { stateFile: boolean; netns: string[] };
    assertEquals(report.stateFile, true);
    assert((await nodeVeths(node.ns)).all.length === 0);
    // Without records, the unikernel namespace is found by its shape and its lost veth.
    assertEquals(report.netns, [`${uk}.instance.0`]);
    const left = (await run(["ip", "netns", "list"])).stdout;
    assert(!left.includes(`${uk}.instance.0`), left);
    assert(left.includes(foreign), "a namespace that still has its veth is not ours to remove");
    await node.startDaemon();
    assertEquals((await node.register()).status, 200);
  } finally {
    await run(["ip", "netns", "del", foreign]).catch(() => {});
    await node.stop();
    await cleanupAll();
  }
});

/** A raw connection to the daemon's socket. */
async function raw(node: TestNode): Promise<Deno.UnixConn> {
  return await Deno.connect({ transport: "unix", path: node.socket });
}

async function readAll(conn: Deno.Conn, ms: number): Promise<{ text: string; closedAfterMs: number }> {
  const t0 = Date.now();
  const buf = new Uint8Array(4096);
  let text = "";
  const timer = setTimeout(() => conn.close(), ms);
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
  } catch {
    // closed by the timer
  } finally {
    clearTimeout(timer);
  }
  try {
    conn.close();
  } catch { /* closed */ }
  return { text, closedAfterMs: Date.now() - t0 };
}

Deno.test({
  name:
    "api limits: 1 MB body cap (413), slow and idle requests time out (408), /status answers under a flood",
  ...opts,
}, async () => {
  const node = await TestNode.start();
  try {
    // Short limits for the test (the defaults are 10 s per request, 30 s idle, 128 connections).
    await node.signal("SIGTERM");
    Deno.env.set("NETMANAGER_API_REQUEST_TIMEOUT_MS", "1500");
    Deno.env.set("NETMANAGER_API_IDLE_TIMEOUT_MS", "3000");
    Deno.env.set("NETMANAGER_API_MAX_CONNECTIONS", "50");
    try {
      await node.startDaemon();
    } finally {
      Deno.env.delete("NETMANAGER_API_REQUEST_TIMEOUT_MS");
      Deno.env.delete("NETMANAGER_API_IDLE_TIMEOUT_MS");
      Deno.env.delete("NETMANAGER_API_MAX_CONNECTIONS");
    }
    await node.register();
    // A 2 MB body is refused before it is read; a body just under 1 MB is parsed (and refused as JSON).
    const big = await node.api.post("/container/deploy", "x".repeat(2 << 20));
    assertEquals(big.status, 413, big.body);
    assertMatch(big.body, /over the 1048576 limit/);
    const under = await node.api.post("/container/deploy", "x".repeat((1 << 20) - 10));
    assertEquals(under.status, 400, under.body);
    // A declared length of 200 MB is refused at once, without sending it.
    const c1 = await raw(node);
    await c1.write(new TextEncoder().encode(
      "POST /container/deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n\r\n",
    ));
    const r1 = await readAll(c1, 3000);
    assertMatch(r1.text, /^HTTP\/1\.1 413 /);
    // Partial head and partial body time out with 408.
    const c2 = await raw(node);
    await c2.write(new TextEncoder().encode("GET /status HTTP/1.1\r\nHost: x\r\n"));
    const c3 = await raw(node);
    await c3.write(new TextEncoder().encode(
      'POST /container/undeploy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"serviceName"',
    ));
    const [r2, r3] = await Promise.all([readAll(c2, 6000), readAll(c3, 6000)]);
    for (const r of [r2, r3]) {
      assertMatch(r.text, /^HTTP\/1\.1 408 /);
      assert(r.closedAfterMs >= 1000 && r.closedAfterMs < 4000, `closed after ${r.closedAfterMs} ms`);
    }
    // A slowloris dripping one byte every 300 ms is cut at the request deadline too.
    const c4 = await raw(node);
    const drip = (async () => {
      for (const ch of "GET /status HTTP/1.1\r\nX-Slow: " + "a".repeat(100)) {
        try {
          await c4.write(new TextEncoder().encode(ch));
        } catch {
          return;
        }
        await sleep(300);
      }
    })();
    const r4 = await readAll(c4, 6000);
    await drip;
    assertMatch(r4.text, /^HTTP\/1\.1 408 /);
    // A flood of 200 open partial requests (over the cap of 50): /status keeps answering.
    const flood: Deno.UnixConn[] = [];
    for (let i = 0; i < 200; i++) {
      const c = await raw(node);
      await c.write(new TextEncoder().encode("GET /status HTTP/1.1\r\n"));
      flood.push(c);
    }
    for (let i = 0; i < 5; i++) {
      const t = Date.now();
      assertEquals((await node.api.request("GET", "/status")).status, 200);
      assert(Date.now() - t < 1000, "status answered quickly");
    }
    for (const c of flood) {
      try {
        c.close();
      } catch { /* closed by the gate */ }
    }
    // An idle keep-alive connection is closed after the idle timeout; normal requests still work.
    const c5 = await raw(node);
    await c5.write(new TextEncoder().encode("GET /status HTTP/1.1\r\nHost: x\r\n\r\n"));
    const r5 = await readAll(c5, 8000);
    assertMatch(r5.text, /^HTTP\/1\.1 200 /);
    assert(r5.closedAfterMs >= 2500 && r5.closedAfterMs < 6000, `idle close after ${r5.closedAfterMs} ms`);
    const st = (await node.api.getJson("/status")) as { registered: boolean };
    assertEquals(st.registered, true);
  } catch (e) {
    console.error((await node.log()).slice(-4000));
    throw e;
  } finally {
    await node.stop();
    await cleanupAll();
  }
});
