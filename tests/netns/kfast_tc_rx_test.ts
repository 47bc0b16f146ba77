/**
 * The receiving side of the tc fast path (issue 16, `KernelFastPath: "tc"`) between two netmanager
 * nodes in cluster mode: once an iperf3 TCP bulk flow moved onto the kernel on both nodes, the server
 * node unwraps its data in the kernel (`nm_kf_in`): of the tunnel bytes that node receives after the
 * move, at least 90 % are counted by the kernel program and at most 10 % still reach its userspace
 * tunnel socket. Prints the receive program's per-reason counters (why datagrams went on to userspace).
 * The kernel path decrements the inner TTL like the TUN path's two routing hops: a UDP flow's datagrams
 * arrive with TTL 62 before and after the move (without the decrement the kernel-carried ones had 64).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { eventually } from "../helpers/setup.ts";
import { CLI, execIn, threeNodes, WEB, withWorld } from "../helpers/world.ts";
import type { SimNode } from "../../src/demo/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

interface RxStatus {
  kernelFastPath: {
    moved: number;
    counters: { tx: { packets: number; bytes: number }; rx: { packets: number; bytes: number } };
    rxReasons?: Record<string, number>;
  } | null;
  dataPlane: { udpRx: number; udpRxBytes: number };
}

// Prints the TTL of each datagram to UDP 5300 (IP_RECVTTL) and echoes it, until 2 s pass without one.
const TTL_SERVER = `
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
s.bind(("0.0.0.0", 5300))
s.settimeout(6)
while True:
    try:
        data, anc, _, peer = s.recvmsg(2048, 64)
    except socket.timeout:
        break
    s.settimeout(2)
    s.sendto(data, peer)  # answers: a conversation, which both nodes move
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
            print(struct.unpack("i", data)[0], flush=True)
`;
// One UDP flow (source port 45300) to argv[1]:5300, TTL 64, a datagram every 20 ms for 6 s.
const TTL_CLIENT = `
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
s.bind(("0.0.0.0", 45300))
for i in range(300):
    s.sendto(b"ttl %d" % i, (sys.argv[1], 5300))
    time.sleep(0.02)
`;

function count(xs: number[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
}

const status = (n: SimNode) => n.api.getJson("/status") as Promise<RxStatus>;

/** Kernel-unwrapped and userspace-read tunnel bytes (and datagrams) of a node. */
async function rx(n: SimNode): Promise<{ kernel: number; user: number; kPkts: number; uPkts: number }> {
  const s = await status(n);
  return {
    kernel: s.kernelFastPath!.counters.rx.bytes,
    user: s.dataPlane.udpRxBytes,
    kPkts: s.kernelFastPath!.counters.rx.packets,
    uPkts: s.dataPlane.udpRx,
  };
}

Deno.test({
  name: "kfast tc rx: a moved TCP bulk flow's data is unwrapped in the receiving node's kernel (≥ 90 %); " +
    "the inner TTL drops by the same 2 hops on the kernel path as on the TUN",
  ...opts,
}, async () => {
  Deno.env.set("KernelFastPath", "tc");
  Deno.env.set("TunnelSecurity", "off");
  Deno.env.set("DataPlaneWorkers", "1");
  try {
    await withWorld(async (w) => {
      const { nodes } = await threeNodes(w, { broker: "embedded", count: 2 });
      const [n1, n2] = nodes;
      await w.ctl(["service", "add", WEB]);
      await w.ctl(["service", "add", CLI]);
      await w.ctl(["instance", "add", WEB, "0"]);
      await w.ctl(["instance", "add", CLI, "0"]);
      const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
      const rr = ((svc.find((s) => s.job_name === WEB)!.service_ip_list) as Array<{ Address: string }>)[0]
        .Address;
      const web = await w.instance("web0", ["iperf3", "-s", "-p", "5201"]);
      const cli = await w.instance("client");
      for (const [n, job, pid] of [[n2, WEB, web.pid], [n1, CLI, cli.pid]] as const) {
        const r = await n.api.post("/container/deploy", {
          pid,
          serviceName: job,
          instanceNumber: 0,
          portMappings: "",
        });
        assertEquals(r.status, 200, r.body);
      }

      // One TCP stream client (node 1) → server (node 2); it starts on the TUN and moves.
      const perf = execIn(cli, ["iperf3", "-c", rr, "-p", "5201", "-t", "10", "-J"]);
      for (const n of [n1, n2]) {
        await eventually(
          () => status(n),
          (s) => (s.kernelFastPath?.moved ?? 0) >= 1, // the busy data connection
          10000,
          `flows moved on ${n.ns}`,
          100,
        );
      }
      await new Promise((r) => setTimeout(r, 500)); // the sender's GSO readiness follows the first answers
      const a = await rx(n2);
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 4000));
      const b = await rx(n2);
      const secs = (Date.now() - t0) / 1000;
      const p = await perf;
      assertEquals(p.code, 0, `iperf3: ${p.err} ${p.out.slice(-300)}`);
      const received =
        (JSON.parse(p.out) as { end: { sum_received: { bytes: number } } }).end.sum_received.bytes;
      const kernel = b.kernel - a.kernel, user = b.user - a.user;
      const reasons = (await status(n2)).kernelFastPath!.rxReasons;
      console.log(
        `tc rx on the server node over ${secs.toFixed(1)} s after the move: kernel ${kernel} B ` +
          `(${b.kPkts - a.kPkts} skbs), userspace ${user} B (${b.uPkts - a.uPkts} reads); ` +
          `iperf3 received ${received} B in all; reasons ${JSON.stringify(reasons)}`,
      );
      assert(kernel + user > 50 << 20, `the flow ran after the move: ${kernel + user} B`);
      assert(
        kernel >= 0.9 * (kernel + user),
        `the receiving kernel unwrapped ${(100 * kernel / (kernel + user)).toFixed(1)} % of the bytes`,
      );

      // Inner TTL: the kernel path routes like the TUN path it replaces (each node TTL − 1), so the
      // datagrams of one UDP flow arrive with the same TTL before and after it moved.
      const got = execIn(web, ["/usr/bin/python3", "-c", TTL_SERVER]);
      await new Promise((r) => setTimeout(r, 700));
      const k0 = (await rx(n2)).kPkts;
      const sent = await execIn(cli, ["/usr/bin/python3", "-c", TTL_CLIENT, rr]);
      assertEquals(sent.code, 0, sent.err);
      const g = await got;
      assertEquals(g.code, 0, g.err);
      const ttls = g.out.split("\n").filter((l) => l).map(Number);
      const carried = (await rx(n2)).kPkts - k0;
      console.log(`TTLs at the server: ${JSON.stringify(count(ttls))}; kernel-unwrapped ${carried}`);
      assert(ttls.length >= 150, `datagrams arrived: ${ttls.length}`);
      assert(carried >= 50, `the kernel carried part of the UDP flow: ${carried}`);
      assertEquals(Object.keys(count(ttls)), ["62"], "TTL 64 − 2 hops on both paths");
    });
  } finally {
    Deno.env.delete("KernelFastPath");
    Deno.env.delete("TunnelSecurity");
    Deno.env.delete("DataPlaneWorkers");
  }
});
