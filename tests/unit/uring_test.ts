/**
 * The io_uring layer without root: ffi/uring.ts's pure parts (SQE bytes, params decoding) and a real
 * ring (NOP, a timed wait), and src/proxy/uring_io.ts's completion dispatch on real fds — UDP
 * sockets on loopback (one of them standing in for the TUN queue: a READ on it is a receive), an
 * eventfd — with its sends queued until the next wait, and its ring fd given back on close.
 */
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { encodeSqe, Op, PARAMS_SIZE, parseParams, Ring, SQE_SIZE, UringError } from "../../ffi/uring.ts";
import { DEFAULT_FLAGS, putSockaddr, SPIN_FLAGS, Tag, UringIo, userData } from "../../src/proxy/uring_io.ts";
import { bufferAddress } from "../../ffi/libc.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { openUdp, parseIPv4, RecvBatch, SendBatch } from "../../ffi/udp.ts";
import { tunFromInfo } from "../../ffi/tun.ts";

function ringFds(): number {
  let n = 0;
  for (const d of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${d.name}`) === "anon_inode:[io_uring]") n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

Deno.test("uring: an SQE is written whole, little-endian, bounds-checked", () => {
  const sqes = new Uint32Array(2 * SQE_SIZE / 4).fill(0xdeadbeef);
  encodeSqe(sqes, 1, Op.RECVMSG, 7, 0x1234_5678_9abc, 1, -1, 0x40, userData(Tag.SEND, 3), 8);
  const b = new Uint8Array(sqes.buffer, SQE_SIZE, SQE_SIZE);
  const v = new DataView(b.buffer, SQE_SIZE);
  assertEquals(b[0], Op.RECVMSG);
  assertEquals(b[1], 8, "flags");
  assertEquals(v.getUint16(2, true), 0, "ioprio");
  assertEquals(v.getInt32(4, true), 7, "fd");
  assertEquals(v.getBigUint64(8, true), 0xffff_ffff_ffff_ffffn, "off -1: the file position");
  assertEquals(v.getBigUint64(16, true), 0x1234_5678_9abcn, "addr above 2^32");
  assertEquals(v.getUint32(24, true), 1, "len");
  assertEquals(v.getUint32(28, true), 0x40, "op flags");
  assertEquals(v.getBigUint64(32, true), BigInt(Tag.SEND | (3 << 8)), "user data");
  for (let k = 40; k < 64; k++) assertEquals(b[k], 0, `byte ${k} cleared`);
  assertEquals(sqes[0], 0xdeadbeef, "the SQE before it untouched");
  assertThrows(() => encodeSqe(sqes, 2, Op.NOP, -1, 0, 0, 0, 0, 0), UringError);
  assertThrows(() => encodeSqe(sqes, 0, Op.NOP, -1, -5, 0, 0, 0, 0), UringError);
  assertThrows(() => encodeSqe(sqes, 0, Op.NOP, -1, 0, 0, 0, 0, 2 ** 32), UringError);
  assertThrows(() => userData(256), RangeError);
});

Deno.test("uring: io_uring_params decoded; impossible sizes refused", () => {
  const p = new Uint8Array(PARAMS_SIZE);
  const v = new DataView(p.buffer);
  v.setUint32(0, 64, true);
  v.setUint32(4, 128, true);
  v.setUint32(20, 0x1, true);
  [0, 4, 8, 12, 16, 20].forEach((x, i) => v.setUint32(40 + i * 4, x, true)); // sq head … dropped
  v.setUint32(64, 0x100, true); // sq array
  [0x40, 0x44, 0x48, 0x4c, 0x50, 0x80].forEach((x, i) => v.setUint32(80 + i * 4, x, true)); // cq … cqes
  const l = parseParams(p);
  assertEquals([l.sqEntries, l.cqEntries, l.features], [64, 128, 1]);
  assertEquals(l.sq.array, 0x100);
  assertEquals(l.cq.cqes, 0x80);
  assertEquals(l.sqBytes, 0x100 + 64 * 4);
  assertEquals(l.cqBytes, 0x80 + 128 * 16);
  v.setUint32(0, 48, true);
  assertThrows(() => parseParams(p), UringError, "48 SQ"); // not a power of two
  assertThrows(() => parseParams(p.subarray(0, 100)), UringError);
});

Deno.test("uring: a real ring — NOP round trip, a timed wait, SQ space, fd closed", () => {
  const before = ringFds();
  const ring = Ring.open(4);
  try {
    assertEquals(ringFds(), before + 1);
    for (let i = 0; i < 4; i++) assert(ring.prep(Op.NOP, -1, 0, 0, 0, 0, 100 + i));
    assertEquals(ring.prep(Op.NOP, -1, 0, 0, 0, 0, 9), false, "SQ full");
    assertEquals(ring.enter(ring.queued, 4), 4);
    const got: number[] = [];
    while (ring.peek()) {
      got.push(ring.cqeData);
      assertEquals(ring.cqeRes, 0);
      ring.advance();
    }
    assertEquals(got, [100, 101, 102, 103]);
    const t = performance.now();
    assertEquals(ring.enter(0, 1, 30), 0, "timed out");
    assert(performance.now() - t >= 25, "it waited");
  } finally {
    ring.close();
  }
  ring.close();
  assertEquals(ringFds(), before, "closed");
  assertThrows(() => ring.prep(Op.NOP, -1, 0, 0, 0, 0, 1), UringError);
});

Deno.test("uring: sockaddrs as SendBatch encodes them (v4, v4-mapped on a v6 socket, v6 with scope)", () => {
  const b = new SendBatch(3, 64);
  b.setDst4(0, parseIPv4("192.168.77.2"), 50103);
  b.setDst4(1, parseIPv4("10.0.0.1"), 9);
  b.setDst6(2, new Uint8Array([0xfd, 0, ...new Array(13).fill(0), 1]), 0, 443, 5);
  const out = new DataView(new ArrayBuffer(32));
  const bytes = new Uint8Array(out.buffer);
  assertEquals(putSockaddr(out, 0, b, 0, 4), 16);
  assertEquals([...bytes.subarray(0, 8)], [2, 0, 0xc3, 0xb7, 192, 168, 77, 2]);
  assertEquals(putSockaddr(out, 0, b, 1, 6), 28);
  assertEquals([...bytes.subarray(0, 4)], [10, 0, 0, 9]);
  assertEquals([...bytes.subarray(8, 24)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
  assertEquals(putSockaddr(out, 0, b, 2, 6), 28);
  assertEquals([bytes[8], bytes[23], out.getUint32(24, true)], [0xfd, 1, 5]);
});

Deno.test("uring: completions dispatched to the seams' calls; sends wait for the next enter; close gives the fd back", () => {
  const before = ringFds();
  const sock = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" });
  const fakeTunSock = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" }); // READ on it = a receive
  const peer = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" });
  const wake = new EventFd();
  sock.setNonBlocking(true);
  fakeTunSock.setNonBlocking(true);
  const dev = tunFromInfo({ fd: fakeTunSock.fd, name: "none", vnetHdr: true, offloadFlags: 0 });
  const io = new UringIo(dev, sock, wake.fd);
  const lo = parseIPv4("127.0.0.1");
  const out = new SendBatch(2, 2048);
  const send = (to: number, text: string) => {
    out.bufs[0].set(new TextEncoder().encode(text));
    out.offsets[0] = 0;
    out.sizes[0] = text.length;
    out.setDst4(0, lo, to);
    return out;
  };
  const rb = new RecvBatch(4, 65535);
  const text = (b: RecvBatch, i: number) => new TextDecoder().decode(b.bufs[i].subarray(0, b.sizes[i]));
  try {
    assertEquals(ringFds(), before + 1);
    assertEquals(io.wait(20), 0, "nothing yet");
    // The socket: first readiness (the receive batch is not known yet), then armed receives.
    assertEquals(peer.sendBatch(send(sock.localPort, "one"), 1), 1);
    assertEquals(io.wait(1000), 1);
    assert(io.readable(1) && !io.readable(0) && !io.readable(2));
    assertEquals(io.sock.recvBatch(rb, 0), 1);
    assertEquals(text(rb, 0), "one");
    assertEquals(io.wait(0), 0, "RECVMSG armed now");
    assertEquals(peer.sendBatch(send(sock.localPort, "two"), 1), 1);
    assertEquals(io.wait(1000), 1);
    assertEquals(io.sock.recvBatch(rb, 0), 1, "the completed receive, in slot 0");
    assertEquals([text(rb, 0), rb.families[0], rb.addrs4[0], rb.ports[0]], ["two", 4, lo, peer.localPort]);
    assertEquals(io.sock.recvBatch(rb, 0), 0, "drained directly: empty");
    // A small send is queued: on the wire only after the next wait's single enter.
    const pr = new RecvBatch(2, 2048);
    assertEquals(io.sock.sendBatch(send(peer.localPort, "reply"), 1), 1);
    assertEquals(io.deferredSends, 1);
    assertEquals(peer.recvBatch(pr, 0), 0, "not sent yet");
    const enters = io.ring.enters;
    io.wait(0);
    assertEquals(io.ring.enters, enters + 1, "one system call: submit + re-arm");
    assertEquals(peer.recvBatch(pr, 50), 1);
    assertEquals([text(pr, 0), pr.ports[0]], ["reply", sock.localPort]);
    // The "TUN": a completed READ hands its bytes to the first read, then reads go direct.
    assertEquals(peer.sendBatch(send(fakeTunSock.localPort, "0123456789packet"), 1), 1);
    assertEquals(io.wait(1000), 1);
    assert(io.readable(0));
    const buf = new Uint8Array(65545);
    assertEquals(io.tun.read(buf), 16);
    assertEquals(new TextDecoder().decode(buf.subarray(10, 16)), "packet");
    assert(io.tun.read(buf) < 0, "then a direct read: empty");
    // TUN writes are queued too (here: into a UDP socket, where a write is refused: counted).
    assertEquals(io.tun.write(buf, 16), 16);
    assertEquals(io.deferredWrites, 1);
    io.wait(0);
    io.wait(0);
    assertEquals(io.drops.uring_tun_write_error, 1, "the write's error came back in its completion");
    // The wake-up eventfd.
    wake.signal();
    assertEquals(io.wait(1000), 1);
    assert(io.readable(2));
    wake.drain();
  } finally {
    io.close();
    for (const s of [sock, fakeTunSock, peer]) s.close();
    wake.close();
  }
  assertEquals(ringFds(), before, "ring closed after its armed reads were cancelled");
});

Deno.test("uring: TASKRUN_FLAG — deferred completion work shows in the ring's flags word, without a call", () => {
  const ring = Ring.open(4, SPIN_FLAGS);
  const ev = new EventFd();
  const buf = new Uint8Array(8);
  try {
    assert(ring.watchable, "a TASKRUN_FLAG ring can be watched");
    const plain = Ring.open(2, DEFAULT_FLAGS);
    assert(!plain.watchable, "the default ring cannot");
    plain.close();
    assert(ring.prep(Op.READ, ev.fd, bufferAddress(buf), 8, -1, 0, 5));
    assertEquals(ring.submit(), 1);
    assert(!ring.pending(), "nothing yet");
    ev.signal();
    // The completion's work waits for an enter (DEFER_TASKRUN): flagged, not yet in the CQ.
    assert(ring.pending() && ring.taskrun, "flagged in memory");
    assert(!ring.peek(), "not posted before an enter");
    ring.enter(0, 0, 0, true);
    assert(!ring.taskrun, "the enter ran it and cleared the flag");
    assert(ring.peek());
    assertEquals([ring.cqeData, ring.cqeRes], [5, 8]);
    ring.advance();
    assert(!ring.pending());
  } finally {
    ring.close();
    ev.close();
  }
});

Deno.test("uring: spin watches the ring without a system call per look, and finds a datagram sent meanwhile", async () => {
  const sock = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" });
  const fakeTunSock = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" });
  const wake = new EventFd();
  sock.setNonBlocking(true);
  fakeTunSock.setNonBlocking(true);
  const dev = tunFromInfo({ fd: fakeTunSock.fd, name: "none", vnetHdr: true, offloadFlags: 0 });
  const io = new UringIo(dev, sock, wake.fd, SPIN_FLAGS);
  try {
    const rb = new RecvBatch(4, 65535);
    assertEquals(io.sock.recvBatch(rb, 0), 0, "the bind's batch is known: a RECVMSG gets armed");
    io.wait(0);
    // Idle: 30 ms of watching costs no enter at all.
    const e0 = io.ring.enters;
    const t = performance.now();
    assertEquals(io.spin(30), 0);
    assert(performance.now() - t >= 29, "it spun the whole slice");
    assertEquals(io.ring.enters, e0, "no system call while nothing came");
    // A datagram sent by another process while this thread spins (the event loop is blocked).
    const child = new Deno.Command("bash", {
      args: ["-c", `sleep 0.05; echo -n spun > /dev/udp/127.0.0.1/${sock.localPort}`],
    }).spawn();
    const e1 = io.ring.enters;
    assertEquals(io.spin(3000), 1, "found within the slice");
    assert(io.readable(1));
    assertEquals(io.spinFound, 1);
    assert(io.ring.enters - e1 <= 2, `enters while spinning: ${io.ring.enters - e1}`);
    assertEquals(io.sock.recvBatch(rb, 0), 1);
    assertEquals(new TextDecoder().decode(rb.bufs[0].subarray(0, rb.sizes[0])), "spun");
    await child.status;
  } finally {
    io.close();
    sock.close();
    fakeTunSock.close();
    wake.close();
  }
});
