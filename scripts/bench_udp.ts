/**
 * Micro-benchmark of ffi/udp.ts: a sender Worker (sendBatch) and a receiver Worker (recvBatch) on two
 * sockets in two fresh network namespaces joined by a veth, 1400-byte datagrams, three modes:
 *
 * - `batch`:   sendmmsg of 64 plain datagrams → recvmmsg into 64 slots
 * - `gso`:     sendmmsg of 4 UDP_SEGMENT entries × 46 segments → recvmmsg without GRO (64 slots)
 * - `gso_gro`: the same sender → a UDP_GRO socket (16 slots of 64 KiB)
 *
 * Prints one JSON object: per mode the datagrams sent/received, pps, payload Gbit/s, loss and the
 * process CPU (both Workers; the machine's cores are shared with the kernel's softirq work).
 * Needs root (namespaces); everything it creates is deleted at the end.
 *
 * Usage: `deno run -A scripts/bench_udp.ts [seconds=3] [modes=batch,gso,gso_gro]`
 */
import process from "node:process";
import { closeFd, openNetnsByName, withNetns } from "../ffi/netns.ts";
import {
  openUdp,
  parseIPv4,
  RecvBatch,
  SendBatch,
  udpFromInfo,
  type UdpInfo,
  type UdpSocket,
} from "../ffi/udp.ts";
import { cleanupAll, createNs, link } from "../tests/helpers/netns.ts";
import { afterInterrupt, onInterrupt } from "./bench_common.ts";

const IS_WORKER = typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined";
const PAYLOAD = 1400;
const SEGS = 46; // 46 × 1400 + headers fits one 64 KiB IPv4 packet

/** Benchmark modes. */
type Mode = "batch" | "gso" | "gso_gro";

/** Message to a Worker. */
interface Job {
  role: "send" | "recv";
  mode: Mode;
  sock: UdpInfo;
  dst: { addr: number; port: number };
  /** [0]: 1 = stop sending, 2 = stop receiving. [1]: sent datagrams, [2]: received datagrams, [3]: recv calls. */
  ctl: SharedArrayBuffer;
}

/** One mode's result. */
interface Result {
  mode: Mode;
  seconds: number;
  sentDatagrams: number;
  recvDatagrams: number;
  recvCalls: number;
  pps: number;
  gbitPerSec: number;
  lossPct: number;
  cpuPct: number;
}

function runSender(job: Job, sock: UdpSocket, ctl: Int32Array): void {
  const gso = job.mode !== "batch";
  const n = gso ? 4 : 64;
  const sb = new SendBatch(n, gso ? SEGS * PAYLOAD : PAYLOAD);
  for (let i = 0; i < n; i++) {
    sb.bufs[i].fill(i);
    sb.sizes[i] = gso ? SEGS * PAYLOAD : PAYLOAD;
    sb.segSizes[i] = gso ? PAYLOAD : 0;
    sb.setDst4(i, job.dst.addr, job.dst.port);
  }
  const perCall = gso ? n * SEGS : n;
  let sent = 0;
  while (Atomics.load(ctl, 0) === 0) {
    const r = sock.sendBatch(sb, n);
    if (r < 0) break;
    sent += r === n ? perCall : (perCall / n) * r;
  }
  Atomics.store(ctl, 1, sent);
}

function runReceiver(job: Job, sock: UdpSocket, ctl: Int32Array): void {
  const gro = job.mode === "gso_gro";
  const rb = gro ? new RecvBatch(16, 65535) : new RecvBatch(64, 2048);
  let got = 0, calls = 0;
  while (Atomics.load(ctl, 0) < 2) {
    const n = sock.recvBatch(rb, 50);
    if (n < 0) break;
    if (n === 0) continue;
    calls++;
    for (let i = 0; i < n; i++) {
      const g = rb.gsoSizes[i];
      got += g > 0 ? Math.ceil(rb.sizes[i] / g) : 1;
    }
    if (Atomics.load(ctl, 0) === 0) {
      Atomics.store(ctl, 2, got);
      Atomics.store(ctl, 3, calls);
    }
  }
}

