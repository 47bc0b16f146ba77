/**
 * A small rtnetlink client over libc FFI: links (veth, bridge), addresses and routes, with no
 * processes spawned. Every request carries NLM_F_REQUEST|NLM_F_ACK; the reply is read synchronously
 * on the calling thread and a kernel error becomes a `NetlinkError` carrying the errno (EEXIST,
 * ENODEV, EPERM, …) and the kernel's extended-ACK message when it sends one.
 *
 * Message layout lives in the pure `netlink_msg.ts`. Buffers: one send and one receive buffer per
 * isolate, allocated once and reused; both are passed to `send`/`recv` directly as `"buffer"`
 * parameters (no raw pointer to them is ever stored in a kernel struct, so there is no GC hazard).
 *
 * @example
 * ```ts
 * import { Netlink } from "./netlink.ts";
 * import { openNetnsByName, closeFd } from "./netns.ts";
 * const nsFd = openNetnsByName("node1");
 * const nl = Netlink.openInNetns(nsFd); // socket lives in node1; this thread stays where it was
 * nl.createBridge("br0", 1450);
 * nl.setLink(nl.linkIndex("br0")!, { up: true });
 * nl.close();
 * closeFd(nsFd);
 * ```
 */

import { Errno, errno, libc, strerror } from "./libc.ts";
import {
  type AddrInfo,
  buildAddr,
  buildDelLink,
  buildDelNeigh,
  buildDumpAddrs,
  buildDumpLinks,
  buildGetLinkByName,
  buildNewBridge,
  buildNewVeth,
  buildRoute,
  buildSetLink,
  type CidrBytes,
  decodeAddr,
  decodeDone,
  decodeError,
  decodeLink,
  IFA_F,
  type LinkChange,
  type LinkInfo,
  NlEncoder,
  NLM_F,
  NLMSG,
  type NlMsg,
  parseMessages,
  type RouteSpec,
  RTM,
  type VethSpec,
} from "./netlink_msg.ts";
import { withNetns } from "./netns.ts";

export type { AddrInfo, CidrBytes, LinkChange, LinkInfo, RouteSpec, VethSpec };

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const MSG_TRUNC = 0x20;
const ETIMEDOUT = 110;
const EPROTO = 71;
/** Seconds a reply may take before the call fails (guards the JS thread against a hang). */
const REPLY_TIMEOUT_S = 5;
/** Retries of a dump the kernel marked inconsistent (NLM_F_DUMP_INTR). */
const DUMP_RETRIES = 5;

/** A failed rtnetlink operation. The message names the operation and the kernel's reason. */
export class NetlinkError extends Error {
  /** Positive errno (Errno.EEXIST, Errno.ENODEV, Errno.EPERM, …). */
  readonly errno: number;
  /** The operation, e.g. `create veth veth0/ceth0`. */
  readonly op: string;
  /** The kernel's extended-ACK message, when it sent one. */
  readonly extack?: string;
  /** Builds the error for `op` failing with errno `code` (and the kernel's extended-ACK text). */
  constructor(op: string, code: number, extack?: string) {
    super(`netlink ${op}: ${strerror(code)} (errno ${code})${extack ? ` - ${extack}` : ""}`);
    this.name = "NetlinkError";
    this.op = op;
    this.errno = code;
    if (extack !== undefined) this.extack = extack;
  }
}

// One send and one receive buffer per isolate: every call is synchronous, so they are never shared
// between two calls in flight. The kernel caps dump datagrams at 32 KiB; single replies are smaller.
const sendBuf = new Uint8Array(4096);
const recvBuf = new Uint8Array(64 * 1024);
const enc = new NlEncoder(sendBuf);
const sockaddrNl = new Uint8Array(12);
const sockaddrLen = new Uint8Array(4);
const optBuf = new Uint8Array(16);

function newSocket(): number {
  const fd = libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw new NetlinkError("socket(AF_NETLINK, NETLINK_ROUTE)", errno());
  return fd;
}

function setIntOpt(fd: number, level: number, name: number, v: number): number {
  new DataView(optBuf.buffer).setInt32(0, v, true);
  return libc.setsockopt(fd, level, name, optBuf, 4);
}

