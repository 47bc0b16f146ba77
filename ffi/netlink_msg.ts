/**
 * Pure rtnetlink message encoding and decoding: bytes in, bytes out. No FFI, no I/O, no `Deno.*`.
 *
 * The socket side lives in `netlink.ts`; this module only knows the wire layout (little-endian host
 * order, as rtnetlink uses the host's byte order and we run on x86_64/aarch64):
 *
 * ```
 * nlmsghdr  { u32 len; u16 type; u16 flags; u32 seq; u32 pid }            16 bytes
 * ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change } 16 bytes
 * ifaddrmsg { u8 family; u8 prefixlen; u8 flags; u8 scope; u32 index }    8 bytes
 * rtmsg     { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags } 12 bytes
 * nlattr    { u16 len; u16 type } + payload, padded to 4 (NLA_ALIGN)
 * ```
 *
 * @example
 * ```ts
 * import { buildAddr, NlEncoder, RTM } from "./netlink_msg.ts";
 * const enc = new NlEncoder(new Uint8Array(512));
 * const bytes = buildAddr(enc, 1, RTM.NEWADDR, 3, { family: 4, addr: new Uint8Array([10, 0, 0, 1]), prefixLen: 24 });
 * // bytes is a complete RTM_NEWADDR request ready for send()
 * ```
 */

/** Netlink message types of the base protocol. */
export const NLMSG = { NOOP: 1, ERROR: 2, DONE: 3, OVERRUN: 4 } as const;

/** rtnetlink message types used here. */
export const RTM = {
  NEWLINK: 16,
  DELLINK: 17,
  GETLINK: 18,
  NEWADDR: 20,
  DELADDR: 21,
  GETADDR: 22,
  NEWROUTE: 24,
  DELROUTE: 25,
  GETROUTE: 26,
  NEWNEIGH: 28,
  DELNEIGH: 29,
} as const;

/** nlmsghdr flags. */
export const NLM_F = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
  ECHO: 0x8,
  DUMP_INTR: 0x10,
  /** GET: dump = ROOT | MATCH. */
  DUMP: 0x300,
  /** NEW: replace an existing object. */
  REPLACE: 0x100,
  /** NEW: fail with EEXIST if it exists. */
  EXCL: 0x200,
  /** NEW: create if missing. */
  CREATE: 0x400,
  /** NLMSG_ERROR: the echoed request is capped to its header. */
  CAPPED: 0x100,
  /** NLMSG_ERROR: extended-ACK TLVs follow. */
  ACK_TLVS: 0x200,
} as const;

/** Link attributes (IFLA_*). */
export const IFLA = {
  ADDRESS: 1,
  IFNAME: 3,
  MTU: 4,
  LINK: 5,
  MASTER: 10,
  TXQLEN: 13,
  OPERSTATE: 16,
  LINKINFO: 18,
  NET_NS_PID: 19,
  NET_NS_FD: 28,
  EXT_MASK: 29,
  GSO_MAX_SEGS: 40,
} as const;

/** IFLA_LINKINFO nested attributes. */
export const IFLA_INFO = { KIND: 1, DATA: 2, SLAVE_KIND: 4 } as const;

/** IFLA_INFO_DATA of a veth. */
export const VETH_INFO_PEER = 1;

/** Address attributes (IFA_*). */
export const IFA = { ADDRESS: 1, LOCAL: 2, LABEL: 3, BROADCAST: 4, CACHEINFO: 6, FLAGS: 8 } as const;

/** Address flags. */
export const IFA_F = { NODAD: 0x02, PERMANENT: 0x80 } as const;

/** Route attributes (RTA_*). */
export const RTA = { DST: 1, SRC: 2, IIF: 3, OIF: 4, GATEWAY: 5, PRIORITY: 6, TABLE: 15 } as const;

/** Neighbour attributes (NDA_*). */
export const NDA = { DST: 1 } as const;

/** Address families. */
export const AF = { UNSPEC: 0, INET: 2, INET6: 10 } as const;

/** Interface flags (ifi_flags). */
export const IFF_UP = 0x1;

/** Routing constants. */
export const RT = {
  TABLE_MAIN: 254,
  PROT_BOOT: 3,
  PROT_STATIC: 4,
  SCOPE_UNIVERSE: 0,
  SCOPE_LINK: 253,
  SCOPE_NOWHERE: 255,
  TYPE_UNICAST: 1,
} as const;

/** IFLA_EXT_MASK bit asking link dumps to leave out statistics (smaller messages). */
export const RTEXT_FILTER_SKIP_STATS = 1 << 3;

