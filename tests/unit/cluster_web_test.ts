/**
 * The node report (built by nodes, checked and bounded by the control plane), the cluster view of
 * the web page, the page's static files, and ping's DNS answer parsing.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  ClusterState,
  clusterView,
  DeployedNoticeSchema,
  MAX_REPORT_BYTES,
  MAX_REPORT_PEERS,
  NodeReportSchema,
  ReportStore,
  reportTopic,
  webAsset,
  webUrl,
  workerOfReportTopic,
} from "../../src/cluster/mod.ts";
import { buildNodeReport } from "../../src/control/report.ts";
import type { PeerView } from "../../src/proxy/peer_watch.ts";
import { lookupAddresses } from "../../src/cli/ping.ts";
import { mayPublish } from "../../src/cluster/auth.ts";
import { controlRegistry } from "../../src/cluster/metrics.ts";

const peer = (k: number, extra: Partial<PeerView> = {}): PeerView => ({
  endpoint: `192.0.2.${k}:50103`,
  mode: "fast",
  answering: true,
  rttMs: 0.5,
  lastSeenAgoS: k,
  drops: 0,
  txPackets: 10,
  rxPackets: 9,
  probesSent: 5,
  probesLost: 0,
  ...extra,
});

const self = { version: "1.2.3", endpoint: "192.0.2.100:50103", instances: 2, uptimeS: 61.4 };
const known = (w: string) => w === "w1" || w === "w2";

Deno.test("report: topic under nodes/<id>/ (the ACL lets the node publish it), outside net/", () => {
  assertEquals(reportTopic("w1"), "nodes/w1/netmanager/report");
  assert(mayPublish("w1", reportTopic("w1")));
  assert(!mayPublish("w2", reportTopic("w1")));
  assertEquals(workerOfReportTopic("nodes/w1/netmanager/report"), "w1");
  assertEquals(workerOfReportTopic("nodes/w1/net/subnet"), undefined);
  assertEquals(workerOfReportTopic("nodes/w+1/netmanager/report"), undefined);
});

Deno.test("report: a node's report passes the control plane's schema; peers cut to the most recent 64", () => {
  const r = buildNodeReport(self, Array.from({ length: 100 }, (_, k) => peer(k)));
  assertEquals(r.peers.length, MAX_REPORT_PEERS);
  assertEquals(r.peers[0].endpoint, "192.0.2.0:50103");
  assertEquals(r.uptime_s, 61);
  assert(NodeReportSchema.safeParse(JSON.parse(JSON.stringify(r))).success);
  assert(JSON.stringify(r).length < MAX_REPORT_BYTES, "a full report fits the size bound");
  const odd = buildNodeReport({ ...self, version: "v".repeat(200) }, [
    peer(1, { rttMs: NaN, node: "n".repeat(300) }),
  ]);
  assert(NodeReportSchema.safeParse(odd).success, "clipped to the bounds");
  assertEquals(odd.peers[0].rtt_ms, undefined);
});

Deno.test("report store: bounded (size, rate, peers, registered nodes only); refusals change nothing, counted", async () => {
  const s = new ReportStore();
  const good = (version: string) => JSON.stringify(buildNodeReport({ ...self, version }, [peer(1)]));
  assertEquals(s.accept("w1", good("a"), 1000, known), { ok: true });
  const cases: Array<[string, string, number, string]> = [
    ["w1", good("b"), 1500, "too_often"],
    [
      "w1",
      JSON.stringify({ ...JSON.parse(good("c")), pad: "x".repeat(MAX_REPORT_BYTES) }),
      3000,
      "too_large",
    ],
    ["w1", "{not json", 3000, "not_json"],
    [
      "w1",
      JSON.stringify({
        ...JSON.parse(good("d")),
        peers: Array.from({ length: 65 }, () => JSON.parse(good("e")).peers[0]),
      }),
      3000,
      "invalid",
    ],
    ["w1", JSON.stringify({ v: 2, version: "x", endpoint: "y", peers: [] }), 3000, "invalid"],
    ["w1", JSON.stringify({ ...JSON.parse(good("f")), version: "v".repeat(65) }), 3000, "invalid"],
    ["w9", good("g"), 3000, "unknown_node"],
  ];
  for (const [w, payload, at, reason] of cases) {
    const r = s.accept(w, payload, at, known);
    assertEquals(r.ok ? "ok" : r.reason, reason, payload.slice(0, 80));
  }
  assertEquals(s.get("w1")?.report.version, "a");
  assertEquals(s.get("w9"), undefined);
  assertEquals(s.refused, { too_large: 1, not_json: 1, invalid: 3, unknown_node: 1, too_often: 1 });
  assertEquals(s.accept("w1", new TextEncoder().encode(good("h")), 2000, known), { ok: true });
  assertEquals(s.get("w1")?.report.version, "h");
  const text = await controlRegistry({
    state: new ClusterState(),
    health: () => ({ ok: true }),
    reportsDropped: s.refused,
  })
    .metrics();
  assert(text.includes('netmanager_control_node_reports_dropped_total{reason="invalid"} 3'), text);
  s.prune((w) => w === "w2");
  assertEquals(s.get("w1"), undefined);
});

Deno.test("cluster view: nodes with and without reports, links matched by endpoint, instances with IPs", () => {
  const st = new ClusterState();
  st.nodeSubnet("w1");
  st.nodeSubnet("w2");
  st.nodeSubnet("go");
  const { job } = st.deployService({
    app_name: "a",
    app_ns: "b",
    microservice_name: "c",
    microservice_namespace: "d",
  });
  st.deployInstance(job.job_name, 0);
  st.deployInstance(job.job_name, 1);
  st.markDeployed(
    "w2",
    DeployedNoticeSchema.parse({
      appname: job.job_name,
      instance_number: 0,
      nsip: "10.18.0.66",
      nsipv6: "fc00::102",
      host_ip: "192.0.2.2",
      host_port: "50103",
    }),
  );
  const reports = new ReportStore();
  const all = () => true;
  reports.accept(
    "w1",
    JSON.stringify(buildNodeReport({ ...self, endpoint: "192.0.2.1:50103" }, [
      peer(2, { rttMs: 1.5 }), // w2, known from its instance's host
      peer(7, { node: "w2" }), // claims to be w2 but w2 is at .2: matched by claim only when no endpoint owns it
      peer(9, { node: "stranger" }),
    ])),
    10_000,
    all,
  );
  const v = clusterView(
    st,
    reports,
    (w) => w === "w1" || w === "go" ? { remote: "192.0.2.1:4000" } : undefined,
    12_400,
  );
  const n = Object.fromEntries(v.nodes.map((x) => [x.worker_id, x]));
  assertEquals(n.w1.endpoint, "192.0.2.1:50103");
  assertEquals([n.w1.last_seen_s, n.w1.version, n.w1.connected], [2, "1.2.3", true]);
  assertEquals([n.w2.endpoint, n.w2.last_seen_s, n.w2.connected], ["192.0.2.2:50103", null, false]);
  assertEquals([n.go.last_seen_s, n.go.version, n.go.connected, n.go.observed], [
    null,
    null,
    true,
    "192.0.2.1:4000",
  ]);
  assertEquals(
    v.links.map((l) => [l.from, l.to, l.known, l.rtt_ms]),
    [["w1", "w2", true, 1.5], ["w1", "w2", true, 0.5], ["w1", "192.0.2.9:50103", false, 0.5]],
  );
  const inst = v.services[0].instances;
  assertEquals(inst.map((i) => [i.instance_number, i.worker_id, i.namespace_ip, i.host]), [
    [0, "w2", "10.18.0.66", "192.0.2.2:50103"],
    [1, null, null, null],
  ]);
  assertEquals(v.services[0].rr_ip, "10.30.0.0");
  assertEquals([v.services[0].closest_ip, v.services[0].closest_ip_v6], ["10.30.0.1", "fdff:1000::"]);
  // Without the embedded broker's view, "connected" means a report within three periods.
  const ext = clusterView(st, reports, undefined, 10_000 + 16_000);
  assertEquals(ext.nodes.map((x) => x.connected), [false, false, false]);
  const w1 = clusterView(st, reports, undefined, 11_000).nodes.find((x) => x.worker_id === "w1");
  assertEquals(w1?.connected, true);
});

Deno.test("web page: static files with a strict CSP, no data, no innerHTML; the URL carries the token in its fragment", async () => {
  const html = webAsset("/ui/")!;
  assertEquals(html.headers.get("content-type"), "text/html; charset=utf-8");
  assert(html.headers.get("content-security-policy")!.startsWith("default-src 'none'; script-src 'self'"));
  assert(!/https?:\/\//.test(await html.text()), "nothing loaded from elsewhere");
  const js = await webAsset("/ui/app.js")!.text();
  assert(!/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(/.test(js), "text only");
  assert(js.includes("Authorization"), "the token goes in a header");
  assertEquals(webAsset("/ui/other"), undefined);
  assertEquals(webAsset("/api/net/cluster"), undefined);
  assertEquals(webUrl("http://127.0.0.1:10100/", "a+b/c"), "http://127.0.0.1:10100/ui/#token=a%2Bb%2Fc");
});

Deno.test("ping: addresses of a DNS answer (A and AAAA, canonical, no duplicates)", () => {
  assertEquals(
    lookupAddresses({
      rcode: "NOERROR",
      source: "control",
      answers: [
        { type: "A", data: "10.30.0.1" },
        { type: "AAAA", data: "fdff:2000:0::1" },
        { type: "A", data: "10.30.0.1" },
        { type: "PTR", data: "x.local" },
      ],
    }),
    ["10.30.0.1", "fdff:2000::1"],
  );
  assertEquals(lookupAddresses({ rcode: "NXDOMAIN", source: "negative", answers: [] }), []);
});
