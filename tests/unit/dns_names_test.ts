import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { parseIPv4, parseIPv6 } from "../../src/addr/mod.ts";
import { type TableEntry, TranslationTable } from "../../src/table/mod.ts";
import {
  answerName,
  findJob,
  NameError,
  normalizeSuffix,
  parseName,
  parseReverse,
  reverseName,
  serviceName,
} from "../../src/dns/names.ts";

const JOB = "Shop.prod.web.default";

function entry(instance: number, nsip: string, inst4: string, inst6?: string): TableEntry {
  return {
    job: JOB,
    instance,
    nodeIp: "131.1.0.1",
    nodePort: 50103,
    nsip4: parseIPv4(nsip),
    serviceIps: [
      { kind: "RoundRobin", v4: parseIPv4("10.30.0.1"), v6: parseIPv6("fdff::1") },
      { kind: "Closest", v4: parseIPv4("10.30.0.2") },
      { kind: "Instance", v4: parseIPv4(inst4), ...(inst6 ? { v6: parseIPv6(inst6) } : {}) },
    ],
  };
}

function table(): TranslationTable {
  const t = new TranslationTable();
  t.replaceJob(JOB, [entry(0, "10.18.0.2", "10.30.0.10", "fdff::10"), entry(1, "10.18.0.3", "10.30.0.11")]);
  return t;
}

Deno.test("parseName: the three forms, case-insensitive, trailing dot", () => {
  assertEquals(parseName("Web.Default.Shop.Prod.LOCAL.", "local"), {
    form: "service",
    job: "shop.prod.web.default",
  });
  assertEquals(parseName("closest.web.default.shop.prod.local", "local"), {
    form: "closest",
    job: "shop.prod.web.default",
  });
  assertEquals(parseName("instance-12.web.default.shop.prod.cluster.local", "cluster.local"), {
    form: "instance",
    job: "shop.prod.web.default",
    instance: 12,
  });
});

Deno.test("parseName: malformed names under the suffix are invalid, others are outside", () => {
  for (const n of ["local", "x.local", "a.b.c.local", "a.b.c.d.e.f.local", "instance-01.a.b.c.d.local"]) {
    assertEquals(parseName(n, "local"), { form: "invalid" }, n);
  }
  assertEquals(parseName("foo.a-b.c.d.local", "local"), { form: "invalid" });
  assertEquals(parseName("example.com", "local"), { form: "outside" });
  assertEquals(parseName("notlocal", "local"), { form: "outside" });
  assertEquals(parseName("1.0.0.127.in-addr.arpa", "local"), { form: "reverse", ip: "127.0.0.1" });
  assertEquals(parseName("0.127.in-addr.arpa", "local"), { form: "outside" });
});

Deno.test("reverse names round-trip v4 and v6", () => {
  assertEquals(reverseName("10.30.0.1"), "1.0.30.10.in-addr.arpa");
  assertEquals(parseReverse(reverseName("10.30.0.1")), "10.30.0.1");
  const r6 = reverseName("fdff::1");
  assertEquals(r6.split(".").length, 34);
  assertEquals(parseReverse(r6.toUpperCase()), "fdff::1");
  assertEquals(parseReverse("x.in-addr.arpa"), undefined);
});

Deno.test("normalizeSuffix / serviceName", () => {
  assertEquals(normalizeSuffix("Cluster.Local."), "cluster.local");
  assertThrows(() => normalizeSuffix("bad_suffix"), NameError);
  assertThrows(() => normalizeSuffix(""), NameError);
  assertEquals(serviceName(JOB, "local"), "web.default.shop.prod.local");
  assertEquals(serviceName(JOB, "local", "closest"), "closest.web.default.shop.prod.local");
  assertEquals(serviceName(JOB, "local", 1), "instance-1.web.default.shop.prod.local");
});

Deno.test("answerName: service, closest and instance forms from the table (case-insensitive job)", () => {
  const t = table();
  assertEquals(findJob(t, "shop.prod.web.default"), JOB);
  const ask = (n: string, qt: "A" | "AAAA" | "ANY" | "other") =>
    answerName(t, parseName(n, "local"), qt, "local", n);
  assertEquals(ask("web.default.shop.prod.local", "A"), {
    kind: "records",
    records: [{ name: "web.default.shop.prod.local", type: "A", data: "10.30.0.1" }],
  });
  assertEquals(ask("web.default.shop.prod.local", "AAAA"), {
    kind: "records",
    records: [{ name: "web.default.shop.prod.local", type: "AAAA", data: "fdff::1" }],
  });
  assertEquals(ask("closest.web.default.shop.prod.local", "A"), {
    kind: "records",
    records: [{ name: "closest.web.default.shop.prod.local", type: "A", data: "10.30.0.2" }],
  });
  // A name that exists without the asked type: NOERROR, no records.
  assertEquals(ask("closest.web.default.shop.prod.local", "AAAA"), { kind: "records", records: [] });
  assertEquals(ask("web.default.shop.prod.local", "other"), { kind: "records", records: [] });
  const i0 = ask("instance-0.web.default.shop.prod.local", "ANY");
  assertEquals(i0.kind === "records" ? i0.records.map((r) => r.data) : [], ["10.30.0.10", "fdff::10"]);
  const i1 = ask("instance-1.web.default.shop.prod.local", "A");
  assertEquals(i1.kind === "records" ? i1.records.map((r) => r.data) : [], ["10.30.0.11"]);
  assertEquals(ask("instance-7.web.default.shop.prod.local", "A"), { kind: "nxdomain" });
  assertEquals(ask("x.local", "A"), { kind: "nxdomain" });
  assertEquals(ask("api.default.shop.prod.local", "A"), { kind: "miss", job: "shop.prod.api.default" });
  assertEquals(ask("example.org", "A"), { kind: "outside" });
});

Deno.test("answerName: PTR of ServiceIPs and Instance IPs; unknown ServiceIPs miss, others go out", () => {
  const t = table();
  const ptr = (ip: string) => {
    const n = reverseName(ip);
    return answerName(t, parseName(n, "local"), "PTR", "local", n, (a) => a.startsWith("10.30."));
  };
  const data = (a: ReturnType<typeof ptr>) => a.kind === "records" ? a.records.map((r) => r.data) : a.kind;
  assertEquals(data(ptr("10.30.0.1")), ["web.default.shop.prod.local"]);
  assertEquals(data(ptr("fdff::1")), ["web.default.shop.prod.local"]);
  assertEquals(data(ptr("10.30.0.2")), ["closest.web.default.shop.prod.local"]);
  assertEquals(data(ptr("10.30.0.11")), ["instance-1.web.default.shop.prod.local"]);
  assertEquals(data(ptr("fdff::10")), ["instance-0.web.default.shop.prod.local"]);
  assertEquals(ptr("10.30.9.9"), { kind: "miss-ip", ip: "10.30.9.9" });
  assertEquals(ptr("192.0.2.1"), { kind: "outside" });
});

Deno.test("answerName: an undeployed instance disappears from the answers", () => {
  const t = table();
  t.removeInstance(JOB, 1);
  const n = "instance-1.web.default.shop.prod.local";
  assertEquals(answerName(t, parseName(n, "local"), "A", "local", n), { kind: "nxdomain" });
  t.removeJob(JOB);
  assertEquals(answerName(t, parseName(n, "local"), "A", "local", n).kind, "miss");
});
