/**
 * The set-up the netns tests share: one node with its containers, a cluster of nodes with the
 * standard two-node table (a client job on node 1, a web job behind a round-robin ServiceIP on
 * node 2), CLI commands against a node, and waiting for a condition. Everything started here is
 * stopped and removed afterwards, also when the test fails; a failure prints the daemons' logs.
 *
 * @example
 * ```ts
 * import { eventually, twoNodeTable, WEB_RR, withCluster } from "./setup.ts";
 * await withCluster(2, twoNodeTable("app.ns.cli.ns", "app.ns.web.ns"), async (c) => {
 *   const cli = await c.deploy(1, "app.ns.cli.ns", 0);
 *   await c.deploy(2, "app.ns.web.ns", 0);
 *   await eventually(async () =>
 *     (await cli.c.exec(["ping", "-c", "1", "-W", "1", WEB_RR.v4])).code === 0, Boolean);
 * });
 * ```
 */
import { cleanupAll, run } from "./netns.ts";
import { nodeSubnet, type QueryResult, tableInstance, TestCluster } from "./cluster.ts";
import { TestContainer, TestNode, TOOL } from "./node.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Instance 0 of the client job on node 1 (namespace address: node 1's first instance address). */
export const CLIENT_IP = { v4: "10.30.0.10", v6: "fdff::10" };
/** Instance 0 of the web job on node 2. */
export const WEB_IP = { v4: "10.30.0.2", v6: "fdff::2" };
/** The web job's round-robin ServiceIP. */
export const WEB_RR = { v4: "10.30.0.1", v6: "fdff:2000::1" };

/**
 * Instance `n` of a static table at InstanceIP 10.30.0.<last> / fdff::<last>, in slot `slot` (default 2,
 * the first instance address) of node `node`'s subnet, on host 192.168.77.<node>, behind `rr` if given.
 */
export function instanceOn(
  o: { n: number; node: number; last: number; slot?: number; rr?: { v4: string; v6: string } },
): Record<string, unknown> {
  const s = nodeSubnet(o.node);
  const slot = o.slot ?? 2;
  return tableInstance({
    n: o.n,
    instanceIp: `10.30.0.${o.last}`,
    instanceIp6: `fdff::${o.last}`,
    nsip: s.first4(slot),
    nsip6: s.first6(slot),
    hostIp: `192.168.77.${o.node}`,
    rr: o.rr,
  });
}

/** The client job's table entry: instance 0 on node 1 at its first instance address ({@link CLIENT_IP}). */
export function clientEntry(job: string): QueryResult {
  return { app_name: job, instance_list: [instanceOn({ n: 0, node: 1, last: 10 })] };
}

/** The web job's table entry: instance 0 on node 2 at its first instance address ({@link WEB_IP}), behind {@link WEB_RR}. */
export function webEntry(job: string): QueryResult {
  return { app_name: job, instance_list: [instanceOn({ n: 0, node: 2, last: 2, rr: WEB_RR })] };
}

/**
 * One instance as Oakestra's cluster manager sends it in a table-query result (instance IP v6 =
 * `fdff::<last v4 byte>`, RR v6 = `fdff:2000::1`), for tests that play the cluster over MQTT.
 */
export function oakestraInstance(
  n: number,
  nsip: string,
  nsip6: string,
  host: string,
  iip: string,
  rr?: string,
): Record<string, unknown> {
  const sips: Array<Record<string, string>> = [];
  if (rr) sips.push({ IpType: "RR", Address: rr, Address_v6: "fdff:2000::1" });
  sips.push({ IpType: "instance_ip", Address: iip, Address_v6: `fdff::${iip.split(".")[3]}` });
  return {
    instance_number: n,
    instance_ip: iip,
    instance_ip_v6: `fdff::${iip.split(".")[3]}`,
    namespace_ip: nsip,
    namespace_ip_v6: nsip6,
    host_ip: host,
    host_port: 50103,
    service_ip: sips,
  };
}

/** The standard two-node table: {@link clientEntry} and {@link webEntry}. */
export function twoNodeTable(clientJob: string, webJob: string): QueryResult[] {
  return [clientEntry(clientJob), webEntry(webJob)];
}

