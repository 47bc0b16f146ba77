import { assert, assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import {
  endpointOf,
  parseEndpoint,
  type Peer,
  type PeerActions,
  PeerError,
  PeerTable,
  type PeerTableOptions,
  RttEstimator,
} from "../../src/proxy/peers.ts";
import {
  CAP_FAST,
  CAP_JUMBO,
  CAP_PROBE,
  decodeHello,
  decodeProbe,
  encodeHello,
  encodeHelloAck,
  encodeProbeReply,
  HelloMessage,
  MSG_HELLO,
  MSG_HELLO_ACK,
  MSG_PROBE_REPLY,
  ProbeMessage,
} from "../../src/proxy/wire.ts";

const A = "131.1.0.2:50103";
const B6 = "[fd00::2]:50103";

/** Records what tick() asked to send. */
class Recorder implements PeerActions {
  hellos: { peer: Peer; at: number; hi: number; lo: number }[] = [];
  probes: { peer: Peer; at: number; seq: number; us: number }[] = [];
  now = 0;
  hello(peer: Peer, hi: number, lo: number): void {
    this.hellos.push({ peer, at: this.now, hi, lo });
  }
  probe(peer: Peer, seq: number, us: number): void {
    this.probes.push({ peer, at: this.now, seq, us });
  }
  tick(t: PeerTable, now: number): number {
    this.now = now;
    return t.tick(now, this);
  }
}

function counterNonce(): () => number {
  let n = 100;
  return () => n++;
}

function table(opts: PeerTableOptions = {}): PeerTable {
  return new PeerTable({ nonce: counterNonce(), ...opts });
}

function helloMsg(type: number, caps: number, nodeId: string, nonceHi = 1, nonceLo = 2): HelloMessage {
  const m = new HelloMessage();
  m.type = type;
  m.version = 1;
  m.caps = caps;
  m.nonceHi = nonceHi;
  m.nonceLo = nonceLo;
  m.hostPort = 50103;
  m.nodeId = nodeId;
  return m;
}

function probeReply(seq: number, us: number): ProbeMessage {
  const m = new ProbeMessage();
  m.type = MSG_PROBE_REPLY;
  m.seq = seq;
  m.timestampUs = us;
  return m;
}

// ------------------------------------------------------------------------------------------ RTT

Deno.test("RttEstimator follows RFC 6298 §2 (hand-computed values)", () => {
  const e = new RttEstimator({ granularityMs: 0, minRtoMs: 0 });
  assertEquals(e.samples, 0);
  assert(Number.isNaN(e.srtt));
  assertEquals(e.rto, 1000, "initial RTO is 1 s (§2.1)");
  assert(e.sample(100, 10));
  // first: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4·RTTVAR
  assertEquals([e.srtt, e.rttvar, e.rto, e.min, e.samples, e.lastSampleAt], [100, 50, 300, 100, 1, 10]);
  e.sample(60, 20);
  // RTTVAR = 3/4·50 + 1/4·|100 − 60| = 47.5 ; SRTT = 7/8·100 + 1/8·60 = 95 ; RTO = 95 + 4·47.5
  assertEquals([e.srtt, e.rttvar, e.rto, e.min, e.last], [95, 47.5, 285, 60, 60]);
  e.sample(200, 30);
  // RTTVAR = 3/4·47.5 + 1/4·105 = 61.875 ; SRTT = 7/8·95 + 25 = 108.125 ; RTO = 108.125 + 247.5
  assertEquals([e.srtt, e.rttvar, e.rto, e.min, e.samples, e.lastSampleAt], [
    108.125,
    61.875,
    355.625,
    60,
    3,
    30,
  ]);
  assertEquals(e.sample(-1, 40), false);
  assertEquals(e.sample(NaN, 40), false);
  assertEquals(e.sample(Infinity, 40), false);
  assertEquals(e.samples, 3, "bad samples are ignored");
  e.reset();
  assertEquals([e.samples, e.min, e.rto, e.lastSampleAt], [0, Infinity, 1000, -Infinity]);
});

Deno.test("RttEstimator: granularity G and RTO bounds", () => {
  const g = new RttEstimator({ granularityMs: 50, minRtoMs: 0 });
  g.sample(10, 0); // RTO = 10 + max(50, 4·5)
  assertEquals(g.rto, 60);
  const d = new RttEstimator(); // defaults: G = 1 ms, RTO in [1 s, 60 s]
  d.sample(10, 0);
  assertEquals(d.rto, 1000, "rounded up to 1 s (§2.4)");
  const big = new RttEstimator();
  big.sample(30000, 1); // 30000 + 4·15000
  assertEquals(big.rto, 60000, "clamped to the maximum");
  assertThrows(() => new RttEstimator({ minRtoMs: 10, maxRtoMs: 5 }), PeerError);
});

// ------------------------------------------------------------------------------------------ keys

Deno.test("endpoints: parse, canonicalise, reject", () => {
  assertEquals(parseEndpoint(A), { family: 4, ip4: parseIPv4("131.1.0.2"), port: 50103, key: A });
  const v6 = parseEndpoint("[FD00:0:0::2]:50103");
  assertEquals([v6.family, v6.key, v6.port], [6, B6, 50103]);
  assertEquals(v6.ip6, parseIPv6("fd00::2"));
  assertEquals(endpointOf("fd00::2", 1).key, "[fd00::2]:1");
  for (
    const bad of [
      "131.1.0.2",
      "131.1.0.2:0",
      "131.1.0.2:65536",
      "131.1.0.2:-1",
      "fd00::1:50103",
      "[fd00::1]",
      "[fd00::1]50103",
      "host:80",
      "1.2.3.256:1",
      ":80",
      "1.2.3.4: 80",
    ]
  ) {
    assertThrows(() => parseEndpoint(bad), PeerError, undefined);
  }
  assertThrows(() => endpointOf("1.2.3.4", 1.5), PeerError, "port");
});

Deno.test("known peers: IPv4 and IPv6, source port optional by default", () => {
  const t = table();
  const a = t.addKey(A, 0);
  const b = t.addKey(B6, 0);
  const a4 = parseIPv4("131.1.0.2");
  assertEquals(t.lookup4(a4, 50103), a);
  assertEquals(t.lookup4(a4, 41234), a, "another source port of a known address is accepted");
  assert(t.isKnown(a4, 41234));
  assertEquals(t.lookup4(parseIPv4("131.1.0.3"), 50103), undefined);
  assert(!t.isKnown(parseIPv4("131.1.0.3"), 50103));

  // IPv6 source inside a larger receive buffer (e.g. a sockaddr_in6 at offset 8)
  const rx = new Uint8Array(40);
  rx.set(parseIPv6("fd00::2"), 8);
  assertEquals(t.lookup6(rx, 8, 50103), b);
  assertEquals(t.lookup6(rx, 8, 9999), b);
  assert(t.isKnown(parseIPv6("fd00::2"), 1));
  assert(!t.isKnown(parseIPv6("fd00::3"), 50103));
  rx[23] = 3;
  assertEquals(t.lookup6(rx, 8, 50103), undefined);

  // IPv4-mapped IPv6 source (dual-stack socket) finds the IPv4 peer
  assert(t.isKnown(parseIPv6("::ffff:131.1.0.2"), 50103));
  assert(!t.isKnown(parseIPv6("::ffff:131.1.0.9"), 50103));
});

Deno.test("known peers: matchSourcePort requires the advertised port too", () => {
  const t = table({ matchSourcePort: true });
  t.addKey(A, 0);
  t.addKey(B6, 0);
  assert(t.isKnown(parseIPv4("131.1.0.2"), 50103));
  assert(!t.isKnown(parseIPv4("131.1.0.2"), 41234));
  assert(t.isKnown(parseIPv6("fd00::2"), 50103));
  assert(!t.isKnown(parseIPv6("fd00::2"), 41234));
  assert(!t.isKnown(parseIPv6("::ffff:131.1.0.2"), 41234));
});

Deno.test("known peers: several nodes behind one address are told apart by port", () => {
  for (const strict of [false, true]) {
    const t = table({ matchSourcePort: strict });
    const p1 = t.add("10.0.0.1", 50103, 0);
    const p2 = t.add("10.0.0.1", 50104, 0);
    const q1 = t.add("fd00::1", 50103, 0);
    const q2 = t.add("fd00::1", 50104, 0);
    const ip = parseIPv4("10.0.0.1");
    const ip6 = parseIPv6("fd00::1");
    assertEquals(t.lookup4(ip, 50104), p2);
    assertEquals(t.lookup4(ip, 50103), p1);
    assertEquals(t.lookup6(ip6, 0, 50104), q2);
    assertEquals(t.lookup6(ip6, 0, 50103), q1);
    assertEquals(t.lookup4(ip, 1), strict ? undefined : p1, "unknown port: first added, unless strict");
    assertEquals(t.lookup6(ip6, 0, 1), strict ? undefined : q1);
    t.remove("10.0.0.1:50103");
    assertEquals(t.lookup4(ip, 1), strict ? undefined : p2);
    t.remove("10.0.0.1:50104");
    assertEquals(t.lookup4(ip, 50104), undefined);
  }
});

Deno.test("sync with the table's node list: add, keep state, remove; bad keys change nothing", () => {
  const t = table();
  let r = t.sync([A, B6], 0);
  assertEquals(r.added.map((p) => p.key), [A, B6]);
  assertEquals(r.removed, []);
  const a = t.get(A) as Peer;
  a.txPackets = 5;
  r = t.sync(["[fd00:0::2]:50103", "131.1.0.5:50103"], 1);
  assertEquals(r.added.map((p) => p.key), ["131.1.0.5:50103"]);
  assertEquals(r.removed.map((p) => p.key), [A]);
  assertEquals(t.size, 2);
  assert(!t.isKnown(parseIPv4("131.1.0.2"), 50103), "removed peers are no longer known");
  assertEquals(t.get("[FD00::2]:50103")?.key, B6, "get accepts any spelling");
  assertEquals(t.get("nonsense"), undefined);
  assertThrows(() => t.sync([A, "bad:key:x"], 2), PeerError);
  assertEquals([...t.peers()].map((p) => p.key), [B6, "131.1.0.5:50103"], "unchanged after a bad sync");
  assertEquals(t.add("fd00::2", 50103, 3), t.get(B6), "adding an existing endpoint returns it");
  assertEquals(t.remove("131.1.0.9:1"), false);
});

// ------------------------------------------------------------------------------------------ HELLO

Deno.test("HELLO handshake: nonce must match, ACK learns caps and gives an RTT sample", () => {
  const t = table();
  const p = t.addKey(A, 0);
  const rec = new Recorder();
  const next = rec.tick(t, 0);
  assertEquals(rec.hellos.length, 1);
  assertEquals([rec.hellos[0].peer, rec.hellos[0].hi, rec.hellos[0].lo], [p, 100, 101]);
  assertEquals(next, 1000, "wakes at the HELLO timeout");
  assertEquals(rec.tick(t, 500), 1000, "nothing more to send while outstanding");
  assertEquals(rec.hellos.length, 1);

  // the ACK travels through the real encoder/decoder
  const buf = new Uint8Array(100);
  const m = new HelloMessage();
  const wrongNonce = encodeHelloAck(buf, 0, {
    caps: CAP_FAST | CAP_PROBE,
    nonceHi: 100,
    nonceLo: 999,
    hostPort: 50103,
    nodeId: "w2",
  });
  assert(decodeHello(buf, 0, wrongNonce, m));
  assertEquals(t.onHelloAck(p, m, 20), false);
  assertEquals([p.staleReplies, p.capsKnown, p.fast], [1, false, false]);
  const n = encodeHelloAck(buf, 0, {
    caps: CAP_FAST | CAP_PROBE,
    nonceHi: 100,
    nonceLo: 101,
    hostPort: 50103,
    nodeId: "w2",
  });
  assert(decodeHello(buf, 0, n, m));
  assertEquals(t.onHello(p, m, 25), false, "an ACK is not a HELLO");
  assert(t.onHelloAck(p, m, 25));
  assertEquals([p.capsKnown, p.remoteCaps, p.nodeId, p.fast, p.helloOutstanding], [
    true,
    3,
    "w2",
    true,
    false,
  ]);
  assertEquals([p.rtt.samples, p.rtt.srtt, t.rttOf(p, 25)], [1, 25, 25]);
  assertEquals(p.lastSeen, 25);
  assertEquals(t.onHelloAck(p, m, 30), false, "a duplicate ACK is stale");
  assertEquals(p.staleReplies, 2);
  assertEquals(p.nextHelloAt, 25 + 30000, "next HELLO is a refresh");
});

Deno.test("capability negotiation: FAST only when both announced it", () => {
  const cases: [number, number, boolean][] = [
    [CAP_FAST | CAP_PROBE, CAP_FAST | CAP_PROBE, true],
    [CAP_FAST, CAP_FAST, true],
    [CAP_FAST | CAP_PROBE, CAP_PROBE, false],
    [CAP_PROBE, CAP_FAST | CAP_PROBE, false],
    [0, CAP_FAST, false],
    [CAP_FAST, 0xfffffffe, false],
    [CAP_FAST, 0xffffffff, true],
  ];
  for (const [local, remote, want] of cases) {
    const t = table({ localCaps: local });
    const p = t.addKey(A, 0);
    assertEquals(p.fast, false, "unknown peers are raw");
    assert(t.onHello(p, helloMsg(MSG_HELLO, remote, "w2"), 5), "a HELLO must be acknowledged");
    assertEquals(p.fast, want, `local ${local} remote ${remote}`);
    assertEquals(t.localCaps, local);
  }
});

Deno.test("capability changes: setLocalCaps re-announces, a peer's new HELLO downgrades", () => {
  const t = table();
  const p = t.addKey(A, 0);
  const rec = new Recorder();
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 0);
  assert(p.fast);
  assertEquals(rec.tick(t, 1), 30000, "their HELLO postponed ours to a refresh");
  assertEquals(rec.hellos.length, 0);
  t.setLocalCaps(CAP_PROBE, 10);
  assertEquals(p.fast, false);
  rec.tick(t, 10);
  assertEquals(rec.hellos.length, 1, "HELLO sent at once to announce the change");
  t.setLocalCaps(CAP_FAST | CAP_PROBE, 20);
  assert(p.fast);
  t.onHello(p, helloMsg(MSG_HELLO, CAP_PROBE, "w2"), 30);
  assertEquals(p.fast, false, "the peer no longer announces FAST");
});