if (IS_WORKER) {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<Job>) => void) | null;
    postMessage(m: string): void;
  };
  scope.onmessage = (e: MessageEvent<Job>) => {
    const job = e.data;
    const sock = udpFromInfo(job.sock);
    const ctl = new Int32Array(job.ctl);
    if (job.role === "send") runSender(job, sock, ctl);
    else runReceiver(job, sock, ctl);
    scope.postMessage("done");
  };
}

function inNetns<T>(ns: string, fn: () => T): T {
  const fd = openNetnsByName(ns);
  try {
    return withNetns(fd, fn);
  } finally {
    closeFd(fd);
  }
}

async function runMode(mode: Mode, a: string, b: string, seconds: number): Promise<Result> {
  const tx = inNetns(a, () => openUdp({ bindAddr: "10.96.0.1", port: 0, sndbuf: 4 << 20 }));
  const rx = inNetns(b, () => openUdp({ port: 0, rcvbuf: 16 << 20, gro: mode === "gso_gro" }));
  const ctl = new Int32Array(new SharedArrayBuffer(16));
  const workers: Worker[] = [];
  try {
    const done: Promise<void>[] = [];
    for (const role of ["recv", "send"] as const) {
      const w = new Worker(new URL(import.meta.url), { type: "module", name: `udp-${role}` });
      workers.push(w);
      done.push(
        new Promise((resolve, reject) => {
          w.onmessage = () => resolve();
          w.onerror = (e) => {
            e.preventDefault();
            reject(new Error(e.message));
          };
        }),
      );
      const job: Job = {
        role,
        mode,
        sock: (role === "send" ? tx : rx).info(),
        dst: { addr: parseIPv4("10.96.0.2"), port: rx.localPort },
        ctl: ctl.buffer as SharedArrayBuffer,
      };
      w.postMessage(job);
    }
    await new Promise((r) => setTimeout(r, 300)); // let both Workers start
    const startRecv = Atomics.load(ctl, 2);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    Atomics.store(ctl, 0, 1);
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const recv = Atomics.load(ctl, 2) - startRecv;
    await new Promise((r) => setTimeout(r, 200));
    Atomics.store(ctl, 0, 2);
    await Promise.all(done);
    const sent = Atomics.load(ctl, 1);
    return {
      mode,
      seconds: Number(elapsed.toFixed(2)),
      sentDatagrams: sent,
      recvDatagrams: recv,
      recvCalls: Atomics.load(ctl, 3),
      pps: Math.round(recv / elapsed),
      gbitPerSec: Number(((recv * PAYLOAD * 8) / elapsed / 1e9).toFixed(2)),
      lossPct: sent > 0 ? Number((Math.max(0, 1 - Atomics.load(ctl, 2) / sent) * 100).toFixed(1)) : 0,
      cpuPct: Math.round(((cpu.user + cpu.system) / 1e6 / elapsed) * 100),
    };
  } finally {
    for (const w of workers) w.terminate();
    tx.close();
    rx.close();
  }
}

if (!IS_WORKER && import.meta.main) {
  const seconds = Number(Deno.args[0] ?? "3");
  const modes = (Deno.args[1] ?? "batch,gso,gso_gro").split(",") as Mode[];
  const results: Result[] = [];
  const stopGuard = onInterrupt(cleanupAll, (seconds * modes.length + 40) * 1000);
  try {
    const a = await createNs("bua");
    const b = await createNs("bub");
    await link(a, b, "10.96.0.1/24", "10.96.0.2/24");
    for (const m of modes) results.push(await runMode(m, a, b, seconds));
  } finally {
    await afterInterrupt();
    stopGuard();
    await cleanupAll();
  }
  console.log(JSON.stringify(
    { bench: "udp", payload: PAYLOAD, cores: navigator.hardwareConcurrency, underlay: "veth", results },
    null,
    2,
  ));
}
