/**
 * Root tests for ffi/tun.ts: a TUN created inside a test namespace, ping answered from JS (plain and
 * with the virtio_net_hdr), offload probing, EAGAIN, multi-queue, and a TUN↔TUN wire driven by two
 * Workers carrying iperf3 TCP with TSO super-packets.
 *
 * This file is also the Worker module of the wire test (it branches on `WorkerGlobalScope`).
 */
import { Errno } from "../../ffi/libc.ts";
import { closeFd, openNetnsByName, withNetns } from "../../ffi/netns.ts";
import {
  describeOffloads,
  openTun,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_USO4,
  TUN_F_USO6,
  type TunDevice,
  TunError,
  tunFromInfo,
  type TunInfo,
} from "../../ffi/tun.ts";
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_NONE,
  VNET_GSO_TCPV4,
  VNET_HDR_LEN,
  VnetHdr,
  writeNoneVnetHdr,
} from "../../ffi/vnet.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { cleanupAll, createNs, isRoot, run, sh } from "../helpers/netns.ts";

const IS_WORKER = typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";

/** Runs `fn` on this thread inside the named namespace (sync only). */
function inNetns<T>(ns: string, fn: () => T): T {
  const fd = openNetnsByName(ns);
  try {
    return withNetns(fd, fn);
  } finally {
    closeFd(fd);
  }
}

