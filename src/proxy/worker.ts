/**
 * The data-plane Worker: builds the packet loop (loop.ts) on the real seams — the TUN batch device
 * (tun_device.ts) and the UDP tunnel bind (bind.ts) — and drives it: it polls both fds (and a
 * wake-up eventfd) with synchronous FFI calls, drains whichever is readable, busy-polls for a while
 * after traffic (spin.ts), and returns to its event loop only when the main isolate wakes it (table
 * deltas, resolutions), so the packet path never waits on a timer or on the control plane.
 */
import { tunFromInfo } from "../../ffi/tun.ts";
import { udpFromInfo } from "../../ffi/udp.ts";
import { EPoller } from "../../ffi/poll.ts";
import { SPIN_FLAGS, UringIo } from "./uring_io.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { libc } from "../../ffi/libc.ts";
import { ReadPolicy, SpinPolicy } from "./spin.ts";
import { SharedTableView } from "../table/shared_view.ts";
import { Engine } from "./engine.ts";
import type { FromWorker, ToWorker } from "./messages.ts";
import { PacketLoop } from "./loop.ts";
import { VnetTun } from "./tun_device.ts";
import { benchBurnFromEnv } from "./bench_burn.ts";
import { BurningTun } from "./bench_burn_tun.ts";
import { UdpBind } from "./bind.ts";
import { SecureLayer } from "../secure/secure_layer.ts";
import { CAP_SECURE } from "./wire.ts";
import { SECURE_OVERHEAD } from "../secure/secure_wire.ts";
import { parseEndpoint } from "./peers.ts";
import type { HandshakeHost } from "../secure/hs_host.ts";
import type { HsDown } from "../secure/hs_messages.ts";
import { trace, tracing } from "../secure/hs_trace.ts";
import { compactIsolate } from "../heap.ts";

const YIELD_EVERY_MS = 5000;
/**
 * io_uring spin mode: how long one watch of the ring lasts before the CPU is offered (ms;
 * `NETMANAGER_SPIN_SLICE_US`, 1–100000, default 5 µs — anything else is the default: a NaN slice
 * would never end).
 */
const spinSliceMs = (() => {
  const us = Number(Deno.env.get("NETMANAGER_SPIN_SLICE_US") ?? 5);
  return (Number.isFinite(us) && us >= 1 && us <= 100_000 ? us : 5) / 1000;
})();
/**
 * io_uring spin mode: offer the CPU after each slice (`NETMANAGER_SPIN_YIELD=0`: never — on the shared
 * 2-vCPU host a spinner that did not yield kept the workload and the other node off the CPU; README).
 */
const spinYield = Deno.env.get("NETMANAGER_SPIN_YIELD") !== "0";
const IDLE_POLL_MS = 50;
/** Longest a posted message is waited for with short polls (then the idle poll again). */
const BEHIND_MAX_MS = 1000;

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  postMessage(m: FromWorker): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};

function post(m: FromWorker): void {
  scope.postMessage(m);
}

/** What the loop waits on: an {@link EPoller}, or the io_uring backend ({@link UringIo}). */
interface LoopPoller {
  wait(timeoutMs: number): number;
  readable(i: number): boolean;
  close(): void;
}

/** Set by init; the Worker handles one data plane. */
let dp:
  | {
    loop: PacketLoop;
    secure: SecureLayer;
    wake: EventFd;
    posted: Int32Array;
    spinMs: number;
    poller: LoopPoller;
  }
  | undefined;
/** The main isolate's table, read in place (a layout may arrive before init completes: none do). */
let table: SharedTableView | undefined;
let stopping = false;
/** Tests: end the loop with an error, as a crash would (see the "crash" message). */
let crash = false;
/** Messages handled since init (compared with the main isolate's `posted` counter). */
let handled = 0;

/**
 * The node's handshakes in this worker (hs_host.ts), loaded when the main isolate hands a setup:
 * node:crypto stays out of the workers of a node without tunnel security.
 */
