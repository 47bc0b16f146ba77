/**
 * JUMBO messages sealed as one AEAD in parts (secure_layer.ts, keys.ts): byte-exact through the
 * reassembly, one counter and one tag per message, and the rules that keep unauthenticated part
 * bytes from reaching anything but a reassembly that only an authenticated last part may complete.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { SendBatch } from "../../ffi/udp.ts";
import { VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";
import { JumboAssembler, JumboResult, writeJumbo } from "../../src/proxy/jumbo.ts";
import { JUMBO_TAG_LEN, MSG_JUMBO } from "../../src/proxy/wire.ts";
import { Opened, type SessionKeys } from "../../src/secure/keys.ts";
import { Inbound, SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import { SECURE_F_LAST, SECURE_F_PART, SECURE_HEADER_LEN } from "../../src/secure/secure_wire.ts";

const SLOT = 70_000;
const A = "10.0.0.1:50103";
const B = "10.0.0.2:50103";
const TOTAL = 64_000;
const DSIZE = 1426;

function pair(): { a: SecureLayer; b: SecureLayer; now: number } {
  const now = Date.now();
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  const ka: SessionKeys = { peer: B, localIndex: 1, remoteIndex: 2, sendKey: k1, recvKey: k2, ...t };
  const kb: SessionKeys = { peer: A, localIndex: 2, remoteIndex: 1, sendKey: k2, recvKey: k1, ...t };
  const a = new SecureLayer({ lane: 1, post: () => {} });
  const b = new SecureLayer({ lane: 0, post: () => {} });
  a.setMode(SecureMode.REQUIRE);
  b.setMode(SecureMode.REQUIRE);
  a.install(ka);
  b.install(kb);
  return { a, b, now };
}

/** One TCPv4 super-packet (random payload) as a JUMBO message queued the way bind.ts queues it. */
function message(): { src: SendBatch; entries: number; packet: Uint8Array } {
  const packet = crypto.getRandomValues(new Uint8Array(TOTAL));
  packet[0] = 0x45;
  packet[2] = TOTAL >>> 8;
  packet[3] = TOTAL & 0xff;
  const arena = new Uint8Array(2 * SLOT);
  arena.set(packet, SLOT);
  const meta = { gsoType: VNET_GSO_TCPV4, gsoSize: 1338, csumStart: 20, csumOffset: 16 };
  const used = writeJumbo(arena, SLOT, TOTAL, 0, DSIZE, 7, meta);
  assert(used > 0);
  const src = new SendBatch(4, SLOT);
  const perSend = Math.floor(65507 / DSIZE);
  let entries = 0;
  for (let from = 0; from < used; from += perSend * DSIZE) {
    const n = Math.min(used, from + perSend * DSIZE) - from;
    src.bufs[entries].set(arena.subarray(from, from + n));
    src.offsets[entries] = 0;
    src.sizes[entries] = n;
    src.segSizes[entries] = n > DSIZE ? DSIZE : 0;
    src.setDst4(entries, 0x0a000002, 50103);
    entries++;
  }
  return { src, entries, packet };
}

/** Seals the message; returns its sealed datagrams (copies) in order. */
function seal(a: SecureLayer, src: SendBatch, entries: number, now: number): Uint8Array[] {
  const dst = new SendBatch(2 * entries + 2, SLOT);
  const out = a.sealBatch(
    src,
    entries,
    new Array(entries).fill(B),
    new Int32Array(entries).fill(0x55),
    dst,
    65507,
    now,
  );
  const grams: Uint8Array[] = [];
  for (let e = 0; e < out; e++) {
    const step = dst.segSizes[e] || dst.sizes[e];
    assert(dst.sizes[e] <= 65507, "a send fits one UDP datagram before segmentation");
    for (let at = 0; at < dst.sizes[e]; at += step) {
      grams.push(dst.bufs[e].slice(at, at + Math.min(step, dst.sizes[e] - at)));
    }
  }
  return grams;
}

