/**
 * The data plane on several cores (`DataPlaneWorkers=2` on every node, cluster mode with the embedded
 * broker): round robin alternates per new flow when consecutive flows land on different workers;
 * 8 parallel TCP streams and a UDP burst through a ServiceIP arrive byte-exact with both workers
 * carrying traffic; no flow's datagrams come back reordered; a worker that dies is restarted while a
 * flow on the other worker keeps going; an undeploy moves new flows on every worker within 1 s.
 *
 * Source ports are chosen so that consecutive flows alternate lanes (see `laneHash`).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { laneHash } from "../../src/proxy/lanes.ts";
import { addWebAndClient, CLI, deploy, execIn, runIn, threeNodes, WEB, withWorld } from "../helpers/world.ts";

/** The first source port ≥ `from` whose flow to port 80 is on `lane` of 2. */
function portOnLane(lane: number, from: number): number {
  for (let p = from;; p++) if (laneHash((p + 80) & 0xffff) % 2 === lane) return p;
}

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
/** Counts datagrams `f i` per flow and those older than the newest seen; stops 2 s after the last. */
const SINK = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", 90))
s.settimeout(10)
last, n, bad = {}, 0, 0
while True:
    try:
        d, a = s.recvfrom(100)
    except socket.timeout:
        break
    s.settimeout(2)
    f, i = map(int, d.split())
    if i < last.get((a, f), -1):
        bad += 1
    last[(a, f)] = max(i, last.get((a, f), -1))
    n += 1
print(n, bad)
`;

/** Sends 500 numbered datagrams on each of 8 flows (source ports 42000..42007, both lanes), interleaved. */
const SENDER = `
import socket, sys, time
socks = []
for f in range(8):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("", 42000 + f))
    socks.append(u)
for i in range(500):
    for f in range(8):
        socks[f].sendto(b"%d %d" % (f, i), (sys.argv[1], 90))
    if i % 25 == 0:
        time.sleep(0.002)
