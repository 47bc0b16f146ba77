/**
 * A JUMBO message sealed as ONE AEAD call in place and sent as gather entries (secure_layer.ts
 * `sealBatch` with the bind's message lengths, keys.ts `sealMessage`, ffi/udp.ts gather entries):
 * through a real UDP socket on loopback (GSO sends, and the split path without GSO) the datagrams are
 * byte for byte those of the part-by-part sealing (so older receivers open them), reassemble
 * byte-exact, and a tampered chunk drops the whole message (counted).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { openUdp, RecvBatch, SendBatch } from "../../ffi/udp.ts";
import { VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";
import { JumboAssembler, JumboResult, writeJumbo } from "../../src/proxy/jumbo.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { Inbound, SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import { SECURE_HEADER_LEN } from "../../src/secure/secure_wire.ts";

const SLOT = 70_000;
const A = "10.0.0.1:50103";
const B = "10.0.0.2:50103";
const TOTAL = 64_000;
const DSIZE = 1426;

/** Sender layers `a` (and `a2`, same keys, same counters: the part-by-part reference) and receiver `b`. */
function layers(): { a: SecureLayer; a2: SecureLayer; b: SecureLayer; now: number } {
  const now = Date.now();
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  const ka: SessionKeys = { peer: B, localIndex: 1, remoteIndex: 2, sendKey: k1, recvKey: k2, ...t };
  const kb: SessionKeys = { peer: A, localIndex: 2, remoteIndex: 1, sendKey: k2, recvKey: k1, ...t };
  const mk = (lane: number, k: SessionKeys) => {
    const l = new SecureLayer({ lane, post: () => {} });
    l.setMode(SecureMode.REQUIRE);
    l.install(k);
    return l;
  };
  return { a: mk(1, ka), a2: mk(1, ka), b: mk(0, kb), now };
}

/** One TCPv4 super-packet as a JUMBO message queued as bind.ts queues it (tail copied to entry 1). */
function message(): { src: SendBatch; entries: number; packet: Uint8Array; used: number } {
  const packet = crypto.getRandomValues(new Uint8Array(TOTAL));
  packet[0] = 0x45;
  packet[2] = TOTAL >>> 8;
  packet[3] = TOTAL & 0xff;
  const src = new SendBatch(4, SLOT);
  src.data.set(packet, 3 * SLOT);
  const meta = { gsoType: VNET_GSO_TCPV4, gsoSize: 1338, csumStart: 20, csumOffset: 16 };
  const used = writeJumbo(src.data, 3 * SLOT, TOTAL, 0, DSIZE, 7, meta);
  assert(used > 0);
  const perSend = Math.floor(65507 / DSIZE);
  let entries = 0;
  for (let from = 0; from < used; from += perSend * DSIZE) {
    const to = Math.min(used, from + perSend * DSIZE);
    if (entries > 0) src.data.copyWithin(entries * SLOT + from, from, to);
    src.offsets[entries] = from;
    src.sizes[entries] = to - from;
    src.segSizes[entries] = to - from > DSIZE ? DSIZE : 0;
    src.setDst4(entries, 0x7f000001, 0);
    entries++;
  }
  return { src, entries, packet, used };
}

/** The datagrams of the part-by-part sealing (the previous sender), as copies. */
function sealedInParts(a: SecureLayer, m: ReturnType<typeof message>, now: number): Uint8Array[] {
  const dst = new SendBatch(2 * m.entries + 2, SLOT);
  const out = a.sealBatch(m.src, m.entries, [B, B], new Int32Array(m.entries).fill(0x55), dst, 65507, now);
  const grams: Uint8Array[] = [];
  for (let e = 0; e < out; e++) {
    const step = dst.segSizes[e] || dst.sizes[e];
    for (let at = 0; at < dst.sizes[e]; at += step) {
      const o = dst.offsets[e] + at;
      grams.push(dst.bufs[e].slice(o, o + Math.min(step, dst.sizes[e] - at)));
    }
  }
  return grams;
}