/** Opens datagrams at `b` and feeds the opened ones to a reassembly, as the loop does. */
class Receiver {
  readonly arena = new Uint8Array(SLOT + 64);
  readonly asm = new JumboAssembler({ arena: this.arena, base: 0, slots: 1, prefix: 16 });
  readonly key = {};
  /** Per datagram: the layer's verdict, its Opened kind and the reassembly's result. */
  readonly log: { r: number; part: number; j: number }[] = [];
  constructor(readonly b: SecureLayer, readonly now: number) {}
  feed(d: Uint8Array): { r: number; part: number; j: number } {
    const r = this.b.inbound(d, 0, d.length, A, () => A, this.now);
    let j = -1;
    if (r === Inbound.OPENED) j = this.asm.add(this.key, d, SECURE_HEADER_LEN, this.b.innerLen);
    const e = { r, part: this.b.part, j };
    this.log.push(e);
    return e;
  }
  /** The completed packet's bytes. */
  packet(): Uint8Array {
    const out = new Uint8Array(this.asm.outLength);
    let at = 0;
    for (let k = 0; k < this.asm.outParts; k++) {
      const o = this.asm.outPartOffsets[k], l = this.asm.outPartLengths[k];
      out.set(this.arena.subarray(o, o + l), at);
      at += l;
    }
    return out;
  }
}

/** XORs `want ^ have` into the ciphertext where the plaintext byte `have` sits (CTR malleability). */
function flip(d: Uint8Array, at: number, have: number, want: number): void {
  d[at] ^= have ^ want;
}

Deno.test("secure parts: a 64 KB JUMBO message is one AEAD (one counter, one tag) and reassembles byte-exact", () => {
  const { a, b, now } = pair();
  const { src, entries, packet } = message();
  const grams = seal(a, src, entries, now);
  const chunks = Math.ceil((TOTAL + 8) / (DSIZE - JUMBO_TAG_LEN));
  assertEquals(grams.length, chunks, "one datagram per chunk");
  assertEquals(a.sealed, chunks);
  grams.forEach((d, k) => {
    const last = k === grams.length - 1;
    assertEquals(d[1], SECURE_F_PART | k | (last ? SECURE_F_LAST : 0), `flags of part ${k}`);
    assertEquals(d.subarray(8, 16).join(), grams[0].subarray(8, 16).join(), "one counter for the message");
    assertEquals((d[2] << 8) | d[3], 0x55, "cleartext lane key (steering)");
    if (!last) assertEquals(d.length, DSIZE + 16, "16 bytes per part, no tag");
  });
  const rx = new Receiver(b, now);
  for (const d of grams) rx.feed(d);
  const kinds = rx.log.map((e) => e.part);
  assert(rx.log.every((e) => e.r === Inbound.OPENED), JSON.stringify(rx.log));
  assert(kinds.slice(0, -1).every((p) => p === Opened.PART) && kinds.at(-1) === Opened.LAST);
  assert(rx.log.slice(0, -1).every((e) => e.j === JumboResult.PENDING));
  assertEquals(rx.log.at(-1)!.j, JumboResult.COMPLETE);
  assertEquals(rx.packet().join(), packet.join(), "byte-exact");
  // The next message takes the next counter and opens too.
  const again = seal(a, src, entries, now);
  for (const d of again) rx.feed(d);
  assertEquals(rx.log.at(-1)!.part, Opened.LAST);
  assertEquals(rx.asm.completed, 2);
});

