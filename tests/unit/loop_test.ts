/**
 * The packet loop between its two seams, without root: two nodes, each an engine + an in-memory TUN
 * side + the real UDP bind over an in-memory wire. Egress of a batch to a peer, ingress into the
 * TUN with the reply restored, parking and its resolution, a JUMBO round trip, stats.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { buildIPv4Tcp, buildIPv4Udp, ip4 } from "../helpers/packets.ts";
import { MemoryBind, MemoryTun } from "../helpers/memory_seams.ts";
import {
  A,
  B,
  CLI,
  type LoopNode,
  loopPair as pair,
  MTU,
  pushSuperPacket,
  SUPER_PAYLOAD,
  tableOf,
  WEB,
} from "../helpers/loop_pair.ts";
import { Engine } from "../../src/proxy/engine.ts";
import { PacketLoop } from "../../src/proxy/loop.ts";
import { checksumsValid, PacketInfo, parsePacket } from "../../src/proxy/packet.ts";
import { completeChecksum } from "../../src/proxy/checksum.ts";
import { parsePrefix4, parsePrefix6 } from "../../src/addr/mod.ts";
import { VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";

const info = new PacketInfo();
function parsed(p: Uint8Array): PacketInfo {
  assertEquals(parsePacket(p, 0, p.length, info), 0);
  return info;
}

Deno.test("loop: a batch read from the TUN goes to the peer in GSO runs and into its TUN translated", () => {
  const [a, b] = pair();
  for (let k = 0; k < 5; k++) {
    a.tun.push(
      buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5000, dstPort: 53, payload: 100 + k }),
    );
  }
  assertEquals(a.loop.drainTun(1), 5);
  assertEquals(a.wire.sent.length, 5, "five datagrams on the wire");
  assert(a.wire.sent.every((d) => d.dst4 === ip4(B) && d.port === 50103));
  assertEquals(a.wire.sends, 1, "one sendmmsg for the batch");
  assertEquals(a.wire.gsoEntries, 0, "growing sizes: no run (a GSO run needs equal or shrinking sizes)");
  assertEquals(b.loop.drainBind(2), 5);
  assertEquals(b.tun.written.length, 5);
  b.tun.written.forEach((w, k) => {
    const i = parsed(w.bytes);
    assertEquals([i.src4, i.dst4, i.l4Len], [ip4("10.30.0.10"), ip4("10.18.0.130"), 8 + 100 + k]);
    assert(checksumsValid(w.bytes, i), "raw mode: complete checksums");
  });
  // Equal sizes to one peer are appended into one GSO entry.
  for (let k = 0; k < 4; k++) {
    a.tun.push(
      buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5000, dstPort: 53, payload: 64 }),
    );
  }
  a.loop.drainTun(3);
  assertEquals(a.wire.gsoEntries, 1);
  b.wire.gro = true;
  assertEquals(b.loop.drainBind(4), 4, "a GRO message is split back into its datagrams");
  assertEquals(b.tun.written.length, 9);
});

Deno.test("loop: ingress of a reply gets the dialled ServiceIP back as its source; stats add up", () => {
  const [a, b] = pair();
  a.tun.push(buildIPv4Tcp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 40000, dstPort: 80, payload: 10 }));
  a.loop.drainTun(1);
  b.loop.drainBind(1);
  // The server answers the client's InstanceIP; B sends it to A, A restores the RR ServiceIP.
  b.tun.push(
    buildIPv4Tcp({ src: "10.18.0.130", dst: "10.30.0.10", srcPort: 80, dstPort: 40000, payload: 20 }),
  );
  b.loop.drainTun(2);
  assertEquals(a.loop.drainBind(3), 1);
  assertEquals(a.tun.written.length, 1);
  const i = parsed(a.tun.written[0].bytes);
  assertEquals([i.src4, i.dst4], [ip4("10.30.0.1"), ip4("10.18.0.66")]);
  assert(checksumsValid(a.tun.written[0].bytes, i));
  const sa = a.loop.stats();
  assertEquals([sa.tunRx, sa.udpTx, sa.udpRx, sa.tunTx, sa.flows], [1, 1, 1, 1, 1]);
  assertEquals(sa.drops, {});
  const sb = b.loop.stats();
  assertEquals([sb.tunRx, sb.udpTx, sb.udpRx, sb.tunTx], [1, 1, 1, 1]);
  assertEquals(sa.usedJobs, ["a.b.web.d"]);
  // A packet to no ServiceIP is dropped and counted by name.
  a.tun.push(buildIPv4Udp({ src: "10.18.0.66", dst: "10.99.0.1", srcPort: 1, dstPort: 2 }));
  a.loop.drainTun(4);
  assertEquals(a.loop.stats().drops, { not_service_ip: 1 });
});

Deno.test("loop: a packet to an unknown ServiceIP is parked, reported, and sent once resolved", () => {
  const [a, b] = pair(false, tableOf([CLI]));
  const p = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 7, dstPort: 53, payload: 30 });
  a.tun.push(p);
  a.tun.push(p.slice());
  a.loop.drainTun(1);
  assertEquals(a.wire.sent.length, 0);
  assertEquals(a.posted, [{ type: "miss", addr: "10.30.0.1", from: "a.b.cli.d#0" }]);
  assertEquals(a.loop.stats().parkedNow, 2);
  a.loop.handle({ type: "delta", delta: { op: "replaceJob", job: WEB.job, entries: WEB.entries } });
  a.loop.handle({ type: "resolved", addr: "10.30.0.1", ok: true });
  assertEquals(a.wire.sent.length, 2, "both parked packets went out");
  b.loop.drainBind(2);
  assertEquals(b.tun.written.length, 2);
  assertEquals(parsed(b.tun.written[0].bytes).dst4, ip4("10.18.0.130"));
  const s = a.loop.stats();
  assertEquals([s.parked, s.released, s.parkedNow], [2, 2, 0]);
  // A miss that is not resolved drops what was parked.
  a.tun.push(buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.9", srcPort: 7, dstPort: 53 }));
  a.loop.drainTun(3);
  a.loop.handle({ type: "resolved", addr: "10.30.0.9", ok: false });
  assertEquals(a.loop.stats().drops, { unresolved: 1 });
});

/** Runs both loops' timers and drains until the peers agreed on FAST/JUMBO. */
function handshake(a: LoopNode, b: LoopNode): void {
  for (let t = 1000; t < 3000; t += 150) {
    a.loop.tick(t);
    b.loop.tick(t);
    b.loop.drainBind(t);
    a.loop.drainBind(t);
  }
}

