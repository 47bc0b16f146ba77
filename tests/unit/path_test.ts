/**
 * Unit tests for src/path: the ICMP "too big" builder (checked by an independent parse and full
 * checksum recomputation), its rate limit, TCP MSS clamping (checksum recomputed, options at odd
 * offsets, partial checksums untouched), the path-MTU prober's rounds and the guard's decisions.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { buildIPv4Tcp, buildIPv4Udp, buildIPv6Tcp, buildIPv6Udp } from "../helpers/packets.ts";
import { buildTooBig, TOO_BIG_MAX_LEN, TooBigLimiter } from "../../src/path/too_big.ts";
import { clampMss, mssFor } from "../../src/path/mss.ts";
import { DEFAULT_PATH_MTU, PathMtu, PMTU_LADDER } from "../../src/path/pmtu.ts";
import { Fit, PathGuard } from "../../src/path/guard.ts";
import { checksumsValid, PacketInfo, parsePacket, ParseResult } from "../../src/proxy/packet.ts";
import { ipv4HeaderChecksum, onesSum, pseudoSum6 } from "../../src/proxy/checksum.ts";
import { VnetHdr } from "../../ffi/vnet.ts";
import { Peer } from "../../src/proxy/peers.ts";

Deno.test("too big: ICMPv4 fragmentation needed quotes the packet, swaps addresses, valid checksums", () => {
  const pkt = buildIPv4Udp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    flags: 0x4000,
    srcPort: 4000,
    dstPort: 53,
    payload: new Uint8Array(1372),
  });
  const out = new Uint8Array(TOO_BIG_MAX_LEN);
  const n = buildTooBig(pkt, 0, 128, 1364, out);
  assertEquals(n, 20 + 8 + 128);
  assertEquals(out[0], 0x45);
  assertEquals(out[9], 1);
  assertEquals([...out.subarray(12, 16)], [10, 30, 0, 1]); // from what it dialled
  assertEquals([...out.subarray(16, 20)], [10, 18, 0, 66]); // to its sender
  assertEquals(ipv4HeaderChecksum(out, 0, 20), (out[10] << 8) | out[11]);
  assertEquals([out[20], out[21]], [3, 4]);
  assertEquals((out[26] << 8) | out[27], 1364);
  assertEquals(onesSum(out, 20, n - 20, 0), 0xffff); // ICMP checksum over the message
  assertEquals([...out.subarray(28, n)], [...pkt.subarray(0, 128)]);
});

Deno.test("too big: ICMPv6 packet too big, pseudo-header checksum, MTU at least 1280", () => {
  const pkt = buildIPv6Tcp({ src: "fc00::a:1240:2", dst: "fdff:2000::1", srcPort: 5000, dstPort: 80 });
  const out = new Uint8Array(TOO_BIG_MAX_LEN);
  const n = buildTooBig(pkt, 0, pkt.length, 1000, out);
  assertEquals(n, 40 + 8 + pkt.length);
  assertEquals(out[6], 58);
  assertEquals([...out.subarray(8, 24)], [...pkt.subarray(24, 40)]);
  assertEquals([...out.subarray(24, 40)], [...pkt.subarray(8, 24)]);
  assertEquals(out[40], 2);
  assertEquals((out[46] << 8) | out[47], 1280); // clamped up to IPv6's minimum
  assertEquals(onesSum(out, 40, n - 40, pseudoSum6(out, 8, 24, 58, n - 40)), 0xffff);
});

Deno.test("too big: no error for errors, later fragments, junk, or a small buffer", () => {
  const out = new Uint8Array(TOO_BIG_MAX_LEN);
  const err = new Uint8Array(TOO_BIG_MAX_LEN);
  const pkt = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 1, dstPort: 2 });
  const n = buildTooBig(pkt, 0, pkt.length, 1300, err);
  assert(n > 0);
  assertEquals(buildTooBig(err, 0, n, 1300, out), 0); // an ICMP error
  const frag = pkt.slice();
  frag[7] = 10; // fragment offset 80
  assertEquals(buildTooBig(frag, 0, frag.length, 1300, out), 0);
  assertEquals(buildTooBig(new Uint8Array([0x20, 1, 2]), 0, 3, 1300, out), 0);
  assertEquals(buildTooBig(pkt, 0, 10, 1300, out), 0); // shorter than its header
  assertEquals(buildTooBig(pkt, 0, pkt.length, 1300, new Uint8Array(20)), 0);
  assertEquals(buildTooBig(pkt, 5, pkt.length, 1300, out), 0); // out of bounds
});

Deno.test("too big: limiter allows a burst, then the rate", () => {
  const lim = new TooBigLimiter(10, 3);
  assert(lim.take(0) && lim.take(0) && lim.take(0));
  assert(!lim.take(0));
  assert(!lim.take(50)); // half a token
  assert(lim.take(100));
  assertEquals(lim.refused, 2);
});

function mssOption(mss: number, pad: number): Uint8Array {
  const o = new Uint8Array(pad + 4 + ((4 - ((pad + 4) % 4)) % 4));
  o.fill(1, 0, pad); // NOPs put the option at an odd offset when pad is odd
  o[pad] = 2;
  o[pad + 1] = 4;
  o[pad + 2] = mss >>> 8;
  o[pad + 3] = mss & 0xff;
  return o;
}

Deno.test("mss: a SYN's MSS is lowered and its checksum stays valid (even and odd offsets, v4 and v6)", () => {
  for (const pad of [0, 1, 2, 3]) {
    const syn4 = buildIPv4Tcp({
      src: "10.18.0.66",
      dst: "10.30.0.1",
      srcPort: 4000,
      dstPort: 80,
      tcpFlags: 0x02,
      tcpOptions: mssOption(1460, pad),
    });
    assert(clampMss(syn4, 0, syn4.length, mssFor(4, 1364), false));
    const o = 20 + 20 + pad;
    assertEquals((syn4[o + 2] << 8) | syn4[o + 3], 1324);
    const info = new PacketInfo();
    assertEquals(parsePacket(syn4, 0, syn4.length, info), ParseResult.OK);
    assert(checksumsValid(syn4, info), `checksum after clamping at pad ${pad}`);
    assert(!clampMss(syn4, 0, syn4.length, 1324, false)); // already small enough
  }
  const syn6 = buildIPv6Tcp({
    src: "fc00::1",
    dst: "fdff::2",
    srcPort: 4000,
    dstPort: 80,
    tcpFlags: 0x12,
    tcpOptions: mssOption(1440, 1),
  });
  assert(clampMss(syn6, 0, syn6.length, mssFor(6, 1364), false));
  const info = new PacketInfo();
  parsePacket(syn6, 0, syn6.length, info);
  assert(checksumsValid(syn6, info));
  assertEquals((syn6[40 + 20 + 1 + 2] << 8) | syn6[40 + 20 + 1 + 3], 1304);
});

Deno.test("mss: partial checksums are left alone; non-SYN, non-TCP and malformed options are untouched", () => {
  const syn = buildIPv4Tcp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 4000,
    dstPort: 80,
    tcpFlags: 0x02,
    tcpOptions: mssOption(1460, 0),
  });
  const before = (syn[36] << 8) | syn[37];
  assert(clampMss(syn, 0, syn.length, 1000, true));
  assertEquals((syn[36] << 8) | syn[37], before);
  const ack = buildIPv4Tcp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 4000,
    dstPort: 80,
    tcpFlags: 0x10,
    tcpOptions: mssOption(1460, 0),
  });
  assert(!clampMss(ack, 0, ack.length, 1000, false));
  const udp = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 1, dstPort: 2 });
  assert(!clampMss(udp, 0, udp.length, 1000, false));
  const bad = syn.slice();
  bad[41] = 40; // option length beyond the header
  assert(!clampMss(bad, 0, bad.length, 1000, false));
  assert(!clampMss(syn, 0, 30, 1000, false)); // truncated
  assert(!clampMss(syn, 0, syn.length, 0, false));
});

Deno.test("pmtu: a round probes the ladder and takes the largest answered size", () => {
  const p = new PathMtu({ roundMs: 500 });
  assertEquals(p.mtu, DEFAULT_PATH_MTU);
  const sent: Array<[number, number]> = [];
  p.tick(0, 4, 7, (seq, payload) => sent.push([seq, payload]));
  assertEquals(sent.length, PMTU_LADDER.length);
  assertEquals(sent[0][1], 1500 - 28);
  assert(sent.every(([seq]) => (seq & 0xff) === 7)); // the lane tag steers replies back
  // Replies up to 1400 come back; 1420 and more do not.
  for (const [seq, payload] of sent) if (payload + 28 <= 1400) assert(p.onReply(seq, payload, 4, 1));
  assert(!p.onReply(sent[0][0], 100, 4, 1)); // wrong size for its index
  p.tick(100, 4, 7, () => {});
  assertEquals(p.probed, false); // still waiting
  p.tick(500, 4, 7, () => {});
  assertEquals(p.mtu, 1400);
  assert(p.probed);
  assertEquals(p.inner(4, 8), 1400 - 28 - 8);
  assert(!p.onReply(sent[8][0], sent[8][1], 4, 600)); // late: the round is over
});

Deno.test("pmtu: the full size decides at once; loss re-probes after the gap; silence keeps the value", () => {
  const p = new PathMtu({ roundMs: 500, lossGapMs: 5000, reprobeMs: 600_000 });
  const sent: Array<[number, number]> = [];
  p.tick(0, 6, 0, (seq, payload) => sent.push([seq, payload]));
  assert(p.onReply(sent[0][0], 1500 - 48, 6, 2));
  assertEquals(p.mtu, 1500);
  let n = 0;
  p.tick(1000, 6, 0, () => n++);
  assertEquals(n, 0); // next round only after reprobeMs …
  p.noteLosses(3, 1000); // … or loss, at most every lossGapMs after the last decision
  p.tick(1000, 6, 0, () => n++);
  assertEquals(n, 0);
  p.tick(5002, 6, 0, () => n++);
  assertEquals(n, PMTU_LADDER.length);
  p.tick(5600, 6, 0, () => {}); // no answers at all
  assertEquals(p.mtu, 1500);
  assertEquals(p.failedRounds, 1);
});

Deno.test("guard: too big with DF → ICMP error; without DF → drop; JUMBO TCP → send; SYN clamped", () => {
  const g = new PathGuard(1450);
  const peer = new Peer({
    key: "192.168.77.2:50103",
    family: 4,
    ip4: 0xc0a84d02,
    ip6: undefined,
    port: 50103,
  }, {});
  peer.fast = true;
  peer.path.mtu = 1400;
  g.refresh([peer]);
  assertEquals(g.innerFor(peer), 1364);
  const meta = new VnetHdr();
  const big = buildIPv4Udp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    flags: 0x4000,
    srcPort: 1,
    dstPort: 2,
    payload: new Uint8Array(1372),
  });
  g.before(big, 0, big.length, big.length);
  assertEquals(g.check(peer, big.length, meta, 0), Fit.TOO_BIG_ICMP);
  assertEquals((g.error[26] << 8) | g.error[27], 1364);
  const noDf = buildIPv4Udp({
    flags: 0,
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 1,
    dstPort: 2,
    payload: new Uint8Array(1372),
  });
  g.before(noDf, 0, noDf.length, noDf.length);
  assertEquals(g.check(peer, noDf.length, meta, 0), Fit.TOO_BIG_DROP);
  const small = buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 1, dstPort: 2 });
  g.before(small, 0, small.length, small.length);
  assertEquals(g.check(peer, small.length, meta, 0), Fit.SEND);
  peer.jumbo = true;
  meta.gsoType = 1; // TCPv4 super-packet: the bind slices it to the path
  g.before(big, 0, big.length, big.length);
  assertEquals(g.check(peer, big.length, meta, 0), Fit.SEND);
  const syn = buildIPv4Tcp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 4000,
    dstPort: 80,
    tcpFlags: 0x02,
    tcpOptions: mssOption(1460, 0),
  });
  g.clamp(syn, 0, syn.length, peer, false);
  assertEquals((syn[42] << 8) | syn[43], 1324);
  assertEquals(g.mssClamped, 1);
});

Deno.test("guard: wire size of a GSO packet is one segment", () => {
  const pkt = buildIPv6Udp({
    src: "fc00::1",
    dst: "fdff::2",
    srcPort: 1,
    dstPort: 2,
    payload: new Uint8Array(3000),
  });
  const meta = new VnetHdr();
  meta.flags = 1;
  meta.gsoType = 5;
  meta.gsoSize = 1000;
  meta.csumStart = 40;
  assertEquals(PathGuard.wireSize(pkt, 0, pkt.length, meta), 40 + 8 + 1000);
  meta.gsoType = 0;
  assertEquals(PathGuard.wireSize(pkt, 0, pkt.length, meta), pkt.length);
});
