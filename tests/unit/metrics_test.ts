import { assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  type DataPlaneMetrics,
  escapeHelp,
  escapeLabelValue,
  formatLabels,
  formatValue,
  MetricsError,
  MetricsWriter,
  renderDataPlaneMetrics,
  writeDataPlaneMetrics,
} from "../../src/proxy/metrics.ts";
import { PeerTable } from "../../src/proxy/peers.ts";
import { CAP_FAST, CAP_PROBE, HelloMessage, MSG_HELLO, ProbeMessage } from "../../src/proxy/wire.ts";

Deno.test("escaping: label values, HELP text", () => {
  assertEquals(escapeLabelValue('say "hi"'), 'say \\"hi\\"');
  assertEquals(escapeLabelValue("C:\\tmp"), "C:\\\\tmp");
  assertEquals(escapeLabelValue("a\nb"), "a\\nb");
  assertEquals(escapeLabelValue('\\"\n'), '\\\\\\"\\n');
  assertEquals(escapeLabelValue("tab\tstays, ünïcode stays"), "tab\tstays, ünïcode stays");
  assertEquals(escapeHelp('a\\b\nc "quoted"'), 'a\\\\b\\nc "quoted"', "HELP keeps quotes");
});

Deno.test("values and label sets", () => {
  assertEquals(
    [0, -0, 1, 42, 0.5, -3.25, 1e21, 2 ** 53, NaN, Infinity, -Infinity].map(formatValue),
    ["0", "0", "1", "42", "0.5", "-3.25", "1e+21", "9007199254740992", "NaN", "+Inf", "-Inf"],
  );
  assertEquals(formatLabels(undefined), "");
  assertEquals(formatLabels({}), "");
  assertEquals(formatLabels({ a: "1", b_2: 'x"y' }), '{a="1",b_2="x\\"y"}');
  assertThrows(() => formatLabels({ "bad-name": "x" }), MetricsError, "label name");
  assertThrows(() => formatLabels({ __reserved: "x" }), MetricsError, "label name");
  assertThrows(() => formatLabels({ "9lives": "x" }), MetricsError, "label name");
});

Deno.test("MetricsWriter: golden text, escaping of quotes, backslashes and newlines", () => {
  const w = new MetricsWriter();
  w.counter("demo_requests_total", 'Requests "served".\nSecond line \\ backslash.')
    .sample(3, { path: '/a"b', note: "c:\\d\ne" })
    .sample(0, { path: "/", note: "" });
  w.gauge("demo_temperature_celsius", "Current temperature.").sample(-1.5).sample(20.25, { room: "x" });
  w.family("demo_untyped", "untyped", "Anything.").sample(NaN);
  w.gauge("demo_empty", "A family without samples.");
  assertEquals(
    w.text(),
    [
      '# HELP demo_requests_total Requests "served".\\nSecond line \\\\ backslash.',
      "# TYPE demo_requests_total counter",
      'demo_requests_total{path="/a\\"b",note="c:\\\\d\\ne"} 3',
      'demo_requests_total{path="/",note=""} 0',
      "# HELP demo_temperature_celsius Current temperature.",
      "# TYPE demo_temperature_celsius gauge",
      "demo_temperature_celsius -1.5",
      'demo_temperature_celsius{room="x"} 20.25',
      "# HELP demo_untyped Anything.",
      "# TYPE demo_untyped untyped",
      "demo_untyped NaN",
      "# HELP demo_empty A family without samples.",
      "# TYPE demo_empty gauge",
      "",
    ].join("\n"),
  );
});

Deno.test("MetricsWriter: constant labels come first; misuse is refused", () => {
  const w = new MetricsWriter({ constLabels: { node: "w1" } });
  const f = w.counter("x_total", "X.").sample(1).sample(2, { kind: "a" });
  assertEquals(f.size, 2);
  assertEquals(
    w.text(),
    '# HELP x_total X.\n# TYPE x_total counter\nx_total{node="w1"} 1\nx_total{node="w1",kind="a"} 2\n',
  );
  assertThrows(() => f.sample(3, { node: "other" }), MetricsError, "clashes");
  assertThrows(() => f.sample(3, { kind: "a" }), MetricsError, "duplicate sample");
  assertThrows(() => f.sample(-1, { kind: "b" }), MetricsError, "≥ 0");
  assertThrows(() => f.sample(NaN, { kind: "c" }), MetricsError, "≥ 0");
  assertThrows(() => w.gauge("x_total", "again"), MetricsError, "twice");
  assertThrows(() => w.gauge("bad-name", "x"), MetricsError, "invalid metric name");
  assertThrows(() => w.gauge("1abc", "x"), MetricsError, "invalid metric name");
  assertThrows(() => new MetricsWriter({ constLabels: { "a b": "x" } }), MetricsError, "label name");
  const g = new MetricsWriter().gauge("ns:sub_gauge", "colons are legal").sample(-5);
  assertEquals(g.size, 1, "negative gauges are fine");
});

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

Deno.test("data plane metrics: golden output", () => {
  assertEquals(renderDataPlaneMetrics(SAMPLE), GOLDEN);
});

Deno.test("data plane metrics: shares a writer with other families and constant labels", () => {
  const w = new MetricsWriter({ constLabels: { instance: "n1" } });
  w.gauge("netmanager_up", "1 while the daemon runs.").sample(1);
  writeDataPlaneMetrics(w, { ...SAMPLE, drops: {}, peers: [] });
  const text = w.text();
  assertEquals(text.split("\n").slice(0, 4), [
    "# HELP netmanager_up 1 while the daemon runs.",
    "# TYPE netmanager_up gauge",
    'netmanager_up{instance="n1"} 1',
    "# HELP netmanager_packets_total Packets handled by the data plane, by direction.",
  ]);
  assertEquals(text.includes('netmanager_peers{instance="n1"} 0\n'), true);
  assertEquals(text.includes("netmanager_drops_total{"), false, "no drop samples, just HELP/TYPE");
  assertThrows(() => writeDataPlaneMetrics(w, SAMPLE), MetricsError, "twice");
});

Deno.test("data plane metrics: PeerTable.stats() feeds the renderer directly", () => {
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
  const text = renderDataPlaneMetrics({ ...SAMPLE, drops: {}, peers: t.stats(20) });
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
