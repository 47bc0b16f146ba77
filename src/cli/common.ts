/**
 * Helpers shared by the subcommands: config loading from flags, one-line errors.
 */
import { DEFAULT_PATHS, loadNodeConfig, type NodeConfig } from "../config/mod.ts";

/** Flags common to commands that need the node configuration. */
export interface ConfigFlags {
  cfg?: string;
  tuncfg?: string;
  stateDir?: string;
  subnet?: string;
}

/** Loads the node configuration from the flags (flags override file and environment). */
export function configFromFlags(flags: ConfigFlags): Promise<NodeConfig> {
  return loadNodeConfig({
    netcfgPath: flags.cfg,
    tuncfgPath: flags.tuncfg,
    subnet: flags.subnet,
    netOverrides: { StateDir: flags.stateDir },
  });
}

/** Default socket path. */
export const DEFAULT_SOCKET: string = DEFAULT_PATHS.socket;

/** Prints one clear line to stderr and exits non-zero. */
export function fail(e: unknown, code = 1): never {
  const msg = e instanceof Error ? e.message : String(e);
  console.error(`netmanager: ${msg}`);
  Deno.exit(code);
}
