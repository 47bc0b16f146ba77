/**
 * Which local address the node would use towards the outside, read from the routing table with
 * `ip route get` (a lookup: no packet is sent), falling back to the first global address of the
 * default interface or of any plain interface.
 *
 * @example
 * ```ts
 * const addr = await detectPublicAddress("");
 * ```
 */
import { runTool } from "./command.ts";

interface RouteGet {
  prefsrc?: string;
  dev?: string;
}

interface AddrShow {
  ifname: string;
  addr_info?: Array<{ family: string; local: string; scope: string }>;
}

/** The detected address, or undefined when the node has none (e.g. a namespace without routes). */
export async function detectPublicAddress(
  defaultInterface: string,
  skip: readonly string[] = [],
): Promise<string | undefined> {
  const args = ["-j", "-4", "route", "get", "1.0.0.1"];
  if (defaultInterface) args.push("oif", defaultInterface);
  const r = await runTool("ip", args);
  if (r.code === 0) {
    try {
      const routes = JSON.parse(r.stdout) as RouteGet[];
      if (routes[0]?.prefsrc) return routes[0].prefsrc;
    } catch {
      // fall through to the address list
    }
  }
  const a = await runTool("ip", [
    "-j",
    "-4",
    "addr",
    "show",
    ...(defaultInterface ? ["dev", defaultInterface] : []),
  ]);
  if (a.code !== 0) return undefined;
  try {
    const links = JSON.parse(a.stdout) as AddrShow[];
    for (const l of links) {
      if (l.ifname === "lo" || skip.includes(l.ifname)) continue;
      const g = l.addr_info?.find((i) => i.family === "inet" && i.scope === "global");
      if (g) return g.local;
    }
  } catch {
    return undefined;
  }
  return undefined;
}
