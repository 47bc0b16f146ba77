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
import { statusCmd, tableCmd } from "./inspect.ts";
import { dnsCmd } from "./dns.ts";

/** Builds the program with all subcommands. */
export function buildProgram() {
  return new Command("netmanager")
    .description("node network manager for edge orchestration (Oakestra-compatible)")
    .version(VERSION, "-V, --version")
    .showHelpAfterError()
    .addCommand(daemonCmd())
    .addCommand(debugCmd())
    .addCommand(tableCmd())
    .addCommand(statusCmd())
    .addCommand(dnsCmd())
    .addCommand(new Command("version").description("print the version").action(() => console.log(VERSION)))
    .addCommand(cleanCmd())
    .addCommand(controlCmd())
    .addCommand(demoCmd())
    .addCommand(demoServeCmd(), { hidden: true })
    .addCommand(demoGetCmd(), { hidden: true });
}
