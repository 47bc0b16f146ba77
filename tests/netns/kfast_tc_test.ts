/**
 * The tc eBPF fast path programs alone (issue 16, design (a)), between two simulated nodes: each node
 * namespace has an underlay veth, a bridge and one instance namespace behind a veth; the test loads
 * bpf/kfast.c's embedded programs per node (tcx ingress of the bridge and of the underlay device) and
 * fills the maps itself for a ServiceIP 10.30.0.1 served by node 2's instance (InstanceIPs 10.30.0.11 /
 * 10.30.0.12, namespace IPs 10.19.N.2). Nothing else routes between the instances: what arrives came
 * through the programs. Proves: TCP and UDP across and back with the ServiceIP restored on replies; the
 * wire format is Oakestra's raw IP-in-UDP on 50103 (outer UDP, inner IPv4 with the client's InstanceIP);
 * a 64 MiB TCP transfer (GSO super-packets from the instance) arrives byte-exact with the kernel's
 * counters carrying it; delivery through the bridge when the instance's veth is not in the map; a removed flow entry stops the traffic; detaching leaves no program behind.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { cleanupAll, createNs, inNs, isRoot, sh } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { closeFd, openNetnsByName, withNetns } from "../../ffi/netns.ts";
import { cleanTcPrograms, TcPrograms } from "../../src/kfast/tc_loader.ts";
import {
  decodeCounters,
  EGRESS_PEER_READY,
  encodeConfig,
  encodeEgress,
  encodeFlowKey,
  encodeIngress,
  encodeLocal,
  ipKey,
  u32,
} from "../../src/kfast/tc_maps.ts";
import { tcxQuery } from "../../src/sys/bpf.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const PORT = 50103;
const SIP = "10.30.0.1";
const PORTS = [80, 81, 82];
const EPHEMERAL = [31000, 31199]; // the instances' ip_local_port_range: flows the test installs

interface Node {
  ns: string;
  inst: string;
  ul: string;
  ulIp: string;
  nsip: string;
  iip: string;
  veth: string;
  br: string;
}

const ifindex = (ns: string, dev: string) => inNs(ns, ["cat", `/sys/class/net/${dev}/ifindex`]).then(Number);
const macOf = (ns: string, dev: string) =>
  inNs(ns, ["cat", `/sys/class/net/${dev}/address`]).then((s) => s.trim());

async function build(): Promise<[Node, Node]> {
  const n1 = await createNs("kt1");
  const n2 = await createNs("kt2");
  await sh(["ip", "link", "add", "kul1", "netns", n1, "type", "veth", "peer", "name", "kul2", "netns", n2]);
  const nodes: Node[] = [];
  for (const [i, ns] of [[1, n1], [2, n2]] as const) {
    const n: Node = {
      ns,
      inst: "",
      ul: `kul${i}`,
      ulIp: `192.168.77.${i}`,
      nsip: `10.19.${i}.2`,
      iip: `10.30.0.1${i}`,
      veth: `kv${i}h`,
      br: `kbr${i}`,
    };
    await inNs(ns, ["ip", "addr", "add", `${n.ulIp}/24`, "dev", n.ul]);
    await inNs(ns, ["ip", "link", "set", n.ul, "up"]);
    await inNs(ns, ["ip", "link", "add", n.br, "type", "bridge"]);
    await inNs(ns, ["ip", "addr", "add", `10.19.${i}.1/24`, "dev", n.br]);
    await inNs(ns, ["ip", "link", "set", n.br, "up"]);
    n.inst = await createNs(`ki${i}`);
    await sh([
      "ip",
      "link",
      "add",
      n.veth,
      "netns",
      ns,
      "mtu",
      "1450",
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      n.inst,
      "mtu",
      "1450",
    ]);
    await inNs(ns, ["ip", "link", "set", n.veth, "master", n.br, "up"]);
    await inNs(n.inst, ["ip", "addr", "add", `${n.nsip}/24`, "dev", "eth0"]);
    await inNs(n.inst, ["ip", "link", "set", "eth0", "up"]);
    await inNs(n.inst, ["ip", "route", "add", "default", "via", `10.19.${i}.1`]);
    await inNs(n.inst, ["sysctl", "-qw", `net.ipv4.ip_local_port_range=${EPHEMERAL[0]} ${EPHEMERAL[1]}`]);
    nodes.push(n);
  }
  return [nodes[0], nodes[1]];
}

/** Loads and attaches the programs in a node's namespace; fills its static maps. */
async function program(n: Node, peer: Node): Promise<{ p: TcPrograms; out: number; in: number; ul: number }> {
  const out = await ifindex(n.ns, n.br);
  const ul = await ifindex(n.ns, n.ul);
  const nsFd = openNetnsByName(n.ns);
  const p = withNetns(nsFd, () => {
    const p = TcPrograms.load();
    p.attach({ out: [out], in: [ul] });
    return p;
  });
  closeFd(nsFd);
  p.maps.config.update(u32(0), encodeConfig(PORT, 0));
  p.maps.peers.update(ipKey(peer.ulIp), u32(PORT));
  p.maps.locals.update(
    ipKey(n.nsip),
    encodeLocal({
      ifindex: await ifindex(n.ns, n.veth),
      mac: await macOf(n.inst, "eth0"),
      gwMac: await macOf(n.ns, n.br),
    }),
  );
  return { p, out, in: ul, ul };
}

