/**
 * The cluster-mode set-up the netns tests share (on {@link World}): a control plane with three
 * nodes, the standard web and client services (two web instances, one client), deploying an
 * instance on a node, and running commands inside an instance.
 *
 * @example
 * ```ts
 * import { World } from "../../src/demo/world.ts";
 * import { addWebAndClient, ask, CLI, deploy, threeNodes, WEB } from "./world.ts";
 * const w = new World();
 * try {
 *   const { nodes } = await threeNodes(w);
 *   await addWebAndClient(w);
 *   const client = await w.instance("client");
 *   await deploy(nodes[0], CLI, 0, client.pid);
 *   console.log(WEB, await ask(client, "10.30.0.1"));
 * } finally {
 *   await w.destroy();
 * }
 * ```
 */
import { assertEquals } from "./assert.ts";
import { type SimInstance, type SimNode, World } from "../../src/demo/world.ts";
import { TOOL } from "./node.ts";

/** The control plane's underlay address. */
export const CTL = "192.168.77.254";
/** The web service (servers) of the standard set-up. */
export const WEB = "app.ns.web.ns";
/** The client service of the standard set-up. */
export const CLI = "app.ns.cli.ns";

/**
 * Starts the control plane at {@link CTL} and nodes n1..n`count` at 192.168.77.<i>, side by side (each
 * its own namespace, daemon and registration; World makes their credentials one at a time; the subnets
 * go out in the order the registrations arrive).
 */
export async function threeNodes(
  w: World,
  opts: { broker?: "embedded" | "mosquitto"; count?: number } = {},
): Promise<{ control: { ns: string; ip: string }; nodes: SimNode[] }> {
  const control = await w.control(CTL, opts.broker ? { broker: opts.broker } : {});
  const names = Array.from({ length: opts.count ?? 3 }, (_, k) => `n${k + 1}`);
  // All settle before a failure is thrown: withWorld's destroy then finds every process started.
  const started = await Promise.allSettled(
    names.map((n, k) => w.clusterNode(n, `192.168.77.${k + 1}`, CTL)),
  );
  const failed = started.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  return { control, nodes: started.map((r) => (r as PromiseFulfilledResult<SimNode>).value) };
}

/** Adds the services {@link WEB} and {@link CLI}, instances 0 and 1 of WEB and 0 of CLI; returns WEB's instance IPs. */
export async function addWebAndClient(w: World): Promise<string[]> {
  await w.ctl(["service", "add", WEB]);
  await w.ctl(["service", "add", CLI]);
  const iip: string[] = [];
  for (const n of [0, 1]) iip.push((await w.ctl(["instance", "add", WEB, String(n)])).split(" ").at(-2)!);
  await w.ctl(["instance", "add", CLI, "0"]);
  return iip;
}

/** What {@link webAndClient} set up. */
export interface WebAndClient {
  /** WEB's RR ServiceIP. */
  rr: string;
  /** CLI instance 0's InstanceIP. */
  cliIip: string;
  /** WEB instance 0 (`web0`), running `serverArgv`. */
  web: SimInstance;
  /** CLI instance 0 (`client`), idle. */
  cli: SimInstance;
}

/**
 * Adds {@link WEB} and {@link CLI} with instance 0 each, runs `serverArgv` as `web0` on `serverNode` and
 * an idle `client` on `clientNode` (the two-node kernel fast path tests).
 */
export async function webAndClient(
  w: World,
  serverNode: SimNode,
  clientNode: SimNode,
  serverArgv: string[],
): Promise<WebAndClient> {
  await w.ctl(["service", "add", WEB]);
  await w.ctl(["service", "add", CLI]);
  await w.ctl(["instance", "add", WEB, "0"]);
  const cliIip = (await w.ctl(["instance", "add", CLI, "0"])).split(" ").at(-2)!;
  const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<
    { job_name: string; service_ip_list: Array<{ Address: string }> }
  >;
  const rr = svc.find((s) => s.job_name === WEB)!.service_ip_list[0].Address;
  const web = await w.instance("web0", serverArgv);
  const cli = await w.instance("client");
  await deploy(serverNode, WEB, 0, web.pid);
  await deploy(clientNode, CLI, 0, cli.pid);
  return { rr, cliIip, web, cli };
}

/** Deploys instance `n` of `job` (the process `pid`) on `node`; asserts the API accepts it. */
export async function deploy(node: SimNode, job: string, n: number, pid: number): Promise<void> {
  const r = await node.api.post("/container/deploy", {
    pid,
    serviceName: job,
    instanceNumber: n,
    portMappings: "",
  });
  assertEquals(r.status, 200, r.body);
}

/** Runs `argv` in `inst`'s network namespace; returns the exit code and trimmed output. */
export async function execIn(
  inst: SimInstance,
  argv: string[],
): Promise<{ code: number; out: string; err: string }> {
  const c = await new Deno.Command("nsenter", {
    args: ["-t", String(inst.pid), "-n", ...argv],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: c.code, out: dec.decode(c.stdout).trim(), err: dec.decode(c.stderr).trim() };
}

/** Runs `argv` in `inst`'s network namespace; returns stdout (trimmed) or throws with stderr. */
export async function runIn(inst: SimInstance, argv: string[]): Promise<string> {
  const r = await execIn(inst, argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")}: ${r.err || `exit ${r.code}`}`);
  return r.out;
}

/** The instance name answering a conversation (`proto` of the test tool) to `host`:80 from `client`. */
export async function ask(client: SimInstance, host: string, proto = "tcp-client"): Promise<string> {
  return (await runIn(client, [...TOOL, proto, host, "80", "q"])).split(":")[0];
}

/**
 * Runs `fn` with a new {@link World}; prints the daemons' diagnostics (each cut to `cut` characters)
 * when it throws; always destroys the world and asserts nothing was left behind.
 */
export async function withWorld(fn: (w: World) => Promise<void>, cut = 2000): Promise<void> {
  const w = new World();
  try {
    await fn(w);
  } catch (e) {
    await w.diagnose((l) => console.error(l.slice(0, cut)));
    throw e;
  } finally {
    assertEquals(await w.destroy(), []);
  }
}
