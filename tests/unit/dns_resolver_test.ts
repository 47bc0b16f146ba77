/**
 * The resolver against a real control plane on loopback (`startControl`, embedded broker) through a
 * real `NodeControl`: misses become one table query by name however many ask at once; known jobs
 * without instances are NOERROR/empty, unknown ones NXDOMAIN, both remembered for the TTL. And the
 * wire handling of `respond` (dns-packet): truncation with TC, FORMERR/NOTIMP, malformed drops.
 */
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { assert, assertEquals } from "../helpers/assert.ts";
import { startControl } from "../../src/cluster/mod.ts";
import { NodeControl } from "../../src/control/client.ts";
import { TranslationTable } from "../../src/table/mod.ts";
import { NameResolver } from "../../src/dns/resolver.ts";
import { type DnsServerStats, RateLimiter, respond } from "../../src/dns/server.ts";
import { parseResolvConf, parseUpstreams } from "../../src/dns/upstream.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

async function post(url: string, body: unknown, token: string): Promise<Record<string, unknown>> {
  const r = await fetch(url, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${url}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

function service(app: string, svc: string) {
  return {
    deployment_descriptor: {
      app_name: app,
      app_ns: "ns",
      microservice_name: svc,
      microservice_namespace: "ns",
    },
  };
}

Deno.test(
  { name: "resolver: misses go to the control plane once per name; empty vs unknown", ...opts },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmdns-" });
    const ctl = await startControl({ stateDir: dir, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0 });
    const controls: NodeControl[] = [];
    try {
      const token = (await Deno.readTextFile(ctl.tokenPath)).trim();
      const web = await post(`${ctl.httpUrl}/api/net/service/deploy`, service("app", "web"), token);
      await post(`${ctl.httpUrl}/api/net/service/deploy`, service("app", "empty"), token);
      await post(`${ctl.httpUrl}/api/net/instance/deploy`, { _id: web._id, instance_number: 0 }, token);
      const connect = async (id: string, table: TranslationTable) => {
        // Each node with its own credential, issued by the control plane (the broker refuses anonymous clients).
        const cred = await post(`${ctl.httpUrl}/api/net/node/${id}/credential`, {}, token);
        const c = await NodeControl.connect({
          credentials: { username: String(cred.username), password: String(cred.password) },
          host: "127.0.0.1",
          port: ctl.mqttPort,
          workerId: id,
          sink: {
            replaceJob: (j, e) => table.replaceJob(j, e),
            removeJob: (j) => table.removeJob(j),
            hasJob: (j) => table.hasJob(j),
          },
          isHosted: () => false,
          hostIp: () => "192.0.2.1",
          hostPort: 50103,
        });
        controls.push(c);
        return c;
      };
      // The hosting node announces instance 0 in its subnet.
      const hostTable = new TranslationTable();
      const host = await connect("whost", hostTable);
      const sub = await host.requestSubnet();
      const nsip = `${sub.v4.split(".").slice(0, 3).join(".")}.${Number(sub.v4.split(".")[3]) + 2}`;
      assert(await host.deployed("app.ns.web.ns", 0, nsip, ""), "host learns its own instance");

      const table = new TranslationTable();
      const asker = await connect("wask", table);
      await asker.requestSubnet();
      const r = new NameResolver({ suffix: "local", ttl: 5, table: () => table, source: () => asker });
      const sent0 = asker.stats.queriesSent;
      const q = { name: "web.ns.app.ns.local", type: "A" as const, class: "IN" as const };
      const all = await Promise.all(Array.from({ length: 20 }, () => r.resolve(q)));
      const rr = String(web.RR_ip);
      for (const a of all) {
        assertEquals([a.rcode, a.source, a.answers.map((x) => "data" in x ? x.data : "")], [
          "NOERROR",
          "control",
          [
            rr,
          ],
        ]);
      }
      assertEquals(asker.stats.queriesSent - sent0, 1, "one table query for 20 concurrent questions");
      assertEquals(r.stats.controlQueries, 1);
      assertEquals((await r.resolve(q)).source, "table");
      assert(asker.interests().includes("app.ns.web.ns"), "the node follows the job");

      const empty = await r.resolve({ name: "empty.ns.app.ns.local", type: "A", class: "IN" });
      assertEquals([empty.rcode, empty.answers.length, empty.source], ["NOERROR", 0, "control"]);
      assertEquals(
        (await r.resolve({ name: "empty.ns.app.ns.local", type: "A", class: "IN" })).source,
        "negative",
      );
      const nx = await r.resolve({ name: "nosuch.ns.app.ns.local", type: "A", class: "IN" });
      assertEquals([nx.rcode, nx.source], ["NXDOMAIN", "control"]);
      const nx2 = await r.resolve({ name: "NoSuch.ns.app.ns.local", type: "AAAA", class: "IN" });
      assertEquals([nx2.rcode, nx2.source], ["NXDOMAIN", "negative"]);
      // Reverse name of the RR ServiceIP: from the table now.
      const ptr = await r.resolve({
        name: `${rr.split(".").reverse().join(".")}.in-addr.arpa`,
        type: "PTR",
        class: "IN",
      });
      assertEquals(ptr.answers.map((x) => "data" in x ? x.data : ""), ["web.ns.app.ns.local"]);
    } finally {
      for (const c of controls) await c.close();
      await ctl.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

function bigTable(): TranslationTable {
  const t = new TranslationTable();
  t.replaceJob(
    "big.ns.svc.ns",
    Array.from({ length: 40 }, (_, k) => ({
      job: "big.ns.svc.ns",
      instance: k,
      nodeIp: "192.0.2.9",
      nodePort: 50103,
      nsip4: parseIPv4(`10.18.1.${k + 2}`),
      serviceIps: [{ kind: "RoundRobin" as const, v4: parseIPv4(`10.30.9.${k + 1}`) }],
    })),
  );
  return t;
}

const stats = (): DnsServerStats => ({
  queriesUdp: 0,
  queriesTcp: 0,
  malformed: 0,
  refusedClients: 0,
  rateLimited: 0,
  truncated: 0,
  cacheHits: 0,
});

Deno.test("respond: UDP answers over the client's limit are truncated with TC; TCP gets all", async () => {
  const t = bigTable();
  const r = new NameResolver({ suffix: "local", ttl: 5, table: () => t });
  const q = dnsPacket.encode({
    type: "query",
    id: 7,
    questions: [{ name: "svc.ns.big.ns.local", type: "A" }],
  });
  const s = stats();
  const udp = dnsPacket.decode(Buffer.from((await respond(r, q, 4096, s))!));
  assertEquals([udp.id, udp.flag_tc, udp.answers?.length ?? 0, s.truncated], [7, true, 0, 1]);
  const tcp = dnsPacket.decode(Buffer.from((await respond(r, q, undefined, s))!));
  assertEquals([tcp.flag_tc, tcp.answers?.length, tcp.flag_aa], [false, 40, true]);
  // With EDNS (4096 bytes) the 40 answers fit (dns-packet does not compress names: ~1.5 kB).
  const qe = dnsPacket.encode({
    type: "query",
    id: 8,
    questions: [{ name: "svc.ns.big.ns.local", type: "A" }],
    additionals: [{ type: "OPT", name: ".", udpPayloadSize: 4096 } as never],
  });
  const e = dnsPacket.decode(Buffer.from((await respond(r, qe, 4096, s))!));
  assertEquals([e.flag_tc, e.answers?.length], [false, 40]);
});

Deno.test("respond: malformed and non-query packets are dropped and counted; FORMERR / NOTIMP", async () => {
  const r = new NameResolver({ suffix: "local", ttl: 5, table: () => new TranslationTable() });
  const s = stats();
  assertEquals(await respond(r, new Uint8Array([1, 2, 3]), 512, s), undefined);
  const resp = dnsPacket.encode({ type: "response", id: 1, questions: [{ name: "a.local", type: "A" }] });
  assertEquals(await respond(r, resp, 512, s), undefined);
  const loop = new Uint8Array(
    dnsPacket.encode({ type: "query", id: 2, questions: [{ name: "a.b", type: "A" }] }),
  );
  loop[12] = 0xc0; // the name points at itself
  loop[13] = 12;
  assertEquals(await respond(r, loop, 512, s), undefined);
  assertEquals(s.malformed, 3);
  const two = dnsPacket.encode({
    type: "query",
    id: 3,
    questions: [{ name: "a.local", type: "A" }, { name: "b.local", type: "A" }],
  });
  const f = dnsPacket.decode(Buffer.from((await respond(r, two, 512, s))!)) as { rcode?: string };
  assertEquals(f.rcode, "FORMERR");
  const notify = new Uint8Array(
    dnsPacket.encode({ type: "query", id: 4, questions: [{ name: "a.local", type: "A" }] }),
  );
  notify[2] |= 4 << 3; // opcode NOTIFY
  const n = dnsPacket.decode(Buffer.from((await respond(r, notify, 512, s))!)) as { rcode?: string };
  assertEquals(n.rcode, "NOTIMP");
  // No upstream configured: other names are REFUSED.
  const out = dnsPacket.encode({ type: "query", id: 5, questions: [{ name: "example.org", type: "A" }] });
  const o = dnsPacket.decode(Buffer.from((await respond(r, out, 512, s))!)) as { rcode?: string };
  assertEquals(o.rcode, "REFUSED");
});

Deno.test("RateLimiter: a bucket of N per client, refilled over time, clients independent", () => {
  const l = new RateLimiter(3);
  assertEquals([l.take("a", 0), l.take("a", 0), l.take("a", 0), l.take("a", 0)], [true, true, true, false]);
  assertEquals(l.take("b", 0), true);
  assertEquals(l.take("a", 400), true); // 1.2 tokens back after 400 ms
  assertEquals(l.take("a", 400), false);
});

Deno.test("upstreams: DnsUpstream lists and resolv.conf nameservers", () => {
  assertEquals(parseUpstreams("10.0.0.53, 10.0.0.54#5353"), [
    { ip: "10.0.0.53", port: 53 },
    { ip: "10.0.0.54", port: 5353 },
  ]);
  assertEquals(parseUpstreams(""), []);
  let err = "";
  try {
    parseUpstreams("dns.example");
  } catch (e) {
    err = String(e);
  }
  assert(err.includes("not ip or ip#port"), err);
  assertEquals(
    parseResolvConf("# c\nnameserver 1.1.1.1\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\n"),
    [{ ip: "1.1.1.1", port: 53 }, { ip: "fe80::1", port: 53 }],
  );
});
