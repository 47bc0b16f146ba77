/**
 * The secure loop's GRO runs (no root): the parts of a sealed JUMBO message that one receive run
 * brings are opened together (SecureLayer.openRun) and go to the reassembly in one call
 * (BindSeam.reassembleParts) instead of one engine call each — still byte-exact and counted, and a
 * reassembly that such unauthenticated parts complete (rewritten through the ciphertext) is refused.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { buildIPv4Tcp, ip4 } from "../helpers/packets.ts";
import { MemoryWire } from "../helpers/memory_seams.ts";
import { A, B, type LoopNode, loopNode, tableOf } from "../helpers/loop_pair.ts";
import { VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";
import { SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { SECURE_HEADER_LEN } from "../../src/secure/secure_wire.ts";
import { JUMBO_TAG_LEN } from "../../src/proxy/wire.ts";

interface Node extends LoopNode {
  secure: SecureLayer;
}

function node(self: string, subnet: string, wire: MemoryWire, keys: SessionKeys): Node {
  const n = loopNode(self, subnet, wire, tableOf(), true);
  const secure = new SecureLayer({ lane: 0, post: () => {} });
  secure.setMode(SecureMode.REQUIRE);
  secure.install(keys);
  n.bind.secure = secure;
  n.loop.secure = secure;
  return { ...n, secure };
}

function pair(): [Node, Node] {
  const now = Date.now();
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  const [wa, wb] = MemoryWire.pair(ip4(A), ip4(B));
  const a = node(A, "10.18.0.64/26", wa, {
    peer: `${B}:50103`,
    localIndex: 1,
    remoteIndex: 2,
    sendKey: k1,
    recvKey: k2,
    ...t,
  });
  const b = node(B, "10.18.0.128/26", wb, {
    peer: `${A}:50103`,
    localIndex: 2,
    remoteIndex: 1,
    sendKey: k2,
    recvKey: k1,
    ...t,
  });
  // HELLOs (plain in require: they deliver nothing) agree on FAST and JUMBO.
  for (let ms = 1000; ms < 3000; ms += 150) {
    a.loop.tick(ms);
    b.loop.tick(ms);
    b.loop.drainBind(ms);
    a.loop.drainBind(ms);
  }
  return [a, b];
}

const payload = new Uint8Array(20000).map((_, k) => (k * 7 + 3) & 0xff);
function superPacket(a: Node): Uint8Array {
  const pkt = buildIPv4Tcp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 41000,
    dstPort: 80,
    payload,
    partial: true,
    tcpFlags: 0x18,
  });
  a.tun.push(pkt, {
    flags: VNET_F_NEEDS_CSUM,
    gsoType: VNET_GSO_TCPV4,
    gsoSize: 1348,
    csumStart: 20,
    csumOffset: 16,
  });
  return pkt;
}

/** b receives through GRO: runs of equal-sized datagrams from one source arrive as one receive entry. */
function groPair(): [Node, Node] {
  const [a, b] = pair();
  b.wire.gro = true;
  return [a, b];
}

Deno.test("secure run parts: a GRO run's parts reach the reassembly in one call, byte-exact and counted", () => {
  const [a, b] = groPair();
  const rx0 = b.loop.stats().udpRx as number;
  const pkt = superPacket(a);
  a.loop.drainTun(4000);
  const count = b.wire.inbox.length;
  const bytes = b.wire.inbox.reduce((s, d) => s + d.bytes.length, 0);
  assert(count > 3, "a message of several parts");
  b.loop.drainBind(4001);
  assertEquals(b.tun.written.length, 1);
  assertEquals(b.tun.written[0].bytes.length, pkt.length);
  assertEquals(b.tun.written[0].bytes.subarray(40), payload, "byte-exact");
  assertEquals(b.secure.openedInRuns, count - 2);
  const st = b.loop.stats();
  assertEquals((st.udpRx as number) - rx0, count, "every part counted once");
  assertEquals(st.udpRxBytes as number >= bytes - count * 32 - 16, true);
  assertEquals(st.drops, {});
});

Deno.test("secure run parts: parts in a GRO run rewritten to complete a reassembly early: nothing is written", () => {
  const [a, b] = groPair();
  const pkt = superPacket(a);
  a.loop.drainTun(4000);
  const grams = b.wire.inbox.map((d) => d.bytes);
  const count = grams.length;
  assert(count > 4);
  // CTR malleability, as in secure_loop_test: the JUMBO tags say 3 chunks and the IP length fits
  // them; parts 0..2 (none the message's last) arrive as one GRO run, so parts 1 and 2 take the run
  // path and part 2 completes the reassembly there.
  const H = SECURE_HEADER_LEN;
  const dsize = grams[1].length - H;
  const three = dsize - 16 + 2 * (dsize - JUMBO_TAG_LEN);
  for (let k = 0; k < 3; k++) grams[k][H + 2] ^= count ^ 3;
  grams[0][H + 16 + 2] ^= pkt[2] ^ (three >>> 8);
  grams[0][H + 16 + 3] ^= pkt[3] ^ (three & 0xff);
  b.wire.inbox.splice(3);
  b.loop.drainBind(4001);
  assertEquals(b.secure.openedInRuns, 2, "parts 1 and 2 came in the run");
  assertEquals(b.tun.written.length, 0, "forged bytes never reach the TUN");
  assertEquals(b.loop.jumboRx, 0);
  assertEquals(b.loop.stats().drops.secure_part_dropped, 1, "the early completion was refused and counted");
  // The genuine next message still arrives whole.
  superPacket(a);
  a.loop.drainTun(4002);
  b.loop.drainBind(4003);
  assertEquals(b.tun.written.length, 1);
  assertEquals(b.tun.written[0].bytes.subarray(40), payload);
});