/** Extended ACKs, capped ACKs, a receive timeout, bind; returns the kernel-assigned port id. */
function setupSocket(fd: number): number {
  // Both are optional niceties (older kernels lack them); failures are ignored.
  setIntOpt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
  setIntOpt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
  const tv = new DataView(optBuf.buffer);
  tv.setBigInt64(0, BigInt(REPLY_TIMEOUT_S), true);
  tv.setBigInt64(8, 0n, true);
  if (libc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, optBuf, 16) !== 0) {
    throw new NetlinkError("setsockopt(SO_RCVTIMEO)", errno());
  }
  sockaddrNl.fill(0);
  new DataView(sockaddrNl.buffer).setUint16(0, AF_NETLINK, true);
  if (libc.bind(fd, sockaddrNl, 12) !== 0) throw new NetlinkError("bind", errno());
  new DataView(sockaddrLen.buffer).setUint32(0, 12, true);
  if (libc.getsockname(fd, sockaddrNl, sockaddrLen) !== 0) throw new NetlinkError("getsockname", errno());
  return new DataView(sockaddrNl.buffer).getUint32(4, true);
}

function familyOf(n: 4 | 6): string {
  return n === 4 ? "IPv4" : "IPv6";
}

function fmtAddr(c: { family: 4 | 6; addr: Uint8Array }): string {
  if (c.family === 4) return c.addr.join(".");
  const parts: string[] = [];
  for (let i = 0; i < c.addr.length; i += 2) parts.push(((c.addr[i] << 8) | c.addr[i + 1]).toString(16));
  return parts.join(":");
}

/**
 * An rtnetlink socket bound to the network namespace it was created in. All methods are
 * synchronous and block the calling thread for one kernel round trip (microseconds).
 */
export class Netlink {
  #fd: number;
  #seq: number;
  readonly #portId: number;

