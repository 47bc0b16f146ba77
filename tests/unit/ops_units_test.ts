/**
 * Pure parts of the operations work: peer events (silent / back / wire mode), back-off with jitter,
 * the status and peers text views, the metrics listener's routing and address parsing, config
 * messages (boolean type, keys differing by case, unknown keys), JSON log lines.
 */
import { assert, assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { PeerWatch, wireModeOf } from "../../src/proxy/peer_watch.ts";
import type { PeerStats } from "../../src/proxy/peers.ts";
import { Backoff } from "../../src/control/backoff.ts";
import { formatAge, formatPeers, formatStatus } from "../../src/cli/views.ts";
import { findTargets, formatPing, lossOver, type PingPeer, type PingTableRow } from "../../src/cli/ping.ts";
import { handleMetricsRequest, MetricsAddressError, parseListenAddress } from "../../src/metrics/http.ts";
import { Registry } from "prom-client";
import { ConfigError, loadNodeConfig, NetCfgSchema } from "../../src/config/mod.ts";
import { parseConfigObject } from "../../src/config/load.ts";

function peer(over: Partial<PeerStats> = {}): PeerStats {
  return {
    endpoint: "10.0.0.2:50103",
    node: "w2",
    fast: true,
    jumbo: false,
    jumboRefusals: 0,
    capsKnown: true,
    txPackets: 1,
    txBytes: 100,
    rxPackets: 1,
    rxBytes: 100,
    drops: 0,
    probesSent: 0,
    probesLost: 0,
    lastSeen: 1000,
    ...over,
  };
}

Deno.test("peer watch: stops answering, comes back, wire-mode changes; last-seen age in wall time", () => {
  const w = new PeerWatch();
  assertEquals(w.update([peer()], 10_000), [
    { kind: "mode", endpoint: "10.0.0.2:50103", node: "w2", from: "raw", to: "fast" },
  ]);
  assertEquals(w.update([peer({ lastSeen: 2000 })], 11_000), []);
  // Capabilities forgotten: silent, and the mode falls back to raw.
  const ev = w.update([peer({ capsKnown: false, fast: false, lastSeen: 2000 })], 51_000);
  assertEquals(ev, [
    { kind: "silent", endpoint: "10.0.0.2:50103", node: "w2", lastSeenAgoMs: 40_000, mode: "raw" },
    { kind: "mode", endpoint: "10.0.0.2:50103", node: "w2", from: "fast", to: "raw" },
  ]);
  assertEquals(w.view(53_000)[0].lastSeenAgoS, 42);
  assertEquals(w.view(53_000)[0].answering, false);
  const back = w.update([peer({ lastSeen: 90_000, jumbo: true })], 61_000);
  assertEquals(back[0], {
    kind: "back",
    endpoint: "10.0.0.2:50103",
    node: "w2",
    silentForMs: 10_000,
    mode: "jumbo",
  });
  assertEquals(back[1], { kind: "mode", endpoint: "10.0.0.2:50103", node: "w2", from: "raw", to: "jumbo" });
  // An Oakestra Go node never answers: no "silent" event, it was never answering.
  const go = new PeerWatch();
  go.update([peer({ capsKnown: false, fast: false })], 0);
  assertEquals(go.update([peer({ capsKnown: false, fast: false })], 60_000), []);
  assertEquals(wireModeOf({ fast: true, jumbo: true }), "jumbo");
});

Deno.test("back-off: doubles to the cap with bounded jitter, resets", () => {
  const mid = new Backoff({ baseMs: 1000, maxMs: 8000, random: () => 0.5 });
  assertEquals([1, 2, 3, 4, 5, 6].map(() => mid.next()), [1000, 2000, 4000, 8000, 8000, 8000]);
  mid.reset();
  assertEquals(mid.next(), 1000);
  const lo = new Backoff({ baseMs: 1000, maxMs: 60_000, random: () => 0 });
  const hi = new Backoff({ baseMs: 1000, maxMs: 60_000, random: () => 0.999999 });
  assertEquals(lo.next(), 800);
  assertEquals(hi.next(), 1200);
  const real = new Backoff({ baseMs: 1000, maxMs: 60_000 });
  const spread = new Set(Array.from({ length: 20 }, () => new Backoff({ baseMs: 1000, maxMs: 1000 }).next()));
  assert(spread.size > 1, "jitter spreads nodes apart");
  for (let i = 0; i < 40; i++) assert(real.next() <= 72_000);
});

Deno.test("views: status is text, peers a table with ages", () => {
  assertEquals(formatAge(undefined), "never");
  assertEquals(formatAge(0), "just now");
  assertEquals(formatAge(75), "1m15s ago");
  const t = formatPeers([
    {
      node: "w2",
      endpoint: "10.0.0.2:50103",
      mode: "fast",
      answering: true,
      rttMs: 0.42,
      lastSeenAgoS: 3,
      drops: 0,
    },
    { endpoint: "10.0.0.3:50103", mode: "raw", answering: false, drops: 7 },
    {
      node: "w4",
      endpoint: "10.0.0.4:50103",
      mode: "fast",
      answering: true,
      drops: 0,
      health: "down",
      downForS: 5,
      downCause: "no answer to 4 probe(s) and HELLOs for 3000 ms",
    },
  ]);
  const lines = t.split("\n");
  assertMatch(lines[0], /^PEER\s+ENDPOINT\s+WIRE\s+RTT\s+LAST SEEN.*PROBES LOST\s+PATH\s+MTU\s+STATE$/);
  assertMatch(lines[1], /^w2\s+10\.0\.0\.2:50103\s+fast\s+0\.42 ms\s+3s ago.*\s+up\?$/);
  assertMatch(
    lines[2],
    /^-\s+10\.0\.0\.3:50103\s+raw \(no HELLO answer\)\s+-\s+never\s+-\s+-\s+7\s+-\s+-\s+-\s+up\?$/,
  );
  assertMatch(
    lines[3],
    /^w4\s+10\.0\.0\.4:50103\s+fast\s.*\s+DOWN 5s \(no answer to 4 probe\(s\) and HELLOs for 3000 ms\)$/,
  );
  const s = formatStatus({
    mode: "cluster",
    registered: false,
    workerId: null,
    subnet: null,
    cluster: { connected: false, interests: [] },
    dataPlane: null,
    peers: [],
    uptimeSeconds: 3725,
  });
  assertMatch(s, /^node\s+- \(cluster, NOT registered\)$/m);
  assertMatch(s, /^cluster\s+DISCONNECTED \(retrying\)/m);
  assertMatch(s, /^data plane\s+not running \(waiting for \/register\)$/m);
  assertMatch(s, /^uptime\s+1h02m$/m);
});

Deno.test("metrics listener: address parsing and routes", async () => {
  assertEquals(parseListenAddress("127.0.0.1:9464"), { hostname: "127.0.0.1", port: 9464 });
  assertEquals(parseListenAddress("[::1]:9464"), { hostname: "::1", port: 9464 });
  assertThrows(() => parseListenAddress("9464"), MetricsAddressError, "host:port");
  assertThrows(() => parseListenAddress("a:70000"), MetricsAddressError);
  const reg = new Registry();
  let ok = false;
  const health = () => ok ? { ok: true as const } : { ok: false as const, reason: "not registered" };
  const get = (p: string, method = "GET") =>
    handleMetricsRequest(new Request(`http://x${p}`, { method }), reg, health);
  const h = await get("/healthz");
  assertEquals([h.status, await h.text()], [503, "not ready: not registered\n"]);
  ok = true;
  assertEquals((await get("/healthz")).status, 200);
  assertEquals((await get("/metrics")).status, 200);
  assertEquals((await get("/other")).status, 404);
  assertEquals((await get("/metrics", "POST")).status, 405);
});

Deno.test("config: booleans name key and type; keys differing by case refused; unknown keys warned", async () => {
  const e = assertThrows(
    () => parseConfigObject("netcfg.json", { FastMode: "yes" }, NetCfgSchema, { env: {} }),
    ConfigError,
  );
  assertEquals(
    e.message,
    'netcfg.json: key "FastMode": expected a boolean (true or false, or the strings "true"/"false"), got "yes"',
  );
  assertThrows(
    () => parseConfigObject("netcfg.json", { Debug: 1 }, NetCfgSchema, { env: {} }),
    ConfigError,
    'key "Debug": expected a boolean',
  );
  assertEquals(parseConfigObject("n", { Debug: "TRUE" }, NetCfgSchema, { env: {} }).value.Debug, true);
  assertThrows(
    () => parseConfigObject("netcfg.json", { FastMode: true, fastmode: false }, NetCfgSchema, { env: {} }),
    ConfigError,
    'keys "FastMode" and "fastmode" differ only by case',
  );
  assertThrows(
    () => parseConfigObject("n", { LogFormat: "xml" }, NetCfgSchema, { env: {} }),
    ConfigError,
    'key "LogFormat": must be "text" or "json"',
  );
  assertThrows(
    () => parseConfigObject("n", { MetricsAddress: "9464" }, NetCfgSchema, { env: {} }),
    ConfigError,
    'key "MetricsAddress": must be host:port',
  );
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/n.json`, JSON.stringify({ Debgu: true }));
    await Deno.writeTextFile(`${dir}/t.json`, "{}");
    const cfg = await loadNodeConfig({ netcfgPath: `${dir}/n.json`, tuncfgPath: `${dir}/t.json`, env: {} });
    assertEquals(cfg.warnings, [`${dir}/n.json: ignoring unknown keys Debgu`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("log: LogFormat json writes one object per line; fields cannot overwrite the fixed keys", async () => {
  const src = new URL("../../src/log.ts", import.meta.url).href;
  const code = `import { logger, setLogFormat } from "${src}";
setLogFormat("json");
logger("demo").warn("peer stopped answering", { endpoint: "10.0.0.2:50103", msg: "spoof" });`;
  const o = await new Deno.Command(Deno.execPath(), { args: ["eval", code] }).output();
  const line = new TextDecoder().decode(o.stderr).trim();
  const j = JSON.parse(line);
  assertEquals([j.level, j.component, j.msg, j.endpoint], [
    "warn",
    "demo",
    "peer stopped answering",
    "10.0.0.2:50103",
  ]);
  assertMatch(j.time, /^\d{4}-\d\d-\d\dT/);
});

Deno.test("ping: targets by ServiceIP, InstanceIP, name and peer; loss over the window; verdicts", () => {
  const rows: PingTableRow[] = [
    {
      serviceName: "app.ns.web.ns",
      instanceNumber: 0,
      serviceIPs: [{ kind: "RR", ipv4: "10.30.0.1", ipv6: "fdff:2000::1" }, {
        kind: "instance_ip",
        ipv4: "10.30.0.2",
      }],
      nsAddress: "10.18.0.130",
      node: "192.168.77.2:50103",
      policy: "RoundRobin",
    },
    {
      serviceName: "app.ns.web.ns",
      instanceNumber: 1,
      serviceIPs: [{ kind: "RR", ipv4: "10.30.0.1" }, { kind: "instance_ip", ipv4: "10.30.0.3" }],
      nsAddress: "10.18.0.66",
      node: "192.168.77.1:50103",
      policy: "RoundRobin",
    },
  ];
  const peer: PingPeer = {
    node: "w2",
    endpoint: "192.168.77.2:50103",
    mode: "fast",
    answering: true,
    rttMs: 0.5,
    lastSeenAgoS: 0,
    drops: 0,
    probesSent: 10,
    probesLost: 1,
  };
  const self = "192.168.77.1:50103";
  assertEquals(findTargets("10.30.0.1", rows, self, [peer]).map((h) => [h.via, h.local]), [["RR", false], [
    "RR",
    true,
  ]]);
  assertEquals(findTargets("FDFF:2000::1", rows, self, [peer]).length, 1);
  assertEquals(findTargets("10.30.0.3", rows, self, [peer]).map((h) => h.via), ["instance_ip"]);
  assertEquals(findTargets("app.ns.web.ns", rows, self, []).length, 2);
  assertEquals(findTargets("w2", rows, self, [peer])[0].via, "peer");
  assertEquals(findTargets("10.9.9.9", rows, self, [peer]), []);
  assertEquals(lossOver(peer, { ...peer, probesSent: 13, probesLost: 1 }), { sent: 3, lost: 0 });
  assertEquals(lossOver(peer, peer), undefined);
  const hits = findTargets("10.30.0.1", rows, self, [peer]);
  const good = formatPing("10.30.0.1", hits, [{ ...peer, probesSent: 13 }], 3);
  assert(good.ok);
  assertMatch(good.text, /ok, 0\/3 probes lost in 3s/);
  assertMatch(good.text, /local \(over the bridge, no tunnel\)/);
  const deadPeer = { ...peer, probesSent: 13, probesLost: 4 };
  const bad = formatPing("10.30.0.2", findTargets("10.30.0.2", rows, self, [peer]), [deadPeer], 3);
  assertEquals(bad.ok, false);
  assertMatch(bad.text, /NO ANSWER \(3\/3 probes lost\)/);
  assertEquals(formatPing("10.9.9.9", [], [], 3).ok, false);
});