Deno.test("JUMBO: only when both announced FAST and JUMBO; lost messages withdraw it from our HELLOs for a while", () => {
  const caps = CAP_FAST | CAP_PROBE | CAP_JUMBO;
  const t = table({ localCaps: caps });
  const p = t.addKey(A, 0);
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 0);
  assertEquals([p.fast, p.jumbo], [true, false], "the peer does not announce JUMBO");
  t.onHello(p, helloMsg(MSG_HELLO, caps, "w2"), 1);
  assertEquals([p.fast, p.jumbo], [true, true]);
  const rec = new Recorder();
  rec.tick(t, 2);
  const sent = rec.hellos.length;
  // A healthy second: 5000 complete, 2 lost (0.04 %) — keep JUMBO.
  for (let i = 0; i < 5000; i++) t.noteJumbo(p, true, 100);
  assertEquals(t.noteJumbo(p, false, 100), false);
  assertEquals(t.noteJumbo(p, false, 100), false);
  assertEquals(t.capsFor(p, 100), caps);
  // Next second: 100 complete, 2 lost (2 %) — refuse for 60 s, announced at once.
  for (let i = 0; i < 100; i++) t.noteJumbo(p, true, 1200);
  assertEquals(t.noteJumbo(p, false, 1200), false, "one loss is not a pattern");
  assertEquals(t.noteJumbo(p, false, 1201), true);
  assertEquals(t.capsFor(p, 1202), CAP_FAST | CAP_PROBE, "HELLOs to it withhold JUMBO");
  rec.tick(t, 1202);
  assertEquals(rec.hellos.length, sent + 1, "a HELLO goes out at once");
  assertEquals(t.noteJumbo(p, false, 1300), false, "already refused");
  // When the refusal is over, a HELLO offers JUMBO again; the second refusal lasts twice as long.
  assertEquals(t.capsFor(p, 61_202), caps);
  rec.tick(t, 61_202);
  assertEquals(rec.hellos.length, sent + 2);
  t.noteJumbo(p, false, 70_000);
  assert(t.noteJumbo(p, false, 70_000));
  assertEquals(t.capsFor(p, 70_000 + 119_000), CAP_FAST | CAP_PROBE);
  assertEquals(t.capsFor(p, 70_000 + 120_000), caps);
  assertEquals(t.stats(70_000)[0].jumboRefusals, 2);
});

