/**
 * Root tests for ffi/udp.ts over a veth between two test namespaces: batched send/receive with
 * sources and sizes, UDP GSO (segmented on receive without GRO, coalesced with GRO), the userspace
 * split fallback, per-datagram errors, IPv6 and dual stack, timeouts, and a socket driven by a Worker.
 *
 * This file is also the Worker module of the echo test (it branches on `WorkerGlobalScope`).
 */
import { closeFd, openNetnsByName, withNetns } from "../../ffi/netns.ts";
import {
  formatIPv4,
  formatIPv6,
  MSG_TRUNC,
  openUdp,
  parseIPv4,
  parseIPv6,
  RecvBatch,
  SendBatch,
  UdpError,
  udpFromInfo,
  type UdpInfo,
  type UdpOptions,
  type UdpSocket,
} from "../../ffi/udp.ts";
import { openTun } from "../../ffi/tun.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { cleanupAll, createNs, isRoot, link, sh } from "../helpers/netns.ts";

const IS_WORKER = typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";

const A4 = "10.98.1.1";
const B4 = "10.98.1.2";
const A6 = "fd00:98::1";
const B6 = "fd00:98::2";

/** Runs `fn` on this thread inside the named namespace (sync only). */
function inNetns<T>(ns: string, fn: () => T): T {
  const fd = openNetnsByName(ns);
  try {
    return withNetns(fd, fn);
  } finally {
    closeFd(fd);
  }
}

/** Two namespaces joined by a veth with IPv4 and (nodad) IPv6 addresses. */
async function pair(): Promise<{ a: string; b: string }> {
  const a = await createNs("ua");
  const b = await createNs("ub");
  const { ifA, ifB } = await link(a, b, `${A4}/24`, `${B4}/24`);
  await sh(["ip", "-n", a, "addr", "add", `${A6}/64`, "dev", ifA, "nodad"]);
  await sh(["ip", "-n", b, "addr", "add", `${B6}/64`, "dev", ifB, "nodad"]);
  return { a, b };
}

/** Receives until `want` datagrams/segments arrived or `ms` passed; calls `each` per slot. */
function drain(sock: UdpSocket, rb: RecvBatch, want: number, each: (i: number) => number, ms = 2000): number {
  let got = 0;
  const deadline = performance.now() + ms;
  while (got < want && performance.now() < deadline) {
    const n = sock.recvBatch(rb, 100);
    assert(n >= 0, `recvBatch failed: errno ${-n}`);
    for (let i = 0; i < n; i++) got += each(i);
  }
  return got;
}

/** Fills `len` bytes at `off`: the first byte is `tag` (< 256), the rest a pattern derived from it. */
function pattern(buf: Uint8Array, off: number, len: number, tag: number): void {
  if (len > 0) buf[off] = tag;
  for (let k = 1; k < len; k++) buf[off + k] = (tag * 7 + k) & 0xff;
}

/** True when `buf[off..off+len)` holds `pattern(…, tag)`. */
function checkPattern(buf: Uint8Array, off: number, len: number, tag: number): boolean {
  if (len > 0 && buf[off] !== tag) return false;
  for (let k = 1; k < len; k++) if (buf[off + k] !== ((tag * 7 + k) & 0xff)) return false;
  return true;
}