Deno.test("loop: a TCP super-packet crosses as one JUMBO message and is written as one super-packet", () => {
  const [a, b] = pair(true);
  handshake(a, b);
  const route = a.engine.route(`${B}:50103`);
  assert(route?.peer?.jumbo === true, "the peers agreed on JUMBO");
  const pkt = pushSuperPacket(a.tun);
  const sentBefore = a.wire.sent.length;
  a.loop.drainTun(4000);
  const chunks = a.wire.sent.length - sentBefore;
  assertEquals(a.bind.jumboTx, 1);
  assert(chunks === Math.ceil((pkt.length + 8) / MTU), `chunks ${chunks}`);
  assert(a.wire.sent.slice(sentBefore).every((d) => d.size <= 8 + MTU), "chunks fit the FAST datagram size");
  b.loop.drainBind(4001);
  assertEquals(b.loop.jumboRx, 1);
  assertEquals(b.tun.written.length, 1, "written as one super-packet");
  const w = b.tun.written[0];
  assertEquals([w.gsoType, w.gsoSize, w.csumStart, w.csumOffset], [VNET_GSO_TCPV4, 1348, 20, 16]);
  assertEquals(w.bytes.length, pkt.length);
  const i = parsed(w.bytes);
  assertEquals([i.src4, i.dst4], [ip4("10.30.0.10"), ip4("10.18.0.130")]);
  assertEquals(w.bytes.subarray(40), SUPER_PAYLOAD, "the payload arrived byte-exact");
  assert(completeChecksum(w.bytes, 0, w.bytes.length, 20, 16));
  assert(checksumsValid(w.bytes, parsed(w.bytes)), "the partial sum completes to a valid checksum");
  const s = b.loop.stats();
  assertEquals([s.jumboRx, a.loop.stats().jumboTx], [1, 1]);
  assertEquals(s.drops, {});
});

Deno.test("loop: runs on any implementation of the seams (in-memory TUN and bind, no offloads)", () => {
  const ends = [new MemoryBind(ip4(A)), new MemoryBind(ip4(B))];
  ends[0].peer = ends[1];
  ends[1].peer = ends[0];
  const nodes = [A, B].map((self, k) => {
    const engine = new Engine({
      selfIp: self,
      selfPort: 50103,
      service4: parsePrefix4("10.30.0.0/16"),
      service6: parsePrefix6("fdff::/16"),
      subnet4: parsePrefix4(k === 0 ? "10.18.0.64/26" : "10.18.0.128/26"),
      subnet6: parsePrefix6("fc00::/64"),
    }, tableOf([CLI, WEB]));
    const tun = new MemoryTun(engine);
    return { engine, tun, loop: new PacketLoop(engine, tun, ends[k], () => {}) };
  });
  for (let k = 0; k < 3; k++) {
    nodes[0].tun.push(buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 9000 + k, dstPort: 53 }));
  }
  nodes[0].loop.drainTun(1);
  assertEquals(ends[0].sent.length, 3);
  assertEquals(nodes[1].loop.drainBind(2), 3);
  assertEquals(nodes[1].tun.written.map((w) => parsed(w.bytes).dst4), Array(3).fill(ip4("10.18.0.130")));
  assertEquals(nodes[1].loop.stats().udpRx, 3);
});

Deno.test("loop: a one-packet drain sends at once without the read that finds the TUN empty", () => {
  const [a, b] = pair();
  const req = () =>
    buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5000, dstPort: 7, payload: 64 });
  a.tun.push(req());
  assertEquals(a.loop.drainTun(1), 1);
  assertEquals(a.tun.reads, 2, "a full drain ends with an empty read");
  a.tun.push(req());
  a.tun.push(req());
  assertEquals(a.loop.drainTun(2, 1), 1, "at most one packet");
  assertEquals(a.tun.reads, 3, "one read, no empty one");
  assertEquals(a.wire.sends, 2, "the packet went out in its own sendmmsg, before any further read");
  assertEquals(a.tun.inbox.length, 1, "the next packet waits for the next drain");
  assertEquals(a.loop.drainTun(3), 1);
  assertEquals(b.loop.drainBind(4), 3);
  assertEquals(b.tun.written.length, 3);
});
