/**
 * The lane function in its three forms agrees through real traffic: the eBPF TUN steering program
 * (kernel traffic into a 3-queue TUN lands on queue `laneOf(…, 3)`), the classic BPF reuseport program
 * (crafted raw/FAST/JUMBO/control datagrams land on socket `datagramLane(…, 3)`), and the TypeScript
 * functions that compute both. Without the programs the kernel spreads by its own hash, and the
 * assertions fail (checked: the TUN test finds packets off their lane when steering is detached).
 */
import { closeFd, openNetnsByName, withNetns } from "../../ffi/netns.ts";
import { libc } from "../../ffi/libc.ts";
import { openTun, type TunDevice } from "../../ffi/tun.ts";
import { openUdp, RecvBatch, SendBatch, type UdpSocket } from "../../ffi/udp.ts";
import { attachReuseportCbpf, loadSocketFilter, setTunSteering } from "../../ffi/bpf.ts";
import { datagramLane, laneOf, reuseportProgram, tunSteeringProgram } from "../../src/proxy/lanes.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { cleanupAll, createNs, inNs, isRoot, sh } from "../helpers/netns.ts";
import {
  buildIcmpEcho4,
  buildIcmpEcho6,
  buildIPv4Tcp,
  buildIPv4Udp,
  buildIPv6Tcp,
  buildIPv6Udp,
  fragmentIPv4,
} from "../helpers/packets.ts";

function inNetns<T>(ns: string, fn: () => T): T {
  const fd = openNetnsByName(ns);
  try {
    return withNetns(fd, fn);
  } finally {
    closeFd(fd);
  }
}

const LANES = 3;

/** Kernel traffic of many flows: UDP and TCP from chosen ports, v4 and v6, and pings. */
const TRAFFIC = `
import socket, subprocess
for i in range(40):
    for fam, dst in ((socket.AF_INET, "10.77.0.2"), (socket.AF_INET6, "fd77::2")):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind(("", 20000 + i * 7))
        u.sendto(b"x" * (i + 1), (dst, 30000 + i * 13))
        u.close()
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setblocking(False)
        t.bind(("", 21000 + i * 11))
        try:
            t.connect((dst, 80 + i))
        except BlockingIOError:
            pass
        t.close()
for dst in ("10.77.0.2", "fd77::2"):
    for k in range(4):
        subprocess.run(["ping", "-c", "1", "-W", "0.05", dst], capture_output=True)
`;

