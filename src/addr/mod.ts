/**
 * Addresses, prefixes and allocators (pure). Re-exports the pieces of `src/addr`.
 *
 * @example
 * ```ts
 * import { parseIPv4, formatIPv4 } from "./mod.ts";
 * formatIPv4(parseIPv4("10.30.0.1") + 1); // "10.30.0.2"
 * ```
 */
export * from "./ipv4.ts";
export * from "./ipv6.ts";
export * from "./allocator.ts";
export * from "./canonical.ts";
