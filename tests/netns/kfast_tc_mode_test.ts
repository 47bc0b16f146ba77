/**
 * The kernel fast path in tc mode (`KernelFastPath: "tc"`, issue 16 design (a)) between two netmanager
 * nodes in cluster mode: a transfer that starts on the TUN (first packets decided by the workers) moves
 * onto the tc programs on both nodes and arrives byte-exact (sha256) with the kernel's counters carrying
 * most of it; the wire then shows Oakestra raw IP-in-UDP (inner IPv4 right after the UDP header, from
 * the client's InstanceIP); `table show --flows` and /metrics read the kernel's counters; a conversation
 * moved onto the kernel survives SIGKILL of the client node's daemon; the restarted daemon adopts the
 * programs and their flows; an undeploy cuts the flows to the instance at once; `clean` detaches the
 * programs (a second clean finds none).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { execIn, WEB } from "../helpers/world.ts";
import { carried, tcStatus, withTcPair } from "../helpers/kfast_tc.ts";
import type { SimNode } from "../../src/demo/world.ts";
import { selfCommand } from "../../src/sys/process.ts";
import { ApiClient } from "../../src/api/client.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT_CONFIG = new URL("../../config/", import.meta.url).pathname;

interface KStatus {
  kernelFastPath: {
    peers: string[];
    services: string[];
    device: string;
    counters: { tx: { packets: number; bytes: number }; rx: { packets: number; bytes: number } };
    moved: number;
    pins: number;
    decided?: number;
  } | null;
  dataPlane: { udpTxBytes: number };
}

const status = (n: SimNode) => tcStatus<KStatus>(n);

async function inNode(n: SimNode, argv: string[]): Promise<{ code: number; out: string }> {
  const c = await new Deno.Command("ip", {
    args: ["netns", "exec", n.ns, ...argv],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const d = new TextDecoder();
  return { code: c.code, out: d.decode(c.stdout) + d.decode(c.stderr) };
}

function clean(n: SimNode): Promise<{ code: number; out: string }> {
  return inNode(n, [
    ...selfCommand(),
    "clean",
    "--cfg",
    `${n.dir}/netcfg.json`,
    "--tuncfg",
    `${ROOT_CONFIG}tuncfg.json`,
    "--state-dir",
    `${n.dir}/state`,
    "--socket",
    n.socket,
    "--json",
  ]);
}

Deno.test({
  name:
    "kfast tc mode: TUN flows move onto the tc programs both ways (byte-exact), raw IP-in-UDP on the wire, " +
    "kernel counters in --flows and /metrics, SIGKILL keeps flows, restart adopts, undeploy cuts, clean detaches",
  ...opts,
}, async () => {
  await withTcPair(
    { server: [...TOOL, "servers", "80", "web0"] },
    async ({ w, n1, n2, rr, cliIip, cli }) => {
      const st = await status(n1);
      assert(st.kernelFastPath?.device.startsWith("tc:"), JSON.stringify(st.kernelFastPath));

      // 1. A 120 MiB transfer goes onto the kernel on both nodes (moved from the TUN, or decided there).
      const bulk = execIn(cli, [...TOOL, "tcp-sha-send", rr, "82", "120", "10"]);
      await eventually(
        () => status(n1),
        (s) => carried(s) >= 1,
        10000,
        "client side moved",
        100,
      );
      await eventually(
        () => status(n2),
        (s) => carried(s) >= 1,
        10000,
        "server side moved",
        100,
      );
      const tx0 = (await status(n1)).kernelFastPath!.counters.tx.bytes;

      // The wire while it runs: raw IP-in-UDP (no FAST header) from node 1, the client's InstanceIP inside.
      const cap = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          n2.ns,
          "tcpdump",
          "-i",
          "any",
          "-c",
          "1",
          "-n",
          "-x",
          "udp dst port 50103 and src host 192.168.77.1 and udp[8] = 0x45",
        ],
        stdout: "piped",
        stderr: "null",
      }).spawn();
      const timer = setTimeout(() => cap.kill("SIGTERM"), 5000);
      const hex = new TextDecoder().decode((await cap.output()).stdout).split("\n")
        .filter((l) => /^\s+0x[0-9a-f]+:/.test(l)).map((l) => l.split(":")[1]).join("").replace(/\s+/g, "");
      clearTimeout(timer);
      const ipHex = cliIip.split(".").map((x) => Number(x).toString(16).padStart(2, "0")).join("");
      assertEquals(hex.slice(56, 58), "45", `inner IPv4 right after the UDP header: ${hex.slice(0, 120)}`);
      assertEquals(hex.slice(80, 88), ipHex, "inner source = the client's InstanceIP");

      // --flows and /metrics while it runs: kernel rows with kernel counters.
      const fl = (await n1.api.getJson("/table?flows=1")) as {
        flows: Array<{ path?: string; dport: number; bytes: number }>;
      };
      assert(
        fl.flows.some((f) => f.path === "kernel" && f.dport === 82 && f.bytes > 0),
        JSON.stringify(fl.flows),
      );
      const b = await bulk;
      assertEquals(b.code, 0, `120 MiB across the move: ${b.out} ${b.err}`);
      assert(
        /^sent 125829120 [0-9a-f]{64} sink 125829120 [0-9a-f]{64}/.test(b.out.split("\n").at(-1)!),
        b.out,
      );
      const s1 = await status(n1);
      const moved = s1.kernelFastPath!.counters.tx.bytes - tx0;
      console.log(
        `tc mode: kernel tx after the move ${moved} bytes, rx ${s1.kernelFastPath!.counters.rx.bytes}`,
      );
      assert(moved > 60 << 20, `most of the transfer went through the kernel: ${moved}`);
      assert(s1.kernelFastPath!.counters.rx.packets > 0, "answers came back through the kernel");
      const metrics = (await n1.api.request("GET", "/metrics")).body;
      const m = /netmanager_kernel_path_bytes_total\{direction="tx"\} (\d+)/.exec(metrics);
      assert(m !== null && Number(m[1]) > 60 << 20, `kernel path bytes in /metrics: ${m?.[0]}`);

      // 2. A conversation moved onto the kernel survives SIGKILL of the client node's daemon.
      const chat = execIn(cli, [...TOOL, "tcp-chat", rr, "80", "80", "100"]);
      type Row = { path?: string; sport: number; dport: number };
      const kernelRows = async (n: SimNode) =>
        ((await n.api.getJson("/table?flows=1")) as { flows: Row[] }).flows.filter((f) =>
          f.path === "kernel"
        );
      await eventually(
        () => kernelRows(n1),
        (r) => r.some((f) => f.dport === 80),
        10000,
        "chat moved (client)",
        100,
      );
      await eventually(
        () => kernelRows(n2),
        (r) => r.some((f) => f.sport === 80),
        10000,
        "chat moved (server)",
        100,
      );
      Deno.kill(n1.daemon.pid, "SIGKILL");
      await n1.daemon.status;
      const c = await chat;
      assertEquals(c.code, 0, `the chat after SIGKILL: ${c.out.slice(-200)} ${c.err}`);
      assertEquals(c.out.split("\n").at(-1), "web0:m79");

      // 3. The restarted daemon adopts the programs and the flows in their maps.
      n1.api.close(); // its pooled connections belong to the killed process
      n1.api = new ApiClient(n1.socket);
      await w.startDaemon(n1);
      const re = await status(n1);
      assert((re.kernelFastPath?.pins ?? 0) >= 1, `adopted flows: ${JSON.stringify(re.kernelFastPath)}`);
      const log = await Deno.readTextFile(`${n1.dir}/daemon.log`);
      assert(/tc fast path ready.*adoptedFlows.?.?[1-9]/.test(log), "adopted, not reloaded");

      // 4. A new conversation through the restarted daemon moves onto the kernel; undeploying web0
      // cuts every flow to it (the new one and the adopted ones) once the table change arrives.
      const before = carried(await status(n1));
      const chat2 = execIn(cli, [...TOOL, "tcp-chat", rr, "80", "150", "100"]);
      await eventually(
        () => status(n1),
        (s) => carried(s) > before,
        10000,
        "moved after restart",
        100,
      );
      await n2.api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 0 });
      await w.ctl(["instance", "rm", WEB, "0"]);
      await eventually(
        () => n1.api.getJson("/table") as Promise<Array<{ serviceName: string; instanceNumber: number }>>,
        (rows) => !rows.some((r) => r.serviceName === WEB && r.instanceNumber === 0),
        5000,
        "web0 gone from the client node's table",
        20,
      );
      const t0 = Date.now();
      await eventually(
        () => status(n1),
        (s) => s.kernelFastPath?.pins === 0,
        1000,
        "flows to web0 cut within 1 s",
        20,
      );
      console.log(`tc mode: flows cut ${Date.now() - t0} ms after the table change was visible`);
      await chat2; // ends without answers (its instance is gone)

      // 5. clean (daemon killed) detaches the programs — nm_kf_out at the bridge and at the client
      // instance's veth (learnt with its locals entry), nm_kf_in at the underlay; nothing is left for a
      // second clean.
      Deno.kill(n1.daemon.pid, "SIGKILL");
      await n1.daemon.status;
      const c1 = await clean(n1);
      assertEquals(c1.code, 0, c1.out);
      assertEquals(JSON.parse(c1.out.trim().split("\n").at(-1)!).kernelFastPathTcPrograms, 3, c1.out);
      const c2 = await clean(n1);
      assertEquals(JSON.parse(c2.out.trim().split("\n").at(-1)!).kernelFastPathTcPrograms, 0, c2.out);
    },
  );
});