/** Installs the flows of client `c` (dialling the ServiceIP) to server `s` for the ephemeral range. */
function flows(
  c: Node,
  s: Node,
  pc: TcPrograms,
  ps: TcPrograms,
  ulC: number,
  ulS: number,
  ports = PORTS,
): void {
  for (const proto of [6, 17] as const) {
    for (const dport of ports) {
      for (let sport = EPHEMERAL[0]; sport <= EPHEMERAL[1]; sport++) {
        // client node: out (nsip → ServiceIP) translated to InstanceIP → server nsip; replies restored
        pc.maps.egress.update(
          encodeFlowKey({ proto, saddr: c.nsip, sport, daddr: SIP, dport }),
          encodeEgress({
            newSaddr: c.iip,
            newDaddr: s.nsip,
            localIp: c.ulIp,
            localPort: PORT,
            peerIp: s.ulIp,
            peerPort: PORT,
            ifindex: ulC,
            flags: EGRESS_PEER_READY, // both sides installed at once
          }),
        );
        pc.maps.ingress.update(
          encodeFlowKey({ proto, saddr: s.iip, sport: dport, daddr: c.nsip, dport: sport }),
          encodeIngress({ newSaddr: SIP }),
        );
        // server node: in as sent (client InstanceIP → own nsip); replies to the client's InstanceIP
        ps.maps.ingress.update(
          encodeFlowKey({ proto, saddr: c.iip, sport, daddr: s.nsip, dport }),
          encodeIngress({}),
        );
        ps.maps.egress.update(
          encodeFlowKey({ proto, saddr: s.nsip, sport: dport, daddr: c.iip, dport: sport }),
          encodeEgress({
            newSaddr: s.iip,
            newDaddr: c.nsip,
            localIp: s.ulIp,
            localPort: PORT,
            peerIp: c.ulIp,
            peerPort: PORT,
            ifindex: ulS,
            flags: EGRESS_PEER_READY,
          }),
        );
      }
    }
  }
}

function total(p: TcPrograms, map: "egress" | "ingress"): { packets: number; bytes: number } {
  let packets = 0, bytes = 0;
  for (const [, v] of p.maps[map].entries()) {
    const c = decodeCounters(v);
    packets += c.packets;
    bytes += c.bytes;
  }
  return { packets, bytes };
}

/** Runs `cmd` in namespace `ns`, returns code and output. */
async function exec(ns: string, cmd: string[]): Promise<{ code: number; out: string }> {
  const o = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, ...cmd],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: o.code, out: d.decode(o.stdout) + d.decode(o.stderr) };
}

