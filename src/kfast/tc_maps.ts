/**
 * Byte layouts of the tc fast path's map keys and values (bpf/kfast.c's structs; addresses in
 * network order, ports in network order in keys and host order in values, as the program reads them).
 * Pure: encoders and decoders only.
 *
 * @example
 * ```ts
 * import { decodeFlowKey, encodeFlowKey } from "./tc_maps.ts";
 * const k = encodeFlowKey({ proto: 6, saddr: "10.0.0.2", sport: 40000, daddr: "10.30.0.1", dport: 80 });
 * console.log(decodeFlowKey(k).daddr); // "10.30.0.1"
 * ```
 */
import { formatIPv4, parseIPv4 } from "../addr/mod.ts";

/** A TCP (6) or UDP (17) IPv4 flow as the hook sees it. */
export interface TcFlow {
  proto: 6 | 17;
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
}

/** Sending a flow: translate to `newSaddr`→`newDaddr`, encapsulate local→peer. */
export interface TcEgress {
  newSaddr: string;
  newDaddr: string;
  localIp: string;
  localPort: number;
  peerIp: string;
  peerPort: number;
  /** Underlay device (bpf_redirect_neigh target). */
  ifindex: number;
  /** {@link EGRESS_PEER_READY} or 0 (default). */
  flags?: number;
  /** The chosen instance's InstanceIP, the answers' source (the program checks the peer's readiness). */
  replySaddr?: string;
}

/** Receiving a flow: rewrite source / destination (undefined: keep) and deliver locally. */
export interface TcIngress {
  newSaddr?: string;
  newDaddr?: string;
}

/** A local instance: its host-side veth and the MACs of frames towards it. */
export interface TcLocal {
  ifindex: number;
  mac: string;
  gwMac: string;
}

/** Packet / byte counters kept in a flow entry by the program. */
export interface TcCounters {
  packets: number;
  bytes: number;
}

export const FLOW_KEY_BYTES = 16;
export const EGRESS_BYTES = 48;
/** `egress_val.flags`: the peer carries the flow in its kernel too (GSO super-packets may go). */
export const EGRESS_PEER_READY = 1;
export const INGRESS_BYTES = 32;
export const LOCAL_BYTES = 16;

function port(p: number): number {
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new RangeError(`port ${p}`);
  return p;
}

function ip4(b: Uint8Array, at: number, ip: string | undefined): void {
  if (ip !== undefined) new DataView(b.buffer, b.byteOffset).setUint32(at, parseIPv4(ip)); // network order
}

function readIp4(b: Uint8Array, at: number): string {
  return formatIPv4(new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at));
}

function mac(b: Uint8Array, at: number, m: string): void {
  const parts = m.split(":");
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) throw new RangeError(`MAC ${m}`);
  parts.forEach((p, i) => b[at + i] = parseInt(p, 16));
}

/** `struct flow_key`. */
export function encodeFlowKey(f: TcFlow): Uint8Array {
  const b = new Uint8Array(FLOW_KEY_BYTES);
  const v = new DataView(b.buffer);
  ip4(b, 0, f.saddr);
  ip4(b, 4, f.daddr);
  v.setUint16(8, port(f.sport));
  v.setUint16(10, port(f.dport));
  if (f.proto !== 6 && f.proto !== 17) throw new RangeError(`protocol ${f.proto}`);
  b[12] = f.proto;
  return b;
}

/** Inverse of {@link encodeFlowKey}. */
export function decodeFlowKey(b: Uint8Array): TcFlow {
  if (b.length !== FLOW_KEY_BYTES) throw new RangeError("flow key size");
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const proto = b[12];
  if (proto !== 6 && proto !== 17) throw new RangeError(`protocol ${proto}`);
  return {
    proto,
    saddr: readIp4(b, 0),
    daddr: readIp4(b, 4),
    sport: v.getUint16(8),
    dport: v.getUint16(10),
  };
}

