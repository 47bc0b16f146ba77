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
import { newSecret } from "../cluster/auth.ts";
import { MQTT_CREDENTIAL_FILE_NAME } from "../config/credential.ts";

/** A simulated node. */
export interface SimNode {
  name: string;
  ns: string;
  dir: string;
  socket: string;
  api: ApiClient;
  daemon: Background;
  /** The daemon's command line (for restarts). */
  argv: string[];
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
  /** Extra flags for every daemon started from now on (e.g. `--log-level debug`). */
  daemonArgs: string[] = [];

  /** Creates a namespace with loopback up (no routes out of the machine). */
  async namespace(tag: string): Promise<string> {
    const ns = `${this.prefix}${tag}`;
    await mustRun("ip", ["netns", "add", ns]);
    this.#namespaces.push(ns);
    await mustRun("ip", ["-n", ns, "link", "set", "lo", "up"]);
    return ns;
  }

  #underlay: string | undefined;

  /** The underlay: a namespace with a bridge that simulated hosts attach to (192.168.77.0/24). */
  async underlay(): Promise<string> {
    if (this.#underlay) return this.#underlay;
    const ns = await this.namespace("ul");
    await mustRun("ip", ["-n", ns, "link", "add", "br0", "type", "bridge"]);
    await mustRun("ip", ["-n", ns, "link", "set", "br0", "up"]);
    this.#underlay = ns;
    return ns;
  }

  /** Attaches namespace `ns` to the underlay with address `ip`/24. */
  async attach(ns: string, tag: string, ip: string): Promise<void> {
    const ul = await this.underlay();
    const a = `${this.prefix}${tag}`;
    const b = `${this.prefix}${tag}u`;
    await mustRun("ip", ["link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", ul]);
    await mustRun("ip", ["-n", ns, "addr", "add", `${ip}/24`, "dev", a]);
    await mustRun("ip", ["-n", ns, "link", "set", a, "up"]);
    await mustRun("ip", ["-n", ul, "link", "set", b, "master", "br0", "up"]);
  }

  /**
   * Starts `netmanager control` (HTTP API on 127.0.0.1:10100) in its own namespace on the underlay
   * at `ip`, with its embedded MQTT broker on :10003, or with `broker: "mosquitto"` a mosquitto
   * (Debian's) on :10003 in the same namespace that the control plane uses as an external broker
   * (password file + the ACL of config/mosquitto/acl). Every cluster node started afterwards gets
   * its own MQTT credential (`control node add`, or mosquitto_passwd).
   */
  /** The state directory of the control plane started by {@link World.control} (holds `api-token`). */
  get controlStateDir(): string {
    if (!this.#ctl) throw new Error("no control plane started");
    return this.#ctl.dir;
  }

  async control(
    ip: string,
    opts: { broker?: "embedded" | "mosquitto"; args?: string[] } = {},
  ): Promise<{ ns: string; ip: string }> {
    const ns = await this.namespace("ctl");
    await this.attach(ns, "c", ip);
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-ctl-` });
    this.#dirs.push(dir);
    this.#ctl = { ns, dir, mosquitto: opts.broker === "mosquitto", ours: true, args: opts.args ?? [] };
    if (this.#ctl.mosquitto) await this.startBroker();
    await this.startControl();
    return { ns, ip };
  }

  #ctl:
    | {
      ns: string;
      dir: string;
      mosquitto: boolean;
      ours?: boolean;
      proc?: Background;
      broker?: Background;
      /** Extra `netmanager control` arguments (e.g. `--relay`). */
      args?: string[];
    }
    | undefined;

  /**
   * Only a mosquitto broker (:10003) in its own namespace on the underlay at `ip`, for a cluster
   * side played by something else; `spawnNextToBroker` runs that.
   */
  async brokerOnly(ip: string): Promise<{ ns: string; dir: string }> {
    const ns = await this.namespace("ctl");
    await this.attach(ns, "c", ip);
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-ctl-` });
    this.#dirs.push(dir);
    this.#ctl = { ns, dir, mosquitto: true };
    await this.startBroker();
    return { ns, dir };
  }

