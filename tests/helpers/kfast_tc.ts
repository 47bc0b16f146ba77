/**
 * The opening the tc-mode netns tests (issue 16, tests/netns/kfast_tc_*_test.ts) share: a control plane
 * on the embedded broker and `count` nodes whose daemons run the kernel fast path with the tc programs
 * over plain tunnels (the kernel path is not encrypted), `workers` data-plane workers each; for most,
 * the standard web service (one instance, on node 2) and its client (on node 1).
 *
 * @example
 * ```ts
 * import { carried, tcStatus, withTcPair } from "./kfast_tc.ts";
 * await withTcPair({ server: ["iperf3", "-s", "-p", "5201"] }, async ({ n1, rr }) => {
 *   console.log(rr, carried(await tcStatus(n1)));
 * });
 * ```
 */
import type { SimNode } from "../../src/demo/world.ts";
import type { World } from "../../src/demo/world.ts";
import { withEnv } from "./setup.ts";
import { threeNodes, type WebAndClient, webAndClient, withWorld } from "./world.ts";

/** What the tests read of a node's kernel fast path in `/status` (null: not running). */
export interface TcStatus {
  kernelFastPath: { moved: number; decided?: number; pins: number } | null;
}

/** A node's `/status`, typed as the caller reads it (at least {@link TcStatus}). */
export function tcStatus<T extends TcStatus = TcStatus>(n: SimNode): Promise<T> {
  return n.api.getJson("/status") as Promise<T>;
}

/** Flows on the kernel path: moved from the TUN, or decided by the programs from their first packet. */
export function carried(s: TcStatus): number {
  return (s.kernelFastPath?.moved ?? 0) + (s.kernelFastPath?.decided ?? 0);
}

/**
 * Runs `fn` in a world with a control plane (embedded broker) and `count` nodes in tc mode
 * (KernelFastPath tc, TunnelSecurity off, `workers` data-plane workers, default 1); all removed after.
 */
export function withTcNodes(
  opts: { count: number; workers?: number },
  fn: (w: World, nodes: SimNode[]) => Promise<void>,
): Promise<void> {
  return withEnv(
    { KernelFastPath: "tc", TunnelSecurity: "off", DataPlaneWorkers: String(opts.workers ?? 1) },
    () =>
      withWorld(async (w) => {
        const { nodes } = await threeNodes(w, { broker: "embedded", count: opts.count });
        await fn(w, nodes);
      }),
  );
}

/** Two tc-mode nodes with the web service's instance 0 on n2 and the client on n1. */
export interface TcPair extends WebAndClient {
  w: World;
  n1: SimNode;
  n2: SimNode;
}

/**
 * {@link withTcNodes} with two nodes, then the web service's instance 0 (running `server`) deployed on
 * node 2 and the client on node 1 ({@link webAndClient}).
 */
export function withTcPair(
  opts: { server: string[]; workers?: number },
  fn: (p: TcPair) => Promise<void>,
): Promise<void> {
  return withTcNodes({ count: 2, workers: opts.workers }, async (w, [n1, n2]) => {
    const wc = await webAndClient(w, n2, n1, opts.server);
    await fn({ w, n1, n2, ...wc });
  });
}