/** One's-complement check of the UDP checksum of the IPv4 packet in `p[0..n)` (0 when valid). */
function udp4Checksum(p: Uint8Array, n: number): number {
  let s = 17 + (n - 20); // protocol + UDP length
  for (let k = 12; k < 20; k += 2) s += (p[k] << 8) | p[k + 1]; // addresses
  for (let k = 20; k < n - 1; k += 2) s += (p[k] << 8) | p[k + 1];
  if ((n - 20) & 1) s += p[n - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** Opens sockets in two namespaces and closes them afterwards. */
async function withSockets(
  optsA: UdpOptions,
  optsB: UdpOptions,
  fn: (sa: UdpSocket, sb: UdpSocket) => void | Promise<void>,
): Promise<void> {
  try {
    const { a, b } = await pair();
    const sa = inNetns(a, () => openUdp(optsA));
    const sb = inNetns(b, () => openUdp(optsB));
    try {
      await fn(sa, sb);
    } finally {
      sa.close();
      sb.close();
    }
  } finally {
    await cleanupAll();
  }
}

if (!IS_WORKER) {
  Deno.test("udp: address helpers and batch validation (no privileges)", () => {
    assertEquals(parseIPv4("10.98.1.2"), 0x0a620102);
    assertEquals(formatIPv4(0x0a620102), "10.98.1.2");
    assertEquals(formatIPv6(parseIPv6("fd00:98::1")), "fd00:98::1");
    assertEquals(formatIPv6(parseIPv6("::ffff:10.0.0.1")), "::ffff:a00:1");
    assertEquals(formatIPv6(parseIPv6("1:2:3:4:5:6:7:8")), "1:2:3:4:5:6:7:8");
    assertThrows(() => parseIPv6("1::2::3"), UdpError);
    assertThrows(() => parseIPv4("1.2.3.256"), UdpError);
    const rb = new RecvBatch(4, 100);
    assertEquals(rb.arenaCount, 5); // data, mmsghdr, iovec, sockaddr, cmsg — all held by the batch
    assertEquals(rb.hdrs.length, 4 * 64);
    const sb = new SendBatch(4, 100);
    sb.sizes[0] = 101;
    sb.setDst4(0, 1, 1);
    assertThrows(() => sb.encode(1, 4, true), UdpError, "outside");
    sb.sizes[0] = 10;
    sb.dstFamilies[0] = 0;
    assertThrows(() => sb.encode(1, 4, true), UdpError, "destination not set");
    assertThrows(() => new RecvBatch(0, 10), UdpError);
  });

  Deno.test({
    name: "udp: sendBatch of 64 datagrams of different sizes → recvBatch gets sizes, source, port",
    ignore: !isRoot,
    async fn() {
      await withSockets(
        { bindAddr: A4, port: 0 },
        { port: 0, rcvbuf: 4 << 20 },
        (sa, sb) => {
          assert(sa.localPort > 0 && sb.localPort > 0);
          assert(sb.rcvbuf >= 4 << 20, `rcvbuf ${sb.rcvbuf}`); // SO_RCVBUFFORCE as root (kernel doubles)
          assertEquals(sa.family, 4);
          const send = new SendBatch(64, 2048);
          const sizeOf = (i: number) => 1 + i * 21;
          for (let i = 0; i < 64; i++) {
            send.offsets[i] = i % 3 === 0 ? 16 : 0; // headroom on some slots
            pattern(send.bufs[i], send.offsets[i], sizeOf(i), i);
            send.sizes[i] = sizeOf(i);
            send.setDst4(i, parseIPv4(B4), sb.localPort);
          }
          assertEquals(sa.sendBatch(send, 64), 64);
          assertEquals(send.dropped, 0);

          const rb = new RecvBatch(16, 2048);
          const seen = new Set<number>();
          const got = drain(sb, rb, 64, (i) => {
            const size = rb.sizes[i];
            const tag = (size - 1) / 21;
            assert(Number.isInteger(tag) && tag < 64, `unexpected size ${size}`);
            assert(checkPattern(rb.bufs[i], 0, size, tag), `payload of datagram ${tag} corrupted`);
            assertEquals(rb.families[i], 4);
            assertEquals(formatIPv4(rb.addrs4[i]), A4);
            assertEquals(rb.ports[i], sa.localPort);
            assertEquals(rb.gsoSizes[i], 0);
            assertEquals(rb.msgFlags[i] & MSG_TRUNC, 0);
            seen.add(tag);
            return 1;
          });
          assertEquals(got, 64);
          assertEquals(seen.size, 64);
        },
      );
    },
  });

  Deno.test({
    name: "udp: GSO send of N×1400 (+ short tail) → N+1 datagrams at a receiver without GRO",
    ignore: !isRoot,
    async fn() {
      await withSockets({ bindAddr: A4, port: 0 }, { port: 0, rcvbuf: 4 << 20 }, (sa, sb) => {
        assert(sa.gso, "kernel without UDP_SEGMENT?");
        assertEquals(sb.gro, false);
        const N = 20;
        const send = new SendBatch(2, 65535);
        const total = N * 1400 + 700;
        for (let s = 0; s <= N; s++) pattern(send.bufs[0], s * 1400, s === N ? 700 : 1400, s);
        send.sizes[0] = total;
        send.segSizes[0] = 1400;
        send.setDst4(0, parseIPv4(B4), sb.localPort);
        // A plain datagram in the same sendmmsg.
        pattern(send.bufs[1], 0, 99, 200);
        send.sizes[1] = 99;
        send.setDst4(1, parseIPv4(B4), sb.localPort);
        assertEquals(sa.sendBatch(send, 2), 2);
        assertEquals(send.splitSends, 0);

        const rb = new RecvBatch(64, 2048);
        const tags = new Set<number>();
        const got = drain(sb, rb, N + 2, (i) => {
          const size = rb.sizes[i];
          assertEquals(rb.gsoSizes[i], 0);
          const tag = rb.bufs[i][0];
          assert(size === 1400 || size === 700 || size === 99, `size ${size}`);
          assert(checkPattern(rb.bufs[i], 0, size, tag), `segment ${tag} corrupted`);
          tags.add(tag);
          return 1;
        });
        assertEquals(got, N + 2);
        assertEquals(tags.size, N + 2);
      });
    },
  });

  Deno.test({
    name: "udp: GSO send → GRO receiver gets coalesced reads with gsoSize 1400",
    ignore: !isRoot,
    async fn() {
      await withSockets({ bindAddr: A4, port: 0 }, { port: 0, gro: true, rcvbuf: 8 << 20 }, (sa, sb) => {
        assert(sb.gro);
        const N = 40;
        const send = new SendBatch(2, 65535);
        for (let e = 0; e < 2; e++) {
          for (let s = 0; s < N; s++) pattern(send.bufs[e], s * 1400, 1400, e * N + s);
          send.sizes[e] = N * 1400;
          send.segSizes[e] = 1400;
          send.setDst4(e, parseIPv4(B4), sb.localPort);
        }
        assertEquals(sa.sendBatch(send, 2), 2);

        const rb = new RecvBatch(8, 65535);
        let coalesced = 0;
        let bytes = 0;
        const got = drain(sb, rb, 2 * N, (i) => {
          const size = rb.sizes[i];
          const gso = rb.gsoSizes[i];
          bytes += size;
          if (size > 1400) {
            assertEquals(gso, 1400);
            coalesced++;
          }
          const step = gso > 0 ? gso : size;
          let segs = 0;
          for (let off = 0; off < size; off += step, segs++) {
            const tag = rb.bufs[i][off];
            assert(
              checkPattern(rb.bufs[i], off, Math.min(step, size - off), tag),
              "coalesced segment corrupted",
            );
          }
          return segs;
        });
        assertEquals(got, 2 * N);
        assertEquals(bytes, 2 * N * 1400);
        assert(coalesced > 0, "no coalesced read");
      });
    },
  });

  Deno.test({
    name: "udp: gso:false splits GSO entries in userspace; per-datagram errors are dropped and counted",
    ignore: !isRoot,
    async fn() {
      await withSockets({ bindAddr: A4, port: 0, gso: false }, { port: 0, rcvbuf: 4 << 20 }, (sa, sb) => {
        assertEquals(sa.gso, false);
        const send = new SendBatch(4, 65535);
        for (let s = 0; s < 5; s++) pattern(send.bufs[0], s * 1000, 1000, s);
        send.sizes[0] = 5000;
        send.segSizes[0] = 1000;
        send.setDst4(0, parseIPv4(B4), sb.localPort);
        send.sizes[1] = 65530; // > 65507: EMSGSIZE, dropped
        send.setDst4(1, parseIPv4(B4), sb.localPort);
        send.sizes[2] = 10;
        send.setDst6(2, parseIPv6(B6), 0, sb.localPort); // IPv6 on an IPv4 socket: EAFNOSUPPORT, dropped
        pattern(send.bufs[3], 0, 33, 9);
        send.sizes[3] = 33;
        send.setDst4(3, parseIPv4(B4), sb.localPort);
        assertEquals(sa.sendBatch(send, 4), 4);
        assertEquals(send.splitSends, 1);
        assertEquals(send.dropped, 2);
        assert(send.lastErrno === 97 || send.lastErrno === 90, `lastErrno ${send.lastErrno}`);

        const rb = new RecvBatch(16, 2048);
        const sizes: number[] = [];
        drain(sb, rb, 6, (i) => {
          sizes.push(rb.sizes[i]);
          return 1;
        });
        assertEquals(sizes.sort((x, y) => x - y), [33, 1000, 1000, 1000, 1000, 1000]);
      });
    },
  });

  Deno.test({
    name: "udp: GSO onto an egress without checksum offload (plain TUN) → separate, checksummed packets",
    ignore: !isRoot,
    async fn() {
      try {
        const ns = await createNs("ueio");
        // A TUN without TUNSETOFFLOAD has no hardware checksum. Before Linux 6.11 UDP GSO failed there
        // with EIO (sendBatch then switches `gso` off and splits in userspace); since 6.11 the kernel
        // segments and checksums in software. Either way the TUN must see separate, valid packets.
        const { tun, sock } = inNetns(ns, () => ({
          tun: openTun({ name: "nmeio", nonBlocking: true }),
          sock: openUdp({ port: 0 }),
        }));
        try {
          await sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.nmeio.disable_ipv6=1"]);
          await sh(["ip", "-n", ns, "addr", "add", "10.97.0.1/24", "dev", "nmeio"]);
          await sh(["ip", "-n", ns, "link", "set", "nmeio", "up"]);
          assert(sock.gso);
          const send = new SendBatch(2, 65535);
          for (let e = 0; e < 2; e++) {
            for (let s = 0; s < 6; s++) pattern(send.bufs[e], s * 1200, 1200, e * 6 + s);
            send.sizes[e] = 6 * 1200;
            send.segSizes[e] = 1200;
            send.setDst4(e, parseIPv4("10.97.0.2"), 40000);
          }
          assertEquals(sock.sendBatch(send, 2), 2);
          assertEquals(send.dropped, 0);
          assertEquals(send.splitSends, sock.gso ? 0 : 2);
          // The TUN sees 12 separate IPv4/UDP packets of 20 + 8 + 1200 bytes.
          const buf = new Uint8Array(65536);
          const tags = new Set<number>();
          const deadline = performance.now() + 2000;
          while (tags.size < 12 && performance.now() < deadline) {
            const n = tun.read(buf);
            if (n < 0) {
              tun.wait(50);
              continue;
            }
            if (buf[0] !== 0x45 || buf[9] !== 17) continue;
            assertEquals(n, 1228);
            assert(checkPattern(buf, 28, 1200, buf[28]));
            assertEquals(udp4Checksum(buf, n), 0, "UDP checksum of a segment is wrong");
            tags.add(buf[28]);
          }
          assertEquals(tags.size, 12);
        } finally {
          sock.close();
          tun.close();
        }
      } finally {
        await cleanupAll();
      }
    },
  });

  Deno.test({
    name: "udp: IPv6 underlay — batch with v6 sources, GSO without and with GRO",
    ignore: !isRoot,
    async fn() {
      await withSockets(
        { bindAddr: A6, port: 0 },
        { bindAddr: "::", port: 0, gro: true, rcvbuf: 8 << 20 },
        (sa, sb) => {
          assertEquals(sa.family, 6);
          assertEquals(sb.family, 6);
          const dst = parseIPv6(B6);
          const send = new SendBatch(8, 65535);
          for (let i = 0; i < 7; i++) {
            pattern(send.bufs[i], 0, 100 + i, i);
            send.sizes[i] = 100 + i;
            send.setDst6(i, dst, 0, sb.localPort);
          }
          for (let s = 0; s < 30; s++) pattern(send.bufs[7], s * 1400, 1400, 10 + s);
          send.sizes[7] = 30 * 1400;
          send.segSizes[7] = 1400;
          send.setDst6(7, dst, 0, sb.localPort);
          assertEquals(sa.sendBatch(send, 8), 8);

          const rb = new RecvBatch(16, 65535);
          let coalesced = false;
          const got = drain(sb, rb, 37, (i) => {
            assertEquals(rb.families[i], 6);
            assertEquals(formatIPv6(rb.addrs6, i * 16), A6);
            assertEquals(rb.ports[i], sa.localPort);
            if (rb.gsoSizes[i] > 0) {
              assertEquals(rb.gsoSizes[i], 1400);
              if (rb.sizes[i] > 1400) coalesced = true;
              return Math.ceil(rb.sizes[i] / 1400);
            }
            return 1;
          });
          assertEquals(got, 37);
          assert(coalesced, "GRO did not coalesce over IPv6");
        },
      );
    },
  });

  Deno.test({
    name: "udp: dual-stack IPv6 socket reports IPv4 senders as v4 and replies to them",
    ignore: !isRoot,
    async fn() {
      await withSockets({ bindAddr: A4, port: 0 }, { family: 6, dualStack: true, port: 0 }, (sa, sb) => {
        const send = new SendBatch(1, 1500);
        pattern(send.bufs[0], 0, 50, 3);
        send.sizes[0] = 50;
        send.setDst4(0, parseIPv4(B4), sb.localPort);
        assertEquals(sa.sendBatch(send, 1), 1);
        const rb = new RecvBatch(4, 1500);
        assertEquals(drain(sb, rb, 1, () => 1), 1);
        assertEquals(rb.families[0], 4);
        assertEquals(formatIPv4(rb.addrs4[0]), A4);
        assertEquals(rb.ports[0], sa.localPort);

        // Reply from the dual-stack socket (encoded as ::ffff:10.98.1.1).
        const reply = new SendBatch(1, 1500);
        reply.replyTo(0, rb, 0);
        reply.sizes[0] = 7;
        assertEquals(sb.sendBatch(reply, 1), 1);
        assertEquals(reply.dropped, 0);
        const back = new RecvBatch(4, 1500);
        assertEquals(drain(sa, back, 1, () => 1), 1);
        assertEquals(back.sizes[0], 7);
        assertEquals(formatIPv4(back.addrs4[0]), B4);
        assertEquals(back.ports[0], sb.localPort);
      });
    },
  });

  Deno.test({
    name: "udp: recvBatch timeout returns 0; non-blocking returns 0 at once; wait() times out",
    ignore: !isRoot,
    async fn() {
      await withSockets({ bindAddr: A4, port: 0 }, { port: 0, nonBlocking: true }, (sa, sb) => {
        const rb = new RecvBatch(4, 1500);
        let t0 = performance.now();
        assertEquals(sa.recvBatch(rb, 60), 0);
        const waited = performance.now() - t0;
        assert(waited >= 50 && waited < 1000, `timeout took ${waited} ms`);
        t0 = performance.now();
        assertEquals(sb.recvBatch(rb), 0); // non-blocking, nothing queued
        assert(performance.now() - t0 < 50);
        assertEquals(sa.wait(20), 0);
        const info = sa.info();
        sa.close();
        assertEquals(udpFromInfo({ ...info, fd: 100000 }).recvBatch(rb, 0), -9); // EBADF
      });
    },
  });

  Deno.test({
    name: "udp: a Worker drives a socket from udpFromInfo (echo server with a stop flag)",
    ignore: !isRoot,
    async fn() {
      let worker: Worker | undefined;
      const stop = new Int32Array(new SharedArrayBuffer(4));
      try {
        await withSockets({ bindAddr: A4, port: 0 }, { port: 0, rcvbuf: 4 << 20 }, async (sa, sb) => {
          worker = new Worker(new URL(import.meta.url), { type: "module" });
          const done = new Promise<number>((resolve, reject) => {
            worker!.onmessage = (e: MessageEvent<number>) => resolve(e.data);
            worker!.onerror = (e) => {
              e.preventDefault();
              reject(new Error(e.message));
            };
          });
          worker.postMessage({ sock: sb.info(), stop: stop.buffer } satisfies EchoJob);
          const send = new SendBatch(64, 1500);
          for (let i = 0; i < 64; i++) {
            pattern(send.bufs[i], 0, 200 + i, i);
            send.sizes[i] = 200 + i;
            send.setDst4(i, parseIPv4(B4), sb.localPort);
          }
          assertEquals(sa.sendBatch(send, 64), 64);
          const rb = new RecvBatch(64, 1500);
          const seen = new Set<number>();
          // The Worker starts by loading this module: seconds on a loaded machine (the datagrams wait
          // in its socket's buffer meanwhile).
          const deadline = performance.now() + 20_000;
          while (seen.size < 64 && performance.now() < deadline) {
            const n = sa.recvBatch(rb, 20);
            for (let i = 0; i < n; i++) {
              const tag = rb.sizes[i] - 200;
              assert(checkPattern(rb.bufs[i], 0, rb.sizes[i], tag));
              assertEquals(formatIPv4(rb.addrs4[i]), B4);
              seen.add(tag);
            }
            await new Promise((r) => setTimeout(r, 0)); // let the Worker's messages through
          }
          Atomics.store(stop, 0, 1);
          assertEquals(seen.size, 64);
          assertEquals(await done, 64);
        });
      } finally {
        Atomics.store(stop, 0, 1);
        worker?.terminate();
      }
    },
  });
}

/** Message to the echo Worker. */
interface EchoJob {
  sock: UdpInfo;
  stop: SharedArrayBuffer;
}

if (IS_WORKER) {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<EchoJob>) => void) | null;
    postMessage(m: number): void;
  };
  scope.onmessage = (e: MessageEvent<EchoJob>) => {
    const sock = udpFromInfo(e.data.sock); // not closed here: the main thread owns the fd
    const stop = new Int32Array(e.data.stop);
    const rb = new RecvBatch(32, 1500);
    const sb = new SendBatch(32, 1500);
    let echoed = 0;
    while (Atomics.load(stop, 0) === 0) {
      const n = sock.recvBatch(rb, 50);
      if (n < 0) break;
      for (let i = 0; i < n; i++) {
        sb.bufs[i].set(rb.bufs[i].subarray(0, rb.sizes[i]));
        sb.sizes[i] = rb.sizes[i];
        sb.replyTo(i, rb, i);
      }
      if (n > 0) echoed += sock.sendBatch(sb, n);
    }
    scope.postMessage(echoed);
  };
}
