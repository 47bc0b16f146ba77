/**
 * `/etc/netns/<name>/resolv.conf` for unikernel namespaces: `ip netns exec` (and anything that
 * enters a named namespace the iproute2 way) bind-mounts it over /etc/resolv.conf, so processes in
 * the namespace resolve through the node's DNS server on the bridge. The file carries a marker line;
 * removal deletes only a file with that marker, and the directory only when it is then empty.
 *
 * @example
 * ```ts
 * writeNetnsResolvConf("app.ns.web.ns.instance.0", ["10.18.0.65", "fc00::101"], "local");
 * removeNetnsResolvConf("app.ns.web.ns.instance.0");
 * ```
 */

/** First line of every file we write. */
export const RESOLV_MARKER = "# written by netmanager: the node's DNS server on the bridge";

/** Where iproute2 looks for per-namespace files. */
export const NETNS_ETC = "/etc/netns";

/** The resolv.conf text for `servers` with `suffix` as search domain. */
export function resolvConfText(servers: readonly string[], suffix: string): string {
  return [RESOLV_MARKER, ...servers.map((s) => `nameserver ${s}`), `search ${suffix}`, "options ndots:1", ""]
    .join("\n");
}

/** Writes the namespace's resolv.conf (creating `/etc/netns/<name>/`). Throws on I/O errors. */
export function writeNetnsResolvConf(
  name: string,
  servers: readonly string[],
  suffix: string,
  root = NETNS_ETC,
): void {
  if (!/^[A-Za-z0-9._-]{1,200}$/.test(name) || name.startsWith(".")) {
    throw new Error(`bad netns name "${name}"`);
  }
  Deno.mkdirSync(`${root}/${name}`, { recursive: true });
  Deno.writeTextFileSync(`${root}/${name}/resolv.conf`, resolvConfText(servers, suffix));
}

/** Removes what {@link writeNetnsResolvConf} wrote; true when a file was removed. Never throws. */
export function removeNetnsResolvConf(name: string, root = NETNS_ETC): boolean {
  if (!/^[A-Za-z0-9._-]{1,200}$/.test(name) || name.startsWith(".")) return false;
  const dir = `${root}/${name}`;
  try {
    const text = Deno.readTextFileSync(`${dir}/resolv.conf`);
    if (!text.startsWith(RESOLV_MARKER)) return false;
    Deno.removeSync(`${dir}/resolv.conf`);
  } catch {
    return false;
  }
  try {
    Deno.removeSync(dir); // only when empty
  } catch { /* other files there: keep the directory */ }
  return true;
}
