/**
 * Path MTU across a routed underlay (issue 12): node 1 — router 1 — (a link with a small MTU) —
 * router 2 — node 2, every hop a real namespace, the nodes' own links at 1500 so only the routers
 * know the path is narrower (the black-hole case). Each node probes the other in-band and must find
 * the hop's MTU; a 20 MB TCP transfer through a ServiceIP must arrive byte-exact (JUMBO chunks sized
 * to the path, SYN MSS clamped), and UDP datagrams with DF must each either arrive or make the
 * sender's kernel report EMSGSIZE with the tunnel's inner MTU (an ICMP error written back by the
 * node) — none may vanish.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { cleanupAll, createNs, deleteNs, isRoot, sh, uniqueName } from "../helpers/netns.ts";
import { nodeSubnet, type QueryResult, tableInstance } from "../helpers/cluster.ts";
import { TestContainer, TestNode, TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";

/**
 * NM_PMTU_BASELINE=1 skips waiting for probe results, to run this test against code without
 * path-MTU handling (it then fails: the transfer stalls, datagrams vanish).
 */
const BASELINE = Deno.env.get("NM_PMTU_BASELINE") === "1";
const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const WEB = "app.ns.pweb.ns";
const CLI = "app.ns.pcli.ns";
const n1 = nodeSubnet(1);
const n2 = nodeSubnet(2);
const IP1 = "192.168.77.1";
const IP2 = "192.168.78.2";
const RR = { v4: "10.30.0.1", v6: "fdff:2000::1" };

const TABLE: QueryResult[] = [
  {
    app_name: CLI,
    instance_list: [tableInstance({
      n: 0,
      instanceIp: "10.30.0.10",
      instanceIp6: "fdff::10",
      nsip: n1.first4(2),
      nsip6: n1.first6(2),
      hostIp: IP1,
    })],
  },
  {
    app_name: WEB,
    instance_list: [tableInstance({
      n: 0,
      instanceIp: "10.30.0.2",
      instanceIp6: "fdff::2",
      nsip: n2.first4(2),
      nsip6: n2.first6(2),
      hostIp: IP2,
      rr: RR,
    })],
  },
];

/**
 * Sends N datagrams of SIZE payload bytes with DF (a 5th argument `nodf`: without) to an echo
 * server; prints `sent ok emsgsize lost mtu`.
 */
const DF_SENDER = `
import errno, socket, sys
host, port, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF, never fragment; IP_PMTUDISC_DONT with nodf
s.setsockopt(socket.IPPROTO_IP, 10, 0 if sys.argv[5:] == ["nodf"] else 2)
s.connect((host, port))
s.settimeout(1.0)
sent = ok = emsg = lost = 0
for i in range(n):
    try:
        s.send(bytes([65 + i % 26]) * size)
        sent += 1
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        emsg += 1
        continue
    try:
        s.recv(65536)
        ok += 1
    except socket.timeout:
        lost += 1
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        emsg += 1  # the ICMP error reached the socket
print(sent, ok, emsg, lost, s.getsockopt(socket.IPPROTO_IP, 14))
`;

interface Topology {
  nodes: TestNode[];
  routers: string[];
  cli: TestContainer;
  web: TestContainer;
  dir: string;
}

async function veth(a: string, aNs: string, b: string, bNs: string, mtu?: number): Promise<void> {
  await sh(["ip", "link", "add", a, "netns", aNs, "type", "veth", "peer", "name", b, "netns", bNs]);
  if (mtu !== undefined) {
    await sh(["ip", "-n", aNs, "link", "set", a, "mtu", String(mtu)]);
    await sh(["ip", "-n", bNs, "link", "set", b, "mtu", String(mtu)]);
  }
}