async function tunQueues(steer: boolean): Promise<{ total: number; off: number; used: Set<number> }> {
  const ns = await createNs("lanet");
  const queues: TunDevice[] = [];
  let prog = -1;
  try {
    inNetns(ns, () => {
      for (let q = 0; q < LANES; q++) {
        queues.push(openTun({ name: "nml0", multiQueue: true, nonBlocking: true }));
      }
    });
    if (steer) {
      prog = loadSocketFilter(tunSteeringProgram());
      setTunSteering(queues[0].fd, prog);
    }
    await sh(["ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "nml0"]);
    await sh(["ip", "-n", ns, "addr", "add", "fd77::1/64", "dev", "nml0", "nodad"]);
    await sh(["ip", "-n", ns, "link", "set", "nml0", "up"]);
    await inNs(ns, ["python3", "-c", TRAFFIC]);
    const buf = new Uint8Array(65536);
    let total = 0, off = 0;
    const used = new Set<number>();
    for (let q = 0; q < LANES; q++) {
      for (;;) {
        const n = queues[q].read(buf);
        if (n <= 0) break;
        total++;
        used.add(q);
        if (laneOf(buf, 0, n, LANES) !== q) off++;
      }
    }
    return { total, off, used };
  } finally {
    for (const q of queues) q.close();
    if (prog >= 0) libc.close(prog);
  }
}

Deno.test({
  name: "lanes: the eBPF steering program puts every packet on the TUN queue of its lane",
  ignore: !isRoot,
  async fn() {
    try {
      const r = await tunQueues(true);
      assert(r.total >= 150, `saw ${r.total} packets`);
      assertEquals(r.off, 0, `${r.off} of ${r.total} packets on another queue than their lane`);
      assertEquals(r.used.size, LANES, "flows spread over every queue");
      // Without it the kernel's own flow hash spreads them: lanes would not match.
      const plain = await tunQueues(false);
      assert(plain.off > 0, "without steering some packets leave their lane");
    } finally {
      await cleanupAll();
    }
  },
});

Deno.test({
  name:
    "lanes: the reuseport program sends raw, FAST, JUMBO, SECURE and control datagrams to their lane's socket",
  ignore: !isRoot,
  async fn() {
    try {
      const ns = await createNs("laner");
      const socks: UdpSocket[] = [];
      let tx: UdpSocket | undefined;
      try {
        inNetns(ns, () => {
          for (let i = 0; i < LANES; i++) {
            socks.push(openUdp({ port: 47011, bindAddr: "127.0.0.1", reusePort: true, nonBlocking: true }));
          }
          tx = openUdp({ port: 0, bindAddr: "127.0.0.1" });
        });
        attachReuseportCbpf(socks[0].fd, reuseportProgram(LANES));
        const a4 = "10.1.0.5", b4 = "10.2.0.9", a6 = "fd00::5", b6 = "fd01::9";
        const grams: Uint8Array[] = [];
        const wrap = (head: number[], pkt: Uint8Array) => {
          const g = new Uint8Array(head.length + pkt.length);
          g.set(head);
          g.set(pkt, head.length);
          return g;
        };
        for (let i = 0; i < 30; i++) {
          const sp = 1000 + i * 37, dp = 5000 + i * 101;
          const pkts = [
            buildIPv4Udp({ src: a4, dst: b4, srcPort: sp, dstPort: dp, payload: 10 }),
            buildIPv4Tcp({ src: a4, dst: b4, srcPort: sp, dstPort: dp, payload: 20 }),
            buildIPv6Udp({ src: a6, dst: b6, srcPort: dp, dstPort: sp, payload: 10 }),
            buildIPv6Tcp({ src: a6, dst: b6, srcPort: sp + 1, dstPort: dp, payload: 0 }),
            buildIcmpEcho4({ src: a4, dst: b4, echoId: sp, payload: 8 }),
            buildIcmpEcho6({ src: a6, dst: b6, echoId: dp, reply: true, payload: 8 }),
            buildIPv4Udp({
              src: a4,
              dst: b4,
              srcPort: sp,
              dstPort: dp,
              payload: 10,
              ipOptions: new Uint8Array(8),
            }),
          ];
          for (const p of pkts) {
            grams.push(p); // raw mode
            grams.push(wrap([0x14, 0, 0, 0, 0, 0, 0, 0], p)); // FAST
            grams.push(wrap([0x15, 0, 3, 1, 0, 0, 0, i, 0x01, 0, 0x05, 0xa8, 0, 20, 0, 16], p)); // JUMBO chunk 0
          }
          grams.push(
            wrap([0x15, 2, 3, 1, 0, 9, (sp + dp) >> 8 & 0xff, (sp + dp) & 0xff], new Uint8Array(100)),
          ); // JUMBO chunk 2: by id
          grams.push(
            fragmentIPv4(buildIPv4Udp({ src: a4, dst: b4, srcPort: sp, dstPort: dp, payload: 100 }), 48)[1],
          );
          const ack = new Uint8Array(19);
          ack.set([0x11, 1, 0x4e, 0x4d]);
          ack[15] = i; // nonce's last byte
          grams.push(ack);
          const reply = new Uint8Array(16);
          reply.set([0x13, 0, 0, 0, 0, 0, 1, i]); // seq's last byte
          grams.push(reply);
          const hello = new Uint8Array(19);
          hello.set([0x10, 1, 0x4e, 0x4d]);
          hello[15] = i + 1;
          grams.push(hello);
          const probe = new Uint8Array(16);
          probe.set([0x12, 0, 0, 0, 0, 0, 0, i + 2]);
          grams.push(probe);
          grams.push(new Uint8Array([0x1f, 1, 2, 3])); // unknown control type: lane 0
          const sealed = new Uint8Array(64); // SECURE data: by the cleartext lane key in its header
          sealed.set([0x19, 0, (sp + dp) >> 8 & 0xff, (sp + dp) & 0xff, 0, 0, 0, 1]);
          grams.push(sealed);
          grams.push(new Uint8Array([0x16, 1, 0xff, 0xff, 0, 0, 0, 7])); // handshake: lane 0
        }
        const sb = new SendBatch(1, 2048);
        const rb = new RecvBatch(8, 2048);
        const hits = new Array<number>(LANES).fill(0);
        let off = 0;
        for (const g of grams) {
          const want = datagramLane(g, 0, g.length, LANES);
          sb.bufs[0].set(g);
          sb.sizes[0] = g.length;
          sb.offsets[0] = 0;
          sb.segSizes[0] = 0;
          sb.setDst4(0, 0x7f000001, 47011);
          assertEquals(tx!.sendBatch(sb, 1), 1);
          let got = -1;
          for (let tries = 0; tries < 100 && got < 0; tries++) {
            for (let s = 0; s < LANES; s++) if (socks[s].recvBatch(rb, 0) > 0) got = s;
            if (got < 0) await new Promise((r) => setTimeout(r, 1));
          }
          assert(got >= 0, "datagram arrived");
          hits[got]++;
          if (got !== want) off++;
        }
        assertEquals(off, 0, `${off} of ${grams.length} datagrams reached another socket than their lane`);
        assert(hits.every((h) => h > 20), `spread ${hits}`);
      } finally {
        for (const s of socks) s.close();
        tx?.close();
      }
    } finally {
      await cleanupAll();
    }
  },
});
