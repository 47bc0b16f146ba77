/**
 * Two nodes' packet loops without root (tests/unit/loop_test.ts, secure_loop_test.ts): each an engine
 * + an in-memory TUN side + the real UDP bind over an in-memory wire, with the standard two-job table
 * (the client on {@link A}, the server on {@link B} behind RR 10.30.0.1).
 *
 * @example
 * ```ts
 * import { loopPair } from "./loop_pair.ts";
 * import { buildIPv4Udp } from "./packets.ts";
 * const [a, b] = loopPair();
 * a.tun.push(buildIPv4Udp({ src: "10.18.0.66", dst: "10.30.0.1", srcPort: 5000, dstPort: 53 }));
 * a.loop.drainTun(1);
 * b.loop.drainBind(2); // b.tun.written: the datagram, translated to the server's namespace IP
 * ```
 */
import { buildIPv4Tcp, ip4 } from "./packets.ts";
import { MemoryTun, MemoryWire } from "./memory_seams.ts";
import { Engine, type EngineConfig } from "../../src/proxy/engine.ts";
import { PacketLoop } from "../../src/proxy/loop.ts";
import { UdpBind } from "../../src/proxy/bind.ts";
import type { FromWorker } from "../../src/proxy/messages.ts";
import { parseQueryResult } from "../../src/table/query_result.ts";
import { TranslationTable } from "../../src/table/table.ts";
import type { TableEntry } from "../../src/table/entry.ts";
import { parsePrefix4, parsePrefix6 } from "../../src/addr/mod.ts";
import { VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4 } from "../../ffi/vnet.ts";

/** Node A's underlay address (the client's node). */
export const A = "192.0.2.1";
/** Node B's underlay address (the server's node). */
export const B = "192.0.2.2";
/** The binds' path MTU. */
export const MTU = 1400;

/** An Oakestra instance row (namespace IP, host, InstanceIP and optionally an RR ServiceIP). */
function inst(nsip: string, host: string, iip: string, rr?: string) {
  const sips: Array<Record<string, string>> = [];
  if (rr) sips.push({ IpType: "RR", Address: rr, Address_v6: "fdff:2000::1" });
  sips.push({ IpType: "instance_ip", Address: iip, Address_v6: "fdff::" + iip.split(".")[3] });
  return {
    instance_number: 0,
    instance_ip: iip,
    instance_ip_v6: "fdff::" + iip.split(".")[3],
    namespace_ip: nsip,
    namespace_ip_v6: "fc00::" + nsip.split(".")[3],
    host_ip: host,
    host_port: 50103,
    service_ip: sips,
  };
}

/** The client on A (10.18.0.66, InstanceIP 10.30.0.10). */
export const CLI = parseQueryResult({
  app_name: "a.b.cli.d",
  instance_list: [inst("10.18.0.66", A, "10.30.0.10")],
});
/** The server on B (10.18.0.130, InstanceIP 10.30.0.2) behind RR 10.30.0.1. */
export const WEB = parseQueryResult({
  app_name: "a.b.web.d",
  instance_list: [inst("10.18.0.130", B, "10.30.0.2", "10.30.0.1")],
});

/** A translation table holding `jobs`. */
export function tableOf(jobs: { job: string; entries: TableEntry[] }[] = [CLI, WEB]): TranslationTable {
  const t = new TranslationTable();
  for (const j of jobs) t.replaceJob(j.job, j.entries);
  return t;
}

/** One node's loop and its parts. */
export interface LoopNode {
  engine: Engine;
  tun: MemoryTun;
  wire: MemoryWire;
  bind: UdpBind;
  loop: PacketLoop;
  /** Messages the loop posted to its owner. */
  posted: FromWorker[];
}

/** A node at `self` with instance subnet `subnet` on `wire`. */
export function loopNode(
  self: string,
  subnet: string,
  wire: MemoryWire,
  t: TranslationTable = tableOf(),
  fast = false,
): LoopNode {
  const cfg: EngineConfig = {
    selfIp: self,
    selfPort: 50103,
    service4: parsePrefix4("10.30.0.0/16"),
    service6: parsePrefix6("fdff::/16"),
    subnet4: parsePrefix4(subnet),
    subnet6: parsePrefix6("fc00::/64"),
    seed: 1,
    fast,
    nodeId: self,
  };
  const engine = new Engine(cfg, t);
  const tun = new MemoryTun(engine);
  const bind = new UdpBind(wire, { mtu: MTU, counters: engine.counters, peers: engine.peers });
  const posted: FromWorker[] = [];
  return { engine, tun, wire, bind, loop: new PacketLoop(engine, tun, bind, (m) => posted.push(m)), posted };
}

/** Nodes A and B joined by an in-memory wire (A's table may differ: e.g. without the server's job). */
export function loopPair(fast = false, tableA: TranslationTable = tableOf()): [LoopNode, LoopNode] {
  const [wa, wb] = MemoryWire.pair(ip4(A), ip4(B));
  return [loopNode(A, "10.18.0.64/26", wa, tableA, fast), loopNode(B, "10.18.0.128/26", wb, tableOf(), fast)];
}

/** The payload of {@link pushSuperPacket}'s TCP super-packet (20000 bytes, a recognisable pattern). */
export const SUPER_PAYLOAD: Uint8Array = new Uint8Array(20000).map((_, k) => (k * 7 + 3) & 0xff);

/**
 * Puts one TCP super-packet (10.18.0.66:41000 → 10.30.0.1:80, {@link SUPER_PAYLOAD}, TSO with segments of
 * 1348 bytes and the checksum left to complete) on `tun`, as the kernel hands it over; returns its bytes.
 */
export function pushSuperPacket(tun: MemoryTun): Uint8Array {
  const pkt = buildIPv4Tcp({
    src: "10.18.0.66",
    dst: "10.30.0.1",
    srcPort: 41000,
    dstPort: 80,
    payload: SUPER_PAYLOAD,
    partial: true,
    tcpFlags: 0x18,
  });
  tun.push(pkt, {
    flags: VNET_F_NEEDS_CSUM,
    gsoType: VNET_GSO_TCPV4,
    gsoSize: 1348,
    csumStart: 20,
    csumOffset: 16,
  });
  return pkt;
}