/** Seals the message whole (gather entries) and sends it through a loopback socket; returns what arrived. */
function sendWhole(a: SecureLayer, m: ReturnType<typeof message>, now: number, gso: boolean): {
  grams: Uint8Array[];
  entries: number;
} {
  const rx = openUdp({ bindAddr: "127.0.0.1", port: 0, rcvbuf: 4 << 20 });
  const tx = openUdp({ bindAddr: "127.0.0.1", port: 0, gso });
  try {
    for (let e = 0; e < m.entries; e++) m.src.dstPorts[e] = rx.localPort;
    const dst = new SendBatch(2 * m.entries + 3, SLOT);
    const messages = new Int32Array(m.entries).fill(-1);
    messages[0] = m.used;
    const out = a.sealBatch(
      m.src,
      m.entries,
      [B, B],
      new Int32Array(m.entries).fill(0x55),
      dst,
      65507,
      now,
      messages,
    );
    for (let e = 0; e < out; e++) assert(dst.gathers[e] > 0, "gather entries");
    assertEquals(tx.sendBatch(dst, out), out);
    const rb = new RecvBatch(64, 2048);
    const grams: Uint8Array[] = [];
    while (true) {
      const c = rx.recvBatch(rb, 200);
      if (c <= 0) break;
      for (let i = 0; i < c; i++) grams.push(rb.bufs[i].slice(0, rb.sizes[i]));
    }
    return { grams, entries: out };
  } finally {
    tx.close();
    rx.close();
  }
}

/** Opens the datagrams at `b` and reassembles; returns the packet or undefined, and `b`'s drops. */
function receive(
  b: SecureLayer,
  grams: Uint8Array[],
  now: number,
): { packet?: Uint8Array; drops: Record<string, number> } {
  const arena = new Uint8Array(2 * 65535 + 4096);
  const asm = new JumboAssembler({ arena, base: 65535, slots: 1, prefix: 0 });
  const key = {};
  let packet: Uint8Array | undefined;
  for (const g of grams) {
    const buf = g.slice();
    const r = b.inbound(buf, 0, buf.length, A, () => A, now);
    if (r !== Inbound.OPENED) continue;
    if (asm.add(key, buf, SECURE_HEADER_LEN, b.innerLen) === JumboResult.COMPLETE && b.part !== 1) {
      const out = new Uint8Array(asm.outLength);
      let at = 0;
      for (let k = 0; k < asm.outParts; k++) {
        out.set(arena.subarray(asm.outPartOffsets[k], asm.outPartOffsets[k] + asm.outPartLengths[k]), at);
        at += asm.outPartLengths[k];
      }
      packet = out;
    }
  }
  const drops: Record<string, number> = {};
  b.addDrops(drops);
  return { packet, drops };
}

for (const gso of [true, false]) {
  Deno.test(`secure whole: one AEAD call, gather sends (${gso ? "GSO" : "split"}): the part-by-part bytes, byte-exact packet`, () => {
    const { a, a2, b, now } = layers();
    const m = message();
    const ref = sealedInParts(a2, message2(m), now);
    const { grams, entries } = sendWhole(a, m, now, gso);
    assertEquals(grams.length, 46);
    assert(entries >= 2);
    assertEquals(grams.length, ref.length);
    for (let i = 0; i < grams.length; i++) assertEquals(grams[i], ref[i], `datagram ${i}`);
    const r = receive(b, grams, now);
    assert(r.packet !== undefined, "reassembled");
    assertEquals(r.packet, m.packet);
    assertEquals(a.sealed, 46);
  });
}

Deno.test("secure whole: a tampered chunk drops the whole message (secure_auth), a replay delivers nothing", () => {
  const { a, b, now } = layers();
  const m = message();
  const { grams } = sendWhole(a, m, now, true);
  const bad = grams.map((g) => g.slice());
  bad[17][SECURE_HEADER_LEN + 100] ^= 1;
  const r1 = receive(b, bad, now);
  assertEquals(r1.packet, undefined);
  assertEquals(r1.drops.secure_auth, 1);
  // The untouched message still opens (the window did not move), once.
  const r2 = receive(b, grams, now);
  assertEquals(r2.packet, m.packet);
  const r3 = receive(b, grams, now);
  assertEquals(r3.packet, undefined);
  assert((r3.drops.secure_replay ?? 0) >= 1);
});

/** A copy of a queued message (the whole-message sealing works in place, so the reference needs its own). */
function message2(m: ReturnType<typeof message>): ReturnType<typeof message> {
  const src = new SendBatch(4, SLOT);
  src.data.set(m.src.data);
  for (let e = 0; e < m.entries; e++) {
    src.offsets[e] = m.src.offsets[e];
    src.sizes[e] = m.src.sizes[e];
    src.segSizes[e] = m.src.segSizes[e];
    src.setDst4(e, 0x7f000001, 0);
  }
  return { ...m, src };
}
