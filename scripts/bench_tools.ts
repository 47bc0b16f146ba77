/**
 * Small measuring tools that `scripts/bench_cluster.ts` runs inside simulated hosts and instances:
 * - `probe-tcp HOST PORT LIMIT_MS`: connects every 2 ms until a TCP connect and echo succeed; prints
 *   the wall-clock time (ms) of success, or exits 1 after LIMIT_MS
 * - `udp-rtt HOST PORT N [WARM_HOST]`: N sequential UDP requests; prints each round-trip time in µs
 *   (JSON array, -1 for a request unanswered within 1 s); with WARM_HOST, two uncounted requests go
 *   there first, so the socket, ARP and JIT costs of a first send are not charged to HOST; exits 1
 *   after 3 unanswered requests in a row
 * - `register API N [TOKEN_FILE]`: registers N services with the control plane's HTTP API (bearer token
 *   read from TOKEN_FILE, the control plane's `api-token`); prints ms per request
 *   (JSON), then `query`-style lookups are left to the caller
 */
import dgram from "node:dgram";

/** How long one UDP request waits for its answer. */
const REPLY_TIMEOUT_MS = 1000;
/** `udp-rtt` gives up (exit 1) after this many unanswered requests in a row. */
const MAX_LOST_IN_A_ROW = 3;
/** Limit for one HTTP request of `register`. */
const HTTP_TIMEOUT_MS = 5000;

const [cmd, ...args] = Deno.args;

async function probeTcp(host: string, port: number, limit: number) {
  const end = Date.now() + limit;
  while (Date.now() < end) {
    try {
      const conn = await Promise.race([
        Deno.connect({ hostname: host, port }),
        new Promise<never>((_, rej) => setTimeout(() => rej(new Error("timeout")), 50)),
      ]);
      await conn.write(new TextEncoder().encode("p"));
      const buf = new Uint8Array(64);
      const n = await Promise.race([
        conn.read(buf),
        new Promise<null>((r) => setTimeout(() => r(null), 200)),
      ]);
      conn.close();
      if (n) {
        console.log(Date.now());
        Deno.exit(0); // earlier attempts still connecting must not keep the process alive
      }
    } catch {
      // not yet reachable
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  Deno.exit(1);
}

async function udpRtt(host: string, port: number, n: number, warm?: string) {
  const s = dgram.createSocket({ type: host.includes(":") ? "udp6" : "udp4" });
  const out: number[] = [];
  const targets = [...(warm ? [warm, warm] : []), ...new Array<string>(n).fill(host)];
  // One listener for the whole run: an answer is matched to its request by the echoed text, so a
  // late answer is never taken for the next request's.
  let waiting: { tag: string; done: (ok: boolean) => void } | undefined;
  s.on("message", (data: Uint8Array) => {
    const text = new TextDecoder().decode(data);
    if (waiting && text.endsWith(`:${waiting.tag}`)) waiting.done(true);
  });
  let lostInARow = 0;
  for (let i = 0; i < targets.length; i++) {
    const to = targets[i];
    const tag = `r${i}`;
    const t0 = performance.now();
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), REPLY_TIMEOUT_MS);
      waiting = {
        tag,
        done: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
      };
      s.send(tag, port, to);
    });
    waiting = undefined;
    lostInARow = ok ? 0 : lostInARow + 1;
    if (lostInARow >= MAX_LOST_IN_A_ROW) {
      s.close();
      console.error(`udp-rtt: no answer from ${to}:${port} to ${lostInARow} requests in a row`);
      Deno.exit(1);
    }
    if (warm && i < 2) continue;
    out.push(ok ? Math.round((performance.now() - t0) * 1000) : -1);
  }
  s.close();
  console.log(JSON.stringify(out));
}

async function register(api: string, n: number, tokenFile?: string) {
  const token = tokenFile ? (await Deno.readTextFile(tokenFile)).trim() : "";
  const auth: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const r = await fetch(`${api}/api/net/service/deploy`, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
      body: JSON.stringify({
        deployment_descriptor: {
          app_name: "bulk",
          app_ns: "bench",
          microservice_name: `s${i}`,
          microservice_namespace: "ns",
        },
      }),
    });
    await r.body?.cancel();
    if (!r.ok) throw new Error(`register s${i}: HTTP ${r.status}`);
  }
  console.log(JSON.stringify({ services: n, msPerRegistration: +((performance.now() - t0) / n).toFixed(3) }));
}

switch (cmd) {
  case "probe-tcp":
    await probeTcp(args[0], Number(args[1]), Number(args[2]));
    break;
  case "udp-rtt":
    await udpRtt(args[0], Number(args[1]), Number(args[2]), args[3]);
    break;
  case "register":
    await register(args[0], Number(args[1]), args[2]);
    break;
  default:
    console.error(`unknown command ${cmd}`);
    Deno.exit(2);
}
