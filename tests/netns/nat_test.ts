/**
 * Nodes behind NAT (issue 12), in namespaces: an "internet" (the underlay bridge, 192.168.77.0/24,
 * existing only in this test's namespaces) with `netmanager control` (reflector on UDP 50104) and a
 * public node; a NAT router (iptables MASQUERADE) with a private LAN (10.99.0.0/24) and a node behind
 * it whose only route out is the router. The hidden node learns its public endpoint from the
 * reflector, the control plane lists announced vs observed, table results carry the observed
 * endpoint, and RR ServiceIP and InstanceIP traffic (TCP and UDP) works both ways.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { World } from "../../src/demo/world.ts";
import { mustRun } from "../../src/sys/command.ts";
import { eventually } from "../helpers/setup.ts";
import { askJob, twoJobs } from "../helpers/two_jobs.ts";
import { natRouter } from "../helpers/nat.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const CTL = "192.168.77.254";
const PUB = "192.168.77.1";
const NAT_PUBLIC = "192.168.77.100";
const A = "app.ns.nata.ns"; // runs on the public node
const B = "app.ns.natb.ns"; // runs on the node behind NAT

interface NodeRow {
  worker_id: string;
  tunnel_observed?: string;
}

Deno.test(
  "nat: a node behind NAT learns its public endpoint; RR and InstanceIP traffic both ways",
  opts,
  async () => {
    const w = new World();
    try {
      await w.control(CTL);
      const pub = await w.clusterNode("n1", PUB, CTL);
      const lan = await natRouter(w, "", "eim", NAT_PUBLIC, "10.99.0", CTL);
      // Announces its private LAN address, as a node behind a home router would.
      const hidden = await w.clusterNode("n2", "10.99.0.2", CTL, undefined, lan);

      // Endpoint discovery: the node sees its public endpoint, the control plane lists it per node.
      const st = await eventually(
        () => hidden.api.getJson("/status") as Promise<{ observedEndpoint?: string }>,
        (s) => s.observedEndpoint !== undefined,
        10000,
      );
      assert(st.observedEndpoint!.startsWith(`${NAT_PUBLIC}:`), JSON.stringify(st));
      const rows = await eventually(
        async () => JSON.parse(await w.ctl(["node", "ls", "--json"])) as NodeRow[],
        (r) => r.filter((n) => n.tunnel_observed !== undefined).length === 2,
        10000,
      );
      const seen = new Map(rows.map((n) => [n.worker_id, n.tunnel_observed]));
      assertEquals(seen.get(`${w.prefix}-n1`), `${PUB}:50103`);
      assertEquals(seen.get(`${w.prefix}-n2`), st.observedEndpoint);
      const table = await w.ctl(["node", "ls"]);
      assert(table.includes("OBSERVED") && table.includes(st.observedEndpoint!), table);

      // Services on both sides; each instance calls the other's RR ServiceIP and InstanceIP.
      const { a, b, iipA, iipB, rrA, rrB } = await twoJobs(w, [pub, A], [hidden, B]);
      const rr = (job: string) => job === A ? rrA : rrB;
      for (const proto of ["tcp-client", "udp-client"]) {
        assertEquals(await eventually(() => askJob(w, a, proto, rr(B)), (v) => v === "b0", 10000), "b0");
        assertEquals(await eventually(() => askJob(w, b, proto, rr(A)), (v) => v === "a0", 10000), "a0");
        assertEquals(await askJob(w, a, proto, iipB), "b0");
        assertEquals(await askJob(w, b, proto, iipA), "a0");
      }
      // The public node dials the hidden one at its observed endpoint (the table result carried it).
      // (peers come from the workers' counters, posted once a second)
      const peers = await eventually(
        () => pub.api.getJson("/status") as Promise<{ peers: Array<{ endpoint: string }> }>,
        (s) => s.peers.some((p) => p.endpoint === st.observedEndpoint),
        5000,
      ).catch(() => pub.api.getJson("/status") as Promise<{ peers: Array<{ endpoint: string }> }>);
      assert(peers.peers.some((p) => p.endpoint === st.observedEndpoint), JSON.stringify(peers.peers));
      // The hidden node reaches the public one through the mapping it punched on the control plane's request.
      type Back = { peers: Array<{ endpoint: string; path?: string }> };
      const back = await eventually(
        () => hidden.api.getJson("/status") as Promise<Back>,
        (s) => s.peers.find((p) => p.endpoint === `${PUB}:50103`)?.path === "punched",
        5000,
      ).catch(() => hidden.api.getJson("/status") as Promise<Back>);
      assertEquals(
        back.peers.find((p) => p.endpoint === `${PUB}:50103`)?.path,
        "punched",
        JSON.stringify(back.peers),
      );

      // The NAT router restarts: its WAN address goes away (conntrack drops every mapping of it) and
      // comes back with a rule mapping to other ports, so the hidden node's public endpoint changes.
      const nat = `${w.prefix}nat`;
      const wan = `${w.prefix}nw`;
      await mustRun("ip", ["-n", nat, "addr", "del", `${NAT_PUBLIC}/24`, "dev", wan]);
      await mustRun("ip", ["netns", "exec", nat, "iptables", "-t", "nat", "-F", "POSTROUTING"]);
      await mustRun(
        "ip",
        ["netns", "exec", nat, "iptables", "-t", "nat", "-A", "POSTROUTING"].concat(
          ["-s", "10.99.0.0/24", "-o", wan, "-p", "udp", "-j", "MASQUERADE", "--to-ports", "40000-40999"],
        ),
      );
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
        "10.99.0.0/24",
        "-o",
        wan,
      ];
      await mustRun("ip", [...masq, "-j", "MASQUERADE"]); // MQTT (TCP) as before
      await mustRun("ip", ["-n", nat, "addr", "add", `${NAT_PUBLIC}/24`, "dev", wan]);
      const t0 = Date.now();
      // The public side asks first: only the hidden node's keepalive or re-announcement can repair it.
      assertEquals(await eventually(() => askJob(w, a, "udp-client", rr(B)), (v) => v === "b0", 30000), "b0");
      const recovered = Date.now() - t0;
      assertEquals(await askJob(w, b, "udp-client", rr(A)), "a0");
      assertEquals(await askJob(w, a, "tcp-client", iipB), "b0");
      const st2 = (await hidden.api.getJson("/status")) as { observedEndpoint?: string };
      console.log(
        `NAT restart: traffic back after ${recovered} ms; endpoint ${st.observedEndpoint} → ${st2.observedEndpoint}`,
      );
      assert(recovered <= 30000, `recovered after ${recovered} ms`);
    } catch (e) {
      await w.diagnose((l) => console.error(l.slice(0, 3000)));
      const ct = await new Deno.Command("ip", {
        args: ["netns", "exec", `${w.prefix}nat`, "cat", "/proc/net/nf_conntrack"],
        stdout: "piped",
      }).output();
      console.error("--- NAT conntrack\n" + new TextDecoder().decode(ct.stdout));
      throw e;
    } finally {
      const left = await w.destroy();
      assertEquals(left, []);
    }
  },
);

Deno.test(
  "nat: both nodes behind endpoint-independent NAT — a direct path after punching, no relay",
  opts,
  async () => {
    const w = new World();
    try {
      await w.control(CTL, { args: ["--relay", "--relay-address", CTL, "--metrics-addr", "127.0.0.1:9465"] });
      const n1 = await w.clusterNode(
        "n1",
        "10.98.0.2",
        CTL,
        undefined,
        await natRouter(w, "1", "eim", "192.168.77.101", "10.98.0", CTL),
      );
      const n2 = await w.clusterNode(
        "n2",
        "10.99.0.2",
        CTL,
        undefined,
        await natRouter(w, "2", "eim", "192.168.77.102", "10.99.0", CTL),
      );
      for (const n of [n1, n2]) {
        await eventually(
          () => n.api.getJson("/status") as Promise<{ observedEndpoint?: string }>,
          (s) => s.observedEndpoint !== undefined,
          10000,
        );
      }
      const { a, b, iipB, rrA, rrB } = await twoJobs(w, [n1, A], [n2, B]);
      const rr = (job: string) => job === A ? rrA : rrB;
      const t0 = Date.now();
      assertEquals(await eventually(() => askJob(w, a, "udp-client", rr(B)), (v) => v === "b0", 15000), "b0");
      console.log(`two NATs: first answer after ${Date.now() - t0} ms`);
      assertEquals(await eventually(() => askJob(w, b, "udp-client", rr(A)), (v) => v === "a0", 10000), "a0");
      assertEquals(await askJob(w, a, "tcp-client", iipB), "b0");
      // Both dial each other's NAT router directly (the control plane could relay, but the punch works): every peer row is
      // at the other router's public address.
      // (peer rows follow the workers' stats, about once a second)
      for (const [n, other] of [[n1, "192.168.77.102:"], [n2, "192.168.77.101:"]] as const) {
        type Row = { endpoint: string; path?: string };
        const rows = () =>
          (n.api.getJson("/status") as Promise<{ peers: Row[] }>).then((st) =>
            st.peers.filter((p) => p.endpoint.startsWith(other))
          );
        const live = await eventually(rows, (l) => l.length >= 1, 5000);
        assert(live.length >= 1 && live.every((p) => p.path !== "relayed"), JSON.stringify(live));
      }
      // … and the relay never allocated anything for them.
      const m = await new Deno.Command("ip", {
        args: ["netns", "exec", `${w.prefix}ctl`, "curl", "-s", "http://127.0.0.1:9465/metrics"],
        stdout: "piped",
      }).output();
      const metrics = new TextDecoder().decode(m.stdout);
      assert(/^netmanager_control_relay_allocations 0$/m.test(metrics), metrics.slice(0, 300));
      assert(
        /^netmanager_control_relay_packets_total 0$/m.test(metrics),
        "no datagram went through the relay",
      );
    } catch (e) {
      await w.diagnose((l) => console.error(l.slice(0, 3000)));
      for (const r of ["nat1", "nat2"]) {
        const ct = await new Deno.Command("ip", {
          args: ["netns", "exec", `${w.prefix}${r}`, "cat", "/proc/net/nf_conntrack"],
          stdout: "piped",
        }).output();
        console.error(`--- ${r} conntrack\n` + new TextDecoder().decode(ct.stdout));
      }
      throw e;
    } finally {
      assertEquals(await w.destroy(), []);
    }
  },
);
