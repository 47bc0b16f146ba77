import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  ClusterError,
  ClusterState,
  DeployedNoticeSchema,
  newObjectId,
  parseStateText,
  type ServiceInput,
  StateFileError,
  tableQueryResult,
} from "../../src/cluster/mod.ts";
import { QueryResultSchema, toEntries } from "../../src/table/query_result.ts";
import { formatIPv4 } from "../../src/addr/mod.ts";

/** A service without Closest IPs (these tests follow the RR and Instance IP sequences; see `svcC`). */
const svc = (name: string, extra: Partial<ServiceInput> = {}): ServiceInput => {
  const [app_name, app_ns, microservice_name, microservice_namespace] = name.split(".");
  return { app_name, app_ns, microservice_name, microservice_namespace, closest: false, ...extra };
};

/** A service as `control service add` makes it by default: with Closest IPs. */
const svcC = (name: string, extra: Partial<ServiceInput> = {}): ServiceInput => {
  const { closest: _, ...rest } = svc(name);
  return { ...rest, ...extra };
};

let ids = 0;
const fresh = () => new ClusterState({ newId: () => `id${++ids}` });

function deployed(appname: string, n: number, nsip: string, extra: Record<string, unknown> = {}) {
  return DeployedNoticeSchema.parse({
    appname,
    status: "DEPLOYED",
    instance_number: n,
    nsip,
    nsipv6: "fc00::2",
    host_port: "50103",
    host_ip: "192.168.1.10",
    ...extra,
  });
}

function errorKind(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ClusterError) return e.kind;
    throw e;
  }
  throw new Error("expected a ClusterError");
}

/** Asserts `fn` is refused with `kind` and leaves the state unchanged. */
function refused(s: ClusterState, kind: string, fn: () => unknown): void {
  const before = JSON.stringify(s.toFile());
  assertEquals(errorKind(fn), kind);
  assertEquals(JSON.stringify(s.toFile()), before, "state changed by a refused operation");
}

