/**
 * The release packages (scripts/package.sh --arch all: archives and .debs for x86_64 and aarch64),
 * built once per suite run: when the suite runner (scripts/test.ts) names a cache directory in
 * `NETMANAGER_TEST_CACHE`, the first test file that needs them builds them there and the next reuses
 * them (the runner removes the directory at the end; files running at once take turns on a lock); a
 * file run alone builds into its own temp dir.
 *
 * @example
 * ```ts ignore
 * import { releaseDir } from "./release.ts";
 * const dir = await releaseDir(); // …/netmanager-<version>-linux-x86_64.tar.gz and friends
 * ```
 */
import { run } from "./netns.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
/** Environment variable with the suite run's cache directory (set by scripts/test.ts). */
export const TEST_CACHE_ENV = "NETMANAGER_TEST_CACHE";
const DONE = ".built";

let building: Promise<string> | undefined;

/** Builds (or reuses) every release package and returns the directory holding them. */
export function releaseDir(): Promise<string> {
  building ??= (async () => {
    const cache = Deno.env.get(TEST_CACHE_ENV);
    const dir = cache ? `${cache}/release` : await Deno.makeTempDir({ prefix: "nmpkg-" });
    if (!cache) {
      globalThis.addEventListener("unload", () => {
        try {
          Deno.removeSync(dir, { recursive: true });
        } catch { /* gone */ }
      });
    }
    await Deno.mkdir(dir, { recursive: true });
    // Test files run in parallel (scripts/test.ts): one builds, the others wait on the lock, then reuse.
    const lock = await Deno.open(`${dir}/.lock`, { create: true, write: true });
    try {
      await lock.lock(true);
      try {
        await Deno.stat(`${dir}/${DONE}`);
        return dir; // built earlier in this suite run
      } catch { /* build it */ }
      const t0 = Date.now();
      const r = await run(["bash", `${ROOT}scripts/package.sh`, "--arch", "all", "--out", dir]);
      if (r.code !== 0) throw new Error(`package.sh failed (${r.code}): ${r.stderr}`);
      console.error(`package.sh: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      await Deno.writeTextFile(`${dir}/${DONE}`, "");
      return dir;
    } finally {
      lock.close(); // releases the lock
    }
  })();
  return building;
}
