/**
 * Micro-benchmark (not a test) of the per-ServiceIP counters' cost on the packet path: the engine's
 * egress of a 64-byte UDP packet of an established flow through a round-robin ServiceIP to a peer,
 * and the ingress of its reply (restored to the ServiceIP), with the counters on and with the
 * counting hook replaced by an empty function, each variant in its own process. Processes alternate
 * (on, off, on, …) so machine noise hits both alike; prints one JSON object with the median ns per
 * packet of each (process CPU time, so time spent descheduled on a busy machine is left out) and
 * their difference.
 *
 * Usage: `deno run scripts/bench_service_counters.ts [--packets N] [--runs R]`
 */
import process from "node:process";
import { Engine, Verdict } from "../src/proxy/engine.ts";
import { parsePrefix4, parsePrefix6 } from "../src/addr/mod.ts";
import { parseQueryResult } from "../src/table/query_result.ts";
import { TranslationTable } from "../src/table/table.ts";
import { buildIPv4Udp, ip4 } from "../tests/helpers/packets.ts";

function arg(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  const n = i >= 0 ? Number(Deno.args[i + 1]) : NaN;
  return Number.isFinite(n) && n > 0 ? n : fallback;
}
const PACKETS = arg("--packets", 2_000_000);
const RUNS = arg("--runs", 7);

function sip(n: number, nsip: string, host: string, iip: string, rr?: string) {
  return {
    instance_number: n,
    instance_ip: iip,
    instance_ip_v6: `fdff::${n + 10}`,
    namespace_ip: nsip,
    namespace_ip_v6: `fc00::${n + 102}`,
    host_ip: host,
    host_port: 50103,
    service_ip: [
      ...(rr ? [{ IpType: "RR", Address: rr, Address_v6: "fdff:2000::1" }] : []),
      { IpType: "instance_ip", Address: iip, Address_v6: `fdff::${n + 10}` },
    ],
  };
}

function engine(counting: boolean): Engine {
  const t = new TranslationTable();
  for (
    const q of [
      { app_name: "a.b.cli.d", instance_list: [sip(0, "10.18.0.66", "192.0.2.1", "10.30.0.10")] },
      {
        app_name: "a.b.web.d",
        instance_list: [sip(1, "10.18.0.130", "192.0.2.2", "10.30.0.2", "10.30.0.1")],
      },
    ]
  ) {
    const r = parseQueryResult(q);
    t.replaceJob(r.job, r.entries);
  }
  const e = new Engine({
    selfIp: "192.0.2.1",
    selfPort: 50103,
    service4: parsePrefix4("10.30.0.0/16"),
    service6: parsePrefix6("fdff::/16"),
    subnet4: parsePrefix4("10.18.0.64/26"),
    subnet6: parsePrefix6("fc00::100/120"),
    seed: 1,
  }, t);
  if (!counting) e.services.add4 = () => {};
  return e;
}

// 64-byte IP packets (20 IP + 8 UDP + 36 payload), as the overlay's small-packet rate test sends.
const OUT = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5555, dstPort: 53, payload: 36 });
const BACK = buildIPv4Udp({ src: "10.30.0.2", dst: "10.18.0.66", srcPort: 53, dstPort: 5555, payload: 36 });
const PEER = ip4("192.0.2.2");

/** CPU time (user + system, ns) of this process: on a busy machine, time spent descheduled is not counted. */
function cpuNs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}

function run(e: Engine): { egressNs: number; ingressNs: number } {
  const buf = new Uint8Array(OUT.length);
  let t0 = cpuNs();
  for (let i = 0; i < PACKETS; i++) {
    buf.set(OUT);
    if (e.egress(buf, 0, buf.length, 1) !== Verdict.TO_PEER) throw new Error("egress failed");
  }
  const egressNs = (cpuNs() - t0) / PACKETS;
  t0 = cpuNs();
  for (let i = 0; i < PACKETS; i++) {
    buf.set(BACK);
    if (e.ingress(buf, 0, buf.length, 4, PEER, undefined, 50103, 1) !== Verdict.TO_TUN) {
      throw new Error("ingress failed");
    }
  }
  return { egressNs, ingressNs: (cpuNs() - t0) / PACKETS };
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
const r2 = (n: number) => Math.round(n * 100) / 100;

if (Deno.args.includes("--child")) {
  // One process, one variant: the engine's call sites see one kind of counter only.
  const e = engine(!Deno.args.includes("--off"));
  run(e); // warm-up (JIT)
  const x = run(e);
  console.log(JSON.stringify(x));
} else {
  // Processes alternate (on, off, on, …) so machine noise hits both variants alike.
  const res = { on: { e: [] as number[], i: [] as number[] }, off: { e: [] as number[], i: [] as number[] } };
  for (let r = 0; r < RUNS; r++) {
    for (const k of ["on", "off"] as const) {
      const o = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL(import.meta.url).pathname,
          "--child",
          "--packets",
          String(PACKETS),
          ...(k === "off" ? ["--off"] : []),
        ],
        stderr: "inherit",
      }).output();
      if (o.code !== 0) throw new Error(`child ${k} failed`);
      const x = JSON.parse(new TextDecoder().decode(o.stdout)) as { egressNs: number; ingressNs: number };
      res[k].e.push(x.egressNs);
      res[k].i.push(x.ingressNs);
    }
  }
  console.log(JSON.stringify({
    packets: PACKETS,
    runs: RUNS,
    egressNsPerPacket: { on: r2(median(res.on.e)), off: r2(median(res.off.e)) },
    ingressNsPerPacket: { on: r2(median(res.on.i)), off: r2(median(res.off.i)) },
    costNs: {
      egress: r2(median(res.on.e) - median(res.off.e)),
      ingress: r2(median(res.on.i) - median(res.off.i)),
    },
    samples: res,
  }));
}
