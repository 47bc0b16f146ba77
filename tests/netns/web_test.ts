/**
 * The cluster web page in a real headless Chromium: `netmanager control` (embedded broker) and three
 * nodes in namespaces, plus an MQTT-only node (as an Oakestra Go node: subnet, never a report) whose
 * worker id carries markup, and one that sends hostile and oversized reports. Chromium runs inside
 * the control plane's namespace (where its HTTP API listens on 127.0.0.1), driven over the DevTools
 * protocol on a pipe. The page shows nodes, services with their instances and IPs, and the RTT and
 * traffic matrix; it follows an undeploy without a reload; it renders markup as text; without the
 * token (or with a wrong one) it shows no data; a screenshot is a valid PNG. `ping <DNS name>` on a
 * node resolves through the control plane.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { World } from "../../src/demo/world.ts";
import { runTool } from "../../src/sys/command.ts";
import { addWebAndClient, CLI, CTL, deploy, threeNodes, WEB } from "../helpers/world.ts";
import { selfCommand } from "../../src/sys/process.ts";
import { Chromium, type Page } from "../helpers/chromium.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const HELPERS = new URL("../helpers/", import.meta.url).pathname;
const GO_NODE = `go<b>1&"'`; // an MQTT worker id may hold markup characters
const EVIL = "evil";
const EVIL_VERSION = `<img src=x onerror="window.pwned=1">`;

/** What the page shows, read from its DOM. */
interface Seen {
  state: string;
  status: string;
  hash: string;
  refreshes: number;
  marker: unknown;
  pwned: unknown;
  injected: number;
  nodes: Record<string, string[]>;
  instances: Record<string, string[]>;
  links: Record<string, string>;
  services: string[];
  traffic: Record<string, string>;
}

const READ = `(() => {
  if (!document.body || !document.getElementById("status")) return { state: "loading", nodes: {}, instances: {}, links: {}, services: [], traffic: {} };
  const cells = (tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent);
  const by = (sel, attr) => Object.fromEntries([...document.querySelectorAll(sel)].map((e) => [e.getAttribute(attr), cells(e)]));
  return {
    state: document.body.getAttribute("data-state"),
    status: document.getElementById("status").textContent,
    hash: location.hash,
    refreshes: window.nmRefreshes ?? -1,
    marker: window.testMarker ?? null,
    pwned: window.pwned ?? null,
    injected: document.querySelectorAll("main b, main img, main script").length,
    nodes: by("[data-node]", "data-node"),
    instances: by("[data-instance]", "data-instance"),
    links: Object.fromEntries([...document.querySelectorAll("[data-link]")].map((e) => [e.getAttribute("data-link"), e.textContent])),
    services: [...document.querySelectorAll("[data-service]")].map((e) => e.textContent),
    traffic: Object.fromEntries([...document.querySelectorAll("[data-traffic]")].map((e) => [e.getAttribute("data-traffic"), e.textContent])),
  };
})()`;

async function read(page: Page): Promise<Seen> {
  return await page.evaluate(READ) as Seen;
}

async function until(page: Page, what: string, ok: (s: Seen) => boolean, ms = 20_000): Promise<Seen> {
  const end = Date.now() + ms;
  let s = await read(page);
  while (!ok(s)) {
    if (Date.now() > end) throw new Error(`page never showed ${what}:\n${JSON.stringify(s, null, 1)}`);
    await new Promise((r) => setTimeout(r, 250));
    s = await read(page);
  }
  return s;
}

/** A PNG: signature, IHDR first (13 bytes) with the size, IEND last. */
function pngSize(b: Uint8Array): { width: number; height: number } {
  assertEquals([...b.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "PNG signature");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  assertEquals(dv.getUint32(8), 13, "IHDR length");
  assertEquals(new TextDecoder().decode(b.subarray(12, 16)), "IHDR");
  assertEquals(new TextDecoder().decode(b.subarray(b.length - 8, b.length - 4)), "IEND");
  return { width: dv.getUint32(16), height: dv.getUint32(20) };
}

async function curlCtl(w: World, args: string[]): Promise<{ status: number; body: string; head: string }> {
  const r = await runTool("nsenter", [
    `--net=/run/netns/${w.prefix}ctl`,
    "curl",
    "-s",
    "-m",
    "5",
    "-D",
    "/dev/stderr",
    "-w",
    "\n%{http_code}",
    ...args,
  ]);
  const i = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i), head: r.stderr };
}

