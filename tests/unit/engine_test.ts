/**
 * The packet-path logic, bytes in and bytes out: translation both ways, policies, parking on a
 * table miss, same-node hand-off, peer and destination checks. Checksums are verified by full
 * recomputation after every rewrite.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { buildIPv4Tcp, buildIPv4Udp, buildIPv6Tcp, ip4, ip6 } from "../helpers/packets.ts";
import { Drop, Engine, type EngineConfig, STRANGER_CONTROL_RATE, Verdict } from "../../src/proxy/engine.ts";
import {
  CAP_FAST,
  CAP_JUMBO,
  CAP_PROBE,
  decodeHello,
  decodeProbe,
  encodeHello,
  encodeProbe,
  HelloMessage,
  MSG_HELLO_ACK,
  MSG_PROBE_REPLY,
  ProbeMessage,
} from "../../src/proxy/wire.ts";
import { checksumsValid, PacketInfo, parsePacket } from "../../src/proxy/packet.ts";
import { parseQueryResult } from "../../src/table/query_result.ts";
import { TranslationTable } from "../../src/table/table.ts";
import { SharedTableView } from "../../src/table/shared_view.ts";
import { parsePrefix4, parsePrefix6 } from "../../src/addr/mod.ts";

const CFG: EngineConfig = {
  selfIp: "192.0.2.1",
  selfPort: 50103,
  service4: parsePrefix4("10.30.0.0/16"),
  service6: parsePrefix6("fdff::/16"),
  subnet4: parsePrefix4("10.18.0.64/26"),
  subnet6: parsePrefix6("fc00::100/120"),
  seed: 7,
};

function inst(n: number, nsip: string, nsip6: string, host: string, iip: string, iip6: string, rr?: string) {
  const sips: Array<Record<string, string>> = [];
  if (rr) sips.push({ IpType: "RR", Address: rr, Address_v6: "fdff:2000::1" });
  sips.push({ IpType: "instance_ip", Address: iip, Address_v6: iip6 });
  return {
    instance_number: n,
    instance_ip: iip,
    instance_ip_v6: iip6,
    namespace_ip: nsip,
    namespace_ip_v6: nsip6,
    host_ip: host,
    host_port: 50103,
    service_ip: sips,
  };
}

function table(withLocal = true): TranslationTable {
  const t = new TranslationTable();
  const cli = parseQueryResult({
    app_name: "a.b.cli.d",
    instance_list: [inst(0, "10.18.0.66", "fc00::102", "192.0.2.1", "10.30.0.10", "fdff::10")],
  });
  const web = parseQueryResult({
    app_name: "a.b.web.d",
    instance_list: [
      inst(0, "10.18.0.130", "fc00::202", "192.0.2.2", "10.30.0.2", "fdff::2", "10.30.0.1"),
      inst(1, "10.18.0.194", "fc00::302", "192.0.2.3", "10.30.0.3", "fdff::3", "10.30.0.1"),
      ...(withLocal
        ? [inst(2, "10.18.0.67", "fc00::103", "192.0.2.1", "10.30.0.4", "fdff::4", "10.30.0.1")]
        : []),
    ],
  });
  t.replaceJob(cli.job, cli.entries);
  t.replaceJob(web.job, web.entries);
  return t;
}

const info = new PacketInfo();
function parsed(p: Uint8Array): PacketInfo {
  assertEquals(parsePacket(p, 0, p.length, info), 0);
  return info;
}

Deno.test("engine: egress rewrites src to the sender's InstanceIP and dst to the chosen nsip; RR rotates", () => {
  const e = new Engine(CFG, table());
  const chosen: string[] = [];
  for (let port = 40000; port < 40006; port++) {
    const p = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: port, dstPort: 80, payload: 100 });
    const v = e.egress(p, 0, p.length, 1000);
    const i = parsed(p);
    assert(checksumsValid(p, i), "checksums valid after rewrite");
    assertEquals(i.src4, ip4("10.30.0.10"));
    chosen.push(`${i.dst4 >>> 0}`);
    if (i.dst4 === ip4("10.18.0.67")) assertEquals(v, Verdict.TO_TUN, "same node goes back to the TUN");
    else assertEquals(v, Verdict.TO_PEER);
  }
  // three candidates, true rotation: every window of three new flows covers all of them
  for (let k = 0; k + 3 <= chosen.length; k++) {
    assertEquals(new Set(chosen.slice(k, k + 3)).size, 3, String(chosen));
  }
  assertEquals(e.flows.size, 6);
});

Deno.test("engine: a flow stays on its instance; the reply is restored to the dialled ServiceIP", () => {
  const e = new Engine(CFG, table(false));
  const out = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5555, dstPort: 53, payload: 20 });
  assertEquals(e.egress(out, 0, out.length, 1), Verdict.TO_PEER);
  const target = parsed(out).dst4;
  const route = e.result.route!;
  for (let k = 0; k < 5; k++) {
    const again = buildIPv4Udp({
      src: "10.18.0.66",
      dst: "10.30.0.1",
      srcPort: 5555,
      dstPort: 53,
      payload: 20,
    });
    e.egress(again, 0, again.length, 2 + k);
    assertEquals(parsed(again).dst4, target);
  }
  // the reply from that instance arrives from its node: src = its InstanceIP, dst = our nsip
  const iip = target === ip4("10.18.0.130") ? "10.30.0.2" : "10.30.0.3";
  const reply = buildIPv4Udp({ src: iip, dst: "10.18.0.66", srcPort: 53, dstPort: 5555, payload: 30 });
  assertEquals(e.ingress(reply, 0, reply.length, 4, route.addr4, undefined, 50103, 10), Verdict.TO_TUN);
  const r = parsed(reply);
  assertEquals(r.src4, ip4("10.30.0.1"), "source restored to the RR ServiceIP");
  assert(checksumsValid(reply, r));
});

Deno.test("engine: ingress drops unknown peers and non-local destinations; forwards unrelated packets unchanged", () => {
  const e = new Engine(CFG, table());
  const p = buildIPv4Tcp({ src: "10.30.0.2", dst: "10.18.0.66", srcPort: 80, dstPort: 999, payload: 10 });
  const copy = p.slice();
  // a sender that is no known peer: parked while its inner source (a ServiceIP) is resolved …
  assertEquals(e.receive(p, 0, p.length, 4, ip4("192.0.2.99"), undefined, 50103, 1), Verdict.PARKED);
  assertEquals(e.misses, ["10.30.0.2"]);
  // … and dropped when the answer does not name it as the instance's node
  assertEquals(e.resolvedStrangers("10.30.0.2", true), []);
  assertEquals(e.counters.drops[Drop.UNKNOWN_PEER], 1);
  // a stranger whose inner source is no ServiceIP is dropped at once
  const plain = buildIPv4Tcp({ src: "172.16.0.1", dst: "10.18.0.66", srcPort: 80, dstPort: 999 });
  assertEquals(e.receive(plain, 0, plain.length, 4, ip4("192.0.2.99"), undefined, 50103, 1), Verdict.DROP);
  assertEquals(e.counters.drops[Drop.UNKNOWN_PEER], 2);
  assertEquals(e.ingress(p, 0, p.length, 4, ip4("192.0.2.2"), undefined, 40000, 1), Verdict.TO_TUN);
  assertEquals(p, copy, "a new flow from a peer is not rewritten on the receiving node");
  const elsewhere = buildIPv4Tcp({
    src: "10.30.0.2",
    dst: "10.18.0.200",
    srcPort: 80,
    dstPort: 1,
    payload: 1,
  });
  assertEquals(
    e.ingress(elsewhere, 0, elsewhere.length, 4, ip4("192.0.2.2"), undefined, 50103, 1),
    Verdict.DROP,
  );
  assertEquals(e.counters.drops[Drop.NOT_LOCAL_DST], 1);
});

Deno.test("engine: unknown sender and non-ServiceIP destinations are dropped", () => {
  const e = new Engine(CFG, table());
  const stranger = buildIPv4Tcp({ src: "10.18.0.70", dst: "10.30.0.1", srcPort: 1, dstPort: 80 });
  assertEquals(e.egress(stranger, 0, stranger.length, 1), Verdict.DROP);
  assertEquals(e.counters.drops[Drop.UNKNOWN_SENDER], 1);
  const raw = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.18.0.130", srcPort: 1, dstPort: 80 });
  assertEquals(e.egress(raw, 0, raw.length, 1), Verdict.DROP);
  assertEquals(e.counters.drops[Drop.NOT_SERVICE_IP], 1);
});

Deno.test("engine: a table miss parks the packet (bounded), reports it once, and releases it after resolution", () => {
  const e = new Engine({ ...CFG, parkPerKey: 3 }, table());
  const mk = (port: number) =>
    buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.50", srcPort: port, dstPort: 80 });
  for (let k = 0; k < 5; k++) {
    const p = mk(1000 + k);
    const v = e.egress(p, 0, p.length, 1);
    assertEquals(v, k < 3 ? Verdict.PARKED : Verdict.DROP);
  }
  assertEquals(e.misses, ["10.30.0.50"]);
  assertEquals(e.parkedNow, 3);
  assertEquals(e.counters.drops[Drop.PARK_FULL], 2);
  // the control plane learns the service and answers
  const late = parseQueryResult({
    app_name: "a.b.late.d",
    instance_list: [inst(0, "10.18.0.131", "fc00::203", "192.0.2.2", "10.30.0.51", "fdff::51", "10.30.0.50")],
  });
  e.applyDelta({ op: "replaceJob", job: late.job, entries: late.entries });
  const back = e.resolved("10.30.0.50", true);
  assertEquals(back.length, 3);
  assertEquals(e.parkedNow, 0);
  for (const p of back) {
    assertEquals(e.egress(p, 0, p.length, 2), Verdict.TO_PEER);
    assertEquals(parsed(p).dst4, ip4("10.18.0.131"));
  }
  // an unresolvable miss drops its packets; a stale parking times out
  const q = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.70", srcPort: 2, dstPort: 80 });
  assertEquals(e.egress(q, 0, q.length, 3), Verdict.PARKED);
  e.misses.length = 0;
  const q2 = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.60", srcPort: 1, dstPort: 80 });
  e.egress(q2, 0, q2.length, 3);
  assertEquals(e.resolved("10.30.0.60", false).length, 0);
  e.tick(10_000, 6000);
  assertEquals(e.parkedNow, 0);
  assert(e.counters.drops[Drop.UNRESOLVED] >= 2);
});

Deno.test("engine: IPv6 through the RR ServiceIP with checksums intact", () => {
  const e = new Engine(CFG, table());
  const p = buildIPv6Tcp({ src: "fc00::102", dst: "fdff:2000::1", srcPort: 4321, dstPort: 80, payload: 77 });
  const v = e.egress(p, 0, p.length, 1);
  assert(v === Verdict.TO_PEER || v === Verdict.TO_TUN);
  const i = parsed(p);
  assert(checksumsValid(p, i));
  assertEquals(p.subarray(i.srcOffset, i.srcOffset + 16), ip6("fdff::10"));
});

Deno.test("engine: flows of an instance that leaves the table are dropped and re-balanced", () => {
  const e = new Engine(CFG, table());
  const p = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 7, dstPort: 80 });
  e.egress(p, 0, p.length, 1);
  const first = parsed(p).dst4;
  const web = table().job("a.b.web.d").filter((x) => x.nsip4 !== first);
  e.applyDelta({ op: "replaceJob", job: "a.b.web.d", entries: web });
  const p2 = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 7, dstPort: 80 });
  e.egress(p2, 0, p2.length, 2);
  assert(parsed(p2).dst4 !== first, "the flow moved to a remaining instance");
});

Deno.test("engine: usedJobs reports jobs whose instances carried traffic since a time", () => {
  const e = new Engine(CFG, table(false));
  assertEquals(e.usedJobs(0), []);
  const p = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 9, dstPort: 80 });
  e.egress(p, 0, p.length, 5000);
  assertEquals(e.usedJobs(4000), ["a.b.web.d"]);
  assertEquals(e.usedJobs(6000), []);
});

Deno.test("engine: a stranger becomes a peer when the resolved job names its address", () => {
  const e = new Engine(CFG, table(false));
  const p = buildIPv4Udp({ src: "10.30.0.77", dst: "10.18.0.66", srcPort: 5, dstPort: 6, payload: 3 });
  assertEquals(e.receive(p, 0, p.length, 4, ip4("192.0.2.9"), undefined, 40000, 1), Verdict.PARKED);
  const late = parseQueryResult({
    app_name: "a.b.far.d",
    instance_list: [inst(0, "10.18.0.250", "fc00::9", "192.0.2.9", "10.30.0.77", "fdff::77")],
  });
  e.applyDelta({ op: "replaceJob", job: late.job, entries: late.entries }, 2);
  const back = e.resolvedStrangers("10.30.0.77", true);
  assertEquals(back.length, 1);
  const d = back[0];
  assertEquals(e.receive(d.bytes, 0, d.bytes.length, d.family, d.src4, d.src6, d.srcPort, 3), Verdict.TO_TUN);
  assertEquals(e.deliver(d.bytes, e.result.off, e.result.len, false), Verdict.TO_TUN);
});

Deno.test("engine: a new public address makes the entries naming it local", () => {
  const e = new Engine({ ...CFG, selfIp: "192.0.2.50" }, table());
  // web#2 (10.18.0.67, InstanceIP 10.30.0.4) is on 192.0.2.1
  const mk = (port: number) =>
    buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.4", srcPort: port, dstPort: 80 });
  const p = mk(1);
  assertEquals(e.egress(p, 0, p.length, 1), Verdict.TO_PEER, "192.0.2.1 is a peer while we are .50");
  e.setSelf("192.0.2.1", 2);
  const q = mk(2);
  assertEquals(e.egress(q, 0, q.length, 3), Verdict.TO_TUN, "now it is this node");
});

Deno.test("engine: ingress reaches instances only — bridge, broadcast, free addresses and multicast are dropped", () => {
  const peer = ip4("192.0.2.2");
  const send = (e: Engine, dst: string) => {
    const p = dst.includes(":")
      ? buildIPv6Tcp({ src: "fdff::2", dst, srcPort: 80, dstPort: 999 })
      : buildIPv4Udp({ src: "10.30.0.2", dst, srcPort: 80, dstPort: 999, payload: 4 });
    return e.ingress(p, 0, p.length, 4, peer, undefined, 50103, 1);
  };
  const e = new Engine(CFG, table());
  assertEquals(send(e, "10.18.0.66"), Verdict.TO_TUN);
  assertEquals(send(e, "fc00::102"), Verdict.TO_TUN);
  assertEquals(send(e, "10.18.0.65"), Verdict.DROP);
  assertEquals(send(e, "10.18.0.127"), Verdict.DROP);
  assertEquals(send(e, "10.18.0.64"), Verdict.DROP);
  assertEquals(send(e, "10.18.0.99"), Verdict.DROP);
  assertEquals(send(e, "224.0.0.251"), Verdict.DROP);
  assertEquals(send(e, "fc00::101"), Verdict.DROP);
  assertEquals(send(e, "fc00::1ff"), Verdict.DROP);
  const d = e.counters.drops;
  assertEquals([d[Drop.TO_BRIDGE], d[Drop.TO_BROADCAST], d[Drop.NOT_INSTANCE], d[Drop.TO_MULTICAST]], [
    2,
    2,
    2,
    1,
  ]);
  // An instance that leaves the table is no destination any more.
  e.applyDelta({ op: "removeJob", job: "a.b.cli.d" });
  assertEquals(send(e, "10.18.0.66"), Verdict.DROP);
  // With the protection off (the old behaviour) the bridge and the broadcast address are reached.
  const open = new Engine({ ...CFG, ingressAnyInSubnet: true }, table());
  assertEquals(send(open, "10.18.0.65"), Verdict.TO_TUN);
  assertEquals(send(open, "10.18.0.127"), Verdict.TO_TUN);
});

Deno.test("engine: stranger state is bounded — per underlay source, in keys, in rate and in bytes", () => {
  const e = new Engine(CFG, table());
  const d = e.counters.drops;
  let misses = 0;
  // 50k distinct inner sources (v4 and v6) from 500 underlay sources, all within one second.
  for (let k = 0; k < 50_000; k++) {
    const v6 = k % 2 === 1;
    const p = v6
      ? buildIPv6Tcp({
        src: `fdff::${(k >>> 16).toString(16)}:${(k & 0xffff).toString(16)}`,
        dst: "fc00::102",
        srcPort: 1,
        dstPort: 2,
      })
      : buildIPv4Udp({
        src: `10.30.${(k >>> 8) & 0xff}.${k & 0xff}`,
        dst: "10.18.0.66",
        srcPort: 1,
        dstPort: 2,
        payload: 8,
      });
    e.receive(
      p,
      0,
      p.length,
      4,
      ip4(`198.51.${(k % 500) >>> 8}.${(k % 500) & 0xff}`),
      undefined,
      50103,
      500 + k / 100,
    );
    misses += e.misses.length;
    e.misses.length = 0;
  }
  // 500 ms at 100 new keys per second, plus the burst of 100.
  assert(misses <= 151, `misses ${misses}`);
  assert(e.parkedNow <= 151, `parked ${e.parkedNow}`);
  assert(d[Drop.STRANGER_LIMIT] >= 49_800);
  // One underlay source cannot take the whole budget.
  const f = new Engine(CFG, table());
  for (let k = 0; k < 1000; k++) {
    const p = buildIPv4Udp({
      src: `10.30.1.${k & 0xff}`,
      dst: "10.18.0.66",
      srcPort: k,
      dstPort: 2,
      payload: 8,
    });
    f.receive(p, 0, p.length, 4, ip4("198.51.100.1"), undefined, 50103, 1);
  }
  assertEquals(f.misses.length, 16);
  // Each inner source parks at most 8 datagrams; expiry frees everything.
  const g = new Engine(CFG, table());
  for (let k = 0; k < 20; k++) {
    const p = buildIPv4Udp({ src: "10.30.1.1", dst: "10.18.0.66", srcPort: k, dstPort: 2, payload: 1000 });
    g.receive(p, 0, p.length, 4, ip4("198.51.100.1"), undefined, 50103, 1);
  }
  assertEquals(g.parkedNow, 8);
  g.tick(10_000);
  assertEquals(g.parkedNow, 0);
  // After the expiry, the source may try again (its key count went back to zero).
  const again = buildIPv4Udp({ src: "10.30.1.2", dst: "10.18.0.66", srcPort: 1, dstPort: 2 });
  assertEquals(
    g.receive(again, 0, again.length, 4, ip4("198.51.100.1"), undefined, 50103, 10_001),
    Verdict.PARKED,
  );
});

Deno.test("engine: /0 ranges hold every address (instance subnet on ingress, ServiceIP range for strangers)", () => {
  const wide = { ...CFG, subnet4: parsePrefix4("0.0.0.0/0"), service4: parsePrefix4("0.0.0.0/0") };
  const e = new Engine(wide, table());
  // Ingress from a known peer to a local instance: inside a /0 subnet.
  const p = buildIPv4Tcp({ src: "10.30.0.2", dst: "10.18.0.66", srcPort: 80, dstPort: 999, payload: 10 });
  assertEquals(e.ingress(p, 0, p.length, 4, ip4("192.0.2.2"), undefined, 50103, 1), Verdict.TO_TUN);
  // A stranger's packet whose inner source is in a /0 ServiceIP range is parked for resolution.
  const q = buildIPv4Udp({ src: "172.16.0.5", dst: "10.18.0.66", srcPort: 5, dstPort: 6, payload: 3 });
  assertEquals(e.receive(q, 0, q.length, 4, ip4("192.0.2.99"), undefined, 50103, 2), Verdict.PARKED);
  // And egress: any destination is a ServiceIP.
  const r = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5, dstPort: 6, payload: 3 });
  assert(e.egress(r, 0, r.length, 3) !== Verdict.DROP);
});

Deno.test("engine: with the park full, a new ServiceIP's miss is still reported (once); its packet is dropped", () => {
  const e = new Engine({ ...CFG, parkPerKey: 8, parkTotal: 2 }, table());
  const to = (dst: string, port: number) =>
    buildIPv4Tcp({ src: "10.18.0.66", dst, srcPort: port, dstPort: 80 });
  for (let k = 0; k < 2; k++) {
    const p = to("10.30.0.50", 1000 + k);
    assertEquals(e.egress(p, 0, p.length, 1), Verdict.PARKED);
  }
  assertEquals(e.parkedNow, 2);
  // The park is full: a packet to another unknown ServiceIP is dropped, but its miss is reported.
  for (let k = 0; k < 3; k++) {
    const p = to("10.30.0.60", 2000 + k);
    assertEquals(e.egress(p, 0, p.length, 1), Verdict.DROP);
  }
  assertEquals(e.misses, ["10.30.0.50", "10.30.0.60"]);
  assertEquals(e.counters.drops[Drop.PARK_FULL], 3);
  // Entries are bounded too: with two entries already, a third address is neither parked nor reported.
  const p = to("10.30.0.70", 3000);
  assertEquals(e.egress(p, 0, p.length, 1), Verdict.DROP);
  assertEquals(e.misses.length, 2);
  // The reported miss resolves like any other (nothing was parked for it).
  assertEquals(e.resolved("10.30.0.60", true).length, 0);
  assertEquals(e.resolved("10.30.0.50", true).length, 2);
});

Deno.test("engine: a stranger's HELLO and PROBE are answered statelessly (no JUMBO offered), rate-limited", () => {
  const e = new Engine({ ...CFG, fast: true, nodeId: "me" }, table());
  const hello = new Uint8Array(96);
  const n = encodeHello(hello, 0, {
    caps: CAP_FAST | CAP_PROBE | CAP_JUMBO,
    nonceHi: 7,
    nonceLo: 9,
    hostPort: 50103,
    nodeId: "x",
  });
  assertEquals(e.receive(hello, 0, n, 4, ip4("192.0.2.99"), undefined, 50103, 1), Verdict.DROP);
  assertEquals(e.control.length, 1);
  const ack = new HelloMessage();
  assert(decodeHello(e.control[0].bytes, 0, e.control[0].bytes.length, ack));
  assertEquals([ack.type, ack.nonceHi, ack.nonceLo, ack.nodeId], [MSG_HELLO_ACK, 7, 9, "me"]);
  assertEquals([(ack.caps & CAP_FAST) !== 0, (ack.caps & CAP_PROBE) !== 0, ack.caps & CAP_JUMBO], [
    true,
    true,
    0,
  ]);
  assertEquals([e.control[0].addr4, e.control[0].port], [ip4("192.0.2.99"), 50103]);
  assertEquals(e.peers.size, 2, "no state: still only the table's peers");
  const probe = new Uint8Array(16);
  const pn = encodeProbe(probe, 0, 5, 1234);
  e.control.length = 0;
  assertEquals(e.receive(probe, 0, pn, 4, ip4("192.0.2.99"), undefined, 50103, 1), Verdict.DROP);
  const reply = new ProbeMessage();
  assert(decodeProbe(e.control[0].bytes, 0, e.control[0].bytes.length, reply));
  assertEquals([reply.type, reply.seq, reply.timestampUs], [MSG_PROBE_REPLY, 5, 1234]);
  // A flood is answered up to the rate (STRANGER_CONTROL_RATE per second), then dropped and counted.
  e.control.length = 0;
  for (let k = 0; k < 2 * STRANGER_CONTROL_RATE; k++) {
    e.receive(probe, 0, pn, 4, ip4("192.0.2.99"), undefined, 1, 1);
  }
  assert(e.control.length < STRANGER_CONTROL_RATE + 5, `answered ${e.control.length}`);
  assert(e.counters.drops[Drop.STRANGER_LIMIT] >= STRANGER_CONTROL_RATE - 5);
});

Deno.test("engine: new flows skip a down peer's instances and local instances whose namespace is gone", () => {
  const e = new Engine(CFG, table());
  const flowTo = (port: number) => {
    const p = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: port, dstPort: 80 });
    assert(e.egress(p, 0, p.length, 1) !== Verdict.DROP);
    return `${p[16]}.${p[17]}.${p[18]}.${p[19]}`;
  };
  const all = new Set([1, 2, 3, 4, 5, 6].map((k) => flowTo(1000 + k)));
  assertEquals([...all].sort(), ["10.18.0.130", "10.18.0.194", "10.18.0.67"]);
  // 192.0.2.3 down, the local instance 10.18.0.67 gone: new flows all go to 192.0.2.2's instance.
  e.peers.get("192.0.2.3:50103")!.down = true;
  e.setDeadLocal([ip4("10.18.0.67")]);
  assertEquals(new Set([1, 2, 3, 4].map((k) => flowTo(2000 + k))), new Set(["10.18.0.130"]));
  assertEquals(e.peerHealth("192.0.2.3:50103"), "down");
  // Counted per ServiceIP and instance.
  assertEquals(e.choices.get("10.30.0.1 10.18.0.130"), 2 + 4);
});

Deno.test("engine on a shared view (as in a Worker): same choices as on the owner; changes arrive as tableChanged", () => {
  const owner = table();
  const view = new SharedTableView(structuredClone(owner.shareLayout()));
  owner.onLayout = () => view.attach(structuredClone(owner.shareLayout()));
  const onView = new Engine(CFG, view);
  const onOwner = new Engine(CFG, table());
  for (let port = 100; port < 106; port++) {
    const a = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: port, dstPort: 80 });
    const b = a.slice();
    assertEquals(onView.egress(a, 0, a.length, 1), onOwner.egress(b, 0, b.length, 1));
    assertEquals(a, b, "the same rewrite");
    const a6 = buildIPv6Tcp({ src: "fc00::102", dst: "fdff:2000::1", srcPort: port, dstPort: 80 });
    const b6 = a6.slice();
    assertEquals(onView.egress(a6, 0, a6.length, 1), onOwner.egress(b6, 0, b6.length, 1));
    assertEquals(a6, b6);
  }
  assertEquals(onView.usedJobs(0), ["a.b.web.d"]);
  assertEquals(onView.route("192.0.2.1:50103")?.local, true);
  // The owner drops web's instance 0 (and grows, moving to new buffers): the view's engine learns
  // only the namespace IPs that left, its flows to them go, new flows avoid them.
  const p = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 7, dstPort: 80 });
  onView.egress(p, 0, p.length, 2);
  const first = parsed(p).dst4;
  const web = owner.job("a.b.web.d").filter((x) => x.nsip4 !== first);
  const { gone } = owner.replaceJob("a.b.web.d", web);
  const { nsip6: _, ...base } = web[0]; // (a namespace IPv6 of its own would replace web's)
  for (let j = 0; j < 100; j++) {
    const more = { kind: "Instance" as const, v4: ip4("10.30.1.0") + j };
    owner.upsert({
      ...base,
      job: `a.b.x${j}.d`,
      instance: 0,
      nsip4: ip4("10.20.0.1") + j,
      serviceIps: [more],
    });
  }
  assertEquals(gone, [first]);
  assert(view.version > 1, "the owner moved to new buffers");
  onView.tableChanged(gone, 3);
  for (let port = 7; port < 13; port++) {
    const q = buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: port, dstPort: 80 });
    onView.egress(q, 0, q.length, 4);
    assert(parsed(q).dst4 !== first, "no new or old flow goes to the instance that left");
  }
  assertEquals(onView.table.size, owner.size);
  assertEquals(owner.size, 1 + 2 + 100);
});
