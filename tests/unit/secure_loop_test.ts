/**
 * The secure layer in the packet loop (no root): two nodes, each an engine + an in-memory TUN side +
 * the real UDP bind over an in-memory wire, with secure layers in `require`. A TCP super-packet
 * crosses as one JUMBO message sealed in parts and is written byte-exact; an on-path attacker who
 * rewrites parts through the ciphertext so that the reassembly completes early gets nothing written
 * (the completion came from an unauthenticated part: dropped and counted). Through GRO, the parts of a
 * message that one receive run brings are opened together (SecureLayer.openRun) and go to the
 * reassembly in one call (BindSeam.reassembleParts) — byte-exact, counted, and an early completion by
 * them refused the same way.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { ip4 } from "../helpers/packets.ts";
import { MemoryWire } from "../helpers/memory_seams.ts";
import {
  A,
  B,
  type LoopNode,
  loopNode,
  pushSuperPacket,
  SUPER_PAYLOAD,
  tableOf,
} from "../helpers/loop_pair.ts";
import { SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { SECURE_F_PART, SECURE_HEADER_LEN } from "../../src/secure/secure_wire.ts";
import { JUMBO_TAG_LEN, MSG_SECURE } from "../../src/proxy/wire.ts";

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

const payload = SUPER_PAYLOAD;
const superPacket = (a: Node): Uint8Array => pushSuperPacket(a.tun);

Deno.test("secure loop: a TCP super-packet crosses as one JUMBO message sealed in parts, written byte-exact", () => {
  const [a, b] = pair();
  assert(a.engine.route(`${B}:50103`)?.peer?.jumbo === true, "the peers agreed on JUMBO");
  const pkt = superPacket(a);
  a.loop.drainTun(4000);
  assertEquals(a.bind.jumboTx, 1);
  const grams = b.wire.inbox.map((d) => d.bytes);
  assert(
    grams.length > 2 && grams.every((d) => d[0] === MSG_SECURE && (d[1] & SECURE_F_PART) !== 0),
    "parts",
  );
  b.loop.drainBind(4001);
  assertEquals(b.loop.jumboRx, 1);
  assertEquals(b.tun.written.length, 1);
  assertEquals(b.tun.written[0].bytes.length, pkt.length);
  assertEquals(b.tun.written[0].bytes.subarray(40), payload, "byte-exact");
  assertEquals(b.loop.stats().drops, {});
});

/**
 * a sends one super-packet; b's inbox is rewritten through the ciphertext (CTR malleability: the
 * predictable plaintext of the JUMBO tags and the IP length) so that its first 3 parts make a whole
 * message, the rest withheld, and b drains it; returns the number of parts a sent.
 */
function forgeEarlyCompletion(a: Node, b: Node): number {
  const pkt = superPacket(a);
  a.loop.drainTun(4000);
  const grams = b.wire.inbox.map((d) => d.bytes);
  const count = grams.length;
  const H = SECURE_HEADER_LEN;
  const dsize = grams[1].length - H;
  const three = dsize - 16 + 2 * (dsize - JUMBO_TAG_LEN);
  for (let k = 0; k < 3; k++) grams[k][H + 2] ^= count ^ 3;
  grams[0][H + 16 + 2] ^= pkt[2] ^ (three >>> 8);
  grams[0][H + 16 + 3] ^= pkt[3] ^ (three & 0xff);
  b.wire.inbox.splice(3);
  b.loop.drainBind(4001);
  return count;
}

Deno.test("secure loop: parts rewritten through the ciphertext complete a reassembly early, but nothing is written", () => {
  const [a, b] = pair();
  assert(forgeEarlyCompletion(a, b) > 3);
  assertEquals(b.tun.written.length, 0, "forged bytes never reach the TUN");
  assertEquals(b.loop.jumboRx, 0);
  assertEquals(b.loop.stats().drops.secure_part_dropped, 1, "the early completion was refused and counted");
});

