/**
 * netmanager entry point: runs the CLI. A plain `daemon` / `debug` command line starts the daemon
 * without loading commander and the other subcommands (see src/cli/daemon_flags.ts); everything
 * else, help and usage errors included, goes through the full command line.
 */
import { parseDaemonArgv } from "./src/cli/daemon_flags.ts";

if (import.meta.main) {
  const daemon = parseDaemonArgv(Deno.args);
  if (daemon) {
    await (await import("./src/cli/daemon_run.ts")).runDaemon(daemon.flags, daemon.debug);
  } else {
    const { buildProgram } = await import("./src/cli/main.ts");
    await buildProgram().parseAsync(Deno.args, { from: "user" });
  }
}
