/**
 * A node that speaks only MQTT (the web test): connects with a node credential, asks for its subnet
 * as an Oakestra Go node does, then publishes the given reports on `nodes/<id>/netmanager/report`
 * (none: a Go node never reports) and stays connected until killed:
 *
 *   deno run -A mqtt_reporter.ts mqtt://127.0.0.1:10003 credential.json reports.json
 *
 * `reports.json`: `[{"payload": "<text>", "delayMs": 0}, …]`. Prints one JSON line per step.
 */
import mqtt from "mqtt";

const [url, credFile, reportsFile] = Deno.args;
const cred = JSON.parse(await Deno.readTextFile(credFile)) as { username: string; password: string };
const reports = JSON.parse(await Deno.readTextFile(reportsFile)) as Array<
  { payload: string; delayMs?: number }
>;
const id = cred.username;
const log = (o: Record<string, unknown>) => console.log(JSON.stringify(o));
const client = await mqtt.connectAsync(url, {
  protocolVersion: 4,
  clean: true,
  clientId: id,
  username: id,
  password: cred.password,
});
const subnet = new Promise<string>((resolve) =>
  client.on("message", (_t, p) => resolve(new TextDecoder().decode(p)))
);
await client.subscribeAsync(`nodes/${id}/net/subnetwork/result`, { qos: 1 });
await client.publishAsync(`nodes/${id}/net/subnet`, JSON.stringify({ METHOD: "GET" }), { qos: 1 });
log({ event: "subnet", result: JSON.parse(await subnet) });
for (const r of reports) {
  if (r.delayMs) await new Promise((res) => setTimeout(res, r.delayMs));
  await client.publishAsync(`nodes/${id}/netmanager/report`, r.payload, { qos: 1 });
  log({ event: "report", bytes: r.payload.length });
}
log({ event: "done" });
await new Promise(() => {}); // stay connected
