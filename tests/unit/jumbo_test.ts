import { assert, assertEquals } from "../helpers/assert.ts";
import {
  gatherJumbo,
  JUMBO_F_NEEDS_CSUM,
  JUMBO_MAX_PACKET,
  JumboAssembler,
  jumboChunkCount,
  type JumboMeta,
  JumboResult,
  jumboSliceOffset,
  jumboTsoSegs,
  placeJumbo,
  writeJumbo,
} from "../../src/proxy/jumbo.ts";
import { classify, JUMBO_META_LEN, JUMBO_TAG_LEN, MSG_JUMBO, WireKind } from "../../src/proxy/wire.ts";
import { VNET_GSO_ECN, VNET_GSO_TCPV4, VNET_GSO_TCPV6 } from "../../ffi/vnet.ts";

const DSIZE = 8 + 1450;

/** A TCP super-packet (IPv4 or IPv6 header, 20-byte TCP header) of `total` bytes with a byte pattern. */
function superPacket(total: number, v6 = false): Uint8Array {
  const p = new Uint8Array(total);
  for (let i = 0; i < total; i++) p[i] = (i * 7 + 3) & 0xff;
  if (v6) {
    p[0] = 0x60;
    p[4] = (total - 40) >>> 8;
    p[5] = total - 40;
    p[6] = 6;
    p[40 + 12] = 5 << 4;
  } else {
    p[0] = 0x45;
    p[2] = total >>> 8;
    p[3] = total;
    p[9] = 6;
    p[20 + 12] = 5 << 4;
  }
  return p;
}

const META4: JumboMeta = { gsoType: VNET_GSO_TCPV4, gsoSize: 1398, csumStart: 20, csumOffset: 16 };

/** Encodes `pkt` as JUMBO chunks; returns the arena and each chunk's [offset, length]. */
function encode(
  pkt: Uint8Array,
  id = 7,
  meta = META4,
  dsize = DSIZE,
): { arena: Uint8Array; chunks: number[][] } {
  const arena = new Uint8Array(pkt.length + 200_000);
  arena.set(pkt, 0);
  const at = 70_000;
  const used = writeJumbo(arena, 0, pkt.length, at, dsize, id, meta);
  assert(used > 0, "encodes");
  const chunks: number[][] = [];
  for (let o = at; o < at + used; o += dsize) chunks.push([o, Math.min(dsize, at + used - o)]);
  return { arena, chunks };
}

function assembler(
  slots = 2,
  onLost?: (key: object, id: number) => void,
): { asm: JumboAssembler; arena: Uint8Array } {
  const arena = new Uint8Array(slots * (10 + JUMBO_MAX_PACKET) + 100);
  return { asm: new JumboAssembler({ arena, base: 100, slots, prefix: 10, onLost }), arena };
}

Deno.test("jumboChunkCount: small packets are not JUMBO; a 64 KB super-packet needs 46 chunks of 1458", () => {
  assertEquals(jumboChunkCount(1442, DSIZE), 0, "fits the first chunk");
  assertEquals(jumboChunkCount(1443, DSIZE), 2);
  assertEquals(jumboChunkCount(65535, DSIZE), 46);
  assertEquals(jumboChunkCount(65536, DSIZE), 0, "over 64 KB");
  assertEquals(jumboChunkCount(65535, 600), 0, "more than 64 chunks");
});

Deno.test("writeJumbo: tags, offload fields and slices; every chunk but the last is one datagram size", () => {
  const pkt = superPacket(65535);
  const { arena, chunks } = encode(pkt, 0x01020304);
  assertEquals(chunks.length, 46);
  let rebuilt: number[] = [];
  chunks.forEach(([o, len], k) => {
    assertEquals(arena[o], MSG_JUMBO);
    assertEquals(arena[o + 1], k);
    assertEquals(arena[o + 2], 46);
    assertEquals(arena[o + 3], JUMBO_F_NEEDS_CSUM);
    assertEquals([...arena.subarray(o + 4, o + 8)], [1, 2, 3, 4]);
    assertEquals(classify(arena, o, len), WireKind.JUMBO);
    if (k < 45) assertEquals(len, DSIZE);
    const data = k === 0 ? o + JUMBO_TAG_LEN + JUMBO_META_LEN : o + JUMBO_TAG_LEN;
    if (k === 0) {
      const m = o + JUMBO_TAG_LEN;
      assertEquals(arena[m], VNET_GSO_TCPV4);
      assertEquals((arena[m + 2] << 8) | arena[m + 3], 1398);
      assertEquals((arena[m + 4] << 8) | arena[m + 5], 20);
      assertEquals((arena[m + 6] << 8) | arena[m + 7], 16);
    }
    rebuilt = rebuilt.concat([...arena.subarray(data, o + len)]);
  });
  assertEquals(rebuilt.length, 65535);
  assert(rebuilt.every((b, i) => b === pkt[i]), "the slices are the packet, in order");
  assertEquals(writeJumbo(new Uint8Array(3000), 0, 1000, 1000, DSIZE, 1, META4), 0, "too small for JUMBO");
});

