/**
 * Health-aware balancing end to end in namespaces (issue 18): a control plane and three nodes, the
 * client on n1, instances of one service on n2 and n3. The kernel has no netem, so n1's tunnel
 * datagrams to n2 and n3 go through a delaying TUN in n1's namespace (tests/helpers/delay_tun.ts):
 * - the Closest ServiceIP sends new flows to the nearer node; swapping the delays moves new flows
 *   within 5 s while an established TCP stream stays; the IPv6 Closest ServiceIP does the same;
 * - blocking n3's tunnel port: within 3 s new connections through the RR ServiceIP all reach n2,
 *   n3 is shown down (status, metrics) and logged once; unblocked, RR alternates again;
 * - a static-table cluster with an Oakestra-style raw peer (it answers no HELLO/PROBE) and `Closest`
 *   entries in its table: traffic works and the raw peer is never marked down; a local instance whose
 *   process (and namespace) died is skipped by new flows.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, isRoot } from "../helpers/netns.ts";
import { type SimInstance, type SimNode, World } from "../../src/demo/world.ts";
import { runTool } from "../../src/sys/command.ts";
import { addWebAndClient, ask, CLI, deploy, threeNodes, WEB } from "../helpers/world.ts";
import { TOOL } from "../helpers/node.ts";
import { clientEntry, eventually, instanceOn, WEB_RR } from "../helpers/setup.ts";
import { type QueryResult, TestCluster } from "../helpers/cluster.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const N2 = "192.168.77.2";
const N3 = "192.168.77.3";
const DELAY = new URL("../helpers/delay_tun.ts", import.meta.url).pathname;
const FAR_MS = 25;

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await runTool(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout.trim();
}

interface PeerRow {
  endpoint: string;
  rttMs?: number;
  health?: string;
  downCause?: string;
  answering: boolean;
}

async function peersOf(node: SimNode): Promise<PeerRow[]> {
  return ((await node.api.getJson("/status")) as { peers: PeerRow[] }).peers;
}

const peer = (rows: PeerRow[], ip: string) => rows.find((p) => p.endpoint === `${ip}:50103`);

/** A delaying path from node `ns` to n2 and n3 (see the module). Returns the delay setter and a stopper. */
async function delayPath(ns: string, dir: string) {
  const file = `${dir}/delays.json`;
  const set = (d: Record<string, number>) => Deno.writeTextFileSync(file, JSON.stringify(d));
  set({ [N2]: 0, [N3]: 0 });
  const child = new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${ns}`, Deno.execPath(), "run", "-A", DELAY, "dly0", file],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  reader.releaseLock();
  assertMatch(first, /ready/);
  await must("ip", ["-n", ns, "link", "set", "dly0", "up"]);
  await must("ip", [
    "netns",
    "exec",
    ns,
    "sysctl",
    "-qw",
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.dly0.rp_filter=0",
    "net.ipv4.conf.dly0.accept_local=1",
  ]);
  await must("ip", ["netns", "exec", ns, "iptables", "-I", "FORWARD", "-i", "dly0", "-j", "ACCEPT"]);
  for (const ip of [N2, N3]) {
    await must("ip", [
      "-n",
      ns,
      "route",
      "add",
      `${ip}/32`,
      "dev",
      "dly0",
      "src",
      "192.168.77.1",
      "table",
      "77",
    ]);
    await must("ip", ["-n", ns, "rule", "add", "iif", "lo", "to", ip, "lookup", "77", "prio", "77"]);
  }
  return {
    set,
    stop: async () => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      child.stdout.cancel().catch(() => {});
    },
  };
}

/** Asks `n` times; returns the answers. */
async function askN(client: SimInstance, host: string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let k = 0; k < n; k++) out.push(await ask(client, host));
  return out;
}

/** Polls until new flows to `host` reach `want` `times` times in a row; returns the ms it took. */
async function movesTo(
  client: SimInstance,
  host: string,
  want: string,
  times = 3,
  limitMs = 5000,
): Promise<number> {
  const t0 = performance.now();
  let run = 0;
  let firstAt = 0;
  const seen: string[] = [];
  while (performance.now() - t0 < limitMs + 3000) {
    const started = performance.now() - t0;
    const got = await ask(client, host);
    seen.push(got);
    if (got === want) {
      if (++run === 1) firstAt = started; // the first new flow that went there
      if (run >= times) return firstAt;
    } else run = 0;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`new flows to ${host} did not move to ${want}: ${seen.join(",")}`);
}

Deno.test({
  name:
    "health: Closest follows the delays (v4, v6), established streams stay; a blocked node is skipped and shown down",
  ...opts,
}, async () => {
  const w = new World();
  let relay: Awaited<ReturnType<typeof delayPath>> | undefined;
  try {
    const { nodes } = await threeNodes(w);
    await addWebAndClient(w);
    const jobs = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<
      { job_name: string; RR_ip: string; Closest_ip: string; Closest_ip_v6: string }
    >;
    const web = jobs.find((j) => j.job_name === WEB)!;
    const srv0 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
    const srv1 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
    const client = await w.instance("client");
    await deploy(nodes[1], WEB, 0, srv0.pid);
    await deploy(nodes[2], WEB, 1, srv1.pid);
    await deploy(nodes[0], CLI, 0, client.pid);

    relay = await delayPath(nodes[0].ns, nodes[0].dir);
    relay.set({ [N2]: 0, [N3]: FAR_MS });
    // The first packet fetches the table; then both peers get probed (every 500 ms).
    await eventually(() => ask(client, web.Closest_ip), (v) => v === "web0" || v === "web1");
    const rows = await eventually(
      () => peersOf(nodes[0]),
      (r) => (peer(r, N3)?.rttMs ?? 0) > (peer(r, N2)?.rttMs ?? Infinity) + FAR_MS * 0.6,
      10_000,
    );
    console.log(`RTT n2 ${peer(rows, N2)?.rttMs?.toFixed(2)} ms, n3 ${peer(rows, N3)?.rttMs?.toFixed(2)} ms`);
    await movesTo(client, web.Closest_ip, "web0");
    assertEquals(await askN(client, web.Closest_ip, 5), Array(5).fill("web0"));
    assertEquals(await eventually(() => ask(client, web.Closest_ip_v6), (v) => v === "web0"), "web0");

    // An established stream (12 s of request/answer rounds) across the swap.
    const chat = new Deno.Command("nsenter", {
      args: ["-t", String(client.pid), "-n", ...TOOL, "tcp-chat", web.Closest_ip, "80", "40", "300"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    await new Promise((r) => setTimeout(r, 1000));

    // Swap: n3 is now the near one. New flows move within 5 s (v4, then v6).
    relay.set({ [N2]: FAR_MS, [N3]: 0 });
    const moved = await movesTo(client, web.Closest_ip, "web1");
    console.log(`v4 Closest moved to n3 after ${moved.toFixed(0)} ms`);
    assert(moved <= 5000, `moved after ${moved} ms`);
    assertEquals(await askN(client, web.Closest_ip_v6, 3), Array(3).fill("web1"));
    const out = await chat.output();
    const answers = new TextDecoder().decode(out.stdout).trim().split("\n");
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(answers.length, 40);
    assert(answers.every((a) => a.startsWith("web0:")), `the established stream moved: ${answers}`);
    // And back, for IPv6 this time.
    relay.set({ [N2]: 0, [N3]: FAR_MS });
    const moved6 = await movesTo(client, web.Closest_ip_v6, "web0");
    console.log(`v6 Closest moved back to n2 after ${moved6.toFixed(0)} ms`);
    assert(moved6 <= 5000, `v6 moved after ${moved6} ms`);

    // Block n3's tunnel port: within 3 s new flows through RR all go to n2.
    relay.set({ [N2]: 0, [N3]: 0 });
    const rr0 = new Set(await askN(client, web.RR_ip, 4));
    assertEquals(rr0.size, 2, `RR alternates before: ${[...rr0]}`);
    const block = [
      "netns",
      "exec",
      nodes[2].ns,
      "iptables",
      "-I",
      "INPUT",
      "-p",
      "udp",
      "--dport",
      "50103",
      "-j",
      "DROP",
    ];
    await must("ip", block);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 3200));
    const startedAt = performance.now() - t0;
    const during = await askN(client, web.RR_ip, 20);
    console.log(
      `20 RR connections from ${startedAt.toFixed(0)} ms after the block: ${
        new Set(during).size
      } instance(s)`,
    );
    assertEquals(during, Array(20).fill("web0"));
    const down = await eventually(() => peersOf(nodes[0]), (r) => peer(r, N3)?.health === "down", 3000);
    assertMatch(peer(down, N3)!.downCause ?? "", /no answer to \d+ probe\(s\) and HELLOs for \d+ ms/);
    assertEquals(peer(down, N2)?.health, "up");
    const metrics = (await nodes[0].api.request("GET", "/metrics")).body;
    assertMatch(metrics, /netmanager_peer_up\{[^}]*endpoint="192\.168\.77\.3:50103"\} 0/);
    assertMatch(metrics, /netmanager_peer_up\{[^}]*endpoint="192\.168\.77\.2:50103"\} 1/);
    assertMatch(
      metrics,
      new RegExp(
        `netmanager_service_choices_total\\{service_ip="${
          web.RR_ip.replaceAll(".", "\\.")
        }",instance_ip="[0-9.]+"\\} \\d+`,
      ),
    );
    const peersText = await w.cli(nodes[0], ["peers"]);
    assert(/192\.168\.77\.3:50103\s.*\sDOWN \d+s \(no answer/.test(peersText), peersText);

    // Unblock: n3 up again (logged), RR alternates again.
    await must("ip", [...block.slice(0, 4), "-D", ...block.slice(5)]);
    await eventually(() => peersOf(nodes[0]), (r) => peer(r, N3)?.health === "up", 8000);
    const rr1 = new Set(await askN(client, web.RR_ip, 4));
    assertEquals(rr1.size, 2, `RR alternates after: ${[...rr1]}`);
    const log = await Deno.readTextFile(`${nodes[0].dir}/daemon.log`);
    const downLines = log.split("\n").filter((l) =>
      l.includes("peer down") && l.includes("192.168.77.3:50103")
    );
    assertEquals(downLines.length, 1, downLines.join("\n"));
    assertMatch(downLines[0], /no answer to/);
    assert(log.split("\n").some((l) => l.includes("peer up again") && l.includes("192.168.77.3:50103")));
  } catch (e) {
    await w.diagnose((l) => console.error(l.slice(0, 2000)));
    throw e;
  } finally {
    await relay?.stop();
    assertEquals(await w.destroy(), []);
  }
});

