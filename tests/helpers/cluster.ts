/**
 * Several simulated nodes joined by an underlay: an "underlay" namespace with a bridge, and one
 * veth per node (node address 192.168.77.<i>/24 inside the node namespace only). Each node runs a
 * daemon in standalone mode with its own /26 and, optionally, a static table.
 */
import { createNs, deleteNs, sh, uniqueName } from "./netns.ts";
import { TestContainer, TestNode } from "./node.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** One node of a test cluster. */
export interface ClusterNode {
  node: TestNode;
  /** Underlay address (192.168.77.i). */
  ip: string;
  /** Interface of the node on the underlay. */
  ifname: string;
  subnet4: string;
  /** Base of the node's v6 /120 (derived by the daemon from the v4 subnet). */
  subnet6: string;
}

/** A table-query result as Oakestra's cluster manager sends it (reference §2.3). */
export interface QueryResult {
  app_name: string;
  instance_list: Array<Record<string, unknown>>;
}

/** Node i (1-based) has subnet 10.18.0.(64·i)/26 → instance k gets .64·i+k; v6 fc00::a:1200:<64·i·256+k>. */
export function nodeSubnet(
  i: number,
): { v4: string; first4: (k: number) => string; first6: (k: number) => string } {
  const base = 64 * i;
  const v6base = base * 256;
  return {
    v4: `10.18.${Math.floor(base / 256)}.${base % 256}/26`,
    first4: (k) => `10.18.${Math.floor((base + k) / 256)}.${(base + k) % 256}`,
    first6: (k) =>
      `fc00::a:12${(Math.floor(base / 256)).toString(16).padStart(2, "0")}:${
        (v6base % 65536 + k).toString(16)
      }`,
  };
}

/** A test cluster. */
export class TestCluster {
  readonly underlay: string;
  readonly nodes: ClusterNode[] = [];
  readonly containers: TestContainer[] = [];
  readonly tableFile: string;
  readonly #dir: string;

  private constructor(underlay: string, dir: string) {
    this.underlay = underlay;
    this.#dir = dir;
    this.tableFile = `${dir}/table.json`;
  }

  /** Builds `n` nodes; `table` is written to the static table file every node loads. */
  static async start(
    n: number,
    table: QueryResult[],
    extraArgs: string[] = [],
    cfgFor: (i: number) => Record<string, unknown> = () => ({}),
    /** Runs in node `i`'s namespace setup, before it registers (its data plane starts then). */
    beforeRegister?: (i: number, ns: string) => Promise<void>,
    argsFor: (i: number) => string[] = () => [],
  ): Promise<TestCluster> {
    const underlay = await createNs("u");
    const dir = await Deno.makeTempDir({ prefix: "nmcluster-" });
    const c = new TestCluster(underlay, dir);
    try {
      await Deno.writeTextFile(c.tableFile, JSON.stringify(table, null, 1));
      await sh(["ip", "-n", underlay, "link", "add", "br0", "type", "bridge"]);
      await sh(["ip", "-n", underlay, "link", "set", "br0", "up"]);
      // The nodes start side by side (each: namespace, daemon, `beforeRegister`, register, in that
      // order); all settle before a failure stops what did start.
      const startNode = async (i: number) => {
        const ip = `192.168.77.${i}`;
        const cfg = `${dir}/netcfg${i}.json`;
        const base = JSON.parse(await Deno.readTextFile(`${ROOT}config/netcfg.json`));
        await Deno.writeTextFile(cfg, JSON.stringify({ ...base, NodePublicAddress: ip, ...cfgFor(i) }));
        const s = nodeSubnet(i);
        const node = await TestNode.startWith({
          subnet: s.v4,
          extraArgs: ["--cfg", cfg, "--static-table", c.tableFile, ...extraArgs, ...argsFor(i)],
          beforeDaemon: async (ns) => {
            const a = uniqueName("ua");
            const b = uniqueName("ub");
            await sh([
              "ip",
              "link",
              "add",
              a,
              "netns",
              ns,
              "type",
              "veth",
              "peer",
              "name",
              b,
              "netns",
              underlay,
            ]);
            await sh(["ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", a]);
            await sh(["ip", "-n", ns, "link", "set", a, "up"]);
            await sh(["ip", "-n", underlay, "link", "set", b, "master", "br0", "up"]);
            c.nodes[i - 1] = {
              node: undefined as unknown as TestNode,
              ip,
              ifname: a,
              subnet4: s.v4,
              subnet6: s.first6(0),
            };
          },
        });
        c.nodes[i - 1].node = node;
        await beforeRegister?.(i, node.ns);
        const r = await node.register(`worker${i}`);
        if (r.status !== 200) {
          throw new Error(`register node ${i}: ${r.status} ${(await node.log()).slice(-2000)}`);
        }
      };
      const started = await Promise.allSettled(Array.from({ length: n }, (_, k) => startNode(k + 1)));
      const failed = started.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  /** Starts a container process and deploys it on node `i` (1-based) as `job` instance `n`. */
  async deploy(
    i: number,
    job: string,
    n: number,
    argv?: string[],
    ports = "",
  ): Promise<{ c: TestContainer; ipv4: string; ipv6: string }> {
    const c = await TestContainer.start(argv);
    this.containers.push(c);
    const r = await this.nodes[i - 1].node.api.post("/container/deploy", {
      pid: c.pid,
      serviceName: job,
      instanceNumber: n,
      portMappings: ports,
    });
    if (r.status !== 200) throw new Error(`deploy ${job}#${n} on node ${i}: ${r.status} ${r.body}`);
    const j = r.json as { nsAddress: string; nsAddressv6: string };
    return { c, ipv4: j.nsAddress, ipv6: j.nsAddressv6 };
  }

  /** Logs of all daemons (for failure reports). */
  async logs(): Promise<string> {
    let out = "";
    for (const [i, n] of this.nodes.entries()) {
      out += `--- node ${i + 1}\n${(await n?.node?.log())?.slice(-3000)}\n`;
    }
    return out;
  }

  /** Stops everything this cluster made. */
  async stop(): Promise<void> {
    // Each container and daemon stops on its own (its own namespace): side by side. (A node whose
    // start failed early is a hole.)
    const stopped = [
      ...await Promise.allSettled(this.containers.map((c) => c.stop())),
      ...await Promise.allSettled(this.nodes.map((n) => n?.node?.stop())),
    ];
    await deleteNs(this.underlay);
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
    const failed = stopped.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }
}

/** One instance of a static table (Oakestra's exact keys; host_port as a number). */
export function tableInstance(opts: {
  n: number;
  instanceIp: string;
  instanceIp6: string;
  nsip: string;
  nsip6: string;
  hostIp: string;
  rr?: { v4: string; v6: string };
}): Record<string, unknown> {
  const sips: Array<Record<string, string>> = [];
  if (opts.rr) sips.push({ IpType: "RR", Address: opts.rr.v4, Address_v6: opts.rr.v6 });
  sips.push({ IpType: "instance_ip", Address: opts.instanceIp, Address_v6: opts.instanceIp6 });
  return {
    instance_number: opts.n,
    instance_ip: opts.instanceIp,
    instance_ip_v6: opts.instanceIp6,
    namespace_ip: opts.nsip,
    namespace_ip_v6: opts.nsip6,
    host_ip: opts.hostIp,
    host_port: 50103,
    service_ip: sips,
  };
}
