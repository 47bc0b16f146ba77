import { assert, assertEquals, assertNotEquals } from "../helpers/assert.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";
import { Balancer, seededRandom, SharedRotation } from "../../src/proxy/balance.ts";
import { FlowTable, PROTO_TCP } from "../../src/proxy/flows.ts";
import {
  instanceIp4Of,
  nodeKeyOf,
  type ServiceGroup,
  type ServiceIpKind,
  type TableEntry,
  TranslationTable,
} from "../../src/table/mod.ts";

const RR = parseIPv4("10.30.0.1");

function inst(n: number, node = `131.1.0.${n + 1}`, kind: ServiceIpKind = "RoundRobin"): TableEntry {
  return {
    job: "app.ns.web.ns",
    instance: n,
    nodeIp: node,
    nodePort: 50103,
    nsip4: parseIPv4(`10.18.${n}.2`),
    serviceIps: [{ kind, v4: RR }, { kind: "Instance", v4: parseIPv4(`10.30.1.${n + 2}`) }],
  };
}

function tableOf(entries: TableEntry[]): TranslationTable {
  const t = new TranslationTable();
  t.replaceJob("app.ns.web.ns", entries);
  return t;
}

const names = (xs: (TableEntry | undefined)[]) => xs.map((e) => (e ? `i${e.instance}` : "-")).join(",");

Deno.test("round robin alternates A,B,A,B across new flows, per ServiceIP", () => {
  const t = tableOf([inst(0), inst(1)]);
  const b = new Balancer({ random: seededRandom(1) });
  const g = t.service4(RR) as ServiceGroup;
  assertEquals(names([1, 2, 3, 4, 5].map(() => b.choose(g))), "i0,i1,i0,i1,i0");
  // A second RR service has its own rotation.
  const other: ServiceGroup = { ...g, key: 12345 };
  assertEquals(names([b.choose(other), b.choose(other)]), "i0,i1");
  assertEquals(names([b.choose(g)]), "i1");
});

Deno.test("round robin stays a fair rotation when candidates come and go", () => {
  const b = new Balancer({ random: seededRandom(1) });
  let t = tableOf([inst(0), inst(1), inst(2)]);
  const pick = () => b.choose(t.service4(RR) as ServiceGroup);
  assertEquals(names([pick(), pick()]), "i0,i1");
  // i1 (just used) leaves: the rotation continues with i2, not back at the start or doubled.
  t = tableOf([inst(0), inst(2)]);
  assertEquals(names([pick(), pick(), pick()]), "i2,i0,i2");
  // i3 and i1 join: each gets its turn in order.
  t = tableOf([inst(3), inst(0), inst(2), inst(1)]);
  assertEquals(names([pick(), pick(), pick(), pick(), pick()]), "i3,i0,i1,i2,i3");
  // Order of candidates in the group does not matter.
  t = tableOf([inst(2), inst(1), inst(0)]);
  assertEquals(names([pick(), pick(), pick()]), "i0,i1,i2");
});

Deno.test("a flow stays on its instance; new flows rotate (flows + balancer + table)", () => {
  const t = tableOf([inst(0), inst(1)]);
  const b = new Balancer({ random: seededRandom(1) });
  const flows = new FlowTable();
  const client = parseIPv4("10.18.9.2");
  const send = (sport: number, now: number): number => {
    let id = flows.find4(PROTO_TCP, client, sport, RR, 80);
    if (id < 0) {
      const e = b.choose(t.service4(RR) as ServiceGroup) as TableEntry;
      id = flows.add4({
        proto: PROTO_TCP,
        src: client,
        sport,
        dst: RR,
        dport: 80,
        chosen: e.nsip4,
        senderIp: parseIPv4("10.30.1.99"),
        replySrc: instanceIp4Of(e) as number,
        node: nodeKeyOf(e),
        target: e.nsip4,
        sender: client,
      }, now);
    }
    flows.touch(id, now, 100);
    return t.byNsip4(flows.chosen4(id))?.instance ?? -1;
  };
  // Flow 1000: many packets, one instance. New flows alternate.
  assertEquals([send(1000, 0), send(1000, 1), send(1000, 2)], [0, 0, 0]);
  assertEquals([send(1001, 3), send(1002, 4), send(1003, 5)], [1, 0, 1]);
  assertEquals([send(1000, 6), send(1001, 7), send(1002, 8)], [0, 1, 0]);
  assertEquals(flows.activeFlows(inst(0).nsip4), 2);
  assertEquals(flows.activeFlows(inst(1).nsip4), 2);
  // Instance 0 leaves: its flows are dropped and re-balanced onto instance 1.
  const ch = t.replaceJob("app.ns.web.ns", [inst(1)]);
  for (const gone of ch.gone) flows.dropInstance(gone);
  assertEquals([send(1000, 9), send(1003, 10)], [1, 1]);
});

