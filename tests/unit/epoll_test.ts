/**
 * ffi/poll.ts EPoller (the data-plane Worker's wait) on real eventfds and a UDP socket pair: it
 * reports exactly the ready fds by index, stays level-triggered (a drain that stops early finds the
 * fd again), times out, is woken from another thread, and gives its fd back on close and on a
 * refused registration.
 */
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { EPoller, Poller } from "../../ffi/poll.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { SyscallError } from "../../ffi/libc.ts";
import { openUdp } from "../../ffi/udp.ts";
import { createSocket } from "node:dgram";

/** The process's epoll instances (other tests' resources may close meanwhile: only these count). */
function epollFds(): Set<number> {
  const out = new Set<number>();
  for (const d of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${d.name}`) === "anon_inode:[eventpoll]") out.add(Number(d.name));
    } catch { /* closed meanwhile */ }
  }
  return out;
}

Deno.test("epoll: reports the ready fds by index, like poll, and times out when none is", () => {
  const fds = [new EventFd(), new EventFd(), new EventFd()];
  const ep = new EPoller(fds.map((e) => e.fd));
  const p = new Poller(fds.map((e) => e.fd));
  try {
    const t0 = performance.now();
    assertEquals(ep.wait(20), 0, "nothing ready: timeout");
    assert(performance.now() - t0 >= 15, "it slept");
    assertEquals([ep.readable(0), ep.readable(1), ep.readable(2)], [false, false, false]);
    fds[1].signal();
    fds[2].signal();
    assertEquals(ep.wait(1000), 2);
    assertEquals([ep.readable(0), ep.readable(1), ep.readable(2)], [false, true, true]);
    assertEquals(p.wait(0), 2, "poll agrees");
    assertEquals([p.readable(0), p.readable(1), p.readable(2)], [false, true, true]);
    // Level-triggered: not drained, still ready.
    assertEquals(ep.wait(0), 2);
    fds[1].drain();
    assertEquals(ep.wait(0), 1);
    assertEquals([ep.readable(0), ep.readable(1), ep.readable(2)], [false, false, true]);
    fds[2].drain();
    assertEquals(ep.wait(0), 0);
    assertEquals(ep.readable(2), false, "a timeout clears the last wait's readiness");
  } finally {
    ep.close();
    for (const e of fds) e.close();
  }
});

Deno.test("epoll: a datagram on a UDP socket wakes the wait", async () => {
  const rx = openUdp({ bindAddr: "127.0.0.1", port: 0, nonBlocking: true });
  const wake = new EventFd();
  const ep = new EPoller([wake.fd, rx.fd]);
  const tx = createSocket("udp4");
  try {
    assertEquals(ep.wait(0), 0);
    await new Promise<void>((r, j) =>
      tx.send(new Uint8Array([1, 2, 3]), rx.localPort, "127.0.0.1", (e) => e ? j(e) : r())
    );
    assertEquals(ep.wait(1000), 1);
    assertEquals([ep.readable(0), ep.readable(1)], [false, true]);
  } finally {
    ep.close();
    wake.close();
    rx.close();
    tx.close();
  }
});

Deno.test("epoll: a wait sleeping in one thread is woken by a signal from another", async () => {
  const ev = new EventFd();
  const ep = new EPoller([ev.fd]);
  const src = `
    import { EventFd } from "${new URL("../../ffi/eventfd.ts", import.meta.url)}";
    self.onmessage = (e) => { setTimeout(() => { new EventFd(e.data).signal(); self.postMessage(1); }, 30); };
  `;
  const w = new Worker(`data:application/javascript,${encodeURIComponent(src)}`, { type: "module" });
  try {
    const sent = new Promise((r) => (w.onmessage = r));
    w.postMessage(ev.fd);
    const t0 = performance.now();
    assertEquals(ep.wait(5000), 1, "woken, not timed out");
    const ms = performance.now() - t0;
    assert(ms >= 20 && ms < 4000, `slept until the signal (${ms.toFixed(1)} ms)`);
    assert(ep.readable(0));
    await sent;
  } finally {
    w.terminate();
    ep.close();
    ev.close();
  }
});

Deno.test("epoll: close gives the fd back; a refused registration leaks none", () => {
  const ev = new EventFd();
  const before = epollFds();
  const ep = new EPoller([ev.fd]);
  assert(epollFds().has(ep.fd) && !before.has(ep.fd), "a new epoll instance");
  ep.close();
  assert(!epollFds().has(ep.fd), "closed");
  assertThrows(() => new EPoller([ev.fd, 1_000_000]), SyscallError, "epoll_ctl");
  const leaked = [...epollFds()].filter((fd) => !before.has(fd));
  assertEquals(leaked, [], "the epoll fd of the refused set was closed");
  assertThrows(() => new EPoller([]), RangeError);
  ev.close();
});
