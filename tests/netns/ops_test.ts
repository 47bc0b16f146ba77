/**
 * Operations: metrics over TCP scraped from inside the node's namespace and checked with
 * `promtool check metrics`, `/healthz` 503 before `/register` and 200 after, the unix-socket
 * `/metrics` still served, `status` and `peers` as readable text, the control plane's own metrics
 * listener (JSON log lines), and a peer that stops answering (its tunnel port blocked with iptables) and comes back.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { createNs, deleteNs, isRoot, run } from "../helpers/netns.ts";
import { deployBody, jobName, TestContainer, TOOL } from "../helpers/node.ts";
import { eventually, twoNodeTable, withCluster, withNode } from "../helpers/setup.ts";
import { promtool } from "../helpers/promtool.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const ADDR = "127.0.0.1:9464";

/** GET `url` with curl inside `ns`: status and body. */
async function curlIn(ns: string, url: string): Promise<{ status: number; body: string }> {
  const r = await run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "5", "-w", "\n%{http_code}", url]);
  const i = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i) };
}

/** Runs the CLI (`netmanager …`) and returns exit code and output. */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", `${ROOT}main.ts`, ...args] })
    .output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

function sample(text: string, line: RegExp): number | undefined {
  for (const l of text.split("\n")) {
    const m = line.exec(l);
    if (m) return Number(l.slice(l.lastIndexOf(" ") + 1));
  }
  return undefined;
}

Deno.test({
  name:
    "ops: node metrics over TCP (promtool clean), /healthz 503 → 200 on /register, status and peers readable",
  ...opts,
}, async () => {
  await withNode(async (node, cs) => {
    // Standalone, before /register: not ready, but the metrics are there.
    const h0 = await curlIn(node.ns, `http://${ADDR}/healthz`);
    assertEquals(h0.status, 503, h0.body);
    assertMatch(h0.body, /not registered/);
    const m0 = await curlIn(node.ns, `http://${ADDR}/metrics`);
    assertEquals(m0.status, 200);
    assertMatch(m0.body, /^netmanager_build_info\{version="[^"]+",deno="[^"]+",component="node"\} 1$/m);
    assertEquals(sample(m0.body, /^netmanager_registered /), 0);
    assertEquals(sample(m0.body, /^netmanager_data_plane_running /), 0);
    assert(sample(m0.body, /^process_resident_memory_bytes /)! > 1e6, "process metrics present");
    const p0 = await promtool(m0.body);
    assertEquals(p0.code, 0, p0.out);
    // Not reachable from outside the namespace (bound to its loopback): the root namespace has no listener.
    const outside = await run(["curl", "-s", "-m", "2", `http://${ADDR}/metrics`]);
    assert(
      !outside.stdout.includes("netmanager_build_info"),
      "root namespace must not reach the node's listener",
    );

    assertEquals((await node.register()).status, 200);
    const end = Date.now() + 10_000;
    let h1 = await curlIn(node.ns, `http://${ADDR}/healthz`);
    while (h1.status !== 200 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 100));
      h1 = await curlIn(node.ns, `http://${ADDR}/healthz`);
    }
    assertEquals(h1.status, 200, h1.body);

    // A deploy lands in the histogram and the instances gauge; ping through the bridge moves counters.
    const job = jobName("ops");
    const c = await TestContainer.start();
    cs.push(c);
    const r = await node.api.post("/container/deploy", deployBody(c.pid, job, 0));
    assertEquals(r.status, 200, r.body);
    const m1 = await curlIn(node.ns, `http://${ADDR}/metrics`);
    assertEquals(sample(m1.body, /^netmanager_registered /), 1);
    assertEquals(sample(m1.body, /^netmanager_data_plane_running /), 1);
    assertEquals(sample(m1.body, /^netmanager_instances /), 1);
    assertEquals(
      sample(m1.body, /^netmanager_deploy_duration_seconds_count\{kind="container",result="ok"\} /),
      1,
      m1.body,
    );
    assertMatch(m1.body, /^netmanager_packets_total\{direction="tun_rx"\} \d+$/m);
    const p1 = await promtool(m1.body);
    assertEquals(p1.code, 0, p1.out);

    // The unix socket serves the same registry.
    const viaSocket = await node.api.request("GET", "/metrics");
    assertEquals(viaSocket.status, 200);
    assertMatch(viaSocket.body, /^netmanager_instances 1$/m);

    // status / peers: text for people, one error style and exit 1 for a dead socket.
    const st = await cli(["status", "--socket", node.socket]);
    assertEquals(st.code, 0, st.stderr);
    assertMatch(st.stdout, /^node\s+worker1 \(standalone, registered\)$/m);
    assertMatch(st.stdout, /^data plane\s+running$/m);
    assertMatch(st.stdout, /^instances\s+1$/m);
    assert(!st.stdout.includes("{"), `no raw JSON in status:\n${st.stdout}`);
    const pe = await cli(["peers", "--socket", node.socket]);
    assertEquals(pe.code, 0, pe.stderr);
    assertMatch(pe.stdout, /no peers yet/);
    const dead = await cli(["peers", "--socket", `${node.dir}/missing.sock`]);
    assertEquals(dead.code, 1);
    assertMatch(dead.stderr, /^netmanager: cannot reach netmanager at .*missing\.sock/);
    const usage = await cli(["peers", "--no-such-flag"]);
    assertEquals(usage.code, 2);
    assertMatch(usage.stderr, /^netmanager: unknown option '--no-such-flag'/);
  }, { args: ["--metrics-addr", ADDR] });
});

