/**
 * Handshake time between two simulated nodes in `require` (real namespaces, offline certificates):
 * rekeys every second (the daemons' `NETMANAGER_REKEY_SECONDS` test override) give ≥ 20 handshakes;
 * each side reports the last one it initiated (`handshakeMs`: its HS_INIT sent → keys installed) and
 * where the time went (`handshakePhases`). Prints median and range; asserts only a generous bound
 * (a busy machine) — the figure for the issue's 5 ms target comes from this print on a quiet one.
 */
import { assert } from "../helpers/assert.ts";
import { cleanupAll, isRoot } from "../helpers/netns.ts";
import { type QueryResult, TestCluster } from "../helpers/cluster.ts";
import { offlinePki, pkiNodeConfig, pkiStateArgs, secureTable } from "../helpers/secure_pki.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const TABLE: QueryResult[] = secureTable(1);

interface PeerView {
  subject?: string;
  rekeys?: number;
  handshakeMs?: number;
  handshakePhases?: Record<string, number>;
}

Deno.test(
  { name: "secure: handshake time over ≥ 20 rekeys (median and range printed)", ...opts },
  async () => {
    const WANT = Number(Deno.env.get("NETMANAGER_TEST_HANDSHAKES") ?? 24);
    Deno.env.set("NETMANAGER_REKEY_SECONDS", "1");
    const dir = await Deno.makeTempDir({ prefix: "nmhs-" });
    let c: TestCluster | undefined;
    try {
      await offlinePki(dir, 2);
      c = await TestCluster.start(
        2,
        TABLE,
        [],
        pkiNodeConfig(dir, () => "require"),
        undefined,
        pkiStateArgs(dir),
      );
      const cl = c;
      const samples: { ms: number; phases?: Record<string, number> }[] = [];
      const seen = ["", ""];
      const deadline = Date.now() + 120_000;
      while (samples.length < WANT && Date.now() < deadline) {
        for (const i of [0, 1]) {
          const s = await cl.nodes[i].node.api.getJson("/status") as { security: { peers: PeerView[] } };
          const p = s.security.peers.find((x) => x.subject !== undefined);
          // A new handshake this side initiated (the other side's rekeys leave its own figure unchanged).
          const key = `${p?.handshakeMs}/${p?.handshakePhases?.cpuMs}`;
          // The first value a side shows may be its first handshake (a peer still starting): skipped.
          if (p?.handshakeMs !== undefined && key !== seen[i]) {
            if (seen[i] !== "") samples.push({ ms: p.handshakeMs, phases: p.handshakePhases });
            seen[i] = key;
          }
        }
        await new Promise((r) => setTimeout(r, 150));
      }
      const ms = samples.map((x) => x.ms).sort((a, b) => a - b);
      const median = ms[Math.floor(ms.length / 2)];
      console.log(JSON.stringify({
        handshakes: ms.length,
        medianMs: median,
        minMs: ms[0],
        maxMs: ms.at(-1),
        all: samples.map((x) => x.ms),
        phases: samples.map((x) => x.phases),
      }));
      assert(ms.length >= 20, `handshakes seen: ${ms.length}`);
      assert(median <= 40, `median handshake ${median} ms`);
    } catch (e) {
      if (c) console.error(await c.logs());
      throw e;
    } finally {
      Deno.env.delete("NETMANAGER_REKEY_SECONDS");
      await c?.stop();
      await cleanupAll();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  { name: "secure: first handshake of freshly started daemon pairs (median and range printed)", ...opts },
  async () => {
    // As the bench's slot: both daemons start (and register) at once; each side's first handshake
    // it initiated (HS_INIT sent → keys installed) is what it shows first. Repeated with the same
    // two nodes (same keys and certificates), each daemon restarted.
    const PAIRS = Number(Deno.env.get("NETMANAGER_TEST_FIRST_PAIRS") ?? 6);
    const dir = await Deno.makeTempDir({ prefix: "nmhs1-" });
    let c: TestCluster | undefined;
    try {
      await offlinePki(dir, 2);
      c = await TestCluster.start(
        2,
        TABLE,
        [],
        pkiNodeConfig(dir, () => "require"),
        undefined,
        pkiStateArgs(dir),
      );
      const cl = c;
      const first: { ms: number; phases?: Record<string, number> }[] = [];
      const load: number[] = [];
      for (let round = 0; round < PAIRS; round++) {
        await Promise.all(cl.nodes.map((n) => n.node.signal("SIGTERM")));
        load.push(Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]));
        await Promise.all(cl.nodes.map(async (n, i) => {
          await n.node.startDaemon();
          const r = await n.node.register(`worker${i + 1}`);
          if (r.status !== 200) throw new Error(`register node ${i + 1}: ${r.status}`);
        }));
        const got: (PeerView | undefined)[] = [undefined, undefined];
        const deadline = Date.now() + 20_000;
        while (got.some((g) => g === undefined) && Date.now() < deadline) {
          for (const i of [0, 1]) {
            if (got[i]) continue;
            const s = await cl.nodes[i].node.api.getJson("/status") as { security: { peers: PeerView[] } };
            const p = s.security.peers.find((x) => x.subject !== undefined && x.handshakeMs !== undefined);
            if (p) got[i] = p;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
        for (const g of got) {
          if (g?.handshakeMs !== undefined) first.push({ ms: g.handshakeMs, phases: g.handshakePhases });
        }
      }
      const ms = first.map((x) => x.ms).sort((a, b) => a - b);
      const median = ms[Math.floor(ms.length / 2)];
      console.log(JSON.stringify({
        firstHandshakes: ms.length,
        medianMs: median,
        minMs: ms[0],
        maxMs: ms.at(-1),
        all: first.map((x) => x.ms),
        phases: first.map((x) => x.phases),
        loadavg1: load,
      }));
      assert(ms.length >= PAIRS, `first handshakes seen: ${ms.length}`);
      assert(median <= 40, `median first handshake ${median} ms`);
    } catch (e) {
      if (c) console.error(await c.logs());
      throw e;
    } finally {
      await c?.stop();
      await cleanupAll();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