let hs: HandshakeHost | undefined;
/** hs_host.ts loading (set once; resolves when the host runs, also after a failed load). */
let hsLoading: Promise<void> | undefined;
/** Messages for the handshakes while hs_host.ts loads. */
const hsPending: HsDown[] = [];
/** Peers followed elsewhere (given at init) for the handshakes' replies. */
let hsMoved: [string, string][] = [];
const HS_TICK_MS = 100;

function hsMessage(m: HsDown): void {
  if (hs) return hs.onMessage(m);
  if (hsPending.length < 256) hsPending.push(m);
  if (hsLoading || !dp) return;
  const d = dp;
  hsLoading = import("../secure/hs_host.ts").then(({ HandshakeHost }) => {
    const { secure, loop } = d;
    const bind = loop.bind;
    const lane = secure.lane;
    const host = new HandshakeHost({
      lane,
      warm: lane === 0, // handshake datagrams are steered to worker 0 (lanes.ts)
      send: (endpoint, bytes) => {
        let ep;
        try {
          ep = parseEndpoint(endpoint);
        } catch {
          return;
        }
        bind.sendRaw(bytes, ep.family, ep.ip4, ep.ip6, ep.port);
        bind.flush();
      },
      post,
      install: (k) => secure.install(k),
      blocked: (p) => secure.blocked.has(p),
    });
    for (const [p, ep] of hsMoved) host.moved(p, ep);
    hs = host;
    secure.handshake = (peer, buf, off, len, known) => host.queue(peer, buf, off, len, known);
    secure.expects = (peer, buf, off, len) => host.expects(peer, buf, off, len);
    secure.proven = (peer, buf, off, len) => host.proven(peer, buf, off, len);
    for (const q of hsPending.splice(0)) host.onMessage(q);
  }).catch((e) => post({ type: "error", message: `handshakes: ${e?.stack ?? e}`, fatal: false }));
}

/**
 * Returns to the event loop so queued messages run. A MessageChannel round trip takes ~20 µs in a
 * Worker where `setTimeout(0)` takes ~2 ms; `posted` (a counter the main isolate bumps before each
 * postMessage) tells when every message has been handled, with a timer as the fallback.
 */
const channel = new MessageChannel();
let channelWaiter: (() => void) | undefined;
channel.port1.onmessage = () => channelWaiter?.();
const yieldFast = () =>
  new Promise<void>((r) => {
    channelWaiter = r;
    channel.port2.postMessage(0);
  });
async function yieldNow(posted: Int32Array): Promise<void> {
  for (let k = 0; k < 50; k++) {
    await yieldFast();
    if (Atomics.load(posted, 0) <= handled) return;
  }
  await new Promise<void>((r) => setTimeout(r, 0));
}