Deno.test("silent peer (old Oakestra node): HELLO backs off exponentially up to the cap", () => {
  const t = table();
  const p = t.addKey(A, 0);
  const rec = new Recorder();
  let now = 0;
  while (now <= 1_200_000) now = rec.tick(t, now);
  assertEquals(
    rec.hellos.map((h) => h.at),
    [0, 1000, 3000, 7000, 15000, 31000, 63000, 127000, 255000, 511000, 811000, 1111000],
  );
  assertEquals(rec.probes.length, 0, "no probes without known PROBE capability");
  assertEquals([p.capsKnown, p.fast, p.hellosSent, p.helloFailures], [false, false, 12, 12]);
  assertEquals(t.rttOf(p), undefined);
  // It finally speaks: back to normal without waiting for the backoff.
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST, "w9"), now + 5);
  assertEquals([p.helloFailures, p.nextHelloAt, p.fast], [0, now + 5 + 30000, true]);
});

Deno.test("answered peer that goes silent: refreshes retry, then its caps are forgotten", () => {
  const t = table({ helloForgetAfter: 3 });
  const p = t.addKey(A, 0);
  const rec = new Recorder();
  rec.tick(t, 0);
  assert(t.onHelloAck(p, helloMsg(MSG_HELLO_ACK, CAP_FAST | CAP_PROBE, "w2", 100, 101), 10));
  assert(p.fast);
  let now = 10;
  while (now < 40_000 && p.capsKnown) now = rec.tick(t, now);
  // refresh at 30010 (lost), retries at 31010, 33010; forgotten when the third goes unanswered
  assertEquals(rec.hellos.map((h) => h.at), [0, 30010, 31010, 33010]);
  assertEquals(now, 37010, "forgotten at 34010; the next try follows the backoff");
  assertEquals([p.capsKnown, p.fast, p.remoteCaps], [false, false, 0]);
  assertEquals(p.nodeId, "w2", "the id is kept for display");
});

