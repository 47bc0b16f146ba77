/**
 * The data-plane Worker: owns the TUN and tunnel-socket loops. It polls both fds with synchronous
 * FFI calls, drains each in batches (TUN reads straight into the send batch's slots, `sendmmsg`
 * out; `recvmmsg` in, TUN writes), and returns to its event loop briefly every couple of
 * milliseconds (and whenever idle) so table deltas and resolutions from the main isolate arrive.
 * The packet path never waits for the control plane: misses are parked by the engine.
 */
import { type TunDevice, tunFromInfo } from "../../ffi/tun.ts";
import { RecvBatch, SendBatch, udpFromInfo, type UdpSocket } from "../../ffi/udp.ts";
import { Poller } from "../../ffi/poll.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { TranslationTable } from "../table/table.ts";
import { DROP_NAMES, Engine, Verdict } from "./engine.ts";
import type { FromWorker, StatsData, ToWorker } from "./messages.ts";

const BATCH = 64;
const SLOT = 2048; // ≥ MTU (no TSO super-packets on this path)
/** The loop returns to its event loop when woken by the main isolate, and at least this often. */
const YIELD_EVERY_MS = 5000;
const IDLE_POLL_MS = 50;
const STATS_EVERY_MS = 1000;
const PEER_TICK_MS = 100;

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  postMessage(m: FromWorker): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};

let engine: Engine | undefined;
let tun: TunDevice | undefined;
let udp: UdpSocket | undefined;
let wake: EventFd | undefined;
let stopping = false;
const send = new SendBatch(BATCH, SLOT);
const recv = new RecvBatch(BATCH, SLOT);
let pending = 0;

function post(m: FromWorker): void {
  scope.postMessage(m);
}

function flushSend(): void {
  if (pending === 0 || !udp) return;
  let done = 0;
  while (done < pending) {
    const r = udp.sendBatch(send, pending);
    if (r <= 0) {
      if (engine) engine.counters.drops[DROP_NAMES.indexOf("send_error")] += pending - done;
      break;
    }
    done += r;
    if (r < pending) {
      // Non-blocking socket would block: move the unsent rest to the front and retry.
      for (let i = r; i < pending; i++) {
        send.bufs[i - r].set(send.bufs[i].subarray(0, send.sizes[i]));
        send.sizes[i - r] = send.sizes[i];
        send.dstFamilies[i - r] = send.dstFamilies[i];
        send.dst4[i - r] = send.dst4[i];
        send.dst6.copyWithin((i - r) * 16, i * 16, i * 16 + 16);
        send.dstPorts[i - r] = send.dstPorts[i];
      }
      pending -= r;
      done = 0;
    }
  }
  pending = 0;
}

function toTun(buf: Uint8Array, len: number): void {
  const w = tun!.write(buf, len);
  if (w < 0) engine!.counters.drops[DROP_NAMES.indexOf("tun_write_error")]++;
}

/** Handles one egress packet that is in send slot `pending`. */
function egressSlot(len: number, now: number): void {
  const e = engine!;
  const slot = send.bufs[pending];
  const v = e.egress(slot, 0, len, now);
  if (v === Verdict.TO_PEER) {
    const r = e.out!;
    if (r.family === 4) send.setDst4(pending, r.addr4, r.port);
    else send.setDst6(pending, r.addr6!, 0, r.port);
    send.offsets[pending] = 0;
    send.segSizes[pending] = 0;
    send.sizes[pending] = len;
    if (++pending === BATCH) flushSend();
  } else if (v === Verdict.TO_TUN) {
    toTun(slot, len);
  }
}

function drainTun(now: number): void {
  for (let k = 0; k < 256; k++) {
    const n = tun!.read(send.bufs[pending]);
    if (n <= 0) break;
    egressSlot(n, now);
  }
  flushSend();
  reportMisses();
}

function drainUdp(now: number): void {
  const e = engine!;
  for (let k = 0; k < 8; k++) {
    const c = udp!.recvBatch(recv, 0);
    if (c <= 0) break;
    for (let i = 0; i < c; i++) {
      const b = recv.bufs[i];
      const len = recv.sizes[i];
      const v = recv.families[i] === 4
        ? e.ingress(b, 0, len, 4, recv.addrs4[i], undefined, recv.ports[i], now)
        : e.ingress(b, 0, len, 6, 0, recv.addrs6.subarray(i * 16, i * 16 + 16), recv.ports[i], now);
      if (v === Verdict.TO_TUN) toTun(b, len);
    }
    if (c < BATCH) break;
  }
  sendControl();
}