/** Extended-ACK TLV: the error message string. */
export const NLMSGERR_ATTR_MSG = 1;

/** Nested-attribute flag bit in nla_type. */
export const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

/** Size of nlmsghdr. */
export const NLMSG_HDRLEN = 16;
const IFINFOMSG_LEN = 16;
const IFADDRMSG_LEN = 8;
const RTMSG_LEN = 12;
const NDMSG_LEN = 12;
const NLA_HDRLEN = 4;

/** Rounds up to the netlink 4-byte alignment (NLMSG_ALIGN / NLA_ALIGN). */
export function align4(n: number): number {
  return (n + 3) & ~3;
}

/** Malformed bytes from the kernel (or a request that does not fit its buffer). */
export class NetlinkFormatError extends Error {
  /** Builds the error with a description of what is wrong. */
  constructor(message: string) {
    super(message);
    this.name = "NetlinkFormatError";
  }
}

/** ifinfomsg fields. */
export interface IfInfoMsg {
  /** ifi_family (AF_UNSPEC by default). */
  family?: number;
  /** ifi_type (ARPHRD_*), 0 in requests. */
  type?: number;
  /** ifi_index, 0 for "none / by name". */
  index?: number;
  /** ifi_flags (IFF_UP, …). */
  flags?: number;
  /** ifi_change: which bits of `flags` to apply. */
  change?: number;
}

/** ifaddrmsg fields. */
export interface IfAddrMsg {
  /** ifa_family (AF_INET, AF_INET6, AF_UNSPEC). */
  family: number;
  /** ifa_prefixlen. */
  prefixLen: number;
  /** ifa_flags (low 8 bits of IFA_F_*). */
  flags?: number;
  /** ifa_scope (RT_SCOPE_*). */
  scope?: number;
  /** ifa_index: the link. */
  index: number;
}

/** rtmsg fields. */
export interface RtMsg {
  /** rtm_family. */
  family: number;
  /** rtm_dst_len: destination prefix length. */
  dstLen: number;
  /** rtm_src_len. */
  srcLen?: number;
  /** rtm_tos. */
  tos?: number;
  /** rtm_table (ids above 255 go in RTA_TABLE). */
  table: number;
  /** rtm_protocol (RTPROT_*). */
  protocol: number;
  /** rtm_scope (RT_SCOPE_*). */
  scope: number;
  /** rtm_type (RTN_*). */
  type: number;
  /** rtm_flags. */
  flags?: number;
}

const utf8 = new TextEncoder();
const utf8d = new TextDecoder();

/**
 * Writes one netlink request into a caller-owned, reused buffer. Every section is zero-filled and
 * padded to 4 bytes; `finish()` stores the total length in the header.
 *
 * @example
 * ```ts
 * const enc = new NlEncoder(new Uint8Array(256));
 * enc.begin(RTM.GETLINK, NLM_F.REQUEST | NLM_F.ACK, 7).ifinfomsg({}).attrStr(IFLA.IFNAME, "eth0");
 * const bytes = enc.finish();
 * ```
 */
export class NlEncoder {
  /** The backing buffer (reused for every message). */
  readonly buf: Uint8Array;
  readonly #dv: DataView;
  #pos = 0;
  #open = false;

  /** Wraps `buf`, the buffer every message is written into (reused). */
  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.#dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Starts a message: writes the nlmsghdr (length filled in by `finish`). */
  begin(type: number, flags: number, seq: number, pid = 0): this {
    this.#pos = 0;
    this.#open = true;
    const p = this.#reserve(NLMSG_HDRLEN);
    this.#dv.setUint16(p + 4, type, true);
    this.#dv.setUint16(p + 6, flags, true);
    this.#dv.setUint32(p + 8, seq >>> 0, true);
    this.#dv.setUint32(p + 12, pid >>> 0, true);
    return this;
  }

  /** Appends an ifinfomsg. */
  ifinfomsg(m: IfInfoMsg): this {
    const p = this.#reserve(IFINFOMSG_LEN);
    this.buf[p] = m.family ?? 0;
    this.#dv.setUint16(p + 2, m.type ?? 0, true);
    this.#dv.setInt32(p + 4, m.index ?? 0, true);
    this.#dv.setUint32(p + 8, (m.flags ?? 0) >>> 0, true);
    this.#dv.setUint32(p + 12, (m.change ?? 0) >>> 0, true);
    return this;
  }

