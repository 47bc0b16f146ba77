/**
 * The receiving side of the tc fast path (issue 16, `KernelFastPath: "tc"`) between two netmanager
 * nodes in cluster mode: once an iperf3 TCP bulk flow moved onto the kernel on both nodes, the server
 * node unwraps its data in the kernel (`nm_kf_in`): of the tunnel bytes that node receives after the
 * move, at least 90 % are counted by the kernel program and at most 10 % still reach its userspace
 * tunnel socket. Prints the receive program's per-reason counters (why datagrams went on to userspace).
 * The sending node's kernel-carried packets leave at the client instance's veth, before the bridge (its
 * device counts < 10 % of them). The kernel path decrements the inner TTL like the TUN path's two routing hops: a UDP flow's datagrams
 * arrive with TTL 62 before and after the move (without the decrement the kernel-carried ones had 64).
 * Programs alone: a peer's raw-mode datagram from its userspace socket (outer UDP checksum filled) is
 * unwrapped but not counted as the peer's kernel carrying the flow; one with checksum 0 (as nm_kf_out
 * sends) is — only those mark a flow ready for GSO super-packets. A train of raw datagrams in one GSO
 * skb (UDP_SEGMENT send over a veth) goes whole to the tunnel socket instead of being unwrapped as one.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { cleanupAll, createNs, inNs, isRoot, sh } from "../helpers/netns.ts";
import { eventually } from "../helpers/setup.ts";
import { execIn } from "../helpers/world.ts";
import { withTcPair } from "../helpers/kfast_tc.ts";
import type { SimNode } from "../../src/demo/world.ts";
import { closeFd, openNetnsByName, withNetns } from "../../ffi/netns.ts";
import { TcPrograms } from "../../src/kfast/tc_loader.ts";
import {
  decodeCounters,
  decodeIngressKernelPackets,
  encodeConfig,
  encodeFlowKey,
  encodeIngress,
  encodeLocal,
  ipKey,
  sumPerCpu,
  u32,
} from "../../src/kfast/tc_maps.ts";

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

/** Frames the node's bridge devices received (passed up to them: what their tcx ingress sees). */
async function bridgeRx(n: SimNode): Promise<number> {
  const links = JSON.parse(await inNs(n.ns, ["ip", "-j", "-s", "link", "show", "type", "bridge"])) as {
    stats64?: { rx?: { packets?: number } };
  }[];
  return links.reduce((sum, l) => sum + (l.stats64?.rx?.packets ?? 0), 0);
}

/** Kernel-unwrapped and userspace-read tunnel bytes (and datagrams) of a node. */
async function rx(
  n: SimNode,
): Promise<{ kernel: number; user: number; kPkts: number; uPkts: number; veth: number }> {
  const s = await status(n);
  return {
    veth: s.kernelFastPath!.rxReasons?.veth ?? 0,
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
  await withTcPair(
    { server: ["iperf3", "-s", "-p", "5201"] },
    async ({ n1, n2, rr, web, cli }) => {
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
      await new Promise((r) => setTimeout(r, 1500)); // the sender's GSO readiness: its next look after the first answers
      const a = await rx(n2);
      const [txA, brA] = [(await status(n1)).kernelFastPath!.counters.tx.packets, await bridgeRx(n1)];
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 4000));
      const b = await rx(n2);
      const [txB, brB] = [(await status(n1)).kernelFastPath!.counters.tx.packets, await bridgeRx(n1)];
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
      // Delivered straight to the server's veth (nm_kf_locals, learnt from the bridge's neighbour and
      // FDB tables), not through the bridge device: it has no hw_enc_features, so there the kernel
      // segmented and checksummed every super-packet in software (TCP at 0.4-0.5x kernel VXLAN).
      const veth = b.veth - a.veth;
      assert(
        veth >= 0.5 * (b.kPkts - a.kPkts),
        `unwrapped skbs handed to the veth: ${veth} of ${b.kPkts - a.kPkts}`,
      );

      // Sending: nm_kf_out also sits at the client instance's host veth (learnt with the locals), so
      // the kernel-carried packets leave before the bridge (no FDB, br_netfilter or pass-up to the
      // bridge device, whose rx counter would count each of them).
      console.log(
        `tc tx on the client node: kernel ${txB - txA} skbs, bridge device rx ${brB - brA} frames`,
      );
      assert(txB - txA > 1000, `the client's kernel sent the flow: ${txB - txA} skbs`);
      assert(brB - brA < 0.1 * (txB - txA), `frames through the bridge: ${brB - brA} of ${txB - txA} sent`);

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
    },
  );
});

