/**
 * Relays (issue 12), in namespaces: an "internet" (the underlay bridge 192.168.77.0/24, only in this
 * test's namespaces) with `netmanager control --relay` (reflector and relay at CTL), and two nodes
 * each behind its own NAT router whose only route out is that router:
 *
 * - both routers symmetric (`MASQUERADE --random-fully`): punching cannot work (each side's mapping
 *   towards the other differs from the one the reflector saw), so within seconds the pair is relayed;
 *   RR ServiceIP and InstanceIP traffic, TCP and UDP, works both ways; `status` shows `path:
 *   relayed` with `via` and the peer's `endpoint`, the metrics too; a plaintext marker in the traffic
 *   crosses the relay readable (secure mode off) — what the next test shows the relay cannot see;
 *   a router restart (mappings lost, new ports) is followed through the relay;
 * - secure mode (`require`), one router dropping all inbound UDP except from CTL, the other
 *   endpoint-independent: relayed, the relay's packet filter counts no plaintext marker although the
 *   same exchange carries it; when the router stops dropping, a later punch succeeds and the pair
 *   goes direct (relay freed), traffic still working.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { type SimNode, World } from "../../src/demo/world.ts";
import { mustRun, runTool } from "../../src/sys/command.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { askJob, twoJobs } from "../helpers/two_jobs.ts";
import { deploy } from "../helpers/world.ts";
import { type NatMode, natRouter } from "../helpers/nat.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const CTL = "192.168.77.254";
const A = "app.ns.rela.ns"; // runs on node 1
const B = "app.ns.relb.ns"; // runs on node 2
const MARKER = "RELAYMARKER7Q";

const ask = askJob;

interface PeerRow {
  endpoint: string;
  node?: string;
  path?: string;
  via?: string;
  mtu?: number;
}

async function peersOf(n: SimNode): Promise<PeerRow[]> {
  return ((await n.api.getJson("/status")) as { peers: PeerRow[] }).peers;
}

/** Packets the control plane's host (or namespace `ns`) received carrying MARKER (an iptables string-match counter). */
async function markerCount(w: World, ns = `${w.prefix}ctl`): Promise<number> {
  const out = await runTool("ip", [
    "netns",
    "exec",
    ns,
    "iptables",
    "-L",
    "INPUT",
    "-v",
    "-x",
    "-n",
  ]);
  const line = out.stdout.split("\n").find((l) => l.includes(MARKER));
  return line ? Number(line.trim().split(/\s+/)[0]) : NaN;
}

