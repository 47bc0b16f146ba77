/**
 * The node daemon in its own namespace, driven over its unix socket with NodeEngine-exact bodies;
 * "containers" are processes in fresh namespaces. Checks addresses, routes, rules, traffic, bad
 * input, clean undeploy, crash recovery and `netmanager clean`.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, isRoot, run } from "../helpers/netns.ts";
import { deployBody, jobName, linkNames, ruleDump, TestContainer, TestNode, TOOL } from "../helpers/node.ts";
import { eventually, nodeCli, nodeFileArgs, withNode } from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "daemon: deploy two containers, addresses/routes/rules, TCP over the bridge, port mapping",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    assertEquals((await node.register()).status, 200);
    const job = jobName("a");
    const a = await TestContainer.start();
    const b = await TestContainer.start([...TOOL, "tcp-echo-server", "80", "B"]);
    cs.push(a, b);
    const ra = await node.api.post("/container/deploy", deployBody(a.pid, job, 0));
    assertEquals(ra.status, 200, ra.body);
    assertEquals(ra.json, { serviceName: job, nsAddress: "10.18.0.66", nsAddressv6: "fc00::a:1200:4002" });
    const rb = await node.api.post("/container/deploy", deployBody(b.pid, job, 1, "8080:80"));
    assertEquals(rb.status, 200, rb.body);
    assertEquals((rb.json as { nsAddress: string }).nsAddress, "10.18.0.67");

    // Inside A: address on the peer, default routes via the bridge (v4 and v6).
    const addrs = (await a.exec(["ip", "-j", "addr", "show"])).stdout;
    assertMatch(addrs, /"local":"10\.18\.0\.66","prefixlen":26/);
    assertMatch(addrs, /"local":"fc00::a:1200:4002","prefixlen":120/);
    assertMatch(
      (await a.exec(["ip", "route", "show", "default"])).stdout,
      /default via 10\.18\.0\.65 dev vethc/,
    );
    assertMatch(
      (await a.exec(["ip", "-6", "route", "show", "default"])).stdout,
      /default via fc00::a:1200:4001/,
    );
    // Rules: forward rules for both veths, DNAT for the mapping, hooks in place.
    const rules = await ruleDump(node.ns);
    assertMatch(rules, /-A OAKESTRA-FWD -i vethh\w+ -o goProxyBridge -j ACCEPT/);
    assertMatch(rules, /-A PREROUTING -j OAKESTRA/);
    assertMatch(rules, /-A OUTPUT -j OAKESTRA/);
    assertMatch(rules, /--dport 8080 -j DNAT --to-destination 10\.18\.0\.67:80/);
    assertMatch(rules, /--dport 8080 -j DNAT --to-destination \[fc00::a:1200:4003\]:80/);

    // TCP from A to B over the bridge, IPv4 and IPv6.
    await eventually(
      async () =>
        (await a.exec([...TOOL, "tcp-client", "10.18.0.67", "80", "hi"])).stdout.includes(
          "B:hi",
        ),
      Boolean,
      5000,
      "B answers A over the bridge",
    );
    const v6 = await a.exec([...TOOL, "tcp-client", "fc00::a:1200:4003", "80", "six"]);
    assertEquals(v6.stdout.trim(), "B:six", v6.stderr);
    // Port mapping: from the node itself to its bridge address:8080 reaches B:80.
    const viaMap = await run([
      "ip",
      "netns",
      "exec",
      node.ns,
      ...TOOL,
      "tcp-client",
      "10.18.0.65",
      "8080",
      "map",
    ]);
    assertEquals(viaMap.stdout.trim(), "B:map", viaMap.stderr);

    // Inspection routes.
    const inst = (await node.api.getJson("/instances")) as Array<{ nsAddress: string }>;
    assertEquals(inst.map((i) => i.nsAddress).sort(), ["10.18.0.66", "10.18.0.67"]);
    const st = (await node.api.getJson("/status")) as Record<string, unknown>;
    assertEquals([st.registered, st.workerId, st.instances, st.mode], [true, "worker1", 2, "standalone"]);
    assertEquals(await node.api.getJson("/table"), []);
  });
});

Deno.test({
  name: "daemon: API errors — 404/405, deploy before register, bad bodies change nothing",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    const c = await TestContainer.start();
    cs.push(c);
    const job = jobName("e");
    assertEquals((await node.api.request("GET", "/nope")).status, 404);
    assertEquals((await node.api.request("GET", "/container/deploy")).status, 405);
    assertEquals((await node.api.request("POST", "/status", {})).status, 405);
    const early = await node.api.post("/container/deploy", deployBody(c.pid, job, 0));
    assertEquals(early.status, 400);
    assertMatch(early.body, /register/);
    assertEquals((await node.register("w1")).status, 200);
    assertEquals((await node.register("w1")).status, 200, "same id again is fine");
    assertEquals((await node.register("w2")).status, 400, "another id is refused");

    const linksBefore = await linkNames(node.ns);
    const rulesBefore = await ruleDump(node.ns);
    const bad: Array<[unknown, RegExp]> = [
      ["{not json", /malformed JSON/],
      [[1, 2], /JSON object/],
      [{ serviceName: job, instanceNumber: 0 }, /pid/],
      [{ pid: "12", serviceName: job, instanceNumber: 0 }, /pid must be a number/],
      [{ pid: c.pid, serviceName: job, instanceNumber: -1 }, /instanceNumber/],
      [{ pid: c.pid, serviceName: job, instanceNumber: 1.5 }, /instanceNumber/],
      [{ pid: c.pid, serviceName: 5, instanceNumber: 0 }, /serviceName/],
      [deployBody(c.pid, "not.a.job", 0), /invalid job name/],
      [deployBody(c.pid, "a-b.c.d.e", 0), /invalid job name/],
      [deployBody(c.pid, job, 0, "80:80-80"), /invalid port mapping/],
      [deployBody(c.pid, job, 0, "hello"), /invalid port mapping/],
      [deployBody(c.pid, job, 0, "50103/udp"), /tunnel/],
      [deployBody(999999, job, 0), /pid 999999/],
    ];
    for (const [body, re] of bad) {
      const r = await node.api.post("/container/deploy", body);
      assertEquals(r.status, 400, `${JSON.stringify(body)} → ${r.status} ${r.body}`);
      assertMatch(r.body, re);
      assert(typeof (r.json as { error?: unknown }).error === "string");
    }
    const field = await node.api.post("/container/deploy", { serviceName: job, instanceNumber: 0 });
    assertEquals((field.json as { field?: string }).field, "pid");
    assertEquals(await linkNames(node.ns), linksBefore);
    assertEquals(await ruleDump(node.ns), rulesBefore);
    assertEquals(await node.api.getJson("/instances"), []);
    // Unknown instance on undeploy → 200 (as Oakestra).
    assertEquals(
      (await node.api.post("/container/undeploy", { serviceName: job, instanceNumber: 7 })).status,
      200,
    );
    assertEquals((await node.api.post("/container/undeploy", { serviceName: job })).status, 400);
  });
});

Deno.test(
  { name: "daemon: undeploy leaves no trace (links and rules equal before/after)", ...opts },
  async () => {
    await withNode(async (node, cs) => {
      await node.register();
      const c = await TestContainer.start();
      cs.push(c);
      const job = jobName("u");
      const links0 = await linkNames(node.ns);
      const rules0 = await ruleDump(node.ns);
      const r = await node.api.post("/container/deploy", deployBody(c.pid, job, 3, "8081:81;9000:9001/udp"));
      assertEquals(r.status, 200, r.body);
      assert((await linkNames(node.ns)).length === links0.length + 1);
      assert((await ruleDump(node.ns)) !== rules0);
      const u = await node.api.post("/docker/undeploy", {
        serviceName: job,
        instanceNumber: 3,
        pid: -1,
        portMappings: "",
      });
      assertEquals(u.status, 200);
      assertEquals(((await node.api.getJson("/instances")) as unknown[]).length, 0, "detached at once");
      await node.settled();
      assertEquals(await linkNames(node.ns), links0);
      assertEquals(await ruleDump(node.ns), rules0);
      assertEquals((await c.exec(["ip", "-j", "link", "show"])).stdout.includes("vethc"), false);
      // The address is reused.
      const again = await node.api.post("/container/deploy", deployBody(c.pid, job, 3));
      assertEquals((again.json as { nsAddress: string }).nsAddress, "10.18.0.66");
    });
  },
);

Deno.test({
  name:
    "daemon: 60 concurrent deploys get unique addresses; beyond capacity → subnet exhausted, nothing changes",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    await node.register();
    for (let i = 0; i < 62; i++) cs.push(await TestContainer.start());
    const job = jobName("c");
    const res = await Promise.all(
      cs.slice(0, 60).map((c, i) => node.api.post("/container/deploy", deployBody(c.pid, job, i))),
    );
    for (const r of res) assertEquals(r.status, 200, r.body);
    const v4 = new Set(res.map((r) => (r.json as { nsAddress: string }).nsAddress));
    const v6 = new Set(res.map((r) => (r.json as { nsAddressv6: string }).nsAddressv6));
    assertEquals(v4.size, 60);
    assertEquals(v6.size, 60);
    const last = await node.api.post("/container/deploy", deployBody(cs[60].pid, job, 60));
    assertEquals(last.status, 200, last.body);
    assertEquals((last.json as { nsAddress: string }).nsAddress, "10.18.0.126");
    const links = await linkNames(node.ns);
    const rules = await ruleDump(node.ns);
    const over = await node.api.post("/container/deploy", deployBody(cs[61].pid, job, 61));
    assertEquals(over.status, 500);
    assertMatch(over.body, /subnet exhausted/);
    assertEquals(await linkNames(node.ns), links);
    assertEquals(await ruleDump(node.ns), rules);
    assertEquals(((await node.api.getJson("/instances")) as unknown[]).length, 61);
  });
});

Deno.test({
  name: "daemon: SIGKILL + restart reconciles (adopts live, removes vanished); SIGTERM keeps networking",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    await node.register();
    const job = jobName("r");
    const a = await TestContainer.start([...TOOL, "tcp-echo-server", "80", "A"]);
    const b = await TestContainer.start();
    cs.push(a, b);
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(a.pid, job, 0, "7000:80"))).status,
      200,
    );
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(b.pid, job, 1, "7001:80"))).status,
      200,
    );
    await node.signal("SIGKILL");
    await b.stop(); // its namespace and veth vanish while the daemon is down
    await node.startDaemon();
    const st = (await node.api.getJson("/status")) as Record<string, unknown>;
    assertEquals([st.registered, st.workerId, st.instances], [true, "worker1", 1]);
    const rules = await ruleDump(node.ns);
    assertMatch(rules, /--dport 7000 -j DNAT/);
    assertEquals(/--dport 7001 /.test(rules), false, "rules of the vanished instance are removed");
    assertEquals(rules.match(/-A PREROUTING -j OAKESTRA/g)?.length, 2, "one hook per family, no duplicates");
    // The survivor still works through its mapping.
    await eventually(
      async () => {
        const r = await run([
          "ip",
          "netns",
          "exec",
          node.ns,
          ...TOOL,
          "tcp-client",
          "10.18.0.65",
          "7000",
          "x",
        ]);
        return r.stdout.includes("A:x");
      },
      Boolean,
      5000,
      "the survivor answers through its mapping",
    );
    // The vanished instance's address is free again.
    const c = await TestContainer.start();
    cs.push(c);
    const r = await node.api.post("/container/deploy", deployBody(c.pid, job, 2));
    assertEquals((r.json as { nsAddress: string }).nsAddress, "10.18.0.67");
    // SIGTERM: exit 0, instance networking kept, adopted again on start.
    assertEquals(await node.signal("SIGTERM"), 0);
    assert((await linkNames(node.ns)).includes("goProxyBridge"));
    assertMatch((await a.exec(["ip", "-br", "addr"])).stdout, /10\.18\.0\.66/);
    await node.startDaemon();
    assertEquals(((await node.api.getJson("/status")) as { instances: number }).instances, 2);
    // Undeploy still works after the restarts.
    assertEquals(
      (await node.api.post("/container/undeploy", { serviceName: job, instanceNumber: 0 })).status,
      200,
    );
    await node.settled();
    assertEquals(/--dport 7000 /.test(await ruleDump(node.ns)), false);
  });
});

Deno.test({
  name: "daemon: unikernel deploy uses a named netns with virbr0/tap0; undeploy removes it",
  ...opts,
}, async () => {
  await withNode(async (node) => {
    await node.register();
    const job = jobName("k");
    const r = await node.api.post("/unikernel/deploy", {
      pid: 0,
      serviceName: job,
      instanceNumber: 0,
      portMappings: "",
    });
    assertEquals(r.status, 200, r.body);
    const body = r.json as { nsAddress: string; nsAddressv6: string };
    assertEquals(body.nsAddress, "10.18.0.66");
    assertEquals(body.nsAddressv6, "fc00::a:1200:4002", 'a real IPv6 address, not "<nil>"');
    const ns = `${job}.instance.0`;
    const list = (await run(["ip", "netns", "list"])).stdout;
    assert(list.includes(ns), list);
    const links = (await run(["ip", "-n", ns, "-br", "link"])).stdout;
    assertMatch(links, /virbr0/);
    assertMatch(links, /tap0/);
    assertMatch((await run(["ip", "-n", ns, "-br", "addr"])).stdout, /10\.18\.0\.66\/26/);
    assertMatch(
      (await run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"])).stdout,
      /DNAT --to-destination 192\.168\.1\.2/,
    );
    assertEquals(
      (await node.api.post("/unikernel/undeploy", { serviceName: job, instanceNumber: 0 })).status,
      200,
    );
    await node.settled();
    assertEquals((await run(["ip", "netns", "list"])).stdout.includes(ns), false);
  });
});

Deno.test({ name: "cli: netmanager clean removes everything the node created", ...opts }, async () => {
  await withNode(async (node, cs) => {
    await node.register();
    const c = await TestContainer.start();
    cs.push(c);
    const job = jobName("x");
    assertEquals(
      (await node.api.post("/container/deploy", deployBody(c.pid, job, 0, "8080:80"))).status,
      200,
    );
    assertEquals(
      (await node.api.post("/unikernel/deploy", {
        pid: 0,
        serviceName: job,
        instanceNumber: 1,
        portMappings: "",
      })).status,
      200,
    );
    // clean refuses while the daemon runs
    const cli = (args: string[]) => nodeCli(node, args);
    const common = nodeFileArgs(node);
    const refused = await cli(["clean", ...common]);
    assertEquals(refused.code, 1);
    assertMatch(refused.stderr, /daemon is running/);
    await node.signal("SIGKILL");
    const out = await cli(["clean", "--json", ...common]);
    assertEquals(out.code, 0, out.stderr);
    const report = JSON.parse(out.stdout);
    assertEquals(report.instances, 2);
    assertEquals(await linkNames(node.ns), ["lo"]);
    const rules = await ruleDump(node.ns);
    assertEquals(/OAKESTRA/.test(rules), false, rules);
    assertEquals((await run(["ip", "netns", "list"])).stdout.includes(`${job}.instance.1`), false);
    assertEquals((await c.exec(["ip", "-br", "link"])).stdout.includes("vethc"), false);
    let stateGone = false;
    try {
      await Deno.stat(`${node.dir}/state/state.json`);
    } catch {
      stateGone = true;
    }
    assert(stateGone);
  });
});

Deno.test({
  name: "daemon: cluster mode without a reachable cluster — /register fails clearly, nothing set up",
  ...opts,
}, async () => {
  const node = await TestNode.startWith({ subnet: "" });
  try {
    const links0 = await linkNames(node.ns);
    const none = await node.api.post("/register", { client_id: "w1", cluster_address: "" });
    assertEquals(none.status, 400);
    assertMatch(none.body, /no cluster address/);
    const refused = await node.api.post("/register", { client_id: "w1", cluster_address: "127.0.0.1" });
    assertEquals(refused.status, 503);
    assertMatch(refused.body, /ECONNREFUSED|refused|unreachable|cannot connect/i);
    const st = (await node.api.getJson("/status")) as Record<string, unknown>;
    assertEquals([st.registered, st.mode, st.subnet], [false, "cluster", null]);
    assertEquals(await linkNames(node.ns), links0, "no bridge, no TUN");
    const early = await node.api.post("/container/deploy", deployBody(1, jobName("z"), 0));
    assertEquals(early.status, 400);
  } finally {
    await node.stop();
    await cleanupAll();
  }
});

Deno.test({
  name: "daemon: a malformed NETMANAGER_BENCH_BURN_US stops the start with a clear error; a valid one starts",
  ...opts,
}, async () => {
  let err = "";
  try {
    const n = await TestNode.startWith({ env: { NETMANAGER_BENCH_BURN_US: "fast" } });
    await n.stop(); // (not reached when the check holds)
  } catch (e) {
    err = String(e);
  }
  assertMatch(err, /daemon exited early/);
  assertMatch(err, /NETMANAGER_BENCH_BURN_US must be "tx,rx" in microseconds .* not "fast"/);
  const node = await TestNode.startWith({ env: { NETMANAGER_BENCH_BURN_US: "0,0" } });
  try {
    assertEquals((await node.register()).status, 200, "the data plane starts with a valid value");
  } finally {
    await node.stop();
    await cleanupAll();
  }
});
