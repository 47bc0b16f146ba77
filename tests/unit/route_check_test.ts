import { assert, assertEquals } from "../helpers/assert.ts";
import { parseIPv4, parseIPv6, parsePrefix4, parsePrefix6 } from "../../src/addr/mod.ts";
import {
  badHost4,
  badHost6,
  checkEntries,
  checkEntry,
  RateLimitedLog,
  type RouteContext,
} from "../../src/control/route_check.ts";
import { parseQueryResult } from "../../src/table/mod.ts";
import type { TableEntry } from "../../src/table/entry.ts";

const JOB = "app.appns.web.webns";
const OTHER = "app.appns.db.dbns";

/** Node 10.18.0.64/26 at 131.1.0.1:50103, hosting JOB#0 at 10.18.0.66; 10.30.9.9 belongs to OTHER. */
function ctx(over: Partial<RouteContext> = {}): RouteContext {
  return {
    overlay4: parsePrefix4("10.16.0.0/12"),
    overlay6: parsePrefix6("fc00::/7"),
    service4: parsePrefix4("10.30.0.0/16"),
    service6: parsePrefix6("fdff::/16"),
    subnet4: parsePrefix4("10.18.0.64/26"),
    subnet6: parsePrefix6("fc00::/120"),
    selfIps: ["131.1.0.1"],
    selfPort: 50103,
    isOwnInstance: (job, n, ns) => job === JOB && n === 0 && ns === parseIPv4("10.18.0.66"),
    serviceOwner4: (a) => a === parseIPv4("10.30.9.9") ? [OTHER] : undefined,
    serviceOwner6: (a) => a[0] === 0xfd && a[15] === 0x99 ? [OTHER] : undefined,
    ...over,
  };
}

function entry(over: Partial<TableEntry> = {}): TableEntry {
  return {
    job: JOB,
    instance: 1,
    nodeIp: "131.1.0.2",
    nodePort: 50103,
    nsip4: parseIPv4("10.18.0.130"),
    nsip6: parseIPv6("fc00::1:2"),
    serviceIps: [
      { kind: "RoundRobin", v4: parseIPv4("10.30.0.1"), v6: parseIPv6("fdff:2000::1") },
      { kind: "Instance", v4: parseIPv4("10.30.0.3"), v6: parseIPv6("fdff::3") },
    ],
    ...over,
  };
}

const causeOf = (e: TableEntry, c = ctx()) => checkEntry(e, c)?.cause;

Deno.test("route check: a remote instance on another node and our own instance pass", () => {
  assertEquals(causeOf(entry()), undefined);
  const own = entry({
    instance: 0,
    nodeIp: "131.1.0.1",
    nsip4: parseIPv4("10.18.0.66"),
    nsip6: parseIPv6("fc00::2"),
  });
  assertEquals(causeOf(own), undefined);
  // IPv6 underlay addresses are fine, ULA included (fc00::/7 may be a real underlay).
  assertEquals(causeOf(entry({ nodeIp: "fd12::7" })), undefined);
});

Deno.test("route check: bad host_ip values are refused with their cause", () => {
  const cases: [string, string][] = [
    ["127.0.0.1", "host_loopback"],
    ["0.0.0.0", "host_unspecified"],
    ["224.0.0.1", "host_multicast"],
    ["169.254.1.1", "host_link_local"],
    ["255.255.255.255", "host_broadcast"],
    ["10.19.1.254", "host_overlay"],
    ["10.30.0.1", "host_overlay"],
    ["::1", "host_loopback"],
    ["::", "host_unspecified"],
    ["ff02::1", "host_multicast"],
    ["fe80::1", "host_link_local"],
    ["::ffff:127.0.0.1", "host_loopback"],
    ["fdff::5", "host_overlay"],
    ["fc00::9", "host_overlay"], // inside this node's own IPv6 subnet
    ["131.1.0.1", "host_self"], // this node, for a remote instance
  ];
  for (const [ip, cause] of cases) assertEquals(causeOf(entry({ nodeIp: ip })), cause, ip);
  assertEquals(badHost4(parseIPv4("8.8.8.8")), undefined);
  assertEquals(badHost6(parseIPv6("2001:db8::1")), undefined);
});