/** One sample of the control plane's metrics (`name` without labels), NaN when absent. */
async function ctlMetric(w: World, name: string): Promise<number> {
  const out = await runTool("ip", [
    "netns",
    "exec",
    `${w.prefix}ctl`,
    "curl",
    "-s",
    "http://127.0.0.1:9465/metrics",
  ]);
  const line = out.stdout.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

/**
 * Both nodes behind routers, control with the relay (`ownRelay`), services A on n1 and B on n2 with
 * instances; `beforeNodes` runs once the control plane is up (e.g. starts relay nodes).
 */
async function setup(w: World, m1: NatMode, m2: NatMode, ownRelay = true, beforeNodes?: () => Promise<void>) {
  const relayArgs = ownRelay ? ["--relay", "--relay-address", CTL] : [];
  await w.control(CTL, { args: [...relayArgs, "--metrics-addr", "127.0.0.1:9465"] });
  await beforeNodes?.();
  await mustRun("ip", [
    "netns",
    "exec",
    `${w.prefix}ctl`,
    "iptables",
    "-A",
    "INPUT",
    "-p",
    "udp",
    "-m",
    "string",
    "--string",
    MARKER,
    "--algo",
    "bm",
  ]);
  const n1 = await w.clusterNode(
    "n1",
    "10.98.0.2",
    CTL,
    undefined,
    await natRouter(w, "1", m1, "192.168.77.101", "10.98.0", CTL),
  );
  const n2 = await w.clusterNode(
    "n2",
    "10.99.0.2",
    CTL,
    undefined,
    await natRouter(w, "2", m2, "192.168.77.102", "10.99.0", CTL),
  );
  for (const n of [n1, n2]) {
    await eventually(
      () => n.api.getJson("/status") as Promise<{ observedEndpoint?: string }>,
      (s) => s.observedEndpoint !== undefined,
      10000,
    );
  }
  return { n1, n2, ...(await twoJobs(w, [n1, A], [n2, B])) };
}

/** Counts UDP datagrams carrying MARKER that reach namespace `ns` (read by {@link markerCount}). */
async function countMarker(ns: string): Promise<void> {
  await mustRun("ip", [
    ...["netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "udp"],
    ...["-m", "string", "--string", MARKER, "--algo", "bm"],
  ]);
}

interface RelayHostStatus {
  pairs: number;
  packets: number;
  bytes: number;
  restarts: number;
}

async function relayHostOf(n: SimNode): Promise<RelayHostStatus> {
  return ((await n.api.getJson("/status")) as { relayHost: RelayHostStatus }).relayHost;
}

async function dumpOnFailure(w: World): Promise<void> {
  await w.diagnose((l) => console.error(l.slice(0, 3000)));
  for (const r of ["nat1", "nat2"]) {
    const ct = await runTool("ip", ["netns", "exec", `${w.prefix}${r}`, "cat", "/proc/net/nf_conntrack"]);
    console.error(`--- ${r} conntrack\n` + ct.stdout);
  }
}

Deno.test(
  "relay: both nodes behind symmetric NAT — relayed within seconds, traffic both ways, status and metrics show it, a router restart is followed",
  opts,
  async () => {
    const w = new World();
    Deno.env.set("TunnelSecurity", "off"); // plaintext, to show what the relay could read (next test: sealed)
    try {
      const s = await setup(w, "symmetric", "symmetric");
      const t0 = Date.now();
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.rrB), (v) => v === "b0", 20000), "b0");
      const first = Date.now() - t0;
      console.log(`symmetric NATs: first answer (through the relay) after ${first} ms`);
      for (const proto of ["udp-client", "tcp-client"]) {
        assertEquals(await eventually(() => ask(w, s.b, proto, s.rrA), (v) => v === "a0", 10000), "a0");
        assertEquals(await eventually(() => ask(w, s.a, proto, s.rrB), (v) => v === "b0", 10000), "b0");
        assertEquals(await ask(w, s.a, proto, s.iipB), "b0");
        assertEquals(await ask(w, s.b, proto, s.iipA), "a0");
      }
      // Each sees the other relayed: via the relay host, endpoint the other router's public address.
      for (const [n, other] of [[s.n1, "192.168.77.102:"], [s.n2, "192.168.77.101:"]] as const) {
        const rows = await eventually(() => peersOf(n), (l) => l.some((p) => p.path === "relayed"), 5000);
        const r = rows.find((p) => p.path === "relayed")!;
        assert(r.via?.startsWith(`${CTL}:`) && r.endpoint.startsWith(other), JSON.stringify(rows));
        assert(typeof r.mtu === "number", JSON.stringify(r));
        assert(!rows.some((p) => p.endpoint.startsWith(other) && p.path !== "relayed"), JSON.stringify(rows));
      }
      const metrics = (await s.n1.api.request("GET", "/metrics")).body;
      assert(
        /netmanager_peer_path\{[^}]*path="relayed"[^}]*via="192\.168\.77\.254:/.test(metrics),
        metrics.slice(0, 400),
      );
      // Secure mode is off: the relay forwards readable datagrams (what secure mode prevents, below).
      const before = await markerCount(w);
      assertEquals(await ask(w, s.a, "tcp-client", s.iipB, MARKER), "b0");
      assert((await markerCount(w)) > before, "the marker crossed the relay in plaintext");

      // Router 1 restarts: WAN address gone (conntrack drops its mappings), back mapping to other ports.
      const nat = `${w.prefix}nat1`;
      const wan = `${w.prefix}nw1`;
      await mustRun("ip", ["-n", nat, "addr", "del", "192.168.77.101/24", "dev", wan]);
      await mustRun("ip", ["netns", "exec", nat, "iptables", "-t", "nat", "-F", "POSTROUTING"]);
      const masq = [
        "netns",
        "exec",
        nat,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.98.0.0/24",
        "-o",
        wan,
      ];
      await mustRun("ip", [
        ...masq,
        "-p",
        "udp",
        "-j",
        "MASQUERADE",
        "--to-ports",
        "40000-40999",
        "--random-fully",
      ]);
      await mustRun("ip", [...masq, "-j", "MASQUERADE"]);
      await mustRun("ip", ["-n", nat, "addr", "add", "192.168.77.101/24", "dev", wan]);
      const t1 = Date.now();
      assertEquals(await eventually(() => ask(w, s.b, "udp-client", s.iipA), (v) => v === "a0", 40000), "a0");
      const back = Date.now() - t1;
      assertEquals(await ask(w, s.a, "tcp-client", s.rrB), "b0");
      const relocks = await ctlMetric(w, "netmanager_control_relay_relocks_total");
      const packets = await ctlMetric(w, "netmanager_control_relay_packets_total");
      console.log(
        `relayed pair: traffic back ${back} ms after router 1 restarted (relay: ${packets} datagrams, ${relocks} re-locks)`,
      );
      assert(back <= 40000);
      assert(relocks >= 1, "router 1's new port was followed by moving its side's lock");
      assertEquals(await ctlMetric(w, "netmanager_control_relay_allocations"), 1);
    } catch (e) {
      await dumpOnFailure(w);
      throw e;
    } finally {
      Deno.env.delete("TunnelSecurity");
      assertEquals(await w.destroy(), []);
    }
  },
);

