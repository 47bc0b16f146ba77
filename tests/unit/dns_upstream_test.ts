/**
 * The upstream forwarder against a real resolver on loopback (node:dgram + node:net, answers built
 * with dns-packet): a truncated UDP answer is fetched whole over TCP and cached; without TCP the
 * partial answer is passed on with TC and never cached.
 */
import dgram from "node:dgram";
import net from "node:net";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";
import { assert, assertEquals } from "../helpers/assert.ts";
import { Upstream } from "../../src/dns/upstream.ts";
import { encodeAnswer, type ParsedQuery } from "../../src/dns/server.ts";

const NAME = "big.example";
const addrs = Array.from({ length: 40 }, (_, i) => `192.0.2.${i + 1}`);

/** A resolver whose UDP answers are cut (TC, first record only); TCP (when on) answers whole. */
async function fakeResolver(tcp: boolean) {
  let udpQueries = 0, tcpQueries = 0;
  const answer = (q: Packet, whole: boolean): Packet => ({
    type: "response",
    id: q.id,
    flags: dnsPacket.RECURSION_AVAILABLE | (whole ? 0 : dnsPacket.TRUNCATED_RESPONSE),
    questions: q.questions,
    answers: (whole ? addrs : addrs.slice(0, 1)).map((data) => ({ type: "A", name: NAME, ttl: 60, data })),
  });
  const udp = dgram.createSocket("udp4");
  udp.on("message", (msg: Buffer, r: dgram.RemoteInfo) => {
    udpQueries++;
    udp.send(dnsPacket.encode(answer(dnsPacket.decode(msg), false)), r.port, r.address);
  });
  await new Promise<void>((ok) => udp.bind(0, "127.0.0.1", () => ok()));
  const port = udp.address().port;
  const server = net.createServer((c) => {
    c.on("data", (b: Buffer) => {
      tcpQueries++;
      c.end(dnsPacket.streamEncode(answer(dnsPacket.streamDecode(b), true)));
    });
  });
  if (tcp) await new Promise<void>((ok) => server.listen(port, "127.0.0.1", () => ok()));
  return {
    port,
    counts: () => ({ udpQueries, tcpQueries }),
    close: () => {
      udp.close();
      if (tcp) server.close();
    },
  };
}

Deno.test("upstream: a truncated UDP answer is fetched whole over TCP and cached", async () => {
  const r = await fakeResolver(true);
  try {
    const up = new Upstream({ servers: [{ ip: "127.0.0.1", port: r.port }], timeoutMs: 1000 });
    const a = await up.resolve({ type: "A", name: NAME });
    assertEquals(a?.answers.length, addrs.length);
    assertEquals(a?.truncated, undefined);
    const b = await up.resolve({ type: "A", name: NAME });
    assertEquals(b?.cached, true);
    assertEquals(r.counts(), { udpQueries: 1, tcpQueries: 1 });
  } finally {
    r.close();
  }
});

Deno.test("upstream: without TCP the partial answer goes on with TC and is not cached", async () => {
  const r = await fakeResolver(false);
  try {
    const up = new Upstream({ servers: [{ ip: "127.0.0.1", port: r.port }], timeoutMs: 500 });
    const a = await up.resolve({ type: "A", name: NAME });
    assertEquals(a?.truncated, true);
    assertEquals(a?.answers.length, 1);
    const b = await up.resolve({ type: "A", name: NAME });
    assertEquals(b?.cached, false, "a partial answer is never cached");
    assertEquals(r.counts().udpQueries, 2);
    // The node's answer to its client carries TC, so the client knows it is partial.
    const q: ParsedQuery = {
      id: 7,
      rd: dnsPacket.RECURSION_DESIRED,
      question: { type: "A", name: NAME },
      ednsSize: undefined,
    };
    const wire = encodeAnswer(q, {
      rcode: a!.rcode,
      answers: a!.answers,
      authorities: [],
      authoritative: false,
      source: "upstream",
      truncated: true,
    }, 1232);
    const out = dnsPacket.decode(Buffer.from(wire));
    assert(((out.flags ?? 0) & dnsPacket.TRUNCATED_RESPONSE) !== 0, "TC set");
  } finally {
    r.close();
  }
});