  /** Appends an ifaddrmsg. */
  ifaddrmsg(m: IfAddrMsg): this {
    const p = this.#reserve(IFADDRMSG_LEN);
    this.buf[p] = m.family;
    this.buf[p + 1] = m.prefixLen;
    this.buf[p + 2] = m.flags ?? 0;
    this.buf[p + 3] = m.scope ?? 0;
    this.#dv.setUint32(p + 4, m.index >>> 0, true);
    return this;
  }

  /** Appends an rtmsg. */
  rtmsg(m: RtMsg): this {
    const p = this.#reserve(RTMSG_LEN);
    const b = this.buf;
    b[p] = m.family;
    b[p + 1] = m.dstLen;
    b[p + 2] = m.srcLen ?? 0;
    b[p + 3] = m.tos ?? 0;
    b[p + 4] = m.table;
    b[p + 5] = m.protocol;
    b[p + 6] = m.scope;
    b[p + 7] = m.type;
    this.#dv.setUint32(p + 8, (m.flags ?? 0) >>> 0, true);
    return this;
  }

  /** Appends an ndmsg (neighbour header): family, ifindex; state, flags and type zero. */
  ndmsg(family: number, index: number): this {
    const p = this.#reserve(NDMSG_LEN);
    this.buf[p] = family;
    this.#dv.setInt32(p + 4, index, true);
    return this;
  }

  /** Appends a u32 attribute. */
  attrU32(type: number, v: number): this {
    const p = this.#attrHeader(type, 4);
    this.#dv.setUint32(p + NLA_HDRLEN, v >>> 0, true);
    return this;
  }

  /** Appends a u8 attribute (payload 1 byte, padded to 4). */
  attrU8(type: number, v: number): this {
    const p = this.#attrHeader(type, 1);
    this.buf[p + NLA_HDRLEN] = v;
    return this;
  }

  /** Appends a string attribute, NUL-terminated unless `nul` is false (as iproute2 sends kinds). */
  attrStr(type: number, s: string, nul = true): this {
    const bytes = utf8.encode(s);
    const p = this.#attrHeader(type, bytes.length + (nul ? 1 : 0));
    this.buf.set(bytes, p + NLA_HDRLEN);
    return this;
  }

  /** Appends a raw-bytes attribute. */
  attrBytes(type: number, v: Uint8Array): this {
    const p = this.#attrHeader(type, v.length);
    this.buf.set(v, p + NLA_HDRLEN);
    return this;
  }

  /** Opens a nested attribute; pass the returned token to `nestEnd`. */
  nestStart(type: number): number {
    return this.#attrHeader(type | NLA_F_NESTED, 0);
  }

  /** Closes a nested attribute: its length becomes everything written since `nestStart`. */
  nestEnd(token: number): this {
    this.#dv.setUint16(token, this.#pos - token, true);
    return this;
  }

