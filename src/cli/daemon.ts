/**
 * `netmanager daemon` and `netmanager debug`: run the node daemon. The options are declared in
 * `daemon_flags.ts` (shared with the commander-free fast path of `main.ts`), the work is done by
 * `daemon_run.ts`.
 */
import { Command, Option } from "@commander-js/extra-typings";
import { DAEMON_OPTIONS, type DaemonFlags } from "./daemon_flags.ts";

function daemonCommand(name: string, description: string, forceDebug: boolean) {
  const cmd = new Command(name).description(description);
  for (const o of DAEMON_OPTIONS) {
    const opt = new Option(`--${o.name} ${o.value}`, o.help);
    cmd.addOption(o.default ? opt.default(forceDebug ? o.default.debug : o.default.daemon) : opt);
  }
  return cmd.action(async () => {
    // Built from the table, so commander cannot type the options: the table's keys are DaemonFlags'.
    const { runDaemon } = await import("./daemon_run.ts");
    await runDaemon(cmd.opts() as unknown as DaemonFlags, forceDebug);
  });
}

/** `netmanager daemon`. */
export function daemonCmd() {
  return daemonCommand("daemon", "run the node network manager", false);
}

/** `netmanager debug`: the daemon with debug logging. */
export function debugCmd() {
  return daemonCommand("debug", "run the daemon with debug logging", true);
}
