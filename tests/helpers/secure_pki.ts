/**
 * Shared set-up of the secure-tunnel tests: the static table they use (a client on node 1, the
 * `web` service's instances on the next nodes, all on the 192.168.77.0/24 underlay), the offline
 * certificate flow (`netmanager cert ca|show|sign`) and the per-node configuration it yields.
 *
 * @example
 * ```ts
 * import { offlinePki, pkiNodeConfig, secureTable } from "./secure_pki.ts";
 * const dir = await Deno.makeTempDir();
 * await offlinePki(dir, 2);
 * const table = secureTable(1); // client on node 1, web0 on node 2
 * const cfg = pkiNodeConfig(dir, () => "require");
 * console.log(table.length, cfg(1).TunnelCertFile);
 * ```
 */
import { nodeSubnet, type QueryResult, tableInstance } from "./cluster.ts";
import { selfCommand } from "../../src/sys/process.ts";
import { runTool } from "../../src/sys/command.ts";

/** The client job (one instance on node 1). */
export const SECURE_CLI = "app.ns.cli.ns";
/** The served job (instance `k` on node `k + 2`, RR 10.30.0.1 / fdff:2000::1). */
export const SECURE_WEB = "app.ns.web.ns";

/** Runs this checkout's `netmanager` with `args`; its trimmed stdout, or an error with its stderr. */
export async function netmanagerCli(args: string[]): Promise<string> {
  const [cmd, ...pre] = selfCommand();
  const r = await runTool(cmd, [...pre, ...args]);
  if (r.code !== 0) throw new Error(`netmanager ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.trim();
}

/**
 * A CA in `<dir>/ca` and, for nodes 1…`nodes`, a state dir `<dir>/state<i>` whose identity the CA
 * certified as `node-<i>` in `<dir>/node<i>.crt` (the offline `cert` flow).
 */
export async function offlinePki(dir: string, nodes: number, caName = "lab"): Promise<void> {
  // Independent CLI runs side by side: the CA and every node's identity, then every signature.
  const ids = Array.from({ length: nodes }, (_, k) => k + 1);
  const [, ...keys] = await Promise.all([
    netmanagerCli(["cert", "ca", "--out", `${dir}/ca`, "--name", caName]),
    ...ids.map((i) => netmanagerCli(["cert", "show", "--state-dir", `${dir}/state${i}`])),
  ]);
  await Promise.all(ids.map((i) =>
    netmanagerCli([
      "cert",
      "sign",
      "--ca",
      `${dir}/ca`,
      "--node-id",
      `node-${i}`,
      "--public-key",
      keys[i - 1],
      "--out",
      `${dir}/node${i}.crt`,
    ])
  ));
}

/** Node `i`'s netcfg fields for the certificates {@link offlinePki} wrote, in the mode `mode(i)`. */
export function pkiNodeConfig(
  dir: string,
  mode: (i: number) => string,
  extra: Record<string, unknown> = {},
): (i: number) => Record<string, unknown> {
  return (i) => ({
    TunnelSecurity: mode(i),
    TunnelCertFile: `${dir}/node${i}.crt`,
    TunnelCaFile: `${dir}/ca/ca.json`,
    ...extra,
  });
}

/** `--state-dir` per node, matching {@link offlinePki}. */
export function pkiStateArgs(dir: string): (i: number) => string[] {
  return (i) => ["--state-dir", `${dir}/state${i}`];
}

/** The static table: the client 10.30.0.10 on node 1, `webInstances` web instances on nodes 2, 3, …. */
export function secureTable(webInstances: number): QueryResult[] {
  const client = nodeSubnet(1);
  return [
    {
      app_name: SECURE_CLI,
      instance_list: [tableInstance({
        n: 0,
        instanceIp: "10.30.0.10",
        instanceIp6: "fdff::10",
        nsip: client.first4(2),
        nsip6: client.first6(2),
        hostIp: "192.168.77.1",
      })],
    },
    {
      app_name: SECURE_WEB,
      instance_list: Array.from({ length: webInstances }, (_, k) => {
        const sn = nodeSubnet(k + 2);
        return tableInstance({
          n: k,
          instanceIp: `10.30.0.${k + 2}`,
          instanceIp6: `fdff::${k + 2}`,
          nsip: sn.first4(2),
          nsip6: sn.first6(2),
          hostIp: `192.168.77.${k + 2}`,
          rr: { v4: "10.30.0.1", v6: "fdff:2000::1" },
        });
      }),
    },
  ];
}
