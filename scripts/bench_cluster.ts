/**
 * Benchmark (not a test) of the control plane in a simulated cluster (`netmanager control` with
 * its embedded broker, two nodes in cluster mode). Prints one JSON object:
 * - deployToReachableMs: from the deploy call on node 2 to the first answer a client on node 1 gets
 *   through the new instance's InstanceIP (the client keeps trying meanwhile);
 * - missFirstPacketUs: UDP round trip of the very first request to a ServiceIP that is not yet in
 *   either node's table (table query on the client's node, and on the server's node for the
 *   client's InstanceIP) against the steady-state round trip;
 * - registration of 1000 services through the HTTP API, and the table-query round trip with 10 vs
 *   1010 services registered;
 * - the data plane's table lookups at 10 vs 100k entries (scripts/bench_table.ts).
 *
 *   deno run -A scripts/bench_cluster.ts          (root; creates and removes its own namespaces)
 */
import { World } from "../src/demo/world.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const TOOLS = [Deno.execPath(), "run", "-A", `${ROOT}scripts/bench_tools.ts`];
const NET = [Deno.execPath(), "run", "-A", `${ROOT}tests/helpers/nettools.ts`];
const CTL = "192.168.77.254";

async function inNs(pid: number, argv: string[]): Promise<string> {
  const o = await new Deno.Command("nsenter", {
    args: ["-t", String(pid), "-n", ...argv],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (o.code !== 0) throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(o.stderr)}`);
  return new TextDecoder().decode(o.stdout).trim();
}

/** A background process inside an instance's network namespace. */
function spawnIn(pid: number, argv: string[]): Deno.ChildProcess {
  return new Deno.Command("nsenter", {
    args: ["-t", String(pid), "-n", ...argv],
    stdout: "null",
    stderr: "null",
  })
    .spawn();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const w = new World();
let warmSrv81: Deno.ChildProcess | undefined;
const out: Record<string, unknown> = {
  bench: "control plane in a simulated cluster (embedded broker, 2 nodes)",
};
try {
  await w.control(CTL);
  const n1 = await w.clusterNode("n1", "192.168.77.1", CTL);
  const n2 = await w.clusterNode("n2", "192.168.77.2", CTL);
  await w.ctl(["service", "add", "b.b.cli.ns"]);
  await w.ctl(["instance", "add", "b.b.cli.ns", "0"]);
  const client = await w.instance("client");
  const r = await n1.api.post("/container/deploy", {
    pid: client.pid,
    serviceName: "b.b.cli.ns",
    instanceNumber: 0,
    portMappings: "",
  });
  if (r.status !== 200) throw new Error(r.body);

  // 1. deploy → reachable, 5 rounds (a new service each round)
  const reach: number[] = [];
  for (let k = 0; k < 5; k++) {
    const job = `b.b.web${k}.ns`;
    await w.ctl(["service", "add", job]);
    const iip = (await w.ctl(["instance", "add", job, "0"])).split(" ").at(-2)!;
    const srv = await w.instance(`web${k}`, [...NET, "servers", "80", `web${k}`]);
    await new Promise((r) => setTimeout(r, 300)); // the server process is listening
    const probe = inNs(client.pid, [...TOOLS, "probe-tcp", iip, "80", "10000"]);
    await new Promise((r) => setTimeout(r, 200)); // the client is already trying (and missing)
    const t0 = Date.now();
    const d = await n2.api.post("/container/deploy", {
      pid: srv.pid,
      serviceName: job,
      instanceNumber: 0,
      portMappings: "",
    });
    if (d.status !== 200) throw new Error(d.body);
    reach.push(Number(await probe) - t0);
  }
  out.deployToReachableMs = { samples: reach, median: median(reach) };

  // 2. miss → first packet: a fresh service, UDP request/response from the client, after two
  //    requests to an already-resolved service (so the first measured one pays only the miss)
  await w.ctl(["service", "add", "b.b.warm.ns"]);
  const warmIp = (await w.ctl(["instance", "add", "b.b.warm.ns", "0"])).split(" ").at(-2)!;
  const warmSrv = await w.instance("warm", [...NET, "servers", "80", "warm"]);
  warmSrv81 = spawnIn(warmSrv.pid, [...NET, "servers", "81", "warm81"]);
  await n2.api.post("/container/deploy", {
    pid: warmSrv.pid,
    serviceName: "b.b.warm.ns",
    instanceNumber: 0,
    portMappings: "",
  });
  await new Promise((r) => setTimeout(r, 500));
  await inNs(client.pid, [...TOOLS, "udp-rtt", warmIp, "80", "3"]);
  const miss: number[] = [];
  const otherP99: number[] = [];
  const otherMax: number[] = [];
  const steady: number[] = [];
  for (let k = 0; k < 5; k++) {
    const job = `b.b.udp${k}.ns`;
    await w.ctl(["service", "add", job]);
    const iip = (await w.ctl(["instance", "add", job, "0"])).split(" ").at(-2)!;
    const srv = await w.instance(`udp${k}`, [...NET, "servers", "80", `udp${k}`]);
    await n2.api.post("/container/deploy", {
      pid: srv.pid,
      serviceName: job,
      instanceNumber: 0,
      portMappings: "",
    });
    await new Promise((r) => setTimeout(r, 500));
    // an established flow keeps going while this miss is resolved: its RTTs should not jump
    const other = inNs(client.pid, [...TOOLS, "udp-rtt", warmIp, "81", "3000"]);
    await new Promise((r) => setTimeout(r, 100));
    const rtts = JSON.parse(
      await inNs(client.pid, [...TOOLS, "udp-rtt", iip, "80", "10", warmIp]),
    ) as number[];
    const others = (JSON.parse(await other) as number[]).filter((x) => x >= 0).sort((a, b) => a - b);
    otherP99.push(others[Math.floor(others.length * 0.99)]);
    otherMax.push(others[others.length - 1]);
    miss.push(rtts[0]);
    steady.push(median(rtts.slice(2)));
  }
  out.missFirstPacketUs = {
    firstRequest: miss,
    steadyState: steady,
    medianFirst: median(miss),
    medianSteady: median(steady),
    otherFlowDuringMissP99: otherP99,
    otherFlowDuringMissMax: otherMax,
  };

  // 3. registrations and query cost with 10 vs 1010 services
  const queryRtt = async () => {
    const job = `b.b.q${Math.floor(Math.random() * 1e9)}.ns`;
    await w.ctl(["service", "add", job]);
    const iip = (await w.ctl(["instance", "add", job, "0"])).split(" ").at(-2)!;
    const srv = await w.instance(job, [...NET, "servers", "80", "q"]);
    await n2.api.post("/container/deploy", {
      pid: srv.pid,
      serviceName: job,
      instanceNumber: 0,
      portMappings: "",
    });
    await new Promise((r) => setTimeout(r, 500));
    return (JSON.parse(await inNs(client.pid, [...TOOLS, "udp-rtt", iip, "80", "3", warmIp])) as number[])[0];
  };
  const q10 = median([await queryRtt(), await queryRtt(), await queryRtt()]);
  const ctlNs = `${w.prefix}ctl`;
  const reg = await new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${ctlNs}`, ...TOOLS, "register", "http://127.0.0.1:10100", "1000"],
    stderr: "inherit",
    stdout: "piped",
  }).output();
  out.registration = JSON.parse(new TextDecoder().decode(reg.stdout));
  const q1010 = median([await queryRtt(), await queryRtt(), await queryRtt()]);
  out.missFirstPacketUsBySize = { services10: q10, services1010: q1010 };

  // 4. data-plane lookups at 10 vs 100k entries
  const tb = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/bench_table.ts`, "--iterations", "500000", "--runs", "3"],
    stdout: "piped",
  }).output();
  out.tableLookupNs = JSON.parse(new TextDecoder().decode(tb.stdout));
  void n1;
} finally {
  try {
    warmSrv81?.kill("SIGKILL");
  } catch { /* gone */ }
  const left = await w.destroy();
  if (left.length) console.error(`left behind: ${left}`);
}
console.log(JSON.stringify(out, null, 2));
