import { assertEquals } from "../helpers/assert.ts";
import { localsOf } from "../../src/kfast/tc_locals.ts";

const BR = "02:00:00:00:00:01";
const ports = new Map([["veth1", 7], ["veth2", 8]]);

Deno.test("tc locals: an instance's neighbour MAC on a bridge port gives its veth, its MAC and the bridge MAC", () => {
  const l = localsOf(
    ["10.19.1.2", "10.19.1.3"],
    [
      { dst: "10.19.1.2", lladdr: "02:AA:00:00:00:02", state: ["REACHABLE"] },
      { dst: "10.19.1.3", lladdr: "02:aa:00:00:00:03", state: ["STALE"] },
      { dst: "10.19.1.9", lladdr: "02:aa:00:00:00:09", state: ["REACHABLE"] }, // not an instance of ours
    ],
    [
      { mac: "02:aa:00:00:00:02", ifname: "veth1" },
      { mac: "02:aa:00:00:00:03", ifname: "veth2" },
      { mac: "02:aa:00:00:00:09", ifname: "veth2" },
      { mac: BR, ifname: "br0", flags: ["self"] },
    ],
    ports,
    BR,
  );
  assertEquals([...l.entries()], [
    ["10.19.1.2", { ifindex: 7, mac: "02:aa:00:00:00:02", gwMac: BR }],
    ["10.19.1.3", { ifindex: 8, mac: "02:aa:00:00:00:03", gwMac: BR }],
  ]);
});

Deno.test("tc locals: no entry without a usable neighbour, an FDB port, or a bridge MAC (the bridge path stays)", () => {
  const fdb = [{ mac: "02:aa:00:00:00:02", ifname: "veth1" }];
  assertEquals(
    localsOf(["10.19.1.2"], [{ dst: "10.19.1.2", state: ["INCOMPLETE"] }], fdb, ports, BR).size,
    0,
  );
  assertEquals(
    localsOf(
      ["10.19.1.2"],
      [{ dst: "10.19.1.2", lladdr: "02:aa:00:00:00:02", state: ["FAILED"] }],
      fdb,
      ports,
      BR,
    )
      .size,
    0,
  );
  const n = [{ dst: "10.19.1.2", lladdr: "02:aa:00:00:00:02", state: ["REACHABLE"] }];
  assertEquals(
    localsOf(["10.19.1.2"], n, [{ mac: "02:aa:00:00:00:02", ifname: "other" }], ports, BR).size,
    0,
  );
  assertEquals(
    localsOf(["10.19.1.2"], n, [{ mac: "02:aa:00:00:00:02", ifname: "veth1", flags: ["self"] }], ports, BR)
      .size,
    0,
  );
  assertEquals(localsOf(["10.19.1.2"], n, fdb, ports, "").size, 0);
  assertEquals(localsOf(["10.19.1.2"], n, fdb, ports, BR).size, 1);
});