Deno.test("state: services get RR IPs, instances Instance IPs from the shared v4 pool", () => {
  const s = fresh();
  const a = s.deployService(svc("shop.prod.web.v1"));
  assert(a.created);
  assertEquals(a.job.service_ip_list, [{ IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" }]);
  const i0 = s.deployInstance(a.job._id, 0);
  const i1 = s.deployInstance("shop.prod.web.v1", 1, "c1");
  assertEquals([i0.instance.instance_ip, i0.instance.instance_ip_v6], ["10.30.0.1", "fdff::"]);
  assertEquals([i1.instance.instance_ip, i1.instance.instance_ip_v6, i1.instance.cluster_id], [
    "10.30.0.2",
    "fdff::1",
    "c1",
  ]);
  const b = s.deployService(svc("shop.prod.db.v1"));
  assertEquals(b.job.service_ip_list[0].Address, "10.30.0.3");
  assertEquals(b.job.service_ip_list[0].Address_v6, "fdff:2000::1");
  // Idempotent: same instance again keeps its addresses; same name without id = same service.
  const again = s.deployInstance(a.job._id, 0);
  assert(!again.created);
  assertEquals(again.instance.instance_ip, "10.30.0.1");
  const same = s.deployService(svc("shop.prod.web.v1"));
  assert(!same.created);
  assertEquals(same.job._id, a.job._id);
  assertEquals(s.jobs().length, 2);
  assertEquals(a.job.instance_list.map((i) => i.instance_number), [0, 1]);
});

Deno.test("state: generated ids look like Mongo ObjectIds and are unique", () => {
  const seen = new Set<string>();
  for (let k = 0; k < 100; k++) seen.add(newObjectId());
  assertEquals(seen.size, 100);
  for (const id of seen) assert(/^[0-9a-f]{24}$/.test(id), id);
  const s = new ClusterState();
  assert(/^[0-9a-f]{24}$/.test(s.deployService(svc("a.b.c.d")).job._id));
});

Deno.test("state: user RR IPs — validated, refused when used by another job, reused by the same job", () => {
  const s = fresh();
  const a = s.deployService(svc("a.a.a.a", { _id: "ja", rr_ip: "10.30.0.1", rr_ip_v6: "FDFF:2000:0::1337" }));
  assertEquals(a.job.service_ip_list[0], {
    IpType: "RR",
    Address: "10.30.0.1",
    Address_v6: "fdff:2000::1337",
  });
  // The generator skips the user's address.
  const b = s.deployService(svc("b.b.b.b", { _id: "jb" }));
  assertEquals(b.job.service_ip_list[0].Address, "10.30.0.0");
  assertEquals(s.deployInstance("jb", 0).instance.instance_ip, "10.30.0.2");
  refused(s, "conflict", () => s.deployService(svc("c.c.c.c", { rr_ip: "10.30.0.1" })));
  refused(s, "conflict", () => s.deployService(svc("c.c.c.c", { rr_ip: "10.30.0.2" }))); // an Instance IP
  refused(s, "conflict", () => s.deployService(svc("c.c.c.c", { rr_ip_v6: "fdff:2000::1337" })));
  refused(s, "invalid", () => s.deployService(svc("c.c.c.c", { rr_ip: "10.20.0.1" })));
  refused(s, "invalid", () => s.deployService(svc("c.c.c.c", { rr_ip_v6: "fdff:1000::1337" })));
  refused(
    s,
    "invalid",
    () => s.deployService(svc("c.c.c.c", { rr_ip: "10.30.0.9", rr_ip_v6: "2001:db8::1" })),
  );
  // Same job, same RR: fine and changes nothing.
  const again = s.deployService(svc("a.a.a.a", { _id: "ja", rr_ip: "10.30.0.1" }));
  assertEquals(again.updates, []);
  // Same job, new RR: moves, old address released (and reused), a DEPLOYMENT notice.
  const moved = s.deployService(svc("a.a.a.a", { _id: "ja", rr_ip: "10.30.7.7" }));
  assertEquals(moved.updates, [{ job: "a.a.a.a", type: "DEPLOYMENT" }]);
  assertEquals(s.resolve("10.30.7.7")?._id, "ja");
  assertEquals(s.resolve("10.30.0.1"), undefined);
  assertEquals(s.deployInstance("jb", 1).instance.instance_ip, "10.30.0.1");
});

Deno.test("state: names, ids and conflicts are checked before anything changes", () => {
  const s = fresh();
  s.deployService(svc("a.b.c.d", { _id: "x1" }));
  refused(s, "invalid", () => s.deployService(svc("app-.b.c.d")));
  refused(s, "invalid", () => s.deployService(svc("a.b.c.d", { app_name: "x".repeat(31) })));
  refused(s, "invalid", () => s.deployService(svc("q.b.c.d", { _id: "has.dot" })));
  refused(s, "invalid", () => s.deployService(svc("q.b.c.d", { _id: "service" })));
  refused(s, "conflict", () => s.deployService(svc("e.f.g.h", { _id: "x1" }))); // id is another service
  refused(s, "conflict", () => s.deployService(svc("a.b.c.d", { _id: "x2" }))); // name has another id
  refused(s, "not_found", () => s.deployInstance("nope", 0));
  refused(s, "invalid", () => s.deployInstance("x1", -1));
  refused(s, "invalid", () => s.deployInstance("x1", 1.5));
  refused(s, "not_found", () => s.removeInstance("x1", 3));
  refused(s, "not_found", () => s.removeService("a.b.c.e"));
  refused(s, "not_found", () => s.removeNode("w9"));
});

Deno.test("state: undeploy and service removal release addresses for reuse (FIFO)", () => {
  const s = fresh();
  const j = s.deployService(svc("a.b.c.d", { _id: "j" })).job; // RR 10.30.0.0
  for (let n = 0; n < 4; n++) s.deployInstance("j", n); // 10.30.0.1 .. .4, fdff:: .. fdff::3
  const r = s.removeInstance("j", 2);
  assertEquals(r.updates, [{ job: "a.b.c.d", type: "UNDEPLOYMENT" }]);
  assertEquals(r.removed.map((i) => i.instance_ip), ["10.30.0.3"]);
  s.removeInstance("j", 0);
  assertEquals(s.resolve("10.30.0.3"), undefined);
  const a = s.deployInstance("j", 7).instance;
  const b = s.deployInstance("j", 8).instance;
  assertEquals([a.instance_ip, a.instance_ip_v6, b.instance_ip, b.instance_ip_v6], [
    "10.30.0.3",
    "fdff::2",
    "10.30.0.1",
    "fdff::",
  ]);
  refused(s, "invalid", () => s.removeService("j"));
  const gone = s.removeService("a.b.c.d", true);
  assertEquals(gone.updates, [{ job: "a.b.c.d", type: "UNDEPLOYMENT" }]);
  assertEquals(s.jobs(), []);
  assertEquals(j.job_name, "a.b.c.d");
  // Instances (in instance order: 1, 3, 7, 8) then the RR were released, in that order.
  assertEquals(s.allocator.service4.freeList(), [
    "10.30.0.2",
    "10.30.0.4",
    "10.30.0.3",
    "10.30.0.1",
    "10.30.0.0",
  ]);
  const k = s.deployService(svc("e.f.g.h")).job;
  assertEquals(k.service_ip_list[0].Address, "10.30.0.2");
  assertEquals(k.service_ip_list[0].Address_v6, "fdff:2000::");
  assertEquals(s.deployInstance(k._id, 0).instance.instance_ip, "10.30.0.4");
  // removeInstance(-1) clears all.
  s.deployInstance(k._id, 1);
  assertEquals(s.removeInstance(k._id, -1).removed.length, 2);
  assertEquals(s.removeInstance(k._id, -1).updates, []);
});

Deno.test("state: node subnets — same worker gets its subnet back; released on deregistration", () => {
  const s = fresh();
  assertEquals(s.nodeSubnet("w1").node, { worker_id: "w1", subnet: "10.18.0.0", subnet_v6: "fc00::" });
  assertEquals(s.nodeSubnet("w2").node, { worker_id: "w2", subnet: "10.18.0.64", subnet_v6: "fc00::100" });
  const again = s.nodeSubnet("w1");
  assert(!again.created);
  assertEquals(again.node.subnet, "10.18.0.0");
  const j = s.deployService(svc("a.b.c.d")).job;
  s.deployInstance(j._id, 0);
  s.deployInstance(j._id, 1);
  s.markDeployed("w1", deployed("a.b.c.d", 0, "10.18.0.2"));
  s.markDeployed("w2", deployed("a.b.c.d", 1, "10.18.0.66"));
  const r = s.removeNode("w1");
  assertEquals(r.cleared, [{ job: "a.b.c.d", instance_number: 0 }]);
  assertEquals(r.updates, [{ job: "a.b.c.d", type: "UNDEPLOYMENT" }]);
  assertEquals(j.instance_list[0].namespace_ip, undefined);
  assertEquals(j.instance_list[0].instance_ip, "10.30.0.1"); // the Instance IP stays with the instance
  assertEquals(j.interested_nodes, ["w2"]);
  assertEquals(s.nodeSubnet("w3").node.subnet, "10.18.0.0");
  assertEquals(s.nodeSubnet("w1").node.subnet, "10.18.0.128");
});

Deno.test("state: subnet exhaustion is a clear error and changes nothing", () => {
  const base = new ClusterState().toFile();
  base.pools.subnet4.next = String(12288 - 1);
  const s = ClusterState.fromFile(base);
  assertEquals(s.nodeSubnet("w1").node.subnet, "10.29.255.192");
  const before = JSON.stringify(s.toFile());
  try {
    s.nodeSubnet("w2");
    throw new Error("expected exhaustion");
  } catch (e) {
    assert(e instanceof ClusterError && e.kind === "exhausted", String(e));
    assert(e.message.includes("IPv4 node subnets"), e.message);
  }
  assertEquals(JSON.stringify(s.toFile()), before);
  s.removeNode("w1");
  assertEquals(s.nodeSubnet("w2").node.subnet, "10.29.255.192");
});

Deno.test("state: deployment notices, resolution by any IP spelling or name, interests by name", () => {
  const s = fresh();
  const j = s.deployService(svc("a.b.c.d", { _id: "j" })).job;
  s.deployInstance("j", 0);
  s.deployInstance("j", 1);
  refused(s, "not_found", () => s.markDeployed("w1", deployed("x.y.z.w", 0, "10.18.0.2")));
  refused(s, "not_found", () => s.markDeployed("w1", deployed("a.b.c.d", 5, "10.18.0.2")));
  const d = s.markDeployed("w1", deployed("a.b.c.d", 0, "10.18.0.2", { nsipv6: "FC00:0::2" }));
  assertEquals(d.updates, [{ job: "a.b.c.d", type: "DEPLOYMENT" }]);
  assertEquals(j.instance_list[0], {
    instance_number: 0,
    instance_ip: "10.30.0.1",
    instance_ip_v6: "fdff::",
    namespace_ip: "10.18.0.2",
    namespace_ip_v6: "fc00::2",
    host_ip: "192.168.1.10",
    host_port: 50103,
    worker_id: "w1",
    status: "DEPLOYED",
  });
  assertEquals(j.interested_nodes, ["w1"]);
  for (
    const key of ["10.30.0.0", "FDFF:2000:0::0", "10.30.0.1", "fdff:0::", "10.30.0.2", "fdff::1", "a.b.c.d"]
  ) {
    assertEquals(s.resolve(key)?._id, "j", key);
  }
  for (const key of ["10.30.0.3", "fdff::2", "a.b.c.e", "", "j", "10.18.0.2"]) {
    assertEquals(s.resolve(key), undefined, key);
  }
  // Interests: by name and by IP; idempotent.
  assert(s.addInterest(j, "w2"));
  assert(!s.addInterest(j, "w2"));
  assert(!s.removeInterest("10.30.0.0", "w2")); // an IP pseudo-interest: no job interest removed
  assert(s.removeInterest("a.b.c.d", "w2"));
  assert(!s.removeInterest("a.b.c.d", "w2"));
  assert(s.removeInterest("a.b.c.d", "w1"));
  assert(!s.removeInterest("10.99.0.1", "w1"));
  assertEquals(j.interested_nodes, []);
  // Address change: named instance plus everything else on that worker.
  s.markDeployed("w1", deployed("a.b.c.d", 1, "10.18.0.3"));
  const k = s.deployService(svc("k.k.k.k")).job;
  s.deployInstance(k._id, 0);
  s.markDeployed("w2", deployed("k.k.k.k", 0, "10.18.0.66", { host_ip: "192.168.1.20" }));
  const ch = s.addressChanged("w1", {
    appname: "a.b.c.d",
    instance_number: 0,
    host_ip: "192.168.9.9",
    host_port: 50104,
  });
  assertEquals(ch.updates, [{ job: "a.b.c.d", type: "DEPLOYMENT" }]);
  assertEquals(j.instance_list.map((i) => `${i.host_ip}:${i.host_port}`), [
    "192.168.9.9:50104",
    "192.168.9.9:50104",
  ]);
  assertEquals(k.instance_list[0].host_ip, "192.168.1.20");
  assertEquals(
    s.addressChanged("w1", {
      appname: "a.b.c.d",
      instance_number: 0,
      host_ip: "192.168.9.9",
      host_port: 50104,
    }).updates,
    [],
  );
});

Deno.test("state: table-query result in the §2.3 format, accepted by the node's parser", () => {
  const s = fresh();
  const j = s.deployService(svc("a.b.c.d", { _id: "j" })).job;
  s.deployInstance("j", 0, "cl1");
  s.deployInstance("j", 1);
  s.deployInstance("j", 2); // never deployed: omitted
  s.markDeployed("w1", deployed("a.b.c.d", 0, "10.18.0.2"));
  s.markDeployed(
    "w2",
    deployed("a.b.c.d", 1, "10.18.0.66", { nsipv6: "", host_ip: "192.168.1.20", host_port: 50200 }),
  );
  const r = tableQueryResult("FDFF:2000::", s.resolve("FDFF:2000::"));
  assertEquals(r.app_name, "a.b.c.d");
  assertEquals(r.query_key, "FDFF:2000::");
  assertEquals(r.instance_list.length, 2);
  assertEquals(r.instance_list[0], {
    instance_number: 0,
    instance_ip: "10.30.0.1",
    instance_ip_v6: "fdff::",
    namespace_ip: "10.18.0.2",
    namespace_ip_v6: "fc00::2",
    host_ip: "192.168.1.10",
    host_port: 50103,
    worker_id: "w1",
    cluster_id: "cl1",
    service_ip: [
      { IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" },
      { IpType: "instance_ip", Address: "10.30.0.1", Address_v6: "fdff::" },
    ],
  });
  assertEquals(typeof JSON.parse(JSON.stringify(r)).instance_list[1].host_port, "number");
  const conv = toEntries(QueryResultSchema.parse(JSON.parse(JSON.stringify(r))));
  assertEquals(conv.dropped, []);
  assertEquals(conv.entries.map((e) => [e.instance, formatIPv4(e.nsip4), e.nodeIp, e.nodePort]), [
    [0, "10.18.0.2", "192.168.1.10", 50103],
    [1, "10.18.0.66", "192.168.1.20", 50200],
  ]);
  assertEquals(conv.entries[0].serviceIps.map((x) => x.kind), ["RoundRobin", "Instance"]);
  assertEquals(conv.entries[1].nsip6, undefined);
  const none = tableQueryResult("10.30.9.9", s.resolve("10.30.9.9"));
  assertEquals(none, { app_name: "", query_key: "10.30.9.9", instance_list: [] });
  assert(QueryResultSchema.safeParse(none).success);
  assertEquals(j.instance_list.length, 3);
});

Deno.test("state: file round trip keeps jobs, nodes, interests, counters and free lists", () => {
  const s = fresh();
  s.nodeSubnet("w1");
  s.nodeSubnet("w2");
  s.nodeSubnet("w3");
  s.removeNode("w2");
  const j = s.deployService(svc("a.b.c.d", { _id: "j", rr_ip: "10.30.0.5" })).job;
  for (let n = 0; n < 3; n++) s.deployInstance("j", n);
  s.markDeployed("w1", deployed("a.b.c.d", 1, "10.18.0.2"));
  s.removeInstance("j", 0);
  const text = JSON.stringify(s.toFile());
  const t = parseStateText(text, "mem");
  assertEquals(JSON.stringify(t.toFile()), text);
  assertEquals(t.job("a.b.c.d")?.interested_nodes, j.interested_nodes);
  assertEquals(t.resolve("10.30.0.5")?._id, "j");
  // Both continue identically.
  for (const x of [s, t]) {
    assertEquals(x.nodeSubnet("w1").node.subnet, "10.18.0.0");
    assertEquals(x.nodeSubnet("w4").node.subnet, "10.18.0.64");
    assertEquals(x.nodeSubnet("w5").node.subnet, "10.18.0.192");
    assertEquals(x.deployInstance("j", 9).instance.instance_ip, "10.30.0.0");
    assertEquals(x.deployInstance("j", 10).instance.instance_ip, "10.30.0.3");
    assertEquals(x.deployInstance("j", 11).instance.instance_ip, "10.30.0.4");
    assertEquals(x.deployInstance("j", 12).instance.instance_ip, "10.30.0.6");
  }
});

Deno.test("state: an inconsistent or malformed file is a clear StateFileError", () => {
  const s = fresh();
  s.nodeSubnet("w1");
  const j = s.deployService(svc("a.b.c.d", { _id: "j" })).job;
  s.deployInstance("j", 0);
  const good = s.toFile();
  const mutate = (f: (x: ReturnType<ClusterState["toFile"]>) => void) => {
    const c = structuredClone(good);
    f(c);
    return JSON.stringify(c);
  };
  const cases: Array<[string, string]> = [
    ["{", "not valid JSON"],
    ["[]", "invalid"],
    [JSON.stringify({ ...good, version: 2 }), "version"],
    [mutate((c) => (c.jobs[0].instance_list[0].instance_ip = "10.30.0.0")), "used twice"],
    [
      mutate((c) => c.nodes.push({ worker_id: "w2", subnet: "10.18.0.0", subnet_v6: "fc00::100" })),
      "used twice",
    ],
    [mutate((c) => (c.nodes[0].subnet = "10.18.0.1")), "outside its range"],
    [mutate((c) => (c.jobs[0].service_ip_list[0].Address_v6 = "FDFF:2000::")), "canonical"],
    [mutate((c) => (c.jobs[0].service_ip_list[0].Address = "10.31.0.0")), "outside its range"],
    [mutate((c) => (c.jobs[0].job_name = "a.b.c")), "bad job name"],
    [mutate((c) => c.jobs.push(structuredClone(c.jobs[0]))), "listed twice"],
    [mutate((c) => (c.pools.service4.next = "99999999")), "counter"],
  ];
  for (const [text, includes] of cases) {
    assertThrows(() => parseStateText(text, "/x/control-state.json"), StateFileError, includes);
    assertThrows(
      () => parseStateText(text, "/x/control-state.json"),
      StateFileError,
      "/x/control-state.json",
    );
  }
  assertEquals(j.job_name, "a.b.c.d");
});

Deno.test("state: Closest ServiceIPs — allocated by default, user-chosen, released and reused, disabled", () => {
  const s = fresh();
  const a = s.deployService(svcC("a.a.a.a", { _id: "ja" }));
  assertEquals(a.job.service_ip_list, [
    { IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" },
    { IpType: "Closest", Address: "10.30.0.1", Address_v6: "fdff:1000::" },
  ]);
  assertEquals(s.resolve("FDFF:1000::0")?._id, "ja");
  assertEquals(s.resolve("10.30.0.1")?._id, "ja");
  assertEquals(s.deployInstance("ja", 0).instance.instance_ip, "10.30.0.2");
  // Chosen by the user: validated, range-checked, never another job's or the job's own RR.
  const b = s.deployService(
    svcC("b.b.b.b", { _id: "jb", closest_ip: "10.30.9.9", closest_ip_v6: "FDFF:1000::0:77" }),
  );
  assertEquals(b.job.service_ip_list[1], {
    IpType: "Closest",
    Address: "10.30.9.9",
    Address_v6: "fdff:1000::77",
  });
  refused(s, "invalid", () => s.deployService(svcC("c.c.c.c", { closest_ip_v6: "fdff:2000::5" })));
  refused(s, "invalid", () => s.deployService(svcC("c.c.c.c", { closest_ip: "10.31.0.1" })));
  refused(s, "conflict", () => s.deployService(svcC("c.c.c.c", { closest_ip: "10.30.0.1" })));
  refused(s, "conflict", () => s.deployService(svcC("c.c.c.c", { closest_ip: "10.30.0.2" }))); // an Instance IP
  refused(s, "conflict", () => s.deployService(svcC("c.c.c.c", { closest_ip_v6: "fdff:1000::77" })));
  refused(
    s,
    "invalid",
    () => s.deployService(svcC("c.c.c.c", { rr_ip: "10.30.5.5", closest_ip: "10.30.5.5" })),
  );
  refused(s, "invalid", () => s.deployService(svcC("c.c.c.c", { closest: false, closest_ip: "10.30.5.5" })));
  refused(s, "conflict", () => s.deployService(svcC("a.a.a.a", { _id: "ja", closest_ip: "10.30.0.2" })));
  // Disabled: none allocated; the pools move on as if it did not exist.
  const c = s.deployService(svcC("c.c.c.c", { _id: "jc", closest: false }));
  assertEquals(c.job.service_ip_list.map((x) => x.IpType), ["RR"]);
  assertEquals(c.job.no_closest, true);
  assertEquals(s.allocator.closest6.used, 2);
  // Re-deploying as before changes nothing; disabling an existing one releases its pair (a notice).
  assertEquals(s.deployService(svcC("a.a.a.a", { _id: "ja" })).updates, []);
  const off = s.deployService(svcC("a.a.a.a", { _id: "ja", closest: false }));
  assertEquals(off.updates, [{ job: "a.a.a.a", type: "DEPLOYMENT" }]);
  assertEquals(s.resolve("fdff:1000::"), undefined);
  assertEquals(s.resolve("10.30.0.1"), undefined);
  assertEquals(s.allocator.closest6.freeList(), ["fdff:1000::"]);
  // Re-enabled: the released pair comes back first (FIFO reuse); removal releases it again.
  const on = s.deployService(svcC("a.a.a.a", { _id: "ja", closest: true }));
  assertEquals(on.job.service_ip_list[1], {
    IpType: "Closest",
    Address: "10.30.0.1",
    Address_v6: "fdff:1000::",
  });
  assertEquals(on.job.no_closest, undefined);
  // Moving to a chosen address releases the old one.
  s.deployService(svcC("a.a.a.a", { _id: "ja", closest_ip_v6: "fdff:1000::5" }));
  assertEquals(s.resolve("fdff:1000::5")?._id, "ja");
  assertEquals(s.allocator.closest6.freeList(), ["fdff:1000::"]);
  s.removeService("jb");
  assertEquals(s.resolve("fdff:1000::77"), undefined);
  assertEquals(s.deployService(svcC("d.d.d.d")).job.service_ip_list[1].Address_v6, "fdff:1000::");
  // Round trip through the file keeps all of it, and a second state agrees row by row.
  const back = parseStateText(JSON.stringify(s.toFile()), "mem");
  assertEquals(back.toFile(), s.toFile());
  assertEquals(back.resolve("fdff:1000::5")?._id, "ja");
});

Deno.test("state: an exhausted Closest pool refuses a service and changes nothing", () => {
  const s = fresh();
  s.allocator.closest6.restore({ next: (1n << 80n).toString(), free: [] });
  refused(s, "exhausted", () => s.deployService(svcC("a.b.c.d")));
  assert(s.deployService(svcC("a.b.c.d", { closest: false })).created);
});

Deno.test("state: state from before Closest IPs loads unchanged and gains Closest IPs by addMissingClosest", () => {
  // The shape written before this change: no closest6 pool, jobs with only their RR entry.
  const old = {
    version: 1,
    jobs: [
      {
        _id: "j1",
        job_name: "a.b.c.d",
        service_ip_list: [{ IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" }],
        instance_list: [{ instance_number: 0, instance_ip: "10.30.0.1", instance_ip_v6: "fdff::" }],
        interested_nodes: ["w1"],
      },
      {
        _id: "j2",
        job_name: "e.f.g.h",
        service_ip_list: [{ IpType: "RR", Address: "10.30.0.2", Address_v6: "fdff:2000::1" }],
        instance_list: [],
        interested_nodes: [],
      },
    ],
    nodes: [{ worker_id: "w1", subnet: "10.18.0.0", subnet_v6: "fc00::" }],
    pools: {
      subnet4: { next: "1", free: [] },
      subnet6: { next: "1", free: [] },
      service4: { next: "3", free: [] },
      instance6: { next: "1", free: [] },
      rr6: { next: "2", free: [] },
    },
  };
  const s = parseStateText(JSON.stringify(old), "old.json");
  assertEquals(s.toFile().jobs, old.jobs);
  const m = s.addMissingClosest();
  assertEquals(m.jobs, ["a.b.c.d", "e.f.g.h"]);
  assertEquals(m.updates, [{ job: "a.b.c.d", type: "DEPLOYMENT" }, { job: "e.f.g.h", type: "DEPLOYMENT" }]);
  const after = s.toFile();
  assertEquals(after.jobs[0].service_ip_list, [
    old.jobs[0].service_ip_list[0],
    { IpType: "Closest", Address: "10.30.0.3", Address_v6: "fdff:1000::" },
  ]);
  assertEquals(after.jobs[1].service_ip_list[1].Address_v6, "fdff:1000::1");
  // Nothing else changed: instances, interests, nodes, the other pools.
  assertEquals(
    after.jobs.map((j) => [j.instance_list, j.interested_nodes]),
    old.jobs.map((j) => [j.instance_list, j.interested_nodes]),
  );
  assertEquals(after.nodes, old.nodes);
  assertEquals([after.pools.rr6, after.pools.instance6, after.pools.subnet4], [
    old.pools.rr6,
    old.pools.instance6,
    old.pools.subnet4,
  ]);
  // The changed rows are the two jobs and the two pools used; a second run does nothing.
  assertEquals(s.takeChanges().map((r) => r.key).sort(), [
    "job/j1",
    "job/j2",
    "pool/closest6",
    "pool/service4",
  ]);
  assertEquals(s.addMissingClosest().jobs, []);
  assertEquals(s.resolve("fdff:1000::1")?._id, "j2");
  // A disabled service stays without.
  const t = fresh();
  t.deployService(svc("x.y.z.w"));
  assertEquals(t.addMissingClosest().jobs, []);
  // A state with a malformed Closest entry is refused.
  const bad = structuredClone(after);
  bad.jobs[1].service_ip_list[1].Address_v6 = "fdff:2000::9";
  assertThrows(() => parseStateText(JSON.stringify(bad), "bad.json"), StateFileError);
  bad.jobs[1].service_ip_list[1].Address_v6 = "fdff:1000::";
  assertThrows(() => parseStateText(JSON.stringify(bad), "bad.json"), StateFileError); // used twice
});

Deno.test("state: table results carry the Closest entry; the node's parser maps it to its Closest policy", () => {
  const s = fresh();
  s.deployService(svcC("a.b.c.d", { _id: "j" }));
  s.deployInstance("j", 0);
  s.markDeployed("w1", deployed("a.b.c.d", 0, "10.18.0.2"));
  const r = tableQueryResult("fdff:1000::", s.resolve("fdff:1000::"));
  assertEquals(r.app_name, "a.b.c.d");
  assertEquals(r.instance_list[0].service_ip, [
    { IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" },
    { IpType: "Closest", Address: "10.30.0.1", Address_v6: "fdff:1000::" },
    { IpType: "instance_ip", Address: "10.30.0.2", Address_v6: "fdff::" },
  ]);
  const conv = toEntries(QueryResultSchema.parse(JSON.parse(JSON.stringify(r))));
  assertEquals(conv.dropped, []);
  assertEquals(conv.entries[0].serviceIps.map((x) => x.kind), ["RoundRobin", "Closest", "Instance"]);
});
