/**
 * What this build is: version and commit (baked in by `scripts/package.sh` and `scripts/compile.sh`),
 * plus the Deno runtime and architecture it runs on.
 *
 * @example
 * ```ts
 * const info = await buildInfo();
 * console.log(formatBuildInfo(info)); // "netmanager 0.1.0-dev\ncommit  1a2b3c4\n..."
 * ```
 */

/** The version of this build. The build scripts rewrite this line. */
export const VERSION = "0.1.0-dev";

/** The git commit of this build; empty in a checkout (then read from git at run time). */
export const COMMIT = "";

/** Version, commit, runtime and architecture of the running program. */
export interface BuildInfo {
  version: string;
  /** Short commit hash, "unknown" when neither baked in nor readable from git. */
  commit: string;
  deno: string;
  /** CPU architecture, as `uname -m` names it (x86_64, aarch64). */
  arch: string;
  os: string;
}

/** The commit: the baked-in one, else `git rev-parse` in the source checkout, else "unknown". */
export async function buildCommit(): Promise<string> {
  if (COMMIT) return COMMIT;
  const here = new URL(".", import.meta.url);
  if (here.protocol !== "file:") return "unknown";
  try {
    const out = await new Deno.Command("git", {
      args: ["-C", here.pathname, "rev-parse", "--short", "HEAD"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const hash = new TextDecoder().decode(out.stdout).trim();
    return out.success && hash ? hash : "unknown";
  } catch {
    return "unknown"; // no git, or not allowed to run it
  }
}

/** Collects the {@link BuildInfo} of the running program. */
export async function buildInfo(): Promise<BuildInfo> {
  return {
    version: VERSION,
    commit: await buildCommit(),
    deno: Deno.version.deno,
    arch: Deno.build.arch,
    os: Deno.build.os,
  };
}

/** The text `netmanager version` prints. */
export function formatBuildInfo(info: BuildInfo): string {
  return [
    `netmanager ${info.version}`,
    `commit  ${info.commit}`,
    `deno    ${info.deno}`,
    `arch    ${info.arch} (${info.os})`,
  ].join("\n");
}
