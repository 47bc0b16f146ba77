/**
 * Logs that explain, with real processes: a failed `/register` is logged with its cause and what
 * happens next; a node that loses its broker logs the loss once and then backs off (1, 2, 4 … s with
 * jitter) instead of a line per second, and logs the reconnect with the outage length.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { eventually, withNode } from "../helpers/setup.ts";
import { World } from "../../src/demo/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test({
  name: "logs: a /register that cannot reach the broker is logged with its cause and what happens next",
  ...opts,
}, async () => {
  // Cluster mode (no --subnet); nothing listens on the broker port inside the namespace.
  await withNode(async (node) => {
    const r = await node.api.post("/register", { client_id: "w1", cluster_address: "127.0.0.1" });
    assertEquals(r.status, 503, r.body);
    const log = await node.log();
    const line = log.split("\n").find((l) => l.includes("registration failed")) ?? "";
    assertMatch(
      line,
      /^WARN .*registration failed; the node stays unregistered until the node engine retries/,
    );
    assertMatch(line, /"cause":"cannot reach MQTT broker mqtt:\/\/127\.0\.0\.1:10003/);
    assertMatch(line, /"workerId":"w1"/);
    // status says so too, until a /register succeeds.
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}main.ts`, "status", "--socket", node.socket],
    }).output();
    const st = new TextDecoder().decode(o.stdout);
    assertMatch(st, /^node\s+- \(cluster, NOT registered\)$/m);
    assertMatch(
      st,
      /^last error\s+\/register (just now|\d+s ago) failed: cannot reach MQTT broker mqtt:\/\/127\.0\.0\.1:10003/m,
    );
  }, { subnet: "" });
});

Deno.test({
  name: "logs: broker down → one loss line, then back-off lines (not one per second); reconnect logged",
  ...opts,
}, async () => {
  const w = new World();
  try {
    await w.control("192.168.77.254");
    const n = await w.clusterNode("n1", "192.168.77.1", "192.168.77.254");
    const log = () => Deno.readTextFile(`${n.dir}/daemon.log`);
    await w.stopControl();
    const t0 = Date.now();
    await eventually(
      async () => (await log()).includes("MQTT connection lost"),
      Boolean,
      10_000,
      "loss logged",
    );
    await new Promise((r) => setTimeout(r, 10_000));
    const down = (await log()).split("\n").filter((l) => /MQTT/.test(l));
    const elapsed = (Date.now() - t0) / 1000;
    // Attempts after about 1, 2, 4, 8 s (±20 %): at most 4 back-off lines in ~10 s; a line per
    // second (the old behaviour) would be about 10.
    const backoff = down.filter((l) => l.includes("backing off"));
    assert(
      backoff.length >= 2 && backoff.length <= 4,
      `${backoff.length} back-off lines in ${elapsed}s:\n${down.join("\n")}`,
    );
    assertEquals(down.filter((l) => l.includes("MQTT connection lost")).length, 1);
    assertEquals(down.filter((l) => l.includes("MQTT error")).length, 0, "per-attempt errors are folded in");
    const delays = backoff.map((l) => Number(/"nextRetryInMs":(\d+)/.exec(l)![1]));
    for (let i = 1; i < delays.length; i++) assert(delays[i] > delays[i - 1], `growing: ${delays}`);
    await w.startControl();
    await eventually(
      async () => /reconnected to MQTT broker.*"downSeconds"/.test(await log()),
      Boolean,
      30_000,
      "reconnect logged",
    );
  } finally {
    await w.destroy();
  }
});
