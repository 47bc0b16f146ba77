/**
 * The instance TSO cap in secure mode (jumbo.ts `jumboTsoSegs` with `secure`), checked against the
 * real secure layer: a TCP super-packet of the capped segment count, cut into JUMBO chunks and
 * queued as bind.ts queues it, comes out of `SecureLayer.sealBatch` as ONE GSO send (apart from a
 * last datagram that the tag makes longer than the others, which no cap avoids); one segment more
 * would not fit. The plain cap is not enough where a sealed send holds fewer datagrams (TUN MTU
 * 1468, MTUsize 1500), and the secure cap still fits plain sends (a `prefer` node's raw peers).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { SendBatch } from "../../ffi/udp.ts";
import { VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";
import { jumboChunkCount, jumboTsoSegs, writeJumbo } from "../../src/proxy/jumbo.ts";
import { FAST_HEADER_LEN } from "../../src/proxy/wire.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import { SECURE_TAG_LEN } from "../../src/secure/secure_wire.ts";

const SLOT = 70_000;
const MAX_GSO_PAYLOAD = 65507;
const B = "10.0.0.2:50103";

/** A sending layer with a session to B. */
function sender(): { a: SecureLayer; now: number } {
  const now = Date.now();
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  const k: SessionKeys = {
    peer: B,
    localIndex: 1,
    remoteIndex: 2,
    sendKey: crypto.getRandomValues(new Uint8Array(32)),
    recvKey: crypto.getRandomValues(new Uint8Array(32)),
    ...t,
  };
  const a = new SecureLayer({ lane: 1, post: () => {} });
  a.setMode(SecureMode.REQUIRE);
  a.install(k);
  return { a, now };
}

/** Largest IP length of a TSO packet of `n` segments on a link of MTU `mtu` (first segment full, MSS mtu − 40). */
const largest = (mtu: number, n: number) => mtu + (n - 1) * (mtu - 40);

/**
 * Seals a `total`-byte TCPv4 super-packet made into a JUMBO message with chunks of TUN MTU `tun`, queued
 * as bind.ts `#queueRun` queues it (plain GSO runs of whole chunks, message length on the first entry).
 * Returns the datagram count of each GSO send the layer made, and the chunk count.
 */
function sealedSends(
  a: SecureLayer,
  now: number,
  total: number,
  tun: number,
): { sends: number[]; chunks: number; longTail: boolean } {
  const dsize = FAST_HEADER_LEN + tun;
  const src = new SendBatch(8, SLOT);
  const packet = crypto.getRandomValues(new Uint8Array(total));
  packet[0] = 0x45;
  packet[2] = total >>> 8;
  packet[3] = total & 0xff;
  src.data.set(packet, 7 * SLOT);
  const meta = { gsoType: VNET_GSO_TCPV4, gsoSize: tun - 40, csumStart: 20, csumOffset: 16 };
  const used = writeJumbo(src.data, 7 * SLOT, total, 0, dsize, 9, meta);
  assert(used > 0, `${total} bytes make a JUMBO message at TUN MTU ${tun}`);
  const perSend = Math.floor(MAX_GSO_PAYLOAD / dsize);
  let entries = 0;
  for (let from = 0; from < used; from += perSend * dsize) {
    const to = Math.min(used, from + perSend * dsize);
    if (entries > 0) src.data.copyWithin(entries * SLOT + from, from, to);
    src.offsets[entries] = from;
    src.sizes[entries] = to - from;
    src.segSizes[entries] = to - from > dsize ? dsize : 0;
    src.setDst4(entries, 0x7f000001, 50103);
    entries++;
  }
  const messages = new Int32Array(entries).fill(-1);
  messages[0] = used;
  const dst = new SendBatch(2 * entries + 3, SLOT);
  const out = a.sealBatch(
    src,
    entries,
    new Array(entries).fill(B),
    new Int32Array(entries).fill(0x55),
    dst,
    65507,
    now,
    messages,
  );
  const sends: number[] = [];
  for (let e = 0; e < out; e++) {
    sends.push(dst.segSizes[e] > 0 ? Math.ceil(dst.sizes[e] / dst.segSizes[e]) : 1);
  }
  const chunks = jumboChunkCount(total, dsize);
  // The last datagram sealed: its bytes, the header and the tag; the others: header and a full chunk.
  const longTail = used - (chunks - 1) * dsize + SECURE_TAG_LEN > dsize;
  return { sends, chunks, longTail };
}

