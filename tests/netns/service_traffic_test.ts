/**
 * Per-ServiceIP traffic counters on a real two-node overlay: TCP and UDP through a ServiceIP and
 * an InstanceIP move `netmanager_service_{packets,bytes}_total` by at least the bytes sent, on the
 * client's node (tx to / rx from the dialled address) and on the server's node (rx from / tx to the
 * client's InstanceIP); the exposition stays `promtool check metrics` clean; `status --json` lists
 * the same counts, named from the table, and `status` shows the busiest.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot, run } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { promtool } from "../helpers/promtool.ts";
import {
  CLIENT_IP,
  eventually,
  nodeCli,
  twoNodeTable,
  WEB_IP,
  WEB_RR,
  withCluster,
} from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ADDR = "127.0.0.1:9464";
const CLI_JOB = "app.ns.svccli.ns";
const WEB_JOB = "app.ns.svcweb.ns";

async function metricsIn(ns: string): Promise<string> {
  const r = await run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "5", `http://${ADDR}/metrics`]);
  return r.stdout;
}

/** The value of `family{…labels…}` whose labels include all of `want` (0 when absent). */
function value(text: string, family: string, want: Record<string, string>): number {
  for (const l of text.split("\n")) {
    if (!l.startsWith(family + "{")) continue;
    const labels = l.slice(family.length + 1, l.lastIndexOf("}"));
    if (Object.entries(want).every(([k, v]) => labels.includes(`${k}="${v}"`))) {
      return Number(l.slice(l.lastIndexOf(" ") + 1));
    }
  }
  return 0;
}

interface Counts {
  txP: number;
  txB: number;
  rxP: number;
  rxB: number;
}

function counts(text: string, labels: Record<string, string>): Counts {
  const f = (fam: string, direction: string) => value(text, fam, { ...labels, direction });
  return {
    txP: f("netmanager_service_packets_total", "tx"),
    txB: f("netmanager_service_bytes_total", "tx"),
    rxP: f("netmanager_service_packets_total", "rx"),
    rxB: f("netmanager_service_bytes_total", "rx"),
  };
}

