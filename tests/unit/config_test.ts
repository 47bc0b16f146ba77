import { assert, assertEquals, assertRejects, assertThrows } from "../helpers/assert.ts";
import {
  ConfigError,
  loadNodeConfig,
  NetCfgSchema,
  parseNodeSubnet,
  TunCfgSchema,
} from "../../src/config/mod.ts";
import { loadConfigFile, parseConfigObject } from "../../src/config/load.ts";
import { formatIPv4, formatIPv6 } from "../../src/addr/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("config: shipped files load with Oakestra defaults", async () => {
  const cfg = await loadNodeConfig({
    netcfgPath: `${ROOT}config/netcfg.json`,
    tuncfgPath: `${ROOT}config/tuncfg.json`,
    env: {},
  });
  assertEquals(cfg.net.NodePublicAddress, "0.0.0.0");
  assertEquals(cfg.net.NodePublicPort, 50103);
  assertEquals(cfg.net.ClusterMqttPort, 10003);
  assertEquals(cfg.net.BridgeName, "goProxyBridge");
  assertEquals(cfg.tun.HostTunnelDeviceName, "goProxyTun");
  // MTUsize 1450 less the secure tunnel's 32 bytes (TunnelSecurity defaults to prefer).
  assertEquals(cfg.tun.MTUsize, 1418);
  assertEquals(cfg.bridgeMtu, 1418);
  assertEquals(formatIPv4(cfg.serviceRange4.addr) + "/" + cfg.serviceRange4.len, "10.30.0.0/16");
  assertEquals(formatIPv6(cfg.serviceRange6.addr) + "/" + cfg.serviceRange6.len, "fdff::/16");
  assertEquals(cfg.notes, [
    "TunnelSecurity prefer: TUN MTU 1418 (MTUsize 1450 − 32 bytes of SECURE header and tag)",
  ]);
  const off = await loadNodeConfig({
    netcfgPath: `${ROOT}config/netcfg.json`,
    tuncfgPath: `${ROOT}config/tuncfg.json`,
    env: {},
    netOverrides: { TunnelSecurity: "off" },
  });
  assertEquals(off.tun.MTUsize, 1450);
  assertEquals(off.bridgeMtu, 1450);
  assertEquals(off.notes, []);
});

Deno.test("config: missing default files fall back to defaults; missing explicit file is an error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const d = await loadConfigFile(`${dir}/absent.json`, NetCfgSchema, { required: false, env: {} });
    assertEquals([d.fromFile, d.value.NodePublicPort, d.value.StateDir], [
      false,
      50103,
      "/var/lib/netmanager",
    ]);
    await assertRejects(
      () => loadNodeConfig({ netcfgPath: `${dir}/nope.json`, env: {} }),
      ConfigError,
      "nope.json",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: bad files name the file, the key and the problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const p = `${dir}/netcfg.json`;
    await Deno.writeTextFile(p, `{"NodePublicPort": "http"}`);
    const e = await assertRejects(
      () => loadNodeConfig({ netcfgPath: p, tuncfgPath: `${ROOT}config/tuncfg.json`, env: {} }),
      ConfigError,
    );
    assert(
      e.message.includes(p) && e.message.includes("NodePublicPort") && e.message.includes("port"),
      e.message,
    );
    await Deno.writeTextFile(p, `{"NodePublicAddress": "1.2.3"`);
    await assertRejects(() => loadNodeConfig({ netcfgPath: p, env: {} }), ConfigError, "invalid JSON");
    await Deno.writeTextFile(p, `[1]`);
    await assertRejects(() => loadNodeConfig({ netcfgPath: p, env: {} }), ConfigError, "JSON object");
    await Deno.writeTextFile(p, `{"BridgeName": "a-very-long-bridge-name"}`);
    await assertRejects(() => loadNodeConfig({ netcfgPath: p, env: {} }), ConfigError, "BridgeName");
    const t = `${dir}/tuncfg.json`;
    await Deno.writeTextFile(t, `{"ProxySubnetworkMask": "255.0.255.0"}`);
    await assertRejects(() => loadNodeConfig({ tuncfgPath: t, env: {} }), ConfigError, "ProxySubnetworkMask");
    await Deno.writeTextFile(t, `{"MTUsize": 100}`);
    await assertRejects(() => loadNodeConfig({ tuncfgPath: t, env: {} }), ConfigError, "MTUsize");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: keys match case-insensitively, unknown keys are reported, strings/numbers both accepted", () => {
  const r = parseConfigObject(
    "t",
    { mtusize: "1400", HostTunnelDeviceName: "tun9", Extra: 1 },
    TunCfgSchema,
    { env: {} },
  );
  assertEquals(r.value.MTUsize, 1400);
  assertEquals(r.value.HostTunnelDeviceName, "tun9");
  assertEquals(r.unknownKeys, ["Extra"]);
  const n = parseConfigObject("n", { NodePublicPort: 50200, Debug: "true" }, NetCfgSchema, { env: {} });
  assertEquals(n.value.NodePublicPort, 50200);
  assertEquals(n.value.Debug, true);
});

