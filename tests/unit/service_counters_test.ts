/**
 * Per-ServiceIP counters: counted by table group, carried over when the table renumbers its groups,
 * dropped for addresses that left the table, merged across workers, named from the table; the node
 * report carries them (bounded) and the cluster view sums them per service and instance.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import { TranslationTable } from "../../src/table/table.ts";
import type { TableEntry } from "../../src/table/entry.ts";
import {
  mergeServiceTraffic,
  nameServiceTraffic,
  ServiceCounters,
  SVC_RX,
  SVC_TX,
} from "../../src/proxy/service_counters.ts";
import { mergeStats } from "../../src/proxy/merge_stats.ts";
import type { StatsData } from "../../src/proxy/messages.ts";
import { buildNodeReport, MAX_REPORT_SERVICES } from "../../src/control/report.ts";
import {
  ClusterState,
  clusterView,
  DeployedNoticeSchema,
  MAX_REPORT_BYTES,
  NodeReportSchema,
  ReportStore,
} from "../../src/cluster/mod.ts";

const entry = (job: string, n: number, nsip: string, sips: TableEntry["serviceIps"]): TableEntry => ({
  job,
  instance: n,
  nodeIp: "192.0.2.1",
  nodePort: 50103,
  nsip4: parseIPv4(nsip),
  serviceIps: sips,
});
const A = "app.ns.a.ns";
const B = "app.ns.b.ns";

Deno.test("service counters: by address, InstanceIP apart, v6, carried over table changes, gone with their address", () => {
  const t = new TranslationTable();
  t.replaceJob(A, [
    entry(A, 0, "10.18.0.66", [
      { kind: "RoundRobin", v4: parseIPv4("10.30.0.1"), v6: parseIPv6("fdff:2000::1") },
      { kind: "Instance", v4: parseIPv4("10.30.0.2") },
    ]),
  ]);
  const c = new ServiceCounters(t);
  c.add4(parseIPv4("10.30.0.1"), 100, SVC_TX);
  c.add4(parseIPv4("10.30.0.1"), 100, SVC_TX);
  c.add4(parseIPv4("10.30.0.1"), 60, SVC_RX);
  c.add4(parseIPv4("10.30.0.2"), 40, SVC_TX);
  c.add4(parseIPv4("10.99.0.1"), 1000, SVC_TX); // not in the table: not counted
  const six = new Uint8Array(40);
  six.set(parseIPv6("fdff:2000::1"), 24);
  c.add6(six, 24, 120, SVC_TX);
  const byAddr = () => Object.fromEntries(c.report().map((s) => [s.address, s]));
  assertEquals(byAddr()["10.30.0.1"], {
    address: "10.30.0.1",
    txPackets: 2,
    txBytes: 200,
    rxPackets: 1,
    rxBytes: 60,
  });
  assertEquals(byAddr()["10.30.0.2"].txBytes, 40);
  assertEquals(byAddr()["fdff:2000::1"].txBytes, 120);
  assertEquals(c.report().length, 3);

  // Another job comes and the first is replaced: group numbers move; counts follow the address.
  t.replaceJob(B, [entry(B, 0, "10.18.0.67", [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.9") }])]);
  t.removeJob(A);
  t.replaceJob(A, [entry(A, 0, "10.18.0.66", [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }])]);
  c.add4(parseIPv4("10.30.0.9"), 7, SVC_TX);
  c.add4(parseIPv4("10.30.0.1"), 1, SVC_TX);
  const after = byAddr();
  assertEquals(after["10.30.0.1"].txBytes, 201);
  assertEquals(after["10.30.0.9"].txBytes, 7);
  assertEquals(after["10.30.0.2"], undefined, "the InstanceIP left the table: its series ends");
  assertEquals(after["fdff:2000::1"], undefined);

  const named = nameServiceTraffic(c.report(), t);
  assertEquals(named.map((s) => [s.service, s.address, s.kind]), [
    [A, "10.30.0.1", "RoundRobin"],
    [B, "10.30.0.9", "RoundRobin"],
  ]);
});

Deno.test("service counters: merged across workers by address; InstanceIP named with its instance", () => {
  const m = mergeServiceTraffic([
    [{ address: "10.30.0.1", txPackets: 1, txBytes: 10, rxPackets: 2, rxBytes: 20 }],
    [
      { address: "10.30.0.1", txPackets: 3, txBytes: 30, rxPackets: 4, rxBytes: 40 },
      { address: "10.30.0.2", txPackets: 1, txBytes: 1, rxPackets: 0, rxBytes: 0 },
    ],
  ]);
  assertEquals(m[0], { address: "10.30.0.1", txPackets: 4, txBytes: 40, rxPackets: 6, rxBytes: 60 });
  const base = { services: undefined } as unknown as StatsData;
  const stats = (services: StatsData["services"]): StatsData => ({
    ...base,
    tunRx: 0,
    tunRxBytes: 0,
    tunTx: 0,
    tunTxBytes: 0,
    udpRx: 0,
    udpRxBytes: 0,
    udpTx: 0,
    udpTxBytes: 0,
    localHandoff: 0,
    jumboTx: 0,
    jumboRx: 0,
    jumboTxInPlace: 0,
    parked: 0,
    released: 0,
    parkedNow: 0,
    flows: 0,
    drops: {},
    peers: [],
    usedJobs: [],
    heap: { used: 0, total: 0, external: 0 },
    services,
  });
  const merged = mergeStats([
    stats([{ address: "10.30.0.2", txPackets: 1, txBytes: 5, rxPackets: 0, rxBytes: 0 }]),
    stats([{ address: "10.30.0.2", txPackets: 1, txBytes: 6, rxPackets: 0, rxBytes: 0 }]),
  ]);
  assertEquals(merged.services?.[0].txBytes, 11);
  const t = new TranslationTable();
  t.replaceJob(A, [entry(A, 3, "10.18.0.66", [{ kind: "Instance", v4: parseIPv4("10.30.0.2") }])]);
  assertEquals(nameServiceTraffic(merged.services!, t)[0].instance, 3);
});

Deno.test("report and cluster view: traffic per service and per instance, bounded, schema-valid", () => {
  const svc = (k: number) => ({
    service: "x".repeat(300),
    address: `10.30.${k >> 8}.${k & 255}`,
    kind: "RoundRobin" as const,
    txPackets: k,
    txBytes: k * 100,
    rxPackets: 1,
    rxBytes: 1,
  });
  const self = { version: "1", endpoint: "192.0.2.1:50103", instances: 1, uptimeS: 1 };
  const big = buildNodeReport(self, [], Array.from({ length: 500 }, (_, k) => svc(k)));
  assertEquals(big.services?.length, MAX_REPORT_SERVICES);
  assertEquals(big.services?.[0].tx_bytes, 499 * 100, "the busiest kept");
  assert(NodeReportSchema.safeParse(JSON.parse(JSON.stringify(big))).success);
  assert(JSON.stringify(big).length < MAX_REPORT_BYTES, `${JSON.stringify(big).length} bytes`);

  const st = new ClusterState();
  st.nodeSubnet("w1");
  st.nodeSubnet("w2");
  const { job } = st.deployService({
    app_name: "a",
    app_ns: "b",
    microservice_name: "c",
    microservice_namespace: "d",
  });
  st.deployInstance(job.job_name, 0);
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
  const j = st.jobs()[0];
  const instIp = j.instance_list[0].instance_ip;
  const t = (address: string, tx: number, kind = "RoundRobin") => ({
    service: j.job_name,
    address,
    kind: kind as "RoundRobin",
    txPackets: 1,
    txBytes: tx,
    rxPackets: 1,
    rxBytes: 2,
  });
  const reports = new ReportStore();
  reports.accept(
    "w1",
    JSON.stringify(buildNodeReport(self, [], [t("10.30.0.0", 1000), t(instIp, 7, "Instance")])),
    10_000,
    () => true,
  );
  reports.accept(
    "w2",
    JSON.stringify(buildNodeReport({ ...self, endpoint: "192.0.2.2:50103" }, [], [t("10.30.0.0", 500)])),
    10_000,
    () => true,
  );
  const v = clusterView(st, reports, undefined, 10_500);
  assertEquals(v.services[0].rr_ip, "10.30.0.0");
  assertEquals(v.services[0].traffic, { tx_packets: 3, tx_bytes: 1507, rx_packets: 3, rx_bytes: 6 });
  assertEquals(v.services[0].instances[0].traffic, {
    tx_packets: 1,
    tx_bytes: 7,
    rx_packets: 1,
    rx_bytes: 2,
  });
});
