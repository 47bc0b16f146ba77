/**
 * `netmanager version`: version, commit, Deno version and architecture.
 */
import { Command } from "@commander-js/extra-typings";
import { buildInfo, formatBuildInfo } from "../version.ts";

/** `netmanager version [--json]`. */
export function versionCmd() {
  return new Command("version")
    .description("print the version, commit, Deno version and architecture")
    .option("--json", "print JSON")
    .action(async (opts) => {
      const info = await buildInfo();
      console.log(opts.json ? JSON.stringify(info) : formatBuildInfo(info));
    });
}
