/**
 * Link, address and route operations the environment manager needs, over rtnetlink (no processes),
 * plus the few steps that still use `ip` (TAP devices inside a unikernel namespace).
 *
 * @example
 * ```ts
 * const links = new Links();
 * const gw4 = new Uint8Array([10, 18, 0, 65]);
 * const mac = new Uint8Array([0x02, 0x4e, 0x4d, 0x00, 0x00, 0x01]); // locally administered
 * const br = links.ensureBridge("goProxyBridge", 1450, [{ family: 4, addr: gw4, prefixLen: 26 }], mac);
 * ```
 */
import { type CidrBytes, type LinkInfo, Netlink, NetlinkError } from "../../ffi/netlink.ts";
import {
  closeFd,
  createNamedNetns,
  deleteNamedNetns,
  NetnsError,
  openNetnsByName,
  openNetnsByPid,
} from "../../ffi/netns.ts";
import { Errno } from "../../ffi/libc.ts";
import { announceAddresses } from "../../ffi/announce.ts";
import { mustRun, runTool, ToolError } from "./command.ts";

export { NetlinkError, NetnsError };
export type { CidrBytes, LinkInfo };

/** What one instance's veth needs. */
export interface InstanceLinkSpec {
  hostVeth: string;
  peerVeth: string;
  mtu: number;
  bridgeIndex: number;
  /** fd of the instance's network namespace. */
  nsFd: number;
  v4: CidrBytes;
  v6: CidrBytes;
  gw4: Uint8Array;
  gw6: Uint8Array;
  /**
   * TSO segment cap of the instance's end (`gso_max_segs`), so its TCP super-packets make JUMBO
   * messages of one UDP GSO send each (src/proxy/jumbo.ts `jumboTsoSegs`); a kernel that refuses
   * it leaves the default.
   */
  gsoMaxSegs?: number;
}

/** Links in the daemon's (the node's) network namespace. */
export class Links {
  readonly #nl: Netlink;

  constructor() {
    this.#nl = Netlink.open();
  }

  /** Closes the netlink socket. */
  close(): void {
    this.#nl.close();
  }

  /** Index of a link, or undefined. */
  index(name: string): number | undefined {
    return this.#nl.linkIndex(name);
  }

  /** All links of the node namespace. */
  list(): LinkInfo[] {
    return this.#nl.listLinks();
  }

  /**
   * Makes sure the bridge exists, has the MTU, this fixed MAC and these addresses, and is up.
   * Existing bridges are kept (their ports stay attached across a daemon restart). A bridge without
   * a set MAC takes the lowest MAC of its ports and changes it when that port leaves, which leaves
   * every instance with a stale gateway entry for tens of seconds; a set MAC never changes.
   */
  ensureBridge(
    name: string,
    mtu: number,
    addrs: CidrBytes[],
    mac: Uint8Array,
  ): { index: number; created: boolean } {
    let index = this.#nl.linkIndex(name);
    const created = index === undefined;
    if (index === undefined) {
      this.#nl.createBridge(name, mtu, mac);
      index = this.#nl.linkIndex(name)!;
    } else {
      // Also when the MAC is already equal: setting it marks it as set (no longer port-derived).
      this.#nl.setLink(index, { address: mac });
    }
    this.#configure(index, mtu, addrs);
    return { index, created };
  }

  /** The link named `name` with its MAC, kind and master, or undefined. */
  link(name: string): LinkInfo | undefined {
    return this.#nl.link(name);
  }

  /** Forgets the node's neighbour entries for these addresses on link `index` (stale MACs). */
  forgetNeighbours(index: number, addrs: Array<{ family: 4 | 6; addr: Uint8Array }>): void {
    for (const a of addrs) this.#nl.deleteNeighbour(index, a.family, a.addr);
  }

  /**
   * Gives the TUN its MTU, transmit queue length and addresses (their connected routes carry the
   * overlay) and sets it up.
   */
  configureTun(name: string, mtu: number, addrs: CidrBytes[], txQueueLen?: number): void {
    const index = this.#nl.linkIndex(name);
    if (index === undefined) throw new Error(`TUN ${name} does not exist`);
    if (txQueueLen !== undefined) this.#nl.setLink(index, { txQueueLen });
    this.#configure(index, mtu, addrs);
  }