Deno.test(
  "relay: secure mode stays end to end (no plaintext marker at the relay); UDP-blocking router relayed, direct once it stops blocking",
  opts,
  async () => {
    const w = new World();
    Deno.env.set("TunnelSecurity", "require"); // the node daemons read netcfg keys from the environment
    try {
      const s = await setup(w, "block", "eim");
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.rrB), (v) => v === "b0", 25000), "b0");
      assertEquals(await eventually(() => ask(w, s.b, "tcp-client", s.rrA), (v) => v === "a0", 10000), "a0");
      const rows = await eventually(() => peersOf(s.n1), (l) => l.some((p) => p.path === "relayed"), 5000);
      assert(rows.some((p) => p.path === "relayed" && p.via?.startsWith(`${CTL}:`)), JSON.stringify(rows));
      const st = (await s.n1.api.getJson("/status")) as { security: { peers: Array<{ state: string }> } };
      assert(st.security.peers.some((p) => p.state === "secure"), JSON.stringify(st.security));
      // The marker travels both ways (request and answer) through the relay, sealed.
      const before = await markerCount(w);
      for (const proto of ["tcp-client", "udp-client"]) {
        assertEquals(await ask(w, s.a, proto, s.iipB, MARKER), "b0");
        assertEquals(await ask(w, s.b, proto, s.iipA, MARKER), "a0");
      }
      assertEquals(await markerCount(w), before, "the relay saw the plaintext marker");

      // Router 1 stops dropping UDP: the background punch succeeds, the pair goes direct.
      await mustRun("ip", ["netns", "exec", `${w.prefix}nat1`, "iptables", "-F", "FORWARD"]);
      const t0 = Date.now();
      await eventually(
        () => peersOf(s.n1),
        (l) =>
          l.some((p) => p.endpoint.startsWith("192.168.77.102:")) && !l.some((p) => p.path === "relayed"),
        40000,
      );
      console.log(`direct again ${Date.now() - t0} ms after the router stopped blocking`);
      const direct = await peersOf(s.n1);
      console.log(JSON.stringify(direct.map((p) => [p.endpoint, p.path, p.via])));
      assert(
        direct.some((p) => p.endpoint.startsWith("192.168.77.102:") && p.via === undefined),
        JSON.stringify(direct),
      );
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.rrB), (v) => v === "b0", 10000), "b0");
      assertEquals(await ask(w, s.b, "tcp-client", s.iipA), "a0");
      assertEquals(await ctlMetric(w, "netmanager_control_relay_allocations"), 0, "the relay was freed");
    } catch (e) {
      await dumpOnFailure(w);
      throw e;
    } finally {
      Deno.env.delete("TunnelSecurity");
      assertEquals(await w.destroy(), []);
    }
  },
);