  private constructor(fd: number) {
    this.#fd = fd;
    try {
      this.#portId = setupSocket(fd);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    this.#seq = (Date.now() & 0x3fffffff) >>> 0;
  }

  /**
   * Socket in the calling thread's current network namespace.
   *
   * @example
   * ```ts
   * const nl = Netlink.open();
   * console.log(nl.listLinks().map((l) => l.name));
   * nl.close();
   * ```
   */
  static open(): Netlink {
    return new Netlink(newSocket());
  }

  /**
   * Socket inside the network namespace `nsFd` refers to (`/proc/<pid>/ns/net` or
   * `/run/netns/<name>`): setns into it on this thread, create the socket, setns back (always,
   * also on error). The socket keeps acting in that namespace; the caller may close `nsFd`.
   */
  static openInNetns(nsFd: number): Netlink {
    return new Netlink(withNetns(nsFd, newSocket));
  }

  /** Closes the socket (idempotent). */
  close(): void {
    if (this.#fd >= 0) {
      libc.close(this.#fd);
      this.#fd = -1;
    }
  }

  /** Same as `close()`, for `using nl = Netlink.open()`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Index of the link named `name`, or undefined when there is none (ENODEV). */
  linkIndex(name: string): number | undefined {
    let index: number | undefined;
    try {
      this.#transact(`get link ${name}`, buildGetLinkByName(enc, this.#next(), name), (m) => {
        if (m.type === RTM.NEWLINK) index = decodeLink(recvBuf, m).index;
      });
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === Errno.ENODEV) return undefined;
      throw e;
    }
    return index;
  }

  /** All links of the namespace (name, kind, master, up, MTU). */
  listLinks(): LinkInfo[] {
    return this.#dump("dump links", () => buildDumpLinks(enc, this.#next()), (m, out: LinkInfo[]) => {
      if (m.type === RTM.NEWLINK) out.push(decodeLink(recvBuf, m));
    });
  }

  /**
   * Creates a veth pair `name` (here) / `peerName` (here, or in the namespace of
   * `opts.peerNetnsFd`), optionally with an MTU on both ends, the local end enslaved to
   * `opts.master` and brought up (`opts.up`), all in one request.
   */
  createVeth(name: string, peerName: string, opts: VethSpec = {}): void {
    this.#transact(`create veth ${name}/${peerName}`, buildNewVeth(enc, this.#next(), name, peerName, opts));
  }

  /** Creates a bridge; with `mac` it keeps that hardware address whatever its ports are. */
  createBridge(name: string, mtu?: number, mac?: Uint8Array): void {
    this.#transact(`create bridge ${name}`, buildNewBridge(enc, this.#next(), name, mtu, mac));
  }

  /** The link named `name` (index, kind, master, MAC, …), or undefined when there is none. */
  link(name: string): LinkInfo | undefined {
    let info: LinkInfo | undefined;
    try {
      this.#transact(`get link ${name}`, buildGetLinkByName(enc, this.#next(), name), (m) => {
        if (m.type === RTM.NEWLINK) info = decodeLink(recvBuf, m);
      });
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === Errno.ENODEV) return undefined;
      throw e;
    }
    return info;
  }

  /**
   * Forgets the neighbour (ARP / NDP) entry for `addr` on link `index`; false when there was none.
   */
  deleteNeighbour(index: number, family: 4 | 6, addr: Uint8Array): boolean {
    try {
      this.#transact(
        () => `delete neighbour ${fmtAddr({ family, addr })} on link ${index}`,
        buildDelNeigh(enc, this.#next(), index, family, addr),
      );
      return true;
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === Errno.ENOENT) return false;
      throw e;
    }
  }

  /** Changes a link: up/down, MTU, master (0 = none), name. */
  setLink(index: number, opts: LinkChange): void {
    this.#transact(`set link ${index}`, buildSetLink(enc, this.#next(), index, opts));
  }

  /** Deletes a link (a veth takes its peer with it). */
  deleteLink(index: number): void {
    this.#transact(`delete link ${index}`, buildDelLink(enc, this.#next(), index));
  }

  /**
   * Adds an address to a link. `noDad` skips IPv6 duplicate-address detection (usable at once);
   * `ignoreExisting` turns EEXIST into success.
   */
  addAddress(
    index: number,
    cidr: CidrBytes,
    opts: { noDad?: boolean; ignoreExisting?: boolean } = {},
  ): void {
    const flags = opts.noDad ? IFA_F.NODAD : 0;
    const op = () => `add address ${fmtAddr(cidr)}/${cidr.prefixLen} to link ${index}`;
    try {
      this.#transact(op, buildAddr(enc, this.#next(), RTM.NEWADDR, index, cidr, flags));
    } catch (e) {
      if (opts.ignoreExisting && e instanceof NetlinkError && e.errno === Errno.EEXIST) return;
      throw e;
    }
  }

  /** Removes an address from a link (EADDRNOTAVAIL if it has no such address). */
  deleteAddress(index: number, cidr: CidrBytes): void {
    const op = () => `delete address ${fmtAddr(cidr)}/${cidr.prefixLen} from link ${index}`;
    this.#transact(op, buildAddr(enc, this.#next(), RTM.DELADDR, index, cidr));
  }

  /** IPv4 and IPv6 addresses, of all links or of link `index`. */
  listAddresses(index?: number): AddrInfo[] {
    return this.#dump("dump addresses", () => buildDumpAddrs(enc, this.#next()), (m, out: AddrInfo[]) => {
      if (m.type !== RTM.NEWADDR) return;
      const a = decodeAddr(recvBuf, m);
      if (a && (index === undefined || a.index === index)) out.push(a);
    });
  }

  /**
   * Adds a route in the main table; without `dst` it is the default route (dstLen 0).
   * `opts.replace` replaces an existing route instead of failing with EEXIST.
   *
   * @example
   * ```ts
   * declare const nl: Netlink;
   * nl.addRoute({ family: 4, dstLen: 0, gateway: new Uint8Array([10, 30, 0, 1]) });
   * ```
   */
  addRoute(r: RouteSpec, opts: { replace?: boolean } = {}): void {
    const op = () =>
      `add ${familyOf(r.family)} route ${r.dst ? fmtAddr({ family: r.family, addr: r.dst }) : "default"}`;
    this.#transact(op, buildRoute(enc, this.#next(), RTM.NEWROUTE, r, opts.replace ?? false));
  }

  /** Deletes a route (ESRCH if there is none). */
  deleteRoute(r: RouteSpec): void {
    const op = () =>
      `delete ${familyOf(r.family)} route ${r.dst ? fmtAddr({ family: r.family, addr: r.dst }) : "default"}`;
    this.#transact(op, buildRoute(enc, this.#next(), RTM.DELROUTE, r));
  }

  #next(): number {
    if (this.#fd < 0) throw new Error("Netlink socket is closed");
    this.#seq = (this.#seq + 1) >>> 0;
    return this.#seq;
  }

  /** Runs a dump, retrying when the kernel says it was interrupted by a concurrent change. */
  #dump<T>(op: string, build: () => Uint8Array, each: (m: NlMsg, out: T[]) => void): T[] {
    for (let attempt = 0;; attempt++) {
      const out: T[] = [];
      const intr = this.#transact(op, build(), (m) => each(m, out));
      if (!intr) return out;
      if (attempt >= DUMP_RETRIES) throw new NetlinkError(op, Errno.EAGAIN, "dump kept being interrupted");
    }
  }

  /**
   * Sends the finished request in the send buffer and reads replies until its ACK, error or
   * NLMSG_DONE. Messages with another sequence number or port id (leftovers) are skipped.
   * Returns true when a dump was marked NLM_F_DUMP_INTR.
   */
  #transact(op: string | (() => string), req: Uint8Array, onMsg?: (m: NlMsg) => void): boolean {
    const fd = this.#fd;
    if (fd < 0) throw new Error("Netlink socket is closed");
    const name = () => (typeof op === "string" ? op : op());
    const seq = new DataView(req.buffer, req.byteOffset, req.byteLength).getUint32(8, true);
    for (;;) {
      const sent = libc.send(fd, sendBuf, BigInt(req.length), 0);
      if (sent >= 0) break;
      const e = errno();
      if (e !== Errno.EINTR) throw new NetlinkError(`${name()} (send)`, e);
    }
    let interrupted = false;
    let deferred: unknown;
    for (;;) {
      const r = libc.recv(fd, recvBuf, BigInt(recvBuf.length), MSG_TRUNC);
      if (r < 0) {
        const e = errno();
        if (e === Errno.EINTR) continue;
        if (e === Errno.EAGAIN) {
          throw new NetlinkError(`${name()} (no reply within ${REPLY_TIMEOUT_S} s)`, ETIMEDOUT);
        }
        throw new NetlinkError(`${name()} (recv)`, e);
      }
      const n = Number(r);
      if (n > recvBuf.length) {
        throw new NetlinkError(`${name()} (reply of ${n} bytes truncated to ${recvBuf.length})`, EPROTO);
      }
      for (const m of parseMessages(recvBuf, n)) {
        if (m.seq !== seq || m.pid !== this.#portId) continue; // stale reply of an earlier request
        if (m.flags & NLM_F.DUMP_INTR) interrupted = true;
        switch (m.type) {
          case NLMSG.ERROR: {
            const { errno: code, extack } = decodeError(recvBuf, m);
            if (deferred !== undefined) throw deferred;
            if (code !== 0) throw new NetlinkError(name(), code, extack);
            return interrupted;
          }
          case NLMSG.DONE: {
            const code = decodeDone(recvBuf, m);
            if (deferred !== undefined) throw deferred;
            if (code !== 0) throw new NetlinkError(name(), code);
            return interrupted;
          }
          case NLMSG.OVERRUN:
            throw new NetlinkError(`${name()} (overrun)`, EPROTO);
          case NLMSG.NOOP:
            break;
          default:
            // A failing consumer must not leave a dump half-read (the socket would refuse the
            // next dump with EBUSY): keep reading to the end, then rethrow.
            if (onMsg && deferred === undefined) {
              try {
                onMsg(m);
              } catch (e) {
                deferred = e;
              }
            }
        }
      }
    }
  }
}
