/**
 * The DNS wire format (npm `dns-packet`), loaded on first use: an idle node that is never asked a
 * name does not carry the library (about 4 MB of resident memory). Every receive path awaits
 * {@link loadDnsCodec} before it decodes; code that runs after that uses {@link dnsCodec}.
 *
 * @example
 * ```ts
 * const dns = await loadDnsCodec();
 * const q = dns.encode({ type: "query", id: 1, questions: [{ type: "A", name: "a.local" }] });
 * dnsCodec().decode(q).questions?.[0].name; // "a.local"
 * ```
 * @module
 */
import type * as DnsPacket from "dns-packet";

/** The `dns-packet` module. */
export type DnsCodec = typeof DnsPacket;

/** Used before {@link loadDnsCodec} finished: a receive path that forgot to await it. */
export class DnsCodecNotLoadedError extends Error {
  constructor() {
    super("the DNS codec is not loaded yet: await loadDnsCodec() on the receive path first");
    this.name = "DnsCodecNotLoadedError";
  }
}

let codec: DnsCodec | undefined;
let loading: Promise<DnsCodec> | undefined;

/** Loads `dns-packet` once (later calls return the same module). */
export function loadDnsCodec(): Promise<DnsCodec> {
  if (codec) return Promise.resolve(codec);
  // A CommonJS package: at run time its exports are the default export.
  return loading ??= import("dns-packet").then((m) =>
    codec = (m as unknown as { default: DnsCodec }).default
  );
}

/** The loaded codec; throws {@link DnsCodecNotLoadedError} before {@link loadDnsCodec} finished. */
export function dnsCodec(): DnsCodec {
  if (!codec) throw new DnsCodecNotLoadedError();
  return codec;
}
