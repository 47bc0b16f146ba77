import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { formatIPv4, formatIPv6, parseIPv4 } from "../../src/addr/mod.ts";
import {
  isAbsentAddress,
  parseQueryResult,
  parseStaticTable,
  parseStaticTableText,
  QueryResultError,
  StaticTableError,
  TranslationTable,
} from "../../src/table/mod.ts";

/** The payload exactly as Oakestra's cluster service manager publishes it (reference §2.3). */
function oakestraPayload(): Record<string, unknown> {
  return {
    app_name: "app.appns.web.webns",
    query_key: "10.30.0.1",
    instance_list: [
      {
        instance_number: 0,
        instance_ip: "10.30.0.2",
        instance_ip_v6: "fdff::2",
        namespace_ip: "10.18.0.66",
        namespace_ip_v6: "fc00::2",
        host_ip: "131.1.0.1",
        host_port: 50103,
        cluster_id: "6512a3c0e8f3b2a1c4d5e6f7",
        worker_id: "6512a3c0e8f3b2a1c4d5e6f8",
        service_ip: [
          { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000::1" },
          { IpType: "instance_ip", Address: "10.30.0.2", Address_v6: "fdff::2" },
        ],
      },
      {
        instance_number: 1,
        instance_ip: "10.30.0.3",
        instance_ip_v6: "fdff::3",
        namespace_ip: "10.18.0.130",
        namespace_ip_v6: "fc00::1:2",
        host_ip: "131.1.0.2",
        host_port: "50103",
        cluster_id: "c",
        service_ip: [
          { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000:0:0::1" },
          { IpType: "instance_ip", Address: "10.30.0.3", Address_v6: "FDFF:0::3" },
        ],
      },
      {
        // Scheduled but not deployed yet: no namespace IP / host → dropped.
        instance_number: 2,
        instance_ip: "10.30.0.4",
        instance_ip_v6: "fdff::4",
        cluster_id: "c",
        service_ip: [
          { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000::1" },
          { IpType: "instance_ip", Address: "10.30.0.4", Address_v6: "fdff::4" },
        ],
      },
      {
        // Unikernel: "<nil>" IPv6 namespace address → valid without v6 (the reference drops it).
        instance_number: 3,
        instance_ip: "10.30.0.5",
        instance_ip_v6: "fdff::5",
        namespace_ip: "10.18.0.194",
        namespace_ip_v6: "<nil>",
        host_ip: "131.1.0.3",
        host_port: 50103,
        service_ip: [
          { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000::1" },
          { IpType: "instance_ip", Address: "10.30.0.5", Address_v6: "fdff::5" },
        ],
      },
    ],
    extra_top_level: { anything: true },
  };
}

Deno.test("Oakestra's exact payload: kinds, host_port number and string, extra keys, drops", () => {
  const r = parseQueryResult(oakestraPayload());
  assertEquals(r.job, "app.appns.web.webns");
  assertEquals(r.queryKey, "10.30.0.1");
  assertEquals(r.entries.map((e) => e.instance), [0, 1, 3]);
  assertEquals(r.sources, [0, 1, 3]);
  assertEquals(r.dropped.length, 1);
  assertEquals(r.dropped[0].index, 2);
  assertEquals(r.dropped[0].instance, 2);
  assertEquals(r.dropped[0].field, "namespace_ip");
  assertEquals(r.dropped[0].reason, "missing");
  assertEquals(r.dropped[0].message, "instance_list[2] (instance 2): namespace_ip: missing");
  const [a, b, u] = r.entries;
  assertEquals(a.nodeIp, "131.1.0.1");
  assertEquals(a.nodePort, 50103);
  assertEquals(b.nodePort, 50103, "numeric string host_port");
  assertEquals(formatIPv4(a.nsip4), "10.18.0.66");
  assertEquals(formatIPv6(a.nsip6 as Uint8Array), "fc00::2");
  assertEquals(u.nsip6, undefined, "<nil> counts as absent");
  assertEquals(a.serviceIps.map((s) => s.kind), ["RoundRobin", "Instance"], "instance_ip → Instance");
  // IPv6 canonicalised.
  assertEquals(formatIPv6(b.serviceIps[0].v6 as Uint8Array), "fdff:2000::1");
  assertEquals(formatIPv6(b.serviceIps[1].v6 as Uint8Array), "fdff::3");
  // Into a table: the RR IP has three candidates, v4 and v6.
  const t = new TranslationTable();
  t.replaceJob(r.job, r.entries);
  assertEquals(t.service("10.30.0.1")?.entries.length, 3);
  assertEquals(t.service("fdff:2000::1")?.entries.length, 3);
  assertEquals(t.service("fdff:2000::1")?.kind, "RoundRobin");
  assertEquals(t.service("10.30.0.5")?.entries[0].instance, 3);
});

Deno.test("IpType mapping incl. Closest, InstanceNumber, Random and unknown", () => {
  const p = oakestraPayload();
  const inst = (p.instance_list as Record<string, unknown>[])[0];
  inst.service_ip = [
    { IpType: "Closest", Address: "10.30.0.7", Address_v6: null },
    { IpType: "InstanceNumber", Address: "10.30.0.8" },
    { IpType: "Random", Address_v6: "fdff:3000::1" },
    { IpType: "RoundRobin", Address: "10.30.0.9" },
    { IpType: "weird", Address: "10.30.0.10", Address_v6: "" },
  ];
  const r = parseQueryResult(p);
  const kinds = r.entries[0].serviceIps.map((s) => s.kind);
  assertEquals(kinds, ["Closest", "Instance", "Random", "RoundRobin", "Instance"]);
  assertEquals(r.entries[0].serviceIps[2].v4, undefined);
});

Deno.test("bad job names reject the whole result", () => {
  for (const name of ["", "a.b.c", "a.b.c.d.e", "a.b_c.d.e", "a.b.c.", `${"x".repeat(31)}.b.c.d`]) {
    const p = oakestraPayload();
    p.app_name = name;
    const err = assertThrows(() => parseQueryResult(p), QueryResultError);
    assertEquals((err as QueryResultError).field, "app_name");
  }
  assertThrows(
    () => parseQueryResult({ app_name: "", instance_list: [] }),
    QueryResultError,
    "resolution failed",
  );
});

Deno.test("shape errors name the field; per-instance problems drop only that instance", () => {
  assertThrows(() => parseQueryResult(null), QueryResultError, "(root)");
  assertThrows(() => parseQueryResult({ instance_list: [] }), QueryResultError, "app_name");
  assertThrows(
    () => parseQueryResult({ app_name: "a.b.c.d", instance_list: [{ instance_number: 0, host_port: true }] }),
    QueryResultError,
    "instance_list[0].host_port",
  );
  // Missing instance_list (or null) → no entries.
  assertEquals(parseQueryResult({ app_name: "a.b.c.d" }).entries, []);
  assertEquals(parseQueryResult({ app_name: "a.b.c.d", instance_list: null }).entries, []);

  const p = oakestraPayload();
  const list = p.instance_list as Record<string, unknown>[];
  list[0].host_port = "5o103";
  list[1].namespace_ip_v6 = "fc00::zz";
  list[3].service_ip = [{ IpType: "RR", Address: "<nil>", Address_v6: "<nil>" }];
  list[3].instance_ip = null;
  list[3].instance_ip_v6 = undefined;
  const r = parseQueryResult(p);
  assertEquals(r.entries.length, 0);
  assertEquals(r.dropped.map((d) => `${d.index}:${d.field}`), [
    "0:host_port",
    "1:namespace_ip_v6",
    "2:namespace_ip",
    "3:service_ip",
  ]);
  assertEquals(r.dropped[0].reason, '"5o103" is not an integer');
  assert(r.notes.some((n) => n.includes("instance_list[3].service_ip[0]")));
});

Deno.test("validity rules: ranges, duplicates, instance-level fallback for the instance IP", () => {
  const base = () => ({
    instance_number: 0,
    namespace_ip: "10.18.0.66",
    host_ip: "131.1.0.1",
    host_port: 50103,
    service_ip: [{ IpType: "RR", Address: "10.30.0.1" }],
  });
  const run = (list: unknown[]) => parseQueryResult({ app_name: "a.b.c.d", instance_list: list });
  assertEquals(run([{ ...base(), host_port: 0 }]).dropped[0].reason, "0 out of range 1..65535");
  assertEquals(run([{ ...base(), host_port: 65536 }]).dropped[0].field, "host_port");
  assertEquals(run([{ ...base(), host_port: null }]).dropped[0].reason, "missing");
  assertEquals(run([{ ...base(), instance_number: -1 }]).dropped[0].field, "instance_number");
  assertEquals(run([{ ...base(), instance_number: 1.5 }]).dropped[0].field, "instance_number");
  assertEquals(run([{ ...base(), host_ip: "<nil>" }]).dropped[0].field, "host_ip");
  assertEquals(run([{ ...base(), host_ip: "host.example" }]).dropped[0].field, "host_ip");
  assertEquals(run([{ ...base(), namespace_ip: "10.18.0.256" }]).dropped[0].field, "namespace_ip");
  assertEquals(run([{ ...base(), service_ip: [] }]).dropped[0].field, "service_ip");
  assertEquals(run([{ ...base(), host_ip: "2001:DB8::1" }]).entries[0].nodeIp, "2001:db8::1");
  const dup = run([base(), { ...base(), instance_number: 1 }, {
    ...base(),
    instance_number: 0,
    namespace_ip: "10.18.0.70",
  }]);
  assertEquals(dup.entries.length, 1);
  assertEquals(dup.dropped.map((d) => d.field), ["namespace_ip", "instance_number"]);
  // No Instance-kind element in service_ip → the instance-level instance_ip is used.
  const fb = run([{ ...base(), instance_ip: "10.30.0.2", instance_ip_v6: "fdff::2" }]).entries[0];
  assertEquals(fb.serviceIps.map((s) => s.kind), ["RoundRobin", "Instance"]);
  assertEquals(fb.serviceIps[1].v4, parseIPv4("10.30.0.2"));
  assert(isAbsentAddress("<nil>") && isAbsentAddress("") && isAbsentAddress(null) && !isAbsentAddress("::"));
});

Deno.test("static table: merged per job, strict, errors name the array index and field", () => {
  const p0 = oakestraPayload();
  (p0.instance_list as unknown[]).splice(2, 1); // drop the undeployed instance: static files are strict
  const p1 = {
    app_name: "app.appns.db.dbns",
    instance_list: [{
      instance_number: 0,
      namespace_ip: "10.18.0.67",
      host_ip: "131.1.0.1",
      host_port: "50103",
      service_ip: [{ IpType: "RR", Address: "10.30.0.20" }, { IpType: "instance_ip", Address: "10.30.0.21" }],
    }],
  };
  const st = parseStaticTableText(JSON.stringify([p0, p1]));
  assertEquals(st.size, 4);
  assertEquals(st.jobs.map((j) => [j.job, j.entries.length]), [["app.appns.web.webns", 3], [
    "app.appns.db.dbns",
    1,
  ]]);
  const t = new TranslationTable();
  for (const j of st.jobs) t.replaceJob(j.job, j.entries);
  assertEquals(t.size, 4);

  assertThrows(() => parseStaticTableText("{"), StaticTableError, "not valid JSON");
  assertThrows(() => parseStaticTable({}), StaticTableError, "static table (root)");
  assertThrows(
    () => parseStaticTable([p0, { instance_list: [] }]),
    StaticTableError,
    "static table [1].app_name",
  );
  assertThrows(
    () => parseStaticTable([p0, { ...p1, app_name: "x.y" }]),
    StaticTableError,
    "[1].app_name: job name",
  );
  const badPort = structuredClone(p1);
  badPort.instance_list[0].host_port = "x";
  assertThrows(
    () => parseStaticTable([p0, badPort]),
    StaticTableError,
    'static table [1].instance_list[0].host_port: "x" is not an integer',
  );
  const badShape = structuredClone(p1) as unknown as { instance_list: { service_ip: unknown }[] };
  badShape.instance_list[0].service_ip = "10.30.0.20";
  assertThrows(() => parseStaticTable([p0, badShape]), StaticTableError, "[1].instance_list[0].service_ip");
  const clash = structuredClone(p1);
  clash.instance_list[0].namespace_ip = "10.18.0.66";
  assertThrows(
    () => parseStaticTable([p0, clash]),
    StaticTableError,
    "[1].instance_list[0].namespace_ip: 10.18.0.66 already used by [0].instance_list[0]",
  );
  assertThrows(() => parseStaticTable([p0, p0]), StaticTableError, "already used");
  assertThrows(
    () => parseStaticTable([oakestraPayload()]),
    StaticTableError,
    "[0].instance_list[2].namespace_ip",
  );
});
