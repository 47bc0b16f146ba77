/**
 * The `netmanager` command line (commander): one subcommand per file in this directory.
 *
 * @example
 * ```ts
 * await buildProgram().parseAsync(["daemon", "--subnet", "10.18.0.64/26"], { from: "user" });
 * ```
 */
import { Command } from "@commander-js/extra-typings";
import { VERSION } from "../version.ts";
import { cleanCmd } from "./clean.ts";
import { controlCmd } from "./control.ts";
import { daemonCmd, debugCmd } from "./daemon.ts";
import { demoCmd, demoGetCmd, demoServeCmd } from "./demo.ts";
import { peersCmd, statusCmd, tableCmd } from "./inspect.ts";
import { configCmd } from "./config.ts";
import { pingCmd } from "./ping.ts";
import { usageErrorsExit2 } from "./common.ts";

/** Builds the program with all subcommands. */
export function buildProgram() {
  return usageErrorsExit2(
    new Command("netmanager")
      .description("node network manager for edge orchestration (Oakestra-compatible)")
      .version(VERSION, "-V, --version")
      .showHelpAfterError()
      .addCommand(daemonCmd())
      .addCommand(debugCmd())
      .addCommand(tableCmd())
      .addCommand(statusCmd())
      .addCommand(peersCmd())
      .addCommand(pingCmd())
      .addCommand(configCmd())
      .addCommand(new Command("version").description("print the version").action(() => console.log(VERSION)))
      .addCommand(cleanCmd())
      .addCommand(controlCmd())
      .addCommand(demoCmd())
      .addCommand(demoServeCmd(), { hidden: true })
      .addCommand(demoGetCmd(), { hidden: true }),
  );
}
