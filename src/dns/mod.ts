/**
 * Names for services on a node: the resolver, the unicast DNS server on the bridge and the
 * upstream forwarder, composed from the node configuration.
 *
 * @example
 * ```ts
 * import { loadNodeConfig, parseNodeSubnet } from "../config/mod.ts";
 * import { TranslationTable } from "../table/mod.ts";
 * const cfg = await loadNodeConfig();
 * const table = new TranslationTable();
 * const dns = await NodeDns.start({ cfg, subnet: parseNodeSubnet("10.18.0.64/26"), table: () => table });
 * const r = await dns.lookup("web.default.shop.prod.local", "A");
 * await dns.close();
 * ```
 */
import {
  formatIPv4,
  formatIPv6,
  inPrefix4,
  inPrefix6,
  type Prefix4,
  type Prefix6,
  tryParseIPv4,
  tryParseIPv6,
} from "../addr/mod.ts";
import type { NodeConfig, NodeSubnet } from "../config/mod.ts";
import { logger } from "../log.ts";
import type { NameTable } from "./names.ts";
import { normalizeSuffix } from "./names.ts";
import { NameResolver, type NameSource, type Resolution } from "./resolver.ts";
import { DnsServer, prepareDnsServer } from "./server.ts";
import { MdnsResponder } from "./mdns.ts";
import { UdpLoop } from "./udp_loop.ts";
import { parseResolvConf, parseUpstreams, Upstream, type UpstreamServer } from "./upstream.ts";

export * from "./names.ts";
export * from "./resolver.ts";
export * from "./server.ts";
export * from "./upstream.ts";
export * from "./mdns.ts";
export * from "./udp_loop.ts";
export * from "./codec.ts";

const log = logger("dns");

/** Options of {@link NodeDns.start}. */
export interface NodeDnsOptions {
  cfg: NodeConfig;
  subnet: NodeSubnet;
  table: () => NameTable | undefined;
  source?: () => NameSource | undefined;
  /** resolv.conf to read upstreams from when `DnsUpstream` is empty (default /etc/resolv.conf). */
  resolvConf?: string;
}

/** One `netmanager dns lookup` answer. */
export interface LookupResult {
  name: string;
  type: string;
  rcode: string;
  source: string;
  answers: { name: string; type: string; ttl: number; data: unknown }[];
}

/** True when `ip` is in one of the prefixes (text address, v4 or v6). */
export function inPrefixes(ip: string, v4: readonly Prefix4[], v6: readonly Prefix6[]): boolean {
  const a4 = tryParseIPv4(ip);
  if (a4 !== undefined) return v4.some((p) => inPrefix4(p, a4));
  const a6 = tryParseIPv6(ip);
  return a6 !== undefined && v6.some((p) => inPrefix6(p, a6));
}

/** The node's DNS service. */
export class NodeDns {
  readonly resolver: NameResolver;
  readonly upstream: Upstream;
  readonly server: DnsServer | undefined;
  readonly mdns: MdnsResponder | undefined;
  /** One receive loop (one poll, one pool thread) for the server's and the responder's sockets. */
  readonly #loop: UdpLoop;

  private constructor(
    resolver: NameResolver,
    upstream: Upstream,
    server: DnsServer | undefined,
    mdns: MdnsResponder | undefined,
    loop: UdpLoop,
  ) {
    this.resolver = resolver;
    this.upstream = upstream;
    this.server = server;
    this.mdns = mdns;
    this.#loop = loop;
  }

  /** Builds the resolver and, when `Dns` is on, listens on the bridge addresses. */
  static async start(o: NodeDnsOptions): Promise<NodeDns> {
    const net = o.cfg.net;
    const bridge4 = formatIPv4(o.subnet.gateway4);
    const bridge6 = formatIPv6(o.subnet.gateway6);
    let servers: UpstreamServer[] = parseUpstreams(net.DnsUpstream);
    if (servers.length === 0) {
      const text = await Deno.readTextFile(o.resolvConf ?? "/etc/resolv.conf").catch(() => "");
      servers = parseResolvConf(text);
    }
    // Never forward to ourselves (a resolv.conf pointing at the bridge would loop).
    servers = servers.filter((s) => !(s.port === net.DnsPort && (s.ip === bridge4 || s.ip === bridge6)));
    const upstream = new Upstream({ servers });
    const cfg = o.cfg;
    const resolver = new NameResolver({
      suffix: normalizeSuffix(net.DnsSuffix),
      ttl: net.DnsTtl,
      table: o.table,
      source: o.source,
      upstream,
      isServiceIp: (ip) => inPrefixes(ip, [cfg.serviceRange4], [cfg.serviceRange6]),
    });
    let server: DnsServer | undefined;
    let mdns: MdnsResponder | undefined;
    const loop = new UdpLoop({ prepare: () => prepareDnsServer(resolver.suffix) });
    const loop4 = { addr: 0x7f000000, len: 8 };
    const loop6 = { addr: new Uint8Array([...new Array(15).fill(0), 1]), len: 128 };
    // The instance subnet (which holds the bridge addresses: the node itself) and loopback.
    const allowed = (ip: string) => inPrefixes(ip, [o.subnet.v4, loop4], [o.subnet.v6, loop6]);
    const allowed4 = (a: number) => inPrefix4(o.subnet.v4, a) || inPrefix4(loop4, a);
    if (net.Dns) {
      server = await DnsServer.start({
        addresses: [bridge4, bridge6],
        port: net.DnsPort,
        resolver,
        allowed,
        allowed4,
        rateLimit: net.DnsRateLimit,
        loop,
      });
      log.info("serving service names", { suffix: resolver.suffix, upstreams: servers.length });
    }
    if (net.Dns && net.Mdns) {
      mdns = await MdnsResponder.start({
        bridge4,
        bridgeName: net.BridgeName,
        resolver,
        allowed,
        rateLimit: Math.min(net.DnsRateLimit, 1000),
        loop,
      });
    }
    return new NodeDns(resolver, upstream, server, mdns, loop);
  }

  /** Resolves `name` (type A, AAAA, PTR, ANY, …) and says where the answer came from. */
  async lookup(name: string, type: string): Promise<LookupResult> {
    const r: Resolution = await this.resolver.resolve({
      name,
      type: type.toUpperCase() as "A",
      class: "IN",
    });
    return {
      name,
      type: type.toUpperCase(),
      rcode: r.rcode,
      source: r.source,
      answers: r.answers.map((a) => ({
        name: a.name,
        type: a.type,
        ttl: "ttl" in a ? a.ttl ?? 0 : 0,
        data: "data" in a ? a.data : null,
      })),
    };
  }

  /** Stops the server and the responder, then their receive loop (which closes the UDP sockets). */
  async close(): Promise<void> {
    await this.server?.close();
    await this.mdns?.close();
    await this.#loop.close();
  }
}