Deno.test("random: seeded, uniform-ish, not a constant seed", () => {
  const t = tableOf([inst(0), inst(1), inst(2), inst(3)]);
  const g = { ...(t.service4(RR) as ServiceGroup), kind: "Random" as const };
  const run = (seed: number) => {
    const b = new Balancer({ random: seededRandom(seed) });
    return Array.from({ length: 4000 }, () => (b.choose(g) as TableEntry).instance);
  };
  const a = run(7);
  assertEquals(run(7), a, "same seed, same sequence");
  assertNotEquals(run(8).slice(0, 50), a.slice(0, 50), "another seed, another sequence");
  const counts = [0, 0, 0, 0];
  for (const i of a) counts[i]++;
  for (const c of counts) assert(c > 850 && c < 1150, `counts ${counts}`);
  // A random() returning values near 1 never indexes past the end.
  const edge = new Balancer({ random: () => 0.9999999999999999 });
  assertEquals(edge.choose(g)?.instance, 3);
  const r = seededRandom(123);
  for (let i = 0; i < 1000; i++) {
    const x = r();
    assert(x >= 0 && x < 1);
  }
});

Deno.test("instance: the single candidate; empty → undefined", () => {
  const b = new Balancer({ random: () => 0.99 });
  const e = inst(4);
  assertEquals(b.chooseFrom("Instance", 1, [e]), e);
  assertEquals(b.chooseFrom("Instance", 1, [e, inst(5)]), e);
  assertEquals(b.chooseFrom("RoundRobin", 1, []), undefined);
  assertEquals(b.chooseFrom("Closest", 1, []), undefined);
});

Deno.test("closest: lowest RTT, reacts to RTT changes, unknown ranks last", () => {
  const cands = [inst(0), inst(1), inst(2)];
  const rtt = new Map<string, number>([["131.1.0.1:50103", 9], ["131.1.0.2:50103", 3], [
    "131.1.0.3:50103",
    5,
  ]]);
  const b = new Balancer({ random: seededRandom(1), rttOf: (n) => rtt.get(n) });
  const pick = () => b.chooseFrom("Closest", RR, cands)?.instance;
  assertEquals([pick(), pick()], [1, 1]);
  rtt.set("131.1.0.2:50103", 12);
  assertEquals(pick(), 2);
  rtt.set("131.1.0.1:50103", 0.5);
  assertEquals(pick(), 0);
  // Unknown RTT (missing, NaN, negative) ranks after every known one.
  rtt.delete("131.1.0.1:50103");
  assertEquals(pick(), 2);
  rtt.set("131.1.0.3:50103", NaN);
  assertEquals(pick(), 1);
  rtt.set("131.1.0.2:50103", -1);
  // Nothing known at all → rotation over everyone.
  assertEquals([pick(), pick(), pick(), pick()], [2, 0, 1, 2]);
});

