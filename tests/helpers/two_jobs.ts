/**
 * Two services across two nodes of a {@link World} with a control plane (the NAT, relay and
 * rebinding tests): each service gets one instance (a `servers` process answering its name on
 * port 80) deployed on its node (`world.ts`'s `deploy`); the caller asks across with {@link askJob}.
 *
 * @example
 * ```ts
 * import { World } from "../../src/demo/world.ts";
 * import { askJob, twoJobs } from "./two_jobs.ts";
 * const w = new World();
 * await w.control("192.168.77.254");
 * const n1 = await w.clusterNode("n1", "192.168.77.1", "192.168.77.254");
 * const n2 = await w.clusterNode("n2", "192.168.77.2", "192.168.77.254");
 * const j = await twoJobs(w, [n1, "app.ns.a.ns"], [n2, "app.ns.b.ns"]);
 * console.log(await askJob(w, j.a, "tcp-client", j.rrB)); // "b0"
 * await w.destroy();
 * ```
 */
import { TOOL } from "./node.ts";
import { deploy } from "./world.ts";
import type { SimInstance, SimNode, World } from "../../src/demo/world.ts";

/** Sends `msg` from `from` to `host`:80 with the test tool's `proto` client; the answering instance's name. */
export async function askJob(
  w: World,
  from: SimInstance,
  proto: string,
  host: string,
  msg = "q",
): Promise<string> {
  return (await w.execIn(from, [...TOOL, proto, host, "80", msg])).split(":")[0];
}

/** What {@link twoJobs} set up: the instances `a0`/`b0`, their InstanceIPs and the services' RR IPs. */
export interface TwoJobs {
  a: SimInstance;
  b: SimInstance;
  iipA: string;
  iipB: string;
  rrA: string;
  rrB: string;
}

/** Registers services A and B with one instance each and deploys `a0` on node A, `b0` on node B. */
export async function twoJobs(
  w: World,
  [nodeA, jobA]: readonly [SimNode, string],
  [nodeB, jobB]: readonly [SimNode, string],
): Promise<TwoJobs> {
  await w.ctl(["service", "add", jobA]);
  await w.ctl(["service", "add", jobB]);
  const iipA = (await w.ctl(["instance", "add", jobA, "0"])).split(" ").at(-2)!;
  const iipB = (await w.ctl(["instance", "add", jobB, "0"])).split(" ").at(-2)!;
  const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<
    { job_name: string; service_ip_list: Array<{ Address: string }> }
  >;
  const rr = (job: string) => svc.find((s) => s.job_name === job)!.service_ip_list[0].Address;
  const a = await w.instance("a0", [...TOOL, "servers", "80", "a0"]);
  const b = await w.instance("b0", [...TOOL, "servers", "80", "b0"]);
  await deploy(nodeA, jobA, 0, a.pid);
  await deploy(nodeB, jobB, 0, b.pid);
  return { a, b, iipA, iipB, rrA: rr(jobA), rrB: rr(jobB) };
}