// ------------------------------------------------------------------------------------------ PROBE

function probingTable(opts: PeerTableOptions = {}): { t: PeerTable; p: Peer; rec: Recorder } {
  const t = table({ helloRefreshMs: 1e9, ...opts });
  const p = t.addKey(A, 0);
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 0);
  return { t, p, rec: new Recorder() };
}

Deno.test("PROBE: only while RTT is wanted; reply sampled through the wire codec", () => {
  const { t, p, rec } = probingTable();
  assertEquals(rec.tick(t, 0), 1e9, "no probes until requested");
  assertEquals(rec.probes.length, 0);
  t.requestRtt(p, 100);
  assertEquals(rec.tick(t, 100), 1100, "probe sent, wake at its timeout");
  assertEquals(rec.probes.length, 1);
  const pr = rec.probes[0];
  assertEquals([pr.peer, pr.seq, pr.us], [p, 1, 100_000]);

  // the peer echoes it
  const buf = new Uint8Array(16);
  const m = new ProbeMessage();
  encodeProbeReply(buf, 0, pr.seq, pr.us);
  assert(decodeProbe(buf, 0, 16, m));
  assert(t.onProbeReply(p, m, 112.5));
  assertEquals([p.rtt.samples, p.rtt.srtt, p.rtt.min, t.rttOf(p, 112.5)], [1, 12.5, 12.5, 12.5]);
  assertEquals(t.rttOfNode(A, 112.5), 12.5, "by node key, for the balancer");
  assertEquals(t.rttOfNode("10.9.9.9:1", 112.5), undefined);
  assertEquals(t.onProbeReply(p, m, 113), false, "duplicate reply is stale");

  assertEquals(rec.tick(t, 500), 1100, "next probe one interval after the last");
  assertEquals(rec.tick(t, 1100), 2100);
  assertEquals(rec.probes.map((x) => x.seq), [1, 2]);

  // a reply echoing the right seq but another time is refused
  assertEquals(t.onProbeReply(p, probeReply(2, 999), 1110), false);
  // a PROBE (not a reply) is refused
  const notReply = probeReply(2, 1_100_000);
  notReply.type = 0x12;
  assertEquals(t.onProbeReply(p, notReply, 1110), false);
  assert(t.onProbeReply(p, probeReply(2, 1_100_000), 1120));
  // RFC 6298 with defaults: SRTT = 7/8·12.5 + 1/8·20
  assertEquals(p.rtt.srtt, 13.4375);

  // the lease (100 + 60000) runs out: every probe answered, none after 60100
  let now = 1120;
  for (;;) {
    const next = rec.tick(t, now);
    const last = rec.probes[rec.probes.length - 1];
    if (last.at === now) assert(t.onProbeReply(p, probeReply(last.seq, last.us), now + 10));
    if (next >= 1e9) break;
    now = next;
  }
  assertEquals(now, 60_100);
  assertEquals(rec.probes.length, 60);
  assertEquals(rec.probes[rec.probes.length - 1].at, 59_100);
  assertEquals([p.probesLost, p.rtt.samples], [0, 60]);
});

