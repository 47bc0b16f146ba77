/**
 * Handshake time between two simulated nodes in `require` (real namespaces, offline certificates):
 * rekeys every second (the daemons' `NETMANAGER_REKEY_SECONDS` test override) give ≥ 10 scheduled
 * handshakes (the rekey-API test below adds 16 asked-for ones, the bench's figure);
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
  endpoint?: string;
  subject?: string;
  rekeys?: number;
  lastHandshakeSecondsAgo?: number;
  handshakeMs?: number;
  handshakePhases?: Record<string, number>;
}

/** Two nodes in `require` mode with offline certificates made in `dir`. */
async function securePair(dir: string): Promise<TestCluster> {
  await offlinePki(dir, 2);
  return await TestCluster.start(
    2,
    TABLE,
    [],
    pkiNodeConfig(dir, () => "require"),
    undefined,
    pkiStateArgs(dir),
  );
}

/** Runs `body` on two `require` nodes made in a fresh directory: their logs on failure, then stopped and removed. */
async function withSecurePair(prefix: string, body: (c: TestCluster) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  let c: TestCluster | undefined;
  try {
    c = await securePair(dir);
    await body(c);
  } catch (e) {
    if (c) console.error(await c.logs());
    throw e;
  } finally {
    await c?.stop();
    await cleanupAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test(
  { name: "secure: handshake time over ≥ 10 scheduled rekeys (median and range printed)", ...opts },
  async () => {
    const WANT = Number(Deno.env.get("NETMANAGER_TEST_HANDSHAKES") ?? 10);
    Deno.env.set("NETMANAGER_REKEY_SECONDS", "1");
    try {
      await withSecurePair("nmhs-", async (cl) => {
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
        assert(ms.length >= Math.min(WANT, 10), `handshakes seen: ${ms.length}`);
        assert(median <= 40, `median handshake ${median} ms`);
      });
    } finally {
      Deno.env.delete("NETMANAGER_REKEY_SECONDS");
    }
  },
);

Deno.test(
  {
    name: "secure: handshakes between running nodes asked for with the rekey API (both sides' times printed)",
    ...opts,
  },
  async () => {
    // What the bench's secure slot measures (scripts/bench_slot.sh): node 1 rekeys its session with
    // node 2 N times through `POST /secure/rekey` (what `netmanager peers rekey` sends), 0.3 s apart
    // (the peer's INIT budget is 4/s); each answer carries the handshake's time on node 1 (HS_INIT
    // sent → keys installed), node 2's status the responder's (HS_INIT received → keys installed).
    const N = Number(Deno.env.get("NETMANAGER_TEST_REKEYS") ?? 16);
    await withSecurePair("nmhsr-", async (cl) => {
      const secure = async (i: number) => {
        const s = await cl.nodes[i].node.api.getJson("/status") as { security: { peers: PeerView[] } };
        return s.security.peers.find((x) => x.subject !== undefined);
      };
      const deadline = Date.now() + 20_000;
      while (!(await secure(0)) || !(await secure(1))) {
        if (Date.now() > deadline) throw new Error("no secure session");
        await new Promise((r) => setTimeout(r, 100));
      }
      // The cold handshakes settled and the workers' late warm-up done (hs_host.ts: ~6 s), as the bench's slot.
      await new Promise((r) => setTimeout(r, 7000));
      const peer = (await secure(0))!.endpoint as string;
      type Recent = { peer: string; role: string; ms?: number; atMs: number };
      const recent = async () =>
        ((await cl.nodes[1].node.api.getJson("/status")) as { security: { recentHandshakes: Recent[] } })
          .security.recentHandshakes;
      const t0 = Date.now();
      const ms: number[] = [];
      const load = Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
      for (let i = 0; i < N; i++) {
        const r = await cl.nodes[0].node.api.post("/secure/rekey", { peer });
        assert(r.status === 200, `rekey: HTTP ${r.status} ${r.body}`);
        const row =
          (r.json as { rekeys: { peer: string; handshakeMs?: number; error?: string }[] }).rekeys[0];
        assert(row.peer === peer && row.handshakeMs !== undefined, `rekey: ${r.body}`);
        ms.push(row.handshakeMs);
        await new Promise((r) => setTimeout(r, 300));
      }
      // The responder's side: node 2's handshakes answered since the first rekey.
      const resp = (await recent()).filter((x) =>
        x.role === "responder" && x.atMs >= t0 - 5 && x.ms !== undefined
      )
        .map((x) => x.ms!);
      // The command as a user runs it: one row per peer with its time.
      const cliOut = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../../main.ts", import.meta.url).pathname,
          "peers",
          "rekey",
          "--socket",
          cl.nodes[0].node.socket,
          "--json",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const rows = JSON.parse(new TextDecoder().decode(cliOut.stdout)) as {
        peer: string;
        handshakeMs?: number;
      }[];
      assert(
        cliOut.code === 0 && rows.length === 1 && rows[0].peer === peer &&
          typeof rows[0].handshakeMs === "number",
        `peers rekey: ${new TextDecoder().decode(cliOut.stdout)} ${new TextDecoder().decode(cliOut.stderr)}`,
      );
      // Errors: a peer with no session (404), a malformed body (400).
      const none = await cl.nodes[0].node.api.post("/secure/rekey", { peer: "10.254.0.1:50103" });
      assert(none.status === 404, `no session: HTTP ${none.status}`);
      const bad = await cl.nodes[0].node.api.post("/secure/rekey", { peer: 5 });
      assert(bad.status === 400, `bad body: HTTP ${bad.status}`);
      const st = (xs: number[]) => {
        const s = [...xs].sort((a, b) => a - b);
        return { n: s.length, medianMs: s[s.length >> 1], minMs: s[0], maxMs: s.at(-1) };
      };
      console.log(
        JSON.stringify({
          loadavg1: load,
          initiator: { ...st(ms), all: ms },
          responder: { ...st(resp), all: resp },
        }),
      );
      assert(ms.length === N, `rekeys: ${ms.length}`);
      assert(resp.length >= N, `responder saw ${resp.length} of ${N}`);
      // A generous bound (a busy machine); the figure for the 5 ms target is the print.
      assert(st(ms).medianMs <= 40, `median running-peer handshake ${st(ms).medianMs} ms`);
    });
  },
);

Deno.test(
  { name: "secure: first handshake of freshly started daemons (median and range printed)", ...opts },
  async () => {
    // Each round restarts daemons of the same two nodes (same keys and certificates) and reads the
    // first handshake each restarted one initiated (HS_INIT sent → keys installed), as the bench's slot
    // does: `pair` rounds start both at once (each one's INIT may reach the other while it still
    // starts); `one` rounds restart one daemon while the other runs (its INIT goes to a ready peer).
    const ROUNDS = Number(Deno.env.get("NETMANAGER_TEST_FIRST_ROUNDS") ?? 6);
    await withSecurePair("nmhs1-", async (cl) => {
      const res: Record<"pair" | "one", { ms: number; phases?: Record<string, number> }[]> = {
        pair: [],
        one: [],
      };
      // Time to a session: the restarted daemon's start (its process spawned) → its status shows the
      // peer secure (50 ms polls): what the per-INIT figure leaves out (lost INITs, a handshake run late).
      const session: Record<"pair" | "one", number[]> = { pair: [], one: [] };
      const load: number[] = [];
      const firstOf = async (i: number, since: number): Promise<PeerView | undefined> => {
        const deadline = Date.now() + 20_000;
        while (Date.now() < deadline) {
          const s = await cl.nodes[i].node.api.getJson("/status") as { security: { peers: PeerView[] } };
          const p = s.security.peers.find((x) =>
            x.subject !== undefined && x.handshakeMs !== undefined &&
            (x.lastHandshakeSecondsAgo ?? 0) <= since
          );
          if (p) return p;
          await new Promise((r) => setTimeout(r, 50));
        }
        return undefined;
      };
      for (let round = 0; round < 2 * ROUNDS; round++) {
        const kind = round % 2 === 0 ? "pair" : "one";
        const which = kind === "pair" ? [0, 1] : [(round >> 1) % 2];
        await Promise.all(which.map((i) => cl.nodes[i].node.signal("SIGTERM")));
        load.push(Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]));
        const t0 = Date.now();
        await Promise.all(which.map(async (i) => {
          await cl.nodes[i].node.startDaemon();
          const r = await cl.nodes[i].node.register(`worker${i + 1}`);
          if (r.status !== 200) throw new Error(`register node ${i + 1}: ${r.status}`);
          const deadline = Date.now() + 20_000;
          while (Date.now() < deadline) {
            const s = await cl.nodes[i].node.api.getJson("/status") as { security: { peers: PeerView[] } };
            if (s.security.peers.some((x) => x.subject !== undefined)) {
              session[kind].push(Date.now() - t0);
              break;
            }
            await new Promise((r) => setTimeout(r, 50));
          }
        }));
        for (const i of which) {
          const p = await firstOf(i, Math.ceil((Date.now() - t0) / 1000) + 1);
          if (p?.handshakeMs !== undefined) res[kind].push({ ms: p.handshakeMs, phases: p.handshakePhases });
        }
      }
      const stat = (xs: { ms: number }[]) => {
        const ms = xs.map((x) => x.ms).sort((a, b) => a - b);
        return { n: ms.length, medianMs: ms[Math.floor(ms.length / 2)], minMs: ms[0], maxMs: ms.at(-1) };
      };
      console.log(JSON.stringify({
        bothStarted: {
          ...stat(res.pair),
          all: res.pair.map((x) => x.ms),
          phases: res.pair.map((x) => x.phases),
        },
        oneRestarted: {
          ...stat(res.one),
          all: res.one.map((x) => x.ms),
          phases: res.one.map((x) => x.phases),
        },
        loadavg1: load,
        sessionAfterStartMs: Object.fromEntries(
          (["pair", "one"] as const).map((k) => {
            const xs = [...session[k]].sort((a, b) => a - b);
            return [k, { medianMs: xs[xs.length >> 1], minMs: xs[0], maxMs: xs.at(-1), all: session[k] }];
          }),
        ),
      }));
      assert(
        res.one.length >= ROUNDS && res.pair.length >= ROUNDS,
        `first handshakes seen: ${JSON.stringify(res)}`,
      );
      // A generous bound (a busy machine: 18–35 ms medians at load 9–12, each run's start-up competing
      // for 2 cores): the figures above are what the 5 ms target reads on a quiet one.
      assert(
        stat(res.one).medianMs <= 100,
        `median first handshake with a running peer ${stat(res.one).medianMs} ms`,
      );
    });
  },
);
