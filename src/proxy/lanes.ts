/**
 * Lanes: which data-plane worker handles a packet. With several workers (`DataPlaneWorkers`), an inner
 * flow must meet the same worker in both directions — the worker that reads it from the TUN (and
 * creates its flow, the only flow state the originating node keeps) must also get its replies from
 * the tunnel, and its packets must not be reordered across workers.
 *
 * The **lane key** of an inner IP packet is symmetric and survives the ServiceIP ↔ instance address
 * translation (ports and ICMP ids are never rewritten):
 * - TCP / UDP (unfragmented, IPv4 with any IHL, IPv6 without extension headers): `(srcPort + dstPort) & 0xffff`;
 * - ICMP / ICMPv6 echo request or reply: the echo identifier;
 * - anything else (fragments, other protocols, ICMP errors): 0.
 *
 * The lane is `laneHash(key) % workers` ({@link laneHash} mixes the bits). The same function runs in three places, kept equal by tests through
 * real traffic (`tests/netns/lanes_test.ts`):
 * - here, in TypeScript ({@link laneKey}, {@link datagramLane});
 * - on the multi-queue TUN, as an eBPF socket-filter program ({@link tunSteeringProgram}) the kernel
 *   runs per packet (`TUNSETSTEERINGEBPF`; the kernel takes the result as u16 modulo the queue count,
 *   which is why the key is 16 bits);
 * - on the tunnel's `SO_REUSEPORT` group, as a classic BPF program ({@link reuseportProgram}, data at
 *   the UDP payload) that finds the inner packet: a bare IP packet (raw mode), after the 8-byte FAST
 *   header, or after JUMBO chunk 0's 16 bytes. JUMBO chunks after the first carry no inner header:
 *   they are steered by the low 16 bits of the message id, which a sender puts the lane key in
 *   towards peers that announce `CAP_LANES` (a datagram run the kernel delivers at once goes by its
 *   first datagram; a JUMBO message may take two GSO sends, the second starting mid-message). An
 *   older peer's tail chunks land on any worker and that message is lost. Control datagrams go by
 *   the last byte of the nonce (HELLO, HELLO_ACK) or sequence number (PROBE, PROBE_REPLY), where
 *   each worker puts its index: a reply returns to the worker that asked, and a peer's worker k talks
 *   to our worker k — with equal worker counts the one that carries the same flows (so a JUMBO
 *   refusal reaches the worker sending them). SECURE data (0x19) goes by the lane key its header
 *   carries in clear; handshakes (0x16..0x18) to worker 0, which runs them (hs_host.ts).
 *
 * @example
 * ```ts
 * import { datagramLane, laneHash, laneKey } from "./lanes.ts";
 * const pkt = new Uint8Array(40); // an IPv4/TCP packet
 * const lane = laneHash(laneKey(pkt, 0, pkt.length)) % 4;
 * lane === datagramLane(pkt, 0, pkt.length, 4); // raw mode: the datagram is the packet
 * ```
 */

/** Most data-plane workers (TUN queues, tunnel sockets). */
export const MAX_LANES = 8;

const PROTO_ICMP = 1;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_ICMP6 = 58;

/** The lane key of the IP packet at `b[o .. o+len)` (see the module documentation). */
export function laneKey(b: Uint8Array, o: number, len: number): number {
  if (len < 1) return 0;
  const ver = b[o] >>> 4;
  let l4: number;
  let proto: number;
  if (ver === 4) {
    if (len < 20) return 0;
    if ((((b[o + 6] << 8) | b[o + 7]) & 0x3fff) !== 0) return 0; // a fragment (MF or offset)
    proto = b[o + 9];
    l4 = (b[o] & 0x0f) << 2;
  } else if (ver === 6) {
    if (len < 40) return 0;
    proto = b[o + 6];
    l4 = 40;
  } else return 0;
  if (proto === PROTO_TCP || proto === PROTO_UDP) {
    if (l4 + 4 > len) return 0;
    const sp = (b[o + l4] << 8) | b[o + l4 + 1];
    const dp = (b[o + l4 + 2] << 8) | b[o + l4 + 3];
    return (sp + dp) & 0xffff;
  }
  if (proto === PROTO_ICMP || proto === PROTO_ICMP6) {
    if (l4 + 6 > len) return 0;
    const t = b[o + l4];
    const echo = proto === PROTO_ICMP ? t === 8 || t === 0 : t === 128 || t === 129;
    return echo ? (b[o + l4 + 4] << 8) | b[o + l4 + 5] : 0;
  }
  return 0;
}