async function run(d: NonNullable<typeof dp>): Promise<void> {
  const { loop, wake, posted, poller } = d;
  let lastYield = performance.now();
  const spin = new SpinPolicy({ spinMs: d.spinMs });
  const spinOn = d.spinMs > 0;
  const reads = new ReadPolicy();
  const uring = d.poller instanceof UringIo && d.poller.ring.watchable ? d.poller : undefined;
  const c = loop.engine.counters;
  let behindSince = 0;
  let hsTickAt = 0;
  while (!stopping) {
    if (crash) throw new Error("data-plane worker crash requested");
    // A message posted but not yet delivered (the yield above returned first): look again within
    // 1 ms instead of sleeping 50 ms in poll with the wake-up already consumed (a handshake reply
    // waited here up to 100 ms). Bounded, so a miscount cannot keep the loop awake.
    const lagging = Atomics.load(posted, 0) > handled;
    // Clock reads cost too (a few per wake-up): only when the spin policy or a lag needs one.
    const t = spinOn || lagging || behindSince > 0 ? performance.now() : 0;
    const spinning = spinOn && spin.shouldSpin(t);
    if (lagging) behindSince ||= t;
    else behindSince = 0;
    const behind = behindSince > 0 && t - behindSince < BEHIND_MAX_MS;
    // A blocking poll returns at once when something is ready: no extra zero-timeout poll after work.
    // (Queued handshake datagrams and warm-up rounds run between batches: no sleep meanwhile.)
    // io_uring spin mode: the ring is watched in memory for a slice (no system call per look), then
    // the CPU is offered; with epoll each look is a call, and the CPU is offered after each.
    const r = spinning && uring !== undefined && !hs?.busy
      ? uring.spin(Math.min(spinSliceMs, d.spinMs))
      : poller.wait(spinning || hs?.busy ? 0 : behind ? 1 : IDLE_POLL_MS);
    // A spinning thread steps aside for any runnable thread on its CPU (the workload or the other
    // end of the path may be waiting for exactly this CPU), then looks again.
    if (spinning && r === 0 && (uring === undefined || spinYield)) libc.sched_yield();
    const now = performance.now();
    let woken = false;
    if (r > 0) {
      const before = spinOn ? c.tunRx + c.udpRx : 0;
      let busy = false;
      if (poller.readable(0)) {
        const max = reads.limit(now);
        reads.done(now, loop.drainTun(now, max), max);
        busy = true;
      }
      if (poller.readable(1)) {
        loop.drainBind(now);
        hs?.drain(); // handshake datagrams of that batch, answered at once
        busy = true;
      }
      if (poller.readable(2)) {
        wake.drain();
        woken = true;
      }
      if (busy && spinOn) {
        const end = performance.now();
        spin.active(end, end - now, c.tunRx + c.udpRx - before);
      }
    } else if (spinOn) {
      spin.idle(now - t);
    }
    loop.tick(now);
    if (hs !== undefined && now - hsTickAt >= HS_TICK_MS) {
      hsTickAt = now;
      hs.tick();
    }
    if (hs?.busy) {
      hs.drain(); // (what one drain after the batch left)
      if (hs.warming) hs.warmStep();
    }
    if (woken || Atomics.load(posted, 0) > handled || now - lastYield > YIELD_EVERY_MS) {
      await yieldNow(posted);
      lastYield = performance.now();
    }
  }
  poller.close();
  post({ type: "stats", stats: loop.stats() });
  post({ type: "stopped" });
  self.close();
}