Deno.test("PROBE timeout counts as loss; late replies are ignored; RTT becomes unknown", () => {
  const { t, p, rec } = probingTable({ rttMaxAgeMs: 5000 });
  t.requestRtt(p, 0);
  rec.tick(t, 0);
  assert(t.onProbeReply(p, probeReply(1, 0), 8));
  assertEquals(t.rttOf(p, 8), 8);
  rec.tick(t, 1000); // probe 2
  assertEquals(rec.tick(t, 1999), 2000);
  assertEquals(p.probesLost, 0);
  rec.tick(t, 2000); // probe 2 times out, probe 3 goes out
  assertEquals([p.probesSent, p.probesLost, p.consecutiveLosses], [3, 1, 1]);
  assertEquals(t.onProbeReply(p, probeReply(2, 1_000_000), 2050), false, "late reply to a lost probe");
  assertEquals(p.staleReplies, 1);
  assertEquals(t.rttOf(p, 2050), 8, "one loss keeps the estimate");
  rec.tick(t, 3000);
  rec.tick(t, 4000);
  assertEquals(p.consecutiveLosses, 3);
  assertEquals(t.rttOf(p, 4000), undefined, "three losses in a row: unknown");
  assertEquals(rec.tick(t, 4000), 5000, "third loss: the interval doubles");
  rec.tick(t, 5000);
  // an answer brings it back
  const last = rec.probes[rec.probes.length - 1];
  assertEquals([last.at, last.seq], [5000, 5]);
  assert(t.onProbeReply(p, probeReply(last.seq, last.us), last.at + 30));
  assertEquals(p.consecutiveLosses, 0);
  assert(t.rttOf(p, last.at + 30) !== undefined);
  // stale after rttMaxAgeMs without samples
  assertEquals(t.rttOf(p, last.at + 30 + 5001), undefined);
  assertEquals(t.stats(last.at + 30 + 5001)[0].rttMs, undefined);
});