Deno.test("secure parts: a changed part fails the whole message; replayed or reordered parts deliver nothing", () => {
  const { a, b, now } = pair();
  const { src, entries } = message();
  const grams = seal(a, src, entries, now);
  const rx = new Receiver(b, now);
  // One flipped ciphertext bit in part 5: the parts still open (unauthenticated), the last fails.
  const bad = grams.map((d) => d.slice());
  bad[5][100] ^= 1;
  for (const d of bad) rx.feed(d);
  assertEquals(rx.log.at(-1)!.r, Inbound.DONE, "the last part's tag check fails");
  assertEquals(rx.asm.completed, 0, "nothing completes");
  const drops: Record<string, number> = {};
  b.addDrops(drops);
  assertEquals(drops.secure_auth, 1);
  // The genuine message still opens afterwards (the failed tag moved no window)…
  for (const d of grams) rx.feed(d.slice());
  assertEquals(rx.asm.completed, 1);
  // …but only once: a replay is refused at part 0 and its other parts belong to no message.
  const before = rx.log.length;
  for (const d of grams) rx.feed(d.slice());
  assert(rx.log.slice(before).every((e) => e.r === Inbound.DONE), "replayed parts: all dropped");
  assertEquals(rx.asm.completed, 1);
  // A lost part breaks the message: the parts after it are dropped.
  const next = seal(a, src, entries, now);
  const at = rx.log.length;
  next.forEach((d, k) => k !== 3 && rx.feed(d));
  assert(rx.log.slice(at + 3).every((e) => e.r === Inbound.DONE));
  assertEquals(rx.asm.completed, 1);
  const d2: Record<string, number> = {};
  b.addDrops(d2);
  assert((d2.secure_part_dropped ?? 0) >= grams.length - 1 + next.length - 4, JSON.stringify(d2));
  assertEquals(d2.secure_replay, 1);
});

Deno.test("secure parts: bit-flipped parts can complete a reassembly, but never as authenticated, nor reach the engine", () => {
  const { a, b, now } = pair();
  const { src, entries, packet } = message();
  const grams = seal(a, src, entries, now).map((d) => d.slice());
  // An attacker on the path rewrites the (predictable) plaintext through the ciphertext: the message
  // claims 3 chunks (the count byte of chunks 0–2), and the IP length claims what 3 chunks hold.
  const H = SECURE_HEADER_LEN;
  const count = grams.length;
  const three = 3 * (DSIZE - JUMBO_TAG_LEN) - 8;
  for (let k = 0; k < 3; k++) flip(grams[k], H + 2, count, 3);
  flip(grams[0], H + 16 + 2, packet[2], three >>> 8);
  flip(grams[0], H + 16 + 3, packet[3], three & 0xff);
  const rx = new Receiver(b, now);
  for (let k = 0; k < 3; k++) rx.feed(grams[k]);
  const last = rx.log[2];
  assertEquals(last.j, JumboResult.COMPLETE, "without the rule, forged bytes would be delivered");
  assertEquals(last.part, Opened.PART, "…but the completing datagram is unauthenticated: the loop drops it");
  // A part whose inner type byte is turned into a bare IPv4 packet never reaches the engine.
  const g2 = seal(a, src, entries, now).map((d) => d.slice());
  flip(g2[1], H, MSG_JUMBO, 0x45);
  assertEquals(rx.feed(g2[0]).r, Inbound.OPENED);
  assertEquals(rx.feed(g2[1]).r, Inbound.DONE, "not a JUMBO chunk: dropped before the engine");
});

Deno.test("secure parts: JUMBO chunks never travel sealed on their own, and such a chunk is refused", () => {
  const { a, b, now } = pair();
  const { src, entries } = message();
  assert(entries >= 2);
  // The message's tail without its start (not made by the bind): nothing of it is sent.
  const dst = new SendBatch(8, SLOT);
  const tail = new SendBatch(2, SLOT);
  tail.bufs[0].set(src.bufs[entries - 1].subarray(0, src.sizes[entries - 1]));
  tail.offsets[0] = 0;
  tail.sizes[0] = src.sizes[entries - 1];
  tail.segSizes[0] = src.segSizes[entries - 1];
  tail.setDst4(0, 0x0a000002, 50103);
  assertEquals(a.sealBatch(tail, 1, [B], Int32Array.of(1), dst, 65507, now), 0);
  // A JUMBO chunk sealed on its own (authentic: the session's key) is not taken either.
  const d = new Uint8Array(SECURE_HEADER_LEN + DSIZE + 16);
  d.set(src.bufs[0].subarray(0, DSIZE), SECURE_HEADER_LEN);
  const n = a.ring.seal(B, d, 0, DSIZE, 1, now);
  assertEquals(b.inbound(d, 0, n, A, () => A, now), Inbound.DONE);
  const drops: Record<string, number> = {};
  b.addDrops(drops);
  assertEquals(drops.secure_part_dropped, 1);
  assertEquals(b.opened, 0);
});