/**
 * Spreads lane keys over lanes: `(key × 0x9e3779b1 mod 2³²) >> 16`. The port sum alone would keep its
 * parity, and Linux prefers even source ports for `connect()`, so every client flow to an even port
 * would land on the same lane. 0 stays 0.
 */
export function laneHash(key: number): number {
  return Math.imul(key, 0x9e3779b1) >>> 16;
}

/** The lane of an inner IP packet among `lanes`. */
export function laneOf(b: Uint8Array, o: number, len: number, lanes: number): number {
  return lanes <= 1 ? 0 : laneHash(laneKey(b, o, len)) % lanes;
}

/** The lane (0..lanes-1) of a tunnel datagram's UDP payload `b[o .. o+len)`, as the reuseport program picks it. */
export function datagramLane(b: Uint8Array, o: number, len: number, lanes: number): number {
  if (lanes <= 1 || len < 1) return 0;
  const t = b[o];
  const hi = t >>> 4;
  if (hi === 4 || hi === 6) return laneOf(b, o, len, lanes);
  switch (t) {
    case 0x14: // FAST
      return len > 8 ? laneOf(b, o + 8, len - 8, lanes) : 0;
    case 0x15: // JUMBO: chunk 0 by its inner header, the others by the id's lane key (CAP_LANES)
      if (b[o + 1] === 0) return len > 16 ? laneOf(b, o + 16, len - 16, lanes) : 0;
      return len >= 8 ? laneHash((b[o + 6] << 8) | b[o + 7]) % lanes : 0;
    case 0x10: // HELLO, HELLO_ACK: the nonce's last byte
    case 0x11:
      return len >= 16 ? b[o + 15] % lanes : 0;
    case 0x12: // PROBE, PROBE_REPLY: the sequence number's last byte
    case 0x13:
      return len >= 8 ? b[o + 7] % lanes : 0;
    case 0x19: // SECURE data: the cleartext lane key of the sealed datagram's flow
      return len >= 4 ? laneHash((b[o + 2] << 8) | b[o + 3]) % lanes : 0;
    default:
      return 0;
  }
}

// ---- eBPF (TUN steering) ----

/** One eBPF instruction: opcode, dst/src registers, 16-bit offset, 32-bit immediate. */
type EInsn = [code: number, dst: number, src: number, off: number, imm: number];

