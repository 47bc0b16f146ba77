import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";
import {
  diffEntries,
  encodeSvc,
  hexOf,
  snatEntriesOf,
  SVC_BYTES,
  SVC_MAX,
  svcCounter,
  svcEntriesOf,
} from "../../src/kfast/tc_services.ts";
import { TC_OBJECT } from "../../src/kfast/tc_prog.gen.ts";

const ip = (s: string) => parseIPv4(s);
const node = {
  localIp: "192.168.77.1",
  localPort: 50103,
  peerPort: (p: string) => p === "192.168.77.9" ? undefined : 50104,
  ifindexTo: () => 4,
};

Deno.test("tc services: value layout matches the program's map (struct svc_val)", () => {
  assertEquals(TC_OBJECT.maps.find((m) => m.name === "nm_kf_svc")?.valueSize, SVC_BYTES);
  assertEquals(TC_OBJECT.maps.find((m) => m.name === "nm_kf_snat")?.valueSize, 4);
  const b = encodeSvc({
    localIp: "192.168.77.1",
    localPort: 50103,
    candidates: [{
      nsip: "10.19.2.2",
      iip: "10.30.0.12",
      nodeIp: "192.168.77.2",
      nodePort: 50104,
      ifindex: 7,
    }],
  });
  const v = new DataView(b.buffer);
  assertEquals(v.getUint32(0, true), 1);
  assertEquals(svcCounter(b), 0);
  assertEquals([...b.subarray(8, 12)], [192, 168, 77, 1]); // network order
  assertEquals(v.getUint16(12, true), 50103); // host order
  assertEquals([...b.subarray(16, 28)], [10, 19, 2, 2, 10, 30, 0, 12, 192, 168, 77, 2]);
  assertEquals(v.getUint16(28, true), 50104);
  assertEquals(v.getUint32(32, true), 7);
  assertThrows(() => encodeSvc({ localIp: "192.168.77.1", localPort: 1, candidates: [] }), RangeError);
});

Deno.test("tc services: only services whose candidates are all on reachable peers are decided in the kernel", () => {
  const services = new Map<number, number[]>([
    [ip("10.30.0.1"), [ip("10.19.2.2"), ip("10.19.3.2")]], // two remote: kernel
    [ip("10.30.0.2"), [ip("10.19.2.2"), ip("10.19.1.5")]], // one local: TUN
    [ip("10.30.0.3"), [ip("10.19.9.2")]], // peer without a known port: TUN
    [ip("10.30.0.12"), [ip("10.19.2.2")]], // an InstanceIP: kernel
    [ip("10.30.0.4"), Array.from({ length: SVC_MAX + 1 }, (_, i) => ip(`10.19.2.${i + 10}`))], // too many
  ]);
  const remote = new Map<number, string>([
    [ip("10.19.2.2"), "192.168.77.2"],
    [ip("10.19.3.2"), "192.168.77.3"],
    [ip("10.19.9.2"), "192.168.77.9"],
  ]);
  const instances = new Map<number, number>([
    [ip("10.19.2.2"), ip("10.30.0.12")],
    [ip("10.19.3.2"), ip("10.30.0.13")],
    [ip("10.19.9.2"), ip("10.30.0.19")],
    [ip("10.19.1.5"), ip("10.30.0.15")],
  ]);
  for (let i = 0; i <= SVC_MAX; i++) {
    remote.set(ip(`10.19.2.${i + 10}`), "192.168.77.2");
    instances.set(ip(`10.19.2.${i + 10}`), ip(`10.30.1.${i}`));
  }
  const snat = new Map([[ip("10.19.1.5"), ip("10.30.0.15")]]);
  const want = svcEntriesOf({ services, remote, instances, snat }, node);
  assertEquals(
    [...want.keys()].sort(),
    [hexOf(new Uint8Array([10, 30, 0, 1])), hexOf(new Uint8Array([10, 30, 0, 12]))].sort(),
  );
  assertEquals(new DataView(want.get("0a1e0001")!.value.buffer).getUint32(0, true), 2);
  assertEquals([...snatEntriesOf({ services, remote, instances, snat }).values()].map((e) => [...e.value]), [[
    10,
    30,
    0,
    15,
  ]]);

  // O(changed): nothing to write when the kernel holds the same (its RR counter apart).
  const have = new Map([...want].map(([k, e]) => {
    const value = e.value.slice();
    new DataView(value.buffer).setUint32(4, 41, true); // the program advanced the rotation
    return [k, { key: e.key, value }];
  }));
  assertEquals(diffEntries(have, want), { set: [], gone: [] });
  // An undeploy: 10.19.3.2 leaves 10.30.0.1 → one rewrite, nothing else.
  const services2 = new Map(services);
  services2.set(ip("10.30.0.1"), [ip("10.19.2.2")]);
  const d = diffEntries(have, svcEntriesOf({ services: services2, remote, instances, snat }, node));
  assertEquals(d.gone.length, 0);
  assertEquals(d.set.map((e) => hexOf(e.key)), ["0a1e0001"]);
  services2.delete(ip("10.30.0.12"));
  const d2 = diffEntries(have, svcEntriesOf({ services: services2, remote, instances, snat }, node));
  assertEquals(d2.gone.map((k) => hexOf(k)), ["0a1e000c"]);
  assert(d2.set.length === 1);
});