/**
 * Runs `fn` with a standalone node (`subnet`, extra daemon `args`) and a list to put containers in;
 * prints the end of the daemon's log when `fn` throws; always stops the containers and the node.
 */
export async function withNode(
  fn: (node: TestNode, cs: TestContainer[]) => Promise<void>,
  opts: { subnet?: string; args?: string[] } = {},
): Promise<void> {
  const node = await TestNode.start(opts.subnet, opts.args);
  const cs: TestContainer[] = [];
  try {
    await fn(node, cs);
  } catch (e) {
    console.error((await node.log()).slice(-6000));
    throw e;
  } finally {
    for (const c of cs) await c.stop();
    await node.stop();
    await cleanupAll();
  }
}

/**
 * Runs `fn` with a cluster of `n` nodes that load `table` (see {@link TestCluster.start} for
 * `extraArgs` and `cfgFor`); prints the daemons' logs when `fn` throws; always stops everything.
 */
export async function withCluster(
  n: number,
  table: QueryResult[],
  fn: (c: TestCluster) => Promise<void>,
  opts: { extraArgs?: string[]; cfgFor?: (i: number) => Record<string, unknown> } = {},
): Promise<void> {
  const c = await TestCluster.start(n, table, opts.extraArgs, opts.cfgFor);
  try {
    await fn(c);
  } catch (e) {
    console.error(await c.logs());
    throw e;
  } finally {
    await c.stop();
    await cleanupAll();
  }
}

/**
 * Runs the test tool's `cmd` (e.g. `tcp-client`, `udp-client`) in the cluster's first container
 * against `host:port` with `text`; its trimmed output, or an error with the tool's stderr.
 */
export async function firstClient(
  c: TestCluster,
  cmd: string,
  host: string,
  port: number,
  text: string,
): Promise<string> {
  const r = await c.containers[0].exec([...TOOL, cmd, host, String(port), text]);
  if (r.code !== 0) throw new Error(`${cmd} ${host}:${port} failed: ${r.stderr}`);
  return r.stdout.trim();
}

/**
 * Calls `fn` until it resolves (every `stepMs`), returning its value; after `ms` the last error is
 * thrown as it was. For readiness waits where any answer will do (see {@link eventually} to wait for a
 * particular one).
 */
export async function retry<T>(fn: () => Promise<T>, ms = 10000, stepMs = 200): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, stepMs));
    }
  }
}

/**
 * Calls `fn` every `stepMs` until `ok` accepts its value (errors count as "not yet"); returns that
 * value, or throws "timed out waiting for <what>" after `ms` with the last value and error.
 * For a plain condition pass `Boolean` as `ok`.
 */
export async function eventually<T>(
  fn: () => Promise<T>,
  ok: (v: T) => boolean,
  ms = 8000,
  what = "the condition",
  stepMs = 100,
): Promise<T> {
  const end = Date.now() + ms;
  let last: T | undefined;
  let err: unknown;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (ok(last)) return last;
    } catch (e) {
      err = e;
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`timed out waiting for ${what} (${ms} ms); last ${JSON.stringify(last)} ${err ?? ""}`);
}

/** The options that point a command at `node`'s files: its configs, state dir and `socket`. */
export function nodeFileArgs(node: TestNode, socket = node.socket): string[] {
  return [
    "--cfg",
    `${ROOT}config/netcfg.json`,
    "--tuncfg",
    `${ROOT}config/tuncfg.json`,
    "--state-dir",
    `${node.dir}/state`,
    "--socket",
    socket,
  ];
}

/** Runs `netmanager <args>` in `node`'s network namespace (as the daemon runs there). */
export function nodeCli(node: TestNode, args: string[]): ReturnType<typeof run> {
  return run([
    "nsenter",
    `--net=/run/netns/${node.ns}`,
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}main.ts`,
    ...args,
  ]);
}

/**
 * Runs `fn` with the environment variables `vars` set (the daemons a test starts read their
 * configuration overrides from it) and deletes them afterwards, also when it throws.
 */
export async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  try {
    return await fn();
  } finally {
    for (const k of Object.keys(vars)) Deno.env.delete(k);
  }
}