Deno.test("PROBE backoff for a peer that stops answering", () => {
  const { t, p, rec } = probingTable({ probeMaxIntervalMs: 30000, probeAlways: true });
  let now = 0;
  while (now <= 100_000) now = rec.tick(t, now);
  assertEquals(rec.probes.map((x) => x.at), [0, 1000, 2000, 4000, 8000, 16000, 32000, 62000, 92000]);
  assertEquals(p.probesLost, 9);
  assertEquals(rec.probes.map((x) => x.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

Deno.test("PROBE: not sent to peers without CAP_PROBE, nor when we lack it", () => {
  for (const [local, remote] of [[CAP_FAST, CAP_FAST | CAP_PROBE], [CAP_FAST | CAP_PROBE, CAP_FAST]]) {
    const t = table({ localCaps: local, probeAlways: true, helloRefreshMs: 1e9 });
    const p = t.addKey(A, 0);
    t.onHello(p, helloMsg(MSG_HELLO, remote, "w2"), 0);
    const rec = new Recorder();
    rec.tick(t, 0);
    rec.tick(t, 5000);
    assertEquals(rec.probes.length, 0);
  }
});

Deno.test("a different node id at the same endpoint resets the RTT history", () => {
  const { t, p, rec } = probingTable();
  t.requestRtt(p, 0);
  rec.tick(t, 0);
  assert(t.onProbeReply(p, probeReply(1, 0), 40));
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 50);
  assertEquals(p.rtt.samples, 1, "same node: kept");
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w3"), 60);
  assertEquals([p.nodeId, p.rtt.samples, t.rttOf(p, 60)], ["w3", 0, undefined]);
});

Deno.test("counters and stats snapshot", () => {
  const t = table();
  const p = t.addKey(A, 0);
  t.addKey(B6, 0);
  t.noteTx(p, 1400);
  t.noteTx(p, 100);
  t.noteRx(p, 60, 7);
  p.drops++;
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 8);
  const s = t.stats(8);
  assertEquals(s[0], {
    endpoint: A,
    node: "w2",
    fast: true,
    jumbo: false,
    jumboRefusals: 0,
    capsKnown: true,
    txPackets: 2,
    txBytes: 1500,
    rxPackets: 1,
    rxBytes: 60,
    drops: 1,
    probesSent: 0,
    probesLost: 0,
    mtu: 1500,
    mtuProbed: false,
    ageMs: 8,
    lastSeen: 8,
    health: "unknown",
    downCount: 0,
  });
  assertEquals(s[1], {
    endpoint: B6,
    fast: false,
    jumbo: false,
    jumboRefusals: 0,
    capsKnown: false,
    txPackets: 0,
    txBytes: 0,
    rxPackets: 0,
    rxBytes: 0,
    drops: 0,
    probesSent: 0,
    probesLost: 0,
    health: "unknown",
    downCount: 0,
    mtu: 1500,
    mtuProbed: false,
    ageMs: 8,
  });
});

Deno.test("health: a probed peer silent for downAfterMs is down (with the cause), an answer brings it up", () => {
  const { t, p, rec } = probingTable({ probeAlways: true, probeIntervalMs: 500, probeMaxIntervalMs: 2000 });
  assertEquals(t.healthOf(p), "unknown", "not probed yet");
  rec.tick(t, 0);
  assertEquals(t.healthOf(p), "up");
  const answer = (at: number) => {
    const last = rec.probes[rec.probes.length - 1];
    assert(t.onProbeReply(p, probeReply(last.seq, last.us), at));
  };
  answer(5);
  rec.tick(t, 505);
  answer(510); // the last answer: silent from here
  let now = 510;
  while (now < 3509) now = Math.min(3509, rec.tick(t, now));
  assertEquals([t.healthOf(p), p.down], ["up", false], "2999 ms of silence: still up");
  rec.tick(t, 3510);
  assertEquals(t.healthOf(p), "down");
  assertMatch(p.downCause, /^no answer to \d+ probe\(s\) and HELLOs for 3000 ms$/);
  assertEquals(t.stats(3510)[0].health, "down");
  assertEquals(t.stats(3510)[0].downCount, 1);
  // Still probed while down, at least every 2 s (backoff capped), so it is seen up soon after.
  const before = rec.probes.length;
  now = 3510;
  while (now < 12_000 || !p.probeOutstanding) now = rec.tick(t, now);
  const gaps = rec.probes.slice(before).map((x, i, a) => i === 0 ? 0 : x.at - a[i - 1].at);
  assert(rec.probes.length - before >= 4 && Math.max(...gaps) <= 2000, `probes while down: ${gaps}`);
  answer(now + 3);
  assertEquals([t.healthOf(p), p.downCause, p.downCount], ["up", "", 1]);
  // A HELLO_ACK answering our HELLO counts as an answer too; a HELLO from it does not (one direction).
  now += 3;
  t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), now + 3500);
  rec.tick(t, now + 3500);
  assertEquals(t.healthOf(p), "down", "its own HELLOs prove only its direction");
});

