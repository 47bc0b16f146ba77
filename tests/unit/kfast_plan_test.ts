/**
 * The kernel fast path's pure part (src/kfast/plan.ts, render.ts): which ServiceIPs the kernel may
 * carry, the O(changed) difference between plans, and the nft text of a difference.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";
import type { ServiceIpKind, TableEntry } from "../../src/table/entry.ts";
import { diffPlans, emptyDiff, emptyPlan, planKfast } from "../../src/kfast/plan.ts";
import { macOfNode, markOf, renderDiffNft, serviceChain } from "../../src/kfast/render.ts";
import { parseKernelFlows } from "../../src/kfast/conntrack.ts";
import { PeerTable } from "../../src/proxy/peers.ts";
import { CAP_FAST, CAP_KFAST, CAP_PROBE, HelloMessage, MSG_HELLO } from "../../src/proxy/wire.ts";

const SELF = "192.168.77.1";
function entry(
  job: string,
  i: number,
  node: string,
  nsip: string,
  sips: Array<[ServiceIpKind, string]>,
): TableEntry {
  return {
    job,
    instance: i,
    nodeIp: node,
    nodePort: 50103,
    nsip4: parseIPv4(nsip),
    serviceIps: sips.map(([kind, a]) => ({ kind, v4: parseIPv4(a) })),
  };
}

const WEB = [
  entry("a.b.web.d", 0, "192.168.77.2", "10.18.0.66", [["RoundRobin", "10.30.0.1"], [
    "Instance",
    "10.30.0.2",
  ]]),
  entry("a.b.web.d", 1, "192.168.77.3", "10.18.0.130", [["RoundRobin", "10.30.0.1"], [
    "Instance",
    "10.30.0.3",
  ]]),
];
const CLI = entry("a.b.cli.d", 0, SELF, "10.18.0.2", [["Instance", "10.30.0.10"]]);
const CLOSEST = entry("a.b.near.d", 0, "192.168.77.2", "10.18.0.67", [["Closest", "10.30.0.20"]]);
const isLocal = (e: TableEntry) => e.nodeIp === SELF;

Deno.test("kfast plan: a ServiceIP goes to the kernel only when every candidate is local or on a capable peer", () => {
  const all = [...WEB, CLI, CLOSEST];
  const both = planKfast({ entries: all, isLocal, peers: new Set(["192.168.77.2", "192.168.77.3"]) });
  assertEquals(both.services.get(parseIPv4("10.30.0.1")), [
    parseIPv4("10.18.0.66"),
    parseIPv4("10.18.0.130"),
  ]);
  assert(both.services.has(parseIPv4("10.30.0.2")) && both.services.has(parseIPv4("10.30.0.10")));
  assert(!both.services.has(parseIPv4("10.30.0.20")), "Closest stays in userspace (RTT-driven)");
  assertEquals(
    both.snat.get(parseIPv4("10.18.0.2")),
    parseIPv4("10.30.0.10"),
    "client SNAT to its InstanceIP",
  );
  assertEquals(both.remote.get(parseIPv4("10.18.0.130")), "192.168.77.3");
  // n3 without the capability (an Oakestra node, or KernelFastPath off): the RR ServiceIP stays on the TUN.
  const one = planKfast({ entries: all, isLocal, peers: new Set(["192.168.77.2"]) });
  assert(!one.services.has(parseIPv4("10.30.0.1")));
  assert(one.services.has(parseIPv4("10.30.0.2")) && !one.services.has(parseIPv4("10.30.0.3")));
});

Deno.test("kfast diff: O(changed), cuts flows of candidates that left, nft text", () => {
  const peers = new Set(["192.168.77.2", "192.168.77.3"]);
  const a = planKfast({ entries: [...WEB, CLI], isLocal, peers });
  assert(emptyDiff(diffPlans(a, a)));
  const b = planKfast({ entries: [WEB[1], CLI], isLocal, peers }); // web0 undeployed
  const d = diffPlans(a, b);
  assertEquals(d.servicesSet.map(([k]) => k), [parseIPv4("10.30.0.1")]);
  assertEquals(d.servicesGone, [parseIPv4("10.30.0.2")]);
  assertEquals(d.cut, [parseIPv4("10.18.0.66")], "web0's kernel flows are cut");
  assertEquals(d.peersAdded.length + d.peersGone.length, 0);
  const nft = renderDiffNft(d, (p) => (p === "192.168.77.2" ? 1 : 2));
  assert(nft.includes(`delete chain ip netmanager_kfast ${serviceChain(parseIPv4("10.30.0.2"))}`), nft);
  assert(nft.includes("dnat to numgen inc mod 1 map { 0 : 10.18.0.130 }"), nft);
  assert(nft.includes("delete element ip netmanager_kfast peer_of { 10.18.0.66 }"), nft);
  const first = renderDiffNft(diffPlans(emptyPlan(), a), (p) => (p === "192.168.77.2" ? 1 : 2));
  assert(
    first.includes(`add element ip netmanager_kfast mac_mark { ${macOfNode("192.168.77.3")} : 0x4e4b0002 }`),
  );
  assert(first.includes("dnat to numgen inc mod 2 map { 0 : 10.18.0.66, 1 : 10.18.0.130 }"), first);
  assertEquals(markOf(2), 0x4e4b0002);
  assertEquals(macOfNode("192.168.77.3"), "02:4e:c0:a8:4d:03");
});

Deno.test("kfast capability: a peer is kernel-fast only when both HELLOs carry CAP_KFAST", () => {
  const hello = (caps: number): HelloMessage => {
    const m = new HelloMessage();
    m.type = MSG_HELLO;
    m.version = 1;
    m.caps = caps;
    m.nonceHi = 1;
    m.nonceLo = 2;
    m.hostPort = 50103;
    m.nodeId = "n2";
    return m;
  };
  for (
    const [ours, theirs, want] of [[true, true, true], [true, false, false], [false, true, false]] as const
  ) {
    const t = new PeerTable({ localCaps: CAP_FAST | CAP_PROBE | (ours ? CAP_KFAST : 0) });
    const p = t.add("192.168.77.2", 50103, 0);
    t.onHello(p, hello(CAP_FAST | CAP_PROBE | (theirs ? CAP_KFAST : 0)), 0);
    assertEquals(t.stats(0)[0].kfast === true, want, `ours ${ours}, theirs ${theirs}`);
  }
});

Deno.test("kfast flows: conntrack lines → this node's kernel flows (ours by the exact mark), counters both ways", () => {
  const text = [
    "tcp      6 431999 ESTABLISHED src=10.18.0.2 dst=10.30.0.1 sport=40000 dport=80 packets=3 bytes=180 " +
    "src=10.18.0.66 dst=10.30.0.10 sport=80 dport=40000 packets=2 bytes=120 [ASSURED] mark=1313538048 use=1",
    // a flow a peer sent us (its mark): not one of ours
    "tcp      6 100 ESTABLISHED src=10.30.0.20 dst=10.18.0.3 sport=1 dport=80 src=10.18.0.3 dst=10.30.0.20 " +
    "sport=80 dport=1 [ASSURED] mark=1313538049 use=1",
    "icmp     1 29 src=10.18.0.2 dst=10.30.0.1 type=8 code=0 id=7 src=10.18.0.130 dst=10.30.0.10 type=0 code=0 " +
    "id=7 mark=1313538048 use=1",
    "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.",
    "garbage mark=1313538048",
  ].join("\n");
  const flows = parseKernelFlows(text, (ip) => (ip === "10.18.0.66" ? "192.168.77.2" : "local"));
  assertEquals(flows.length, 2);
  assertEquals(flows[0], {
    path: "kernel",
    version: 4,
    proto: 6,
    src: "10.18.0.2",
    sport: 40000,
    dialled: "10.30.0.1",
    dport: 80,
    chosen: "10.18.0.66",
    senderIp: "10.30.0.10",
    node: "192.168.77.2",
    packets: 5,
    bytes: 300,
  });
  assertEquals([flows[1].proto, flows[1].chosen, flows[1].sport], [1, "10.18.0.130", 0]);
});