Deno.test("JumboAssembler: chunks in order give back the packet and its offload fields (v4 and v6)", () => {
  for (const v6 of [false, true]) {
    const pkt = superPacket(v6 ? 40_000 : 65535, v6);
    const meta = v6
      ? { gsoType: VNET_GSO_TCPV6 | VNET_GSO_ECN, gsoSize: 1378, csumStart: 40, csumOffset: 16 }
      : META4;
    const { arena, chunks } = encode(pkt, 9, meta);
    const { asm, arena: out } = assembler();
    const key = {};
    chunks.forEach(([o, len], k) => {
      const r = asm.add(key, arena, o, len);
      assertEquals(r, k === chunks.length - 1 ? JumboResult.COMPLETE : JumboResult.PENDING);
    });
    assertEquals(asm.outLength, pkt.length);
    assertEquals(out.subarray(asm.outOffset, asm.outOffset + asm.outLength), pkt);
    assertEquals(asm.outParts, 1, "copied chunks (not in the arena) form one part");
    assertEquals((asm.outOffset - 100 - 10) % asm.slotBytes, 0, "in a slot, behind the prefix room");
    assertEquals({ ...asm.outMeta }, meta);
    assertEquals([asm.completed, asm.lost, asm.malformed], [1, 0, 0]);
  }
});

Deno.test("JumboAssembler: a lost, repeated or reordered chunk drops the message; the next one still works", () => {
  const pkt = superPacket(20_000);
  const lostBy: object[] = [];
  const lostIds: number[] = [];
  const { asm } = assembler(2, (k, id) => {
    lostBy.push(k);
    lostIds.push(id);
  });
  const key = {};
  const cases: [string, (c: number[][]) => number[][]][] = [
    ["lost middle chunk", (c) => c.filter((_, k) => k !== 3)],
    ["lost first chunk", (c) => c.slice(1)],
    ["repeated chunk", (c) => [...c.slice(0, 5), c[4], ...c.slice(5)]],
    ["swapped chunks", (c) => [c[0], c[2], c[1], ...c.slice(3)]],
  ];
  let id = 100;
  for (const [why, mangle] of cases) {
    const { arena, chunks } = encode(pkt, id++);
    const results = mangle(chunks).map(([o, len]) => asm.add(key, arena, o, len));
    assert(!results.includes(JumboResult.COMPLETE), why);
    const good = encode(pkt, id++);
    const last = good.chunks.map(([o, len]) => asm.add(key, good.arena, o, len)).pop();
    assertEquals(last, JumboResult.COMPLETE, `${why}: the following message`);
  }
  assertEquals(asm.completed, 4);
  assert(asm.lost >= 3, `incomplete counted (${asm.lost})`);
  assertEquals(lostBy.length, asm.lost, "the owner hears of every lost message");
  assert(lostBy.every((k) => k === key), "with the sender's key");
  assertEquals(new Set(lostIds), new Set([100, 104, 106]), "with the ids of the messages lost");
  // Messages that vanished entirely are the owner's business: the assembler reports completed ids.
  const m = encode(pkt, id + 3);
  m.chunks.forEach(([o, len]) => asm.add(key, m.arena, o, len));
  assertEquals(asm.outId, id + 3);
  // Chunks of another message (made up, or its start lost) do not break the one in progress.
  const cur = encode(pkt, 500);
  const stray = encode(pkt, 9999);
  const before = asm.lost;
  const strays = asm.strays;
  cur.chunks.forEach(([o, len], k) => {
    if (k === 2) {
      asm.add(key, stray.arena, stray.chunks[2][0], stray.chunks[2][1]);
      const bad = stray.arena.slice();
      bad[stray.chunks[0][0] + 8] = 0x77; // malformed chunk 0 of another id
      asm.add(key, bad, stray.chunks[0][0], stray.chunks[0][1]);
    }
    const r = asm.add(key, cur.arena, o, len);
    if (k === cur.chunks.length - 1) assertEquals(r, JumboResult.COMPLETE);
  });
  assertEquals(asm.lost, before);
  assertEquals(asm.strays - strays, 1);
});

