/**
 * The node's resolved configuration: `netcfg.json` + `tuncfg.json` + environment + CLI flags.
 *
 * @example
 * ```ts
 * const cfg = await loadNodeConfig({ netcfgPath: "/etc/netmanager/netcfg.json", tuncfgPath: "/etc/netmanager/tuncfg.json" });
 * console.log(cfg.net.BridgeName);
 * ```
 */
import { maskIPv6, parseIPv4, parseIPv6, type Prefix4, type Prefix6, prefixLenOfMask } from "../addr/mod.ts";
import { ConfigError, loadConfigFile } from "./load.ts";
import { type NetCfg, NetCfgSchema, type TunCfg, TunCfgSchema } from "./schema.ts";
import { type NodeSubnet, parseNodeSubnet } from "./subnet.ts";
import { SECURE_OVERHEAD } from "../secure/secure_wire.ts";

export { ConfigError } from "./load.ts";
export type { NetCfg, TunCfg } from "./schema.ts";
export { NetCfgSchema, TunCfgSchema } from "./schema.ts";
export * from "./subnet.ts";
export * from "./credential.ts";

/** Default locations, as Oakestra uses them. */
export const DEFAULT_PATHS = {
  netcfg: "/etc/netmanager/netcfg.json",
  tuncfg: "/etc/netmanager/tuncfg.json",
  socket: "/etc/netmanager/netmanager.sock",
} as const;

/** Everything a node needs, validated. */
export interface NodeConfig {
  net: NetCfg;
  tun: TunCfg;
  /** ServiceIP ranges (semantic addresses handled by the proxy). */
  serviceRange4: Prefix4;
  serviceRange6: Prefix6;
  /** Bridge/veth MTU (env TUN_MTU_SIZE, else the TUN MTU). */
  bridgeMtu: number;
  /** Standalone mode: the node's subnet, fixed at start; undefined = ask the cluster. */
  standaloneSubnet?: NodeSubnet;
  /** Findings to log at start (defaults used). */
  notes: string[];
  /** Findings to warn about at start (unknown keys: a typo keeps a default silently otherwise). */
  warnings: string[];
}

/** Inputs for {@link loadNodeConfig}. */
export interface NodeConfigInput {
  netcfgPath?: string;
  tuncfgPath?: string;
  /** Overrides by netcfg key (CLI flags). */
  netOverrides?: Partial<Record<keyof NetCfg, unknown>>;
  /** `--subnet` text for standalone mode. */
  subnet?: string;
  env?: Record<string, string | undefined>;
}

/** Loads and validates the node configuration; throws ConfigError with file, key and problem. */
export async function loadNodeConfig(input: NodeConfigInput = {}): Promise<NodeConfig> {
  const env = input.env ?? Deno.env.toObject();
  const netPath = input.netcfgPath ?? DEFAULT_PATHS.netcfg;
  const tunPath = input.tuncfgPath ?? DEFAULT_PATHS.tuncfg;
  const net = await loadConfigFile(netPath, NetCfgSchema, {
    required: input.netcfgPath !== undefined,
    env,
    overrides: input.netOverrides,
  });
  const tun = await loadConfigFile(tunPath, TunCfgSchema, { required: input.tuncfgPath !== undefined, env });
  const notes: string[] = [];
  if (!net.fromFile) notes.push(`${netPath} not found: using defaults`);
  if (!tun.fromFile) notes.push(`${tunPath} not found: using defaults`);
  const warnings: string[] = [];
  if (net.unknownKeys.length) {
    warnings.push(`${netPath}: ignoring unknown keys ${net.unknownKeys.join(", ")}`);
  }
  if (tun.unknownKeys.length) {
    warnings.push(`${tunPath}: ignoring unknown keys ${tun.unknownKeys.join(", ")}`);
  }

  // The secure tunnel seals each datagram with 32 more bytes (src/secure/secure_wire.ts): the TUN
  // MTU leaves room for them so sealed datagrams fit the underlay as raw ones do.
  const t = net.value.TunnelSecurity !== "off" && tun.value.MTUsize - SECURE_OVERHEAD >= 1280
    ? { ...tun.value, MTUsize: tun.value.MTUsize - SECURE_OVERHEAD }
    : tun.value;
  if (t !== tun.value) {
    notes.push(
      `TunnelSecurity ${net.value.TunnelSecurity}: TUN MTU ${t.MTUsize} (MTUsize ${tun.value.MTUsize} − ${SECURE_OVERHEAD} bytes of SECURE header and tag)`,
    );
  }
  const len4 = prefixLenOfMask(t.ProxySubnetworkMask);
  const base4 = parseIPv4(t.ProxySubnetwork);
  const serviceRange4 = { addr: (base4 & (len4 === 0 ? 0 : (0xffffffff << (32 - len4)))) >>> 0, len: len4 };
  const serviceRange6 = {
    addr: maskIPv6(parseIPv6(t.ProxySubnetworkIPv6), t.ProxySubnetworkIPv6Prefix),
    len: t.ProxySubnetworkIPv6Prefix,
  };

  let bridgeMtu = t.MTUsize;
  const envMtu = env["TUN_MTU_SIZE"];
  if (envMtu !== undefined && envMtu !== "") {
    if (!/^[0-9]+$/.test(envMtu) || Number(envMtu) < 1280 || Number(envMtu) > 65535) {
      throw new ConfigError(
        `environment variable TUN_MTU_SIZE: must be an integer 1280..65535, got "${envMtu}"`,
      );
    }
    bridgeMtu = Number(envMtu);
  }

  let standaloneSubnet: NodeSubnet | undefined;
  if (input.subnet !== undefined) {
    try {
      standaloneSubnet = parseNodeSubnet(input.subnet);
    } catch (e) {
      throw new ConfigError(`--subnet: ${e instanceof Error ? e.message : e}`);
    }
  }
  return {
    net: net.value,
    tun: t,
    serviceRange4,
    serviceRange6,
    bridgeMtu,
    standaloneSubnet,
    notes,
    warnings,
  };
}
