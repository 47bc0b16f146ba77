/**
 * A client of the control plane run inside a test namespace (`ip netns exec <ns> deno run -A …`):
 *
 * - `http`: reads `[{method, url, token, body?}]` (JSON) on stdin, sends all requests at once and
 *   prints `[{status, body}]`;
 * - `query <broker> <worker> <key> [timeoutMs]`: one table query over MQTT, prints the result
 *   payload (exit 1 on timeout);
 * - `watch <broker> <filter> <count> <timeoutMs>`: prints the first `count` messages on `filter` as
 *   JSON lines `{topic, payload}` (exit 1 on timeout);
 * - `publish <broker> <topic> <payload>`: one QoS 1 message (exit once the broker acknowledged it).
 */
import mqtt from "mqtt";

const [cmd, ...args] = Deno.args;

async function readStdin(): Promise<string> {
  return await new Response(Deno.stdin.readable).text();
}

function timeout(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)
  );
}

if (cmd === "http") {
  const reqs = JSON.parse(await readStdin()) as Array<
    { method: string; url: string; token: string; body?: unknown }
  >;
  const out = await Promise.all(reqs.map(async (q) => {
    try {
      const r = await fetch(q.url, {
        method: q.method,
        headers: { authorization: `Bearer ${q.token}`, "content-type": "application/json" },
        ...(q.body !== undefined ? { body: JSON.stringify(q.body) } : {}),
      });
      const text = await r.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch { /* text */ }
      return { status: r.status, body };
    } catch (e) {
      return { status: 0, body: (e as Error).message };
    }
  }));
  console.log(JSON.stringify(out));
  Deno.exit(0);
} else if (cmd === "query") {
  const [broker, worker, key, ms] = args;
  const c = await mqtt.connectAsync(broker, {
    // with credentials in the URL the client id is the worker id (an authenticating broker wants it)
    clientId: new URL(broker).username || `q-${crypto.randomUUID().slice(0, 8)}`,
    reconnectPeriod: 0,
  });
  await c.subscribeAsync(`nodes/${worker}/net/tablequery/result`, { qos: 1 });
  const got = new Promise<string>((resolve) => c.on("message", (_t, p) => resolve(p.toString())));
  const isIp = /^[0-9.:a-fA-F]+$/.test(key);
  await c.publishAsync(
    `nodes/${worker}/net/tablequery/request`,
    JSON.stringify({ sname: isIp ? "" : key, sip: isIp ? key : "" }),
    { qos: 1 },
  );
  try {
    console.log(await Promise.race([got, timeout(Number(ms ?? 5000), "table query")]));
    Deno.exit(0);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
} else if (cmd === "watch") {
  const [broker, filter, count, ms] = args;
  const c = await mqtt.connectAsync(broker, {
    clientId: `w-${crypto.randomUUID().slice(0, 8)}`,
    reconnectPeriod: 0,
  });
  let n = 0;
  const done = new Promise<void>((resolve) =>
    c.on("message", (topic, p) => {
      console.log(JSON.stringify({ topic, payload: p.toString() }));
      if (++n >= Number(count)) resolve();
    })
  );
  await c.subscribeAsync(filter, { qos: 1 });
  console.error("subscribed");
  try {
    await Promise.race([done, timeout(Number(ms), "watch")]);
    Deno.exit(0);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
} else if (cmd === "publish") {
  const [broker, topic, payload] = args;
  const c = await mqtt.connectAsync(broker, {
    clientId: `p-${crypto.randomUUID().slice(0, 8)}`,
    reconnectPeriod: 0,
  });
  await c.publishAsync(topic, payload, { qos: 1 });
  await c.endAsync();
  Deno.exit(0);
} else {
  console.error("usage: ctl_client.ts http | query … | watch … | publish …");
  Deno.exit(2);
}