Deno.test("JumboAssembler: senders are assembled separately; interleaved messages both complete", () => {
  const a = encode(superPacket(10_000), 1);
  const b = encode(superPacket(12_000, true), 2, { ...META4, gsoType: VNET_GSO_TCPV6, csumStart: 40 });
  const { asm, arena } = assembler(2);
  const ka = {}, kb = {};
  const n = Math.max(a.chunks.length, b.chunks.length);
  const done: number[] = [];
  for (let k = 0; k < n; k++) {
    if (
      k < a.chunks.length && asm.add(ka, a.arena, a.chunks[k][0], a.chunks[k][1]) === JumboResult.COMPLETE
    ) {
      done.push(asm.outLength);
      assertEquals(arena[asm.outOffset], 0x45);
    }
    if (
      k < b.chunks.length && asm.add(kb, b.arena, b.chunks[k][0], b.chunks[k][1]) === JumboResult.COMPLETE
    ) {
      done.push(asm.outLength);
      assertEquals(arena[asm.outOffset], 0x60);
    }
  }
  assertEquals(done.sort(), [10_000, 12_000]);
  // A third sender takes the least recently used slot: the message it interrupts is counted.
  const c = encode(superPacket(5_000), 2); // ka's next id: no gap
  asm.add(ka, c.arena, c.chunks[0][0], c.chunks[0][1]);
  asm.add(kb, c.arena, c.chunks[0][0], c.chunks[0][1]);
  asm.add({}, c.arena, c.chunks[0][0], c.chunks[0][1]); // evicts ka, the least recently used
  assertEquals(asm.lost, 1);
});

Deno.test("JumboAssembler: malformed chunks are dropped and counted, never thrown", () => {
  const pkt = superPacket(8_000);
  const { arena, chunks } = encode(pkt);
  const bad = (why: string, mutate: (b: Uint8Array, chunks: number[][]) => void, lenDelta = 0) => {
    const b = arena.slice();
    mutate(b, chunks);
    const { asm } = assembler();
    const key = {};
    const res = chunks.map(([o, len], k) =>
      asm.add(key, b, o, k === chunks.length - 1 ? len + lenDelta : len)
    );
    assert(!res.includes(JumboResult.COMPLETE), why);
  };
  const [o0] = chunks[0];
  bad("count 1", (b, c) => c.forEach(([o]) => b[o + 2] = 1));
  bad("count above 64", (b, c) => c.forEach(([o]) => b[o + 2] = 65));
  bad("unknown flags", (b) => b[o0 + 3] = 0x81);
  bad("gso type UDP", (b) => b[o0 + JUMBO_TAG_LEN] = 5);
  bad("gso size 0", (b) => (b[o0 + JUMBO_TAG_LEN + 2] = 0, b[o0 + JUMBO_TAG_LEN + 3] = 0));
  bad("IPv4 length says more", (b) => b[o0 + 16 + 2] = 0xff);
  bad("IPv6 packet with a TCPV4 type", (b) => b[o0 + 16] = 0x60);
  bad("message id changes", (b, c) => b[c[2][0] + 7] ^= 1);
  bad("last chunk longer than a datagram", () => {}, DSIZE);
  const { asm } = assembler();
  const junk = new Uint8Array(64).fill(0x15);
  for (let len = 0; len <= 64; len++) assertEquals(asm.add({}, junk, 0, len), JumboResult.DROPPED);
  assertEquals(asm.add({}, junk, 60, 10), JumboResult.DROPPED, "outside the buffer");
});

/** Concatenates the parts of the last completed message. */
function partsOf(asm: JumboAssembler, arena: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (let k = 0; k < asm.outParts; k++) {
    const o = asm.outPartOffsets[k];
    out.push(...arena.subarray(o, o + asm.outPartLengths[k]));
  }
  return new Uint8Array(out);
}