  /** MTU, the addresses that are missing (no DAD), up — idempotent. */
  #configure(index: number, mtu: number, addrs: CidrBytes[]): void {
    this.#nl.setLink(index, { mtu });
    const have = this.#nl.listAddresses(index);
    for (const a of addrs) {
      const present = have.some((h) =>
        h.family === a.family && h.prefixLen === a.prefixLen && eq(h.addr, a.addr)
      );
      if (!present) this.#nl.addAddress(index, a, { noDad: true });
    }
    this.#nl.setLink(index, { up: true });
  }

  /** Deletes a link by name; false when it did not exist. */
  deleteByName(name: string): boolean {
    const index = this.#nl.linkIndex(name);
    if (index === undefined) return false;
    try {
      this.#nl.deleteLink(index);
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === Errno.ENODEV) return false;
      throw e;
    }
    return true;
  }

  /**
   * Deletes a link without blocking the event loop: the kernel waits for an RCU grace period
   * (~15 ms) on every link deletion, so this runs `ip link del` in a child process instead of a
   * synchronous netlink call on the main thread. False when the link did not exist.
   */
  async deleteInBackground(name: string): Promise<boolean> {
    if (this.#nl.linkIndex(name) === undefined) return false;
    const r = await runTool("ip", ["link", "del", "dev", name]);
    if (r.code === 0) return true;
    if (this.#nl.linkIndex(name) === undefined) return false; // vanished meanwhile (its netns died)
    throw new ToolError(`ip link del ${name}`, r);
  }

  /**
   * Creates the veth pair with its peer in the instance namespace, enslaves the host end, and
   * configures the peer (addresses without DAD, up, lo up, default routes via the bridge). On any
   * failure the pair is deleted again, so nothing is left behind. Then announces the addresses
   * from the peer (ARP announcement, unsolicited NA) so that neighbours holding a stale entry for
   * them update at once; returns the reason when that failed (the instance works regardless).
   */
  setupInstance(s: InstanceLinkSpec): { announceError?: string } {
    this.#nl.createVeth(s.hostVeth, s.peerVeth, {
      mtu: s.mtu,
      peerNetnsFd: s.nsFd,
      master: s.bridgeIndex,
      up: true,
    });
    try {
      const inner = Netlink.openInNetns(s.nsFd);
      try {
        const peer = inner.linkIndex(s.peerVeth);
        if (peer === undefined) {
          throw new Error(`veth peer ${s.peerVeth} did not appear in the instance namespace`);
        }
        inner.addAddress(peer, s.v4);
        inner.addAddress(peer, s.v6, { noDad: true });
        inner.setLink(peer, { up: true });
        if (s.gsoMaxSegs !== undefined) {
          try {
            inner.setLink(peer, { gsoMaxSegs: s.gsoMaxSegs });
          } catch {
            // (older kernels set it only when the link is made: the instance works with the default)
          }
        }
        const lo = inner.linkIndex("lo");
        if (lo !== undefined) inner.setLink(lo, { up: true });
        inner.addRoute({ family: 4, dstLen: 0, gateway: s.gw4, oif: peer }, { replace: true });
        inner.addRoute({ family: 6, dstLen: 0, gateway: s.gw6, oif: peer }, { replace: true });
        try {
          const mac = inner.link(s.peerVeth)?.mac;
          if (!mac) return { announceError: `${s.peerVeth} has no MAC address` };
          announceAddresses(s.nsFd, peer, mac, { v4: s.v4.addr, v6: s.v6.addr });
          return {};
        } catch (e) {
          return { announceError: e instanceof Error ? e.message : String(e) };
        }
      } finally {
        inner.close();
      }
    } catch (e) {
      this.deleteByName(s.hostVeth);
      throw e;
    }
  }

  /**
   * What the namespace `nsFd` holds: its veth links (name, index) and the addresses on each, for
   * reconciling records with the kernel.
   */
  inspectNamespace(nsFd: number): Array<{ name: string; kind?: string; addrs: CidrBytes[] }> {
    const inner = Netlink.openInNetns(nsFd);
    try {
      const addrs = inner.listAddresses();
      return inner.listLinks().map((l) => ({
        name: l.name,
        kind: l.kind,
        addrs: addrs.filter((a) => a.index === l.index).map((a) => ({
          family: a.family,
          addr: a.addr,
          prefixLen: a.prefixLen,
        })),
      }));
    } finally {
      inner.close();
    }
  }

  /** Deletes a link inside the namespace `nsFd`; false when it did not exist there. */
  deleteIn(nsFd: number, name: string): boolean {
    const inner = Netlink.openInNetns(nsFd);
    try {
      const index = inner.linkIndex(name);
      if (index === undefined) return false;
      inner.deleteLink(index);
      return true;
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === Errno.ENODEV) return false;
      throw e;
    } finally {
      inner.close();
    }
  }
}

function eq(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Opens the network namespace of a running process; throws NetnsError when the PID is gone. */
export function netnsOfPid(pid: number): number {
  return openNetnsByPid(pid);
}

/** Opens a named network namespace (/run/netns/NAME). */
export function netnsByName(name: string): number {
  return openNetnsByName(name);
}

/** Creates a named network namespace (like `ip netns add`). */
export function addNamedNetns(name: string): void {
  createNamedNetns(name);
}

/** Deletes a named network namespace; false when it did not exist. */
export function removeNamedNetns(name: string): boolean {
  try {
    deleteNamedNetns(name);
    return true;
  } catch (e) {
    if (e instanceof NetnsError && e.errno === Errno.ENOENT) return false;
    throw e;
  }
}

/** True when a named network namespace exists. */
export function namedNetnsExists(name: string): boolean {
  try {
    Deno.statSync(`/run/netns/${name}`);
    return true;
  } catch {
    return false;
  }
}

/** Closes a namespace fd. */
export function closeNetns(fd: number): void {
  closeFd(fd);
}

/**
 * The unikernel layout inside its namespace (reference §4.6): bridge `virbr0` 192.168.1.1/30 with
 * TAP `tap0`, both up. Uses `ip -batch` (TAP creation needs the tun driver, not rtnetlink).
 */
export async function setupUnikernelDevices(netns: string, mtu: number): Promise<void> {
  const script = [
    `link add name virbr0 mtu ${mtu} type bridge`,
    `addr add 192.168.1.1/30 dev virbr0`,
    `tuntap add dev tap0 mode tap`,
    `link set dev tap0 mtu ${mtu} master virbr0 up`,
    `link set dev virbr0 up`,
  ].join("\n") + "\n";
  await mustRun("ip", ["-n", netns, "-batch", "-"], { stdin: script });
}