scope.onmessage = (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  if (m.type !== "init") handled++;
  try {
    switch (m.type) {
      case "init": {
        const view = new SharedTableView(m.table);
        table = view;
        const engine = new Engine(m.engine, view);
        const dev = tunFromInfo(m.tun);
        if (!dev.vnetHdr) throw new Error("the data plane needs a TUN with IFF_VNET_HDR");
        const sock = udpFromInfo(m.udp);
        dev.setNonBlocking(true);
        sock.setNonBlocking(true);
        // io_uring (IoBackend "uring"): under the seams, as their device and socket; epoll otherwise,
        // also when the kernel refuses a ring (disabled, seccomp, too old): said once, in the log.
        let uring: UringIo | undefined;
        if (m.ioBackend === "uring") {
          try {
            // (Experiments: io_uring setup flags, e.g. 0x3180 = SUBMIT_ALL|COOP|SINGLE_ISSUER|DEFER_TASKRUN.)
            // Spin mode (BusyPollMicros > 0): the kernel flags waiting completion work in the ring
            // (TASKRUN_FLAG), so the spinning loop watches memory instead of entering per look.
            const flags = Number(Deno.env.get("NETMANAGER_URING_FLAGS") ?? NaN);
            uring = Number.isInteger(flags)
              ? new UringIo(dev, sock, m.wakeFd, flags)
              : m.busyPollUs > 0
              ? new UringIo(dev, sock, m.wakeFd, SPIN_FLAGS)
              : new UringIo(dev, sock, m.wakeFd);
            post({ type: "io", backend: "uring" });
          } catch (e) {
            post({ type: "io", backend: "epoll", reason: String((e as Error)?.message ?? e) });
          }
        }
        const bind = new UdpBind(uring?.sock ?? sock, {
          mtu: m.mtu,
          counters: engine.counters,
          peers: engine.peers,
        });
        uring?.setScatterArena(bind.sendArena);
        const tunOpts = {
          mtu: m.mtu,
          counters: engine.counters,
          deliverer: engine,
          readBuf: bind.readSlot,
          scatter: bind,
        };
        const burn = benchBurnFromEnv(); // (a benchmark's stand-in for the AEAD's CPU; unset in use)
        const tun = burn === undefined
          ? new VnetTun(uring?.tun ?? dev, tunOpts)
          : new BurningTun(burn, uring?.tun ?? dev, tunOpts);
        const loop = new PacketLoop(engine, tun, bind, post, m.mtu);
        if (uring !== undefined) {
          const u = uring;
          loop.extraDrops = (drops) => {
            for (const [k, v] of Object.entries(u.drops)) if (v > 0) drops[k] = v;
          };
        }
        const secure = new SecureLayer({ lane: m.engine.laneTag ?? 0, post });
        if (m.secure) {
          secure.setMode(m.secure.mode);
          for (const k of m.secure.keys) secure.install(k, m.secure.sendOnly === true);
          for (const p of m.secure.blocked) secure.blocked.add(p);
          for (const [p, ep] of m.secure.moved ?? []) engine.followKey(p, parseEndpoint(ep));
          engine.peers.setLocalCaps(engine.peers.localCaps | CAP_SECURE, performance.now());
        }
        secure.secureCapable = (k) => {
          const p = engine.peers.get(k);
          return p !== undefined && p.capsKnown && (p.remoteCaps & CAP_SECURE) !== 0;
        };
        secure.follow = loop.follow;
        secure.followUnauthenticated = Deno.env.get("NETMANAGER_ROAM_UNAUTHENTICATED") === "1";
        bind.secure = secure;
        loop.secure = secure;
        // Path MTU: a sealed datagram is SECURE_OVERHEAD bytes longer.
        loop.path.overheadFor = (p) => secure.active && secure.ring.has(p.key) ? SECURE_OVERHEAD : 0;
        const wake = new EventFd(m.wakeFd);
        const d = {
          loop,
          secure,
          wake,
          posted: new Int32Array(m.posted),
          spinMs: m.busyPollUs / 1000,
          // epoll: the fds stay registered, so a wait sets up no wait queues (README: request/response).
          poller: uring ?? new EPoller([tun.fd, bind.fd, wake.fd]),
        };
        dp = d;
        hsMoved = m.secure?.moved ?? [];
        // Building this worker's per-node state from a loaded table (a static one: 10k entries on 200
        // nodes) grew its young generation (+5.9 MB committed, +0.8 used): give that back once before the
        // loop starts. Without entries there is nothing to give back, and loading node:v8/node:vm here
        // would cost about what a GC saves (README, Memory).
        const settle = () => view.size > 0 ? compactIsolate() : Promise.resolve(false);
        const start = () => {
          if (tracing) trace("loop-start", { lane: secure.lane });
          post({ type: "ready" });
          run(d).catch((e) => {
            d.poller.close(); // an fd of the process, and a crashed worker is restarted
            post({ type: "error", message: String(e?.stack ?? e), fatal: true });
          });
        };
        if (m.secure?.hs) {
          hsMessage({ type: "secure-hs-setup", setup: m.secure.hs });
          // The handshakes run warm before this worker reports ready and its loop starts (issue 11: a
          // first handshake ≤ 5 ms): a peer's HS_INIT that comes meanwhile waits in the socket and is
          // answered on warm paths — not lost to a worker without handshakes, nor answered cold.
          hsLoading!.then(() => hs?.warmNow()).then(settle).finally(start);
        } else settle().finally(start);
        break;
      }
      case "stop":
        stopping = true;
        break;
      case "crash":
        crash = true;
        break;
      case "layout":
        table?.attach(m.layout);
        break;
      case "secure-hs-setup":
      case "secure-hs-cookie":
      case "secure-initiate":
      case "secure-hs-forget":
        hsMessage(m);
        break;
      default:
        if (m.type === "secure-moved") hs?.moved(m.peer, m.endpoint);
        if (dp) dp.loop.handle(m);
        else if (m.type === "flows") post({ type: "flows", id: m.id, flows: [] }); // before init: none
    }
  } catch (e) {
    // A failed init is fatal; any other message that fails leaves the loop running.
    post({ type: "error", message: String((e as Error)?.stack ?? e), fatal: m.type === "init" });
  }
};
