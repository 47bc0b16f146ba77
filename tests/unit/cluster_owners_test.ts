import { assertEquals } from "../helpers/assert.ts";
import { AddressOwners } from "../../src/cluster/owners.ts";
import { closest6Spec, instance6Spec, rr6Spec, service4Spec } from "../../src/cluster/alloc.ts";
import { ClusterState } from "../../src/cluster/state.ts";

const owners = () => new AddressOwners([service4Spec(), instance6Spec(), rr6Spec(), closest6Spec()]);

Deno.test("address owners: by ordinal in every pool, and outside the numbering, each separately", () => {
  const o = owners();
  // In the numbering (dense slots) and outside it (10.30.0.255 is never generated; fdff:2000:1::5 lies in the
  // RR range but beyond the rr6 numbering; the last is an instance IPv6 at an ordinal far beyond the dense slots).
  const addrs = [
    "10.30.0.0",
    "10.30.253.253",
    "fdff::",
    "fdff:800::1",
    "fdff:2000::7",
    "fdff:1000::",
    "10.30.0.255",
    "fdff:2000:1::5",
    "fdff::1:0:0:0",
  ];
  addrs.forEach((a, k) => o.set(a, `j${k}`));
  assertEquals(o.size, addrs.length);
  addrs.forEach((a, k) => assertEquals(o.get(a), `j${k}`, a));
  // Neighbours and other pools' twins stay unowned.
  for (const a of ["10.30.0.1", "fdff::1", "fdff:800::", "fdff:2000::6", "fdff:1000::7", "10.30.0.254"]) {
    assertEquals(o.get(a), undefined, a);
  }
  o.set("10.30.0.0", "other"); // a new owner replaces the old one, no second entry
  assertEquals(o.size, addrs.length);
  assertEquals(o.get("10.30.0.0"), "other");
  for (const a of addrs) assertEquals(o.delete(a), true, a);
  for (const a of addrs) assertEquals(o.delete(a), false, a);
  assertEquals(o.size, 0);
  for (const a of addrs) assertEquals(o.get(a), undefined, a);
});

Deno.test("state: table queries resolve allocated and user-chosen addresses; released ones resolve to nothing", () => {
  const s = new ClusterState();
  const a = s.deployService({
    _id: "a",
    app_name: "x",
    app_ns: "y",
    microservice_name: "a",
    microservice_namespace: "z",
    rr_ip: "10.30.0.255", // outside the pool's numbering (.255 is never generated)
    rr_ip_v6: "fdff:2000:1::5", // outside the rr6 numbering (its /48)
  }).job;
  const b = s.deployService({
    _id: "b",
    app_name: "x",
    app_ns: "y",
    microservice_name: "b",
    microservice_namespace: "z",
  })
    .job;
  const { instance } = s.deployInstance("b", 3);
  for (const ip of ["10.30.0.255", "FDFF:2000:1:0::5"]) assertEquals(s.resolve(ip)?._id, a._id, ip);
  for (const e of b.service_ip_list) {
    assertEquals(s.resolve(e.Address)?._id, "b");
    assertEquals(s.resolve(e.Address_v6)?._id, "b");
  }
  assertEquals(s.resolve(instance.instance_ip)?._id, "b");
  assertEquals(s.resolve(instance.instance_ip_v6)?._id, "b");
  s.removeInstance("b", 3);
  assertEquals(s.resolve(instance.instance_ip), undefined);
  assertEquals(s.resolve(instance.instance_ip_v6), undefined);
  s.removeService("a");
  assertEquals(s.resolve("10.30.0.255"), undefined);
  assertEquals(s.resolve("fdff:2000:1::5"), undefined);
  // The state rebuilt from its rows answers alike.
  const again = ClusterState.fromFile(s.toFile());
  assertEquals(again.resolve(b.service_ip_list[0].Address)?._id, "b");
  assertEquals(again.resolve(instance.instance_ip), undefined);
});
