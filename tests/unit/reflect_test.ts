/**
 * Unit tests for endpoint discovery: the REFLECT wire format (round trips, malformed input), the
 * node's client (nonce and source checks, refresh schedule) and the control plane's reflector over
 * real UDP sockets on loopback (answers registered nodes only, rate-limited, records the endpoint).
 */
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  decodeReflect,
  decodeReflectReply,
  encodeReflect,
  encodeReflectReply,
  MSG_REFLECT_REPLY,
} from "../../src/path/reflect.ts";
import { ReflectClient } from "../../src/path/reflect_client.ts";
import { ObservedEndpoints, Reflector } from "../../src/path/reflector.ts";
import { WireError } from "../../src/proxy/wire.ts";
import dgram from "node:dgram";
import { parsePunch } from "../../src/control/client.ts";

Deno.test("reflect wire: requests and replies round-trip; malformed input is refused", () => {
  const req = encodeReflect({ nonceHi: 0xdeadbeef, nonceLo: 7, nodeId: "worker-1" });
  assertEquals(decodeReflect(req, 0, req.length), { nonceHi: 0xdeadbeef, nonceLo: 7, nodeId: "worker-1" });
  assertEquals(decodeReflect(req, 0, req.length - 1), undefined); // id cut short
  const bad = req.slice();
  bad[14] = 0x20; // a space in the id
  assertEquals(decodeReflect(bad, 0, bad.length), undefined);
  const r4 = encodeReflectReply({ nonceHi: 1, nonceLo: 2, ip: "203.0.113.9", port: 61000 });
  assertEquals(r4[0], MSG_REFLECT_REPLY);
  assertEquals(decodeReflectReply(r4, 0, r4.length), {
    nonceHi: 1,
    nonceLo: 2,
    ip: "203.0.113.9",
    port: 61000,
  });
  const r6 = encodeReflectReply({ nonceHi: 1, nonceLo: 2, ip: "2001:db8::5", port: 1 });
  assertEquals(decodeReflectReply(r6, 0, r6.length)?.ip, "2001:db8::5");
  assertEquals(decodeReflectReply(r6, 0, 20), undefined); // v6 address cut short
  const zero = r4.slice();
  zero[2] = zero[3] = 0;
  assertEquals(decodeReflectReply(zero, 0, zero.length), undefined);
  assertThrows(() => encodeReflect({ nonceHi: 1, nonceLo: 2, nodeId: "a b" }), WireError);
  assertThrows(() => encodeReflectReply({ nonceHi: 1, nonceLo: 2, ip: "300.1.1.1", port: 5 }), WireError);
});

Deno.test("reflect client: accepts only its nonce from the reflector, then refreshes on its interval", () => {
  const c = new ReflectClient({
    addr4: 0x0a000001,
    port: 50104,
    nodeId: "w1",
    intervalMs: 25000,
    retryMs: 3000,
  });
  const req = c.due(0)!;
  const sent = decodeReflect(req, 0, req.length)!;
  assertEquals(c.due(100), undefined);
  const good = encodeReflectReply({
    nonceHi: sent.nonceHi,
    nonceLo: sent.nonceLo,
    ip: "198.51.100.4",
    port: 40001,
  });
  const forged = encodeReflectReply({
    nonceHi: (sent.nonceHi ^ 1) >>> 0,
    nonceLo: sent.nonceLo,
    ip: "6.6.6.6",
    port: 1,
  });
  assert(!c.onReply(forged, 0, forged.length, 0x0a000001, 50104, 10)); // wrong nonce
  assert(!c.onReply(good, 0, good.length, 0x0a000002, 50104, 10)); // wrong source
  assert(!c.onReply(good, 0, good.length, 0x0a000001, 50105, 10)); // wrong port
  assert(c.onReply(good, 0, good.length, 0x0a000001, 50104, 10));
  assertEquals([c.observedIp, c.observedPort], ["198.51.100.4", 40001]);
  assert(!c.onReply(good, 0, good.length, 0x0a000001, 50104, 11)); // a replay: nothing outstanding
  assertEquals(c.refused, 4);
  assertEquals(c.due(20000), undefined);
  assert(c.due(25010) !== undefined);
  assertEquals(c.due(25011), undefined);
  assert(c.due(28010) !== undefined); // unanswered: retried
});

