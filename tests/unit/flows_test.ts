import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { formatIPv6, parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import {
  FlowError,
  FlowTable,
  type NewFlow4,
  type NewFlow6,
  PROTO_TCP,
  PROTO_UDP,
} from "../../src/proxy/flows.ts";
import { seededRandom } from "../../src/proxy/balance.ts";

const CLIENT = parseIPv4("10.18.0.66"); // sender nsip
const CLIENT_IIP = parseIPv4("10.30.1.2"); // sender Instance IP
const SVC_A = parseIPv4("10.30.0.1"); // RR IP of service A
const SVC_B = parseIPv4("10.30.0.5"); // RR IP of service B
const A1 = parseIPv4("10.18.0.130"); // instance of A (nsip)
const A1_IIP = parseIPv4("10.30.1.3");
const B1 = parseIPv4("10.18.0.194");
const B1_IIP = parseIPv4("10.30.1.4");

function flowTo(
  dst: number,
  chosen: number,
  replySrc: number,
  sport = 40000,
  dport = 80,
  proto = PROTO_TCP,
): NewFlow4 {
  return {
    proto,
    src: CLIENT,
    sport,
    dst,
    dport,
    chosen,
    senderIp: CLIENT_IIP,
    replySrc,
    node: "131.1.0.2:50103",
    target: chosen,
    sender: CLIENT,
  };
}

Deno.test("v4: add, find, touch, accessors, reverse lookup restores the dialled ServiceIP", () => {
  const f = new FlowTable();
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40000, SVC_A, 80), -1);
  const id = f.add4(flowTo(SVC_A, A1, A1_IIP), 1000);
  assertEquals(f.size, 1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40000, SVC_A, 80), id);
  assertEquals(f.find4(PROTO_UDP, CLIENT, 40000, SVC_A, 80), -1, "protocol is part of the key");
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40001, SVC_A, 80), -1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40000, SVC_A, 81), -1);
  assertEquals(f.chosen4(id), A1);
  assertEquals(f.senderIp4(id), CLIENT_IIP);
  assertEquals(f.dialled4(id), SVC_A);
  assertEquals(f.node(id), "131.1.0.2:50103");
  assertEquals(f.version(id), 4);
  f.touch(id, 1500, 60);
  f.touch(id, 1600, 1400);
  assertEquals([f.lastSeen(id), f.packets(id), f.bytes(id)], [1600, 2, 1460]);
  // Reply: src = A1's Instance IP, sport 80 → dst = client nsip, dport 40000.
  const r = f.findReply4(PROTO_TCP, A1_IIP, 80, CLIENT, 40000);
  assertEquals(r, id);
  assertEquals(f.dialled4(r), SVC_A);
  assertEquals(f.findReply4(PROTO_TCP, A1_IIP, 80, CLIENT, 40001), -1);
  assertEquals(f.findReply4(PROTO_TCP, B1_IIP, 80, CLIENT, 40000), -1, "reply from another instance");
  assertEquals(f.info(id), {
    id,
    version: 4,
    proto: 6,
    src: "10.18.0.66",
    sport: 40000,
    dialled: "10.30.0.1",
    dport: 80,
    chosen: "10.18.0.130",
    senderIp: "10.30.1.2",
    replySrc: "10.30.1.3",
    node: "131.1.0.2:50103",
    lastSeen: 1600,
    packets: 2,
    bytes: 1460,
  });
  // Addresses given as signed int32 still match.
  assertEquals(f.find4(PROTO_TCP, CLIENT | 0, 40000, SVC_A | 0, 80), id);
  f.remove(id);
  assertEquals(f.size, 0);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40000, SVC_A, 80), -1);
  assertEquals(f.findReply4(PROTO_TCP, A1_IIP, 80, CLIENT, 40000), -1);
  assertThrows(() => f.info(id), FlowError);
});

Deno.test("ports 0 and 65535 work (no crash), out-of-range ports are rejected", () => {
  const f = new FlowTable();
  const hi = f.add4(flowTo(SVC_A, A1, A1_IIP, 65535, 65535), 0);
  const lo = f.add4(flowTo(SVC_A, A1, A1_IIP, 0, 0), 0);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 65535, SVC_A, 65535), hi);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 0, SVC_A, 0), lo);
  assertEquals(f.findReply4(PROTO_TCP, A1_IIP, 65535, CLIENT, 65535), hi);
  assertEquals(f.info(hi).sport, 65535);
  assertThrows(() => f.add4(flowTo(SVC_A, A1, A1_IIP, 65536), 0), FlowError, "out of range");
  assertThrows(() => f.add4(flowTo(SVC_A, A1, A1_IIP, -1), 0), FlowError);
});