Deno.test("JumboAssembler: chunks received into the arena are referenced, not copied; spill keeps unfinished ones", () => {
  const pkt = superPacket(30_000);
  const enc = encode(pkt, 5);
  // One ArrayBuffer: a "receive" area (the encoded datagrams) and then the assembly slots.
  const recvBytes = enc.arena.length;
  const arena = new Uint8Array(recvBytes + 2 * (10 + JUMBO_MAX_PACKET));
  arena.set(enc.arena, 0);
  const asm = new JumboAssembler({ arena, base: recvBytes, slots: 2, prefix: 10 });
  const key = {};
  const results = enc.chunks.map(([o, len]) => asm.add(key, arena, o, len));
  assertEquals(results.at(-1), JumboResult.COMPLETE);
  assertEquals(asm.outParts, enc.chunks.length, "one part per chunk, pointing where it arrived");
  assert(asm.outPartOffsets[0] < recvBytes);
  assertEquals(partsOf(asm, arena), pkt);
  assertEquals(asm.spilled, 0);

  // Half a message, then the receive area is reused: spill() must have saved the first half.
  const half = Math.floor(enc.chunks.length / 2);
  for (const [o, len] of enc.chunks.slice(0, half)) asm.add(key, arena, o, len);
  asm.spill();
  assertEquals(asm.spilled, 1);
  const saved = arena.slice(0, recvBytes);
  arena.fill(0xee, 0, recvBytes); // the next receive overwrites the buffers
  arena.set(saved, 0); // ...with the rest of the same message arriving at the same places
  for (const [o] of enc.chunks.slice(0, half)) arena.fill(0xee, o, o + DSIZE);
  const last = enc.chunks.slice(half).map(([o, len]) => asm.add(key, arena, o, len)).pop();
  assertEquals(last, JumboResult.COMPLETE);
  assertEquals(asm.outParts, 1 + enc.chunks.length - half, "the spilled half, then the new chunks");
  assertEquals(partsOf(asm, arena), pkt, "byte-exact across the spill");
});

Deno.test("JumboAssembler: checksum offsets outside the first chunk are malformed", () => {
  const pkt = superPacket(9_000);
  for (
    const meta of [{ ...META4, csumStart: 4000 }, { ...META4, csumStart: 10 }, { ...META4, csumOffset: 6 }]
  ) {
    const { arena, chunks } = encode(pkt, 1, meta);
    const { asm } = assembler();
    const key = {};
    const res = chunks.map(([o, len]) => asm.add(key, arena, o, len));
    assertEquals(res.at(-1), JumboResult.DROPPED, JSON.stringify(meta));
    assertEquals(asm.malformed, 1);
  }
});

Deno.test("placeJumbo/gatherJumbo: a packet read scattered into the layout becomes the same message, or contiguous again", () => {
  const pkt = superPacket(65535);
  const first = DSIZE - JUMBO_TAG_LEN - JUMBO_META_LEN;
  const count = jumboChunkCount(pkt.length, DSIZE);
  // One arena: "tunBuf" (virtio header + chunk 0's slice) at 0, the send slot at 70000 — as readv fills them.
  const scattered = () => {
    const a = new Uint8Array(70_000 + count * DSIZE + 100);
    a.set(pkt.subarray(0, first), 10);
    for (let k = 1; k < count; k++) {
      const from = first + (k - 1) * (DSIZE - JUMBO_TAG_LEN);
      a.set(
        pkt.subarray(from, Math.min(pkt.length, from + DSIZE - JUMBO_TAG_LEN)),
        70_000 + jumboSliceOffset(k, DSIZE),
      );
    }
    return a;
  };
  const want = encode(pkt, 77);
  const a = scattered();
  const used = placeJumbo(a, 10, pkt.length, 70_000, DSIZE, 77, META4);
  assertEquals(used, want.chunks.reduce((s, [, len]) => s + len, 0));
  const start = want.chunks[0][0];
  assertEquals(
    a.subarray(70_000, 70_000 + used),
    want.arena.subarray(start, start + used),
    "same bytes as writeJumbo",
  );
  const b = scattered();
  gatherJumbo(b, 10, pkt.length, 70_000, DSIZE);
  assertEquals(b.subarray(10, 10 + pkt.length), pkt, "contiguous behind the virtio header");
  assertEquals(
    placeJumbo(new Uint8Array(100_000), 10, 1000, 70_000, DSIZE, 1, META4),
    0,
    "too small for JUMBO",
  );
});