Deno.test({
  name: "service traffic: TCP and UDP through a ServiceIP and an InstanceIP move the per-service counters",
  ...opts,
}, async () => {
  await withCluster(2, twoNodeTable(CLI_JOB, WEB_JOB), async (c) => {
    const [n1, n2] = [c.nodes[0].node, c.nodes[1].node];
    await c.deploy(1, CLI_JOB, 0);
    await c.deploy(2, WEB_JOB, 0, [...TOOL, "servers", "80", "web0"]);
    const client = c.containers[0];
    await eventually(
      async () => {
        const r = await client.exec([...TOOL, "tcp-client", WEB_RR.v4, "80", "x"]);
        return r.code === 0 && r.stdout.trim() === "web0:x";
      },
      Boolean,
      10_000,
      "TCP through the ServiceIP",
    );
    // Counters are reported about once a second: wait until the warm-up traffic shows, then measure.
    const rr = { service: WEB_JOB, address: WEB_RR.v4 };
    await eventually(
      async () => counts(await metricsIn(n1.ns), rr).txP > 0,
      Boolean,
      5000,
      "warm-up counted",
    );
    const before1 = counts(await metricsIn(n1.ns), rr);
    const cliOn2 = { service: CLI_JOB, address: CLIENT_IP.v4, service_instance: "0" };
    const before2 = counts(await metricsIn(n2.ns), cliOn2);

    // 1 MiB over TCP to the sink behind the ServiceIP (port 81), 200 UDP datagrams echoed on port 80.
    const MIB = 1 << 20;
    const bulk = await client.exec([...TOOL, "tcp-bulk", WEB_RR.v4, "81", "1"]);
    assertEquals(bulk.code, 0, bulk.stdout + bulk.stderr);
    const UDP_N = 200;
    const UDP_LEN = 28 + "burst-000000-".length + 40; // IPv4 + UDP headers + payload
    const burst = await client.exec([...TOOL, "udp-burst", WEB_RR.v4, "80", String(UDP_N)]);
    assertEquals(burst.code, 0, burst.stdout + burst.stderr);

    const minTx = MIB + UDP_N * UDP_LEN;
    const minRx = UDP_N * (UDP_LEN + "web0:".length);
    let after1 = before1;
    await eventually(
      async () => {
        after1 = counts(await metricsIn(n1.ns), rr);
        return after1.txB - before1.txB >= minTx && after1.rxB - before1.rxB >= minRx;
      },
      Boolean,
      8000,
      "client node: tx ≥ bytes sent, rx ≥ echoes",
    ).catch((e) => {
      throw new Error(`${e.message}: before ${JSON.stringify(before1)} after ${JSON.stringify(after1)}`);
    });
    assert(after1.txP - before1.txP >= UDP_N + 1, `tx packets ${JSON.stringify([before1, after1])}`);
    assert(after1.rxP - before1.rxP >= UDP_N, `rx packets ${JSON.stringify([before1, after1])}`);

    // The server's node sees the same traffic as coming from the client's InstanceIP.
    let after2 = before2;
    await eventually(
      async () => {
        after2 = counts(await metricsIn(n2.ns), cliOn2);
        return after2.rxB - before2.rxB >= minTx && after2.txB - before2.txB >= minRx;
      },
      Boolean,
      8000,
      "server node: rx from the client's InstanceIP",
    ).catch((e) => {
      throw new Error(`${e.message}: before ${JSON.stringify(before2)} after ${JSON.stringify(after2)}`);
    });

    // An InstanceIP is counted per instance, apart from the ServiceIP.
    const inst = { service: WEB_JOB, address: WEB_IP.v4, service_instance: "0" };
    const i0 = counts(await metricsIn(n1.ns), inst);
    const msg = "y".repeat(1000);
    for (let k = 0; k < 5; k++) {
      const r = await client.exec([...TOOL, "tcp-client", WEB_IP.v4, "80", msg]);
      assertEquals(r.stdout.trim(), `web0:${msg}`);
    }
    await eventually(
      async () => {
        const i1 = counts(await metricsIn(n1.ns), inst);
        return i1.txB - i0.txB >= 5 * 1000 && i1.rxB - i0.rxB >= 5 * 1005;
      },
      Boolean,
      8000,
      "InstanceIP counted",
    );
    const rrNow = counts(await metricsIn(n1.ns), rr);
    assert(rrNow.txB - after1.txB < 5 * 1000, "InstanceIP traffic is not counted under the ServiceIP");

    // IPv6 through the ServiceIP's v6 address.
    const r6 = { service: WEB_JOB, address: WEB_RR.v6 };
    const v0 = counts(await metricsIn(n1.ns), r6);
    const b6 = await client.exec([...TOOL, "udp-burst", WEB_RR.v6, "80", "50"]);
    assertEquals(b6.code, 0, b6.stdout + b6.stderr);
    await eventually(
      async () => {
        const v1 = counts(await metricsIn(n1.ns), r6);
        return v1.txP - v0.txP >= 50 && v1.rxP - v0.rxP >= 50 && v1.txB - v0.txB >= 50 * (48 + 53);
      },
      Boolean,
      8000,
      "IPv6 ServiceIP counted",
    );

    const text = await metricsIn(n1.ns);
    const p = await promtool(text);
    assertEquals(p.code, 0, p.out);

    // status --json: named from the table, the same figures.
    const st = JSON.parse((await n1.api.request("GET", "/status")).body) as {
      services: Array<{ service: string; address: string; kind: string; txBytes: number; instance?: number }>;
    };
    const mine = st.services.find((s) => s.address === WEB_RR.v4);
    assert(mine, JSON.stringify(st.services));
    assertEquals(mine.service, WEB_JOB);
    assertEquals(mine.kind, "RoundRobin");
    assert(mine.txBytes >= after1.txB, `${mine.txBytes} < ${after1.txB}`);
    const byInst = st.services.find((s) => s.address === WEB_IP.v4);
    assertEquals(byInst?.instance, 0);
    // `netmanager status` for people: the busiest services, one line each.
    const human = await nodeCli(n1, ["status", "--socket", n1.socket]);
    assertEquals(human.code, 0, human.stderr);
    assert(
      new RegExp(
        `^service\\s+${
          WEB_JOB.replaceAll(".", "\\.")
        } 10\\.30\\.0\\.1: tx \\d+ pkts \\d+ B, rx \\d+ pkts \\d+ B$`,
        "m",
      )
        .test(human.stdout),
      human.stdout,
    );
  }, { extraArgs: ["--metrics-addr", ADDR] });
});