/** One's-complement sum over `len` bytes at `off`, folded and inverted. */
function checksum(b: Uint8Array, off: number, len: number): number {
  let s = 0;
  for (let i = 0; i < len - 1; i += 2) s += (b[off + i] << 8) | b[off + i + 1];
  if (len & 1) s += b[off + len - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * Turns the IPv4 ICMP echo request at `pkt[off..off+len)` into an echo reply in place.
 * Returns false when it is not an echo request (IPv6 router solicitations etc.).
 */
function echoReplyInPlace(pkt: Uint8Array, off: number, len: number): boolean {
  if (len < 28 || pkt[off] >> 4 !== 4 || pkt[off + 9] !== 1) return false;
  const ihl = (pkt[off] & 0xf) * 4;
  if (pkt[off + ihl] !== 8) return false;
  for (let k = 0; k < 4; k++) {
    const t = pkt[off + 12 + k];
    pkt[off + 12 + k] = pkt[off + 16 + k];
    pkt[off + 16 + k] = t;
  }
  pkt[off + 10] = 0;
  pkt[off + 11] = 0;
  const ipc = checksum(pkt, off, ihl);
  pkt[off + 10] = ipc >>> 8;
  pkt[off + 11] = ipc & 0xff;
  pkt[off + ihl] = 0; // echo reply
  pkt[off + ihl + 2] = 0;
  pkt[off + ihl + 3] = 0;
  const c = checksum(pkt, off + ihl, len - ihl);
  pkt[off + ihl + 2] = c >>> 8;
  pkt[off + ihl + 3] = c & 0xff;
  return true;
}

interface EchoStats {
  replies: number;
  firstHdr?: VnetHdr;
}

/**
 * Answers pings arriving on a non-blocking TUN until `done` resolves, yielding to the event loop
 * whenever the device is empty.
 */
async function answerPings(tun: TunDevice, done: Promise<unknown>): Promise<EchoStats> {
  let finished = false;
  done.finally(() => (finished = true));
  const buf = new Uint8Array(65536 + VNET_HDR_LEN);
  const off = tun.vnetHdr ? VNET_HDR_LEN : 0;
  const stats: EchoStats = { replies: 0 };
  while (!finished) {
    const n = tun.read(buf);
    if (n === -Errno.EAGAIN) {
      await new Promise((r) => setTimeout(r, 2));
      continue;
    }
    if (n < 0) throw new Error(`tun read failed: errno ${-n}`);
    if (!echoReplyInPlace(buf, off, n - off)) continue;
    if (tun.vnetHdr) {
      stats.firstHdr ??= new VnetHdr().decode(buf, 0);
      writeNoneVnetHdr(buf, 0);
    }
    assertEquals(tun.write(buf, n), n);
    stats.replies++;
  }
  return stats;
}

async function pingThrough(ns: string, tun: TunDevice, cidr: string, target: string): Promise<EchoStats> {
  await sh(["ip", "netns", "exec", ns, "sysctl", "-qw", `net.ipv6.conf.${tun.name}.disable_ipv6=1`]);
  await sh(["ip", "-n", ns, "addr", "add", cidr, "dev", tun.name]);
  await sh(["ip", "-n", ns, "link", "set", tun.name, "up"]);
  const ping = run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", target]);
  const stats = await answerPings(tun, ping);
  const r = await ping;
  assertEquals(r.code, 0, `ping failed: ${r.stdout} ${r.stderr}`);
  assert(/3 received/.test(r.stdout), r.stdout);
  return stats;
}

if (!IS_WORKER) {
  Deno.test("vnet: VnetHdr encode/decode round trip, little-endian fields (no privileges)", () => {
    const h = new VnetHdr();
    h.flags = VNET_F_NEEDS_CSUM;
    h.gsoType = VNET_GSO_TCPV4;
    h.hdrLen = 52;
    h.gsoSize = 1448;
    h.csumStart = 20;
    h.csumOffset = 16;
    const b = new Uint8Array(12).fill(0xee);
    h.encode(b, 1);
    assertEquals([...b], [0xee, 1, 1, 52, 0, 0xa8, 0x05, 20, 0, 16, 0, 0xee]);
    const d = new VnetHdr().decode(b, 1);
    assertEquals({ ...d }, { ...h });
    writeNoneVnetHdr(b, 1);
    assertEquals({ ...new VnetHdr().decode(b, 1) }, { ...new VnetHdr() });
  });

  Deno.test({
    name: "tun: plain TUN in a netns, EAGAIN when empty, ping answered from JS",
    ignore: !isRoot,
    async fn() {
      try {
        const ns = await createNs("tun");
        const tun = inNetns(ns, () => openTun({ name: "nmtun0", nonBlocking: true }));
        try {
          assertEquals(tun.name, "nmtun0");
          assertEquals(tun.vnetHdr, false);
          assertEquals(tun.offloadFlags, 0);
          const links = await sh(["ip", "-n", ns, "link", "show", "nmtun0"]);
          assert(links.includes("nmtun0"), links);
          assert(/POINTOPOINT/.test(links), links);
          // Not in the root namespace.
          assert((await run(["ip", "link", "show", "nmtun0"])).code !== 0, "TUN leaked into the root netns");

          const buf = new Uint8Array(2048);
          assertEquals(tun.read(buf), -Errno.EAGAIN);
          const t0 = performance.now();
          assertEquals(tun.wait(50), 0);
          assert(performance.now() - t0 >= 40, "wait returned before its timeout");
          assertEquals(tun.write(buf, buf.length + 1), -Errno.EINVAL);

          const stats = await pingThrough(ns, tun, "10.99.7.1/24", "10.99.7.2");
          assertEquals(stats.replies, 3);
        } finally {
          tun.close();
          tun.close(); // idempotent
        }
      } finally {
        await cleanupAll();
      }
    },
  });

  Deno.test({
    name: "tun: vnet_hdr mode prefixes a 10-byte virtio_net_hdr; offloads probed; ping answered",
    ignore: !isRoot,
    async fn() {
      try {
        const ns = await createNs("tunv");
        const tun = inNetns(ns, () => openTun({ name: "nmvnet%d", vnetHdr: true, nonBlocking: true }));
        try {
          assertEquals(tun.name, "nmvnet0"); // the kernel filled in %d
          assert(tun.vnetHdr);
          // Kernel 6.18 here: everything is accepted, USO included (Linux ≥ 6.2).
          assertEquals(tun.offloadFlags, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6);
          assertEquals(describeOffloads(tun.offloadFlags), ["csum", "tso4", "tso6", "uso4", "uso6"]);
          assertEquals(tun.read(new Uint8Array(100)), -Errno.EAGAIN);

          const stats = await pingThrough(ns, tun, "10.99.8.1/24", "10.99.8.2");
          assertEquals(stats.replies, 3);
          const h = stats.firstHdr;
          assert(h !== undefined);
          assertEquals(h.gsoType, VNET_GSO_NONE);
          assertEquals(h.gsoSize, 0);
        } finally {
          tun.close();
        }

        // Narrower requests are honoured exactly.
        const noUso = inNetns(ns, () => openTun({ name: "nmv1", vnetHdr: true, offloads: { uso: false } }));
        assertEquals(noUso.offloadFlags, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        noUso.close();
        const csumOnly = inNetns(
          ns,
          () => openTun({ name: "nmv2", vnetHdr: true, offloads: { tso: false, uso: false } }),
        );
        assertEquals(csumOnly.offloadFlags, TUN_F_CSUM);
        csumOnly.close();
        const none = inNetns(ns, () => openTun({ name: "nmv3", vnetHdr: true, offloads: { csum: false } }));
        assertEquals(none.offloadFlags, 0); // TSO/USO need CSUM, so nothing is asked for
        none.close();
      } finally {
        await cleanupAll();
      }
    },
  });

  Deno.test({
    name: "tun: option errors, name clash, multi-queue",
    ignore: !isRoot,
    async fn() {
      try {
        const ns = await createNs("tunq");
        assertThrows(() => openTun({ name: "x".repeat(16) }), TunError, "1..15 bytes");
        assertThrows(() => openTun({ name: "nmq", offloads: { csum: true } }), TunError, "vnetHdr");
        inNetns(ns, () => {
          const a = openTun({ name: "nmq0", multiQueue: true });
          const b = openTun({ name: "nmq0", multiQueue: true }); // second queue of the same device
          try {
            assertEquals(b.name, "nmq0");
            // A single-queue open of a multi-queue device is refused.
            assertThrows(() => openTun({ name: "nmq0" }), Error, "TUNSETIFF(nmq0)");
          } finally {
            a.close();
            b.close();
          }
        });
      } finally {
        await cleanupAll();
      }
    },
  });

  Deno.test({
    name: "tun: TUN↔TUN wire in two Workers carries iperf3 TCP as TSO super-packets",
    ignore: !isRoot,
    async fn() {
      const workers: Worker[] = [];
      const children: Deno.ChildProcess[] = [];
      const tuns: TunDevice[] = [];
      try {
        const a = await createNs("wa");
        const b = await createNs("wb");
        const ta = inNetns(a, () => openTun({ name: "nmwire", vnetHdr: true, nonBlocking: true }));
        tuns.push(ta);
        const tb = inNetns(b, () => openTun({ name: "nmwire", vnetHdr: true, nonBlocking: true }));
        tuns.push(tb);
        for (const [ns, tun, cidr] of [[a, ta, "10.99.9.1/24"], [b, tb, "10.99.9.2/24"]] as const) {
          await sh(["ip", "netns", "exec", ns, "sysctl", "-qw", `net.ipv6.conf.${tun.name}.disable_ipv6=1`]);
          await sh(["ip", "-n", ns, "addr", "add", cidr, "dev", tun.name]);
          await sh(["ip", "-n", ns, "link", "set", tun.name, "up"]);
        }
        const stop = new Int32Array(new SharedArrayBuffer(4));
        const results: Promise<WireStats>[] = [];
        for (const [from, to] of [[ta, tb], [tb, ta]]) {
          const w = new Worker(new URL(import.meta.url), { type: "module" });
          workers.push(w);
          results.push(
            new Promise((resolve, reject) => {
              w.onmessage = (e: MessageEvent<WireStats>) => resolve(e.data);
              w.onerror = (e) => {
                e.preventDefault();
                reject(new Error(e.message));
              };
            }),
          );
          w.postMessage({ from: from.info(), to: to.info(), stop: stop.buffer } satisfies WireJob);
        }

        const server = new Deno.Command("ip", {
          args: ["netns", "exec", b, "iperf3", "-s", "-1", "-B", "10.99.9.2", "-p", "5299"],
          stdout: "null",
          stderr: "null",
        }).spawn();
        children.push(server);
        let report: { end?: { sum_received?: { bits_per_second: number } } } = {};
        for (let attempt = 0; attempt < 20; attempt++) {
          await new Promise((r) => setTimeout(r, 100));
          const c = await run([
            "ip",
            "netns",
            "exec",
            a,
            "iperf3",
            "-c",
            "10.99.9.2",
            "-p",
            "5299",
            "-t",
            "1",
            "-J",
          ]);
          if (c.code === 0) {
            report = JSON.parse(c.stdout);
            break;
          }
        }
        Atomics.store(stop, 0, 1);
        const [ab, ba] = await Promise.all(results);
        const bps = report.end?.sum_received?.bits_per_second ?? 0;
        console.log(
          `wire: ${
            (bps / 1e9).toFixed(2)
          } Gbit/s; a→b ${ab.reads} reads, ${ab.superPackets} super-packets, ` +
            `max ${ab.maxLen} B, first TSO hdr ${JSON.stringify(ab.firstTso)}`,
        );
        assert(bps > 1e8, `iperf3 through the wire too slow or failed: ${bps} bit/s`);
        assertEquals(ab.writeErrors + ba.writeErrors, 0);
        assert(ab.superPackets > 0, "no TSO super-packets were read");
        assert(ab.maxLen > 1500 + VNET_HDR_LEN, `largest read only ${ab.maxLen}`);
        assert(ab.firstTso !== undefined && ab.firstTso.gsoType === VNET_GSO_TCPV4, "no TCPV4 gso_type");
        assert(ab.firstTso.gsoSize > 1000 && ab.firstTso.gsoSize <= 1460, `gso_size ${ab.firstTso.gsoSize}`);
        assertEquals(ab.firstTso.csumStart, 20); // IPv4 header without options
        assertEquals(ab.firstTso.csumOffset, 16); // TCP checksum field
      } finally {
        for (const c of children) {
          try {
            c.kill("SIGKILL");
          } catch { /* already exited */ }
          await c.status;
        }
        for (const w of workers) w.terminate();
        for (const t of tuns) t.close();
        await cleanupAll();
      }
    },
  });
}

/** Message to a wire Worker. */
interface WireJob {
  from: TunInfo;
  to: TunInfo;
  stop: SharedArrayBuffer;
}

/** What a wire Worker saw. */
interface WireStats {
  reads: number;
  superPackets: number;
  maxLen: number;
  writeErrors: number;
  firstTso?: { gsoType: number; gsoSize: number; hdrLen: number; csumStart: number; csumOffset: number };
}

if (IS_WORKER) {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<WireJob>) => void) | null;
    postMessage(m: WireStats): void;
  };
  scope.onmessage = (e: MessageEvent<WireJob>) => {
    const src = tunFromInfo(e.data.from);
    const dst = tunFromInfo(e.data.to);
    const stop = new Int32Array(e.data.stop);
    const buf = new Uint8Array(65536 + VNET_HDR_LEN);
    const hdr = new VnetHdr();
    const stats: WireStats = { reads: 0, superPackets: 0, maxLen: 0, writeErrors: 0 };
    while (Atomics.load(stop, 0) === 0) {
      const n = src.read(buf);
      if (n === -Errno.EAGAIN) {
        src.wait(50);
        continue;
      }
      if (n < 0) break;
      stats.reads++;
      if (n > stats.maxLen) stats.maxLen = n;
      hdr.decode(buf, 0);
      if ((hdr.gsoType & 0x7f) !== VNET_GSO_NONE) {
        stats.superPackets++;
        stats.firstTso ??= {
          gsoType: hdr.gsoType,
          gsoSize: hdr.gsoSize,
          hdrLen: hdr.hdrLen,
          csumStart: hdr.csumStart,
          csumOffset: hdr.csumOffset,
        };
      }
      if (dst.write(buf, n) !== n) stats.writeErrors++;
    }
    scope.postMessage(stats);
  };
}
