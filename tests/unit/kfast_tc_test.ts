import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { BpfElfError, readBpfObject } from "../../src/kfast/bpf_elf.ts";
import { TC_OBJECT } from "../../src/kfast/tc_prog.gen.ts";
import {
  decodeCounters,
  decodeFlowKey,
  EGRESS_BYTES,
  encodeEgress,
  encodeFlowKey,
  encodeIngress,
  encodeLocal,
  ipKey,
} from "../../src/kfast/tc_maps.ts";
import { embed } from "../../scripts/bpf_embed.ts";
import { tcEntriesOf } from "../../src/kfast/tc_flows.ts";
import { planKfast } from "../../src/kfast/plan.ts";
import type { TableEntry } from "../../src/table/entry.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";
import { NetCfgSchema } from "../../src/config/schema.ts";

const root = new URL("../../", import.meta.url);

async function sha256Hex(b: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(b)));
  return [...d].map((x) => x.toString(16).padStart(2, "0")).join("");
}

function hasClang(): boolean {
  try {
    return new Deno.Command("clang", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

Deno.test("tc fast path: the committed programs were generated from bpf/kfast.c as it is", async () => {
  const src = await Deno.readFile(new URL("bpf/kfast.c", root));
  assertEquals(TC_OBJECT.sourceSha256, await sha256Hex(src), "run scripts/build_bpf.sh");
  assertEquals(TC_OBJECT.programs.map((p) => p.name).sort(), ["nm_kf_in", "nm_kf_out"]);
  assertEquals(TC_OBJECT.maps.length, 8);
});

Deno.test({
  name: "tc fast path: clang reproduces the committed bytes (skipped without clang)",
  ignore: !hasClang(),
  fn: async () => {
    const out = await Deno.makeTempFile({ suffix: ".ts" });
    try {
      const r = await new Deno.Command("bash", {
        args: [new URL("scripts/build_bpf.sh", root).pathname, out],
        env: { DENO: Deno.execPath() },
      }).output();
      assert(r.success, new TextDecoder().decode(r.stderr));
      const committed = await Deno.readTextFile(new URL("src/kfast/tc_prog.gen.ts", root));
      assertEquals(await Deno.readTextFile(out), committed);
    } finally {
      await Deno.remove(out);
    }
  },
});

Deno.test("tc fast path: the ELF reader refuses what it cannot load", async () => {
  assertThrows(() => readBpfObject(new Uint8Array(10)), BpfElfError);
  assertThrows(() => readBpfObject(new TextEncoder().encode("x".repeat(100))), BpfElfError);
  // A truncated section table is refused, not read past the end.
  const fake = new Uint8Array(64);
  fake.set([0x7f, 0x45, 0x4c, 0x46, 2, 1]);
  new DataView(fake.buffer).setUint16(18, 247, true);
  new DataView(fake.buffer).setBigUint64(0x28, 1000n, true);
  new DataView(fake.buffer).setUint16(0x3a, 64, true);
  new DataView(fake.buffer).setUint16(0x3c, 3, true);
  assertThrows(() => readBpfObject(fake), BpfElfError);
  await Promise.resolve();
  // The embedder refuses an object it cannot read (clear error, nothing written).
  let failed = false;
  await embed(new Uint8Array(8), new Uint8Array(), "x.c").catch(() => failed = true);
  assert(failed);
});

Deno.test("tc fast path: map layouts encode and decode", () => {
  const f = { proto: 6 as const, saddr: "10.19.1.2", sport: 40000, daddr: "10.30.0.1", dport: 80 };
  const k = encodeFlowKey(f);
  assertEquals([...k.subarray(0, 4)], [10, 19, 1, 2]);
  assertEquals([...k.subarray(8, 10)], [0x9c, 0x40]); // network order
  assertEquals(decodeFlowKey(k), f);
  assertThrows(() => encodeFlowKey({ ...f, sport: 70000 }), RangeError);
  assertThrows(() => encodeFlowKey({ ...f, proto: 1 as unknown as 6 }), RangeError);
  const e = encodeEgress({
    newSaddr: "10.30.0.11",
    newDaddr: "10.19.2.2",
    localIp: "192.168.1.1",
    peerIp: "192.168.1.2",
    localPort: 50103,
    peerPort: 50103,
    ifindex: 7,
  });
  assertEquals(e.length, EGRESS_BYTES);
  assertEquals(new DataView(e.buffer).getUint16(16, true), 50103); // host order in values
  assertEquals(decodeCounters(e), { packets: 0, bytes: 0 });
  assertEquals([...encodeIngress({ newSaddr: "10.30.0.1" }).subarray(0, 8)], [10, 30, 0, 1, 0, 0, 0, 0]);
  assertEquals([
    ...encodeLocal({ ifindex: 3, mac: "02:00:00:00:00:01", gwMac: "aa:bb:cc:dd:ee:ff" }).subarray(4),
  ], [
    2,
    0,
    0,
    0,
    0,
    1,
    0xaa,
    0xbb,
    0xcc,
    0xdd,
    0xee,
    0xff,
  ]);
  assertThrows(() => encodeLocal({ ifindex: 3, mac: "02:00", gwMac: "aa:bb:cc:dd:ee:ff" }), RangeError);
  assertEquals([...ipKey("1.2.3.4")], [1, 2, 3, 4]);
});

Deno.test("tc fast path: a pinned flow's two entries, as the client's and as the server's node", () => {
  const ip = (s: string) => parseIPv4(s);
  const node = (local: string) => ({
    localIp: local,
    localPort: 50103,
    peerPort: (p: string) => p.startsWith("192.168.77.") ? 50103 : undefined,
    ifindexTo: () => 4,
  });
  // Client node: nsip 10.19.1.2 (InstanceIP .11) dials the ServiceIP; the chosen instance is on 192.168.77.2.
  const client = tcEntriesOf(
    {
      proto: 6,
      src: ip("10.19.1.2"),
      sport: 40000,
      dst: ip("10.30.0.1"),
      dport: 80,
      chosen: ip("10.19.2.2"),
    },
    {
      snat: new Map([[ip("10.19.1.2"), ip("10.30.0.11")]]),
      instances: new Map([[ip("10.19.2.2"), ip("10.30.0.12")]]),
      remote: new Map([[ip("10.19.2.2"), "192.168.77.2"]]),
    },
    node("192.168.77.1"),
  )!;
  assertEquals(client.egress.flow, {
    proto: 6,
    saddr: "10.19.1.2",
    sport: 40000,
    daddr: "10.30.0.1",
    dport: 80,
  });
  assertEquals(client.egress.value.newSaddr, "10.30.0.11");
  assertEquals(client.egress.value.newDaddr, "10.19.2.2");
  assertEquals(client.egress.value.peerIp, "192.168.77.2");
  // Answers come from the server's InstanceIP and get the ServiceIP back.
  assertEquals(client.ingress.flow, {
    proto: 6,
    saddr: "10.30.0.12",
    sport: 80,
    daddr: "10.19.1.2",
    dport: 40000,
  });
  assertEquals(client.ingress.value, { newSaddr: "10.30.0.1" });
  // Server node: its replies dial the client's InstanceIP (an Instance ServiceIP): no restore needed.
  const server = tcEntriesOf(
    {
      proto: 6,
      src: ip("10.19.2.2"),
      sport: 80,
      dst: ip("10.30.0.11"),
      dport: 40000,
      chosen: ip("10.19.1.2"),
    },
    {
      snat: new Map([[ip("10.19.2.2"), ip("10.30.0.12")]]),
      instances: new Map([[ip("10.19.1.2"), ip("10.30.0.11")]]),
      remote: new Map([[ip("10.19.1.2"), "192.168.77.1"]]),
    },
    node("192.168.77.2"),
  )!;
  assertEquals(server.ingress.value, {});
  // What the server sends is what the client's ingress entry expects, and vice versa.
  assertEquals(
    { s: server.egress.value.newSaddr, d: server.egress.value.newDaddr },
    { s: client.ingress.flow.saddr, d: client.ingress.flow.daddr },
  );
  assertEquals(
    { s: client.egress.value.newSaddr, d: client.egress.value.newDaddr },
    { s: server.ingress.flow.saddr, d: server.ingress.flow.daddr },
  );
  // Not carried: ICMP, a sender that is not local, a peer of unknown port.
  const plan = { snat: new Map(), instances: new Map(), remote: new Map() };
  assertEquals(
    tcEntriesOf({ proto: 1, src: 1, sport: 0, dst: 2, dport: 0, chosen: 3 }, plan, node("192.168.77.1")),
    undefined,
  );
  assertEquals(
    tcEntriesOf({ proto: 6, src: 1, sport: 1, dst: 2, dport: 2, chosen: 3 }, plan, node("192.168.77.1")),
    undefined,
  );
});

Deno.test("tc fast path: KernelFastPath accepts tc and vxlan, and stays backward compatible", () => {
  const p = (v: unknown) => NetCfgSchema.parse({ KernelFastPath: v }).KernelFastPath;
  assertEquals(p("tc"), "tc");
  assertEquals(p("vxlan"), true);
  assertEquals(p(true), true);
  assertEquals(p("false"), false);
  assertEquals(NetCfgSchema.parse({}).KernelFastPath, false);
  assertThrows(() => p("ebpf"));
});

Deno.test("tc fast path: the plan lists every remote instance's node, carried or not (running flows stay)", () => {
  const e: TableEntry = {
    job: "a.b.c.d",
    instance: 0,
    nodeIp: "192.168.1.2",
    nodePort: 50103,
    nsip4: parseIPv4("10.19.2.2"),
    serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }, {
      kind: "Instance",
      v4: parseIPv4("10.30.0.12"),
    }],
  };
  // The peer stopped answering (not in the capable set): nothing carried, but the instance is known.
  const down = planKfast({ entries: [e], isLocal: () => false, peers: new Set() });
  assertEquals(down.services.size, 0);
  assertEquals(down.nodes.get(parseIPv4("10.19.2.2")), "192.168.1.2");
  const up = planKfast({ entries: [e], isLocal: () => false, peers: new Set(["192.168.1.2"]) });
  assertEquals(up.instances.get(parseIPv4("10.19.2.2")), parseIPv4("10.30.0.12"));
});