// Sends argv[2] (text) as the inner UDP payload 10.30.0.11:40000 → 10.19.2.2:5300 (TTL 64), wrapped
// in raw IP-in-UDP from :50103 to argv[1]:50103; argv[3] = "nocheck": outer UDP checksum 0 (SO_NO_CHECK);
// "train": three such datagrams (payloads TEXT-1..3) sent as one UDP_SEGMENT train.
const RAW_SEND = `
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def packet(text):
    data = text.encode()
    udp = struct.pack("!HHHH", 40000, 5300, 8 + len(data), 0) + data
    src, dst = socket.inet_aton("10.30.0.11"), socket.inet_aton("10.19.2.2")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, src, dst)
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp
mode = sys.argv[3] if len(sys.argv) > 3 else ""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "nocheck":
    s.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
s.bind(("0.0.0.0", 50103))
if mode == "train":  # three datagrams in one UDP_SEGMENT send: one GSO skb across the veth
    one = packet(sys.argv[2] + "-1")
    s.setsockopt(17, 103, len(one))  # SOL_UDP, UDP_SEGMENT
    s.sendto(one + packet(sys.argv[2] + "-2") + packet(sys.argv[2] + "-3"), (sys.argv[1], 50103))
else:
    s.sendto(packet(sys.argv[2]), (sys.argv[1], 50103))
`;
// The receiving node's "userspace tunnel socket": prints the length of each datagram to :50103.
const TUNNEL_RECV = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 50103))
s.settimeout(5)
while True:
    try:
        data = s.recv(65535)
    except socket.timeout:
        break
    s.settimeout(2)
    print(len(data), flush=True)
`;
// Prints "TTL payload" of each datagram to UDP 5300 until 2 s pass without one.
const RAW_RECV = `
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
s.bind(("0.0.0.0", 5300))
s.settimeout(5)
while True:
    try:
        data, anc, _, _ = s.recvmsg(2048, 64)
    except socket.timeout:
        break
    s.settimeout(2)
    ttl = [struct.unpack("i", d)[0] for (l, k, d) in anc if l == 0 and k == 2]
    print(ttl[0] if ttl else -1, data.decode(), flush=True)