/** `struct egress_val` (counters zero). */
export function encodeEgress(e: TcEgress): Uint8Array {
  const b = new Uint8Array(EGRESS_BYTES);
  const v = new DataView(b.buffer);
  ip4(b, 0, e.newSaddr);
  ip4(b, 4, e.newDaddr);
  ip4(b, 8, e.localIp);
  ip4(b, 12, e.peerIp);
  v.setUint16(16, port(e.localPort), true);
  v.setUint16(18, port(e.peerPort), true);
  v.setUint32(20, e.ifindex, true);
  v.setUint32(24, e.flags ?? 0, true);
  ip4(b, 28, e.replySaddr);
  return b;
}

/** `struct ingress_val` (counters zero). */
export function encodeIngress(i: TcIngress): Uint8Array {
  const b = new Uint8Array(INGRESS_BYTES);
  ip4(b, 0, i.newSaddr);
  ip4(b, 4, i.newDaddr);
  return b;
}

/** `struct local_val`. */
export function encodeLocal(l: TcLocal): Uint8Array {
  const b = new Uint8Array(LOCAL_BYTES);
  new DataView(b.buffer).setUint32(0, l.ifindex, true);
  mac(b, 4, l.mac);
  mac(b, 10, l.gwMac);
  return b;
}

/** The counters of an egress (offset 24) or ingress (offset 8) value. */
export function decodeCounters(b: Uint8Array): TcCounters {
  const at = b.length === EGRESS_BYTES ? 32 : b.length === INGRESS_BYTES ? 8 : -1;
  if (at < 0) throw new RangeError("not a flow value");
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { packets: Number(v.getBigUint64(at, true)), bytes: Number(v.getBigUint64(at + 8, true)) };
}

/**
 * Of an ingress value's packets, those the peer's kernel program sent (outer UDP checksum 0; the
 * peer's userspace always fills it): the peer carries the flow in its kernel.
 */
export function decodeIngressKernelPackets(b: Uint8Array): number {
  if (b.length !== INGRESS_BYTES) throw new RangeError("ingress value size");
  return Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(24, true));
}

/** IPv4 address `ip` as the 4-byte key of the locals / peers maps. */
export function ipKey(ip: string): Uint8Array {
  const b = new Uint8Array(4);
  ip4(b, 0, ip);
  return b;
}

/** A u32 (little-endian) map value. */
export function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, true);
  return b;
}

/** `struct config` (map nm_kf_config[0]): our tunnel port, the instances' bridge ifindex (0: none). */
export function encodeConfig(port: number, bridgeIfindex: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, port, true);
  v.setUint32(4, bridgeIfindex, true);
  return b;
}

/** Inverse of {@link encodeEgress} (counters apart). */
export function decodeEgress(b: Uint8Array): TcEgress {
  if (b.length !== EGRESS_BYTES) throw new RangeError("egress value size");
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    newSaddr: readIp4(b, 0),
    newDaddr: readIp4(b, 4),
    localIp: readIp4(b, 8),
    peerIp: readIp4(b, 12),
    localPort: v.getUint16(16, true),
    peerPort: v.getUint16(18, true),
    ifindex: v.getUint32(20, true),
    flags: v.getUint32(24, true),
    ...(v.getUint32(28) !== 0 ? { replySaddr: readIp4(b, 28) } : {}),
  };
}

/** Sums a per-CPU array value (`valueBytes` = 8 × CPUs) into one u64 as a number. */
export function sumPerCpu(b: Uint8Array): number {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let n = 0n;
  for (let at = 0; at + 8 <= b.length; at += 8) n += v.getBigUint64(at, true);
  return Number(n);
}

/** Sets `flags` in an egress value in place (the counters stay). */
export function setEgressFlags(b: Uint8Array, flags: number): void {
  if (b.length !== EGRESS_BYTES) throw new RangeError("egress value size");
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(24, flags >>> 0, true);
}
