/**
 * The kernel fast path (issue 16, `KernelFastPath: true`, `TunnelSecurity: off`) between three
 * netmanager nodes in cluster mode (embedded broker): a 200 MiB transfer that starts on the TUN (the
 * ServiceIP is a table miss) moves onto the kernel path while it runs and arrives byte-exact (sha256),
 * the kernel's counters carrying most of it; then new
 * flows through the round-robin ServiceIP alternate and travel through the kernel (VXLAN on the
 * underlay with the client's InstanceIP inside, the server node's conntrack holds the flow with the
 * client's InstanceIP as source, the userspace tunnel stays quiet); an undeploy moves new flows within
 * 1 s; after SIGKILL the kernel keeps carrying flows, and `netmanager clean` removes the nft table,
 * the device and the policy rules.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { CLI, execIn, runIn, threeNodes, WEB, withWorld } from "../helpers/world.ts";
import type { SimNode } from "../../src/demo/world.ts";
import { selfCommand } from "../../src/sys/process.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT_CONFIG = new URL("../../config/", import.meta.url).pathname;

interface KStatus {
  kernelFastPath: {
    peers: string[];
    services: string[];
    device: string;
    counters: { tx: { packets: number; bytes: number } };
    moved: number;
    pins: number;
  } | null;
  dataPlane: { udpTxBytes: number; tunRxBytes: number };
}

interface FlowRow {
  path?: string;
  dialled: string;
  dport: number;
  bytes: number;
}

const status = (n: SimNode) => n.api.getJson("/status") as Promise<KStatus>;

/** Runs a command in a node's namespace; returns stdout. */
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

