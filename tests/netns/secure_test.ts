/**
 * The secure tunnel between simulated nodes (static tables, offline certificates from
 * `netmanager cert ca|show|sign`): real TCP/UDP through RR ServiceIPs and InstanceIPs (v4 and v6) in
 * `require`, a capture of the underlay that never carries the payload marker, spoofed raw and FAST
 * datagrams and replayed captured datagrams that deliver nothing (and the same spoof delivering in
 * `off`, so the test can fail), a `prefer` cluster with an `off` node (raw to it, sealed between the
 * others), a transfer across several rekeys that arrives byte-exact (and the handshake time),
 * downgrades (handshakes stripped by an attacker in require and prefer; raw datagrams from a secure
 * peer in prefer) and a handshake flood from spoofed strangers.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, isRoot, sh } from "../helpers/netns.ts";
import { nodeSubnet, type QueryResult, TestCluster } from "../helpers/cluster.ts";
import {
  offlinePki,
  pkiNodeConfig,
  pkiStateArgs,
  SECURE_CLI,
  SECURE_WEB,
  secureTable,
} from "../helpers/secure_pki.ts";
import { TOOL } from "../helpers/node.ts";
import { buildIPv4Udp } from "../helpers/packets.ts";
import { World } from "../../src/demo/world.ts";
import { addWebAndClient, threeNodes } from "../helpers/world.ts";
import { eventually, firstClient, retry } from "../helpers/setup.ts";
import { encodeHandshake } from "../../src/secure/secure_wire.ts";
import { MSG_HS_INIT } from "../../src/proxy/wire.ts";
import { createNs, uniqueName } from "../helpers/netns.ts";
import { addMacs, keysForCa } from "../../src/secure/cookie.ts";
import { DOWNGRADE_GRACE_MS } from "../../src/secure/secure_layer.ts";
import { loadCaPublic } from "../../src/secure/files.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const WEB = SECURE_WEB;
const CLI = SECURE_CLI;
const n1 = nodeSubnet(1);
const n2 = nodeSubnet(2);
const MARKER = "SECRET-MARKER-7f3a";
const TABLE: QueryResult[] = secureTable(2);

async function withCluster(
  modes: string[],
  fn: (c: TestCluster, dir: string) => Promise<void>,
  extra: Record<string, unknown> = {},
  beforeRegister?: (i: number, ns: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nmsecure-" });
  await offlinePki(dir, modes.length);
  const c = await TestCluster.start(
    modes.length,
    TABLE,
    [],
    pkiNodeConfig(dir, (i) => modes[i - 1], extra),
    beforeRegister,
    pkiStateArgs(dir),
  );
  try {
    await c.deploy(1, CLI, 0);
    await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    if (modes.length >= 3) await c.deploy(3, WEB, 1, [...TOOL, "servers", "80", "web1"]);
    // The servers listen before any test's first connection (their start is slow under load; a client
    // that came first was refused: a false result in the downgrade tests, which connect once).
    for (const web of c.containers.slice(1)) {
      await eventually(
        async () => (await web.exec(["ss", "-ltnH", "sport", "=", ":80"])).stdout,
        (out) => out.includes(":80"),
        20_000,
      );
    }
    await fn(c, dir);
  } catch (e) {
    console.error(await c.logs());
    throw e;
  } finally {
    await c.stop();
    await cleanupAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const client = firstClient;

/** tcpdump of the tunnel port on the underlay bridge; `stop()` returns the tunnel datagrams' payloads. */
async function capture(c: TestCluster, dir: string): Promise<{ stop: () => Promise<TunnelDatagram[]> }> {
  const file = `${dir}/cap-${crypto.randomUUID()}.pcap`;
  const p = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      c.underlay,
      "tcpdump",
      "-i",
      "br0",
      "-U",
      "--immediate-mode",
      "-w",
      file,
      "-s",
      "0",
      "udp port 50103",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // tcpdump says "listening on" once the capture runs.
  const rd = p.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("listening on")) {
    const r = await rd.read();
    if (r.done) break;
    text += r.value;
  }
  (async () => {
    while (!(await rd.read()).done);
  })();
  return {
    stop: async () => {
      await new Promise((r) => setTimeout(r, 1000));
      p.kill("SIGINT");
      await p.status;
      const bytes = await Deno.readFile(file);
      await Deno.remove(file);
      return parsePcap(bytes);
    },
  };
}

interface TunnelDatagram {
  src: string;
  dst: string;
  payload: Uint8Array;
}