Deno.test("route check: namespace IPs outside the overlay or foreign in our subnet are refused", () => {
  assertEquals(causeOf(entry({ nsip4: parseIPv4("8.8.8.8") })), "nsip_outside_overlay");
  assertEquals(causeOf(entry({ nsip4: parseIPv4("10.30.0.7") })), "nsip_outside_overlay");
  assertEquals(causeOf(entry({ nsip6: parseIPv6("2001:db8::1") })), "nsip_outside_overlay");
  // Inside our subnet: the bridge address, a free address, another job's claim on our instance's address.
  assertEquals(causeOf(entry({ nsip4: parseIPv4("10.18.0.65") })), "nsip_own_subnet");
  assertEquals(causeOf(entry({ nsip4: parseIPv4("10.18.0.127") })), "nsip_own_subnet");
  assertEquals(causeOf(entry({ nsip4: parseIPv4("10.18.0.66"), job: OTHER })), "nsip_own_subnet");
  // Our own instance, but announced at another node or another port.
  const own = { instance: 0, nsip4: parseIPv4("10.18.0.66"), nsip6: parseIPv6("fc00::2") };
  assertEquals(causeOf(entry({ ...own, nodeIp: "131.1.0.9" })), "nsip_own_subnet");
  assertEquals(causeOf(entry({ ...own, nodeIp: "131.1.0.1", nodePort: 53 })), "nsip_own_subnet");
  // Only the IPv6 namespace IP in our subnet.
  assertEquals(causeOf(entry({ nsip6: parseIPv6("fc00::5") })), "nsip_own_subnet");
  // Before the node has a subnet there is nothing to collide with.
  assertEquals(causeOf(entry({ nsip4: parseIPv4("10.18.0.65") }), ctx({ subnet4: undefined })), undefined);
});

Deno.test("route check: ServiceIPs outside the ranges or bound to another job are refused", () => {
  const sip = (v4?: string, v6?: string) =>
    entry({
      serviceIps: [{
        kind: "RoundRobin",
        ...(v4 ? { v4: parseIPv4(v4) } : {}),
        ...(v6 ? { v6: parseIPv6(v6) } : {}),
      }],
    });
  assertEquals(causeOf(sip("10.31.0.1")), "service_ip_outside_range");
  assertEquals(causeOf(sip(undefined, "fc00::77")), "service_ip_outside_range");
  assertEquals(causeOf(sip("10.30.9.9")), "service_ip_taken");
  assertEquals(causeOf(sip(undefined, "fdff::99")), "service_ip_taken");
  // The job's own binding is no collision.
  assertEquals(causeOf(sip("10.30.9.9"), ctx({ serviceOwner4: () => [JOB] })), undefined);
});

Deno.test("route check: per entry — bad entries are listed, the rest accepted; instance IPs unique", () => {
  const good = entry();
  const bad = entry({ instance: 2, nodeIp: "127.0.0.1", nsip4: parseIPv4("10.18.0.131") });
  const twin = entry({ instance: 3, nsip4: parseIPv4("10.18.0.132"), nsip6: undefined });
  const r = checkEntries(JOB, [good, bad, twin], ctx());
  assertEquals(r.accepted, [good]);
  assertEquals(r.rejected.map((x) => x.cause), ["host_loopback", "service_ip_taken"]);
  assert(r.rejected[1].detail.includes("10.30.0.3"));
});

Deno.test("route check: Oakestra's own payload passes unchanged", () => {
  const conv = parseQueryResult({
    app_name: JOB,
    query_key: "10.30.0.1",
    instance_list: [{
      instance_number: 1,
      instance_ip: "10.30.0.3",
      instance_ip_v6: "fdff::3",
      namespace_ip: "10.18.0.130",
      namespace_ip_v6: "fc00::1:2",
      host_ip: "131.1.0.2",
      host_port: 50103,
      cluster_id: "x",
      worker_id: "y",
      service_ip: [
        { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000::1" },
        { IpType: "instance_ip", Address: "10.30.0.3", Address_v6: "fdff::3" },
      ],
    }],
  });
  const r = checkEntries(JOB, conv.entries, ctx());
  assertEquals(r.rejected, []);
  assertEquals(r.accepted.length, 1);
});

Deno.test("RateLimitedLog: logs a cause once per interval, counts every occurrence", () => {
  const lines: Record<string, unknown>[] = [];
  const r = new RateLimitedLog((_m, f) => lines.push(f), 1000);
  for (let t = 0; t < 100; t++) r.note("host_loopback", "x", { t }, t);
  r.note("nsip_own_subnet", "x", {}, 50);
  r.note("host_loopback", "x", { t: 1500 }, 1500);
  assertEquals(r.counts, { host_loopback: 101, nsip_own_subnet: 1 });
  assertEquals(lines.length, 3);
  assertEquals(lines[2].suppressed, 99);
});

Deno.test("route check: a result's shared ServiceIPs are looked up once, not once per instance", () => {
  let asked4 = 0, asked6 = 0;
  const c = ctx({
    serviceOwner4: () => (asked4++, [JOB]),
    serviceOwner6: () => (asked6++, [JOB]),
  });
  const entries = Array.from({ length: 200 }, (_, i) =>
    entry({
      instance: i + 1,
      nsip4: parseIPv4("10.18.1.0") + i,
      nsip6: undefined,
      serviceIps: [
        { kind: "RoundRobin", v4: parseIPv4("10.30.0.1"), v6: parseIPv6("fdff:2000::1") },
        { kind: "Instance", v4: parseIPv4("10.30.2.0") + i },
      ],
    }));
  const r = checkEntries(JOB, entries, c);
  assertEquals(r.accepted.length, 200);
  // 1 lookup for the shared RR address + 1 per distinct instance IP (v4); the v6 RR once.
  assertEquals(asked4, 201);
  assertEquals(asked6, 1);
});
