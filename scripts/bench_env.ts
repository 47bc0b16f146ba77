/**
 * Benchmark (not a test): instance deploy and undeploy latency as the NodeEngine sees it, over the
 * unix socket of a daemon running in its own node namespace. 50 "containers" (processes in fresh
 * network namespaces) are deployed one after another, each with one port mapping, then undeployed.
 * Prints JSON with p50/p99/mean in milliseconds.
 *
 *   deno run -A scripts/bench_env.ts [--instances 50] [--quick]
 *
 * `--quick` deploys 5 instances (a smoke run). SIGINT/SIGTERM remove everything before exiting.
 */
import { cleanupAll } from "../tests/helpers/netns.ts";
import { deployBody, TestContainer, TestNode } from "../tests/helpers/node.ts";
import { afterInterrupt, onInterrupt, QUICK } from "./bench_common.ts";

const at = Deno.args.indexOf("--instances");
const n = at >= 0 ? Number(Deno.args[at + 1]) : QUICK ? 5 : 50;
if (!Number.isInteger(n) || n < 1 || n > 200) throw new Error("--instances needs an integer from 1 to 200");

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return {
    p50: +q(0.5).toFixed(3),
    p99: +q(0.99).toFixed(3),
    mean: +(s.reduce((a, b) => a + b, 0) / s.length).toFixed(3),
    min: +s[0].toFixed(3),
    max: +s[s.length - 1].toFixed(3),
  };
}

const cs: TestContainer[] = [];
let node: TestNode | undefined;
const cleanup = async () => {
  for (const c of cs) await c.stop();
  await node?.stop();
  await cleanupAll();
};
const stopGuard = onInterrupt(cleanup, (QUICK ? 100 : 280) * 1000);
try {
  const nd = node = await TestNode.start("10.18.0.0/24,fc00::/120");
  await nd.register();
  for (let i = 0; i < n; i++) cs.push(await TestContainer.start());
  const job = "bench.bench.svc.ns";
  // warm-up: one deploy/undeploy pair (JIT, first netlink socket, first iptables-restore)
  await nd.api.post("/container/deploy", deployBody(cs[0].pid, job, 999, "30999:80"));
  await nd.api.post("/container/undeploy", { serviceName: job, instanceNumber: 999 });
  await nd.settled();
  const deploy: number[] = [];
  const undeploy: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await nd.api.post("/container/deploy", deployBody(cs[i].pid, job, i, `${30000 + i}:80`));
    deploy.push(performance.now() - t);
    if (r.status !== 200) throw new Error(`deploy ${i}: ${r.status} ${r.body}`);
  }
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await nd.api.post("/container/undeploy", { serviceName: job, instanceNumber: i });
    undeploy.push(performance.now() - t);
    if (r.status !== 200) throw new Error(`undeploy ${i}: ${r.status} ${r.body}`);
  }
  const tSettle = performance.now();
  await nd.settled(60000);
  const settleMs = performance.now() - tSettle;
  // Concurrent burst: all deploys at once (group-committed iptables batches).
  const t0 = performance.now();
  const rs = await Promise.all(
    cs.map((c, i) => nd.api.post("/container/deploy", deployBody(c.pid, job, i, `${30000 + i}:80`))),
  );
  const burst = performance.now() - t0;
  if (rs.some((r) => r.status !== 200)) throw new Error("burst deploy failed");
  console.log(JSON.stringify(
    {
      bench: "instance deploy/undeploy via the unix-socket API",
      instances: n,
      portMappingsPerInstance: 1,
      deployMs: stats(deploy),
      undeployMs: stats(undeploy),
      backgroundRemovalDrainAfterLastUndeployMs: +settleMs.toFixed(1),
      concurrentDeployAllMs: +burst.toFixed(1),
      concurrentDeployPerInstanceMs: +(burst / n).toFixed(3),
    },
    null,
    2,
  ));
} finally {
  await afterInterrupt();
  stopGuard();
  await cleanup();
}
