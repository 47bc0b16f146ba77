/**
 * Upstream resolver lists (pure): `DnsUpstream` values (`ip`, `ip#port`, comma-separated) and the
 * `nameserver` lines of a resolv.conf. Apart from the forwarder so that configuration checks can
 * use the same parser without loading the DNS wire code.
 *
 * @example
 * ```ts
 * parseUpstreams("10.0.0.53, 10.0.0.54#5353"); // [{ ip: "10.0.0.53", port: 53 }, { ip: "10.0.0.54", port: 5353 }]
 * ```
 * @module
 */
import { tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";

/** An upstream resolver. */
export interface UpstreamServer {
  readonly ip: string;
  readonly port: number;
}

/**
 * Parses `ip`, `ip#port` lists (`DnsUpstream`) or the `nameserver` lines of a resolv.conf.
 *
 * @example
 * ```ts
 * parseUpstreams("10.0.0.53, 10.0.0.54#5353"); // [{ ip: "10.0.0.53", port: 53 }, { ip: "10.0.0.54", port: 5353 }]
 * parseResolvConf("nameserver 1.1.1.1\n"); // [{ ip: "1.1.1.1", port: 53 }]
 * ```
 */
export function parseUpstreams(text: string): UpstreamServer[] {
  const out: UpstreamServer[] = [];
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [ip, port = "53"] = part.split("#");
    const p = Number(port);
    if ((tryParseIPv4(ip) === undefined && tryParseIPv6(ip) === undefined) || !(p >= 1 && p <= 65535)) {
      throw new Error(`upstream "${part}" is not ip or ip#port`);
    }
    out.push({ ip, port: p });
  }
  return out;
}

/** The nameservers of a resolv.conf text (invalid lines skipped). */
export function parseResolvConf(text: string): UpstreamServer[] {
  const out: UpstreamServer[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const ip = m[1].split("%")[0];
    if (tryParseIPv4(ip) !== undefined || tryParseIPv6(ip) !== undefined) out.push({ ip, port: 53 });
  }
  return out;
}
