/**
 * An anonymous MQTT client publishing hostile table-query results to one node (the trust tests):
 *
 *   deno run -A mqtt_attacker.ts mqtt://127.0.0.1:10003 <worker id> plan.json
 *
 * `plan.json`: `{"unsolicited": [result…], "raced": [{"job", "result"}…]}`. Unsolicited results are
 * published as they are. For each raced one it publishes `jobs/<job>/updates_available` (which
 * anyone may), waits for the node's table query for `job` and answers it at once — before a slow
 * cluster does. Prints one JSON line per step and `{"event":"done"}` at the end.
 */
import mqtt from "mqtt";

const [url, id, file] = Deno.args;
const plan = JSON.parse(await Deno.readTextFile(file)) as {
  unsolicited: unknown[];
  raced: Array<{ job: string; result: unknown }>;
};
const resultTopic = `nodes/${id}/net/tablequery/result`;
const client = await mqtt.connectAsync(url, { protocolVersion: 4, clean: true });
let waiting: { job: string; done: () => void } | undefined;
client.on("message", (_topic, payload) => {
  const q = JSON.parse(new TextDecoder().decode(payload)) as { sname?: string };
  if (waiting && q.sname === waiting.job) waiting.done();
});
await client.subscribeAsync(`nodes/${id}/net/tablequery/request`, { qos: 1 });
const log = (o: Record<string, unknown>) => console.log(JSON.stringify(o));
for (const r of plan.unsolicited) {
  await client.publishAsync(resultTopic, JSON.stringify(r), { qos: 1 });
  log({ event: "unsolicited" });
  await new Promise((r) => setTimeout(r, 200));
}
for (const { job, result } of plan.raced) {
  const asked = new Promise<boolean>((resolve) => {
    waiting = { job, done: () => resolve(true) };
    setTimeout(() => resolve(false), 3000);
  });
  await client.publishAsync(`jobs/${job}/updates_available`, JSON.stringify({ type: "DEPLOYMENT" }), {
    qos: 1,
  });
  const ok = await asked;
  waiting = undefined;
  if (ok) await client.publishAsync(resultTopic, JSON.stringify(result), { qos: 1 });
  log({ event: "raced", job, asked: ok });
  await new Promise((r) => setTimeout(r, 700));
}
log({ event: "done" });
await client.endAsync();