/** Captures one datagram matching `filter` on a node (any interface), hex of the IP packet. */
async function captureOne(n: SimNode, filter: string, send: () => Promise<unknown>): Promise<string> {
  const cap = new Deno.Command("ip", {
    args: ["netns", "exec", n.ns, "tcpdump", "-i", "any", "-c", "1", "-n", "-x", filter],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await new Promise((r) => setTimeout(r, 700));
  await send();
  const timer = setTimeout(() => cap.kill("SIGTERM"), 5000);
  const out = await cap.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout);
  return text.split("\n").filter((l) => /^\s+0x[0-9a-f]+:/.test(l)).map((l) => l.split(":")[1]).join("")
    .replace(/\s+/g, "");
}

const hexOf = (ip: string) => ip.split(".").map((x) => Number(x).toString(16).padStart(2, "0")).join("");

Deno.test({
  name:
    "kfast: a running 200 MiB TUN transfer moves onto the kernel (sha256 byte-exact), RR + InstanceIP through the kernel, VXLAN " +
    "on the wire, undeploy moves new flows within 1 s, SIGKILL keeps flows, clean leaves nothing",
  ...opts,
}, async () => {
  Deno.env.set("KernelFastPath", "true");
  Deno.env.set("TunnelSecurity", "off");
  Deno.env.set("DataPlaneWorkers", "1");
  try {
    await withWorld(async (w) => {
      const { nodes } = await threeNodes(w, { broker: "embedded" });
      await w.ctl(["service", "add", WEB]);
      await w.ctl(["service", "add", CLI]);
      for (const n of [0, 1]) await w.ctl(["instance", "add", WEB, String(n)]);
      const cliIip = (await w.ctl(["instance", "add", CLI, "0"])).split(" ").at(-2)!;
      const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
      const rr = ((svc.find((s) => s.job_name === WEB)!.service_ip_list) as Array<{ Address: string }>)[0]
        .Address;
      const s1 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
      const s2 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
      const cli = await w.instance("client");
      const dep = async (n: SimNode, job: string, i: number, pid: number) => {
        const r = await n.api.post("/container/deploy", {
          pid,
          serviceName: job,
          instanceNumber: i,
          portMappings: "",
        });
        assertEquals(r.status, 200, r.body);
        return (r.json as { nsAddress: string }).nsAddress;
      };
      const web0 = await dep(nodes[1], WEB, 0, s1.pid);
      await dep(nodes[2], WEB, 1, s2.pid);
      await dep(nodes[0], CLI, 0, cli.pid);

      // 1. The first flow is a table miss on the client's node: it starts on the TUN. The kernel
      // path is programmed while it runs (the table arrives), and the running flow moves onto it
      // (pin + conntrack entry deleted): 200 MiB arrive byte-exact (sha256), most through the kernel.
      const bulk = execIn(cli, [...TOOL, "tcp-sha-send", rr, "82", "200", "12"]);
      await eventually(() => status(nodes[0]), (s) => s.kernelFastPath?.services.includes(rr) === true, 8000);
      const st0 = await status(nodes[0]);
      assertEquals(st0.kernelFastPath?.peers.sort(), ["192.168.77.2", "192.168.77.3"]);
      // The transfer is seen on the TUN first (a worker's flow with bytes), then in the kernel.
      const tunRow = await eventually(
        () => nodes[0].api.getJson("/table?flows=1") as Promise<{ flows: FlowRow[] }>,
        (t) => t.flows.some((f) => f.path === undefined && f.dport === 82 && f.bytes > 0),
        8000,
        "the transfer on the TUN path",
        50,
      );
      const tunBytes0 = tunRow.flows.find((f) => f.path === undefined && f.dport === 82)!.bytes;
      const moved = await eventually(
        () => status(nodes[0]),
        (s) => (s.kernelFastPath?.moved ?? 0) >= 1,
        8000,
        "the running flow moved onto the kernel path",
        100,
      );
      const tx0 = moved.kernelFastPath!.counters.tx.bytes;
      const b = await bulk;
      assertEquals(b.code, 0, `200 MiB across the move: ${b.out} ${b.err}`);
      const want = b.out.split("\n").at(-1)!;
      assert(/^sent 209715200 [0-9a-f]{64} sink 209715200 [0-9a-f]{64}/.test(want), want);
      await new Promise((r) => setTimeout(r, 1200)); // the workers' counters come every second
      await status(nodes[0]); // starts a reading of the kernel's counters
      await new Promise((r) => setTimeout(r, 300));
      const st1 = await status(nodes[0]);
      const txMoved = st1.kernelFastPath!.counters.tx.bytes - tx0;
      const tunAll = st1.dataPlane.udpTxBytes; // fresh nodes: all of it is this test's
      console.log(
        `moved flow: TUN ${tunBytes0} bytes when first seen; kernel tx after the move ${txMoved} bytes; ` +
          `TUN tx (all) ${tunAll} bytes; ${b.out.split("\n").at(-1)}`,
      );
      assert(tunBytes0 > 0, "the transfer began on the TUN");
      assert(txMoved > 100 << 20, `most of the transfer went through the kernel: ${txMoved} bytes`);
      assert(tunAll < 150 << 20, `the TUN carried only the start: ${tunAll} bytes`);
      assertEquals(st1.kernelFastPath?.pins, 1, "the moved flow's pin (until its entry times out)");
      // The server saw the flow from the client's InstanceIP throughout (same conntrack entry, now
      // marked as the kernel path's: its replies left through the device too).
      const sct = await inNode(nodes[1], ["conntrack", "-L", "-p", "tcp", "--dport", "82"]);
      const sct2 = await inNode(nodes[2], ["conntrack", "-L", "-p", "tcp", "--dport", "82"]);
      const sline = (sct.out + sct2.out).split("\n").find((l) => l.includes(`src=${cliIip} `));
      assert(sline !== undefined, `the server's entry: ${sct.out} ${sct2.out}`);
      const smark = Number(/mark=(\d+)/.exec(sline)?.[1]);
      assertEquals((smark & 0xffff0000) >>> 0, 0x4e4b0000, `replies on the kernel path: ${sline}`);
      // The flow's entry goes (as at the end of its TIME_WAIT): its pin goes too.
      await inNode(nodes[0], ["conntrack", "-D", "-p", "tcp", "--dport", "82"]);
      await eventually(
        () => status(nodes[0]),
        (s) => s.kernelFastPath?.pins === 0,
        15000,
        "the pin removed",
        200,
      );

      // 2. New flows: RR alternates, through the kernel.
      let port = 41000;
      const ask = async () =>
        (await runIn(cli, [...TOOL, "tcp-client-from", rr, "80", "q", String(port++)])).split(":")[0];
      const seq: string[] = [];
      for (let k = 0; k < 6; k++) seq.push(await ask());
      for (let k = 1; k < seq.length; k++) assert(seq[k] !== seq[k - 1], `round robin alternates: ${seq}`);
      assert(seq.every((s) => s === "web0" || s === "web1"), `${seq}`);

      // The server's node holds the flows as they arrived: from the client's InstanceIP to web0's
      // namespace IP, marked as sent by a peer through the kernel path.
      const ct = await inNode(nodes[1], ["conntrack", "-L", "-p", "tcp", "--dport", "80"]);
      const line = ct.out.split("\n").find((l) => l.includes(`src=${cliIip} dst=${web0} `));
      assert(line !== undefined, `a flow from the client's InstanceIP to web0: ${ct.out}`);
      const mark = Number(/mark=(\d+)/.exec(line)?.[1]);
      assertEquals((mark & 0xffff0000) >>> 0, 0x4e4b0000, `carried by the kernel path: ${line}`);

      // 4 MiB through the kernel: the userspace tunnel sends (almost) nothing.
      const before = (await status(nodes[0])).dataPlane.udpTxBytes;
      const big = await execIn(cli, [...TOOL, "tcp-bulk", rr, "81", "4"]);
      assertEquals(big.code, 0, `${big.out} ${big.err}`);
      await new Promise((r) => setTimeout(r, 1200)); // the workers' counters come every second
      const grew = (await status(nodes[0])).dataPlane.udpTxBytes - before;
      assert(grew < 200_000, `the TUN path carried ${grew} bytes of a 4 MiB kernel transfer`);
      await status(nodes[0]); // starts a reading of the kernel's counters
      await new Promise((r) => setTimeout(r, 300));
      const tx = (await status(nodes[0])).kernelFastPath?.counters.tx.bytes ?? 0;
      assert(tx > 4 << 20, `the kernel path's counter saw the transfer: ${tx} bytes`);
      // `table show --flows`: the kernel's flows of this node, marked and counted (conntrack accounting).
      const fl = (await nodes[0].api.getJson("/table?flows=1")) as {
        flows: Array<{ path?: string; dialled: string; dport: number; bytes: number }>;
      };
      const kflows = fl.flows.filter((f) => f.path === "kernel" && f.dialled === rr);
      assert(kflows.some((f) => f.dport === 81 && f.bytes > 4 << 20), JSON.stringify(kflows));
      const metrics = (await nodes[0].api.request("GET", "/metrics")).body;
      const m = /netmanager_kernel_path_bytes_total\{direction="tx"\} (\d+)/.exec(metrics);
      assert(m !== null && Number(m[1]) > 4 << 20, `kernel path bytes in /metrics: ${m?.[0]}`);

      // The wire: VXLAN (port 4789, VNI 5010) with the client's InstanceIP → the chosen instance.
      const hex = await captureOne(
        nodes[0],
        "udp dst port 4789 and src host 192.168.77.1",
        () => execIn(cli, [...TOOL, "udp-client", rr, "80", "cap"]),
      );
      assertEquals(hex.slice(56, 58), "08", `VXLAN flags: ${hex.slice(0, 140)}`);
      assertEquals(hex.slice(64, 70), (5010).toString(16).padStart(6, "0"), "VNI");
      const inner = hex.slice(100); // outer IP 20 + UDP 8 + VXLAN 8 + Ethernet 14 bytes
      assertEquals(inner.slice(0, 2), "45");
      assertEquals(inner.slice(24, 32), hexOf(cliIip), "inner source = the client's InstanceIP");

      // 3. Undeploy web0: once the client's node has the change (cluster propagation, as in the
      // cores test), the kernel sends every new flow to web1 within 1 s.
      await nodes[1].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 0 });
      await w.ctl(["instance", "rm", WEB, "0"]);
      await eventually(
        () =>
          nodes[0].api.getJson("/table") as Promise<Array<{ serviceName: string; instanceNumber: number }>>,
        (rows) => !rows.some((r) => r.serviceName === WEB && r.instanceNumber === 0),
        3000,
        "web0 gone from the client node's table",
        20,
      );
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 1000));
      const after: string[] = [];
      for (let k = 0; k < 4; k++) after.push(await ask());
      assertEquals(
        after,
        ["web1", "web1", "web1", "web1"],
        `new flows 1 s after the table change (${Date.now() - t0} ms)`,
      );
      const ct0 = await inNode(nodes[0], ["conntrack", "-L", "--reply-src", web0]);
      assert(!/dport=80 /.test(ct0.out), `web0's kernel flows were cut: ${ct0.out}`);

      // 4. SIGKILL: the kernel keeps carrying (new flows too: its table stays), then clean.
      const n1 = nodes[0];
      const ours = (await inNode(n1, ["ip", "rule", "show"])).out.split("\n").filter((l) =>
        l.includes("0x4e4b")
      );
      assert(ours.length >= 2, `the local rule and one per peer: ${ours}`);
      Deno.kill(n1.daemon.pid, "SIGKILL");
      await n1.daemon.status;
      assertEquals(await ask(), "web1");
      const c = await inNode(n1, [
        ...selfCommand(),
        "clean",
        "--cfg",
        `${n1.dir}/netcfg.json`,
        "--tuncfg",
        `${ROOT_CONFIG}tuncfg.json`,
        "--state-dir",
        `${n1.dir}/state`,
        "--socket",
        n1.socket,
        "--json",
      ]);
      assertEquals(c.code, 0, c.out);
      const rep = JSON.parse(c.out.trim().split("\n").at(-1)!) as {
        kernelFastPath: { table: boolean; device: boolean; rules: number };
      };
      assertEquals(rep.kernelFastPath, { table: true, device: true, rules: ours.length });
      assertEquals((await inNode(n1, ["nft", "list", "tables"])).out.includes("netmanager_kfast"), false);
      assertEquals((await inNode(n1, ["ip", "link", "show", "nmkfast0"])).code !== 0, true);
      const rules = (await inNode(n1, ["ip", "rule", "show"])).out;
      assert(!/0x4e4b/.test(rules), rules);
    });
  } finally {
    Deno.env.delete("KernelFastPath");
    Deno.env.delete("TunnelSecurity");
    Deno.env.delete("DataPlaneWorkers");
  }
});
