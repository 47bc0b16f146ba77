/**
 * Kernel parameters through /proc/sys (no process). Writes act in the network namespace of the
 * calling process, which for the daemon is its node's namespace.
 *
 * @example
 * ```ts
 * writeSysctl("net.ipv4.ip_forward", "1");
 * ```
 */

function path(key: string): string {
  if (!/^[A-Za-z0-9_.\/-]+$/.test(key) || key.includes("..")) throw new Error(`invalid sysctl key "${key}"`);
  // Interface names may contain dots; callers pass them with "/" already (net/ipv4/conf/eth0.1/...).
  return "/proc/sys/" + (key.includes("/") ? key : key.replaceAll(".", "/"));
}

/** Writes a sysctl; throws with the key named when it cannot. */
export function writeSysctl(key: string, value: string): void {
  try {
    Deno.writeTextFileSync(path(key), value);
  } catch (e) {
    throw new Error(`sysctl ${key}=${value}: ${e instanceof Error ? e.message : e}`);
  }
}

/** Reads a sysctl, or undefined when it does not exist. */
export function readSysctl(key: string): string | undefined {
  try {
    return Deno.readTextFileSync(path(key)).trim();
  } catch {
    return undefined;
  }
}