Deno.test("JumboAssembler.addRun: a receive run of two messages completes each byte-exact, as add does chunk by chunk", () => {
  const a = superPacket(65535);
  const b = superPacket(20_000);
  const ea = encode(a, 11);
  const eb = encode(b, 12);
  // One ArrayBuffer: a receive run of full-size datagrams (message a's chunks but its last, which is
  // shorter), then the assembly slots.
  const recvBytes = 200_000;
  const arena = new Uint8Array(recvBytes + 2 * (10 + JUMBO_MAX_PACKET));
  let at = 0;
  const put = (src: Uint8Array, [o, len]: number[]) => {
    arena.set(src.subarray(o, o + len), at);
    at += len;
  };
  for (const c of ea.chunks) put(ea.arena, c);
  const asm = new JumboAssembler({ arena, base: recvBytes, slots: 2, prefix: 10 });
  const key = {};
  // The caller took chunk 0 with add (the engine classified it); the rest goes by runs.
  assertEquals(asm.add(key, arena, 0, DSIZE), JumboResult.PENDING);
  const full = ea.chunks.length - 2; // full-size datagrams after the first
  assertEquals(asm.addRun(key, arena, DSIZE, DSIZE, full), full);
  assertEquals(asm.runResult, JumboResult.PENDING);
  const lastLen = ea.chunks.at(-1)![1];
  assertEquals(asm.add(key, arena, DSIZE * (full + 1), lastLen), JumboResult.COMPLETE);
  assertEquals(partsOf(asm, arena), a);

  // A run holding a message's last full chunks, a non-chunk datagram: it stops before that one.
  at = 0;
  for (const c of eb.chunks.slice(0, -1)) put(eb.arena, c);
  arena.fill(0x45, at, at + DSIZE); // a raw IPv4 datagram of the same size
  const n = eb.chunks.length - 1;
  assertEquals(asm.add(key, arena, 0, DSIZE), JumboResult.PENDING);
  assertEquals(asm.addRun(key, arena, DSIZE, DSIZE, n), n - 1, "stops before the raw datagram");
  assertEquals(asm.runResult, JumboResult.PENDING);

  // A message whose chunks all have one size completes inside the run; the next one starts there.
  const c = superPacket(1442 + 1450 * 3); // 4 full chunks exactly
  const ec = encode(c, 13);
  assertEquals(ec.chunks.map(([, l]) => l), [DSIZE, DSIZE, DSIZE, DSIZE]);
  at = 0;
  for (const ch of ec.chunks) put(ec.arena, ch);
  const ec2 = encode(c, 14);
  for (const ch of ec2.chunks) put(ec2.arena, ch);
  const lostBefore = asm.lost;
  assertEquals(asm.add(key, arena, 0, DSIZE), JumboResult.PENDING);
  assertEquals(asm.addRun(key, arena, DSIZE, DSIZE, 7), 3, "stops at the completing chunk");
  assertEquals(asm.runResult, JumboResult.COMPLETE);
  assertEquals(asm.outId, 13);
  assertEquals(partsOf(asm, arena), c);
  assertEquals(asm.lost - lostBefore, 1, "message b, left unfinished, was lost when c began");
  assertEquals(asm.addRun(key, arena, 4 * DSIZE, DSIZE, 4), 4);
  assertEquals([asm.runResult, asm.outId], [JumboResult.COMPLETE, 14]);
  assertEquals(partsOf(asm, arena), c);

  // A chunk out of order inside the run drops the message and ends the run there.
  at = 0;
  for (const ch of [ea.chunks[0], ea.chunks[1], ea.chunks[3], ea.chunks[4]]) put(ea.arena, ch);
  assertEquals(asm.add(key, arena, 0, DSIZE), JumboResult.PENDING);
  assertEquals(asm.addRun(key, arena, DSIZE, DSIZE, 3), 2);
  assertEquals(asm.runResult, JumboResult.DROPPED);
  assertEquals(asm.addRun(key, arena, DSIZE, DSIZE, 1_000_000), 0, "a run beyond the buffer is refused");
});

Deno.test("jumboTsoSegs: a TSO packet of that many segments makes one message of one GSO send; one more does not", () => {
  assertEquals(jumboTsoSegs(1450), 45);
  for (const mtu of [1280, 1418, 1450, 1500, 4000, 9000]) {
    const n = jumboTsoSegs(mtu)!;
    const dsize = mtu + 8;
    const perSend = Math.floor(65507 / dsize);
    const largest = (segs: number) => mtu + (segs - 1) * (mtu - 40); // MSS mtu − 40, headers in the first
    assert(jumboChunkCount(largest(n), dsize) <= perSend, `mtu ${mtu}: ${n} segments fit one send`);
    assert(
      largest(n + 1) > 65535 || jumboChunkCount(largest(n + 1), dsize) > perSend,
      `mtu ${mtu}: ${n + 1} would not`,
    );
  }
  assertEquals(jumboTsoSegs(9000), 7);
  assertEquals(jumboTsoSegs(100), undefined);
});