/** b receives through GRO: runs of equal-sized datagrams from one source arrive as one receive entry. */
function groPair(): [Node, Node] {
  const [a, b] = pair();
  b.wire.gro = true;
  return [a, b];
}

Deno.test("secure loop: a GRO run of a message's parts is opened as one (one AEAD update) and reaches the reassembly in one call, byte-exact and counted", () => {
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
  // Every part but the first of the run and the (longer) last came in the run.
  assertEquals(b.secure.openedInRuns, count - 2);
  assertEquals(b.secure.opened, count);
  const st = b.loop.stats();
  assertEquals((st.udpRx as number) - rx0, count, "every part counted once");
  assertEquals(st.udpRxBytes as number >= bytes - count * 32 - 16, true);
  assertEquals(st.drops, {});
  // Twice more: the stream state carries over between messages.
  superPacket(a);
  superPacket(a);
  a.loop.drainTun(4002);
  b.loop.drainBind(4003);
  assertEquals(b.tun.written.length, 3);
  assertEquals(b.tun.written[2].bytes.subarray(40), payload);
});

Deno.test("secure loop: a forged part inside a GRO run drops the whole message; the next message still arrives", () => {
  const [a, b] = groPair();
  superPacket(a);
  a.loop.drainTun(4000);
  const grams = b.wire.inbox.map((d) => d.bytes);
  assert(grams.length > 4);
  grams[3][SECURE_HEADER_LEN + 100] ^= 0x5a; // a ciphertext byte of a part in the middle of the run
  b.loop.drainBind(4001);
  assertEquals(b.tun.written.length, 0, "forged bytes never reach the TUN");
  assertEquals(b.loop.stats().drops.secure_auth, 1, "the message's tag failed");
  assert(b.secure.openedInRuns > 0, "the run path took the parts");
  superPacket(a);
  a.loop.drainTun(4002);
  b.loop.drainBind(4003);
  assertEquals(b.tun.written.length, 1, "the next genuine message is delivered");
  assertEquals(b.tun.written[0].bytes.subarray(40), payload);
});

Deno.test("secure loop: a part of another message inside a GRO run is never mixed into it: neither message is written", () => {
  const [a, b] = groPair();
  superPacket(a);
  a.loop.drainTun(4000);
  const m1 = b.wire.inbox.splice(0);
  superPacket(a);
  a.loop.drainTun(4001);
  const m2 = b.wire.inbox.splice(0);
  assert(m1.length === m2.length && m1.length > 5);
  // Genuine bytes, same size and source: part 3 of message 2 replaces part 3 of message 1 in the run.
  const mixed = [...m1.slice(0, 3), m2[3], ...m1.slice(4)];
  b.wire.inbox.push(...mixed);
  b.loop.drainBind(4002);
  assertEquals(b.tun.written.length, 0, "message 1 cannot complete, nothing of message 2 enters it");
  assert((b.loop.stats().drops.secure_part_dropped ?? 0) >= 1, "the stranger part was refused");
  // Message 2 whole afterwards (its counter is still unseen): delivered byte-exact.
  b.wire.inbox.push(...m2);
  b.loop.drainBind(4003);
  assertEquals(b.tun.written.length, 1);
  assertEquals(b.tun.written[0].bytes.subarray(40), payload);
  // And message 1 replayed whole now: its counter was never accepted, so it is delivered once…
  b.wire.inbox.push(...m1);
  b.loop.drainBind(4004);
  assertEquals(b.tun.written.length, 2);
  // …and a replay of either delivers nothing.
  b.wire.inbox.push(...m1, ...m2);
  b.loop.drainBind(4005);
  assertEquals(b.tun.written.length, 2, "replays deliver nothing");
  assert((b.loop.stats().drops.secure_replay ?? 0) >= 2);
});

Deno.test("secure run parts: parts in a GRO run rewritten to complete a reassembly early: nothing is written", () => {
  const [a, b] = groPair();
  // Parts 0..2 (none the message's last) arrive as one GRO run, so parts 1 and 2 take the run path and
  // part 2 completes the reassembly there.
  assert(forgeEarlyCompletion(a, b) > 4);
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
