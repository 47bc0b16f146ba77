import { assertEquals } from "../helpers/assert.ts";
import { kernelUse, parseUseFlows } from "../../src/kfast/usage.ts";

/** A conntrack -L line: original tuple from `src`, `bytes` each way, `mark`. */
const line = (src: string, sport: number, dst: string, bytes: number, mark: number) =>
  `tcp      6 431999 ESTABLISHED src=${src} dst=${dst} sport=${sport} dport=80 packets=3 bytes=${bytes} ` +
  `src=10.18.0.66 dst=10.30.0.10 sport=80 dport=${sport} packets=2 bytes=${bytes} [ASSURED] mark=${mark} use=1`;
const OURS = 0x4e4b0000, PEER = 0x4e4b0002;

Deno.test("kfast use: our flows name the dialled ServiceIP, a peer's the sender's InstanceIP; others ignored", () => {
  const flows = parseUseFlows([
    line("10.18.0.2", 1, "10.30.0.1", 50, OURS),
    line("10.30.0.6", 2, "10.18.0.66", 70, PEER),
    line("10.18.0.3", 3, "10.30.0.1", 10, 0),
    line("10.18.0.4", 4, "10.30.0.1", 10, 0x12340000),
    "conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.",
  ].join("\n"));
  assertEquals(flows.map((f) => [f.addr, f.bytes]), [["10.30.0.1", 100], ["10.30.0.6", 140]]);
  assertEquals(flows[0].key, "6 10.18.0.2 1 10.30.0.1 80");
});

Deno.test("kfast use: an address counts as used when one of its flows is new or moved bytes, once", () => {
  const t1 = [line("10.18.0.2", 1, "10.30.0.1", 100, OURS), line("10.18.0.2", 2, "10.30.0.1", 50, OURS)];
  const a = kernelUse(parseUseFlows(t1.join("\n")), new Map());
  assertEquals(a.used, ["10.30.0.1"]);
  // Nothing moved: nothing used (an idle connection, a TIME_WAIT entry).
  const b = kernelUse(parseUseFlows(t1.join("\n")), a.bytes);
  assertEquals(b.used, []);
  // One flow moved bytes; the ended one is forgotten; a new flow counts.
  const t3 = [line("10.18.0.2", 1, "10.30.0.1", 180, OURS), line("10.18.0.2", 4, "10.30.0.9", 60, OURS)];
  const c = kernelUse(parseUseFlows(t3.join("\n")), b.bytes);
  assertEquals(c.used.sort(), ["10.30.0.1", "10.30.0.9"]);
  assertEquals(c.bytes.size, 2);
});

Deno.test("kfast use: without conntrack accounting (bytes 0) a live entry alone counts as use", () => {
  const t = line("10.18.0.2", 1, "10.30.0.1", 0, OURS);
  const a = kernelUse(parseUseFlows(t), new Map());
  assertEquals(kernelUse(parseUseFlows(t), a.bytes).used, ["10.30.0.1"]);
  assertEquals(kernelUse([], a.bytes).used, []);
});