function encodeE(prog: EInsn[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(prog.length * 8);
  const v = new DataView(out.buffer);
  prog.forEach(([code, dst, src, off, imm], i) => {
    v.setUint8(i * 8, code);
    v.setUint8(i * 8 + 1, (src << 4) | dst);
    v.setInt16(i * 8 + 2, off, true);
    v.setInt32(i * 8 + 4, imm, true);
  });
  return out;
}

/** Resolves label jumps: `{ j: [code, dst, imm], to: label }` entries become relative offsets. */
function assembleE(items: Array<EInsn | string | { j: [number, number, number]; to: string }>): EInsn[] {
  const at = new Map<string, number>();
  let n = 0;
  for (const it of items) {
    if (typeof it === "string") at.set(it, n);
    else n++;
  }
  const out: EInsn[] = [];
  for (const it of items) {
    if (typeof it === "string") continue;
    if (Array.isArray(it)) out.push(it);
    else {
      const target = at.get(it.to);
      if (target === undefined) throw new Error(`eBPF label ${it.to}`);
      out.push([it.j[0], it.j[1], 0, target - out.length - 1, it.j[2]]);
    }
  }
  return out;
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const E_MOV64_X = 0xbf;
const E_MOV64_K = 0xb7;
const E_RSH64_K = 0x77;
const E_LSH64_K = 0x67;
const E_AND64_K = 0x57;
const E_ADD64_X = 0x0f;
const E_LDABS_B = 0x30;
const E_LDABS_H = 0x28;
const E_LDIND_B = 0x50;
const E_LDIND_H = 0x48;
const E_MUL32_K = 0x24;
const E_RSH32_K = 0x74;
const E_JEQ_K = 0x15;
const E_JSET_K = 0x45;
const E_JA = 0x05;
const E_EXIT = 0x95;

/**
 * The TUN steering program (eBPF, `BPF_PROG_TYPE_SOCKET_FILTER`): returns {@link laneHash} of the
 * packet's {@link laneKey} (the TUN's skb starts at the IP header); the kernel takes it modulo the
 * queue count.
 * Legacy packet loads (`LD_ABS`/`LD_IND`, skb in r6) end the program with 0 when out of bounds.
 */
export function tunSteeringProgram(): Uint8Array<ArrayBuffer> {
  const R0 = 0, R1 = 1, R6 = 6, R7 = 7, R8 = 8, R9 = 9;
  const ld = (code: number, src: number, imm: number): EInsn => [code, 0, src, 0, imm];
  return encodeE(assembleE([
    [E_MOV64_X, R6, R1, 0, 0],
    ld(E_LDABS_B, 0, 0),
    [E_MOV64_X, R7, R0, 0, 0],
    [E_RSH64_K, R7, 0, 0, 4],
    { j: [E_JEQ_K, R7, 4], to: "v4" },
    { j: [E_JEQ_K, R7, 6], to: "v6" },
    "zero",
    [E_MOV64_K, R0, 0, 0, 0],
    [E_EXIT, 0, 0, 0, 0],
    "v4",
    ld(E_LDABS_H, 0, 6),
    { j: [E_JSET_K, R0, 0x3fff], to: "zero" },
    ld(E_LDABS_B, 0, 9),
    [E_MOV64_X, R8, R0, 0, 0],
    ld(E_LDABS_B, 0, 0),
    [E_AND64_K, R0, 0, 0, 0x0f],
    [E_LSH64_K, R0, 0, 0, 2],
    [E_MOV64_X, R7, R0, 0, 0],
    { j: [E_JA, 0, 0], to: "l4" },
    "v6",
    ld(E_LDABS_B, 0, 6),
    [E_MOV64_X, R8, R0, 0, 0],
    [E_MOV64_K, R7, 0, 0, 40],
    "l4",
    { j: [E_JEQ_K, R8, PROTO_TCP], to: "ports" },
    { j: [E_JEQ_K, R8, PROTO_UDP], to: "ports" },
    { j: [E_JEQ_K, R8, PROTO_ICMP], to: "icmp4" },
    { j: [E_JEQ_K, R8, PROTO_ICMP6], to: "icmp6" },
    { j: [E_JA, 0, 0], to: "zero" },
    "ports",
    ld(E_LDIND_H, R7, 0),
    [E_MOV64_X, R9, R0, 0, 0],
    ld(E_LDIND_H, R7, 2),
    [E_ADD64_X, R0, R9, 0, 0],
    [E_AND64_K, R0, 0, 0, 0xffff],
    { j: [E_JA, 0, 0], to: "mix" },
    "icmp4",
    ld(E_LDIND_B, R7, 0),
    { j: [E_JEQ_K, R0, 8], to: "echo" },
    { j: [E_JEQ_K, R0, 0], to: "echo" },
    { j: [E_JA, 0, 0], to: "zero" },
    "icmp6",
    ld(E_LDIND_B, R7, 0),
    { j: [E_JEQ_K, R0, 128], to: "echo" },
    { j: [E_JEQ_K, R0, 129], to: "echo" },
    { j: [E_JA, 0, 0], to: "zero" },
    "echo",
    ld(E_LDIND_H, R7, 4),
    "mix", // laneHash, in 32-bit ALU ops (upper half zeroed)
    [E_MUL32_K, R0, 0, 0, 0x9e3779b1 | 0],
    [E_RSH32_K, R0, 0, 0, 16],
    [E_EXIT, 0, 0, 0, 0],
  ]));
}

// ---- classic BPF (reuseport selection) ----

type CInsn = [code: number, jt: number, jf: number, k: number];
type CItem = CInsn | string | { c: number; k: number; t: string; f?: string } | { ja: string };

// Opcodes (linux/filter.h).
const C_LD_B_ABS = 0x30;
const C_LD_H_ABS = 0x28;
const C_LD_B_IND = 0x50;
const C_LD_H_IND = 0x48;
const C_LD_MEM = 0x60;
const C_LDX_MEM = 0x61;
const C_ST = 0x02;
const C_LDX_IMM = 0x01;
const C_TAX = 0x07;
const C_TXA = 0x87;
const C_ADD_K = 0x04;
const C_ADD_X = 0x0c;
const C_AND_K = 0x54;
const C_LSH_K = 0x64;
const C_RSH_K = 0x74;
const C_MOD_K = 0x94;
const C_MUL_K = 0x24;
const C_JA = 0x05;
const C_JEQ_K = 0x15;
const C_JSET_K = 0x45;
const C_RET_K = 0x06;
const C_RET_A = 0x16;

function assembleC(items: CItem[]): Uint8Array<ArrayBuffer> {
  const at = new Map<string, number>();
  let n = 0;
  for (const it of items) {
    if (typeof it === "string") at.set(it, n);
    else n++;
  }
  const rel = (label: string | undefined, i: number): number => {
    if (label === undefined) return 0;
    const t = at.get(label);
    if (t === undefined || t <= i) throw new Error(`cBPF label ${label}: must be ahead`);
    const d = t - i - 1;
    if (d > 255) throw new Error("cBPF jump too far");
    return d;
  };
  const out: CInsn[] = [];
  for (const it of items) {
    if (typeof it === "string") continue;
    const i = out.length;
    if (Array.isArray(it)) out.push(it);
    else if ("ja" in it) out.push([C_JA, 0, 0, rel(it.ja, i)]);
    else out.push([it.c, rel(it.t, i), rel(it.f, i), it.k]);
  }
  const bytes = new Uint8Array(out.length * 8);
  const v = new DataView(bytes.buffer);
  out.forEach(([code, jt, jf, k], i) => {
    v.setUint16(i * 8, code, true);
    v.setUint8(i * 8 + 2, jt);
    v.setUint8(i * 8 + 3, jf);
    v.setUint32(i * 8 + 4, k >>> 0, true);
  });
  return bytes;
}

/**
 * The reuseport selection program (classic BPF) for `lanes` sockets: returns {@link datagramLane} of
 * the datagram (data at the UDP payload). Scratch: M[1] protocol, M[2] a port.
 */
export function reuseportProgram(lanes: number): Uint8Array<ArrayBuffer> {
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > MAX_LANES) {
    throw new RangeError(`lanes must be 1..${MAX_LANES}`);
  }
  const ret0: CInsn = [C_RET_K, 0, 0, 0];
  return assembleC([
    [C_LD_B_ABS, 0, 0, 0],
    { c: C_JEQ_K, k: 0x14, t: "fast" },
    { c: C_JEQ_K, k: 0x15, t: "jumbo" },
    { c: C_JEQ_K, k: 0x10, t: "ack" },
    { c: C_JEQ_K, k: 0x11, t: "ack" },
    { c: C_JEQ_K, k: 0x12, t: "reply" },
    { c: C_JEQ_K, k: 0x13, t: "reply" },
    { c: C_JEQ_K, k: 0x19, t: "secure" },
    [C_RSH_K, 0, 0, 4],
    { c: C_JEQ_K, k: 4, t: "raw" },
    { c: C_JEQ_K, k: 6, t: "raw" },
    ret0,
    "ack",
    [C_LD_B_ABS, 0, 0, 15],
    [C_MOD_K, 0, 0, lanes],
    [C_RET_A, 0, 0, 0],
    "reply",
    [C_LD_B_ABS, 0, 0, 7],
    [C_MOD_K, 0, 0, lanes],
    [C_RET_A, 0, 0, 0],
    "secure",
    [C_LD_H_ABS, 0, 0, 2],
    { ja: "modret" },
    "jumbo",
    [C_LD_B_ABS, 0, 0, 1],
    { c: C_JEQ_K, k: 0, t: "jumbo0" },
    [C_LD_H_ABS, 0, 0, 6],
    { ja: "modret" },
    "jumbo0",
    [C_LDX_IMM, 0, 0, 16],
    { ja: "inner" },
    "fast",
    [C_LDX_IMM, 0, 0, 8],
    { ja: "inner" },
    "raw",
    [C_LDX_IMM, 0, 0, 0],
    // X = offset of the inner IP packet.
    "inner",
    [C_LD_B_IND, 0, 0, 0],
    [C_RSH_K, 0, 0, 4],
    { c: C_JEQ_K, k: 4, t: "v4" },
    { c: C_JEQ_K, k: 6, t: "v6" },
    ret0,
    "v4",
    [C_LD_H_IND, 0, 0, 6],
    { c: C_JSET_K, k: 0x3fff, t: "zero" },
    [C_LD_B_IND, 0, 0, 9],
    [C_ST, 0, 0, 1],
    [C_LD_B_IND, 0, 0, 0],
    [C_AND_K, 0, 0, 0x0f],
    [C_LSH_K, 0, 0, 2],
    [C_ADD_X, 0, 0, 0],
    [C_TAX, 0, 0, 0],
    { ja: "l4" },
    "v6",
    [C_LD_B_IND, 0, 0, 6],
    [C_ST, 0, 0, 1],
    [C_TXA, 0, 0, 0],
    [C_ADD_K, 0, 0, 40],
    [C_TAX, 0, 0, 0],
    // X = offset of the L4 header.
    "l4",
    [C_LD_MEM, 0, 0, 1],
    { c: C_JEQ_K, k: PROTO_TCP, t: "ports" },
    { c: C_JEQ_K, k: PROTO_UDP, t: "ports" },
    { c: C_JEQ_K, k: PROTO_ICMP, t: "icmp4" },
    { c: C_JEQ_K, k: PROTO_ICMP6, t: "icmp6" },
    "zero",
    ret0,
    "ports",
    [C_LD_H_IND, 0, 0, 2],
    [C_ST, 0, 0, 2],
    [C_LD_H_IND, 0, 0, 0],
    [C_LDX_MEM, 0, 0, 2],
    [C_ADD_X, 0, 0, 0],
    [C_AND_K, 0, 0, 0xffff],
    { ja: "modret" },
    "icmp4",
    [C_LD_B_IND, 0, 0, 0],
    { c: C_JEQ_K, k: 8, t: "echo" },
    { c: C_JEQ_K, k: 0, t: "echo" },
    ret0,
    "icmp6",
    [C_LD_B_IND, 0, 0, 0],
    { c: C_JEQ_K, k: 128, t: "echo" },
    { c: C_JEQ_K, k: 129, t: "echo" },
    ret0,
    "echo",
    [C_LD_H_IND, 0, 0, 4],
    "modret", // laneHash, then the lane
    [C_MUL_K, 0, 0, 0x9e3779b1],
    [C_RSH_K, 0, 0, 16],
    [C_MOD_K, 0, 0, lanes],
    [C_RET_A, 0, 0, 0],
  ]);
}
