/**
 * Tiny network tools for tests, run inside containers with `deno run -A nettools.ts <cmd> …`:
 * - `tcp-echo-server PORT [NAME]`: answers each line with `NAME:line`
 * - `tcp-client HOST PORT TEXT`: sends TEXT, prints the answer, exits 0 (1 on error / 3 s timeout)
 * - `udp-echo-server PORT [NAME]` / `udp-client HOST PORT TEXT`: the same over UDP
 * - `http-server PORT NAME`: answers every HTTP request with NAME
 * - `servers PORT NAME`: TCP and UDP echo servers on the same port
 * - `udp-send HOST PORT HEX`: sends one datagram with the given bytes (no answer expected)
 * - `tcp-chat HOST PORT N INTERVAL_MS`: one connection, N request/answer rounds, prints each answer;
 *   exits 1 when an answer takes longer than 3 s
 */
import dgram from "node:dgram";

const [cmd, ...args] = Deno.args;
const enc = new TextEncoder();
const dec = new TextDecoder();

async function tcpServer(port: number, name: string) {
  const l = Deno.listen({ hostname: "::", port });
  for await (const conn of l) {
    (async () => {
      const buf = new Uint8Array(65536);
      try {
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          await conn.write(enc.encode(`${name}:${dec.decode(buf.subarray(0, n))}`));
        }
      } catch { /* peer went away */ }
      try {
        conn.close();
      } catch { /* closed */ }
    })();
  }
}

async function tcpClient(host: string, port: number, text: string) {
  const timer = setTimeout(() => Deno.exit(1), 3000);
  const conn = await Deno.connect({ hostname: host, port });
  await conn.write(enc.encode(text));
  const buf = new Uint8Array(65536);
  const n = await conn.read(buf);
  console.log(dec.decode(buf.subarray(0, n ?? 0)));
  conn.close();
  clearTimeout(timer);
}

function udpServer(port: number, name: string) {
  const s = dgram.createSocket({ type: "udp6" });
  s.on("message", (data, rinfo) => s.send(`${name}:${dec.decode(data)}`, rinfo.port, rinfo.address));
  s.bind(port, "::");
}

function udpClient(host: string, port: number, text: string) {
  const timer = setTimeout(() => Deno.exit(1), 3000);
  const s = dgram.createSocket({ type: host.includes(":") ? "udp6" : "udp4" });
  s.on("message", (data) => {
    console.log(dec.decode(data));
    clearTimeout(timer);
    s.close();
  });
  s.send(text, port, host);
}

function httpServer(port: number, name: string) {
  Deno.serve({ hostname: "::", port, onListen() {} }, () => new Response(`${name}\n`));
}

try {
  switch (cmd) {
    case "tcp-echo-server":
      await tcpServer(Number(args[0]), args[1] ?? "echo");
      break;
    case "tcp-client":
      await tcpClient(args[0], Number(args[1]), args[2]);
      break;
    case "udp-echo-server":
      udpServer(Number(args[0]), args[1] ?? "echo");
      break;
    case "udp-client":
      udpClient(args[0], Number(args[1]), args[2]);
      break;
    case "servers":
      udpServer(Number(args[0]), args[1] ?? "echo");
      await tcpServer(Number(args[0]), args[1] ?? "echo");
      break;
    case "udp-send": {
      const sock = dgram.createSocket({ type: args[0].includes(":") ? "udp6" : "udp4" });
      const bytes = new Uint8Array(args[2].match(/../g)!.map((h) => parseInt(h, 16)));
      sock.send(bytes, Number(args[1]), args[0], () => sock.close());
      break;
    }
    case "tcp-chat": {
      const conn = await Deno.connect({ hostname: args[0], port: Number(args[1]) });
      const buf = new Uint8Array(65536);
      for (let i = 0; i < Number(args[2]); i++) {
        await conn.write(enc.encode(`m${i}`));
        const timer = setTimeout(() => {
          console.error(`no answer to m${i}`);
          Deno.exit(1);
        }, 3000);
        const n = await conn.read(buf);
        clearTimeout(timer);
        console.log(dec.decode(buf.subarray(0, n ?? 0)));
        await new Promise((r) => setTimeout(r, Number(args[3])));
      }
      conn.close();
      break;
    }
    case "http-server":
      httpServer(Number(args[0]), args[1] ?? "server");
      break;
    default:
      console.error(`unknown command ${cmd}`);
      Deno.exit(2);
  }
} catch (e) {
  console.error(String(e));
  Deno.exit(1);
}
