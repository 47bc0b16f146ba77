/**
 * A subcommand whose code is loaded only when it runs: `netmanager daemon` then never loads what
 * `control` and `demo` need (the MQTT broker and client, the simulated cluster: ~10 MB resident).
 * The placeholder takes every argument as it is and hands them to the real command, so options,
 * nested subcommands and `--help` behave exactly as if it had been registered directly.
 *
 * @example
 * ```ts
 * import { Command } from "@commander-js/extra-typings";
 * new Command("netmanager").addCommand(
 *   lazyCommand("control", "run the control plane", async () => (await import("./control.ts")).controlCmd()),
 * );
 * ```
 */
import { Command } from "@commander-js/extra-typings";
import { usageErrorsExit2 } from "./common.ts";

/** A placeholder for the command `load()` builds (named `name`), shown in help with `description`. */
export function lazyCommand(
  name: string,
  description: string,
  load: () => Promise<Command<unknown[], Record<string, unknown>>>,
): Command<[string[]]> {
  return new Command(name)
    .description(description)
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument("[args...]")
    .action(async (args: string[]) => {
      const real = await load();
      // The real command gets the program's error style: usage errors exit 2 with one `netmanager:` line.
      const program = usageErrorsExit2(
        new Command("netmanager").enablePositionalOptions().showHelpAfterError().addCommand(real),
      );
      await program.parseAsync([name, ...args], { from: "user" });
    });
}
