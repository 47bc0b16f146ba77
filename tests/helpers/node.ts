/**
 * Simulated nodes for tests: a network namespace running the netmanager daemon (`deno run main.ts
 * daemon`), and "containers" as processes in fresh network namespaces (`unshare -n`).
 * Everything is removed by `stop()` / `cleanup()`, also when a test fails.
 */
import { ApiClient } from "../../src/api/client.ts";
import { createNs, deleteNs, inNs, uniqueName } from "./netns.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** A daemon running inside its own node namespace. */
export class TestNode {
  readonly ns: string;
  readonly dir: string;
  readonly socket: string;
  readonly subnet: string;
  api: ApiClient;
  proc: Deno.ChildProcess | undefined;
  logPath: string;
  readonly #extraArgs: string[];
  readonly #env: Record<string, string>;

  private constructor(
    ns: string,
    dir: string,
    subnet: string,
    extraArgs: string[],
    env: Record<string, string> = {},
  ) {
    this.ns = ns;
    this.dir = dir;
    this.socket = `${dir}/nm.sock`;
    this.subnet = subnet;
    this.logPath = `${dir}/daemon.log`;
    this.#extraArgs = extraArgs;
    this.#env = env;
    this.api = new ApiClient(this.socket);
  }

  /** Creates the node namespace and starts the daemon in standalone mode with `subnet`. */
  static start(subnet = "10.18.0.64/26", extraArgs: string[] = []): Promise<TestNode> {
    return TestNode.startWith({ subnet, extraArgs });
  }

  /**
   * Like {@link start}, with a hook that runs in the new namespace before the daemon starts, and
   * variables added to the daemon's environment (`env`: per node, so daemons started at once may differ).
   */
  static async startWith(opts: {
    subnet?: string;
    extraArgs?: string[];
    env?: Record<string, string>;
    beforeDaemon?: (ns: string) => Promise<void>;
  }): Promise<TestNode> {
    const ns = await createNs("n");
    const dir = await Deno.makeTempDir({ prefix: "nmtest-" });
    const node = new TestNode(ns, dir, opts.subnet ?? "10.18.0.64/26", opts.extraArgs ?? [], opts.env);
    try {
      await opts.beforeDaemon?.(ns);
      await node.startDaemon();
    } catch (e) {
      await node.stop();
      throw e;
    }
    return node;
  }

  /** (Re)starts the daemon process in the node namespace and waits for its socket. */
  async startDaemon(): Promise<void> {
    const log = await Deno.open(this.logPath, { create: true, append: true, write: true });
    // nsenter (not `ip netns exec`): only the network namespace changes, so named namespaces the
    // daemon mounts (unikernels) are visible to the test, as they are on a real node.
    this.proc = new Deno.Command("nsenter", {
      args: [
        `--net=/run/netns/${this.ns}`,
        Deno.execPath(),
        "run",
        "-A",
        // As the release's launcher runs the daemon (scripts/launcher.sh): without V8's code cache, and
        // without a copy of V8's builtins per isolate.
        "--no-code-cache",
        "--v8-flags=--no-short-builtin-calls",
        // NETMANAGER_TEST_MAIN: another entry (the memory test runs the packaged bundle).
        Deno.env.get("NETMANAGER_TEST_MAIN") ?? `${ROOT}main.ts`,
        "daemon",
        ...(this.subnet ? ["--subnet", this.subnet] : []),
        "--socket",
        this.socket,
        "--state-dir",
        `${this.dir}/state`,
        "--cfg",
        `${ROOT}config/netcfg.json`,
        "--tuncfg",
        `${ROOT}config/tuncfg.json`,
        ...this.#extraArgs,
      ],
      env: this.#env,
      stdout: "null",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    // Written per chunk, so the log can be read while the daemon runs (failure reports).
    (async () => {
      for await (const chunk of this.proc!.stderr) {
        for (let off = 0; off < chunk.length;) off += log.writeSync(chunk.subarray(off));
      }
    })().catch(() => {}).finally(() => log.close());
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      try {
        const r = await this.api.request("GET", "/status");
        if (r.status === 200) return;
      } catch {
        // not up yet
      }
      const st = await Promise.race([
        this.proc.status,
        new Promise((r) => setTimeout(() => r(undefined), 100)),
      ]);
      if (st !== undefined) throw new Error(`daemon exited early: ${await this.log()}`);
    }
    throw new Error(`daemon did not come up: ${await this.log()}`);
  }

  /** The daemon's log so far. */
  async log(): Promise<string> {
    try {
      return await Deno.readTextFile(this.logPath);
    } catch {
      return "";
    }
  }

  /** Sends a signal to the daemon and waits for it to exit; returns its exit code. */
  async signal(sig: Deno.Signal): Promise<number> {
    if (!this.proc) return 0;
    try {
      // nsenter execs the command, so this PID is the daemon itself.
      this.proc.kill(sig);
    } catch {
      // already gone
    }
    const st = await this.proc.status;
    this.proc = undefined;
    this.api.close();
    this.api = new ApiClient(this.socket);
    return st.code;
  }

  /** Registers with a worker id. */
  register(id = "worker1"): Promise<{ status: number }> {
    return this.api.post("/register", { client_id: id, cluster_address: "" });
  }

  /** Waits until background removals of undeployed instances have finished. */
  async settled(ms = 5000): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const st = (await this.api.getJson("/status")) as { pendingRemovals: number };
      if (st.pendingRemovals === 0) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("undeployed instances were not removed in time");
  }