// ---------------------------------------------------------------------------------------------
// Static table, one Oakestra-style raw peer

const CLOSEST = { IpType: "Closest", Address: "10.30.0.20", Address_v6: "fdff:1000::20" };
function withClosest(i: Record<string, unknown>): Record<string, unknown> {
  return { ...i, service_ip: [...(i.service_ip as unknown[]), CLOSEST] };
}
const TABLE: QueryResult[] = [
  clientEntry(CLI),
  {
    app_name: WEB,
    instance_list: [
      withClosest(instanceOn({ n: 0, node: 2, last: 2, rr: WEB_RR })),
      withClosest(instanceOn({ n: 1, node: 3, last: 3, rr: WEB_RR })),
      withClosest(instanceOn({ n: 2, node: 1, last: 4, slot: 3, rr: WEB_RR })),
    ],
  },
];

/** iptables u32: the UDP payload's first byte is 0x1X (HELLO, PROBE and their answers). */
const CONTROL_U32 = "0>>22&0x3C@8>>24&0xF0=0x10";

Deno.test({
  name:
    "health: a static-table mixed cluster with an Oakestra-style raw peer (no HELLO/PROBE answers) works and it is never marked down",
  ...opts,
}, async () => {
  // n3 plays an Oakestra Go node on the wire from its start: no in-band control either way (its
  // daemon's HELLO/PROBE and their answers are dropped), so raw IP packets only.
  const c = await TestCluster.start(3, TABLE, [], () => ({}), async (i, ns) => {
    if (i !== 3) return;
    for (const chain of [["INPUT", "--dport"], ["OUTPUT", "--sport"]]) {
      await must("ip", [
        "netns",
        "exec",
        ns,
        "iptables",
        "-I",
        chain[0],
        "-p",
        "udp",
        chain[1],
        "50103",
        "-m",
        "u32",
        "--u32",
        CONTROL_U32,
        "-j",
        "DROP",
      ]);
    }
  });
  try {
    await c.deploy(1, CLI, 0);
    await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    await c.deploy(3, WEB, 1, [...TOOL, "servers", "80", "web1"]);
    const local = await c.deploy(1, WEB, 2, [...TOOL, "servers", "80", "web2"]);
    const cli = c.containers[0];
    const askIt = async (host: string) => {
      const r = await cli.exec([...TOOL, "tcp-client", host, "80", "q"]);
      if (r.code !== 0) throw new Error(`tcp-client ${host}: ${r.stderr}`);
      return r.stdout.trim().split(":")[0];
    };
    await eventually(() => askIt("10.30.0.1"), (v) => v === "web0" || v === "web1");
    // Long past PeerDownAfterMs: RR still reaches both, the Closest IP (from the table) answers.
    await new Promise((r) => setTimeout(r, 4500));
    const rr = new Set<string>();
    for (let k = 0; k < 6; k++) rr.add(await askIt("10.30.0.1"));
    assertEquals([...rr].sort(), ["web0", "web1", "web2"]);
    // The Closest IP from the table works (the local instance first), v4 and v6.
    assertEquals(await askIt("10.30.0.20"), "web2");
    assertEquals(await askIt("fdff:1000::20"), "web2");
    const st = (await c.nodes[0].node.api.getJson("/status")) as { peers: PeerRow[] };
    const raw = peer(st.peers, N3)!;
    const nm = peer(st.peers, N2)!;
    assertEquals([raw.answering, raw.health], [false, "unknown"], JSON.stringify(raw));
    assertEquals([nm.answering, nm.health], [true, "up"], JSON.stringify(nm));
    const metrics = (await c.nodes[0].node.api.request("GET", "/metrics")).body;
    assertMatch(metrics, /netmanager_peer_up\{endpoint="192\.168\.77\.3:50103"\} 1/);
    assertMatch(metrics, /netmanager_peer_liveness_known\{endpoint="192\.168\.77\.3:50103"\} 0/);

    // The local instance's process dies (its namespace and veth go with it): new flows skip it —
    // Closest goes to the nearest remaining node (n2: measured; the raw n3's RTT is unknown), RR to
    // the other two — and it is logged.
    await local.c.stop();
    const t0 = performance.now();
    await eventually(() => askIt("10.30.0.20"), (v) => v === "web0", 5000);
    console.log(`Closest left the dead local instance after ${(performance.now() - t0).toFixed(0)} ms`);
    const after = new Set<string>();
    for (let k = 0; k < 6; k++) after.add(await askIt("10.30.0.1"));
    assertEquals([...after].sort(), ["web0", "web1"]);
    assertEquals(await askIt("fdff:1000::20"), "web0");
    const log = await c.nodes[0].node.log();
    assert(log.includes("instance's namespace is gone"), log.slice(-3000));
  } catch (e) {
    console.error(await c.logs());
    throw e;
  } finally {
    await c.stop();
    await cleanupAll();
  }
});
