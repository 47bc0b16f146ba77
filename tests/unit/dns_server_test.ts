/**
 * The DNS server's UDP path on loopback with real sockets: a burst of queries with distinct ids is
 * answered in batches, every answer carrying its query's id and records; repeated queries come from
 * the cache of encoded answers (ids patched), and a change of the table is seen by the next query.
 * Also the resolver's synchronous path: what it answers at once and what it leaves to `resolve`.
 */
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { assert, assertEquals } from "../helpers/assert.ts";
import { parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import { type TableEntry, TranslationTable } from "../../src/table/mod.ts";
import { NameResolver } from "../../src/dns/resolver.ts";
import { DnsServer } from "../../src/dns/server.ts";
import { AnswerCache } from "../../src/dns/answer_cache.ts";
import { openUdp, RecvBatch, SendBatch } from "../../ffi/udp.ts";

const JOB = "shop.prod.web.default";
const NAME = "web.default.shop.prod.local";

function entry(rr: string): TableEntry {
  return {
    job: JOB,
    instance: 0,
    nodeIp: "131.1.0.1",
    nodePort: 50103,
    nsip4: parseIPv4("10.18.0.2"),
    serviceIps: [
      { kind: "RoundRobin", v4: parseIPv4(rr), v6: parseIPv6("fdff::1") },
      { kind: "Instance", v4: parseIPv4("10.30.0.10") },
    ],
  };
}

/** Sends `names[i]` with id `base + i` in one sendmmsg; returns id → A records of the answers. */
async function ask(port: number, names: string[], base: number): Promise<Map<number, string[]>> {
  // Nonblocking, waiting on timers: the server runs in this isolate's event loop.
  const sock = openUdp({ bindAddr: "127.0.0.1", port: 0, nonBlocking: true });
  try {
    const sb = new SendBatch(names.length, 512);
    names.forEach((name, i) => {
      const q = dnsPacket.encode({
        type: "query",
        id: base + i,
        flags: dnsPacket.RECURSION_DESIRED,
        questions: [{ name, type: "A", class: "IN" }],
      });
      sb.bufs[i].set(q);
      sb.sizes[i] = q.length;
      sb.setDst4(i, parseIPv4("127.0.0.1"), port);
    });
    assertEquals(sock.sendBatch(sb, names.length), names.length);
    const got = new Map<number, string[]>();
    const rb = new RecvBatch(64, 2048);
    const end = Date.now() + 5000;
    while (got.size < names.length && Date.now() < end) {
      const n = sock.recvBatch(rb);
      if (n === 0) await new Promise((r) => setTimeout(r, 2));
      for (let i = 0; i < n; i++) {
        const a = dnsPacket.decode(Buffer.from(rb.bufs[i].subarray(0, rb.sizes[i])));
        got.set(
          a.id ?? -1,
          (a.answers ?? []).map((x) => `${x.name} ${x.type} ${"data" in x ? String(x.data) : ""}`),
        );
      }
    }
    return got;
  } finally {
    sock.close();
  }
}

Deno.test({
  name: "dns server: UDP batches, ids, answer cache and its invalidation",
  sanitizeResources: false,
}, async () => {
  const table = new TranslationTable();
  table.replaceJob(JOB, [entry("10.30.0.1")]);
  const resolver = new NameResolver({ suffix: "local", ttl: 5, table: () => table });
  let srv: DnsServer | undefined;
  let port = 0;
  for (let k = 0; k < 5 && !srv?.listening.length; k++) {
    await srv?.close();
    port = 20000 + Math.floor(Math.random() * 20000);
    srv = await DnsServer.start({
      addresses: ["127.0.0.1"],
      port,
      resolver,
      allowed: () => true,
      rateLimit: 100000,
    });
  }
  assert(srv && srv.listening.length === 1, "server did not bind");
  try {
    // 60 queries at once: half the service name, half instance-0 (in mixed case: another cache key).
    const names = Array.from({ length: 60 }, (_, i) => i % 2 ? `instance-0.${NAME}` : NAME.toUpperCase());
    const first = await ask(port, names, 1000);
    assertEquals(first.size, 60);
    for (let i = 0; i < 60; i++) {
      assertEquals(
        first.get(1000 + i),
        [i % 2 ? `instance-0.${NAME} A 10.30.0.10` : `${NAME.toUpperCase()} A 10.30.0.1`],
      );
    }
    const before = srv.stats.cacheHits;
    // Again with other ids: answered from the cache, each with its own id.
    const again = await ask(port, names, 5000);
    assertEquals([...again.keys()].sort((a, b) => a - b), names.map((_, i) => 5000 + i));
    assertEquals(again.get(5000), [`${NAME.toUpperCase()} A 10.30.0.1`]);
    assert(srv.stats.cacheHits - before >= 60, `cache hits ${srv.stats.cacheHits - before}`);
    // The counters see cached answers like resolved ones.
    assertEquals(resolver.stats.answered.get("A|NOERROR|table"), 120);
    // The table changes: the next answer has the new address, not the cached one.
    table.replaceJob(JOB, [entry("10.30.0.99")]);
    assertEquals((await ask(port, [NAME.toUpperCase()], 9000)).get(9000), [
      `${NAME.toUpperCase()} A 10.30.0.99`,
    ]);
    assertEquals(srv.stats.queriesUdp, 121);
  } finally {
    await srv.close();
  }
});

Deno.test("resolver: resolveSync answers from the table at once, leaves misses and forwards to resolve", () => {
  const table = new TranslationTable();
  table.replaceJob(JOB, [entry("10.30.0.1")]);
  const touched: string[] = [];
  const source = {
    lookupJob: () => Promise.resolve("unknown" as const),
    resolveIp: () => Promise.resolve(false),
    touch: (j: string) => touched.push(j),
  };
  const r = new NameResolver({ suffix: "local", ttl: 5, table: () => table, source: () => source });
  const hit = r.resolveSync({ name: NAME, type: "A", class: "IN" });
  assertEquals([hit?.rcode, hit?.fromTable, hit?.job, touched], ["NOERROR", true, JOB, [JOB]]);
  assertEquals(r.resolveSync({ name: `instance-7.${NAME}`, type: "A", class: "IN" })?.rcode, "NXDOMAIN");
  // A job the table lacks needs the control plane; a name outside the suffix without upstream is refused.
  assertEquals(r.resolveSync({ name: "x.y.z.w.local", type: "A", class: "IN" }), undefined);
  assertEquals(r.resolveSync({ name: "example.com", type: "A", class: "IN" })?.rcode, "REFUSED");
  r.replay({ name: NAME, type: "A", class: "IN" }, hit!);
  assertEquals([r.stats.answered.get("A|NOERROR|table"), touched.length], [2, 2]);
});

Deno.test("answer cache: keyed by the bytes after the id, stale when the table changes, only table answers", () => {
  const table = new TranslationTable();
  const cache = new AnswerCache(2);
  const q = new Uint8Array(
    dnsPacket.encode({ type: "query", id: 1, questions: [{ name: NAME, type: "A" }] }),
  );
  const res = {
    rcode: "NOERROR",
    answers: [],
    authorities: [],
    authoritative: true,
    source: "table" as const,
  };
  cache.set(q, q.length, table, {
    bytes: new Uint8Array([0, 1, 2]),
    question: { name: NAME, type: "A" },
    resolution: res,
  });
  assertEquals(cache.size, 0); // not marked fromTable: never cached
  const fromTable = { ...res, fromTable: true as const };
  cache.set(q, q.length, table, {
    bytes: new Uint8Array([0, 1, 2]),
    question: { name: NAME, type: "A" },
    resolution: fromTable,
  });
  const other = q.slice();
  other[0] = 9; // another id: the same entry
  assertEquals(cache.get(other, other.length, table)?.bytes, new Uint8Array([0, 1, 2]));
  assertEquals(cache.get(q, q.length, new TranslationTable()), undefined); // another table
  cache.set(q, q.length, table, {
    bytes: new Uint8Array([0, 1, 2]),
    question: { name: NAME, type: "A" },
    resolution: fromTable,
  });
  table.replaceJob(JOB, [entry("10.30.0.1")]);
  assertEquals(cache.get(q, q.length, table), undefined); // the table changed
  assertEquals(cache.size, 0);
});
