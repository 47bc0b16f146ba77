/**
 * Helpers shared by the subcommands: config loading from flags, one error style and exit statuses
 * (usage errors 2, runtime errors 1).
 */
import { DEFAULT_PATHS, loadNodeConfig, type NodeConfig } from "../config/mod.ts";

/** Flags common to commands that need the node configuration. */
export interface ConfigFlags {
  cfg?: string;
  tuncfg?: string;
  stateDir?: string;
  subnet?: string;
  metricsAddr?: string;
  logFormat?: string;
}

/** Loads the node configuration from the flags (flags override file and environment). */
export function configFromFlags(flags: ConfigFlags): Promise<NodeConfig> {
  return loadNodeConfig({
    netcfgPath: flags.cfg,
    tuncfgPath: flags.tuncfg,
    subnet: flags.subnet,
    netOverrides: { StateDir: flags.stateDir, MetricsAddress: flags.metricsAddr, LogFormat: flags.logFormat },
  });
}

/** Default socket path. */
export const DEFAULT_SOCKET: string = DEFAULT_PATHS.socket;

/** Exit status of a runtime error (the command was fine, doing it failed). */
export const EXIT_RUNTIME = 1;
/** Exit status of a usage error (unknown option, missing argument, bad flag value). */
export const EXIT_USAGE = 2;

/** A command-line mistake: {@link fail} exits with {@link EXIT_USAGE} for it. */
export class UsageError extends Error {
  /** Creates the error with `message` (what is wrong with the command line). */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Prints one line `netmanager: <message>` to stderr and exits: 2 for a {@link UsageError}, else
 * `code` (default 1).
 */
export function fail(e: unknown, code = EXIT_RUNTIME): never {
  const msg = e instanceof Error ? e.message : String(e);
  console.error(`netmanager: ${msg}`);
  Deno.exit(e instanceof UsageError ? EXIT_USAGE : code);
}

interface CommandLike {
  readonly commands: readonly CommandLike[];
  exitOverride(fn: (err: { exitCode: number; code: string }) => never): unknown;
  configureOutput(cfg: { outputError: (str: string, write: (s: string) => void) => void }): unknown;
}

/**
 * Gives `cmd` and its subcommands one error style (`netmanager: <message>`, as {@link fail}) and
 * exit status 2 for usage errors commander finds (unknown option, missing argument); help and
 * `--version` still exit 0.
 */
export function usageErrorsExit2<C extends CommandLike>(cmd: C): C {
  cmd.exitOverride((err) => Deno.exit(err.exitCode === 0 ? 0 : EXIT_USAGE));
  cmd.configureOutput({
    outputError: (str, write) => write(`netmanager: ${str.replace(/^error: /, "")}`),
  });
  for (const sub of cmd.commands) usageErrorsExit2(sub);
  return cmd;
}