Deno.test(
  "relay: roaming — a NAT router gets a new public address; a directly reached peer and a relayed one both follow within 15 s",
  opts,
  async () => {
    const w = new World();
    try {
      // n1 behind an endpoint-independent NAT, n2 behind a symmetric one (relayed), n3 public (direct).
      const s = await setup(w, "eim", "symmetric");
      const n3 = await w.clusterNode("n3", "192.168.77.3", CTL);
      const C = "app.ns.relc.ns";
      await w.ctl(["service", "add", C]);
      await w.ctl(["instance", "add", C, "0"]);
      const c = await w.instance("c0", [...TOOL, "servers", "80", "c0"]);
      await deploy(n3, C, 0, c.pid);
      assertEquals(await eventually(() => ask(w, s.b, "udp-client", s.iipA), (v) => v === "a0", 25000), "a0");
      assertEquals(await eventually(() => ask(w, c, "udp-client", s.iipA), (v) => v === "a0", 15000), "a0");
      const relayedRows = await eventually(
        () => peersOf(s.n2),
        (l) => l.some((p) => p.path === "relayed"),
        5000,
      );
      assert(relayedRows.some((p) => p.endpoint.startsWith("192.168.77.101:")), JSON.stringify(relayedRows));

      // Router 1 moves to another public address (its mappings go with the old one).
      const nat = `${w.prefix}nat1`;
      const wan = `${w.prefix}nw1`;
      // (delete first: deleting a primary address also deletes the secondaries of its subnet)
      await mustRun("ip", ["-n", nat, "addr", "del", "192.168.77.101/24", "dev", wan]);
      await mustRun("ip", ["-n", nat, "addr", "add", "192.168.77.105/24", "dev", wan]);
      const t0 = Date.now();
      const [relayed, direct] = await Promise.all([
        eventually(() => ask(w, s.b, "udp-client", s.iipA), (v) => v === "a0", 60000).then(() =>
          Date.now() - t0
        ),
        eventually(() => ask(w, c, "udp-client", s.iipA), (v) => v === "a0", 60000).then(() =>
          Date.now() - t0
        ),
      ]);
      console.log(
        `new public address: relayed peer back after ${relayed} ms, direct peer after ${direct} ms`,
      );
      const st = (await s.n1.api.getJson("/status")) as { observedEndpoint?: string };
      assert(st.observedEndpoint?.startsWith("192.168.77.105:"), JSON.stringify(st.observedEndpoint));
      // The direct peer may first get its answers through the relay (n1's old address went silent) and
      // switch to the new address a moment later: following means its row names the new address.
      const rows = await eventually(
        () => peersOf(n3),
        (l) => l.some((p) => p.endpoint.startsWith("192.168.77.105:")),
        Math.max(1000, 15000 - (Date.now() - t0)),
      );
      const followed = Date.now() - t0;
      assert(rows.some((p) => p.endpoint.startsWith("192.168.77.105:")), JSON.stringify(rows));
      assertEquals(await ask(w, s.a, "tcp-client", s.iipB), "b0");
      // Well under the reflector's 25 s interval (12–26 s before): the peer that finds n1 silent has
      // the control plane make n1 re-check its observed endpoint at once (relay_watch `silent`).
      assert(
        relayed <= 15000 && direct <= 15000 && followed <= 15000,
        `relayed ${relayed} ms, direct ${direct} ms, new address in n3's peers after ${followed} ms`,
      );
    } catch (e) {
      await dumpOnFailure(w);
      throw e;
    } finally {
      assertEquals(await w.destroy(), []);
    }
  },
);

