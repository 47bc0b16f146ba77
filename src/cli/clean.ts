/**
 * `netmanager clean`: remove everything this node created (Kudo's `clean_node`).
 */
import { Command } from "@commander-js/extra-typings";
import { ApiClient } from "../api/client.ts";
import { EnvironmentManager, StateStore } from "../env/mod.ts";
import { removeClusterCertificate } from "../secure/node_security.ts";
import { AlreadyRunningError, StateLock } from "../sys/lock.ts";
import { configFromFlags, DEFAULT_SOCKET, fail } from "./common.ts";

/** `netmanager clean`. */
export function cleanCmd() {
  return new Command("clean")
    .description(
      "remove all networking this node created: instances' veths and namespaces, bridge, TUN, rules, state",
    )
    .option("--cfg <file>", "netcfg.json (default /etc/netmanager/netcfg.json)")
    .option("--tuncfg <file>", "tuncfg.json (default /etc/netmanager/tuncfg.json)")
    .option("--state-dir <dir>", "state directory")
    .option("--socket <path>", "unix socket of a daemon that must not be running", DEFAULT_SOCKET)
    .option("--json", "print what was removed as JSON")
    .action(async (opts) => {
      try {
        const probe = new ApiClient(opts.socket);
        const running = await probe.request("GET", "/status").then(() => true, () => false);
        probe.close();
        if (running) throw new Error(`a daemon is running on ${opts.socket}: stop it first`);
        const cfg = await configFromFlags(opts);
        // A daemon on another socket still holds the state directory: refuse as well.
        const lock = await holdState(cfg.net.StateDir);
        // A corrupt state file, or one that is not a regular file, is no reason to leave the node
        // dirty: clean then removes what the bridge and our chains show, and the file itself.
        const env = new EnvironmentManager({
          cfg,
          store: new StateStore(cfg.net.StateDir),
          ignoreBadState: true,
        });
        let report;
        let kfast;
        let tcPrograms = 0;
        try {
          // The tc fast path's programs (their maps go with them), before the bridge they sit on.
          const { cleanTcPrograms } = await import("../kfast/tc_loader.ts");
          tcPrograms = cleanTcPrograms();
          report = await env.cleanNode();
          // The kernel fast path's device, nft table, rules and routing tables (a killed daemon's too).
          const { cleanKernelFastPath } = await import("../kfast/kernel.ts");
          kfast = await cleanKernelFastPath();
          // The certificate the control plane sent is a cache (asked for again at start); the tunnel
          // identity stays, as the MQTT credential: certificates signed offline are bound to it.
          await removeClusterCertificate(cfg.net.StateDir);
          if (lock) await Deno.remove(lock.path).catch(() => {}); // the state dir is left empty
        } finally {
          lock?.release();
        }
        if (opts.json) {
          console.log(
            JSON.stringify({ ...report, kernelFastPath: kfast, kernelFastPathTcPrograms: tcPrograms }),
          );
        } else {
          console.log(
            `removed ${report.instances} instance(s); links: ${report.links.join(", ") || "none"}; ` +
              `namespaces: ${report.netns.join(", ") || "none"}; rules: ${report.rules ? "yes" : "none"}; ` +
              `state file: ${report.stateFile ? "yes" : "none"}; kernel fast path: ` +
              (kfast && (kfast.table || kfast.device || kfast.rules > 0) || tcPrograms > 0 ? "yes" : "none"),
          );
        }
      } catch (e) {
        fail(e);
      }
    });
}

async function holdState(dir: string): Promise<StateLock | undefined> {
  const exists = await Deno.stat(dir).then((s) => s.isDirectory, () => false);
  if (!exists) return undefined; // nothing ever ran here; do not create the directory
  try {
    return StateLock.acquire(dir);
  } catch (e) {
    if (e instanceof AlreadyRunningError) throw new Error(`${e.message}: stop it first`);
    throw e;
  }
}