Deno.test("closest: ties broken by fewer active flows, then by rotation", () => {
  const cands = [inst(0, "n1"), inst(1, "n2"), inst(2, "n3")];
  const rtt = new Map<string, number>([["n1:50103", 2], ["n2:50103", 2], ["n3:50103", 2.05]]);
  const load = new Map<number, number>([[cands[0].nsip4, 5], [cands[1].nsip4, 1], [cands[2].nsip4, 0]]);
  const b = new Balancer({
    random: seededRandom(1),
    rttOf: (n) => rtt.get(n),
    loadOf: (e) => load.get(e.nsip4) ?? 0,
  });
  // Exact ties only by default: n1 and n2 tie at 2 ms; n2 has fewer flows.
  assertEquals(b.chooseFrom("Closest", 7, cands)?.instance, 1);
  // Equal load → rotation between the tied ones.
  load.set(cands[0].nsip4, 1);
  assertEquals([0, 1, 2, 3].map(() => b.chooseFrom("Closest", 7, cands)?.instance), [0, 1, 0, 1]);
  // With a 0.1 ms tie window n3 (2.05 ms, no flows) joins the tie and wins on load.
  const wide = new Balancer({
    random: seededRandom(1),
    rttOf: (n) => rtt.get(n),
    loadOf: (e) => load.get(e.nsip4) ?? 0,
    rttTieMs: 0.1,
  });
  assertEquals(wide.chooseFrom("Closest", 7, cands)?.instance, 2);
  // Without loadOf, ties rotate.
  const noLoad = new Balancer({ random: seededRandom(1), rttOf: (n) => rtt.get(n) });
  assertEquals([0, 1, 2].map(() => noLoad.chooseFrom("Closest", 7, cands)?.instance), [0, 1, 0]);
});

Deno.test("rotation state is bounded", () => {
  const b = new Balancer({ random: seededRandom(1), maxServices: 3 });
  const cands = [inst(0), inst(1)];
  for (let k = 0; k < 10; k++) b.chooseFrom("RoundRobin", k, cands);
  assertEquals(b.tracked, 3);
  b.forget(9);
  assertEquals(b.tracked, 2);
  // A forgotten ServiceIP restarts at the smallest nsip.
  assertEquals(b.chooseFrom("RoundRobin", 0, cands)?.instance, 0);
});