Deno.test(
  "relay: ordinary public nodes relay (control plane without --relay) — sealed, bytes counted there; its forwarding Worker killed: restarted, traffic resumes; it leaves: the pair moves to the other relay node",
  opts,
  async () => {
    const w = new World();
    Deno.env.set("TunnelSecurity", "require");
    Deno.env.set("NETMANAGER_TEST_RELAY_CRASH", "1"); // SIGUSR2 makes a relay's forwarding Worker throw
    const relays: SimNode[] = [];
    try {
      const s = await setup(w, "symmetric", "symmetric", false, async () => {
        Deno.env.set("RelayCandidate", "true"); // netcfg keys from the environment
        Deno.env.set("RelayPorts", "45000-45099");
        try {
          relays.push(
            ...await Promise.all([3, 4].map((i) => w.clusterNode(`r${i - 2}`, `192.168.77.${i}`, CTL))),
          );
        } finally {
          Deno.env.delete("RelayCandidate");
          Deno.env.delete("RelayPorts");
        }
        for (const r of relays) {
          await countMarker(r.ns);
          await eventually(
            () => r.api.getJson("/status") as Promise<{ observedEndpoint?: string }>,
            (st) => st.observedEndpoint !== undefined,
            10000,
          );
          assert((await relayHostOf(r)) !== null, "a RelayCandidate node runs a relay");
        }
      });
      const t0 = Date.now();
      const decided = eventually(
        () => peersOf(s.n1),
        (l) => l.some((p) => p.path === "relayed"),
        25000,
        "relayed",
        50,
      )
        .then(() => Date.now() - t0);
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.rrB), (v) => v === "b0", 25000), "b0");
      console.log(
        `symmetric NATs, relay node: relayed after ${await decided} ms (from the first request), first answer after ${
          Date.now() - t0
        } ms`,
      );
      assertEquals(await eventually(() => ask(w, s.b, "tcp-client", s.rrA), (v) => v === "a0", 10000), "a0");
      const relayIp = async () => {
        const rows = await eventually(() => peersOf(s.n1), (l) => l.some((p) => p.path === "relayed"), 5000);
        const [ip, port] = rows.find((p) => p.path === "relayed")!.via!.split(":");
        assert(Number(port) >= 45000 && Number(port) <= 45099, `relay port ${port} outside RelayPorts`);
        return ip;
      };
      const ip1 = await relayIp();
      const used = relays.find((r) => ip1 === (r.name === "r1" ? "192.168.77.3" : "192.168.77.4"));
      assert(used, `relayed through ${ip1}, not a relay node`);
      const other = relays.find((r) => r !== used)!;
      // The relay node forwards the pair's datagrams, sealed: the marker both ways never shows there.
      const before = await relayHostOf(used);
      for (const proto of ["tcp-client", "udp-client"]) {
        assertEquals(await ask(w, s.a, proto, s.iipB, MARKER), "b0");
        assertEquals(await ask(w, s.b, proto, s.iipA, MARKER), "a0");
      }
      const after = await eventually(() => relayHostOf(used), (h) => h.bytes > before.bytes, 3000);
      assertEquals(after.pairs, 1, JSON.stringify(after));
      assertEquals(await markerCount(w, used.ns), 0, "the relay node saw the plaintext marker");
      console.log(`relay node ${used.name}: ${after.packets} datagrams, ${after.bytes} bytes relayed`);
      const metrics = (await runTool("ip", [
        ...["netns", "exec", `${w.prefix}ctl`, "curl", "-s", "http://127.0.0.1:9465/metrics"],
      ])).stdout;
      assert(
        new RegExp(`netmanager_control_relay_node_pairs\\{[^}]*worker="${w.prefix}-${used.name}"[^}]*\\} 1`)
          .test(metrics),
        metrics.split("\n").filter((l) => l.includes("relay")).join("\n"),
      );
      assert(Number.isNaN(await ctlMetric(w, "netmanager_control_relay_allocations")), "no relay of its own");

      // Its forwarding Worker fails: a new one takes over the allocation (same ports, same locks).
      Deno.kill(used.daemon.pid, "SIGUSR2");
      await eventually(() => relayHostOf(used), (h) => h.restarts >= 1, 5000);
      const t1 = Date.now();
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.iipB), (v) => v === "b0", 10000), "b0");
      assertEquals(await ask(w, s.b, "tcp-client", s.iipA), "a0");
      const resumed = await eventually(() => relayHostOf(used), (h) => h.bytes > after.bytes, 3000);
      console.log(
        `relay Worker restarted: traffic back after ${Date.now() - t1} ms (${resumed.bytes} bytes)`,
      );
      assertEquals(await relayIp(), ip1, "still the same relay node");

      // The relay node leaves: the pair moves to the other one.
      await w.stopDaemon(used);
      const t2 = Date.now();
      const ip2 = await eventually(relayIp, (ip) => ip !== ip1, 15000);
      assertEquals(ip2, other.name === "r1" ? "192.168.77.3" : "192.168.77.4");
      assertEquals(await eventually(() => ask(w, s.a, "udp-client", s.rrB), (v) => v === "b0", 15000), "b0");
      assertEquals(await eventually(() => ask(w, s.b, "tcp-client", s.iipA), (v) => v === "a0", 10000), "a0");
      console.log(`relay node left: pair moved to ${other.name}, traffic back after ${Date.now() - t2} ms`);
      const moved = await eventually(() => relayHostOf(other), (h) => h.bytes > 0, 3000);
      assertEquals(moved.pairs, 1, JSON.stringify(moved));
      assertEquals(await markerCount(w, other.ns), 0, "the second relay node saw the plaintext marker");
    } catch (e) {
      await dumpOnFailure(w);
      throw e;
    } finally {
      Deno.env.delete("TunnelSecurity");
      Deno.env.delete("NETMANAGER_TEST_RELAY_CRASH");
      assertEquals(await w.destroy(), []);
    }
  },
);