/** Sends queued HELLO/PROBE datagrams and replies. */
function sendControl(): void {
  const q = engine!.control;
  while (q.length > 0) {
    const m = q.shift()!;
    const i = pending;
    send.bufs[i].set(m.bytes);
    send.offsets[i] = 0;
    send.segSizes[i] = 0;
    send.sizes[i] = m.bytes.length;
    if (m.family === 4) send.setDst4(i, m.addr4, m.port);
    else send.setDst6(i, m.addr6!, 0, m.port);
    if (++pending === BATCH) flushSend();
  }
  flushSend();
}

function reportMisses(): void {
  const m = engine!.misses;
  while (m.length > 0) post({ type: "miss", addr: m.shift()! });
}

function replay(packets: Uint8Array[]): void {
  const now = performance.now();
  for (const p of packets) {
    send.bufs[pending].set(p);
    egressSlot(p.length, now);
  }
  flushSend();
  reportMisses();
}

function stats(): StatsData {
  const e = engine!;
  const c = e.counters;
  const drops: Record<string, number> = {};
  c.drops.forEach((v, i) => {
    if (v > 0) drops[DROP_NAMES[i]] = v;
  });
  return {
    tunRx: c.tunRx,
    tunRxBytes: c.tunRxBytes,
    tunTx: c.tunTx,
    tunTxBytes: c.tunTxBytes,
    udpRx: c.udpRx,
    udpRxBytes: c.udpRxBytes,
    udpTx: c.udpTx,
    udpTxBytes: c.udpTxBytes,
    localHandoff: c.localHandoff,
    parked: c.parked,
    released: c.released,
    parkedNow: e.parkedNow,
    flows: e.flows.size,
    drops,
    peers: e.peers.stats(performance.now()),
  };
}

const yieldNow = () => new Promise<void>((r) => setTimeout(r, 0));

async function loop(): Promise<void> {
  const poller = new Poller([tun!.fd, udp!.fd, wake!.fd]);
  let lastYield = performance.now();
  let lastStats = lastYield;
  let lastPeerTick = 0;
  let busy = false;
  while (!stopping) {
    const r = poller.wait(busy ? 0 : IDLE_POLL_MS);
    const now = performance.now();
    busy = false;
    let woken = false;
    if (r > 0) {
      if (poller.readable(0)) {
        drainTun(now);
        busy = true;
      }
      if (poller.readable(1)) {
        drainUdp(now);
        busy = true;
      }
      if (poller.readable(2)) {
        wake!.drain();
        woken = true;
      }
    }
    if (woken || now - lastYield > YIELD_EVERY_MS) {
      await yieldNow();
      lastYield = performance.now();
    }
    if (now - lastPeerTick > PEER_TICK_MS) {
      engine!.peerTick(now);
      sendControl();
      lastPeerTick = now;
    }
    if (now - lastStats > STATS_EVERY_MS) {
      engine!.tick(now);
      post({ type: "stats", stats: stats() });
      lastStats = now;
    }
  }
  post({ type: "stats", stats: stats() });
  post({ type: "stopped" });
  self.close();
}

scope.onmessage = (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  try {
    switch (m.type) {
      case "init": {
        engine = new Engine(m.engine, TranslationTable.fromSnapshot(m.table));
        tun = tunFromInfo(m.tun);
        udp = udpFromInfo(m.udp);
        wake = new EventFd(m.wakeFd);
        tun.setNonBlocking(true);
        udp.setNonBlocking(true);
        post({ type: "ready" });
        loop().catch((e) => post({ type: "error", message: String(e?.stack ?? e) }));
        break;
      }
      case "delta":
        engine?.applyDelta(m.delta, performance.now());
        break;
      case "resolved":
        if (engine) replay(engine.resolved(m.addr, m.ok));
        break;
      case "flows": {
        const e = engine;
        const out = e ? [...e.flows.ids()].slice(0, m.limit).map((id) => e.flows.info(id)) : [];
        post({ type: "flows", id: m.id, flows: out });
        break;
      }
      case "stop":
        stopping = true;
        break;
    }
  } catch (e) {
    post({ type: "error", message: String((e as Error)?.stack ?? e) });
  }
};
