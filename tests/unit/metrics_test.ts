/**
 * The node's metrics (prom-client): every data-plane family and sample as before the move to
 * prom-client (names, labels, escaping), node state gauges, histograms, and label sets that vanish
 * with their peer.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { type DataPlaneMetrics, NodeMetrics } from "../../src/proxy/metrics.ts";
import { PeerTable } from "../../src/proxy/peers.ts";
import { CAP_FAST, CAP_PROBE, HelloMessage, MSG_HELLO, ProbeMessage } from "../../src/proxy/wire.ts";

function metricsOf(
  dp: DataPlaneMetrics | undefined,
  state: { registered?: boolean; connected?: boolean; instances?: number } = {},
): NodeMetrics {
  return new NodeMetrics({
    dataPlane: () => dp,
    registered: () => state.registered ?? true,
    clusterConnected: () => state.connected,
    instances: () => state.instances ?? 0,
  });
}

const SAMPLE: DataPlaneMetrics = {
  tunRx: { packets: 10, bytes: 14000 },
  tunTx: { packets: 9, bytes: 12600 },
  udpRx: { packets: 9, bytes: 12672 },
  udpTx: { packets: 10, bytes: 14080 },
  drops: { no_route: 2, 'bad "version"\\\n': 1 },
  parkedPackets: 3,
  flows: 4,
  tableEntries: 5,
  peers: [
    {
      endpoint: "131.1.0.2:50103",
      node: "65f1a2b3c4d5e6f708192a3b",
      rttMs: 12.5,
      fast: true,
      txPackets: 10,
      txBytes: 14080,
      rxPackets: 9,
      rxBytes: 12672,
      drops: 0,
      probesSent: 7,
      probesLost: 1,
    },
    {
      endpoint: "[fd00::2]:50103",
      fast: false,
      txPackets: 0,
      txBytes: 0,
      rxPackets: 0,
      rxBytes: 0,
      drops: 2,
      probesSent: 0,
      probesLost: 0,
    },
  ],
};

const GOLDEN = `# HELP netmanager_packets_total Packets handled by the data plane, by direction.
# TYPE netmanager_packets_total counter
netmanager_packets_total{direction="tun_rx"} 10
netmanager_packets_total{direction="tun_tx"} 9
netmanager_packets_total{direction="udp_rx"} 9
netmanager_packets_total{direction="udp_tx"} 10
# HELP netmanager_bytes_total Bytes handled by the data plane, by direction.
# TYPE netmanager_bytes_total counter
netmanager_bytes_total{direction="tun_rx"} 14000
netmanager_bytes_total{direction="tun_tx"} 12600
netmanager_bytes_total{direction="udp_rx"} 12672
netmanager_bytes_total{direction="udp_tx"} 14080
# HELP netmanager_drops_total Packets dropped, by reason.
# TYPE netmanager_drops_total counter
netmanager_drops_total{reason="no_route"} 2
netmanager_drops_total{reason="bad \\"version\\"\\\\\\n"} 1
# HELP netmanager_parked_packets Packets parked waiting for a table answer.
# TYPE netmanager_parked_packets gauge
netmanager_parked_packets 3
# HELP netmanager_flows Active flows in the conversion cache.
# TYPE netmanager_flows gauge
netmanager_flows 4
# HELP netmanager_table_entries Entries in the translation table.
# TYPE netmanager_table_entries gauge
netmanager_table_entries 5
# HELP netmanager_peers Known peer nodes.
# TYPE netmanager_peers gauge
netmanager_peers 2
# HELP netmanager_peer_rtt_seconds Smoothed round-trip time to a peer node.
# TYPE netmanager_peer_rtt_seconds gauge
netmanager_peer_rtt_seconds{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103"} 0.0125
# HELP netmanager_peer_fast 1 when FAST mode is on towards a peer node.
# TYPE netmanager_peer_fast gauge
netmanager_peer_fast{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103"} 1
netmanager_peer_fast{endpoint="[fd00::2]:50103"} 0
# HELP netmanager_peer_packets_total Packets exchanged with a peer node, by direction.
# TYPE netmanager_peer_packets_total counter
netmanager_peer_packets_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103",direction="tx"} 10
netmanager_peer_packets_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103",direction="rx"} 9
netmanager_peer_packets_total{endpoint="[fd00::2]:50103",direction="tx"} 0
netmanager_peer_packets_total{endpoint="[fd00::2]:50103",direction="rx"} 0
# HELP netmanager_peer_bytes_total Bytes exchanged with a peer node, by direction.
# TYPE netmanager_peer_bytes_total counter
netmanager_peer_bytes_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103",direction="tx"} 14080
netmanager_peer_bytes_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103",direction="rx"} 12672
netmanager_peer_bytes_total{endpoint="[fd00::2]:50103",direction="tx"} 0
netmanager_peer_bytes_total{endpoint="[fd00::2]:50103",direction="rx"} 0
# HELP netmanager_peer_drops_total Packets to or from a peer node that were dropped.
# TYPE netmanager_peer_drops_total counter
netmanager_peer_drops_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103"} 0
netmanager_peer_drops_total{endpoint="[fd00::2]:50103"} 2
# HELP netmanager_peer_probes_sent_total RTT probes sent to a peer node.
# TYPE netmanager_peer_probes_sent_total counter
netmanager_peer_probes_sent_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103"} 7
netmanager_peer_probes_sent_total{endpoint="[fd00::2]:50103"} 0
# HELP netmanager_peer_probes_lost_total RTT probes to a peer node that went unanswered.
# TYPE netmanager_peer_probes_lost_total counter
netmanager_peer_probes_lost_total{node="65f1a2b3c4d5e6f708192a3b",endpoint="131.1.0.2:50103"} 1
netmanager_peer_probes_lost_total{endpoint="[fd00::2]:50103"} 0
`;

Deno.test("node metrics: every data-plane sample, HELP and TYPE of the hand-written exposition is kept", async () => {
  const text = await metricsOf(SAMPLE).text();
  const lines = new Set(text.split("\n"));
  for (const l of GOLDEN.split("\n").filter((l) => l !== "")) assert(lines.has(l), `missing: ${l}\n${text}`);
  assert(text.endsWith("\n"));
});

Deno.test("node metrics: build info, state gauges and process metrics without a data plane", async () => {
  const text = await metricsOf(undefined, { registered: false, instances: 0 }).text();
  assert(/^netmanager_build_info\{version="[^"]+",deno="[^"]+",component="node"\} 1$/m.test(text), text);
  assert(text.includes("\nnetmanager_registered 0\n"));
  assert(text.includes("\nnetmanager_data_plane_running 0\n"));
  assert(text.includes("\nnetmanager_instances 0\n"));
  assert(!/^netmanager_cluster_connected /m.test(text), "no cluster connection: no sample");
  assert(!/^netmanager_flows /m.test(text), "no data plane: no data-plane gauges");
  assert(/^process_cpu_seconds_total \d/m.test(text), "process metrics");
  assert(!text.includes("nodejs_eventloop_lag"), "event-loop lag is not measured under Deno: left out");
  assert(!text.includes("netmanager_peer_fast{"), "no peer samples");
  assert(!/^netmanager_packets_total\{/m.test(text), "no data-plane samples");
  const c = await metricsOf(undefined, { connected: false }).text();
  assert(c.includes("\nnetmanager_cluster_connected 0\n"));
});

Deno.test("node metrics: a forgotten peer's series disappear; bad values are skipped, not thrown", async () => {
  let dp: DataPlaneMetrics = SAMPLE;
  const m = new NodeMetrics({
    dataPlane: () => dp,
    registered: () => true,
    clusterConnected: () => true,
    instances: () => 2,
  });
  assert((await m.text()).includes('endpoint="[fd00::2]:50103"'));
  dp = { ...SAMPLE, peers: [SAMPLE.peers[0]], drops: { no_route: -1, nan: NaN } };
  const t = await m.text();
  assert(!t.includes('endpoint="[fd00::2]:50103"'), t);
  assert(!t.includes("netmanager_drops_total{"), "negative and NaN counters skipped");
  assert(t.includes("\nnetmanager_peers 1\n"));
});

Deno.test("node metrics: deploy and table-miss histograms", async () => {
  const m = metricsOf(undefined);
  m.deploySeconds.observe({ kind: "container", result: "ok" }, 0.03);
  m.tableMissSeconds.observe({ result: "not_found" }, 0.002);
  const t = await m.text();
  assert(
    t.includes('netmanager_deploy_duration_seconds_bucket{le="0.05",kind="container",result="ok"} 1'),
    t,
  );
  assert(t.includes('netmanager_deploy_duration_seconds_bucket{le="0.025",kind="container",result="ok"} 0'));
  assert(t.includes('netmanager_deploy_duration_seconds_count{kind="container",result="ok"} 1'));
  assert(t.includes('netmanager_table_miss_duration_seconds_count{result="not_found"} 1'));
  assertEquals(m.contentType.startsWith("text/plain"), true);
});

Deno.test("node metrics: PeerTable.stats() feeds the registry directly", async () => {
  const t = new PeerTable({ nonce: () => 1 });
  const p = t.addKey("131.1.0.2:50103", 0);
  const h = new HelloMessage();
  h.type = MSG_HELLO;
  h.version = 1;
  h.caps = CAP_FAST | CAP_PROBE;
  h.nodeId = 'odd"id\\';
  t.onHello(p, h, 0);
  t.requestRtt(p, 0);
  t.tick(0, { hello() {}, probe() {} });
  const r = new ProbeMessage();
  r.type = 0x13;
  r.seq = p.probeSeq;
  r.timestampUs = p.probeSentUs;
  t.onProbeReply(p, r, 20);
  const text = await metricsOf({ ...SAMPLE, drops: {}, peers: t.stats(20) }).text();
  assertEquals(
    text.includes('netmanager_peer_rtt_seconds{node="odd\\"id\\\\",endpoint="131.1.0.2:50103"} 0.02\n'),
    true,
    text,
  );
  assertEquals(
    text.includes('netmanager_peer_probes_sent_total{node="odd\\"id\\\\",endpoint="131.1.0.2:50103"} 1\n'),
    true,
  );
});