  /** Runs a process in namespace `ns` (one of this world's; stopped by `destroy`). */
  spawnIn(ns: string, argv: string[], logFile: string): Background {
    const p = spawnBackground(argv, { netns: ns, logFile });
    this.#procs.push(p);
    return p;
  }

  /** Runs a process in the control plane's namespace (stopped by `destroy`). */
  spawnNextToBroker(argv: string[], logFile: string): Background {
    const p = spawnBackground(argv, { netns: this.#ctl!.ns, logFile });
    this.#procs.push(p);
    return p;
  }

  /** (Re)starts the control-plane process (state kept in its directory). */
  async startControl(): Promise<void> {
    const c = this.#ctl!;
    const args = [...selfCommand(), "control", "--state-dir", c.dir];
    if (c.mosquitto) {
      args.push("--broker", "mqtt://127.0.0.1:10003", "--broker-username", "netmanager-control");
      args.push("--broker-password-file", `${c.dir}/broker-password`);
    } else args.push("--mqtt-port", "10003");
    args.push(...(c.args ?? []));
    c.proc = spawnBackground(args, { netns: c.ns, logFile: `${c.dir}/control.log` });
    this.#procs.push(c.proc);
    const deadline = Date.now() + 20000;
    while (
      (await runTool("nsenter", [
        `--net=/run/netns/${c.ns}`,
        "curl",
        "-s",
        "http://127.0.0.1:10100/api/net/nodes",
      ])).code !== 0
    ) {
      if (Date.now() > deadline) {
        throw new Error(`netmanager control did not start; see ${c.dir}/control.log`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops the control-plane process (SIGTERM). */
  async stopControl(): Promise<void> {
    await this.#ctl?.proc?.stop();
  }

  /**
   * (Re)starts the mosquitto broker of a `broker: "mosquitto"` control plane: with our control plane
   * it requires passwords and applies config/mosquitto/acl; alone (`brokerOnly`, an Oakestra-style
   * cluster) it is anonymous, as Oakestra's default.
   */
  async startBroker(): Promise<void> {
    const c = this.#ctl!;
    const conf = `${c.dir}/mosquitto.conf`;
    let text = "listener 10003 0.0.0.0\nset_tcp_nodelay true\npersistence false\n";
    if (c.ours) {
      const passwd = `${c.dir}/mosquitto.passwd`;
      if (!(await Deno.stat(passwd).then(() => true, () => false))) {
        const pw = newSecret();
        await Deno.writeTextFile(`${c.dir}/broker-password`, pw + "\n", { mode: 0o600 });
        await Deno.writeTextFile(passwd, "", { mode: 0o600 });
        await mustRun("mosquitto_passwd", ["-b", passwd, "netmanager-control", pw]);
        await Deno.copyFile(`${ROOT_CONFIG}mosquitto/acl`, `${c.dir}/mosquitto.acl`);
        // mosquitto started as root reads its files as user mosquitto
        await mustRun("chown", ["mosquitto", passwd, `${c.dir}/mosquitto.acl`]);
        await Deno.chmod(c.dir, 0o711);
      }
      text += `allow_anonymous false\npassword_file ${passwd}\nacl_file ${c.dir}/mosquitto.acl\n` +
        "use_username_as_clientid true\n";
    } else {
      text += "allow_anonymous true\n";
    }
    await Deno.writeTextFile(conf, text);
    c.broker = spawnBackground(["mosquitto", "-c", conf], { netns: c.ns, logFile: `${c.dir}/mosquitto.log` });
    this.#procs.push(c.broker);
    const deadline = Date.now() + 10000;
    while (
      (await runTool("nsenter", [
        `--net=/run/netns/${c.ns}`,
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/10003",
      ])).code !== 0
    ) {
      if (Date.now() > deadline) throw new Error(`mosquitto did not start; see ${c.dir}/mosquitto.log`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stops the mosquitto broker (SIGTERM). */
  async stopBroker(): Promise<void> {
    await this.#ctl?.broker?.stop();
  }

  /**
   * Gives worker `workerId` its MQTT credential in `stateDir/mqtt-credential.json` (0600): from the
   * control plane (`control node add --out`), or with mosquitto a new password in its password
   * file, then a reload (SIGHUP) that is awaited in mosquitto's log.
   */
  async nodeCredential(workerId: string, stateDir: string): Promise<void> {
    const c = this.#ctl!;
    await Deno.mkdir(stateDir, { recursive: true });
    const file = `${stateDir}/${MQTT_CREDENTIAL_FILE_NAME}`;
    if (!c.mosquitto) {
      await this.ctl(["node", "add", workerId, "--out", file]);
      return;
    }
    const pw = newSecret();
    await mustRun("mosquitto_passwd", ["-b", `${c.dir}/mosquitto.passwd`, workerId, pw]);
    await Deno.writeTextFile(file, JSON.stringify({ username: workerId, password: pw }) + "\n", {
      mode: 0o600,
    });
    const log = `${c.dir}/mosquitto.log`;
    const reloads = async () =>
      ((await Deno.readTextFile(log).catch(() => "")).match(/Reloading config/g) ?? []).length;
    const before = await reloads();
    Deno.kill(c.broker!.pid, "SIGHUP");
    const deadline = Date.now() + 5000;
    while (await reloads() === before) {
      if (Date.now() > deadline) throw new Error(`mosquitto did not reload; see ${log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Runs `netmanager control …` (the CLI client) next to the control plane; returns stdout. */
  async ctl(args: string[]): Promise<string> {
    if (!this.#ctl) throw new Error("no control plane started");
    const r = await runTool("nsenter", [
      `--net=/run/netns/${this.#ctl.ns}`,
      ...selfCommand(),
      "control",
      ...args,
      "--state-dir",
      this.#ctl.dir,
    ]);
    if (r.code !== 0) throw new Error(`netmanager control ${args.join(" ")}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  }

  /**
   * Starts a node in cluster mode: attached to the underlay at `ip`, its daemon registers with the
   * control plane at `clusterIp` (MQTT) and gets its subnet from there.
   */
  async clusterNode(
    name: string,
    ip: string,
    clusterIp: string,
    workerId?: string,
    /** Instead of attaching to the underlay at `ip`: wires the node's namespace (e.g. behind a NAT router). */
    plumb?: (ns: string) => Promise<void>,
    /** More netcfg.json settings (e.g. `TunnelSecurity`). */
    cfgExtra: Record<string, unknown> = {},
  ): Promise<SimNode> {
    const ns = await this.namespace(name);
    if (plumb) await plumb(ns);
    else await this.attach(ns, name, ip);
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-${name}-` });
    this.#dirs.push(dir);
    const cfg = JSON.parse(await Deno.readTextFile(`${ROOT_CONFIG}netcfg.json`));
    await Deno.writeTextFile(
      `${dir}/netcfg.json`,
      JSON.stringify({ ...cfg, NodePublicAddress: ip, ClusterUrl: clusterIp, ...cfgExtra }),
    );
    const id = workerId ?? `${this.prefix}-${name}`;
    if (this.#ctl?.ours) {
      // One credential at a time (nodes started side by side): the control plane rewrites one file
      // per credential, and with mosquitto each one's reload is awaited in its log.
      const turn = this.#credentialTurn.then(() => this.nodeCredential(id, `${dir}/state`));
      this.#credentialTurn = turn.catch(() => {});
      await turn;
    }
    return await this.#startNode(name, ns, dir, ["--cfg", `${dir}/netcfg.json`], clusterIp, id);
  }

  #credentialTurn: Promise<void> = Promise.resolve();

  /** A temporary directory named after this world's prefix and `name`, removed by {@link World.destroy}. */
  async tempDir(name: string): Promise<string> {
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-${name}-` });
    this.#dirs.push(dir);
    return dir;
  }

  /** Starts a node daemon in standalone mode with `subnet` and registers it. */
  async node(name: string, subnet: string, extraArgs: string[] = []): Promise<SimNode> {
    const ns = await this.namespace(name);
    const dir = await Deno.makeTempDir({ prefix: `${this.prefix}-${name}-` });
    this.#dirs.push(dir);
    return await this.#startNode(name, ns, dir, [
      "--subnet",
      subnet,
      "--cfg",
      `${ROOT_CONFIG}netcfg.json`,
      ...extraArgs,
    ], "");
  }

  async #startNode(
    name: string,
    ns: string,
    dir: string,
    args: string[],
    clusterAddress: string,
    workerId = `${this.prefix}-${name}`,
  ): Promise<SimNode> {
    const socket = `${dir}/netmanager.sock`;
    const argv = [
      ...selfCommand(),
      "daemon",
      "--socket",
      socket,
      "--state-dir",
      `${dir}/state`,
      "--tuncfg",
      `${ROOT_CONFIG}tuncfg.json`,
      ...args,
      ...this.daemonArgs,
    ];
    const api = new ApiClient(socket);
    const node: SimNode = { name, ns, dir, socket, api, daemon: undefined as unknown as Background, argv };
    this.nodes.push(node);
    await this.startDaemon(node);
    const r = await api.post("/register", {
      client_id: workerId,
      cluster_address: clusterAddress,
    });
    if (r.status !== 200) throw new Error(`register ${name}: HTTP ${r.status} ${r.body}`);
    return node;
  }

  /** (Re)starts a node's daemon process and waits for its API (a restarted node is not re-registered). */
  async startDaemon(node: SimNode): Promise<void> {
    node.daemon = spawnBackground(node.argv, { netns: node.ns, logFile: `${node.dir}/daemon.log` });
    this.#procs.push(node.daemon);
    const deadline = Date.now() + 20000;
    for (;;) {
      const ok = await node.api.request("GET", "/status").then((r) => r.status === 200, () => false);
      if (ok) return;
      if (Date.now() > deadline) {
        throw new Error(`node ${node.name} did not start; see ${node.dir}/daemon.log`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops a node's daemon (SIGTERM: instances keep their networking). */
  async stopDaemon(node: SimNode): Promise<void> {
    await node.daemon.stop();
    node.api.close(); // its pooled connections belong to the old process
    node.api = new ApiClient(node.socket);
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

  /** Runs this program's CLI against a node's socket (e.g. `table show`); returns stdout. */
  async cli(node: SimNode, args: string[]): Promise<string> {
    const r = await runTool(selfCommand()[0], [...selfCommand().slice(1), ...args, "--socket", node.socket]);
    if (r.code !== 0) throw new Error(`netmanager ${args.join(" ")}: ${r.stderr.trim()}`);
    return r.stdout.trimEnd();
  }

  /** HTTP GET from inside an instance (this program's `demo-get`, so nothing else is needed). */
  httpGet(from: SimInstance, url: string): Promise<string> {
    return this.execIn(from, [...selfCommand(), "demo-get", url]);
  }

  /** Prints what each node knows (status, table, log tail): for a failed run. */
  async diagnose(print: (line: string) => void): Promise<void> {
    for (const n of this.nodes) {
      print(`\n-- ${n.name}: status`);
      print(JSON.stringify(await n.api.getJson("/status").catch((e) => String(e))));
      print(`-- ${n.name}: table`);
      print(JSON.stringify(await n.api.getJson("/table").catch((e) => String(e))));
      const log = await Deno.readTextFile(`${n.dir}/daemon.log`).catch(() => "");
      print(`-- ${n.name}: log tail\n${log.split("\n").slice(-15).join("\n")}`);
    }
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
