/**
 * tc mode (issue 16): first packets decided in the kernel. Client on n1, web0 on n2, web1 on n3 (all
 * three `KernelFastPath: "tc"`), n4 without the fast path. Once the tables know each other (a warm-up
 * through the TUN), new TCP flows to the RR ServiceIP never reach a TUN on any node (TUN counters
 * unchanged; the programs' `decided` counter counts their SYNs and the servers' SYN-ACKs) and alternate
 * web0/web1 per flow; `table show --flows` lists them with kernel counters; undeploying web1 moves new
 * flows to web0 within 1 s (its kernel flows cut); once a WEB instance lives on n4 (no capability) the
 * ServiceIP leaves the kernel's map and new flows work through the TUN. Beside it, what the kernel does
 * not carry (IPv6, Closest ServiceIPs) works through the TUN.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { ask, CLI, CTL, deploy, WEB } from "../helpers/world.ts";
import { withTcNodes } from "../helpers/kfast_tc.ts";
import type { SimNode } from "../../src/demo/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

interface KStatus {
  kernelFastPath: {
    peers: string[];
    services: string[];
    decided?: number;
    pins: number;
    counters: { tx: { packets: number } };
  } | null;
  dataPlane: { tunRx: number; tunTx: number };
}
const status = (n: SimNode) => n.api.getJson("/status") as Promise<KStatus>;
type Row = { path?: string; dport: number; chosen?: string; packets?: number; bytes: number };
const flows = async (n: SimNode) => ((await n.api.getJson("/table?flows=1")) as { flows: Row[] }).flows;
const tun = async (ns: SimNode[]) =>
  (await Promise.all(ns.map(status))).map((s) => `${s.dataPlane.tunRx}/${s.dataPlane.tunTx}`);
const decided = async (n: SimNode) => (await status(n)).kernelFastPath?.decided ?? 0;

Deno.test({
  name: "kfast tc mode: new flows' first packets are decided in the kernel (no TUN), RR per flow, " +
    "undeploy moves new flows within 1 s, a peer without the capability goes through the TUN",
  ...opts,
}, async () => {
  await withTcNodes(
    { count: 3 },
    async (w, nodes) => {
      Deno.env.set("KernelFastPath", "false"); // n4: an older netmanager (no capability bit)
      const n4 = await w.clusterNode("n4", "192.168.77.4", CTL);
      Deno.env.set("KernelFastPath", "tc");
      const [n1, n2, n3] = nodes;
      await w.ctl(["service", "add", WEB]);
      await w.ctl(["service", "add", CLI]);
      for (const i of ["0", "1", "2"]) await w.ctl(["instance", "add", WEB, i]);
      const cliIip = (await w.ctl(["instance", "add", CLI, "0"])).split(" ").at(-2)!;
      const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
      const rr = ((svc.find((s) => s.job_name === WEB)!.service_ip_list) as Array<{ Address: string }>)[0]
        .Address;
      const web0 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
      const web1 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
      const cli = await w.instance("client");
      await deploy(n2, WEB, 0, web0.pid);
      await deploy(n3, WEB, 1, web1.pid);
      await deploy(n1, CLI, 0, cli.pid);
      assertEquals((await status(n4)).kernelFastPath, null);

      // Warm-up through the TUN until every node's plan carries the other side: n1 the RR ServiceIP
      // (both candidates on capable peers), n2 / n3 the client's InstanceIP (their answers).
      await eventually(
        async () => {
          await ask(cli, rr);
          return await Promise.all([n1, n2, n3].map(status));
        },
        ([s1, s2, s3]) =>
          (s1.kernelFastPath?.services.includes(rr) ?? false) &&
          (s2.kernelFastPath?.services.includes(cliIip) ?? false) &&
          (s3.kernelFastPath?.services.includes(cliIip) ?? false),
        20000,
        "the kernel's plans carry the service and the client's InstanceIP",
        200,
      );

      // 0. What the kernel does not carry works beside it, through the TUN: the RR ServiceIP over IPv6
      // (alternating per flow) and the Closest ServiceIP.
      const ips = svc.find((s) => s.job_name === WEB)!.service_ip_list as Array<
        { Address: string; Address_v6: string }
      >;
      const tunV6 = (await status(n1)).dataPlane.tunRx;
      const v6: string[] = [], closest: string[] = [];
      for (let i = 0; i < 4; i++) {
        v6.push(await ask(cli, ips[0].Address_v6));
        closest.push(await ask(cli, ips[1].Address));
      }
      console.log(`tc first: IPv6 RR ${v6.join(" ")}; Closest ${closest.join(" ")}`);
      assertEquals(new Set(v6), new Set(["web0", "web1"]), `IPv6 RR: ${v6.join(" ")}`);
      for (let i = 1; i < v6.length; i++) {
        assert(v6[i] !== v6[i - 1], `IPv6 RR alternates: ${v6.join(" ")}`);
      }
      assert(closest.every((n) => n === "web0" || n === "web1"), `Closest: ${closest.join(" ")}`);
      // (the workers post their counters once a second)
      await eventually(
        () => status(n1),
        (s) => s.dataPlane.tunRx > tunV6,
        3000,
        "IPv6 and Closest through the TUN",
      );

      // 1. New flows: decided in the kernel on every node, the TUNs untouched, RR per flow. (First the
      // warm-up's last segments — its FIN/ACKs crossed the TUNs — settle: counters still for 1.2 s, longer than the workers post them.)
      let tun0 = await tun([n1, n2, n3]);
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 1200)); // longer than the workers' 1 s counter posts
        const now = await tun([n1, n2, n3]);
        if (now.join() === tun0.join()) break;
        tun0 = now;
      }
      const d0 = await Promise.all([n1, n2, n3].map(decided));
      const names: string[] = [];
      for (let i = 0; i < 6; i++) names.push(await ask(cli, rr));
      const tun1 = await tun([n1, n2, n3]);
      const d1 = await Promise.all([n1, n2, n3].map(decided));
      console.log(
        `tc first: answers ${names.join(" ")}; decided ${d0} → ${d1}; TUN rx/tx ${tun0} → ${tun1}`,
      );
      assertEquals(tun1, tun0, "no packet of the new flows crossed a TUN (rx/tx of n1, n2, n3)");
      assert(d1[0] - d0[0] >= 6, `n1's program decided the 6 SYNs: ${d0[0]} → ${d1[0]}`);
      assert(d1[1] - d0[1] + d1[2] - d0[2] >= 6, `n2 + n3 decided the 6 answers: ${d0} → ${d1}`);
      for (let i = 1; i < names.length; i++) {
        assert(names[i] !== names[i - 1], `RR alternates per new flow: ${names.join(" ")}`);
      }
      assertEquals(new Set(names), new Set(["web0", "web1"]));
      // (kernel-decided flows are learnt by the controller's next sweep, about once a second)
      const full = (r: Row[]) => r.length >= 6 && r.every((f) => f.bytes > 0);
      const rows = await eventually(
        async () => (await flows(n1)).filter((f) => f.path === "kernel" && f.dport === 80),
        full,
        5000,
        "the 6 kernel flows in --flows",
      ).catch(async () => (await flows(n1)).filter((f) => f.path === "kernel" && f.dport === 80));
      assert(full(rows), `--flows: ${JSON.stringify(rows)}`);

      // 2. Undeploy web1: new flows go to web0 within 1 s of the table change; its flows are cut.
      await n3.api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 1 });
      await w.ctl(["instance", "rm", WEB, "1"]);
      await eventually(
        () => n1.api.getJson("/table") as Promise<Array<{ serviceName: string; instanceNumber: number }>>,
        (r) => !r.some((x) => x.serviceName === WEB && x.instanceNumber === 1),
        5000,
        "web1 gone from n1's table",
        20,
      );
      await new Promise((r) => setTimeout(r, 1000));
      const after: string[] = [];
      for (let i = 0; i < 4; i++) after.push(await ask(cli, rr));
      assertEquals(after, ["web0", "web0", "web0", "web0"], "new flows after the undeploy");
      const left = (await flows(n1)).filter((f) => f.path === "kernel" && f.dport === 80);
      assertEquals(new Set(rows.map((f) => f.chosen)).size, 2, "before: flows to both instances");
      assertEquals(new Set(left.map((f) => f.chosen)).size, 1, `web1's flows cut: ${JSON.stringify(left)}`);
      assertEquals(await tun([n1]), [tun1[0]], "still decided in the kernel");

      // 3. A WEB instance on n4 (no capability): the ServiceIP leaves the kernel; flows use the TUN.
      const web2 = await w.instance("web2", [...TOOL, "servers", "80", "web2"]);
      await deploy(n4, WEB, 2, web2.pid);
      await eventually(
        () => status(n1),
        (s) => s.kernelFastPath !== null && !s.kernelFastPath.services.includes(rr),
        10000,
        "the ServiceIP leaves n1's kernel map",
        50,
      );
      const tun2 = (await status(n1)).dataPlane.tunRx;
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) seen.add(await ask(cli, rr));
      assert(seen.has("web2"), `the peer without the capability is reached: ${[...seen]}`);
      await eventually(() => status(n1), (s) => s.dataPlane.tunRx > tun2, 3000, "through the TUN");
    },
  );
});
