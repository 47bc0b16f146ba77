/**
 * A simulated cluster on one machine for the demo: nodes are network namespaces running a
 * netmanager daemon each, instances are processes in fresh network namespaces. Every namespace
 * carries a per-run prefix and everything is removed by `destroy()`, also after a failure.
 *
 * @example
 * ```ts
 * const w = new World();
 * try {
 *   const n1 = await w.node("n1", "10.18.0.64/26");
 * } finally {
 *   await w.destroy();
 * }
 * ```
 */
import { ApiClient } from "../api/client.ts";
import { mustRun, runTool } from "../sys/command.ts";
import { type Background, selfCommand, spawnBackground } from "../sys/process.ts";

/** A simulated node. */
export interface SimNode {
  name: string;
  ns: string;
  dir: string;
  socket: string;
  api: ApiClient;
  daemon: Background;
}

/** A simulated instance (container). */
export interface SimInstance {
  name: string;
  proc: Background;
  pid: number;
}

const ROOT_CONFIG = new URL("../../config/", import.meta.url).pathname;

/** The demo's namespaces, processes and files. */
export class World {
  readonly prefix: string = `nmd${Math.floor(Math.random() * 36 ** 4).toString(36)}`;
  readonly #namespaces: string[] = [];
  readonly #procs: Background[] = [];
  readonly #dirs: string[] = [];
  readonly nodes: SimNode[] = [];

  /** Creates a namespace with loopback up (no routes out of the machine). */
  async namespace(tag: string): Promise<string> {
    const ns = `${this.prefix}${tag}`;
    await mustRun("ip", ["netns", "add", ns]);
    this.#namespaces.push(ns);
    await mustRun("ip", ["-n", ns, "link", "set", "lo", "up"]);
    return ns;
  }

  /** Starts a node daemon in standalone mode with `subnet` and registers it. */
  async node(name: string, subnet: string, extraArgs: string[] = []): Promise<SimNode> {
    const ns = await this.namespace(name);
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-${name}-` });
    this.#dirs.push(dir);
    const socket = `${dir}/netmanager.sock`;
    const daemon = spawnBackground([
      ...selfCommand(),
      "daemon",
      "--subnet",
      subnet,
      "--socket",
      socket,
      "--state-dir",
      `${dir}/state`,
      "--cfg",
      `${ROOT_CONFIG}netcfg.json`,
      "--tuncfg",
      `${ROOT_CONFIG}tuncfg.json`,
      ...extraArgs,
    ], { netns: ns, logFile: `${dir}/daemon.log` });
    this.#procs.push(daemon);
    const api = new ApiClient(socket);
    const node: SimNode = { name, ns, dir, socket, api, daemon };
    this.nodes.push(node);
    const deadline = Date.now() + 20000;
    for (;;) {
      const ok = await api.request("GET", "/status").then((r) => r.status === 200, () => false);
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`node ${name} did not start; see ${dir}/daemon.log`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const r = await api.post("/register", { client_id: `${this.prefix}-${name}`, cluster_address: "" });
    if (r.status !== 200) throw new Error(`register ${name}: HTTP ${r.status} ${r.body}`);
    return node;
  }

  /** Starts an instance process (`argv`, default: sleep) in a fresh network namespace. */
  async instance(name: string, argv: string[] = ["sleep", "3600"]): Promise<SimInstance> {
    const proc = spawnBackground(argv, { newNetns: true });
    this.#procs.push(proc);
    const mine = await Deno.readLink("/proc/self/ns/net");
    for (let i = 0; i < 200; i++) {
      const ns = await Deno.readLink(`/proc/${proc.pid}/ns/net`).catch(() => mine);
      if (ns !== mine) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    return { name, proc, pid: proc.pid };
  }

  /** An HTTP server instance that answers every request with its name (this program's `demo-serve`). */
  server(name: string, port = 80): Promise<SimInstance> {
    return this.instance(name, [...selfCommand(), "demo-serve", "--port", String(port), "--name", name]);
  }

  /** Runs a command in an instance's network namespace; returns stdout (trimmed) or throws. */
  async execIn(inst: SimInstance, argv: string[]): Promise<string> {
    const r = await runTool("nsenter", ["-t", String(inst.pid), "-n", ...argv]);
    if (r.code !== 0) {
      throw new Error(`${argv.join(" ")} in ${inst.name}: ${r.stderr.trim() || `exit ${r.code}`}`);
    }
    return r.stdout.trim();
  }

  /** Runs a command in a node's network namespace. */
  async execOnNode(node: SimNode, argv: string[]): Promise<string> {
    const r = await runTool("nsenter", [`--net=/run/netns/${node.ns}`, ...argv]);
    if (r.code !== 0) {
      throw new Error(`${argv.join(" ")} on ${node.name}: ${r.stderr.trim() || `exit ${r.code}`}`);
    }
    return r.stdout.trim();
  }

  /** HTTP GET from inside an instance (this program's `demo-get`, so nothing else is needed). */
  httpGet(from: SimInstance, url: string): Promise<string> {
    return this.execIn(from, [...selfCommand(), "demo-get", url]);
  }

  /** Stops every process, deletes every namespace and temp dir; returns leftovers found afterwards. */
  async destroy(): Promise<string[]> {
    for (const n of this.nodes) n.api.close();
    for (const p of [...this.#procs].reverse()) await p.stop();
    for (const ns of this.#namespaces) await runTool("ip", ["netns", "del", ns]);
    for (const d of this.#dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
    const list = (await runTool("ip", ["netns", "list"])).stdout;
    return list.split("\n").filter((l) => l.startsWith(this.prefix));
  }
}
