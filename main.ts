/**
 * netmanager entry point: builds the CLI and runs it.
 */
import { buildProgram } from "./src/cli/main.ts";

if (import.meta.main) {
  await buildProgram().parseAsync(Deno.args, { from: "user" });
}