async function up(ns: string, dev: string, cidr: string): Promise<void> {
  await sh(["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
  await sh(["ip", "-n", ns, "link", "set", dev, "up"]);
}

/** Builds the routed underlay with a `hopMtu` link between the routers, both daemons and two instances. */
/** iptables u32: the UDP payload's first byte is 0x1X (HELLO, PROBE and their answers). */
const CONTROL_U32 = "0>>22&0x3C@8>>24&0xF0=0x10";

/**
 * Builds the routed underlay with a `hopMtu` link between the routers, both daemons and two
 * instances. `rawNode2`: node 2 plays an Oakestra Go node on the wire (its in-band control is
 * dropped both ways, as in health_test), so the nodes send each other raw IP packets, unprobed.
 */
async function build(
  hopMtu: number,
  t: Topology,
  cfgExtra: Record<string, unknown>,
  rawNode2 = false,
): Promise<void> {
  const r1 = await createNs("r");
  t.routers.push(r1);
  const r2 = await createNs("r");
  t.routers.push(r2);
  for (const r of [r1, r2]) await sh(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
  const [h1, h2] = [uniqueName("h"), uniqueName("h")];
  await veth(h1, r1, h2, r2, hopMtu);
  await up(r1, h1, "192.168.79.1/24");
  await up(r2, h2, "192.168.79.2/24");
  await sh(["ip", "-n", r1, "route", "add", "192.168.78.0/24", "via", "192.168.79.2"]);
  await sh(["ip", "-n", r2, "route", "add", "192.168.77.0/24", "via", "192.168.79.1"]);
  await Deno.writeTextFile(`${t.dir}/table.json`, JSON.stringify(TABLE));
  const plan = [
    { ip: IP1, router: r1, rip: "192.168.77.254", other: "192.168.78.0/24", s: n1 },
    { ip: IP2, router: r2, rip: "192.168.78.254", other: "192.168.77.0/24", s: n2 },
  ];
  for (const [i, p] of plan.entries()) {
    const base = JSON.parse(await Deno.readTextFile(`${ROOT}config/netcfg.json`));
    const cfg = `${t.dir}/netcfg${i + 1}.json`;
    await Deno.writeTextFile(cfg, JSON.stringify({ ...base, NodePublicAddress: p.ip, ...cfgExtra }));
    const node = await TestNode.startWith({
      subnet: p.s.v4,
      extraArgs: ["--cfg", cfg, "--static-table", `${t.dir}/table.json`],
      beforeDaemon: async (ns) => {
        const [a, b] = [uniqueName("ua"), uniqueName("ub")];
        await veth(a, ns, b, p.router);
        await up(ns, a, `${p.ip}/24`);
        await up(p.router, b, `${p.rip}/24`);
        // No default route: only the other node's network, through the router.
        await sh(["ip", "-n", ns, "route", "add", p.other, "via", p.rip]);
        if (rawNode2 && i === 1) {
          for (const [chain, dir] of [["INPUT", "--dport"], ["OUTPUT", "--sport"]]) {
            await sh(
              ["ip", "netns", "exec", ns, "iptables", "-I", chain, "-p", "udp", dir, "50103", "-m", "u32"]
                .concat(
                  ["--u32", CONTROL_U32, "-j", "DROP"],
                ),
            );
          }
        }
      },
    });
    t.nodes.push(node);
    const r = await node.register(`worker${i + 1}`);
    assertEquals(r.status, 200);
  }
  t.cli = await deploy(t.nodes[0], CLI);
  t.web = await deploy(t.nodes[1], WEB, [...TOOL, "servers", "8080", "web"]);
}

async function deploy(node: TestNode, job: string, argv?: string[]): Promise<TestContainer> {
  const c = await TestContainer.start(argv);
  const r = await node.api.post("/container/deploy", {
    pid: c.pid,
    serviceName: job,
    instanceNumber: 0,
    portMappings: "",
  });
  if (r.status !== 200) throw new Error(`deploy ${job}: ${r.status} ${r.body}`);
  return c;
}

interface PeerRow {
  endpoint: string;
  mode?: string;
  mtu?: number;
  mtuProbed?: boolean;
}

async function peerMtu(node: TestNode, endpoint: string): Promise<PeerRow | undefined> {
  const st = (await node.api.getJson("/status")) as { peers?: PeerRow[] };
  return st.peers?.find((p) => p.endpoint === endpoint);
}

async function withRoutedPair(
  hopMtu: number,
  cfgExtra: Record<string, unknown>,
  fn: (t: Topology) => Promise<void>,
  rawNode2 = false,
): Promise<void> {
  const t = {
    nodes: [],
    routers: [],
    dir: await Deno.makeTempDir({ prefix: "nmpmtu-" }),
  } as unknown as Topology;
  try {
    await build(hopMtu, t, cfgExtra, rawNode2);
    await fn(t);
  } catch (e) {
    for (const [i, n] of t.nodes.entries()) {
      console.error(`--- node ${i + 1}\n${(await n.log()).slice(-4000)}`);
    }
    throw e;
  } finally {
    await t.cli?.stop();
    await t.web?.stop();
    for (const n of t.nodes) await n.stop();
    for (const r of t.routers) await deleteNs(r);
    await Deno.remove(t.dir, { recursive: true }).catch(() => {});
    await cleanupAll();
  }
}

const CASES: Array<[number, string, Record<string, unknown>]> = [
  [1400, "JUMBO", {}],
  [1280, "JUMBO", {}],
  [1400, "FAST segments", { JumboMode: false }],
];
for (const [hop, mode, cfgExtra] of CASES) {
  Deno.test(
    `pmtu: a ${hop}-byte hop between routers (${mode}) — probed, 20 MB TCP byte-exact, DF UDP never lost silently`,
    opts,
    async () => {
      await withRoutedPair(hop, cfgExtra, async (t) => {
        // A first exchange makes the nodes peers (HELLO), then each probes the other's path.
        // (retried: the server in the web instance may still be starting)
        await eventually(
          async () => (await t.cli.exec([...TOOL, "udp-client", RR.v4, "8080", "hi"])).stdout.trim(),
          (v) => v === "web:hi",
          15000,
        );
        if (BASELINE) await new Promise((r) => setTimeout(r, 1500)); // code without path-MTU handling
        else {
          for (const [node, ep] of [[t.nodes[0], `${IP2}:50103`], [t.nodes[1], `${IP1}:50103`]] as const) {
            const row = await eventually(() => peerMtu(node, ep), (p) => p?.mtuProbed === true, 10000);
            assertEquals(row?.mtu, hop, `${ep} path MTU`);
            assertEquals(row?.mode, cfgExtra.JumboMode === false ? "fast" : "jumbo");
          }
        }
        // TCP: 20 MiB through the RR ServiceIP, FNV-1a hash compared end to end.
        const bulk = await t.cli.exec([...TOOL, "tcp-bulk", RR.v4, "8081", "20"]);
        assertEquals(bulk.code, 0, `tcp-bulk: ${bulk.stdout} ${bulk.stderr}`);
        // UDP with DF: 1380-byte payloads cannot cross (inner MTU = hop − 28 outer − 8 FAST header) but
        // fit the instance's own link (TUN MTU 1418 with the default TunnelSecurity prefer).
        const inner = hop - 36;
        const big = await t.cli.exec(["python3", "-c", DF_SENDER, RR.v4, "8080", "1380", "20"]);
        assertEquals(big.code, 0, big.stderr);
        const [sent, ok, emsg, lost, mtu] = big.stdout.trim().split(/\s+/).map(Number);
        assertEquals(lost, 0, `silently lost: ${big.stdout}`);
        assertEquals(ok + emsg, 20, big.stdout);
        assert(emsg >= 1 && sent >= 1, big.stdout);
        assertEquals(mtu, inner, `the sender's kernel learnt the tunnel's inner MTU: ${big.stdout}`);
        // Datagrams that fit the path all arrive (the reply carries 4 more bytes: "web:").
        const fit = await t.cli.exec([
          "python3",
          "-c",
          DF_SENDER,
          RR.v4,
          "8080",
          String(inner - 28 - 4),
          "20",
        ]);
        assertEquals(fit.stdout.trim().split(/\s+/).slice(0, 4).map(Number), [20, 20, 0, 0], fit.stdout);
      });
    },
  );
}

Deno.test(
  "pmtu: a raw (Oakestra-style, unprobed) peer across a 1400-byte hop — oversized datagrams go without DF and arrive fragmented",
  opts,
  async () => {
    await withRoutedPair(1400, { TunnelSecurity: "off" }, async (t) => {
      await eventually(
        async () => (await t.cli.exec([...TOOL, "udp-client", RR.v4, "8080", "hi"])).stdout.trim(),
        (v) => v === "web:hi",
        15000,
      );
      // Never probed (its control is dropped): raw mode, the assumed 1500.
      // (the status's peer rows follow the workers' stats, about once a second)
      const row = await eventually(() => peerMtu(t.nodes[0], `${IP2}:50103`), (r) => r !== undefined, 5000);
      assertEquals([row?.mode, row?.mtuProbed], ["raw", false], JSON.stringify(row));
      // 1400-byte payloads: 1456-byte outer datagrams both ways, wider than the hop; the routers
      // fragment them (the tunnel sends them without DF), none are lost.
      const big = await t.cli.exec(["python3", "-c", DF_SENDER, RR.v4, "8080", "1400", "20", "nodf"]);
      assertEquals(big.code, 0, big.stderr);
      assertEquals(big.stdout.trim().split(/\s+/).slice(0, 4).map(Number), [20, 20, 0, 0], big.stdout);
      // TCP through the raw peer (full-size segments, fragmented at the hop) arrives byte-exact.
      const bulk = await t.cli.exec([...TOOL, "tcp-bulk", RR.v4, "8081", "5"]);
      assertEquals(bulk.code, 0, `tcp-bulk: ${bulk.stdout} ${bulk.stderr}`);
    }, true);
  },
);