`;
import { eventually } from "../helpers/setup.ts";

interface Status {
  dataPlane: {
    workers?: Array<{ tunRx: number; udpRx: number; flows: number }>;
    drops: Record<string, number>;
  };
}

Deno.test({
  name:
    "cores: two workers per node — RR alternates across workers, 8 streams + UDP byte-exact, no reordering, " +
    "a dead worker restarts alone, undeploy reaches every worker within 1 s",
  ...opts,
}, async () => {
  Deno.env.set("DataPlaneWorkers", Deno.env.get("CORES_TEST_WORKERS") ?? "2");
  Deno.env.set("NETMANAGER_TEST_CRASH_WORKER", "1");
  try {
    await withWorld(async (w) => {
      const { nodes } = await threeNodes(w, { broker: "embedded" });
      const iip = await addWebAndClient(w);
      const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
      const rr = ((svc.find((s) =>
        s.job_name === WEB
      )!.service_ip_list) as Array<{ Address: string }>)[0].Address;
      const s1 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
      const s2 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
      const cli = await w.instance("client");
      await deploy(nodes[1], WEB, 0, s1.pid);
      await deploy(nodes[2], WEB, 1, s2.pid);
      await deploy(nodes[0], CLI, 0, cli.pid);
      let port = 40000;
      let lane = 0;
      // Each call without a port takes the next port on the other lane than the previous flow.
      const next = () => {
        port = portOnLane(lane, port) + 1;
        lane ^= 1;
        return port - 1;
      };
      const ask = async (lp = next()) =>
        (await runIn(cli, [...TOOL, "tcp-client-from", rr, "80", "q", String(lp)])).split(":")[0];
      await eventually(() => ask(), (v) => v.startsWith("web"));
      lane = 0; // the next flow starts on lane 0

      // Round robin: consecutive flows alternate lanes (workers) and must still alternate instances.
      const seq: string[] = [];
      for (let k = 0; k < 8; k++) seq.push(await ask());
      for (let k = 1; k < seq.length; k++) {
        assert(seq[k] !== seq[k - 1], `round robin across workers: ${seq}`);
      }

      // 8 parallel TCP streams (4 MiB each, hash-checked by the sinks) and a UDP burst.
      const streams = await Promise.all(
        Array.from({ length: 8 }, () => execIn(cli, [...TOOL, "tcp-bulk", rr, "81", "4"])),
      );
      for (const r of streams) assertEquals(r.code, 0, `stream: ${r.out} ${r.err}`);
      const burst = await execIn(cli, [...TOOL, "udp-burst", rr, "80", "200"]); // (sockets' default buffers)
      assertEquals(burst.code, 0, `UDP burst: ${burst.out} ${burst.err}`);

      // Datagrams of 8 flows over both lanes, sent in order (a blocking socket), arrive in order. (An
      // echo check would also see the endpoints' own reordering: Deno's dgram sends are asynchronous.)
      const sink = execIn(s1, ["python3", "-c", SINK]);
      await new Promise((r) => setTimeout(r, 500));
      await runIn(cli, ["python3", "-c", SENDER, iip[0]]);
      const got = await sink;
      assertEquals(got.code, 0, got.err);
      const [received, reordered] = got.out.split(" ").map(Number);
      assert(received >= 0.95 * 8 * 500, `received ${received} of 4000`);
      assertEquals(reordered, 0, `reordered datagrams: ${got.out}`);

      // Both workers carried traffic where the direction is certain on both lanes: the client's node read
      // the numbered datagrams (both lanes) from its TUN, web0's node received them from the tunnel on the
      // same lane (lanes are symmetric). The replies the client's node receives depend on the ephemeral
      // ports of the TCP streams, so its tunnel counters may lean to one lane.
      const workersOf = async (i: number) => {
        const st = (await nodes[i].api.getJson("/status")) as Status;
        const per = st.dataPlane.workers ?? [];
        assertEquals(per.length, 2, JSON.stringify(st.dataPlane));
        return per;
      };
      const sender = await workersOf(0);
      const receiver = await workersOf(1);
      for (let k = 0; k < 2; k++) {
        assert(
          sender[k].tunRx > 500 && receiver[k].udpRx > 500,
          `both workers carried traffic: client's node ${JSON.stringify(sender)}, web0's node ${
            JSON.stringify(receiver)
          }`,
        );
      }

      // Worker 1 of the client's node dies; a flow on worker 0 keeps going, worker 1 comes back.
      const chat = execIn(cli, [...TOOL, "tcp-chat", rr, "80", "40", "100", String(portOnLane(0, 41000))]);
      await new Promise((r) => setTimeout(r, 800));
      Deno.kill(nodes[0].daemon.pid, "SIGUSR2");
      const c = await chat;
      assertEquals(c.code, 0, `the flow on the other worker survived: ${c.err}`);
      assertEquals(c.out.split("\n").length, 40);
      const log = await Deno.readTextFile(`${nodes[0].dir}/daemon.log`);
      assert(/data-plane worker failed.*"worker":1/.test(log), "worker 1 failed (on request)");
      await eventually(() => ask(portOnLane(1, 41000)), (v) => v.startsWith("web"), 5000); // lane 1 again
      await eventually(() => ask(portOnLane(1, 41500)), (v) => v.startsWith("web"), 5000);

      // Undeploy web0 while both workers make new flows: within 1 s every worker sends only to web1.
      await nodes[1].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 0 });
      await w.ctl(["instance", "rm", WEB, "0"]);
      const t0 = Date.now(); // from the control plane's removal (not the CLI's start-up)
      await eventually(
        () =>
          nodes[0].api.getJson("/table") as Promise<Array<{ serviceName: string; instanceNumber: number }>>,
        (rows) => !rows.some((r) => r.serviceName === WEB && r.instanceNumber === 0),
        1000,
      );
      assert(Date.now() - t0 < 1000, `propagation took ${Date.now() - t0} ms`);
      port = 43000;
      lane = 0;
      const after: string[] = [];
      for (let k = 0; k < 6; k++) after.push(await ask());
      assertEquals(after, Array(6).fill("web1"), "new flows on both workers go to web1");
    });
  } finally {
    Deno.env.delete("DataPlaneWorkers");
    Deno.env.delete("NETMANAGER_TEST_CRASH_WORKER");
  }
});