Deno.test("config: environment overrides the file, CLI overrides both", () => {
  const env = { NodePublicAddress: "192.0.2.7", ClusterMqttPort: "1883" };
  const r = parseConfigObject("n", { NodePublicAddress: "192.0.2.1" }, NetCfgSchema, {
    env,
    overrides: { ClusterMqttPort: 2000 },
  });
  assertEquals(r.value.NodePublicAddress, "192.0.2.7");
  assertEquals(r.value.ClusterMqttPort, 2000);
  assertThrows(
    () => parseConfigObject("n", {}, NetCfgSchema, { env: { NodePublicPort: "x" } }),
    ConfigError,
    "environment",
  );
});

Deno.test("config: TUN_MTU_SIZE sets the bridge MTU and is validated", async () => {
  const cfg = await loadNodeConfig({
    tuncfgPath: `${ROOT}config/tuncfg.json`,
    netcfgPath: `${ROOT}config/netcfg.json`,
    env: { TUN_MTU_SIZE: "1400" },
  });
  assertEquals(cfg.bridgeMtu, 1400);
  await assertRejects(
    () =>
      loadNodeConfig({
        tuncfgPath: `${ROOT}config/tuncfg.json`,
        netcfgPath: `${ROOT}config/netcfg.json`,
        env: { TUN_MTU_SIZE: "big" },
      }),
    ConfigError,
    "TUN_MTU_SIZE",
  );
});

Deno.test("config: --subnet parsing (standalone mode)", async () => {
  const s = parseNodeSubnet("10.18.0.64/26,fc00::100/120");
  assertEquals(formatIPv4(s.gateway4), "10.18.0.65");
  assertEquals(formatIPv6(s.gateway6), "fc00::101");
  assertEquals(s.lastOffset, 62);
  const derived = parseNodeSubnet("10.18.0.128/26");
  assertEquals(formatIPv6(derived.v6.addr), "fc00::a:1200:8000");
  assertEquals(derived.v6.len, 120);
  for (
    const bad of ["10.18.0.65/26", "10.18.0.0/30", "10.18.0.0/26,fc00::/64", "x", "10.18.0.0/26,fc00::/120,1"]
  ) {
    assertThrows(() => parseNodeSubnet(bad), Error, undefined);
  }
  await assertRejects(
    () =>
      loadNodeConfig({
        subnet: "10.18.0.65/26",
        env: {},
        tuncfgPath: `${ROOT}config/tuncfg.json`,
        netcfgPath: `${ROOT}config/netcfg.json`,
      }),
    ConfigError,
    "--subnet",
  );
});

Deno.test("config: DataPlaneWorkers is 1, 2, 4 or 8 (default from the CPUs); others are refused by name", () => {
  const parse = (v: unknown) =>
    parseConfigObject("n", v === undefined ? {} : { DataPlaneWorkers: v }, NetCfgSchema, { env: {} }).value
      .DataPlaneWorkers;
  assertEquals(parse(4), 4);
  assertEquals(parse("2"), 2);
  assert([1, 2, 4, 8].includes(parse(undefined)));
  for (const bad of [0, 3, 9, "x"]) {
    assertThrows(() => parse(bad), ConfigError, "DataPlaneWorkers");
  }
  const fromEnv = parseConfigObject("n", {}, NetCfgSchema, { env: { DataPlaneWorkers: "1" } });
  assertEquals(fromEnv.value.DataPlaneWorkers, 1);
});

Deno.test("config: TunnelRekeySeconds defaults to 120 and is bounded 5 .. 3600", () => {
  assertEquals(parseConfigObject("n", {}, NetCfgSchema, { env: {} }).value.TunnelRekeySeconds, 120);
  assertEquals(
    parseConfigObject("n", { TunnelRekeySeconds: "5" }, NetCfgSchema, { env: {} }).value.TunnelRekeySeconds,
    5,
  );
  for (const bad of [4, 3601, "soon"]) {
    assertThrows(
      () => parseConfigObject("n", { TunnelRekeySeconds: bad }, NetCfgSchema, { env: {} }),
      ConfigError,
      "TunnelRekeySeconds",
    );
  }
});

Deno.test("config: IoBackend is epoll (default) or uring, also from the environment; others are refused by name", () => {
  const parse = (v: unknown, env: Record<string, string> = {}) =>
    parseConfigObject("n", v === undefined ? {} : { IoBackend: v }, NetCfgSchema, { env }).value.IoBackend;
  assertEquals(parse(undefined), "epoll");
  assertEquals(parse("uring"), "uring");
  assertEquals(parse(undefined, { IoBackend: "uring" }), "uring");
  for (const bad of ["io_uring", "URING", 1, ""]) assertThrows(() => parse(bad), ConfigError, "IoBackend");
});