Deno.test("two services dialled with the same ports do not overwrite each other", () => {
  const f = new FlowTable();
  // UDP socket bound to port 5000 sends to service A:53 and service B:53 (Oakestra quirk: overwrite).
  const a = f.add4(flowTo(SVC_A, A1, A1_IIP, 5000, 53, PROTO_UDP), 0);
  const b = f.add4(flowTo(SVC_B, B1, B1_IIP, 5000, 53, PROTO_UDP), 0);
  assert(a !== b);
  assertEquals(f.size, 2);
  assertEquals(f.chosen4(f.find4(PROTO_UDP, CLIENT, 5000, SVC_A, 53)), A1);
  assertEquals(f.chosen4(f.find4(PROTO_UDP, CLIENT, 5000, SVC_B, 53)), B1);
  assertEquals(f.dialled4(f.findReply4(PROTO_UDP, A1_IIP, 53, CLIENT, 5000)), SVC_A);
  assertEquals(f.dialled4(f.findReply4(PROTO_UDP, B1_IIP, 53, CLIENT, 5000)), SVC_B);
  // Another sender with the same ports is a different flow too.
  const other = f.add4(
    { ...flowTo(SVC_A, A1, A1_IIP, 5000, 53, PROTO_UDP), src: parseIPv4("10.18.0.67") },
    0,
  );
  assertEquals(f.find4(PROTO_UDP, parseIPv4("10.18.0.67"), 5000, SVC_A, 53), other);
  assertEquals(f.findReply4(PROTO_UDP, A1_IIP, 53, parseIPv4("10.18.0.67"), 5000), other);
  assertEquals(f.findReply4(PROTO_UDP, A1_IIP, 53, CLIENT, 5000), a);
});

Deno.test("same instance via RR IP and its Instance IP from one socket: newest owns the reply mapping", () => {
  const f = new FlowTable();
  const viaRR = f.add4(flowTo(SVC_A, A1, A1_IIP, 5000, 53, PROTO_UDP), 0);
  const viaIIP = f.add4(flowTo(A1_IIP, A1, A1_IIP, 5000, 53, PROTO_UDP), 1);
  assertEquals(f.findReply4(PROTO_UDP, A1_IIP, 53, CLIENT, 5000), viaIIP);
  f.remove(viaIIP);
  assertEquals(f.find4(PROTO_UDP, CLIENT, 5000, SVC_A, 53), viaRR, "older flow still translates forward");
  assertEquals(f.findReply4(PROTO_UDP, A1_IIP, 53, CLIENT, 5000), -1);
  f.remove(viaRR);
  assertEquals(f.size, 0);
  // Adding the same forward tuple again replaces the flow.
  const x = f.add4(flowTo(SVC_A, A1, A1_IIP), 0);
  const y = f.add4(flowTo(SVC_A, B1, B1_IIP), 5);
  assertEquals(f.size, 1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 40000, SVC_A, 80), y);
  assertEquals(f.chosen4(y), B1);
  assertEquals(f.findReply4(PROTO_TCP, A1_IIP, 80, CLIENT, 40000), -1);
  assert(x === y || f.version(x) === 0);
});

Deno.test("sweep evicts only idle flows, oldest first", () => {
  const f = new FlowTable();
  const ids = [0, 1, 2, 3].map((i) => f.add4(flowTo(SVC_A, A1, A1_IIP, 1000 + i), 0));
  f.touch(ids[1], 50_000, 100);
  f.touch(ids[3], 61_000, 100);
  // At 70 s with 60 s idle: flows 0 and 2 (last seen at 0) go; 1 (50 s) and 3 (61 s) stay.
  assertEquals(f.sweep(70_000, 60_000), 2);
  assertEquals([...f.ids()], [ids[1], ids[3]]);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 1000, SVC_A, 80), -1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 1001, SVC_A, 80), ids[1]);
  assertEquals(f.sweep(110_000, 60_000), 0, "exactly 60 s idle is not more than 60 s");
  assertEquals(f.sweep(110_001, 60_000), 1);
  assertEquals(f.size, 1);
  assertEquals(f.sweep(1e9, 0), 1);
  assertEquals(f.size, 0);
});

Deno.test("dropInstance removes flows to and from an instance that left the table", () => {
  const f = new FlowTable();
  f.add4(flowTo(SVC_A, A1, A1_IIP, 1), 0);
  f.add4(flowTo(SVC_A, A1, A1_IIP, 2), 0);
  f.add4(flowTo(SVC_B, B1, B1_IIP, 3), 0);
  const fromA1 = f.add4({ ...flowTo(SVC_B, B1, B1_IIP, 4), src: A1, sender: A1 }, 0);
  assertEquals(f.activeFlows(A1), 2);
  assertEquals(f.activeFlows(B1), 2);
  assertEquals(f.dropInstance(A1), 3);
  assertEquals(f.activeFlows(A1), 0);
  assertEquals(f.activeFlows(B1), 1);
  assertEquals(f.size, 1);
  assertEquals(f.find4(PROTO_TCP, A1, 4, SVC_B, 80), -1);
  assertEquals(f.version(fromA1), 0);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 3, SVC_B, 80) >= 0, true);
  assertEquals(f.dropInstance(A1), 0);
  f.add4(flowTo(SVC_A, A1, A1_IIP, 5), 0);
  assertEquals(f.dropInstances([]), 0);
  assertEquals(f.dropInstances([A1, B1]), 2);
  assertEquals(f.size, 0);
  f.touch(fromA1, 1, 1); // touching a dead id is ignored
  assertEquals([...f.ids()], []);
});