`;

Deno.test(
  "kfast tc rx (programs): the peer's userspace raw datagrams are unwrapped but do not count as its kernel " +
    "carrying the flow; a UDP_SEGMENT train goes whole to the tunnel socket",
  opts,
  async () => {
    let p: TcPrograms | undefined;
    let recv: Promise<Deno.CommandOutput> | undefined;
    try {
      const n1 = await createNs("krx1");
      const n2 = await createNs("krx2");
      const inst = await createNs("krxi");
      await sh([
        "ip",
        "link",
        "add",
        "krxu1",
        "netns",
        n1,
        "type",
        "veth",
        "peer",
        "name",
        "krxu2",
        "netns",
        n2,
      ]);
      await sh([
        "ip",
        "link",
        "add",
        "krxh",
        "netns",
        n2,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        inst,
      ]);
      for (const [ns, dev, ip] of [[n1, "krxu1", "192.168.78.1/24"], [n2, "krxu2", "192.168.78.2/24"]]) {
        await inNs(ns, ["ip", "addr", "add", ip, "dev", dev]);
        await inNs(ns, ["ip", "link", "set", dev, "up"]);
      }
      await inNs(n2, ["ip", "link", "set", "krxh", "up"]);
      await inNs(inst, ["ip", "addr", "add", "10.19.2.2/24", "dev", "eth0"]);
      await inNs(inst, ["ip", "link", "set", "eth0", "up"]);
      const ifOf = async (ns: string, dev: string) =>
        Number(await inNs(ns, ["cat", `/sys/class/net/${dev}/ifindex`]));
      const macOf = async (ns: string, dev: string) =>
        (await inNs(ns, ["cat", `/sys/class/net/${dev}/address`])).trim();
      const ul = await ifOf(n2, "krxu2");
      const nsFd = openNetnsByName(n2);
      p = withNetns(nsFd, () => {
        const l = TcPrograms.load();
        l.attach({ out: [], in: [ul] });
        return l;
      });
      closeFd(nsFd);
      p.maps.config.update(u32(0), encodeConfig(50103, 0));
      p.maps.peers.update(ipKey("192.168.78.1"), u32(50103));
      p.maps.locals.update(
        ipKey("10.19.2.2"),
        encodeLocal({
          ifindex: await ifOf(n2, "krxh"),
          mac: await macOf(inst, "eth0"),
          gwMac: await macOf(n2, "krxh"),
        }),
      );
      const key = encodeFlowKey({
        proto: 17,
        saddr: "10.30.0.11",
        sport: 40000,
        daddr: "10.19.2.2",
        dport: 5300,
      });
      p.maps.ingress.update(key, encodeIngress({}));
      recv = new Deno.Command("ip", {
        args: ["netns", "exec", inst, "/usr/bin/python3", "-c", RAW_RECV],
        stdout: "piped",
      })
        .output();
      await new Promise((r) => setTimeout(r, 700));
      const send = (...a: string[]) => inNs(n1, ["/usr/bin/python3", "-c", RAW_SEND, "192.168.78.2", ...a]);

      await send("from-userspace");
      await new Promise((r) => setTimeout(r, 200));
      let v = p.maps.ingress.lookup(key)!;
      assertEquals(decodeCounters(v).packets, 1, "unwrapped in the kernel");
      assertEquals(decodeIngressKernelPackets(v), 0, "a socket's datagram is not the peer's kernel");

      await send("from-kernel", "nocheck");
      await new Promise((r) => setTimeout(r, 200));
      v = p.maps.ingress.lookup(key)!;
      assertEquals(decodeCounters(v).packets, 2);
      assertEquals(decodeIngressKernelPackets(v), 1, "outer checksum 0: the peer's program sent it");

      // A train of three raw datagrams in one GSO skb (a peer's userspace sending with UDP_SEGMENT):
      // left whole to the node's tunnel socket, not unwrapped as one packet (which kept only the first).
      const tunnel = new Deno.Command("ip", {
        args: ["netns", "exec", n2, "/usr/bin/python3", "-c", TUNNEL_RECV],
        stdout: "piped",
      }).output();
      await new Promise((r) => setTimeout(r, 700));
      await send("train", "train");
      const got = new TextDecoder().decode((await tunnel).stdout).trim().split("\n");
      assertEquals(got, ["35", "35", "35"], "the tunnel socket read the three datagrams");
      assertEquals(decodeCounters(p.maps.ingress.lookup(key)!).packets, 2, "the kernel left the train alone");
      assertEquals(sumPerCpu(p.maps.stats.lookup(u32(14))!), 1, "counted as a train (rxReasons.train)");

      const lines = new TextDecoder().decode((await recv).stdout).trim().split("\n");
      assertEquals(
        lines,
        ["63 from-userspace", "63 from-kernel"],
        "delivered, inner TTL − 1; no part of the train",
      );
    } finally {
      p?.close(); // the attachment goes with the namespace's devices
      await recv?.catch(() => {});
      await cleanupAll();
    }
  },
);
