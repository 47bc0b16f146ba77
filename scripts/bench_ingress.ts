/**
 * Micro-benchmark of the engine's ingress path (receive + deliver of a raw-mode datagram from a
 * known peer to a local instance), with the instance-destination check (the default) and without
 * it (`ingressAnyInSubnet`, the old subnet-only check), interleaved in one run. Prints JSON.
 *
 * Usage: `deno run scripts/bench_ingress.ts [--iterations N] [--runs R]`
 */
import { Engine, type EngineConfig, Verdict } from "../src/proxy/engine.ts";
import { parseQueryResult } from "../src/table/query_result.ts";
import { TranslationTable } from "../src/table/table.ts";
import { parsePrefix4, parsePrefix6 } from "../src/addr/mod.ts";
import { buildIPv4Udp, buildIPv6Udp, ip4 } from "../tests/helpers/packets.ts";

const arg = (name: string, dflt: number) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
};
const N = arg("--iterations", 2_000_000);
const RUNS = arg("--runs", 7);

const CFG: EngineConfig = {
  selfIp: "192.0.2.1",
  selfPort: 50103,
  service4: parsePrefix4("10.30.0.0/16"),
  service6: parsePrefix6("fdff::/16"),
  subnet4: parsePrefix4("10.18.0.64/26"),
  subnet6: parsePrefix6("fc00::100/120"),
};
const inst = (n: number, nsip: string, nsip6: string, host: string, iip: string) => ({
  instance_number: n,
  namespace_ip: nsip,
  namespace_ip_v6: nsip6,
  host_ip: host,
  host_port: 50103,
  service_ip: [{ IpType: "instance_ip", Address: iip, Address_v6: `fdff::${n + 1}` }],
});
function table(): TranslationTable {
  const t = new TranslationTable();
  const local = parseQueryResult({
    app_name: "a.b.loc.d",
    instance_list: [inst(0, "10.18.0.66", "fc00::102", "192.0.2.1", "10.30.0.10")],
  });
  const remote = parseQueryResult({
    app_name: "a.b.web.d",
    instance_list: [inst(1, "10.18.0.130", "fc00::202", "192.0.2.2", "10.30.0.2")],
  });
  t.replaceJob(local.job, local.entries);
  t.replaceJob(remote.job, remote.entries);
  return t;
}

const p4 = buildIPv4Udp({ src: "10.30.0.2", dst: "10.18.0.66", srcPort: 53, dstPort: 5353, payload: 1372 });
const p6 = buildIPv6Udp({ src: "fdff::2", dst: "fc00::102", srcPort: 53, dstPort: 5353, payload: 1352 });
const peer = ip4("192.0.2.2");

function run(e: Engine, p: Uint8Array): number {
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    if (e.ingress(p, 0, p.length, 4, peer, undefined, 50103, 1) !== Verdict.TO_TUN) {
      throw new Error("dropped");
    }
  }
  return (performance.now() - t0) * 1e6 / N;
}

const median = (a: number[]) => a.slice().sort((x, y) => x - y)[Math.floor(a.length / 2)];
const out: Record<string, { nsPerPacket: number; best: number }> = {};
for (const [name, p] of [["v4", p4], ["v6", p6]] as const) {
  const strict = new Engine(CFG, table());
  const open = new Engine({ ...CFG, ingressAnyInSubnet: true }, table());
  run(strict, p);
  run(open, p);
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    a.push(run(strict, p));
    b.push(run(open, p));
  }
  out[`${name}_instance_check`] = { nsPerPacket: +median(a).toFixed(2), best: +Math.min(...a).toFixed(2) };
  out[`${name}_subnet_only`] = { nsPerPacket: +median(b).toFixed(2), best: +Math.min(...b).toFixed(2) };
}
console.log(JSON.stringify({ iterations: N, runs: RUNS, cases: out }, null, 1));