/** Starts an MQTT-only node next to the broker (credential from the control plane) sending `reports`. */
async function mqttNode(w: World, id: string, reports: Array<{ payload: string; delayMs?: number }>) {
  const dir = await w.tempDir("mqttnode");
  await w.ctl(["node", "add", id, "--out", `${dir}/cred.json`]);
  await Deno.writeTextFile(`${dir}/reports.json`, JSON.stringify(reports));
  const log = `${dir}/out.log`;
  w.spawnNextToBroker([
    Deno.execPath(),
    "run",
    "-A",
    `${HELPERS}mqtt_reporter.ts`,
    "mqtt://127.0.0.1:10003",
    `${dir}/cred.json`,
    `${dir}/reports.json`,
  ], log);
  const end = Date.now() + 20_000;
  while (!(await Deno.readTextFile(log).catch(() => "")).includes('"event":"done"')) {
    if (Date.now() > end) throw new Error(`${id}: ${await Deno.readTextFile(log).catch(() => "")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

Deno.test({
  name: "web: cluster page in headless chromium (nodes, services, RTT matrix, live, escaped, token)",
  ...opts,
}, async () => {
  const w = new World();
  // Reports every 1.5 s instead of 5 s (above the control plane's 1 s minimum gap).
  Deno.env.set("NETMANAGER_REPORT_INTERVAL_MS", "1500");
  let browser: Chromium | undefined;
  let stopTalking = false;
  let talking: Promise<void> | undefined;
  try {
    const { control: ctl, nodes } = await threeNodes(w);
    const ids = nodes.map((n) => `${w.prefix}-${n.name}`);
    await addWebAndClient(w);
    const s0 = await w.server("web0");
    const s1 = await w.server("web1");
    const client = await w.instance("client");
    await deploy(nodes[1], WEB, 0, s0.pid);
    await deploy(nodes[2], WEB, 1, s1.pid);
    await deploy(nodes[0], CLI, 0, client.pid);
    const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<
      {
        job_name: string;
        RR_ip: string;
        instance_list: Array<{ instance_number: number; namespace_ip?: string }>;
      }
    >;
    const web = svc.find((s) => s.job_name === WEB)!;

    // ping by DNS name on n1, which has never heard of the service: its resolver asks the control plane.
    const ping = await runTool(selfCommand()[0], [
      ...selfCommand().slice(1),
      "ping",
      "--wait",
      "0",
      "web.ns.app.ns.local",
      "--socket",
      nodes[0].socket,
    ]);
    assertMatch(
      ping.stdout,
      new RegExp(
        `^web\\.ns\\.app\\.ns\\.local → ${web.RR_ip.replaceAll(".", "\\.")} \\(DNS, from control\\)$`,
        "m",
      ),
    );
    assertMatch(ping.stdout, /: RR ServiceIP of app\.ns\.web\.ns .*2 candidate\(s\)/);

    // Traffic from n1's client to both web instances: n1 ↔ n2 and n1 ↔ n3 become peers. It goes on
    // in the background (n1 forgets an idle job after 10 s, and with it the peers).
    for (let k = 0; k < 4; k++) assertMatch(await w.httpGet(client, `http://${web.RR_ip}/`), /web[01]/);
    talking = (async () => {
      while (!stopTalking) {
        await w.httpGet(client, `http://${web.RR_ip}/`).catch(() => "");
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();

    // An Oakestra-style node (subnet over MQTT, never a report) whose id carries markup, and a node
    // whose reports are hostile: markup in its version, then too large, too many peers, too often.
    await mqttNode(w, GO_NODE, []);
    const peer = (k: number) => ({
      endpoint: `192.0.2.${k % 250}:50103`,
      mode: "raw",
      answering: false,
      tx_packets: 1,
      rx_packets: 1,
      drops: 0,
      probes_sent: 0,
      probes_lost: 0,
    });
    const report = (version: string, peers: unknown[], pad = "") =>
      JSON.stringify({ v: 1, version, endpoint: `"><script>window.pwned=2</script>`, peers, pad });
    await mqttNode(w, EVIL, [
      { payload: report(EVIL_VERSION, [peer(1)]) },
      { payload: report("SOON", []), delayMs: 0 },
      { payload: report("BIG", [], "x".repeat(70_000)), delayMs: 1100 },
      { payload: report("MANY", Array.from({ length: 65 }, (_, k) => peer(k))), delayMs: 1100 },
      { payload: "not json", delayMs: 1100 },
    ]);

    // No data without the token; the page itself (static, no data) loads without it.
    const noToken = await curlCtl(w, ["http://127.0.0.1:10100/api/net/cluster"]);
    assertEquals(noToken.status, 401);
    assert(!noToken.body.includes(WEB), noToken.body);
    const token = new URL(await w.ctl(["web-url"])).hash.slice("#token=".length);
    const withToken = await curlCtl(w, [
      "-H",
      `Authorization: Bearer ${token}`,
      "http://127.0.0.1:10100/api/net/cluster",
    ]);
    assertEquals(withToken.status, 200);
    assert(withToken.body.includes(WEB), "the same request with the token gets the data");
    const wrong = await curlCtl(w, [
      "-H",
      "Authorization: Bearer wrong-token-1234",
      "http://127.0.0.1:10100/api/net/cluster",
    ]);
    assertEquals(wrong.status, 401);
    const html = await curlCtl(w, ["http://127.0.0.1:10100/ui/"]);
    assertEquals(html.status, 200);
    assertMatch(html.head, /content-security-policy: default-src 'none'; script-src 'self'/i);
    assert(!html.body.includes(WEB) && !html.body.includes(ids[0]), "the page holds no data");

    const url = await w.ctl(["web-url"]);
    assertMatch(url, /^http:\/\/127\.0\.0\.1:10100\/ui\/#token=[A-Za-z0-9_-]{43}$/);
    const dir = await w.tempDir("web");
    browser = await Chromium.launch({ netns: ctl.ns, dir, width: 1280, height: 1000 });
    const page = await browser.open(url);
    await page.send("Emulation.setDeviceMetricsOverride", {
      width: 1280,
      height: 1000,
      deviceScaleFactor: 1,
      mobile: false,
    });

    // Nodes, services, instances with their IPs, and the RTT matrix (from the nodes' reports).
    const link = (a: number, b: number) => `${ids[a]} ${ids[b]}`;
    const seen = await until(
      page,
      "nodes, services and measured links",
      (s) =>
        s.state === "ok" && ids.every((id) => s.nodes[id]?.[3] !== "-" && s.nodes[id] !== undefined) &&
        s.nodes[GO_NODE] !== undefined && s.nodes[EVIL] !== undefined &&
        [`${WEB}#0`, `${WEB}#1`, `${CLI}#0`].every((i) => s.instances[i]?.[4] !== "-" && s.instances[i]) &&
        [link(0, 1), link(0, 2), link(1, 0), link(2, 0)].every((l) => / ms/.test(s.links[l] ?? "")) &&
        /↑[1-9]\d* pkts/.test(s.traffic[WEB] ?? ""),
    );
    // The web service's traffic (the client's requests and the answers, from the nodes' reports).
    assertMatch(
      seen.traffic[WEB],
      /^traffic with its addresses \(.*\) ↑[1-9]\d* pkts [\d.]+ (B|KiB|MiB) · ↓[1-9]\d* pkts [\d.]+ (B|KiB|MiB)$/,
    );
    assertEquals(seen.hash, "", "the token is removed from the address bar");
    assertEquals(seen.services.sort(), [CLI, WEB]);
    for (const [i, id] of ids.entries()) {
      const [name, address, observed, version, connected, last] = seen.nodes[id];
      assertEquals(name, id);
      assertEquals(address, `192.168.77.${i + 1}:50103`);
      assertMatch(observed, new RegExp(`^192\\.168\\.77\\.${i + 1}:\\d+$`));
      assertMatch(version, /\S/);
      assertEquals(connected, "yes");
      assertMatch(last, /just now|\d s ago/);
    }
    // n3 runs one instance (its report), the RR instance rows carry addresses and nodes.
    assertEquals(seen.nodes[ids[2]][6], "1");
    const w0 = seen.instances[`${WEB}#0`];
    assertEquals(w0[4], ids[1]);
    assertEquals(w0[3], web.instance_list.find((i) => i.instance_number === 0)!.namespace_ip);
    assertEquals(w0[5], "192.168.77.2:50103");
    assertMatch(seen.links[link(0, 1)], /^[\d.]+ ms↑\d+ ↓\d+ pkts · (fast|jumbo)$/);
    // The MQTT-only node: connected, no report (an Oakestra Go node never sends one); its id is text.
    assertEquals(seen.nodes[GO_NODE][0], GO_NODE);
    assertEquals(seen.nodes[GO_NODE][4], "yes");
    assertEquals(seen.nodes[GO_NODE][5], "no report");
    // Hostile strings are shown as text and run nothing; the bad reports changed nothing.
    assertEquals(seen.nodes[EVIL][3], EVIL_VERSION);
    assertEquals(seen.nodes[EVIL][1], `"><script>window.pwned=2</script>`);
    assertEquals([seen.pwned, seen.injected], [null, 0]);
    // The same strings rendered as HTML would be live markup (what textContent prevents).
    const unsafe = await page.evaluate(`(() => {
      const d = document.createElement("div");
      d.innerHTML = ${JSON.stringify(EVIL_VERSION + GO_NODE)};
      return d.querySelectorAll("img, b").length;
    })()`);
    assertEquals(unsafe, 2);
    const ctlLog = await Deno.readTextFile(`${w.controlStateDir}/control.log`);
    for (const cause of ["too_large", "invalid", "too_often", "not_json"]) {
      assertMatch(ctlLog, new RegExp(`node report dropped.*"reason":"${cause}"`));
    }

    const shot1 = await page.screenshot();
    await Deno.writeFile(`${dir}/cluster.png`, shot1);
    assertEquals(pngSize(await Deno.readFile(`${dir}/cluster.png`)), { width: 1280, height: 1000 });
    const keep = Deno.env.get("NETMANAGER_WEB_TEST_SCREENSHOT"); // a path to keep a copy (for people)
    if (keep) await Deno.copyFile(`${dir}/cluster.png`, keep);

    // Undeploy instance 1 of the web service (node, then control plane): the open page follows
    // without a reload (its marker survives), and n3's report shows no instance left.
    await page.evaluate("window.testMarker = 42");
    const before = seen.refreshes;
    const r = await nodes[2].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 1 });
    assertEquals(r.status, 200, r.body);
    await w.ctl(["instance", "rm", WEB, "1"]);
    const after = await until(
      page,
      "the undeployed instance gone",
      (s) => s.instances[`${WEB}#1`] === undefined && s.nodes[ids[2]]?.[6] === "0",
    );
    assertEquals(after.marker, 42, "same page, no reload");
    assert(after.refreshes > before, "refreshed by polling");
    assert(after.instances[`${WEB}#0`] !== undefined);
    await Deno.writeFile(`${dir}/after-undeploy.png`, await page.screenshot());
    pngSize(await Deno.readFile(`${dir}/after-undeploy.png`));

    // A new tab without the token (sessionStorage is per tab): a message, no data. A wrong token: 401, no data.
    const bare = await browser.open("http://127.0.0.1:10100/ui/");
    const b = await until(bare, "the no-token message", (s) => s.state === "no-token");
    assertEquals([Object.keys(b.nodes).length, b.services.length], [0, 0]);
    const bad = await browser.open("http://127.0.0.1:10100/ui/#token=wrong-token-1234");
    const x = await until(bad, "the refused token", (s) => s.state === "error");
    assertMatch(x.status, /401/);
    assertEquals([Object.keys(x.nodes).length, x.services.length], [0, 0]);
  } catch (e) {
    await w.diagnose((l) => console.error(l));
    throw e;
  } finally {
    stopTalking = true;
    await talking;
    Deno.env.delete("NETMANAGER_REPORT_INTERVAL_MS");
    const profile = browser?.profile;
    await browser?.close();
    if (profile) {
      assertEquals(await Deno.stat(profile).then(() => true, () => false), false, "profile removed");
    }
    const left = await w.destroy();
    assertEquals(left, []);
  }
});

Deno.test({
  name: "web: node reports reach the control plane through mosquitto (config/mosquitto/acl)",
  ...opts,
}, async () => {
  const w = new World();
  Deno.env.set("NETMANAGER_REPORT_INTERVAL_MS", "1500");
  try {
    await w.control(CTL, { broker: "mosquitto" });
    await w.clusterNode("n1", "192.168.77.1", CTL);
    const id = `${w.prefix}-n1`;
    const token = new URL(await w.ctl(["web-url"])).hash.slice("#token=".length);
    const end = Date.now() + 20_000;
    let node: Record<string, unknown> | undefined;
    for (;;) {
      const r = await curlCtl(w, [
        "-H",
        `Authorization: Bearer ${token}`,
        "http://127.0.0.1:10100/api/net/cluster",
      ]);
      assertEquals(r.status, 200, r.body);
      node = (JSON.parse(r.body) as { nodes: Array<Record<string, unknown>> }).nodes.find((n) =>
        n.worker_id === id
      );
      if (node?.version) break;
      if (Date.now() > end) throw new Error(`no report from ${id} through mosquitto: ${r.body}`);
      await new Promise((r) => setTimeout(r, 300));
    }
    assertEquals(node.endpoint, "192.168.77.1:50103");
    // An external broker tells the control plane nothing about connections: "connected" = a fresh report.
    assertEquals([node.connected, node.observed], [true, null]);
    assert((node.last_seen_s as number) <= 3);
  } catch (e) {
    await w.diagnose((l) => console.error(l));
    throw e;
  } finally {
    Deno.env.delete("NETMANAGER_REPORT_INTERVAL_MS");
    assertEquals(await w.destroy(), []);
  }
});
