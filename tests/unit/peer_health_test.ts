import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { PeerHealthArea } from "../../src/proxy/peer_health.ts";

Deno.test("peer health area: the prober publishes, other workers read the same state and RTT", () => {
  const buf = PeerHealthArea.create(16);
  const writer = new PeerHealthArea(buf);
  const reader = new PeerHealthArea(buf);
  assertEquals([reader.state("10.0.0.2:50103"), reader.isDown("10.0.0.2:50103")], ["unknown", false]);
  assertEquals(reader.rttMs("10.0.0.2:50103"), undefined);
  writer.publish("10.0.0.2:50103", "up", 1.25);
  writer.publish("[fd00::3]:50103", "down", undefined);
  assertEquals([reader.state("10.0.0.2:50103"), reader.rttMs("10.0.0.2:50103")], ["up", 1.25]);
  assertEquals([reader.isDown("[fd00::3]:50103"), reader.rttMs("[fd00::3]:50103")], [true, undefined]);
  writer.publish("[fd00::3]:50103", "up", 30.5);
  assertEquals([reader.state("[fd00::3]:50103"), reader.rttMs("[fd00::3]:50103")], ["up", 30.5]);
  // Many peers in a small area: each keeps its own record until the area is full, then reads unknown.
  for (let i = 0; i < 14; i++) writer.publish(`10.1.0.${i}:50103`, "down", i);
  let known = 0;
  for (let i = 0; i < 14; i++) if (reader.isDown(`10.1.0.${i}:50103`)) known++;
  assertEquals(known, 14);
  writer.publish("10.9.9.9:50103", "down", 1); // no room left: not recorded
  assertEquals(reader.state("10.9.9.9:50103"), "unknown");
  assertThrows(() => PeerHealthArea.create(10), RangeError);
});