/** One send, or (when the tag made the last datagram the longest) all but the last in one and that last alone. */
function oneSendOrLongTail(r: { sends: number[]; chunks: number; longTail: boolean }): boolean {
  return (r.sends.length === 1 && r.sends[0] === r.chunks) ||
    (r.longTail && r.sends.length === 2 && r.sends[0] === r.chunks - 1 && r.sends[1] === 1);
}

Deno.test("jumboTsoSegs secure: a capped super-packet leaves the real secure layer as one GSO send; one segment more does not", () => {
  const { a, now } = sender();
  for (const tun of [1280, 1388, 1418, 1450, 1468, 2000, 4000, 8968]) {
    const n = jumboTsoSegs(tun, { secure: true })!;
    assert(n !== undefined, `TUN MTU ${tun}: a cap`);
    // The largest packet of n segments, and a full-size one with TCP timestamps (MSS mtu − 52).
    for (const total of [largest(tun, n), 52 + n * (tun - 52)]) {
      const r = sealedSends(a, now, total, tun);
      assert(oneSendOrLongTail(r), `TUN MTU ${tun}, ${n} segments, ${total} bytes: sends ${r.sends}`);
    }
    // One segment more: its chunks are more than a sealed send holds (or the packet is over 64 KB).
    const more = largest(tun, n + 1);
    if (more <= 65535) {
      const r = sealedSends(a, now, more, tun);
      assert(!oneSendOrLongTail(r), `TUN MTU ${tun}: ${n + 1} segments would not fit (sends ${r.sends})`);
    }
    // The same cap fits a plain send too (prefer: raw peers).
    const dsize = FAST_HEADER_LEN + tun;
    assert(
      jumboChunkCount(largest(tun, n), dsize) <= Math.floor(MAX_GSO_PAYLOAD / dsize),
      `TUN MTU ${tun}: plain`,
    );
    assert(n <= jumboTsoSegs(tun)!, `TUN MTU ${tun}: the secure cap is not above the plain one`);
  }
  assertEquals(a.sealed > 0, true);
});

Deno.test("jumboTsoSegs secure: where a sealed send holds fewer datagrams the plain cap costs a second send", () => {
  const { a, now } = sender();
  // TUN MTU 1468 (MTUsize 1500 − 32): 44 chunks a plain send, 43 sealed.
  const plain = jumboTsoSegs(1468)!, secure = jumboTsoSegs(1468, { secure: true })!;
  assertEquals([plain, secure], [45, 44]);
  const r = sealedSends(a, now, largest(1468, plain), 1468);
  assert(!oneSendOrLongTail(r), `the plain cap's packet: sends ${r.sends}`);
  // The default (MTUsize 1450: TUN MTU 1418) is the same either way.
  assertEquals(jumboTsoSegs(1418, { secure: true }), jumboTsoSegs(1418));
});

Deno.test("jumboTsoSegs: the link's MTU bounds the segments, the TUN's the chunks", () => {
  // The bench's workload veth (1450) in front of a secure TUN (1418).
  const n = jumboTsoSegs(1450, { tunMtu: 1418, secure: true })!;
  const { a, now } = sender();
  assert(oneSendOrLongTail(sealedSends(a, now, largest(1450, n), 1418)));
  assert(!oneSendOrLongTail(sealedSends(a, now, largest(1450, n + 1), 1418)));
  assertEquals(jumboTsoSegs(1450, { tunMtu: 100 }), undefined);
});