Deno.test("shared rotation: Balancers in several workers rotate as one, per ServiceIP (and alone without it)", () => {
  const cands = [inst(0), inst(1), inst(2)];
  const buf = SharedRotation.create(16);
  const workers = [0, 1].map(() =>
    new Balancer({ random: seededRandom(1), shared: new SharedRotation(buf) })
  );
  const picks: number[] = [];
  for (let k = 0; k < 9; k++) picks.push(workers[k % 2].chooseFrom("RoundRobin", RR, cands)!.instance);
  assertEquals(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
  // Another ServiceIP has its own position (also a string key, as IPv6 keys are).
  assertEquals(workers[1].chooseFrom("RoundRobin", "fdff:2000::1", cands)!.instance, 0);
  assertEquals(workers[0].chooseFrom("RoundRobin", RR, cands)!.instance, 0);
  const alone = [0, 1].map(() => new Balancer({ random: seededRandom(1) }));
  const own: number[] = [];
  for (let k = 0; k < 4; k++) own.push(alone[k % 2].chooseFrom("RoundRobin", RR, cands)!.instance);
  assertEquals(own, [0, 0, 1, 1]); // what per-worker rotation would do
  // A full shared area falls back to the Balancer's own position instead of failing.
  const tiny = new SharedRotation(SharedRotation.create(16));
  for (let k = 1; k <= 40; k++) tiny.slot(k * 7919);
  const b = new Balancer({ random: seededRandom(1), shared: tiny });
  assert(b.chooseFrom("RoundRobin", 0x0a1e0001, cands) !== undefined);
});

Deno.test("closest hysteresis: switches only for a node better by ≥ 10 % and ≥ 0.2 ms", () => {
  const cands = [inst(0, "n1"), inst(1, "n2")];
  const rtt = new Map<string, number>([["n1:50103", 10], ["n2:50103", 12]]);
  const b = new Balancer({ random: seededRandom(1), rttOf: (n) => rtt.get(n) });
  const pick = () => b.chooseFrom("Closest", 9, cands)?.instance;
  assertEquals(pick(), 0);
  assertEquals(b.preferred(9), "n1:50103");
  // n2 now slightly better (9.5 < 10, only 5 %): new flows stay on n1, again and again.
  rtt.set("n2:50103", 9.5);
  assertEquals([pick(), pick(), pick()], [0, 0, 0]);
  // 9.0 is 10 % and 1 ms better: switch.
  rtt.set("n2:50103", 9.0);
  assertEquals(pick(), 1);
  // Back and forth around the switch point does not flap: n1 must now beat n2 by the margin.
  rtt.set("n1:50103", 8.5);
  assertEquals(pick(), 1);
  rtt.set("n1:50103", 8.0);
  assertEquals(pick(), 0);
  // Sub-millisecond paths: 10 % is not enough without 0.2 ms.
  rtt.set("n1:50103", 0.5);
  rtt.set("n2:50103", 0.35);
  assertEquals(pick(), 0);
  rtt.set("n2:50103", 0.29);
  assertEquals(pick(), 1);
  // The preferred node's RTT becomes unknown (probes lost): the known one takes over.
  rtt.delete("n2:50103");
  assertEquals(pick(), 0);
  // A local candidate (RTT 0) wins at once, even within the margin.
  const local = new Balancer({
    random: seededRandom(1),
    rttOf: (n) => n === "n2:50103" ? 0 : 0.1,
  });
  assertEquals(local.chooseFrom("Closest", 1, cands)?.instance, 1);
});

Deno.test("closest hysteresis: ties on the preferred node go to the fewest active flows", () => {
  const cands = [inst(0, "n1"), inst(1, "n2"), inst(2, "n2")];
  const rtt = new Map<string, number>([["n1:50103", 5], ["n2:50103", 1]]);
  const load = new Map<number, number>([[cands[1].nsip4, 3], [cands[2].nsip4, 1]]);
  const b = new Balancer({
    random: seededRandom(1),
    rttOf: (n) => rtt.get(n),
    loadOf: (e) => load.get(e.nsip4) ?? 0,
  });
  assertEquals(b.chooseFrom("Closest", 3, cands)?.instance, 2);
  load.set(cands[2].nsip4, 4);
  assertEquals(b.chooseFrom("Closest", 3, cands)?.instance, 1);
  // n1 (no flows at all) is not a tie: it is 4 ms further.
  assertEquals(b.chooseFrom("Closest", 3, cands)?.instance, 1);
});

Deno.test("health: RR, Random and Closest skip unusable candidates while any is usable", () => {
  const cands = [inst(0, "n1"), inst(1, "n2"), inst(2, "n3")];
  const down = new Set<string>(["n3:50103"]);
  const rtt = new Map<string, number>([["n1:50103", 9], ["n2:50103", 8], ["n3:50103", 1]]);
  const b = new Balancer({
    random: seededRandom(3),
    rttOf: (n) => rtt.get(n),
    usable: (e) => !down.has(nodeKeyOf(e)),
  });
  // RR alternates among the rest.
  assertEquals([0, 1, 2, 3, 4, 5].map(() => b.chooseFrom("RoundRobin", 1, cands)?.instance), [
    0,
    1,
    0,
    1,
    0,
    1,
  ]);
  assertEquals(b.skipped, 6);
  // Random never picks the down one.
  const seen = new Set<number>();
  for (let k = 0; k < 300; k++) seen.add(b.chooseFrom("Random", 2, cands)!.instance);
  assertEquals([...seen].sort(), [0, 1]);
  // Closest takes the nearest usable node (n3 is nearer but down).
  assertEquals(b.chooseFrom("Closest", 3, cands)?.instance, 1);
  // Up again → RR rotates over all three, Closest moves to n3 (better by far).
  down.clear();
  assertEquals([0, 1, 2].map(() => b.chooseFrom("RoundRobin", 1, cands)?.instance), [2, 0, 1]);
  assertEquals(b.chooseFrom("Closest", 3, cands)?.instance, 2);
  // Everything down: behave as before (try them all).
  for (const c of cands) down.add(nodeKeyOf(c));
  assertEquals([0, 1, 2].map(() => b.chooseFrom("RoundRobin", 1, cands)?.instance), [2, 0, 1]);
  // Instance IPs have one candidate: kept even when unusable.
  assertEquals(b.chooseFrom("Instance", 4, [cands[0]])?.instance, 0);
});
