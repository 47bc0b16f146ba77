/**
 * Micro-benchmark of one data-plane crossing's wait (issue 10, request/response): what a Worker pays
 * to sleep in a synchronous FFI wait over three fds (as the packet loop does: TUN, tunnel socket,
 * wake-up eventfd) and be woken by another thread, with `poll(2)` (ffi/poll.ts `Poller`) against
 * `epoll(7)` (`EPoller`).
 *
 * - `pingpong`: the main thread and a Worker bounce a token through two eventfds; each side waits
 *   with the poller under test over its eventfd and two idle ones. One round trip = two wake-ups,
 *   two waits, two eventfd reads and two writes. Reports µs per round trip (median of rounds) and
 *   process CPU µs per round trip.
 * - `ready`: the cost of one wait that finds an fd ready at once (no sleep), in ns.
 * - `ffi`: the cost of a null FFI call (`getpid`) and of `performance.now()`, in ns.
 *
 * Modes alternate over rounds so that a busy machine's load falls on both alike; the best and the
 * median round are printed. No root needed.
 *
 * Usage: `deno run -A scripts/bench_poll.ts [--rounds N=5] [--trips N=20000]`
 */
import process from "node:process";
import { EPoller, Poller } from "../ffi/poll.ts";
import { EventFd } from "../ffi/eventfd.ts";
import { libc } from "../ffi/libc.ts";

const IS_WORKER = typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";

/** The wait under test. */
type Kind = "poll" | "epoll";

/** What the Worker is told. */
interface Job {
  kind: Kind;
  /** Eventfd the Worker waits on, the one it signals, two idle ones. */
  fds: [number, number, number, number];
  stop: SharedArrayBuffer;
}

function poller(
  kind: Kind,
  fds: number[],
): { wait(ms: number): number; readable(i: number): boolean; close?(): void } {
  return kind === "epoll" ? new EPoller(fds) : new Poller(fds);
}

if (IS_WORKER) {
  const scope = self as unknown as {
    onmessage: ((e: MessageEvent<Job>) => void) | null;
    postMessage(m: unknown): void;
  };
  scope.onmessage = (e) => {
    const { kind, fds, stop } = e.data;
    const flag = new Int32Array(stop);
    const inbox = new EventFd(fds[0]);
    const outbox = new EventFd(fds[1]);
    const p = poller(kind, [fds[0], fds[2], fds[3]]);
    scope.postMessage("ready");
    while (Atomics.load(flag, 0) === 0) {
      if (p.wait(50) > 0 && p.readable(0)) {
        inbox.drain();
        outbox.signal();
      }
    }
    p.close?.();
    scope.postMessage("done");
    self.close();
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function pingpong(kind: Kind, trips: number): Promise<{ us: number; cpuUs: number }> {
  const toWorker = new EventFd();
  const toMain = new EventFd();
  const idle = [new EventFd(), new EventFd(), new EventFd(), new EventFd()];
  const stop = new SharedArrayBuffer(4);
  const w = new Worker(import.meta.url, { type: "module" });
  const msg = () => new Promise<unknown>((r) => w.onmessage = (e) => r(e.data));
  const ready = msg();
  w.postMessage({ kind, fds: [toWorker.fd, toMain.fd, idle[0].fd, idle[1].fd], stop } satisfies Job);
  await ready;
  const p = poller(kind, [toMain.fd, idle[2].fd, idle[3].fd]);
  for (let k = 0; k < 1000; k++) { // warm-up (JIT, caches)
    toWorker.signal();
    while (!(p.wait(50) > 0 && p.readable(0)));
    toMain.drain();
  }
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let k = 0; k < trips; k++) {
    toWorker.signal();
    while (!(p.wait(50) > 0 && p.readable(0)));
    toMain.drain();
  }
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const done = msg();
  Atomics.store(new Int32Array(stop), 0, 1);
  await done;
  p.close?.();
  for (const e of [toWorker, toMain, ...idle]) e.close();
  return { us: ms * 1000 / trips, cpuUs: (cpu.user + cpu.system) / trips };
}

function readyWait(kind: Kind, calls: number): number {
  const fds = [new EventFd(), new EventFd(), new EventFd()];
  fds[1].signal();
  const p = poller(kind, fds.map((e) => e.fd));
  for (let k = 0; k < 1000; k++) p.wait(0);
  const t0 = performance.now();
  for (let k = 0; k < calls; k++) p.wait(0);
  const ns = (performance.now() - t0) * 1e6 / calls;
  p.close?.();
  for (const e of fds) e.close();
  return ns;
}

function nullCalls(calls: number): { ffiNs: number; nowNs: number } {
  for (let k = 0; k < 1000; k++) libc.getpid();
  let t0 = performance.now();
  for (let k = 0; k < calls; k++) libc.getpid();
  const ffiNs = (performance.now() - t0) * 1e6 / calls;
  let x = 0;
  t0 = performance.now();
  for (let k = 0; k < calls; k++) x += performance.now();
  const nowNs = (performance.now() - t0) * 1e6 / calls;
  if (x < 0) console.log(x);
  return { ffiNs, nowNs };
}

if (!IS_WORKER) {
  const arg = (name: string, dflt: number) => {
    const i = Deno.args.indexOf(name);
    return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
  };
  const rounds = arg("--rounds", 5);
  const trips = arg("--trips", 20000);
  const res: Record<Kind, { us: number[]; cpuUs: number[]; readyNs: number[] }> = {
    poll: { us: [], cpuUs: [], readyNs: [] },
    epoll: { us: [], cpuUs: [], readyNs: [] },
  };
  const ffi: number[] = [];
  const now: number[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const kind of (r % 2 === 0 ? ["poll", "epoll"] : ["epoll", "poll"]) as Kind[]) {
      const pp = await pingpong(kind, trips);
      res[kind].us.push(pp.us);
      res[kind].cpuUs.push(pp.cpuUs);
      res[kind].readyNs.push(readyWait(kind, 100_000));
    }
    const n = nullCalls(200_000);
    ffi.push(n.ffiNs);
    now.push(n.nowNs);
  }
  const r1 = (x: number) => Math.round(x * 10) / 10;
  const out: Record<string, unknown> = { rounds, trips, load: Deno.loadavg()[0] };
  for (const kind of ["poll", "epoll"] as Kind[]) {
    const v = res[kind];
    out[kind] = {
      roundTripUs: { median: r1(median(v.us)), best: r1(Math.min(...v.us)) },
      cpuUsPerRoundTrip: { median: r1(median(v.cpuUs)), best: r1(Math.min(...v.cpuUs)) },
      readyWaitNs: { median: Math.round(median(v.readyNs)), best: Math.round(Math.min(...v.readyNs)) },
    };
  }
  out.nullFfiNs = Math.round(median(ffi));
  out.performanceNowNs = Math.round(median(now));
  console.log(JSON.stringify(out, null, 1));
}
