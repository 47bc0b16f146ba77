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
import { daemonCmd, debugCmd } from "./daemon.ts";
import { lazyCommand } from "./lazy.ts";
import { peersCmd, statusCmd, tableCmd } from "./inspect.ts";
import { configCmd } from "./config.ts";
import { pingCmd } from "./ping.ts";
import { usageErrorsExit2 } from "./common.ts";
import { versionCmd } from "./version.ts";
import { dnsCmd } from "./dns.ts";

const CONTROL = "run the cluster control plane (MQTT broker, allocation, table queries, HTTP API)";
const CERT = "tunnel certificates without a control plane: ca, show, sign, inspect";
const DEMO = "run the demo on simulated nodes (network namespaces); needs root";

/** Builds the program with all subcommands. */
export function buildProgram() {
  return usageErrorsExit2(
    new Command("netmanager")
      .description("node network manager for edge orchestration (Oakestra-compatible)")
      .version(VERSION, "-V, --version")
      .showHelpAfterError()
      .enablePositionalOptions() // lets `control <sub> --state-dir` reach the subcommand
      .addCommand(daemonCmd())
      .addCommand(debugCmd())
      .addCommand(tableCmd())
      .addCommand(statusCmd())
      .addCommand(peersCmd())
      .addCommand(pingCmd())
      .addCommand(configCmd())
      .addCommand(dnsCmd())
      .addCommand(versionCmd())
      .addCommand(cleanCmd())
      // Loaded when used: the daemon never pays for the control plane or the demo.
      .addCommand(lazyCommand("control", CONTROL, async () => (await import("./control.ts")).controlCmd()))
      .addCommand(lazyCommand("cert", CERT, async () => (await import("./cert.ts")).certCmd()))
      .addCommand(lazyCommand("demo", DEMO, async () => (await import("./demo.ts")).demoCmd()))
      .addCommand(lazyCommand("demo-serve", "", async () => (await import("./demo.ts")).demoServeCmd()), {
        hidden: true,
      })
      .addCommand(lazyCommand("demo-get", "", async () => (await import("./demo.ts")).demoGetCmd()), {
        hidden: true,
      }),
  );
}