  /** Stores the total length and returns the message bytes (a view into the reused buffer). */
  finish(): Uint8Array {
    if (!this.#open) throw new NetlinkFormatError("finish() without begin()");
    this.#open = false;
    this.#dv.setUint32(0, this.#pos, true);
    return this.buf.subarray(0, this.#pos);
  }

  /** Writes an attribute header for `payloadLen` bytes and reserves the padded space. */
  #attrHeader(type: number, payloadLen: number): number {
    const len = NLA_HDRLEN + payloadLen;
    if (len > 0xffff) throw new NetlinkFormatError(`attribute ${type} too long (${len} bytes)`);
    const p = this.#reserve(len);
    this.#dv.setUint16(p, len, true);
    this.#dv.setUint16(p + 2, type, true);
    return p;
  }

  #reserve(n: number): number {
    if (!this.#open) throw new NetlinkFormatError("message not started (call begin())");
    const p = this.#pos;
    const end = p + align4(n);
    if (end > this.buf.length) {
      throw new NetlinkFormatError(`netlink request needs ${end} bytes, buffer has ${this.buf.length}`);
    }
    this.buf.fill(0, p, end);
    this.#pos = end;
    return p;
  }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

/** Throws a RangeError unless `name` is a valid Linux interface name (1..15 bytes, no '/', ':', space). */
export function checkIfName(name: string): void {
  const n = utf8.encode(name).length;
  if (n === 0 || n > 15 || name === "." || name === ".." || /[/:\s]/.test(name)) {
    throw new RangeError(
      `invalid interface name ${JSON.stringify(name)} (1..15 bytes, no '/', ':' or space)`,
    );
  }
}

function checkU32(what: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new RangeError(`${what} must be a u32, got ${v}`);
  }
}

function checkMac(mac: Uint8Array): void {
  if (mac.length !== 6) throw new RangeError(`a MAC address is 6 bytes, got ${mac.length}`);
}

function checkIndex(index: number): void {
  if (!Number.isInteger(index) || index <= 0 || index > 0x7fffffff) {
    throw new RangeError(`interface index must be a positive integer, got ${index}`);
  }
}

/** Family number (4/6) to AF_INET/AF_INET6. */
export function afOf(family: 4 | 6): number {
  if (family === 4) return AF.INET;
  if (family === 6) return AF.INET6;
  throw new RangeError(`family must be 4 or 6, got ${family}`);
}

function checkAddr(what: string, family: 4 | 6, addr: Uint8Array): void {
  const want = family === 4 ? 4 : 16;
  if (addr.length !== want) {
    throw new RangeError(`${what} for IPv${family} must be ${want} bytes, got ${addr.length}`);
  }
}

function checkPrefix(family: 4 | 6, len: number): void {
  const max = family === 4 ? 32 : 128;
  if (!Number.isInteger(len) || len < 0 || len > max) {
    throw new RangeError(`prefix length for IPv${family} must be 0..${max}, got ${len}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Request builders. Each returns the finished message bytes (a view into the encoder's buffer).

/** A CIDR address as bytes. */
export interface CidrBytes {
  /** 4 or 6. */
  family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  addr: Uint8Array;
  /** Prefix length (0..32 or 0..128). */
  prefixLen: number;
}

/** A route to add or delete. A missing `dst` means the default route (`dstLen` must be 0). */
export interface RouteSpec {
  /** 4 or 6. */
  family: 4 | 6;
  /** Destination prefix bytes; absent for the default route. */
  dst?: Uint8Array;
  /** Destination prefix length (0 for the default route). */
  dstLen: number;
  /** Next hop; without it the route is on-link via `oif` (scope link). */
  gateway?: Uint8Array;
  /** Output interface index. */
  oif?: number;
  /** Routing table, default main (254). */
  table?: number;
  /** Route metric (RTA_PRIORITY). */
  metric?: number;
}

/** Options for a new veth pair. */
export interface VethSpec {
  /** MTU of both ends. */
  mtu?: number;
  /** Put the peer end into the network namespace this fd refers to. */
  peerNetnsFd?: number;
  /** Enslave the local end to this bridge index. */
  master?: number;
  /** Bring the local end up in the same request. */
  up?: boolean;
  /** Ask for this ifindex for the peer (in its namespace); the kernel picks one when absent. */
  peerIndex?: number;
}

/** Options for changing a link. */
export interface LinkChange {
  /** Bring the link up (true) or down (false); unchanged when absent. */
  up?: boolean;
  /** New MTU. */
  mtu?: number;
  /** Bridge index to enslave to; 0 releases the link from its master. */
  master?: number;
  /** New name. */
  name?: string;
  /** Transmit queue length in packets (`txqueuelen`). */
  txQueueLen?: number;
  /** Hardware (MAC) address, 6 bytes; a bridge given one keeps it whatever its ports are. */
  address?: Uint8Array;
  /** Most segments of one TSO/GSO packet the link's senders build (`gso_max_segs`). */
  gsoMaxSegs?: number;
}

const REQ_ACK = NLM_F.REQUEST | NLM_F.ACK;
const REQ_NEW = REQ_ACK | NLM_F.CREATE | NLM_F.EXCL;

/** RTM_GETLINK for one link by name (reply: one RTM_NEWLINK, then the ACK). */
export function buildGetLinkByName(enc: NlEncoder, seq: number, name: string): Uint8Array {
  checkIfName(name);
  return enc.begin(RTM.GETLINK, REQ_ACK, seq)
    .ifinfomsg({})
    .attrU32(IFLA.EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    .attrStr(IFLA.IFNAME, name)
    .finish();
}

/** RTM_GETLINK dump of all links (statistics skipped). */
export function buildDumpLinks(enc: NlEncoder, seq: number): Uint8Array {
  return enc.begin(RTM.GETLINK, REQ_ACK | NLM_F.DUMP, seq)
    .ifinfomsg({})
    .attrU32(IFLA.EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    .finish();
}

/**
 * RTM_NEWLINK creating a veth pair:
 * `IFLA_IFNAME, [IFLA_MTU], [IFLA_MASTER], IFLA_LINKINFO{ IFLA_INFO_KIND "veth",
 * IFLA_INFO_DATA{ VETH_INFO_PEER{ ifinfomsg, IFLA_IFNAME, [IFLA_NET_NS_FD], [IFLA_MTU] } } }`.
 */
export function buildNewVeth(
  enc: NlEncoder,
  seq: number,
  name: string,
  peerName: string,
  spec: VethSpec = {},
): Uint8Array {
  checkIfName(name);
  checkIfName(peerName);
  if (spec.mtu !== undefined) checkU32("mtu", spec.mtu);
  if (spec.master !== undefined) checkIndex(spec.master);
  if (spec.peerIndex !== undefined) checkIndex(spec.peerIndex);
  if (spec.peerNetnsFd !== undefined) checkU32("peerNetnsFd", spec.peerNetnsFd);
  enc.begin(RTM.NEWLINK, REQ_NEW, seq)
    .ifinfomsg(spec.up ? { flags: IFF_UP, change: IFF_UP } : {})
    .attrStr(IFLA.IFNAME, name);
  if (spec.mtu !== undefined) enc.attrU32(IFLA.MTU, spec.mtu);
  if (spec.master !== undefined) enc.attrU32(IFLA.MASTER, spec.master);
  const info = enc.nestStart(IFLA.LINKINFO);
  enc.attrStr(IFLA_INFO.KIND, "veth", false);
  const data = enc.nestStart(IFLA_INFO.DATA);
  const peer = enc.nestStart(VETH_INFO_PEER);
  enc.ifinfomsg({ index: spec.peerIndex ?? 0 }).attrStr(IFLA.IFNAME, peerName);
  if (spec.peerNetnsFd !== undefined) enc.attrU32(IFLA.NET_NS_FD, spec.peerNetnsFd);
  if (spec.mtu !== undefined) enc.attrU32(IFLA.MTU, spec.mtu);
  enc.nestEnd(peer).nestEnd(data).nestEnd(info);
  return enc.finish();
}

/**
 * RTM_NEWLINK creating a bridge: `IFLA_IFNAME, [IFLA_MTU], [IFLA_ADDRESS], IFLA_LINKINFO{ IFLA_INFO_KIND
 * "bridge" }`. With `mac` the bridge keeps that address (it never follows its ports' addresses).
 */
export function buildNewBridge(
  enc: NlEncoder,
  seq: number,
  name: string,
  mtu?: number,
  mac?: Uint8Array,
): Uint8Array {
  checkIfName(name);
  enc.begin(RTM.NEWLINK, REQ_NEW, seq).ifinfomsg({}).attrStr(IFLA.IFNAME, name);
  if (mtu !== undefined) {
    checkU32("mtu", mtu);
    enc.attrU32(IFLA.MTU, mtu);
  }
  if (mac !== undefined) {
    checkMac(mac);
    enc.attrBytes(IFLA.ADDRESS, mac);
  }
  const info = enc.nestStart(IFLA.LINKINFO);
  enc.attrStr(IFLA_INFO.KIND, "bridge", false);
  enc.nestEnd(info);
  return enc.finish();
}

/** RTM_NEWLINK (no CREATE) changing an existing link, like `ip link set`. */
export function buildSetLink(enc: NlEncoder, seq: number, index: number, change: LinkChange): Uint8Array {
  checkIndex(index);
  const up = change.up;
  enc.begin(RTM.NEWLINK, REQ_ACK, seq).ifinfomsg({
    index,
    flags: up ? IFF_UP : 0,
    change: up === undefined ? 0 : IFF_UP,
  });
  if (change.name !== undefined) {
    checkIfName(change.name);
    enc.attrStr(IFLA.IFNAME, change.name);
  }
  if (change.mtu !== undefined) {
    checkU32("mtu", change.mtu);
    enc.attrU32(IFLA.MTU, change.mtu);
  }
  if (change.master !== undefined) {
    checkU32("master", change.master);
    enc.attrU32(IFLA.MASTER, change.master);
  }
  if (change.txQueueLen !== undefined) {
    checkU32("txQueueLen", change.txQueueLen);
    enc.attrU32(IFLA.TXQLEN, change.txQueueLen);
  }
  if (change.address !== undefined) {
    checkMac(change.address);
    enc.attrBytes(IFLA.ADDRESS, change.address);
  }
  if (change.gsoMaxSegs !== undefined) {
    checkU32("gsoMaxSegs", change.gsoMaxSegs);
    enc.attrU32(IFLA.GSO_MAX_SEGS, change.gsoMaxSegs);
  }
  return enc.finish();
}

/** RTM_DELLINK by index. */
export function buildDelLink(enc: NlEncoder, seq: number, index: number): Uint8Array {
  checkIndex(index);
  return enc.begin(RTM.DELLINK, REQ_ACK, seq).ifinfomsg({ index }).finish();
}

/**
 * RTM_NEWADDR / RTM_DELADDR: ifaddrmsg + IFA_LOCAL + IFA_ADDRESS (as iproute2 sends for a plain
 * `ip addr add A/N dev X`), plus IFA_FLAGS when `flags` is set. NEWADDR uses CREATE|EXCL.
 */
export function buildAddr(
  enc: NlEncoder,
  seq: number,
  type: typeof RTM.NEWADDR | typeof RTM.DELADDR,
  index: number,
  cidr: CidrBytes,
  flags = 0,
): Uint8Array {
  checkIndex(index);
  const af = afOf(cidr.family);
  checkAddr("address", cidr.family, cidr.addr);
  checkPrefix(cidr.family, cidr.prefixLen);
  enc.begin(type, type === RTM.NEWADDR ? REQ_NEW : REQ_ACK, seq)
    .ifaddrmsg({ family: af, prefixLen: cidr.prefixLen, flags: flags & 0xff, index })
    .attrBytes(IFA.LOCAL, cidr.addr)
    .attrBytes(IFA.ADDRESS, cidr.addr);
  if (flags !== 0) enc.attrU32(IFA.FLAGS, flags);
  return enc.finish();
}

/**
 * RTM_DELNEIGH: forget the neighbour entry for `addr` on link `index` (like `ip neigh del ADDR dev X`).
 * Layout: ndmsg{ family, ifindex, state 0, flags 0, type 0 } + NDA_DST.
 */
export function buildDelNeigh(
  enc: NlEncoder,
  seq: number,
  index: number,
  family: 4 | 6,
  addr: Uint8Array,
): Uint8Array {
  checkIndex(index);
  checkAddr("neighbour", family, addr);
  enc.begin(RTM.DELNEIGH, REQ_ACK, seq).ndmsg(afOf(family), index).attrBytes(NDA.DST, addr);
  return enc.finish();
}

/** RTM_GETADDR dump (all families). */
export function buildDumpAddrs(enc: NlEncoder, seq: number): Uint8Array {
  return enc.begin(RTM.GETADDR, REQ_ACK | NLM_F.DUMP, seq)
    .ifaddrmsg({ family: AF.UNSPEC, prefixLen: 0, index: 0 })
    .finish();
}

/**
 * RTM_NEWROUTE / RTM_DELROUTE in the main table (or `r.table`), protocol boot, unicast. Scope is
 * universe with a gateway and link without one (as `ip route add`). NEWROUTE uses CREATE and EXCL
 * (or REPLACE when `replace`).
 */
export function buildRoute(
  enc: NlEncoder,
  seq: number,
  type: typeof RTM.NEWROUTE | typeof RTM.DELROUTE,
  r: RouteSpec,
  replace = false,
): Uint8Array {
  const af = afOf(r.family);
  checkPrefix(r.family, r.dstLen);
  if (r.dst !== undefined) checkAddr("route destination", r.family, r.dst);
  else if (r.dstLen !== 0) throw new RangeError("route without dst must have dstLen 0 (default route)");
  if (r.gateway !== undefined) checkAddr("gateway", r.family, r.gateway);
  if (r.oif !== undefined) checkIndex(r.oif);
  if (r.gateway === undefined && r.oif === undefined && type === RTM.NEWROUTE) {
    throw new RangeError("route needs a gateway or an output interface (oif)");
  }
  const table = r.table ?? RT.TABLE_MAIN;
  checkU32("table", table);
  let flags = REQ_ACK;
  if (type === RTM.NEWROUTE) flags |= NLM_F.CREATE | (replace ? NLM_F.REPLACE : NLM_F.EXCL);
  enc.begin(type, flags, seq).rtmsg({
    family: af,
    dstLen: r.dstLen,
    table: table < 256 ? table : 0, // RT_TABLE_UNSPEC; the real id goes in RTA_TABLE
    protocol: type === RTM.NEWROUTE ? RT.PROT_BOOT : 0,
    scope: type === RTM.DELROUTE ? RT.SCOPE_NOWHERE : r.gateway ? RT.SCOPE_UNIVERSE : RT.SCOPE_LINK,
    type: RT.TYPE_UNICAST,
  });
  if (table >= 256) enc.attrU32(RTA.TABLE, table);
  if (r.dst !== undefined) enc.attrBytes(RTA.DST, r.dst);
  if (r.gateway !== undefined) enc.attrBytes(RTA.GATEWAY, r.gateway);
  if (r.oif !== undefined) enc.attrU32(RTA.OIF, r.oif);
  if (r.metric !== undefined) {
    checkU32("metric", r.metric);
    enc.attrU32(RTA.PRIORITY, r.metric);
  }
  return enc.finish();
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** One message found in a received datagram; offsets refer to the datagram buffer. */
export interface NlMsg {
  /** nlmsg_type. */
  type: number;
  /** nlmsg_flags. */
  flags: number;
  /** nlmsg_seq. */
  seq: number;
  /** nlmsg_pid (the receiving socket's port id in kernel replies). */
  pid: number;
  /** Offset of the nlmsghdr. */
  off: number;
  /** nlmsg_len (header included). */
  len: number;
}

/**
 * Splits a received datagram into messages, checking every length. Throws `NetlinkFormatError`
 * on a truncated or inconsistent message.
 */
export function parseMessages(buf: Uint8Array, n: number): NlMsg[] {
  if (n > buf.length) throw new NetlinkFormatError(`datagram of ${n} bytes exceeds buffer of ${buf.length}`);
  const dv = new DataView(buf.buffer, buf.byteOffset, n);
  const out: NlMsg[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= n) {
    const len = dv.getUint32(off, true);
    if (len < NLMSG_HDRLEN || off + len > n) {
      throw new NetlinkFormatError(`bad nlmsg_len ${len} at offset ${off} of ${n}-byte datagram`);
    }
    out.push({
      len,
      type: dv.getUint16(off + 4, true),
      flags: dv.getUint16(off + 6, true),
      seq: dv.getUint32(off + 8, true),
      pid: dv.getUint32(off + 12, true),
      off,
    });
    off += align4(len);
  }
  if (off < n && n - off >= NLMSG_HDRLEN) throw new NetlinkFormatError("trailing bytes after last message");
  return out;
}

/** Where one attribute's payload lies. */
export interface AttrSpan {
  /** Offset of the payload (after the 4-byte nlattr header). */
  off: number;
  /** Payload length (without padding). */
  len: number;
}

/**
 * Reads the attributes in `[start, end)` into a map keyed by type (nested flag and byte-order
 * flag masked off; a repeated type keeps the first). Throws on a malformed attribute.
 */
export function parseAttrs(buf: Uint8Array, start: number, end: number): Map<number, AttrSpan> {
  const out = new Map<number, AttrSpan>();
  let p = start;
  while (p + NLA_HDRLEN <= end) {
    const len = buf[p] | (buf[p + 1] << 8);
    const type = (buf[p + 2] | (buf[p + 3] << 8)) & NLA_TYPE_MASK;
    if (len < NLA_HDRLEN || p + len > end) {
      throw new NetlinkFormatError(`bad attribute length ${len} (type ${type}) at offset ${p}`);
    }
    if (!out.has(type)) out.set(type, { off: p + NLA_HDRLEN, len: len - NLA_HDRLEN });
    p += align4(len);
  }
  return out;
}

/** u32 payload of an attribute. */
export function attrU32(buf: Uint8Array, a: AttrSpan): number {
  if (a.len < 4) throw new NetlinkFormatError(`u32 attribute with ${a.len} bytes`);
  return (buf[a.off] | (buf[a.off + 1] << 8) | (buf[a.off + 2] << 16) | (buf[a.off + 3] << 24)) >>> 0;
}

/** String payload of an attribute (up to the first NUL). */
export function attrStr(buf: Uint8Array, a: AttrSpan): string {
  let e = a.off;
  const end = a.off + a.len;
  while (e < end && buf[e] !== 0) e++;
  return utf8d.decode(buf.subarray(a.off, e));
}

/** A copy of an attribute's payload bytes. */
export function attrBytes(buf: Uint8Array, a: AttrSpan): Uint8Array {
  return buf.slice(a.off, a.off + a.len);
}

/** Decoded NLMSG_ERROR: errno 0 is an ACK. */
export interface NlErrorInfo {
  /** Positive errno (0 for an ACK). */
  errno: number;
  /** Extended-ACK message from the kernel, when it sent one. */
  extack?: string;
}

/** Decodes an NLMSG_ERROR message (the kernel's negative error becomes a positive errno). */
export function decodeError(buf: Uint8Array, m: NlMsg): NlErrorInfo {
  const base = m.off + NLMSG_HDRLEN;
  const end = m.off + m.len;
  if (base + 4 > end) throw new NetlinkFormatError("NLMSG_ERROR too short");
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const errno = -dv.getInt32(base, true) | 0; // | 0: no -0 for an ACK
  const info: NlErrorInfo = { errno };
  if (m.flags & NLM_F.ACK_TLVS) {
    let tlv = base + 4 + NLMSG_HDRLEN;
    if (!(m.flags & NLM_F.CAPPED) && tlv <= end) tlv = base + 4 + align4(dv.getUint32(base + 4, true));
    if (tlv < end) {
      const attrs = parseAttrs(buf, tlv, end);
      const msg = attrs.get(NLMSGERR_ATTR_MSG);
      if (msg) info.extack = attrStr(buf, msg);
    }
  }
  return info;
}

/** The error code carried by NLMSG_DONE (0 when the dump succeeded or the kernel sent none). */
export function decodeDone(buf: Uint8Array, m: NlMsg): number {
  if (m.len < NLMSG_HDRLEN + 4) return 0;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return -dv.getInt32(m.off + NLMSG_HDRLEN, true) | 0;
}

/** A network interface as reported by RTM_NEWLINK. */
export interface LinkInfo {
  /** ifindex. */
  index: number;
  /** Interface name. */
  name: string;
  /** IFLA_INFO_KIND ("veth", "bridge", …); absent for plain devices such as lo. */
  kind?: string;
  /** Index of the bridge this link is enslaved to. */
  master?: number;
  /** IFF_UP (administratively up). */
  up: boolean;
  /** MTU. */
  mtu: number;
  /** Hardware address (IFLA_ADDRESS), when the link has one. */
  mac?: Uint8Array;
}

/** Decodes an RTM_NEWLINK message. */
export function decodeLink(buf: Uint8Array, m: NlMsg): LinkInfo {
  const p = m.off + NLMSG_HDRLEN;
  const end = m.off + m.len;
  if (p + IFINFOMSG_LEN > end) throw new NetlinkFormatError("RTM_NEWLINK too short");
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const index = dv.getInt32(p + 4, true);
  const flags = dv.getUint32(p + 8, true);
  const attrs = parseAttrs(buf, p + IFINFOMSG_LEN, end);
  const name = attrs.get(IFLA.IFNAME);
  const mtu = attrs.get(IFLA.MTU);
  const link: LinkInfo = {
    index,
    name: name ? attrStr(buf, name) : "",
    up: (flags & IFF_UP) !== 0,
    mtu: mtu ? attrU32(buf, mtu) : 0,
  };
  const master = attrs.get(IFLA.MASTER);
  if (master) link.master = attrU32(buf, master);
  const mac = attrs.get(IFLA.ADDRESS);
  if (mac && mac.len === 6) link.mac = attrBytes(buf, mac);
  const info = attrs.get(IFLA.LINKINFO);
  if (info) {
    const kind = parseAttrs(buf, info.off, info.off + info.len).get(IFLA_INFO.KIND);
    if (kind) link.kind = attrStr(buf, kind);
  }
  return link;
}

/** An interface address as reported by RTM_NEWADDR. */
export interface AddrInfo {
  /** ifindex of the link holding the address. */
  index: number;
  /** 4 or 6. */
  family: 4 | 6;
  /** The interface's own address (a copy; 4 or 16 bytes). */
  addr: Uint8Array;
  /** Prefix length. */
  prefixLen: number;
}

/** Decodes an RTM_NEWADDR message; undefined for families other than IPv4/IPv6. */
export function decodeAddr(buf: Uint8Array, m: NlMsg): AddrInfo | undefined {
  const p = m.off + NLMSG_HDRLEN;
  const end = m.off + m.len;
  if (p + IFADDRMSG_LEN > end) throw new NetlinkFormatError("RTM_NEWADDR too short");
  const af = buf[p];
  if (af !== AF.INET && af !== AF.INET6) return undefined;
  const family: 4 | 6 = af === AF.INET ? 4 : 6;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const attrs = parseAttrs(buf, p + IFADDRMSG_LEN, end);
  // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point links).
  const a = (family === 4 ? attrs.get(IFA.LOCAL) : undefined) ?? attrs.get(IFA.ADDRESS) ??
    attrs.get(IFA.LOCAL);
  if (!a || a.len !== (family === 4 ? 4 : 16)) throw new NetlinkFormatError("RTM_NEWADDR without an address");
  return { index: dv.getUint32(p + 4, true), family, addr: attrBytes(buf, a), prefixLen: buf[p + 1] };
}