Deno.test("health: peers never probed (Oakestra Go nodes, a non-probing worker) are unknown, never down", () => {
  const t = table({ probeAlways: true, helloRefreshMs: 1e9 });
  const old = t.addKey(A, 0); // answers nothing, ever
  const rec = new Recorder();
  for (let now = 0; now < 60_000; now += 500) rec.tick(t, now);
  assertEquals([t.healthOf(old), old.down, rec.probes.length], ["unknown", false, 0]);
  const quiet = table({ probeAlways: true, probe: false, helloRefreshMs: 1e9 });
  const p = quiet.addKey(A, 0);
  quiet.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 0);
  const rec2 = new Recorder();
  for (let now = 0; now < 10_000; now += 500) rec2.tick(quiet, now);
  assertEquals([quiet.healthOf(p), rec2.probes.length], ["unknown", 0]);
  // downAfterMs 0: never judged down.
  const off = probingTable({ probeAlways: true, downAfterMs: 0 });
  for (let now = 0; now < 10_000; now += 500) off.rec.tick(off.t, now);
  assertEquals(off.p.down, false);
});

Deno.test("options are validated; the default nonce source gives uint32 values", () => {
  assertThrows(() => new PeerTable({ probeIntervalMs: -1 }), PeerError, "probeIntervalMs");
  assertThrows(() => new PeerTable({ helloRetryMs: NaN }), PeerError, "helloRetryMs");
  const t = new PeerTable();
  const p = t.addKey(A, 0);
  const rec = new Recorder();
  rec.tick(t, 0);
  const h = rec.hellos[0];
  assert(Number.isInteger(h.hi) && h.hi >= 0 && h.hi <= 0xffffffff);
  assert(Number.isInteger(h.lo) && h.lo >= 0 && h.lo <= 0xffffffff);
  // and they travel in a real HELLO
  const buf = new Uint8Array(100);
  const n = encodeHello(buf, 0, {
    caps: t.localCaps,
    nonceHi: h.hi,
    nonceLo: h.lo,
    hostPort: 50103,
    nodeId: "w1",
  });
  const m = new HelloMessage();
  assert(decodeHello(buf, 0, n, m));
  assertEquals([m.nonceHi, m.nonceLo, m.caps], [p.helloNonceHi, p.helloNonceLo, CAP_FAST | CAP_PROBE]);
});

