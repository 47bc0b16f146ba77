/**
 * Benchmark of the per-instance network set-up through rtnetlink (ffi/netlink.ts), no processes.
 *
 * It creates its own "node" namespace holding a bridge (so nothing touches the root namespace) and
 * one named namespace per instance (the container stand-in), then times, per instance:
 *   open the instance netns fd → veth create with the peer placed into that fd, enslaved, host end up
 *   (one request) → socket inside the instance netns → peer lookup → addr v4 → addr v6 (nodad) →
 *   eth0 up → lo up → default route v4 → default route v6 → close.
 * Namespace creation is timed separately (containers come with their own). Everything it creates is
 * deleted at the end, also on failure. Prints one JSON object.
 *
 * Usage: `deno run -A scripts/bench_netlink.ts [--instances 50]`
 */

import { Netlink } from "../ffi/netlink.ts";
import { closeFd, createNamedNetns, deleteNamedNetns, openNetnsByName } from "../ffi/netns.ts";
import { namePrefix } from "./bench_common.ts";

function arg(name: string, dflt: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(Deno.args[i + 1]);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name} needs a positive integer`);
  return v;
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

const N = arg("instances", 50);
if (N > 60) throw new Error("at most 60 instances (one /26)");
const prefix = namePrefix("bn");
const nodeNs = `${prefix}node`;
const ctrNs = (i: number) => `${prefix}c${i}`;
const v4 = (last: number) => new Uint8Array([10, 213, 80, last]);
const v6 = (last: number) => new Uint8Array([0xfd, 0, 0, 0xd5, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);

const steps = [
  "openFd",
  "veth",
  "openSock",
  "lookup",
  "addr4",
  "addr6",
  "up",
  "loUp",
  "route4",
  "route6",
  "close",
];
const stepSum = new Map<string, number>(steps.map((s) => [s, 0]));
const created: string[] = [];
const perInstance: number[] = [];
const nsCreate: number[] = [];

let host: Netlink | undefined;
let nodeFd = -1;
try {
  createNamedNetns(nodeNs);
  created.push(nodeNs);
  nodeFd = openNetnsByName(nodeNs);
  host = Netlink.openInNetns(nodeFd);
  host.setLink(1, { up: true });
  host.createBridge("br0", 1450);
  const br = host.linkIndex("br0")!;
  host.setLink(br, { up: true });
  host.addAddress(br, { family: 4, addr: v4(1), prefixLen: 26 });
  host.addAddress(br, { family: 6, addr: v6(1), prefixLen: 120 }, { noDad: true });

  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    createNamedNetns(ctrNs(i));
    created.push(ctrNs(i));
    nsCreate.push(performance.now() - t0);
  }

  for (let i = 0; i < N; i++) {
    const last = i + 2;
    let t = performance.now();
    const start = t;
    const lap = (name: string) => {
      const now = performance.now();
      stepSum.set(name, stepSum.get(name)! + (now - t));
      t = now;
    };
    const fd = openNetnsByName(ctrNs(i));
    lap("openFd");
    host.createVeth(`veth${i}`, "eth0", { mtu: 1450, peerNetnsFd: fd, master: br, up: true });
    lap("veth");
    const c = Netlink.openInNetns(fd);
    lap("openSock");
    const idx = c.linkIndex("eth0")!;
    lap("lookup");
    c.addAddress(idx, { family: 4, addr: v4(last), prefixLen: 26 });
    lap("addr4");
    c.addAddress(idx, { family: 6, addr: v6(last), prefixLen: 120 }, { noDad: true });
    lap("addr6");
    c.setLink(idx, { up: true });
    lap("up");
    c.setLink(1, { up: true });
    lap("loUp");
    c.addRoute({ family: 4, dstLen: 0, gateway: v4(1) });
    lap("route4");
    c.addRoute({ family: 6, dstLen: 0, gateway: v6(1) });
    lap("route6");
    c.close();
    closeFd(fd);
    lap("close");
    perInstance.push(t - start);
  }

  // sanity: the last instance really has its addresses, and every veth is on the bridge
  const fd = openNetnsByName(ctrNs(N - 1));
  const c = Netlink.openInNetns(fd);
  const addrs = c.listAddresses(c.linkIndex("eth0")).filter((a) => a.addr[0] !== 0xfe);
  c.close();
  closeFd(fd);
  if (addrs.length !== 2) throw new Error(`expected 2 addresses in the last instance, got ${addrs.length}`);
  const enslaved = host.listLinks().filter((l) => l.master === br).length;
  if (enslaved !== N) throw new Error(`expected ${N} veths on the bridge, got ${enslaved}`);

  const sorted = [...perInstance].sort((a, b) => a - b);
  const nsSorted = [...nsCreate].sort((a, b) => a - b);
  console.log(JSON.stringify(
    {
      bench: "netlink per-instance setup",
      instances: N,
      requests_per_instance: 9,
      p50_ms: round(quantile(sorted, 0.5)),
      p99_ms: round(quantile(sorted, 0.99)),
      mean_ms: round(sorted.reduce((a, b) => a + b, 0) / N),
      min_ms: round(sorted[0]),
      max_ms: round(sorted[N - 1]),
      step_mean_us: Object.fromEntries(steps.map((s) => [s, round((stepSum.get(s)! / N) * 1000, 1)])),
      netns_create_p50_ms: round(quantile(nsSorted, 0.5)),
      netns_create_p99_ms: round(quantile(nsSorted, 0.99)),
      kernel: Deno.osRelease(),
      deno: Deno.version.deno,
    },
    null,
    2,
  ));
} finally {
  host?.close();
  if (nodeFd >= 0) closeFd(nodeFd);
  for (const name of created.reverse()) {
    try {
      deleteNamedNetns(name);
    } catch (e) {
      console.error(`cleanup ${name}: ${e}`);
    }
  }
}
