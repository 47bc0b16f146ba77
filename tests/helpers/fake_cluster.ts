/**
 * Plays Oakestra's Python cluster service manager towards nodes, with its exact payloads:
 * answers `nodes/<id>/net/subnet` with `{"address","addressv6"}` (subnets handed out in order of
 * first request), answers table queries from a JSON file of jobs in the §2.3 format (numeric
 * `host_port`, `"IpType":"instance_ip"`), and prints every message it receives as a JSON line.
 * After the first `service/deployed` it also publishes malformed payloads to the node's topics
 * (a real node must ignore them).
 *
 *   deno run -A fake_cluster.ts mqtt://127.0.0.1:10003 jobs.json [ANSWER_DELAY_MS]
 *
 * With ANSWER_DELAY_MS, table queries are answered that much later (a slow cluster an attacker can race).
 */
import mqtt from "mqtt";

const [url, file, delayText] = Deno.args;
const delayMs = Number(delayText ?? 0);
const jobs = JSON.parse(await Deno.readTextFile(file)) as Array<{
  app_name: string;
  instance_list: Array<
    Record<string, unknown> & { service_ip: Array<{ Address: string; Address_v6: string }> }
  >;
}>;
const subnets = [["10.18.0.64", "fc00::100"], ["10.18.0.128", "fc00::200"], ["10.18.0.192", "fc00::300"]];
const given = new Map<string, string[]>();
let garbageSent = false;

const client = mqtt.connect(url, { protocolVersion: 4, clean: true, keepalive: 5 });
client.on("connect", () => {
  client.subscribe("nodes/+/net/#", { qos: 1 });
  console.log(JSON.stringify({ event: "connected" }));
});
client.on("message", (topic, payload) => {
  const text = new TextDecoder().decode(payload);
  console.log(JSON.stringify({ topic, payload: text }));
  const m = topic.match(/^nodes\/([^/]+)\/net\/(.+)$/);
  if (!m) return;
  const [, id, rest] = m;
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text);
  } catch {
    return;
  }
  if (rest === "subnet" && body.METHOD === "GET") {
    if (!given.has(id)) given.set(id, subnets[given.size]);
    const [address, addressv6] = given.get(id)!;
    client.publish(`nodes/${id}/net/subnetwork/result`, JSON.stringify({ address, addressv6 }), { qos: 1 });
  } else if (rest === "tablequery/request") {
    const sname = String(body.sname ?? "");
    const sip = String(body.sip ?? "");
    const job = jobs.find((j) =>
      (sname && j.app_name === sname) ||
      (sip &&
        j.instance_list.some((i) => i.service_ip.some((s) => s.Address === sip || s.Address_v6 === sip)))
    );
    const result = {
      app_name: job?.app_name ?? "",
      query_key: sname || sip,
      instance_list: job?.instance_list ?? [],
    };
    const answer = () =>
      client.publish(`nodes/${id}/net/tablequery/result`, JSON.stringify(result), { qos: 1 });
    if (delayMs > 0) setTimeout(answer, delayMs);
    else answer();
  } else if (rest === "service/deployed" && !garbageSent) {
    garbageSent = true;
    for (const bad of ["{", "[]", '{"app_name": 5}', '{"instance_list": "x"}', "null"]) {
      client.publish(`nodes/${id}/net/tablequery/result`, bad, { qos: 1 });
      client.publish(`nodes/${id}/net/subnetwork/result`, bad, { qos: 1 });
    }
    client.publish(`jobs/${String(body.appname)}/updates_available`, "not json", { qos: 1 });
  }
});