/** The sealed datagrams `grams[from .. to)` back to back in one buffer, as a GRO receive entry holds them. */
function groEntry(grams: Uint8Array[], from: number, to: number): Uint8Array {
  const step = grams[from].length;
  const buf = new Uint8Array((to - from) * step);
  for (let k = from; k < to; k++) {
    assertEquals(grams[k].length, step);
    buf.set(grams[k], (k - from) * step);
  }
  return buf;
}

Deno.test("secure parts: openRun takes only the next parts of the same message, within max and the buffer", () => {
  const { a, b, now } = pair();
  const { src, entries, packet } = message();
  const grams = seal(a, src, entries, now);
  const count = grams.length, step = grams[0].length, inner = step - SECURE_HEADER_LEN;
  assert(count > 10, "a message of many parts");
  const rx = new Receiver(b, now);
  // Entry 1: parts 0..9, but at most 3 taken with part 0 (max); nothing taken without a part opened.
  const e1 = groEntry(grams, 0, 10);
  assertEquals(b.openRun(e1, 0, step, 9), 0, "nothing opened yet");
  assertEquals(b.inbound(e1, 0, step, A, () => A, now), Inbound.OPENED);
  assertEquals(b.part, Opened.PART);
  assertEquals(b.openRun(e1, 0, step, 3), 3);
  assertEquals(b.openRun(e1, 0, step, 3), 0, "a run is taken once");
  for (let k = 0; k <= 3; k++) {
    assertEquals(rx.asm.add(rx.key, e1, SECURE_HEADER_LEN + k * inner, inner), JumboResult.PENDING);
  }
  // Parts 4..9 one at a time, then one more run over what is left of the buffer (its end bounds it).
  assertEquals(b.inbound(e1, 4 * step, step, A, () => A, now), Inbound.OPENED);
  assertEquals(b.openRun(e1, 4 * step, step, 100), 5, "up to the buffer's end");
  for (let k = 0; k <= 5; k++) {
    assertEquals(
      rx.asm.add(rx.key, e1, 4 * step + SECURE_HEADER_LEN + k * inner, inner),
      JumboResult.PENDING,
    );
  }
  // Entry 2: parts 10.. with part 12 replaced by a copy of part 11 (a repeat): the run stops before it.
  const e2 = groEntry(grams, 10, count - 1);
  e2.set(grams[11], 2 * step);
  assertEquals(b.inbound(e2, 0, step, A, () => A, now), Inbound.OPENED);
  assertEquals(b.openRun(e2, 0, step, count), 1, "stops at a header that is not the next part's");
  // The repeat is refused one by one, and the message can no longer complete.
  assertEquals(b.inbound(e2, 2 * step, step, A, () => A, now), Inbound.DONE);
  const last = grams[count - 1];
  assert((last[1] & SECURE_F_LAST) !== 0 && (last[1] & SECURE_F_PART) !== 0);
  assertEquals(b.inbound(last, 0, last.length, A, () => A, now), Inbound.DONE);

  // A fresh message, received as GRO entries and runs all the way: byte-exact.
  const m2 = message();
  const g2 = seal(a, m2.src, m2.entries, now);
  const rx2 = new Receiver(b, now);
  const e3 = groEntry(g2, 0, g2.length - 1);
  assertEquals(b.inbound(e3, 0, step, A, () => A, now), Inbound.OPENED);
  assertEquals(b.openRun(e3, 0, step, g2.length), g2.length - 2);
  for (let k = 0; k < g2.length - 1; k++) {
    assertEquals(rx2.asm.add(rx2.key, e3, SECURE_HEADER_LEN + k * inner, inner), JumboResult.PENDING);
  }
  const r = rx2.feed(g2[g2.length - 1]);
  assertEquals([r.r, r.part, r.j], [Inbound.OPENED, Opened.LAST, JumboResult.COMPLETE]);
  assertEquals(rx2.packet(), m2.packet);
  assert(packet.length === m2.packet.length);
});
