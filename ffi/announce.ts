/**
 * Announcing an address from an interface, so that every neighbour holding a stale entry for it (an
 * instance that had the address before, on the same bridge) updates at once: an IPv4 ARP
 * announcement (RFC 5227, a gratuitous request) over an AF_PACKET socket and an IPv6 unsolicited
 * neighbour advertisement (RFC 4861 §7.2.6, override flag) over a raw ICMPv6 socket. Both sockets
 * are created inside the interface's network namespace (the thread switches back at once) and
 * closed after one send each. The frame layouts are pure functions, tested on their own.
 *
 * @example
 * ```ts
 * import { announceAddresses } from "./announce.ts";
 * import { closeFd, openNetnsByName } from "./netns.ts";
 * const nsFd = openNetnsByName("instance1");
 * const mac = new Uint8Array([2, 0, 0, 0, 0, 1]);
 * announceAddresses(nsFd, 2, mac, { v4: new Uint8Array([10, 18, 0, 66]) });
 * closeFd(nsFd);
 * ```
 */
import { errno, libc, SyscallError } from "./libc.ts";
import { withNetns } from "./netns.ts";

const AF_PACKET = 17;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const ETH_P_ARP = 0x0806;
const IPPROTO_ICMPV6 = 58;
const IPPROTO_IPV6 = 41;
const IPV6_MULTICAST_IF = 17;
const IPV6_MULTICAST_HOPS = 18;

/**
 * The 28-byte ARP announcement for `ip` at `mac`: a request whose sender and target address are
 * both `ip` (RFC 5227 §2.3). Linux updates an existing entry from it even within `locktime`.
 *
 * @example
 * ```ts
 * const p = arpAnnouncement(new Uint8Array([2, 0, 0, 0, 0, 1]), new Uint8Array([10, 18, 0, 66]));
 * p.length; // 28
 * ```
 */
export function arpAnnouncement(mac: Uint8Array, ip: Uint8Array): Uint8Array {
  if (mac.length !== 6 || ip.length !== 4) throw new RangeError("ARP needs a 6-byte MAC and an IPv4 address");
  const p = new Uint8Array(28);
  const dv = new DataView(p.buffer);
  dv.setUint16(0, 1); // hardware: Ethernet
  dv.setUint16(2, 0x0800); // protocol: IPv4
  p[4] = 6;
  p[5] = 4;
  dv.setUint16(6, 1); // request
  p.set(mac, 8);
  p.set(ip, 14);
  // target hardware address stays zero
  p.set(ip, 24);
  return p;
}

/**
 * The 32-byte ICMPv6 unsolicited neighbour advertisement for `ip` at `mac`: override flag set,
 * solicited flag clear, a target link-layer address option. The checksum field is left zero: the
 * kernel fills it in for raw ICMPv6 sockets.
 *
 * @example
 * ```ts
 * const na = neighbourAdvertisement(new Uint8Array([2, 0, 0, 0, 0, 1]), new Uint8Array(16));
 * na[0]; // 136
 * ```
 */
export function neighbourAdvertisement(mac: Uint8Array, ip: Uint8Array): Uint8Array {
  if (mac.length !== 6 || ip.length !== 16) throw new RangeError("NA needs a 6-byte MAC and an IPv6 address");
  const p = new Uint8Array(32);
  p[0] = 136; // neighbour advertisement
  p[4] = 0x20; // O (override); R = S = 0
  p.set(ip, 8);
  p[24] = 2; // option: target link-layer address
  p[25] = 1; // length in units of 8 bytes
  p.set(mac, 26);
  return p;
}

const ALL_NODES = new Uint8Array([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

function setInt(fd: number, level: number, name: number, v: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, v, true);
  if (libc.setsockopt(fd, level, name, b, 4) !== 0) throw new SyscallError(`setsockopt(${name})`, errno());
}

function sendArp(fd: number, index: number, mac: Uint8Array, ip: Uint8Array): void {
  const sll = new Uint8Array(20);
  const dv = new DataView(sll.buffer);
  dv.setUint16(0, AF_PACKET, true);
  dv.setUint16(2, ETH_P_ARP); // network order
  dv.setInt32(4, index, true);
  sll[11] = 6;
  sll.fill(0xff, 12, 18); // broadcast
  const pkt = arpAnnouncement(mac, ip);
  if (libc.sendto(fd, pkt, BigInt(pkt.length), 0, sll, sll.length) < 0) {
    throw new SyscallError("sendto(ARP announcement)", errno());
  }
}

function sendNa(fd: number, index: number, mac: Uint8Array, ip: Uint8Array): void {
  setInt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 255); // receivers drop NAs with another hop limit
  setInt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, index);
  const sa = new Uint8Array(28);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, AF_INET6, true);
  sa.set(ALL_NODES, 8);
  dv.setUint32(24, index, true);
  const pkt = neighbourAdvertisement(mac, ip);
  if (libc.sendto(fd, pkt, BigInt(pkt.length), 0, sa, sa.length) < 0) {
    throw new SyscallError("sendto(neighbour advertisement)", errno());
  }
}

/**
 * Sends one ARP announcement (`v4`) and one unsolicited neighbour advertisement (`v6`) from link
 * `index` of the namespace `nsFd`, with hardware address `mac`. Throws SyscallError on failure.
 */
export function announceAddresses(
  nsFd: number,
  index: number,
  mac: Uint8Array,
  addrs: { v4?: Uint8Array; v6?: Uint8Array },
): void {
  const open = (domain: number, type: number, proto: number) =>
    withNetns(nsFd, () => libc.socket(domain, type | SOCK_CLOEXEC, proto));
  if (addrs.v4) {
    // The protocol argument is in network byte order.
    const fd = open(AF_PACKET, SOCK_DGRAM, ((ETH_P_ARP & 0xff) << 8) | (ETH_P_ARP >> 8));
    if (fd < 0) throw new SyscallError("socket(AF_PACKET)", errno());
    try {
      sendArp(fd, index, mac, addrs.v4);
    } finally {
      libc.close(fd);
    }
  }
  if (addrs.v6) {
    const fd = open(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
    if (fd < 0) throw new SyscallError("socket(AF_INET6, ICMPv6)", errno());
    try {
      sendNa(fd, index, mac, addrs.v6);
    } finally {
      libc.close(fd);
    }
  }
}