  /** Runs a command inside the node namespace. */
  exec(cmd: string[]): Promise<string> {
    return inNs(this.ns, cmd);
  }

  /** Stops the daemon (SIGTERM, then SIGKILL) and deletes the namespace and temp dir. */
  async stop(): Promise<void> {
    if (this.proc) {
      const p = this.proc;
      const t = setTimeout(() => {
        try {
          p.kill("SIGKILL");
        } catch { /* gone */ }
      }, 5000);
      await this.signal("SIGTERM");
      clearTimeout(t);
    }
    this.api.close();
    await deleteNs(this.ns);
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** A "container": a process in a fresh network namespace. */
export class TestContainer {
  readonly proc: Deno.ChildProcess;
  readonly pid: number;

  private constructor(proc: Deno.ChildProcess) {
    this.proc = proc;
    this.pid = proc.pid;
  }

  /** Starts `cmd` (default: sleep) in a new network namespace. */
  static start(cmd: string[] = ["sleep", "600"]): Promise<TestContainer> {
    const proc = new Deno.Command("unshare", {
      args: ["-n", ...cmd],
      stdout: "null",
      stderr: "null",
      stdin: "null",
    })
      .spawn();
    // unshare execs cmd after unsharing; wait until the namespace differs from ours.
    return (async () => {
      const mine = await Deno.readLink("/proc/self/ns/net");
      for (let i = 0; i < 100; i++) {
        try {
          if ((await Deno.readLink(`/proc/${proc.pid}/ns/net`)) !== mine) break;
        } catch { /* not yet */ }
        await new Promise((r) => setTimeout(r, 10));
      }
      return new TestContainer(proc);
    })();
  }

  /** Runs a command in this container's network namespace. */
  async exec(cmd: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const c = new Deno.Command("nsenter", {
      args: ["-t", String(this.pid), "-n", ...cmd],
      stdout: "piped",
      stderr: "piped",
      stdin: stdin === undefined ? "null" : "piped",
    }).spawn();
    if (stdin !== undefined) {
      const w = c.stdin.getWriter();
      await w.write(new TextEncoder().encode(stdin));
      await w.close();
    }
    const o = await c.output();
    const d = new TextDecoder();
    return { code: o.code, stdout: d.decode(o.stdout), stderr: d.decode(o.stderr) };
  }

  /** Kills the process (its namespace and veth end vanish with it). */
  async stop(): Promise<void> {
    try {
      this.proc.kill("SIGKILL");
    } catch { /* gone */ }
    await this.proc.status;
  }
}

/** A deploy body exactly as the NodeEngine sends it. */
export function deployBody(
  pid: number,
  job: string,
  instance: number,
  portMappings = "",
): Record<string, unknown> {
  return { pid, serviceName: job, instanceNumber: instance, portMappings };
}

/** Link names in a namespace (sorted). */
export async function linkNames(ns: string): Promise<string[]> {
  const out = await inNs(ns, ["ip", "-j", "link", "show"]);
  return (JSON.parse(out) as Array<{ ifname: string }>).map((l) => l.ifname).sort();
}

/** iptables-save and ip6tables-save of a namespace without comments and counters. */
export async function ruleDump(ns: string): Promise<string> {
  const clean = (s: string) =>
    s.split("\n").filter((l) => !l.startsWith("#")).map((l) => l.replace(/\[\d+:\d+\]/, "")).join("\n");
  return clean(await inNs(ns, ["iptables-save"])) + clean(await inNs(ns, ["ip6tables-save"]));
}

/** A short unique job name (4 alphanumeric parts). */
export function jobName(tag: string): string {
  return `app${tag}.ns.svc${uniqueName("j").replace(/[^A-Za-z0-9]/g, "")}.ns`;
}

/** Server/client scripts run inside containers (Deno, so nothing else needs installing). */
export const TOOLS = `${ROOT}tests/helpers/nettools.ts`;

/** argv prefix running the tools with this Deno (PATH may not contain `deno`). */
export const TOOL: string[] = [Deno.execPath(), "run", "-A", TOOLS];