Deno.test("bounded: when full the least recently used flow is evicted", () => {
  const f = new FlowTable({ maxFlows: 4, initialCapacity: 2 });
  const ids = [0, 1, 2, 3].map((i) => f.add4(flowTo(SVC_A, A1, A1_IIP, 1000 + i), i));
  assertEquals(f.capacity, 4);
  f.touch(ids[0], 10, 1); // flow 0 is now the most recent; flow 1 the least
  const n = f.add4(flowTo(SVC_A, A1, A1_IIP, 2000), 11);
  assertEquals(f.size, 4);
  assertEquals(f.evictions, 1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 1001, SVC_A, 80), -1);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 1000, SVC_A, 80), ids[0]);
  assertEquals(f.find4(PROTO_TCP, CLIENT, 2000, SVC_A, 80), n);
  assertEquals(f.activeFlows(A1), 4);
  assertThrows(() => new FlowTable({ maxFlows: 0 }), FlowError);
});

Deno.test("v6: numeric key + compare straight from packet bytes; reverse; write-back", () => {
  const f = new FlowTable();
  const pkt = new Uint8Array(48);
  pkt.set(parseIPv6("fc00::2"), 8); // src (sender nsip)
  pkt.set(parseIPv6("fdff:2000::1"), 24); // dst (dialled RR IP)
  const spec: NewFlow6 = {
    proto: PROTO_TCP,
    buf: pkt,
    srcOff: 8,
    sport: 65535,
    dstOff: 24,
    dport: 443,
    chosen: parseIPv6("fc00::1:2"),
    senderIp: parseIPv6("fdff::2"),
    replySrc: parseIPv6("fdff::3"),
    node: "131.1.0.2:50103",
    target: A1,
    sender: CLIENT,
  };
  const id = f.add6(spec, 0);
  assertEquals(f.find6(PROTO_TCP, pkt, 8, 65535, 24, 443), id);
  assertEquals(f.find4(PROTO_TCP, 0, 65535, 0, 443), -1);
  // Rewrite in place: dst := chosen, src := sender Instance IP.
  f.writeChosen6(id, pkt, 24);
  f.writeSenderIp6(id, pkt, 8);
  assertEquals(formatIPv6(pkt, 24), "fc00::1:2");
  assertEquals(formatIPv6(pkt, 8), "fdff::2");
  // Reply: src = fdff::3 :443 → dst = fc00::2 :65535.
  const reply = new Uint8Array(40);
  reply.set(parseIPv6("fdff::3"), 8);
  reply.set(parseIPv6("fc00::2"), 24);
  const r = f.findReply6(PROTO_TCP, reply, 8, 443, 24, 65535);
  assertEquals(r, id);
  f.writeDialled6(r, reply, 8);
  assertEquals(formatIPv6(reply, 8), "fdff:2000::1");
  reply[23] ^= 1;
  assertEquals(f.findReply6(PROTO_TCP, reply, 8, 443, 24, 65535), -1);
  assertEquals(f.info(id).chosen, "fc00::1:2");
  assertEquals(f.dropInstance(A1), 1);
  assertThrows(() => f.add6({ ...spec, chosen: new Uint8Array(4) }, 0), FlowError, "16 bytes");
});

Deno.test("randomised against a reference model: growth, deletions, lookups stay exact", () => {
  const rnd = seededRandom(99);
  const r = (n: number) => Math.floor(rnd() * n);
  const f = new FlowTable({ maxFlows: 1 << 20, initialCapacity: 8 });
  const model = new Map<string, { id: number; chosen: number }>();
  const key = (src: number, sport: number, dst: number, dport: number) => `${src}|${sport}|${dst}|${dport}`;
  for (let step = 0; step < 60_000; step++) {
    const src = parseIPv4("10.18.0.0") + r(64);
    const dst = parseIPv4("10.30.0.0") + r(16);
    const sport = r(64);
    const dport = r(4);
    const k = key(src, sport, dst, dport);
    const id = f.find4(PROTO_TCP, src, sport, dst, dport);
    const m = model.get(k);
    assertEquals(id, m ? m.id : -1, `step ${step}`);
    if (m) assertEquals(f.chosen4(id), m.chosen);
    if (r(3) === 0 && m) {
      f.remove(id);
      model.delete(k);
    } else if (!m) {
      const chosen = parseIPv4("10.18.1.0") + r(100);
      const nid = f.add4({
        proto: PROTO_TCP,
        src,
        sport,
        dst,
        dport,
        chosen,
        senderIp: 1,
        replySrc: dst + 256,
        node: "n",
        target: chosen,
        sender: src,
      }, step);
      model.set(k, { id: nid, chosen });
    }
  }
  assertEquals(f.size, model.size);
  assert(f.capacity >= model.size);
  for (const [k, m] of model) {
    const [src, sport, dst, dport] = k.split("|").map(Number);
    assertEquals(f.find4(PROTO_TCP, src, sport, dst, dport), m.id);
    assertEquals(f.findReply4(PROTO_TCP, dst + 256, dport, src, sport), m.id);
  }
  f.clear();
  assertEquals(f.size, 0);
  assertEquals([...f.ids()], []);
});