Deno.test(
  "tc fast path programs: translate + raw IP-in-UDP both ways, GSO, counters, removal",
  opts,
  async () => {
    let servers: Deno.ChildProcess | undefined;
    const loaded: { ns: string; p: TcPrograms; out: number; in: number }[] = [];
    try {
      const [c, s] = await build();
      const a = await program(c, s);
      const b = await program(s, c);
      loaded.push({ ns: c.ns, ...a }, { ns: s.ns, ...b });
      flows(c, s, a.p, b.p, a.ul, b.ul);
      servers = new Deno.Command("ip", {
        args: ["netns", "exec", s.inst, ...TOOL, "servers", "80", "web2"],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 1500));

      // TCP and UDP through the ServiceIP: only the programs connect the two instances.
      const tcp = await exec(c.inst, [...TOOL, "tcp-client", SIP, "80", "hello"]);
      assertEquals(tcp.out.trim(), "web2:hello", tcp.out);
      const udp = await exec(c.inst, [...TOOL, "udp-client", SIP, "80", "dgram"]);
      assertEquals(udp.out.trim(), "web2:dgram", udp.out);

      // Wire format: on node 2's underlay, UDP 50103 → 50103 carrying IPv4 from the client's InstanceIP.
      const cap = new Deno.Command("ip", {
        args: ["netns", "exec", s.ns, "tcpdump", "-i", s.ul, "-c", "1", "-n", "-x", `udp dst port ${PORT}`],
        stdout: "piped",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 700));
      await exec(c.inst, [...TOOL, "udp-client", SIP, "80", "wire"]);
      const text = new TextDecoder().decode((await cap.output()).stdout);
      const hex = text.split("\n").filter((l) => l.includes("0x")).map((l) =>
        l.split(":")[1].replace(/\s/g, "")
      ).join("");
      const bytes = hex.match(/../g)!.map((h) => parseInt(h, 16));
      assertEquals(bytes[9], 17, "outer protocol UDP");
      assertEquals((bytes[20] << 8) | bytes[21], PORT, "outer source port");
      assertEquals((bytes[22] << 8) | bytes[23], PORT, "outer destination port");
      assertEquals(bytes.slice(12, 16).join("."), c.ulIp);
      assertEquals(bytes[28] >> 4, 4, "inner IPv4 right after the 8-byte UDP header (raw mode)");
      assertEquals(bytes.slice(40, 44).join("."), c.iip, "inner source: the client's InstanceIP");
      assertEquals(bytes.slice(44, 48).join("."), s.nsip, "inner destination: the server's namespace IP");
      assertEquals((bytes[24] << 8) | bytes[25], bytes.length - 20, "outer UDP length");

      // 64 MiB over TCP (GSO super-packets from the instance) byte-exact, carried by the kernel path.
      const before = total(a.p, "egress");
      const bulk = await exec(c.inst, [...TOOL, "tcp-bulk", SIP, "81", "64"]);
      assertEquals(bulk.code, 0, bulk.out);
      const after = total(a.p, "egress");
      assert(
        after.bytes - before.bytes >= 64 * 1024 * 1024,
        `kernel egress bytes ${after.bytes - before.bytes}`,
      );
      assert(total(b.p, "ingress").bytes >= 64 * 1024 * 1024, "server node decapsulated it");
      const stats = a.p.maps.stats.lookup(u32(0))!;
      assert(new DataView(stats.buffer).getBigUint64(0, true) > 0n, "per-CPU counters count");

      // Without a `locals` entry the server node delivers through its bridge (neighbour + FDB).
      b.p.maps.config.update(u32(0), encodeConfig(PORT, await ifindex(s.ns, s.br)));
      assert(b.p.maps.locals.delete(ipKey(s.nsip)));
      const viaBridge = total(b.p, "ingress").packets;
      const tcp2 = await exec(c.inst, [...TOOL, "tcp-client", SIP, "80", "bridged"]);
      assertEquals(tcp2.out.trim(), "web2:bridged", tcp2.out);
      assert(total(b.p, "ingress").packets > viaBridge, "carried by the kernel path");

      // Removing the flows cuts them: nothing else connects the instances.
      for (const k of a.p.maps.egress.keys()) a.p.maps.egress.delete(k);
      const cut = await exec(c.inst, [...TOOL, "tcp-client", SIP, "80", "gone"]);
      assert(cut.code !== 0 && !cut.out.includes("web2:gone"), cut.out);
    } finally {
      servers?.kill();
      await servers?.status;
      for (const l of loaded) {
        const nsFd = openNetnsByName(l.ns);
        const left = withNetns(nsFd, () => {
          l.p.detach({ out: [l.out], in: [l.in] });
          l.p.close();
          return tcxQuery(l.out).length + tcxQuery(l.in).length + cleanTcPrograms();
        });
        assertEquals(left, 0, "no program left attached");
      }
      await cleanupAll();
    }
  },
);
