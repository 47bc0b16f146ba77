import { assert, assertEquals } from "../helpers/assert.ts";
import {
  datagramLane,
  laneHash,
  laneKey,
  laneOf,
  reuseportProgram,
  tunSteeringProgram,
} from "../../src/proxy/lanes.ts";
import { buildIcmpEcho4, buildIPv4Tcp, buildIPv6Udp, fragmentIPv4 } from "../helpers/packets.ts";
import { mergeStats } from "../../src/proxy/merge_stats.ts";
import type { StatsData } from "../../src/proxy/messages.ts";
import { advanceJumboId, jumboLaneId, Peer, PeerTable } from "../../src/proxy/peers.ts";

Deno.test("lanes: the key is symmetric and ignores addresses (the ServiceIP translation)", () => {
  const a = buildIPv4Tcp({ src: "10.18.0.2", dst: "10.30.0.1", srcPort: 40000, dstPort: 80 });
  const b = buildIPv4Tcp({ src: "10.18.1.2", dst: "10.18.0.2", srcPort: 80, dstPort: 40000 });
  assertEquals(laneKey(a, 0, a.length), 40080);
  assertEquals(laneKey(b, 0, b.length), 40080);
  const u6 = buildIPv6Udp({ src: "fd00::1", dst: "fd00::2", srcPort: 65535, dstPort: 2 });
  assertEquals(laneKey(u6, 0, u6.length), 1); // 16 bits
  const ping = buildIcmpEcho4({ src: "10.0.0.1", dst: "10.0.0.2", echoId: 4242 });
  assertEquals(laneKey(ping, 0, ping.length), 4242);
  const frag = fragmentIPv4(
    buildIPv4Tcp({ src: "1.1.1.1", dst: "2.2.2.2", srcPort: 1, dstPort: 2, payload: 100 }),
    48,
  );
  assertEquals(laneKey(frag[0], 0, frag[0].length), 0); // fragments stay together
  assertEquals(laneKey(new Uint8Array([0x45]), 0, 1), 0); // short: no throw
});

Deno.test("lanes: the hash spreads even port sums (connect() prefers even ports) over both lanes", () => {
  const lanes = [0, 0];
  for (let p = 40000; p < 40400; p += 2) lanes[laneHash((p + 80) & 0xffff) % 2]++;
  assert(lanes[0] > 80 && lanes[1] > 80, `${lanes}`);
  assertEquals(laneHash(0), 0);
});

Deno.test("lanes: datagram lanes of FAST, JUMBO chunks and control replies", () => {
  const p = buildIPv4Tcp({ src: "10.18.0.2", dst: "10.18.1.2", srcPort: 1234, dstPort: 80 });
  const want = laneOf(p, 0, p.length, 4);
  const fast = new Uint8Array(8 + p.length);
  fast[0] = 0x14;
  fast.set(p, 8);
  assertEquals(datagramLane(fast, 0, fast.length, 4), want);
  const tail = new Uint8Array([0x15, 3, 4, 1, 0, 1, (1314 >> 8) & 0xff, 1314 & 0xff, 9, 9]);
  assertEquals(datagramLane(tail, 0, tail.length, 4), want); // id's low 16 bits = the key
  const ack = new Uint8Array(19);
  ack[0] = 0x11;
  ack[15] = 3;
  assertEquals(datagramLane(ack, 0, ack.length, 4), 3);
  assertEquals(datagramLane(p, 0, p.length, 1), 0);
  assertEquals(tunSteeringProgram().length % 8, 0);
  assertEquals(reuseportProgram(8).length % 8, 0);
});

Deno.test("peers: a lane tag ends every HELLO nonce and PROBE sequence; lane-tagged JUMBO ids per stream", () => {
  const sent: number[] = [];
  const t = new PeerTable({ laneTag: 3, probeAlways: true, localCaps: 0xff });
  const p = t.add("10.0.0.9", 50103, 0);
  t.tick(0, { hello: (_p, hi, lo) => sent.push(hi & 0xff, lo & 0xff), probe: () => {} });
  assertEquals(sent, [3, 3]);
  p.lanes = true;
  const id = jumboLaneId(p, 40080);
  assertEquals(id & 0xffff, 40080);
  advanceJumboId(p, 40080);
  assertEquals((jumboLaneId(p, 40080) >>> 16) - (id >>> 16), 1);
  assert(p instanceof Peer);
});

function stats(tunRx: number, fast: boolean, rtt?: number): StatsData {
  return {
    tunRx,
    tunRxBytes: 0,
    tunTx: 0,
    tunTxBytes: 0,
    udpRx: tunRx,
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
    flows: 1,
    drops: { to_bridge: tunRx },
    peers: [{
      endpoint: "1.2.3.4:50103",
      ...(rtt !== undefined ? { rttMs: rtt } : {}),
      fast,
      jumbo: fast,
      jumboRefusals: 0,
      capsKnown: true,
      txPackets: tunRx,
      txBytes: 0,
      rxPackets: 0,
      rxBytes: 0,
      drops: 0,
      probesSent: 1,
      probesLost: 0,
    }],
    usedJobs: [`j${tunRx}`],
    heap: { used: 1, total: 2, external: 3 },
  };
}

Deno.test("merge: workers' counters add up; a peer is FAST only when every worker says so", () => {
  const m = mergeStats([stats(5, true, 2), stats(7, false)]);
  assertEquals([m.tunRx, m.udpRx, m.flows, m.drops.to_bridge], [12, 12, 2, 12]);
  assertEquals(m.peers.length, 1);
  assertEquals([m.peers[0].txPackets, m.peers[0].fast, m.peers[0].rttMs], [12, false, 2]);
  assertEquals(m.usedJobs.sort(), ["j5", "j7"]);
  assertEquals(m.workers, [{ tunRx: 5, udpRx: 5, flows: 1 }, { tunRx: 7, udpRx: 7, flows: 1 }]);
});