function udpClient(): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  return new Promise((r) => s.bind(0, "127.0.0.1", () => r(s)));
}

function ask(s: dgram.Socket, port: number, bytes: Uint8Array, ms = 300): Promise<Uint8Array | undefined> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      s.off("message", on);
      resolve(undefined);
    }, ms);
    const on = (m: Uint8Array) => {
      clearTimeout(t);
      s.off("message", on);
      resolve(m);
    };
    s.on("message", on);
    s.send(bytes, port, "127.0.0.1");
  });
}

Deno.test("reflector: answers registered nodes with their source endpoint, ignores others, rate-limits", async () => {
  const seen = new ObservedEndpoints();
  const r = await Reflector.start({
    port: 0,
    host: "127.0.0.1",
    isNode: (w) => w === "w1",
    observed: seen,
    ratePerSource: 5,
  });
  const s = await udpClient();
  try {
    const req = encodeReflect({ nonceHi: 9, nonceLo: 10, nodeId: "w1" });
    const rep = await ask(s, r.port, req);
    assert(rep !== undefined, "no reply");
    const d = decodeReflectReply(rep, 0, rep.length)!;
    assertEquals([d.ip, d.port, d.nonceHi, d.nonceLo], ["127.0.0.1", s.address().port, 9, 10]);
    assertEquals(seen.get("w1")?.port, s.address().port);
    // Not a registered node: no answer, nothing recorded.
    assertEquals(
      await ask(s, r.port, encodeReflect({ nonceHi: 1, nonceLo: 1, nodeId: "stranger" })),
      undefined,
    );
    assertEquals(seen.get("stranger"), undefined);
    assertEquals(await ask(s, r.port, new Uint8Array([0x1c, 1, 0])), undefined); // malformed
    // A burst beyond the per-source rate gets fewer answers than requests.
    let answered = 0;
    for (let i = 0; i < 12; i++) if (await ask(s, r.port, req, 50)) answered++;
    assert(answered < 12 && answered >= 3, `answered ${answered}`);
    assertEquals(r.malformed, 1);
    assert(r.refused >= 1 + (12 - answered));
  } finally {
    s.close();
    r.stop();
  }
});

Deno.test("observed endpoints: change detection and expiry", () => {
  const o = new ObservedEndpoints(1000);
  assert(o.set("w", "1.2.3.4", 5, 0));
  assert(!o.set("w", "1.2.3.4", 5, 10));
  assert(o.set("w", "1.2.3.4", 6, 20));
  assertEquals(o.get("w", 500)?.port, 6);
  assertEquals(o.get("w", 2000), undefined);
});

Deno.test("punch requests: endpoints validated", () => {
  assertEquals(parsePunch({ endpoint: "192.168.77.100:50103" }), { ip: "192.168.77.100", port: 50103 });
  assertEquals(parsePunch({ endpoint: "[2001:db8::1]:9" }), { ip: "2001:db8::1", port: 9 });
  for (
    const bad of [
      { endpoint: "1.2.3.4:0" },
      { endpoint: "1.2.3.4:70000" },
      { endpoint: "999.1.1.1:5" },
      {
        endpoint: "host:5",
      },
      { endpoint: 5 },
      // not a unicast underlay address: a hostile punch must not aim HELLOs there
      { endpoint: "127.0.0.1:50103" },
      { endpoint: "0.0.0.0:50103" },
      { endpoint: "224.0.0.1:50103" },
      { endpoint: "169.254.1.1:50103" },
      { endpoint: "[::1]:50103" },
      { endpoint: "[ff02::1]:50103" },
      { endpoint: "[fe80::1]:50103" },
      null,
      "x",
    ]
  ) {
    assertEquals(parsePunch(bad), undefined, JSON.stringify(bad));
  }
});