Deno.test("JUMBO ids: gaps in the window are loss; made-up ids far outside cannot make the peer refuse JUMBO", () => {
  const caps = CAP_FAST | CAP_PROBE | CAP_JUMBO;
  const t = table({ localCaps: caps });
  const p = t.addKey(A, 0);
  t.onHello(p, helloMsg(MSG_HELLO, caps, "w2"), 0);
  let id = 0xfffffff0; // the real sender's ids (wrapping past 2^32 on the way)
  for (let i = 0; i < 100; i++) assertEquals(t.noteJumboId(p, id++, true, 10), false);
  // A spoofer sends messages (complete or not) with ids it must guess: thousands, no refusal.
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  for (let i = 0; i < 5000; i++) {
    const fake = (id + 1000 + (rnd() % 0xfff00000)) >>> 0;
    assertEquals(t.noteJumboId(p, fake, i % 2 === 0, 20 + i / 10), false);
  }
  // … including a run of consecutive ones while the real sender is active: no resync to them.
  for (let i = 0; i < 10; i++) t.noteJumboId(p, 0x5000 + i, true, 600);
  assertEquals(t.noteJumboId(p, id++, true, 601), false);
  assertEquals(t.capsFor(p, 602), caps);
  assertEquals(p.jumboRefusals, 0);
  assert(p.jumboStrays >= 5000);
  // Real loss inside the window still counts: 2 of 100 messages missing → refusal.
  for (let i = 0; i < 50; i++) t.noteJumboId(p, id++, true, 1500);
  id += 2; // two messages never arrived
  assertEquals(t.noteJumboId(p, id++, true, 1500), true);
  assertEquals(t.capsFor(p, 1501), CAP_FAST | CAP_PROBE);
  // A restarted peer (new random ids): after 2 s without an id in the window, 3 consecutive resync.
  const q = t.addKey("[fd00::9]:50103", 0);
  t.onHello(q, helloMsg(MSG_HELLO, caps, "w3"), 0);
  for (let i = 0; i < 10; i++) t.noteJumboId(q, 100 + i, true, 10);
  for (let i = 0; i < 3; i++) t.noteJumboId(q, 900_000 + i, true, 3000 + i);
  assertEquals(q.jumboBase, 900_002);
  assertEquals(t.noteJumboId(q, 900_010, true, 3100), true, "a gap of 7 in the new window is loss");
  assertEquals(q.jumboRefusals, 1, "counted against the new window");
});

Deno.test("NAT keepalive: punched peers, and every peer from behind NAT, are refreshed at natKeepaliveMs", () => {
  for (
    const [punched, behind, want] of [[false, false, 30000], [true, false, 20000], [
      false,
      true,
      20000,
    ]] as const
  ) {
    const t = table({ natKeepaliveMs: 20000 });
    t.behindNat = behind;
    const p = t.addKey(A, 0);
    p.punched = punched;
    const rec = new Recorder();
    t.onHello(p, helloMsg(MSG_HELLO, CAP_FAST | CAP_PROBE, "w2"), 0);
    assertEquals(rec.tick(t, 1), want, `punched ${punched}, behind NAT ${behind}`);
  }
  assertThrows(() => table({ natKeepaliveMs: -1 }));
});