/** UDP payloads of the IPv4 frames of a classic pcap file (Ethernet). */
function parsePcap(b: Uint8Array): TunnelDatagram[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const le = v.getUint32(0, true) === 0xa1b2c3d4 || v.getUint32(0, true) === 0xa1b23c4d;
  const out: TunnelDatagram[] = [];
  for (let o = 24; o + 16 <= b.length;) {
    const incl = v.getUint32(o + 8, le);
    const f = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    if (f.length < 14 + 20 + 8 || f[12] !== 0x08 || f[13] !== 0x00) continue;
    const ihl = (f[14] & 0x0f) * 4;
    if (f[14 + 9] !== 17) continue;
    const ip = (k: number) => `${f[14 + k]}.${f[15 + k]}.${f[16 + k]}.${f[17 + k]}`;
    out.push({ src: ip(12), dst: ip(16), payload: f.subarray(14 + ihl + 8) });
  }
  return out;
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const has = (d: TunnelDatagram[], text: string) => {
  const needle = new TextEncoder().encode(text);
  return d.some((x) => {
    outer: for (let i = 0; i + needle.length <= x.payload.length; i++) {
      for (let k = 0; k < needle.length; k++) if (x.payload[i + k] !== needle[k]) continue outer;
      return true;
    }
    return false;
  });
};

interface Status {
  dataPlane: { drops: Record<string, number> };
  security: {
    mode: string;
    peers: {
      endpoint: string;
      state: string;
      subject?: string;
      rekeys?: number;
      handshakeMs?: number;
      handshakeAttemptMs?: number;
      handshakeAttemptInits?: number;
      drops?: Record<string, number>;
    }[];
  };
}
async function status(c: TestCluster, i: number): Promise<Status> {
  return await c.nodes[i - 1].node.api.getJson("/status") as Status;
}

// Prints each datagram to UDP 7777; ends once stdin has said the sending is over and argv[1] seconds
// pass without one (a send slower than that on a loaded machine is still waited for).
const LISTENER = `
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7777))
quiet, sent = float(sys.argv[1]), False
print("ready", flush=True)
while True:
    r, _, _ = select.select([s] + ([] if sent else [sys.stdin]), [], [], quiet if sent else None)
    if not r:
        break
    if sys.stdin in r:
        sys.stdin.readline()
        sent = True
        continue
    d, a = s.recvfrom(2000)
    print(d.decode(errors="replace"), flush=True)
`;

/** Listens on UDP 7777 inside web0's instance while `act` runs and `quietSeconds` after; returns what arrived. */
async function received(c: TestCluster, act: () => Promise<void>, quietSeconds = 2): Promise<string[]> {
  const web0 = c.containers[1];
  const p = new Deno.Command("nsenter", {
    args: [`--net=/proc/${web0.pid}/ns/net`, "python3", "-u", "-c", LISTENER, String(quietSeconds)],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const rd = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready")) {
    const r = await rd.read();
    if (r.done) break;
    text += r.value;
  }
  try {
    await act();
  } catch (e) {
    p.kill();
    throw e;
  }
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode("sent\n"));
  await w.close();
  for (;;) {
    const r = await rd.read();
    if (r.done) break;
    text += r.value;
  }
  await p.status;
  return text.split("\n").filter((l) => l !== "" && l !== "ready");
}

/** From node 1's namespace (its underlay address): one datagram to node 2's tunnel port. */
async function sendFromNode1(c: TestCluster, payload: Uint8Array): Promise<void> {
  await sh([
    "ip",
    "netns",
    "exec",
    c.nodes[0].node.ns,
    ...TOOL,
    "udp-send",
    "192.168.77.2",
    "50103",
    hex(payload),
  ]);
}

/** Raw and FAST datagrams carrying UDP from node 1's instance to web0 (node 2), as a spoofer would send them. */
function spoofed(text: string): { raw: Uint8Array; fast: Uint8Array } {
  const pkt = buildIPv4Udp({
    src: n1.first4(2),
    dst: n2.first4(2),
    srcPort: 5555,
    dstPort: 7777,
    payload: new TextEncoder().encode(text),
  });
  const fast = new Uint8Array(8 + pkt.length);
  fast[0] = 0x14;
  fast.set(pkt, 8);
  return { raw: pkt, fast };
}

Deno.test({
  name:
    "secure: 3 nodes in require — TCP/UDP via RR ServiceIPs and InstanceIPs v4+v6; the underlay never carries the marker",
  ...opts,
}, async () => {
  await withCluster(["require", "require", "require"], async (c) => {
    const dir = await Deno.makeTempDir({ prefix: "nmcap-" });
    try {
      assertMatch(await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm")), /^web0:warm$/);
      const cap = await capture(c, dir);
      const seen = new Set<string>();
      for (let i = 0; i < 4; i++) {
        seen.add(
          (await retry(() => client(c, "tcp-client", "10.30.0.1", 80, `${MARKER}-t${i}`))).split(":")[0],
        );
        seen.add(
          (await retry(() => client(c, "udp-client", "10.30.0.1", 80, `${MARKER}-u${i}`))).split(":")[0],
        );
        seen.add(
          (await retry(() => client(c, "tcp-client", "fdff:2000::1", 80, `${MARKER}-6${i}`))).split(":")[0],
        );
      }
      assertEquals([...seen].sort(), ["web0", "web1"], "round robin reaches both nodes");
      assertEquals(await client(c, "udp-client", "fdff::3", 80, `${MARKER}-i6`), `web1:${MARKER}-i6`);
      assertEquals(await client(c, "tcp-client", "10.30.0.3", 80, `${MARKER}-i4`), `web1:${MARKER}-i4`);
      const bulk = await c.containers[0].exec([...TOOL, "tcp-bulk", "10.30.0.2", "81", "8"]);
      assertEquals(bulk.code, 0, `bulk: ${bulk.stdout} ${bulk.stderr}`);
      const d = await cap.stop();
      const sealed = d.filter((x) => x.payload[0] === 0x19);
      assert(sealed.length > 100, `SECURE datagrams captured: ${sealed.length} of ${d.length}`);
      assert(!has(d, MARKER), "the marker crossed the underlay in clear");
      const data = d.filter((x) =>
        x.payload[0] >> 4 === 4 || x.payload[0] >> 4 === 6 || x.payload[0] === 0x14 || x.payload[0] === 0x15
      );
      assertEquals(data.length, 0, "no raw, FAST or JUMBO datagram on the wire");
      const s = await status(c, 1);
      const peers = s.security.peers.filter((p) => p.state === "secure").map((p) => p.subject).sort();
      assertEquals(peers, ["node-2", "node-3"], JSON.stringify(s.security.peers));
      const m = await c.nodes[0].node.api.request("GET", "/metrics");
      assertMatch(m.body, /netmanager_peer_secure\{[^}]*endpoint="192\.168\.77\.2:50103"[^}]*\} 1/);
      assertMatch(m.body, /netmanager_peer_cert_expiry_timestamp_seconds\{[^}]*subject="node-3"/);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  });
});

for (const mode of ["off", "require"]) {
  Deno.test({
    name: `secure: spoofed raw and FAST datagrams from node 1's address ${
      mode === "off" ? "are delivered in off (the attack works)" : "deliver nothing in require"
    }; replayed sealed datagrams deliver nothing`,
    ...opts,
  }, async () => {
    await withCluster([mode, mode], async (c) => {
      const dir = await Deno.makeTempDir({ prefix: "nmcap-" });
      try {
        await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
        const got = await received(c, async () => {
          const s = spoofed("spoof-raw"), f = spoofed("spoof-fast");
          await sendFromNode1(c, s.raw);
          await sendFromNode1(c, f.fast);
        });
        if (mode === "off") {
          assertEquals(got.sort(), ["spoof-fast", "spoof-raw"], "without security the spoof gets in");
          return;
        }
        assertEquals(got, [], "spoofed datagrams reached the instance");
        // The workers post their counters about once a second (later on a loaded machine): awaited.
        await eventually(
          async () => (await status(c, 2)).dataPlane.drops,
          (drops) => (drops.secure_required ?? 0) >= 2,
          10000,
          "secure_required drops ≥ 2",
        );

        // Genuine datagrams, captured, then replayed from node 1's address: delivered once only.
        const cap = await capture(c, dir);
        const first = await received(c, async () => {
          for (let i = 0; i < 5; i++) {
            const text = new TextEncoder().encode(`orig-${i}`);
            await c.containers[0].exec([...TOOL, "udp-send", "10.30.0.2", "7777", hex(text)]);
          }
        });
        const d = await cap.stop();
        const fromN1 = d.filter((x) =>
          x.src === "192.168.77.1" && x.dst === "192.168.77.2" && x.payload[0] === 0x19
        );
        assert(first.length >= 1, `the genuine datagrams arrive: ${first}`);
        assert(fromN1.length >= first.length, `captured ${fromN1.length}`);
        const again = await received(c, async () => {
          for (const x of fromN1) await sendFromNode1(c, x.payload);
        });
        assertEquals(again, [], "replayed datagrams were delivered");
        await eventually(
          async () => (await status(c, 2)).dataPlane.drops,
          (after) => (after.secure_replay ?? 0) + (after.secure_wrong_source ?? 0) >= fromN1.length,
          10000,
          `replay / wrong-source drops ≥ ${fromN1.length}`,
        );
        // Per peer too: node 2 names node 1 as the session the replays were refused on.
        const p1 = (await status(c, 2)).security.peers.find((p) => p.endpoint === "192.168.77.1:50103");
        assert((p1?.drops?.secure_replay ?? 0) >= fromN1.length, JSON.stringify(p1));
        const m = await c.nodes[1].node.api.request("GET", "/metrics");
        assertMatch(
          m.body,
          /netmanager_peer_secure_drops_total\{endpoint="192\.168\.77\.1:50103",reason="secure_replay"\} [1-9]/,
        );
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    });
  });
}

Deno.test({
  name:
    "secure: prefer nodes seal between themselves and stay raw with an off node (standing in for Oakestra Go); malformed handshakes only count",
  ...opts,
}, async () => {
  await withCluster(["prefer", "prefer", "off"], async (c) => {
    const dir = await Deno.makeTempDir({ prefix: "nmcap-" });
    try {
      await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
      await retry(() => client(c, "tcp-client", "10.30.0.3", 80, "warm"));
      // Node 1 has a session with node 2 (sealed) and none with node 3, which never answers.
      await retry(async () => {
        const s = await status(c, 1);
        if (!s.security.peers.some((p) => p.state === "secure" && p.subject === "node-2")) {
          throw new Error("no session");
        }
      });
      const cap = await capture(c, dir);
      assertEquals(await client(c, "tcp-client", "10.30.0.2", 80, `${MARKER}-a`), `web0:${MARKER}-a`);
      assertEquals(
        await client(c, "tcp-client", "10.30.0.3", 80, `OPEN-${MARKER}-b`),
        `web1:OPEN-${MARKER}-b`,
      );
      const d = await cap.stop();
      const between = (a: string, b: string) =>
        d.filter((x) => (x.src === a && x.dst === b) || (x.src === b && x.dst === a));
      const n12 = between("192.168.77.1", "192.168.77.2"), n13 = between("192.168.77.1", "192.168.77.3");
      assert(n12.some((x) => x.payload[0] === 0x19), "sealed between the prefer nodes");
      assert(!has(n12, MARKER), "the marker crossed in clear between prefer nodes");
      assert(
        has(n13, `OPEN-${MARKER}-b`),
        `raw with the off node: the marker is visible (interop unchanged): ${
          JSON.stringify(d.map((x) => [x.src, x.dst, x.payload[0], x.payload.length]))
        } of ${d.length}`,
      );
      assert(!n13.some((x) => x.payload[0] === 0x19), "nothing sealed towards the off node");
      const s1 = await status(c, 1);
      assert(
        !s1.security.peers.some((p) => p.endpoint.startsWith("192.168.77.3:")),
        JSON.stringify(s1.security),
      );

      // Malformed handshakes from node 3's address: counted by node 1, nothing else changes.
      for (
        const junk of ["16", "1601000000000001", "17010000" + "00".repeat(80), "18010000" + "ff".repeat(100)]
      ) {
        await sh([
          "ip",
          "netns",
          "exec",
          c.nodes[2].node.ns,
          ...TOOL,
          "udp-send",
          "192.168.77.1",
          "50103",
          junk,
        ]);
      }
      await retry(async () => {
        const s = await c.nodes[0].node.api.getJson("/status") as {
          security: { handshakeDrops: Record<string, number> };
        };
        const n = Object.values(s.security.handshakeDrops).reduce((a, b) => a + b, 0);
        if (n < 4) throw new Error(JSON.stringify(s.security.handshakeDrops));
      });
      assertEquals(await client(c, "tcp-client", "10.30.0.2", 80, "still"), "web0:still");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  });
});

Deno.test({
  name: "secure: a 20 s transfer across rekeys (every 2 s) arrives byte-exact",
  ...opts,
}, async () => {
  // NETMANAGER_REKEY_SECONDS: the daemons' test override of TunnelRekeySeconds (whose floor is 5 s);
  // as many rekeys as a 60 s transfer at 5 s, in a third of the time.
  const REKEY_S = 2;
  Deno.env.set("NETMANAGER_REKEY_SECONDS", String(REKEY_S));
  await withCluster(["require", "require"], async (c) => {
    await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
    const durations = async () =>
      (await Promise.all([status(c, 1), status(c, 2)])).flatMap((x) =>
        x.security.peers.map((p) => p.handshakeMs).filter((v): v is number => v !== undefined)
      );
    // Handshakes on this LAN (namespaces on a bridge) on an idle link: the issue's target is 5 ms (the
    // quiet bench); loose here (a busy machine). Each side's handshakes it initiated over three rekeys,
    // not the first handshake's (that one meets cold isolates). Before the fixes (each handshake
    // datagram posted to a Worker that could sleep 50 ms in poll before seeing it) the median was ~50 ms
    // and above on a quiet machine.
    const idle: number[] = [];
    const seen = ["", ""];
    await retry(
      async () => {
        for (const i of [1, 2]) {
          const p = (await status(c, i)).security.peers[0];
          // A new handshake this side initiated: its time changed (the peer's rekeys leave it as it was).
          // The first value a side shows may be its first handshake (cold, a peer still starting): skipped.
          const key = `${p?.handshakeMs}`;
          if (p?.handshakeMs !== undefined && key !== seen[i - 1]) {
            if (seen[i - 1] !== "") idle.push(p.handshakeMs);
            seen[i - 1] = key;
          }
        }
        const p = (await status(c, 1)).security.peers.find((x) => x.subject === "node-2");
        if ((p?.rekeys ?? 0) < 3) throw new Error("fewer than 3 rekeys yet");
        // Rekeys keep coming every 2 s; on a loaded machine one side may initiate most of the first few.
        if (idle.length < 2) throw new Error(`${idle.length} idle handshake times yet`);
      },
      45_000,
      250,
    );
    const sorted = [...idle].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    console.log(
      `handshake durations on an idle link (ms, as each side measured its own): ${idle.join(", ")}`,
    );
    assert(idle.length >= 2 && median <= 40 && sorted.at(-1)! <= 200, `handshake durations: ${idle}`);
    const seconds = Number(Deno.env.get("NETMANAGER_TEST_SECURE_SECONDS") ?? 20);
    const r = await c.containers[0].exec([...TOOL, "tcp-bulk-for", "10.30.0.2", "81", String(seconds)]);
    assertEquals(r.code, 0, `transfer: ${r.stdout} ${r.stderr}`);
    console.log(r.stdout.trim());
    const s = await status(c, 1);
    const p = s.security.peers.find((x) => x.subject === "node-2");
    assert(
      p && (p.rekeys ?? 0) >= Math.floor(seconds / REKEY_S) - 2,
      `rekeys: ${JSON.stringify(s.security.peers)}`,
    );
    // Under a saturating transfer the workers serve the handshake messages between batches: reported only.
    console.log(`handshake durations after the transfer (ms): ${(await durations()).join(", ")}`);
  }, { TunnelRekeySeconds: 5 }).finally(() => Deno.env.delete("NETMANAGER_REKEY_SECONDS"));
});

Deno.test({
  name:
    "secure: cluster mode in require — certificates from netmanager control; control node rm cuts the node off live sessions within 10 s",
  ...opts,
}, async () => {
  const w = new World();
  Deno.env.set("TunnelSecurity", "require"); // the node daemons read netcfg keys from the environment
  try {
    const { nodes } = await threeNodes(w, { broker: "embedded" }); // side by side
    const iip = await addWebAndClient(w); // WEB and CLI are the standard set-up's services
    const s1 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
    const s2 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
    const cl = await w.instance("client");
    for (const [i, job, n, pid] of [[1, WEB, 0, s1.pid], [2, WEB, 1, s2.pid], [0, CLI, 0, cl.pid]] as const) {
      const r = await nodes[i].api.post("/container/deploy", {
        pid,
        serviceName: job,
        instanceNumber: n,
        portMappings: "",
      });
      assertEquals(r.status, 200, r.body);
    }
    const ask = (host: string) =>
      w.execIn(cl, [...TOOL, "tcp-client", host, "80", "q"]).then((s) => s.split(":")[0]);
    assertEquals(await eventually(() => ask(iip[1]), (v) => v === "web1", 20000), "web1");
    assertEquals(await eventually(() => ask(iip[0]), (v) => v === "web0", 20000), "web0");
    const st = await nodes[0].api.getJson("/status") as Status;
    assertEquals(st.security.mode, "require");
    assert(st.security.peers.some((p) => p.state === "secure"), JSON.stringify(st.security));
    // Remove node 3 from the cluster: its certificate is revoked; node 1 refuses it within 10 s.
    const t0 = Date.now();
    await w.ctl(["node", "rm", `${w.prefix}-n3`]);
    await eventually(
      async () => (await nodes[0].api.getJson("/status") as Status).security.peers,
      (ps) => ps.some((p) => p.endpoint.startsWith("192.168.77.3:") && p.state === "refused"),
      10_000,
    );
    const cut = Date.now() - t0;
    console.log(`node 3 refused by node 1 ${cut} ms after control node rm`);
    assert(cut <= 10_000);
    const after = await ask(iip[1]).catch((e) => `failed: ${String(e).slice(0, 80)}`);
    assert(after !== "web1", `the removed node still answers: ${after}`);
    assertEquals(await ask(iip[0]), "web0", "the other node is untouched");
  } catch (e) {
    await w.diagnose((l) => console.error(l.slice(0, 2000)));
    throw e;
  } finally {
    Deno.env.delete("TunnelSecurity");
    assertEquals(await w.destroy(), []);
  }
});

/** iptables in `ns`: drop arriving handshake datagrams (first UDP payload byte 0x16..0x18) to the tunnel port. */
const STRIP_HS = [
  "INPUT",
  "-p",
  "udp",
  "--dport",
  "50103",
  "-m",
  "u32",
  "--u32",
  "0>>22&0x3C@8>>24=0x16:0x18",
  "-j",
  "DROP",
];
const nsIptables = (ns: string, args: string[]) => sh(["ip", "netns", "exec", ns, "iptables", "-w", ...args]);

for (const mode of ["prefer", "require"]) {
  Deno.test({
    name: `secure: downgrade — an attacker dropping every handshake datagram ${
      mode === "prefer"
        ? "gets plain delivery in prefer (the attack works: why require exists), counted and warned as a downgrade"
        : "never yields plain delivery in require; traffic flows once it stops"
    }`,
    ...opts,
  }, async () => {
    await withCluster(
      [mode, mode],
      async (c) => {
        const dir = await Deno.makeTempDir({ prefix: "nmcap-" });
        try {
          const cap = await capture(c, dir);
          // Handshakes from both sides cross node 2's INPUT (INIT from 1, or RESP/FIN from 1): all stripped.
          const tcp = await client(c, "tcp-client", "10.30.0.2", 80, `${MARKER}-d`).catch((e) =>
            `failed: ${e}`
          );
          if (mode === "require") assert(tcp.startsWith("failed"), `delivered without a session: ${tcp}`);
          const got = await received(c, async () => {
            for (let i = 0; i < 5; i++) {
              const text = new TextEncoder().encode(`${MARKER}-u${i}`);
              await c.containers[0].exec([...TOOL, "udp-send", "10.30.0.2", "7777", hex(text)]);
            }
          });
          if (mode === "require") assertEquals(got, [], "plain delivery while handshakes were stripped");
          const d = await cap.stop();
          const n12 = d.filter((x) => x.src === "192.168.77.1" && x.dst === "192.168.77.2");
          assert(
            n12.some((x) => x.payload[0] >= 0x16 && x.payload[0] <= 0x18),
            "node 1 kept trying handshakes",
          );
          if (mode === "prefer") {
            // Indistinguishable from a peer that never answers (an Oakestra Go node): raw, in clear.
            assertEquals(tcp, `web0:${MARKER}-d`);
            assert(got.length >= 1, "raw UDP delivered");
            assert(has(d, MARKER), "the marker crossed in clear");
            // ... but visible: node 2 announced CAP_SECURE in its HELLOs, so once the grace for a
            // handshake is over, plain data to it counts as a downgrade and is warned (rate-limited).
            await new Promise((r) => setTimeout(r, DOWNGRADE_GRACE_MS + 500));
            // Each worker keeps its own grace (from the first datagram it wanted a session for), and a
            // datagram's lane (so its worker) follows its random source port: late datagrams keep
            // coming until the counters (posted about once a second) show three.
            let late = 0;
            await eventually(
              async () => {
                const text = new TextEncoder().encode(`${MARKER}-late${late++}`);
                await c.containers[0].exec([...TOOL, "udp-send", "10.30.0.2", "7777", hex(text)]);
                return await status(c, 1);
              },
              (s1) => (s1.dataPlane.drops.secure_downgrade ?? 0) >= 3,
              15000,
              "secure_downgrade drops ≥ 3",
              300,
            );
            const warned = (await c.nodes[0].node.log()).split("\n").filter((l) =>
              l.includes("tunnel datagrams refused") && l.includes("secure_downgrade")
            );
            assert(warned.length >= 1, "no downgrade warning");
            return;
          }
          assertEquals(
            n12.filter((x) => x.payload[0] >> 4 === 4 || x.payload[0] >> 4 === 6 || x.payload[0] === 0x14),
            [],
            "node 1 fell back to plain data",
          );
          assert(!has(d, MARKER), "the marker crossed the underlay");
          const rule = await sh([
            "ip",
            "netns",
            "exec",
            c.nodes[1].node.ns,
            "iptables",
            "-w",
            "-nvxL",
            "INPUT",
          ]);
          assertMatch(rule, /^\s*[1-9]\d*\s+\d+\s+DROP/m, "the attacker's rule dropped handshakes");
          const s1 = await eventually(
            () => status(c, 1),
            (s) => (s.dataPlane.drops.secure_no_session ?? 0) >= 1,
            10000,
            "secure_no_session drops ≥ 1",
          );
          assertEquals(s1.security.peers.filter((p) => p.state === "secure"), []);
          // The attacker stops: a session comes up (retry backoff ≤ 60 s; 1, 2, 4, 8 s here) and traffic flows sealed.
          await nsIptables(c.nodes[1].node.ns, ["-D", ...STRIP_HS]);
          assertEquals(
            await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "back"), 30_000),
            "web0:back",
          );
        } finally {
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        }
      },
      {},
      async (i, ns) => {
        if (i === 2) await nsIptables(ns, ["-A", ...STRIP_HS]);
      },
    );
  });
}

Deno.test({
  name:
    "secure: downgrade in prefer — raw datagrams from a peer that has a session are dropped, counted per peer and warned once",
  ...opts,
}, async () => {
  await withCluster(["prefer", "prefer"], async (c) => {
    await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
    await retry(async () => {
      const s = await status(c, 2);
      if (!s.security.peers.some((p) => p.state === "secure" && p.subject === "node-1")) {
        throw new Error("no session");
      }
    });
    const sent0 = Date.now();
    const got = await received(c, async () => {
      for (let i = 0; i < 5; i++) {
        await sendFromNode1(c, spoofed(`down-raw-${i}`).raw);
        await sendFromNode1(c, spoofed(`down-fast-${i}`).fast);
      }
    });
    assertEquals(got, [], "raw datagrams from a secure peer's address were delivered");
    const peer1 = (s: Awaited<ReturnType<typeof status>>) =>
      s.security.peers.find((p) => p.endpoint === "192.168.77.1:50103");
    const s2 = await eventually(
      () => status(c, 2),
      (s) => (peer1(s)?.drops?.secure_plain_from_secure_peer ?? 0) >= 10,
      10000,
      "10 plain datagrams counted on node 1's peer row",
    );
    const counted = Date.now() - sent0;
    const p1 = peer1(s2);
    assertEquals(p1?.drops?.secure_plain_from_secure_peer, 10, JSON.stringify(p1));
    const m = await c.nodes[1].node.api.request("GET", "/metrics");
    assertMatch(
      m.body,
      /netmanager_peer_secure_drops_total\{endpoint="192\.168\.77\.1:50103",reason="secure_plain_from_secure_peer"\} 10/,
    );
    const warned = (await c.nodes[1].node.log()).split("\n").filter((l) =>
      l.includes("tunnel datagrams refused") && l.includes("secure_plain_from_secure_peer")
    );
    // Once per reason per 10 s: one line, unless sending and counting took longer on a loaded machine
    // (at load 12 one run logged two); one per datagram or per post would be many more.
    assert(
      warned.length >= 1 && warned.length <= 1 + Math.floor(counted / 10000),
      `${warned.length} warnings in ${counted} ms: ${warned.join("\n")}`,
    );
    // The genuine peer is untouched.
    assertEquals(await client(c, "tcp-client", "10.30.0.2", 80, "still"), "web0:still");
  });
});

/** Raw-socket flood: `rate` HS_INITs a second for `seconds`, each from a random 192.168.77.10–250 source. */
const FLOODER = `
import socket, struct, random, sys, time
dst, payloads, rate, secs = sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2].split(",")], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
d = socket.inet_aton(dst)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    p = payloads[n % len(payloads)]
    src = socket.inet_aton("192.168.77.%d" % random.randint(10, 250))
    udp = struct.pack("!HHHH", random.randint(1024, 65535), 50103, 8 + len(p), 0) + p
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xffff, 0, 64, 17, 0, src, d)
    s.sendto(ip + udp, (dst, 0))
    n += 1
    ahead = n / rate - (time.monotonic() - t0)
    if ahead > 0: time.sleep(ahead)
print(n, flush=True)
`;

/** CPU seconds (user + system) of a process so far: all threads, or thread `tid` (the main isolate: the pid). */
async function cpuSeconds(pid: number, tid?: number): Promise<number> {
  const path = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`;
  const f = (await Deno.readTextFile(path)).split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

Deno.test({
  name:
    "secure: a handshake flood from many spoofed strangers leaves the nodes' handshakes (rekeys) and traffic working",
  ...opts,
}, async () => {
  await withCluster(["require", "require"], async (c, dir) => {
    await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
    const ns = await attacker(c);
    // Well-formed HS_INITs (a fresh 32-byte ephemeral each) with a valid mac1 (the attacker knows the
    // cluster's CA public key): each one the limits let through costs DH work, the rest a cookie.
    const inits = await validInits(dir, 64);
    const rekeys = async () =>
      (await status(c, 1)).security.peers.find((p) => p.subject === "node-2")?.rekeys ?? 0;
    const pid = c.nodes[1].node.proc!.pid;
    const before = await rekeys();
    const cpu0 = await cpuSeconds(pid), main0 = await cpuSeconds(pid, pid), t0 = performance.now();
    const RATE = Number(Deno.env.get("NETMANAGER_TEST_FLOOD_RATE") ?? 10000), SECONDS = 21;
    const flood = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        FLOODER,
        "192.168.77.2",
        inits,
        String(RATE),
        String(SECONDS),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    let answered = 0, asked = 0;
    const end = Date.now() + SECONDS * 1000;
    while (Date.now() < end) {
      asked++;
      if ((await client(c, "tcp-client", "10.30.0.2", 80, "q").catch(() => "")) === "web0:q") answered++;
      await new Promise((r) => setTimeout(r, 500));
    }
    const out = await flood;
    const cpu = (await cpuSeconds(pid)) - cpu0, wall = (performance.now() - t0) / 1000;
    const main = (await cpuSeconds(pid, pid)) - main0;
    const sent = Number(new TextDecoder().decode(out.stdout).trim());
    const after = await rekeys();
    const s2 = await c.nodes[1].node.api.getJson("/status") as {
      dataPlane: { drops: Record<string, number> };
      security: { handshakeDrops: Record<string, number> };
    };
    console.log(
      `flood: ${sent} HS_INITs in ${SECONDS} s from random sources; node 2 CPU ${
        (cpu / wall * 100).toFixed(0)
      }% of a core over ${wall.toFixed(1)} s (main isolate ${
        (main / wall * 100).toFixed(0)
      }%); rekeys ${before} → ${after}; requests ${answered}/${asked}; ` +
        `node 2 drops ${JSON.stringify(s2.dataPlane.drops)} handshake drops ${
          JSON.stringify(s2.security.handshakeDrops)
        }`,
    );
    // (A loaded machine slows the flooder down: a third of the rate still floods.)
    assert(out.success && sent >= RATE * SECONDS * 0.3, `flooder: ${new TextDecoder().decode(out.stderr)}`);
    const limited = (s2.dataPlane.drops.secure_hs_flood ?? 0) +
      (s2.security.handshakeDrops.hs_rate_limited ?? 0) +
      (s2.security.handshakeDrops.hs_cookie_sent ?? 0) +
      (s2.security.handshakeDrops.hs_pending_full ?? 0);
    assert(limited > sent / 4, "the flood was limited");
    assert(after - before >= 3, `rekeys during the flood: ${before} → ${after}`);
    assertEquals(answered, asked, "requests during the flood");
    // The flood's cost in the main isolate (where handshakes run) stays bounded: hashes, not DH.
    assert(main / wall < 0.5, `main isolate CPU ${(main / wall * 100).toFixed(0)}% of a core`);
  }, { TunnelRekeySeconds: 5 });
});

/** The attacker: a namespace on the underlay bridge (it sends from any address of the subnet). */
async function attacker(c: TestCluster): Promise<string> {
  const ns = await createNs("atk");
  const a = uniqueName("aa"), b = uniqueName("ab");
  await sh(["ip", "link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", c.underlay]);
  await sh(["ip", "-n", ns, "addr", "add", "192.168.77.99/24", "dev", a]);
  await sh(["ip", "-n", ns, "link", "set", a, "up"]);
  await sh(["ip", "-n", c.underlay, "link", "set", b, "master", "br0", "up"]);
  return ns;
}

/** `n` hex HS_INITs, each with a fresh ephemeral and a valid mac1 for the cluster's CA in `dir`. */
async function validInits(dir: string, n: number): Promise<string> {
  const keys = keysForCa((await loadCaPublic(`${dir}/ca/ca.json`)).publicKey);
  return Array.from({ length: n }, (_, i) =>
    hex(addMacs(
      encodeHandshake(MSG_HS_INIT, i, i + 1, 0, crypto.getRandomValues(new Uint8Array(32))),
      keys.mac1,
    ))).join(",");
}

/** Raw-socket flood spoofing the nodes themselves: `rate` HS_INITs a second to each `src>dst` pair, source port 50103. */
const SPOOF_NODES = `
import socket, struct, sys, time
pairs = [p.split(">") for p in sys.argv[1].split(",")]
payloads, rate, secs = [bytes.fromhex(h) for h in sys.argv[2].split(",")], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    for src, dst in pairs:
        p = payloads[n % len(payloads)]
        udp = struct.pack("!HHHH", 50103, 50103, 8 + len(p), 0) + p
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xffff, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        s.sendto(ip + udp, (dst, 0))
        n += 1
    ahead = n / (rate * len(pairs)) - (time.monotonic() - t0)
    if ahead > 0: time.sleep(ahead)
print(n, flush=True)
`;

for (const cookies of [true, false]) {
  Deno.test({
    name: `secure: a flood spoofing the nodes' own addresses ${
      cookies
        ? "— they prove their addresses with cookies and keep rekeying"
        : "starves their rekeys when cookies are off (the attack the cookies stop)"
    }`,
    ...opts,
  }, async () => {
    if (!cookies) Deno.env.set("NETMANAGER_HS_COOKIES", "off"); // the daemons inherit it
    try {
      await withCluster(["require", "require"], async (c, dir) => {
        await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "warm"));
        const ns = await attacker(c);
        const inits = await validInits(dir, 64);
        const rekeys = async () => {
          const s = await Promise.all([status(c, 1), status(c, 2)]);
          return s.map((x) => x.security.peers.find((p) => p.subject)?.rekeys ?? 0);
        };
        const pids = [c.nodes[0].node.proc!.pid, c.nodes[1].node.proc!.pid];
        // Both directions, so whichever node initiates the rekeys meets the flood.
        const RATE = Number(Deno.env.get("NETMANAGER_TEST_SPOOF_RATE") ?? 300), SECONDS = 20;
        const before = await rekeys();
        const main0 = await Promise.all(pids.map((p) => cpuSeconds(p, p))), t0 = performance.now();
        const flood = new Deno.Command("ip", {
          args: [
            "netns",
            "exec",
            ns,
            "python3",
            "-c",
            SPOOF_NODES,
            "192.168.77.1>192.168.77.2,192.168.77.2>192.168.77.1",
            inits,
            String(RATE),
            String(SECONDS),
          ],
          stdout: "piped",
          stderr: "piped",
        }).output();
        // Meanwhile each rekey's time as its initiator saw it: first HS_INIT → keys (cookie rounds and
        // retries included), and the HS_INITs it took.
        const latency: { ms: number; inits: number; node: number }[] = [];
        const last = [before[0], before[1]];
        // What each side shows from before the flood (its handshakes at start) is not a rekey of it.
        const shown = (await Promise.all([status(c, 1), status(c, 2)])).map((x) =>
          x.security.peers.find((p) => p.subject)?.handshakeAttemptMs
        );
        let floodDone = false;
        flood.finally(() => floodDone = true);
        while (!floodDone) {
          const s = await Promise.all([status(c, 1), status(c, 2)]);
          s.forEach((x, i) => {
            const p = x.security.peers.find((p) => p.subject);
            if (p?.rekeys === undefined || p.rekeys === last[i]) return;
            last[i] = p.rekeys;
            // (Each side shows the last one it initiated: a new figure only when it initiated this one.)
            if (p.handshakeAttemptMs === undefined || p.handshakeAttemptMs === shown[i]) return;
            shown[i] = p.handshakeAttemptMs;
            latency.push({ ms: p.handshakeAttemptMs, inits: p.handshakeAttemptInits ?? 1, node: i + 1 });
          });
          await new Promise((r) => setTimeout(r, 200));
        }
        const out = await flood;
        const wall = (performance.now() - t0) / 1000;
        const main = (await Promise.all(pids.map((p) => cpuSeconds(p, p)))).map((v, i) =>
          (v - main0[i]) / wall
        );
        const after = await rekeys();
        const sent = Number(new TextDecoder().decode(out.stdout).trim());
        const [s1, s2] = await Promise.all(
          [0, 1].map((i) =>
            c.nodes[i].node.api.getJson("/status") as Promise<{
              dataPlane: { drops: Record<string, number> };
              security: { handshakeDrops: Record<string, number> };
            }>
          ),
        );
        const done = Math.max(after[0] - before[0], after[1] - before[1]);
        console.log(
          `spoofed-node flood (cookies ${
            cookies ? "on" : "off"
          }): ${sent} HS_INITs in ${SECONDS} s; rekeys ` +
            `${before} → ${after}; rekey attempts (node: ms/INITs) ${
              latency.map((l) => `${l.node}: ${l.ms.toFixed(1)}/${l.inits}`).join(", ")
            }; main isolate CPU ${main.map((m) => (m * 100).toFixed(0) + "%")}; ` +
            [s1, s2].map((x, i) =>
              `node ${i + 1} handshake drops ${JSON.stringify(x.security.handshakeDrops)} data-plane drops ${
                JSON.stringify(x.dataPlane.drops)
              }`
            ).join("; "),
        );
        assert(out.success && sent >= RATE * 2 * SECONDS * 0.5, new TextDecoder().decode(out.stderr));
        assert(main.every((m) => m < 0.5), `main isolate CPU ${main}`);
        if (cookies) {
          assert((s2.security.handshakeDrops.hs_cookie_sent ?? 0) > sent / 8, "cookies answered the flood");
          assert(done >= 2, `rekeys during the flood: ${before} → ${after}`);
          // The flood alone (300 INITs/s per node) stays under the handshake forwarding budget (500/s);
          // the cookie replies each node sends the other for the INITs spoofed in its name are dropped
          // before that budget (they answer no handshake of the receiver's), so none of the nodes' own
          // handshake datagrams is lost to it — before, they doubled the load and 1 in 6 was lost.
          for (const [i, x] of [s1, s2].entries()) {
            assertEquals(x.dataPlane.drops.secure_hs_flood, undefined, `node ${i + 1}: budget drops`);
          }
          // A rekey under the flood costs a cookie round (its first) or nothing more (mac2 from the
          // cookie kept), not a retransmission: most take one HS_INIT and well under a second.
          const ms = latency.map((l) => l.ms).sort((a, b) => a - b);
          assert(
            ms.length >= 2 && ms[Math.floor(ms.length / 2)] < 1000,
            `rekey attempts ${JSON.stringify(latency)}`,
          );
        } else {
          assertEquals(s2.security.handshakeDrops.hs_cookie_sent, undefined);
          assert(done <= 1, `rekeys went on without cookies: ${before} → ${after}`);
        }
      }, { TunnelRekeySeconds: 5 });
    } finally {
      Deno.env.delete("NETMANAGER_HS_COOKIES");
    }
  });
}
