/**
 * DNS benchmark (issue 13): dnsperf from inside an instance against the node's DNS server (table hits)
 * and against dnsmasq serving the same names from a hosts file on the same bridge address (port 5300),
 * in one run. Prints queries per second (max throughput, 10 s each) and latency percentiles at a fixed
 * rate (dnsperf -v). Needs root, dnsperf and dnsmasq; numbers mean little on a busy machine (the load
 * average is printed with them).
 *
 * deno run -A scripts/bench_dns.ts [--quick] [seconds]
 *
 * Run by `deno task bench` (step `dns`): namespaces carry the runner's prefix, and SIGINT/SIGTERM or
 * the script's own time limit remove everything it started.
 */
import { World } from "../src/demo/world.ts";
import { runLimited } from "./bench_common.ts";
import { afterInterrupt, namePrefix, onInterrupt, QUICK, SMOKE } from "./bench_common.ts";

/** The demo world with the runner's namespace prefix, so its clean-up sweep finds leftovers. */
class BenchWorld extends World {
  override readonly prefix: string = namePrefix("d");
}

const seconds = Number(Deno.args.find((a) => /^\d+$/.test(a)) ?? (SMOKE ? "1" : QUICK ? "2" : "10"));
const SERVICES = 50;
/** dnsperf gets this much longer than it is asked to run. */
const SLACK_MS = 20000;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function perf(pid: number, server: string, port: number, file: string, extra: string[], secs: number) {
  const r = await runLimited([
    "nsenter",
    "-t",
    String(pid),
    "-n",
    "dnsperf",
    "-s",
    server,
    "-p",
    String(port),
    "-d",
    file,
    ...extra,
  ], secs * 1000 + SLACK_MS);
  if (r.code !== 0) throw new Error(`dnsperf: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function measure(pid: number, server: string, port: number, file: string) {
  const out = await perf(pid, server, port, file, ["-l", String(seconds), "-c", "4", "-q", "64"], seconds);
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const lost = Number(/Queries lost:\s+(\d+)/.exec(out)?.[1] ?? NaN);
  const latSecs = SMOKE ? 1 : QUICK ? 2 : 5;
  const verbose = await perf(pid, server, port, file, ["-l", String(latSecs), "-Q", "1000", "-v"], latSecs);
  const lat = [...verbose.matchAll(/^> NOERROR .* ([\d.]+)$/gm)].map((m) => Number(m[1]) * 1000).sort((
    a,
    b,
  ) => a - b);
  return {
    qps,
    lost,
    samples: lat.length,
    p50ms: percentile(lat, 50),
    p99ms: percentile(lat, 99),
  };
}

const w = new BenchWorld();
const stopGuard = onInterrupt(() => w.destroy(), (QUICK ? 100 : 240) * 1000);
Deno.env.set("DnsRateLimit", "1000000");
try {
  const dir = await w.tempDir("bench");
  const jobs = [];
  const hosts: string[] = [];
  const names: string[] = [];
  for (let k = 0; k < SERVICES; k++) {
    const rr = `10.30.1.${k + 1}`;
    jobs.push({
      app_name: `bench.ns.s${k}.ns`,
      instance_list: [{
        instance_number: 0,
        instance_ip: `10.30.2.${k + 1}`,
        namespace_ip: `10.18.1.${k + 2}`,
        host_ip: "192.168.77.9",
        host_port: 50103,
        service_ip: [{ IpType: "RR", Address: rr }, { IpType: "instance_ip", Address: `10.30.2.${k + 1}` }],
      }],
    });
    names.push(`s${k}.ns.bench.ns.local A`);
    hosts.push(`${rr} s${k}.ns.bench.ns.local`);
  }
  await Deno.writeTextFile(`${dir}/table.json`, JSON.stringify(jobs));
  await Deno.writeTextFile(`${dir}/hosts`, hosts.join("\n") + "\n");
  await Deno.writeTextFile(`${dir}/queries`, names.join("\n") + "\n");
  const node = await w.node("b1", "10.18.0.64/26", ["--static-table", `${dir}/table.json`]);
  const client = await w.instance("client");
  const r = await node.api.post("/container/deploy", {
    pid: client.pid,
    serviceName: "bench.ns.client.ns",
    instanceNumber: 0,
    portMappings: "",
  });
  if (r.status !== 200) throw new Error(r.body);
  const bridge = "10.18.0.65";
  w.spawnIn(node.ns, [
    "dnsmasq",
    "--keep-in-foreground",
    "--no-resolv",
    "--no-hosts",
    `--addn-hosts=${dir}/hosts`,
    "--bind-interfaces",
    `--listen-address=${bridge}`,
    "--port=5300",
    "--local-ttl=5",
    "--cache-size=1000",
    `--pid-file=${dir}/dnsmasq.pid`,
    "--user=root",
  ], `${dir}/dnsmasq.log`);
  await new Promise((r) => setTimeout(r, 500));
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  const ours = await measure(client.pid, bridge, 53, `${dir}/queries`);
  const dnsmasq = await measure(client.pid, bridge, 5300, `${dir}/queries`);
  console.log(
    JSON.stringify({ load, seconds, netmanager: ours, dnsmasq, ratio: ours.qps / dnsmasq.qps }, null, 1),
  );
} finally {
  await afterInterrupt();
  stopGuard();
  Deno.env.delete("DnsRateLimit");
  const left = await w.destroy();
  if (left.length) console.error(`left behind: ${left.join(", ")}`);
}
