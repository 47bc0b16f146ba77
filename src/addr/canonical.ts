/**
 * Canonical text of an IPv4 or IPv6 address (dotted quad; RFC 5952), so addresses given in any
 * spelling compare equal as strings.
 *
 * @example
 * ```ts
 * canonicalIp("FDFF:2000::0001"); // "fdff:2000::1"
 * canonicalIp("nope");            // undefined
 * ```
 */
import { formatIPv4, tryParseIPv4 } from "./ipv4.ts";
import { formatIPv6, tryParseIPv6 } from "./ipv6.ts";

/** The canonical text of an address, or undefined when `text` is no IPv4/IPv6 address. */
export function canonicalIp(text: string | null | undefined): string | undefined {
  if (typeof text !== "string" || text === "") return undefined;
  const v4 = tryParseIPv4(text);
  if (v4 !== undefined) return formatIPv4(v4);
  const v6 = tryParseIPv6(text);
  return v6 === undefined ? undefined : formatIPv6(v6);
}
