/**
 * The kernel fast path keeps its jobs in the table (the kfast_test flake): a node's interest in a job
 * expires when its flows go unused (`NETMANAGER_INTEREST_IDLE_MS`, 10 s by default; 6 s here), and
 * only the workers reported use — a flow the kernel carries never reaches them. So the job left the
 * client node's table while its flow ran through the kernel, the table change cut the flow's
 * conntrack entry, and the transfer was reset (or a moved flow's pin went). Here a 12 s transfer runs
 * entirely through the kernel across two idle windows: it arrives byte-exact and the job stays.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually, withEnv } from "../helpers/setup.ts";
import { execIn, runIn, threeNodes, WEB, webAndClient, withWorld } from "../helpers/world.ts";
import type { SimNode } from "../../src/demo/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ENV = {
  KernelFastPath: "true",
  TunnelSecurity: "off",
  DataPlaneWorkers: "1",
  NETMANAGER_INTEREST_IDLE_MS: "6000",
};

interface KStatus {
  kernelFastPath: { services: string[]; counters: { tx: { bytes: number } } } | null;
  dataPlane: { udpTxBytes: number };
}
const status = (n: SimNode) => n.api.getJson("/status") as Promise<KStatus>;
const hasWeb = async (n: SimNode) =>
  ((await n.api.getJson("/table")) as Array<{ serviceName: string }>).some((r) => r.serviceName === WEB);

Deno.test({
  name: "kfast interest: a 12 s transfer carried by the kernel keeps its job in the table (idle expiry 6 s)",
  ...opts,
}, async () => {
  await withEnv(ENV, () =>
    withWorld(async (w) => {
      const { nodes } = await threeNodes(w, { broker: "embedded", count: 2 });
      const { rr, cli } = await webAndClient(w, nodes[1], nodes[0], [
        ...TOOL,
        "servers",
        "80",
        "web0",
      ]);
      // The first request brings WEB into the client node's table; the kernel path follows.
      assertEquals(
        await eventually(
          () => runIn(cli, [...TOOL, "tcp-client", rr, "80", "q"]),
          (a) => a === "web0:q",
          15000,
        ),
        "web0:q",
      );
      await eventually(
        () => status(nodes[0]),
        (s) => s.kernelFastPath?.services.includes(rr) === true,
        15000,
      );
      const udp0 = (await status(nodes[0])).dataPlane.udpTxBytes;
      // 40 MiB paced over 12 s, a new flow: the kernel carries all of it, the workers see none.
      const r = await execIn(cli, [...TOOL, "tcp-sha-send", rr, "82", "40", "12"]);
      assertEquals(r.code, 0, `the transfer across two idle windows: ${r.out} ${r.err}`);
      assert(/^sent 41943040 [0-9a-f]{64} sink 41943040 [0-9a-f]{64}/.test(r.out.split("\n").at(-1)!), r.out);
      await new Promise((res) => setTimeout(res, 1200)); // the workers' counters come every second
      const st = await status(nodes[0]);
      assert(
        st.dataPlane.udpTxBytes - udp0 < 1 << 20,
        `the TUN path carried ${st.dataPlane.udpTxBytes - udp0} bytes`,
      );
      assert(await hasWeb(nodes[0]), "WEB is still in the client node's table");
      assertEquals(st.kernelFastPath?.services.includes(rr), true, "still carried by the kernel");
    }));
});