Deno.test({
  name: "ops: control plane /metrics and /healthz over TCP, promtool clean",
  ...opts,
}, async () => {
  const ns = await createNs("c");
  const dir = await Deno.makeTempDir({ prefix: "nmtest-ctl-" });
  const proc = new Deno.Command("nsenter", {
    args: [
      `--net=/run/netns/${ns}`,
      Deno.execPath(),
      "run",
      "-A",
      `${ROOT}main.ts`,
      "control",
      "--state-dir",
      dir,
      "--mqtt-host",
      "127.0.0.1",
      "--metrics-addr",
      "127.0.0.1:9465",
      "--log-format",
      "json",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const dec = new TextDecoder();
  const reading = (async () => {
    for await (const chunk of proc.stderr) log.push(dec.decode(chunk));
  })();
  try {
    let h = { status: 0, body: "" };
    const end = Date.now() + 20_000;
    while (h.status !== 200 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 200));
      h = await curlIn(ns, "http://127.0.0.1:9465/healthz");
    }
    assertEquals(h.status, 200, `${h.body}\n${log.join("")}`);
    const m = await curlIn(ns, "http://127.0.0.1:9465/metrics");
    assertEquals(m.status, 200);
    assertMatch(m.body, /^netmanager_build_info\{.*component="control"\} 1$/m);
    assertEquals(sample(m.body, /^netmanager_control_nodes /), 0);
    assertEquals(sample(m.body, /^netmanager_control_ready /), 1);
    assertMatch(m.body, /^netmanager_control_instances\{state="deployed"\} 0$/m);
    const p = await promtool(m.body);
    assertEquals(p.code, 0, p.out);
    assertEquals((await curlIn(ns, "http://127.0.0.1:9465/nope")).status, 404);
    // --log-format json: every line is one JSON object.
    const lines = log.join("").split("\n").filter((l) => l !== "");
    assert(lines.length >= 2, log.join(""));
    for (const l of lines) {
      const j = JSON.parse(l) as Record<string, unknown>;
      assert(typeof j.time === "string" && typeof j.level === "string" && typeof j.msg === "string", l);
    }
    assert(lines.some((l) => JSON.parse(l).msg === "metrics listening"));
  } finally {
    try {
      proc.kill("SIGTERM");
    } catch { /* gone */ }
    await proc.status;
    await reading.catch(() => {});
    await deleteNs(ns);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test({
  name: "ops: control plane /healthz is 503 while its external broker is down, 200 again after",
  ...opts,
}, async () => {
  const ns = await createNs("c");
  const dir = await Deno.makeTempDir({ prefix: "nmtest-ctl-" });
  await Deno.writeTextFile(
    `${dir}/mosquitto.conf`,
    "listener 11883 127.0.0.1\nallow_anonymous true\npersistence false\n",
  );
  const spawn = (argv: string[]) =>
    new Deno.Command("nsenter", { args: [`--net=/run/netns/${ns}`, ...argv], stdout: "null", stderr: "null" })
      .spawn();
  const stop = async (p: Deno.ChildProcess | undefined) => {
    if (!p) return;
    try {
      p.kill("SIGTERM");
    } catch { /* gone */ }
    await p.status;
  };
  let broker: Deno.ChildProcess | undefined = spawn(["mosquitto", "-c", `${dir}/mosquitto.conf`]);
  let control: Deno.ChildProcess | undefined;
  const health = () => curlIn(ns, "http://127.0.0.1:9466/healthz");
  try {
    await new Promise((r) => setTimeout(r, 500));
    control = spawn([
      Deno.execPath(),
      "run",
      "-A",
      `${ROOT}main.ts`,
      "control",
      "--state-dir",
      dir,
      "--broker",
      "mqtt://127.0.0.1:11883",
      "--http-port",
      "10101",
      "--metrics-addr",
      "127.0.0.1:9466",
    ]);
    await eventually(async () => (await health()).status === 200, Boolean, 20_000, "ready");
    await stop(broker);
    broker = undefined;
    await eventually(
      async () => (await health()).status === 503,
      Boolean,
      10_000,
      "not ready while the broker is down",
    );
    const h = await health();
    assertMatch(h.body, /^not ready: not connected to the MQTT broker mqtt:\/\/127\.0\.0\.1:11883/);
    const m = await curlIn(ns, "http://127.0.0.1:9466/metrics");
    assertMatch(m.body, /^netmanager_control_ready 0$/m);
    broker = spawn(["mosquitto", "-c", `${dir}/mosquitto.conf`]);
    await eventually(async () => (await health()).status === 200, Boolean, 20_000, "ready again");
  } finally {
    await stop(control);
    await stop(broker);
    await deleteNs(ns);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

const CLI_JOB = "app.ns.opscli.ns";
const WEB_JOB = "app.ns.opsweb.ns";

Deno.test({
  name: "ops: a peer whose tunnel port is blocked is logged as silent, then as answering again; peers table",
  ...opts,
}, async () => {
  // HELLO refreshes every 1.5 s instead of 30 s, so forgetting a silent peer takes seconds.
  Deno.env.set("NETMANAGER_TEST_HELLO_REFRESH_MS", "1500");
  await withCluster(2, twoNodeTable(CLI_JOB, WEB_JOB), async (c) => {
    Deno.env.delete("NETMANAGER_TEST_HELLO_REFRESH_MS");
    const node1 = c.nodes[0].node;
    const node2 = c.nodes[1].node;
    await c.deploy(1, CLI_JOB, 0);
    await c.deploy(2, WEB_JOB, 0, [...TOOL, "servers", "80", "web0"]);
    await eventually(
      async () => {
        const r = await c.containers[0].exec([...TOOL, "tcp-client", "10.30.0.1", "80", "x"]);
        return r.code === 0 && r.stdout.trim() === "web0:x";
      },
      Boolean,
      10_000,
      "traffic through the ServiceIP",
    );
    await eventually(
      async () => /wire mode changed.*"from":"raw"/.test(await node1.log()),
      Boolean,
      5000,
      "wire mode logged",
    );

    // Traffic to a ServiceIP nobody knows: one warning naming it (not one per packet).
    await c.containers[0].exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.30.99.99"]);
    await eventually(
      async () =>
        /unknown ServiceIP.*"serviceIp":"10\.30\.99\.99","fromInstance":"app\.ns\.opscli\.ns#0"/.test(
          await node1.log(),
        ),
      Boolean,
      5000,
      "unknown ServiceIP warning",
    );
    assertEquals((await node1.log()).split("\n").filter((l) => l.includes("unknown ServiceIP")).length, 1);

    // The peers table on node 1 names worker2, its mode, its RTT (measured for every peer, though the
    // policy is round robin) and a recent last-seen; the metrics carry the RTT too.
    await eventually(
      async () => {
        const pe = await cli(["peers", "--socket", node1.socket]);
        return /^worker2\s+192\.168\.77\.2:50103\s+(fast|jumbo)\s+\d+(\.\d+)? ms\s+(just now|\d+s ago)/m
          .test(pe.stdout);
      },
      Boolean,
      8000,
      "peer listed with its RTT",
    );
    const m = await node1.api.request("GET", "/metrics");
    assertMatch(
      m.body,
      /^netmanager_peer_rtt_seconds\{node="worker2",endpoint="192\.168\.77\.2:50103"\} 0\.\d+/m,
    );

    // ping: ServiceIP → candidate instance → node → wire mode → RTT and probe loss; unknown targets fail.
    const pg = await cli(["ping", "--socket", node1.socket, "--wait", "2", "10.30.0.1"]);
    assertEquals(pg.code, 0, pg.stdout + pg.stderr);
    assertMatch(
      pg.stdout,
      /^10\.30\.0\.1: RR ServiceIP of app\.ns\.opsweb\.ns \(policy RoundRobin\), 1 candidate/,
    );
    assertMatch(
      pg.stdout,
      /^app\.ns\.opsweb\.ns#0\s+10\.18\.0\.130\s+worker2 192\.168\.77\.2:50103\s+(fast|jumbo)\s+[\d.]+ ms\s+\S.*ok, 0\/\d probes lost in 2s$/m,
    );
    // ping by DNS name: resolved by the node's resolver, then the same path.
    const byName = await cli(["ping", "--socket", node1.socket, "--wait", "1", "opsweb.ns.app.ns.local"]);
    assertEquals(byName.code, 0, byName.stdout + byName.stderr);
    assertMatch(byName.stdout, /^opsweb\.ns\.app\.ns\.local → 10\.30\.0\.1 \(DNS, from table\)$/m);
    assertMatch(byName.stdout, /^10\.30\.0\.1: RR ServiceIP of app\.ns\.opsweb\.ns \(policy RoundRobin\)/m);
    assertMatch(byName.stdout, /^app\.ns\.opsweb\.ns#0\s+10\.18\.0\.130\s+worker2 192\.168\.77\.2:50103\s/m);
    const byInstance = await cli([
      "ping",
      "--socket",
      node1.socket,
      "--wait",
      "0",
      "Instance-0.OpsWeb.ns.app.ns.local.",
    ]);
    assertEquals(byInstance.code, 0, byInstance.stdout + byInstance.stderr);
    assertMatch(
      byInstance.stdout,
      /→ 10\.30\.0\.2 \(DNS, from table\)\n10\.30\.0\.2: \S+ ServiceIP of app\.ns\.opsweb\.ns/,
    );
    const noName = await cli(["ping", "--socket", node1.socket, "--wait", "0", "nosuch.ns.app.ns.local"]);
    assertEquals(noName.code, 1, noName.stdout);
    assertMatch(noName.stdout, /^nosuch\.ns\.app\.ns\.local: .*\(DNS (NXDOMAIN|SERVFAIL)/);
    const nobody = await cli(["ping", "--socket", node1.socket, "--wait", "0", "10.30.99.98"]);
    assertEquals(nobody.code, 1);
    assertMatch(nobody.stdout, /not in this node's table/);

    // Node 2's tunnel port goes dark both ways: node 1's HELLOs go unanswered, nothing comes back.
    const block = [["INPUT", "--dport"], ["OUTPUT", "--sport"]];
    for (const [chain, port] of block) {
      await node2.exec(["iptables", "-I", chain, "-p", "udp", port, "50103", "-j", "DROP"]);
    }
    await eventually(
      async () => /peer stopped answering HELLOs.*"endpoint":"192\.168\.77\.2:50103"/.test(await node1.log()),
      Boolean,
      30_000,
      "silent peer logged",
    );
    const pe = await cli(["peers", "--socket", node1.socket]);
    assertMatch(pe.stdout, /^worker2\s+192\.168\.77\.2:50103\s+raw \(no HELLO answer\)/m);
    assert(/wire mode changed.*"to":"raw"/.test(await node1.log()), "fall-back to raw logged");
    const dead = await cli(["ping", "--socket", node1.socket, "--wait", "2", "10.30.0.2"]);
    assertEquals(dead.code, 1, dead.stdout);
    assertMatch(dead.stdout, /worker2 192\.168\.77\.2:50103\s+raw\s.*(NOT ANSWERING HELLOs|NO ANSWER)/);

    for (const [chain, port] of block) {
      await node2.exec(["iptables", "-D", chain, "-p", "udp", port, "50103", "-j", "DROP"]);
    }
    await eventually(
      async () => /peer answering again.*"endpoint":"192\.168\.77\.2:50103"/.test(await node1.log()),
      Boolean,
      40_000,
      "peer back logged",
    );
    const silentLines = (await node1.log()).split("\n").filter((l) => l.includes("peer stopped answering"));
    assertEquals(silentLines.length, 1, "logged once, not per HELLO");
  });
});
