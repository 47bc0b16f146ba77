/**
 * tc mode (issue 16): a long-lived low-rate TCP conversation (like iperf3's control connection: small
 * messages, now and then one larger than a segment, idle gaps) next to a bulk transfer, both moved onto
 * the tc programs on both nodes with two workers per node, keeps every echo byte-exact for over 20 s.
 * With `KTC_PCAP_DIR` set, both nodes' underlay traffic is captured there (diagnosis).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { execIn } from "../helpers/world.ts";
import { carried, tcStatus, withTcPair } from "../helpers/kfast_tc.ts";
import type { SimInstance, SimNode } from "../../src/demo/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

interface KStatus {
  kernelFastPath:
    | { moved: number; decided?: number; pins: number; counters: { tx: { packets: number } } }
    | null;
}
const status = (n: SimNode) => tcStatus<KStatus>(n);

/** Waits until a TCP socket listens on `port` in the instance's namespace (a server just spawned). */
async function listening(inst: SimInstance, port: number): Promise<void> {
  await eventually(
    async () => (await execIn(inst, ["ss", "-ltnH", "sport", "=", `:${port}`])).out,
    (out) => out.includes(`:${port}`),
    10000,
    `a listener on port ${port}`,
    50,
  );
}

Deno.test({
  name:
    "kfast tc mode: a low-rate conversation and a bulk flow both moved stay byte-exact for 20 s (2 workers)",
  ...opts,
}, async () => {
  const procs: Deno.ChildProcess[] = [];
  try {
    await withTcPair(
      { server: [...TOOL, "servers", "80", "web0"], workers: 2 },
      async ({ n1, n2, rr, web, cli }) => {
        const spawn = (args: string[]) => {
          const p = new Deno.Command(args[0], { args: args.slice(1), stdout: "null", stderr: "null" })
            .spawn();
          procs.push(p);
          return p;
        };
        spawn(["nsenter", "-t", String(web.pid), "-n", ...TOOL, "tcp-mirror", "90"]);
        const pcap = Deno.env.get("KTC_PCAP_DIR");
        if (pcap) {
          for (const n of [n1, n2]) {
            spawn([
              "ip",
              "netns",
              "exec",
              n.ns,
              "tcpdump",
              "-i",
              "any",
              "-n",
              "-s",
              "200",
              "-w",
              `${pcap}/${n.ns}.pcap`,
            ]);
          }
        }
        await listening(web, 90); // the mirror

        const t0 = Date.now();
        const talk = execIn(cli, [...TOOL, "tcp-talk", rr, "90", "60", "350", "6000"]);
        const bulk = execIn(cli, [...TOOL, "tcp-sha-send", rr, "82", "120", "10"]);
        await eventually(
          () => status(n2),
          (s) => carried(s) >= 2,
          10000,
          "both moved (server)",
          100,
        );
        await eventually(
          () => status(n1),
          (s) => carried(s) >= 2,
          10000,
          "both moved (client)",
          100,
        );
        console.log(`tc talk: both flows moved on both nodes ${Date.now() - t0} ms after they started`);
        const b = await bulk;
        assertEquals(b.code, 0, `bulk across the move: ${b.out} ${b.err}`);
        // How soon a new flow moves once the kernel carries the service: from its first listing on the
        // TUN to its kernel row (client node).
        type Row = { path?: string; dport: number };
        const rows = async () => ((await n1.api.getJson("/table?flows=1")) as { flows: Row[] }).flows;
        const bulk2 = execIn(cli, [...TOOL, "tcp-bulk", rr, "81", "300"]);
        let seenAt = 0;
        await eventually(
          rows,
          (r) => {
            if (seenAt === 0 && r.some((f) => f.dport === 81)) seenAt = Date.now();
            return r.some((f) => f.dport === 81 && f.path === "kernel");
          },
          10000,
          "new bulk moved (client)",
          10,
        );
        console.log(
          `tc talk: a new flow moved ${Date.now() - seenAt} ms after the TUN listed it (client node)`,
        );
        const b2 = await bulk2;
        assertEquals(b2.code, 0, `second bulk: ${b2.out} ${b2.err}`);
        const t = await talk;
        assertEquals(t.code, 0, `the conversation: ${t.out} ${t.err}`);
        assertEquals(t.out.split("\n").at(-1), "talked 60");

        // iperf3 as the benchmark runs it: its control connection idles while the data moves.
        spawn(["nsenter", "-t", String(web.pid), "-n", "iperf3", "-s", "-p", "5201"]);
        await listening(web, 5201);
        const runs = Number(Deno.env.get("KTC_IPERF_RUNS") ?? "4");
        for (let i = 0; i < runs; i++) {
          for (const extra of [[], ["-P", "4"], ["-u", "-b", "0", "-l", "64", "-t", "2"]]) {
            const r = await execIn(cli, ["iperf3", "-c", rr, "-p", "5201", "-t", "3", ...extra]);
            console.log(
              `iperf3 ${extra.join(" ")}: ${r.code} ${r.out.split("\n").slice(-3).join(" | ")} ${r.err}`,
            );
            assertEquals(r.code, 0, `iperf3 ${extra.join(" ")} run ${i}: ${r.out.slice(-300)} ${r.err}`);
          }
        }
        const s1 = await status(n1);
        assert((s1.kernelFastPath?.counters.tx.packets ?? 0) > 1000, JSON.stringify(s1.kernelFastPath));
      },
    );
  } finally {
    for (const p of procs) {
      try {
        p.kill("SIGTERM");
        await p.status;
      } catch { /* gone */ }
    }
  }
});
