/**
 * `netmanager config check [--cfg --tuncfg --subnet]`: loads and validates the node configuration
 * exactly as the daemon would, prints what it found, and touches nothing on the system (no links,
 * no rules, no state). Exit 0 when usable (warnings allowed), 1 when not.
 *
 * @example
 * ```sh
 * netmanager config check --cfg /etc/netmanager/netcfg.json --tuncfg /etc/netmanager/tuncfg.json
 * ```
 */
import { Command } from "@commander-js/extra-typings";
import { DEFAULT_PATHS, formatNodeSubnet, loadNodeConfig, type NodeConfig } from "../config/mod.ts";
import { formatPrefix4, formatPrefix6 } from "../addr/mod.ts";
import { fail } from "./common.ts";
import { checkTunnelFiles } from "../secure/node_security.ts";

/** The summary `config check` prints for a usable configuration. */
export function describeConfig(cfg: NodeConfig, paths: { netcfg: string; tuncfg: string }): string {
  const n = cfg.net;
  const t = cfg.tun;
  const lines = [
    `netcfg     ${paths.netcfg}`,
    `tuncfg     ${paths.tuncfg}`,
    `mode       ${
      cfg.standaloneSubnet
        ? `standalone, subnet ${formatNodeSubnet(cfg.standaloneSubnet)}`
        : `cluster ${n.ClusterUrl}:${n.ClusterMqttPort}${n.MqttCert ? " (TLS)" : ""}`
    }`,
    `node       ${
      n.NodePublicAddress === "0.0.0.0" ? "address auto-detected" : n.NodePublicAddress
    }, port ${n.NodePublicPort}`,
    `tunnel     ${t.HostTunnelDeviceName} ${t.TunnelIP}, UDP ${t.TunnelPort}, MTU ${t.MTUsize}`,
    `services   ${formatPrefix4(cfg.serviceRange4)}, ${formatPrefix6(cfg.serviceRange6)}`,
    `wire       ${
      n.FastMode ? (n.JumboMode ? "fast + jumbo when the peer agrees" : "fast when the peer agrees") : "raw"
    }`,
    `metrics    ${n.MetricsAddress || "unix socket only"}`,
    `logs       ${n.LogFormat}${n.Debug ? ", debug" : ""}`,
  ];
  return lines.join("\n");
}

/** `netmanager config` with its `check` subcommand. */
export function configCmd() {
  const check = new Command("check")
    .description("validate netcfg.json and tuncfg.json without touching the system")
    .option("--cfg <file>", `netcfg.json (default ${DEFAULT_PATHS.netcfg})`)
    .option("--tuncfg <file>", `tuncfg.json (default ${DEFAULT_PATHS.tuncfg})`)
    .option("--subnet <cidr4[,cidr6]>", "also check a standalone subnet")
    .action(async (opts) => {
      let cfg: NodeConfig;
      let security: string;
      try {
        cfg = await loadNodeConfig({ netcfgPath: opts.cfg, tuncfgPath: opts.tuncfg, subnet: opts.subnet });
        // The tunnel certificate and CA files are read and verified too (nothing is created).
        security = await checkTunnelFiles(cfg.net);
      } catch (e) {
        fail(e);
      }
      for (const w of cfg.warnings) console.error(`netmanager: warning: ${w}`);
      for (const n of cfg.notes) console.error(`netmanager: note: ${n}`);
      console.log(describeConfig(cfg, {
        netcfg: opts.cfg ?? DEFAULT_PATHS.netcfg,
        tuncfg: opts.tuncfg ?? DEFAULT_PATHS.tuncfg,
      }));
      console.log(`security   ${security}`);
      console.log(cfg.warnings.length ? `OK with ${cfg.warnings.length} warning(s)` : "OK");
    });
  return new Command("config").description("work with the node configuration").addCommand(check);
}
