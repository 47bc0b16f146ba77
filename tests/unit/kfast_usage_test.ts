import { assertEquals } from "../helpers/assert.ts";
import { kernelUse } from "../../src/kfast/usage.ts";
import type { KernelFlow } from "../../src/kfast/conntrack.ts";

const flow = (sport: number, dialled: string, bytes: number): KernelFlow => ({
  path: "kernel",
  version: 4,
  proto: 6,
  src: "10.18.0.2",
  sport,
  dialled,
  dport: 80,
  chosen: "10.18.0.66",
  senderIp: "10.30.0.6",
  node: "192.168.77.2:50103",
  packets: 1,
  bytes,
});

Deno.test("kfast use: a ServiceIP counts as used when one of its kernel flows is new or moved bytes, once", () => {
  const a = kernelUse(
    [flow(1, "10.30.0.1", 100), flow(2, "10.30.0.1", 50), flow(3, "10.30.0.4", 10)],
    new Map(),
  );
  assertEquals(a.used.sort(), ["10.30.0.1", "10.30.0.4"]);
  // Nothing moved: nothing used (an idle connection, a TIME_WAIT entry).
  const b = kernelUse(
    [flow(1, "10.30.0.1", 100), flow(2, "10.30.0.1", 50), flow(3, "10.30.0.4", 10)],
    a.bytes,
  );
  assertEquals(b.used, []);
  // One flow moved bytes; a flow that ended is forgotten; a new flow counts.
  const c = kernelUse([flow(1, "10.30.0.1", 180), flow(4, "10.30.0.9", 60)], b.bytes);
  assertEquals(c.used.sort(), ["10.30.0.1", "10.30.0.9"]);
  assertEquals([...c.bytes.keys()].length, 2);
});

Deno.test("kfast use: without conntrack accounting (bytes 0) a live entry alone counts as use", () => {
  const a = kernelUse([flow(1, "10.30.0.1", 0)], new Map());
  assertEquals(kernelUse([flow(1, "10.30.0.1", 0)], a.bytes).used, ["10.30.0.1"]);
  assertEquals(kernelUse([], a.bytes).used, []);
});
