/**
 * Schemas for `netcfg.json` and `tuncfg.json` with Oakestra's key names and defaults
 * (reference §8.2, §8.3), plus the keys netmanager adds. Values may be given as strings (Oakestra
 * writes every netcfg value as a string) or as JSON numbers/booleans.
 */
import { z } from "zod";
import { isIPv4, isIPv6, tryParseIPv4 } from "../addr/mod.ts";
import { parseListenAddress } from "../metrics/http.ts";
import { parseUpstreams } from "../dns/upstream_list.ts";
import { parsePortRange } from "../path/relay_msg.ts";

/** Checks `v` with the parser its consumer uses, so a value the config accepts is one that works. */
function parsedBy(parse: (v: string) => unknown, v: string, ctx: z.RefinementCtx, message: string): void {
  try {
    parse(v);
  } catch {
    ctx.addIssue({ code: "custom", message });
  }
}

const portLike = (what: string) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = typeof v === "number" ? v : /^[0-9]+$/.test(v.trim()) ? Number(v.trim()) : NaN;
    if (!Number.isInteger(n) || n < 1 || n > 65535) {
      ctx.addIssue({
        code: "custom",
        message: `${what} must be a port number 1..65535, got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return n;
  });

const intLike = (what: string, min: number, max: number) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = typeof v === "number" ? v : /^-?[0-9]+$/.test(v.trim()) ? Number(v.trim()) : NaN;
    if (!Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({
        code: "custom",
        message: `${what} must be an integer ${min}..${max}, got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return n;
  });

// Oakestra writes booleans as strings; anything else gets a message naming the expected type (the
// loader prefixes the key).
const boolLike = z.unknown().transform((v, ctx) => {
  if (typeof v === "boolean") return v;
  if (typeof v === "string" && /^(true|false)$/i.test(v.trim())) return v.trim().toLowerCase() === "true";
  ctx.addIssue({
    code: "custom",
    message: `expected a boolean (true or false, or the strings "true"/"false"), got ${JSON.stringify(v)}`,
  });
  return z.NEVER;
});

const ifName = z.string().regex(/^[A-Za-z0-9_.:-]{1,15}$/, "must be an interface name of 1..15 characters");

const ipv4 = z.string().refine(isIPv4, "must be an IPv4 address");
const ipv6 = z.string().refine(isIPv6, "must be an IPv6 address");

/** `netcfg.json`: node identity, cluster connection, and the names netmanager creates. */
export const NetCfgSchema = z.object({
  NodePublicAddress: z.string().refine(
    (s) => isIPv4(s) || isIPv6(s),
    "must be an IPv4/IPv6 address or 0.0.0.0",
  )
    .default("0.0.0.0"),
  NodePublicPort: portLike("NodePublicPort").default(50103),
  /** The cluster's broker host; several (control-plane replicas): comma-separated, tried in turn. */
  ClusterUrl: z.string().min(1, "must not be empty").regex(
    /^[A-Za-z0-9.:_-]+(,[A-Za-z0-9.:_-]+)*$/,
    "must be a host name or address (several: comma-separated)",
  ).default("0.0.0.0"),
  ClusterMqttPort: portLike("ClusterMqttPort").default(10003),
  DefaultInterface: z.union([z.literal(""), ifName]).default(""),
  Debug: boolLike.default(false),
  PublicIPNetworking: boolLike.default(false),
  MqttCert: z.string().default(""),
  MqttKey: z.string().default(""),
  /** netmanager addition: CA file that signs the broker's certificate (default: the system CAs). */
  MqttCa: z.string().default(""),
  /** netmanager addition: connect with TLS (`mqtts://`) even without a client certificate or CA. */
  MqttTls: boolLike.default(false),
  /**
   * netmanager additions: the node's MQTT credential (username = worker id). Default: the file
   * `MqttCredentialFile`, else `<StateDir>/mqtt-credential.json` when present (mode 0600 required);
   * none → no username (Oakestra's anonymous or certificate-based broker).
   */
  MqttUsername: z.string().default(""),
  MqttPassword: z.string().default(""),
  MqttCredentialFile: z.string().default(""),
  // netmanager additions
  BridgeName: ifName.default("goProxyBridge"),
  VethPrefix: z.string().regex(/^[a-z][a-z0-9]{0,5}$/, "must be 1..6 lowercase letters/digits").default(
    "veth",
  ),
  NetnsPrefix: z.string().regex(/^[A-Za-z0-9._-]{0,40}$/, "must be 0..40 characters of [A-Za-z0-9._-]")
    .default(""),
  NatChain: z.string().regex(/^[A-Z][A-Z0-9_]{0,20}$/, "must be an uppercase chain name of 1..21 characters")
    .default("OAKESTRA"),
  StateDir: z.string().min(1).default("/var/lib/netmanager"),
  /**
   * Use FAST mode (8-byte header, partial checksums, GSO/GRO end to end) towards peers that announce
   * it; false keeps every datagram a bare IP packet (raw mode, as Oakestra's Go nodes send).
   */
  FastMode: boolLike.default(true),
  JumboMode: boolLike.default(true),
  /**
   * Kernel fast path (issue 16, src/kfast/): flows between two netmanager nodes that both run it go
   * through the kernels instead of the TUN. true (or "vxlan"): a kernel VXLAN device with nftables
   * translation (needs nft, conntrack). "tc": eBPF programs at the bridge and the underlay translate
   * and send Oakestra raw IP-in-UDP (no tools needed). Both need `TunnelSecurity: off` and an IPv4
   * underlay. false = the TUN path only.
   */
  KernelFastPath: z.union([
    z.enum(["tc", "vxlan"]),
    boolLike,
  ]).transform((v) => v === "vxlan" ? true : v).default(false),
  /**
   * After traffic the data plane keeps polling without sleeping for this many microseconds (at most
   * half a core): request/response latency without a thread wake-up. 0 disables it.
   */
  BusyPollMicros: intLike("BusyPollMicros", 0, 10000).default(0),
  /**
   * How a data-plane Worker waits and moves packets (issue 10): "epoll" (a wait, then read/recvmmsg
   * and sendmmsg/write calls) or "uring" (io_uring: reads stay armed, small sends and writes are
   * queued, one io_uring_enter per crossing; src/proxy/uring_io.ts). A node where io_uring is
   * unavailable (disabled, seccomp) logs it and uses epoll.
   */
  IoBackend: z.enum(["epoll", "uring"]).default("epoll"),
  /**
   * Packet workers of the data plane, one per core: each has its own TUN queue and tunnel socket,
   * and a flow always meets the same worker (`src/proxy/lanes.ts`). 1, 2, 4 or 8. Default: the CPUs
   * this process may use, rounded down to one of those; 1 = a single worker.
   */
  DataPlaneWorkers: intLike("DataPlaneWorkers", 1, 8).refine((n) => (n & (n - 1)) === 0, {
    message: "DataPlaneWorkers must be 1, 2, 4 or 8 (a JUMBO id stream then has one worker at each end)",
  }).default(() => defaultDataPlaneWorkers()),
  /** `host:port` serving `/metrics` and `/healthz` over TCP (e.g. `127.0.0.1:9464`); empty = off. */
  MetricsAddress: z.string().superRefine((v, ctx) => {
    if (v !== "") {
      parsedBy(parseListenAddress, v, ctx, "must be host:port, e.g. 127.0.0.1:9464 (empty = off)");
    }
  }).default(""),
  /**
   * Measure the RTT to every netmanager peer (one small PROBE a second each, backing off when
   * unanswered; never to Oakestra Go nodes, which do not announce PROBE), for `peers` and the
   * metrics; false = only while the closest policy needs it.
   */
  ProbePeers: boolLike.default(true),
  /**
   * A netmanager peer that answers none of our PROBEs/HELLOs for this long (ms) is marked down: new
   * flows skip its instances while another candidate is up (RR, Random, Closest). 0 = never. Peers
   * that never answer probes (Oakestra Go nodes) are not judged (unknown, used as up).
   */
  PeerDownAfterMs: intLike("PeerDownAfterMs", 0, 600_000).default(3000),
  /**
   * netmanager additions, endpoint discovery (issue 12): the control plane's reflector, asked from the
   * tunnel socket for this node's public ip:port. Address: IPv4 (default: the cluster address when
   * it is an IPv4 literal); port 0 turns discovery off.
   */
  ReflectorAddress: z.union([z.literal(""), ipv4]).default(""),
  ReflectorPort: z.union([z.literal(0), portLike("ReflectorPort")]).default(50104),
  /**
   * netmanager addition (issue 12): seconds between keepalives that hold NAT mappings open — the
   * reflector request, and the HELLO refresh towards peers reached by a punch or from a node behind
   * NAT (otherwise 30 s). Below the NAT's UDP timeout (Linux: 30 s unreplied, 120 s once replied).
   */
  NatKeepaliveSeconds: intLike("NatKeepaliveSeconds", 5, 100).default(25),
  /**
   * netmanager additions (issue 12): offer this node to the control plane as a relay for pairs of
   * other nodes whose hole punching failed (it needs a public address: the control plane uses it
   * only while its reflector sees the node at `NodePublicAddress`, i.e. not behind NAT), and the
   * per-node rate it relays at (Mbit/s). Used when the control plane runs without `--relay`.
   */
  RelayCandidate: boolLike.default(false),
  RelayMbit: intLike("RelayMbit", 1, 100000).default(1000),
  /** With RelayCandidate: the UDP ports its allocations use, `lo-hi` (a firewall opens just those); "" = any. */
  RelayPorts: z.string().superRefine((v, ctx) => {
    parsedBy(parsePortRange, v, ctx, 'must be a port range lo-hi of at least 2 ports ("" = any free port)');
  }).default(""),
  /** Log line format: `text` (people) or `json` (one object per line, for log shippers). */
  LogFormat: z.enum(["text", "json"], { error: 'must be "text" or "json"' }).default("text"),
  /** Serve service names on the bridge address (unicast DNS; mDNS too unless `Mdns` is false). */
  Dns: boolLike.default(true),
  /** Port of the unicast DNS server (UDP and TCP) on the bridge address. */
  DnsPort: portLike("DnsPort").default(53),
  /** Suffix of service names (`service.servicens.app.appns.<suffix>`). */
  DnsSuffix: z.string().regex(
    /^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$/,
    "must be a domain name such as local or cluster.local",
  ).default("local"),
  /** TTL of answers for service names, seconds (also the negative TTL). */
  DnsTtl: intLike("DnsTtl", 0, 3600).default(5),
  /** Upstream resolvers for other names, comma-separated `ip` or `ip#port`; "" = the node's /etc/resolv.conf. */
  DnsUpstream: z.string().superRefine((v, ctx) =>
    parsedBy(parseUpstreams, v, ctx, "must be comma-separated addresses (ip or ip#port, port 1-65535)")
  ).default(""),
  /** Queries per second one client may send (burst: the same number). */
  DnsRateLimit: intLike("DnsRateLimit", 1, 1000000).default(2000),
  /** Answer mDNS questions (224.0.0.251 / ff02::fb port 5353) on the bridge. */
  Mdns: boolLike.default(true),
  /**
   * Tunnel encryption between netmanager nodes: `off` (raw, as today), `prefer` (encrypted with every
   * peer proving a certificate, raw with peers that never answer, i.e. Oakestra Go nodes), `require`
   * (only authenticated peers).
   */
  TunnelSecurity: z.enum(["off", "prefer", "require"], { error: 'must be "off", "prefer" or "require"' })
    .default("prefer"),
  /** Seconds between rekeys of a secure session (new handshake, new keys); 5 .. 3600, at most 120 is advised. */
  TunnelRekeySeconds: intLike("TunnelRekeySeconds", 5, 3600).default(120),
  /**
   * Offline PKI (`netmanager cert`): this node's certificate (PEM) and the CA file (`ca.json`) it and its
   * peers trust. Empty: the certificate comes from `netmanager control` (cluster mode); a CA file alone
   * pins the control plane's CA.
   */
  TunnelCertFile: z.string().default(""),
  TunnelCaFile: z.string().default(""),
});

/** Parsed netcfg.json. */
export type NetCfg = z.output<typeof NetCfgSchema>;

const netmask = z.string().refine((s) => {
  const v = tryParseIPv4(s);
  if (v === undefined) return false;
  const inv = (~v) >>> 0;
  return (inv & (inv + 1)) === 0;
}, "must be a contiguous IPv4 netmask");

/** `tuncfg.json`: the TUN device and the semantic (ServiceIP) ranges. */
export const TunCfgSchema = z.object({
  HostTunnelDeviceName: ifName.default("goProxyTun"),
  TunnelIP: ipv4.default("10.19.1.254"),
  ProxySubnetwork: ipv4.default("10.30.0.0"),
  ProxySubnetworkMask: netmask.default("255.255.0.0"),
  TunnelPort: portLike("TunnelPort").default(50103),
  MTUsize: intLike("MTUsize", 1280, 65535).default(1450),
  // Ours: packets the kernel may queue for the data plane's TUN reads (Linux default 500). A burst
  // longer than the queue while the data-plane thread waits for a CPU is dropped.
  TxQueueLen: intLike("TxQueueLen", 16, 1000000).default(10000),
  TunNetIPv6: ipv6.default("fcef::dead:beef"),
  // Oakestra ships fcef::/21 here, which makes fdff:: ServiceIPs unreachable (quirk); our default is fdff::/16.
  ProxySubnetworkIPv6: ipv6.default("fdff::"),
  ProxySubnetworkIPv6Prefix: intLike("ProxySubnetworkIPv6Prefix", 1, 128).default(16),
});

/** Parsed tuncfg.json. */
export type TunCfg = z.output<typeof TunCfgSchema>;

/** The default of `DataPlaneWorkers`: the CPUs this process may use (affinity, cgroup quota) as 1, 2, 4 or 8. */
export function defaultDataPlaneWorkers(): number {
  const n = Math.min(8, Math.floor(globalThis.navigator?.hardwareConcurrency ?? 1) || 1);
  return n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1;
}
