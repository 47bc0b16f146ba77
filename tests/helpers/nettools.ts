/**
 * Tiny network tools for tests, run inside containers with `deno run -A nettools.ts <cmd> …`:
 * - `tcp-echo-server PORT [NAME]`: answers each line with `NAME:line`
 * - `tcp-client HOST PORT TEXT`: sends TEXT, prints the answer, exits 0 (1 on error / 3 s timeout)
 * - `udp-echo-server PORT [NAME]` / `udp-client HOST PORT TEXT`: the same over UDP
 * - `http-server PORT NAME`: answers every HTTP request with NAME
 * - `servers PORT NAME`: TCP and UDP echo servers on the same port, a TCP sink on PORT + 1 and a
 *   sha256 sink on PORT + 2 (answers `BYTES SHA256`)
 * - `tcp-sha-send HOST PORT MB SECONDS`: MB MiB paced over about SECONDS to a sha256 sink; exits 0
 *   only when the sink's count and sha256 match what was sent
 * - `udp-burst HOST PORT N`: sends N equal-size datagrams back to back to an echo server; exits 0
 *   when all N answers arrived with the right contents (prints the count), 1 otherwise (3 s limit)
 * - `tcp-sink PORT`: reads each connection to its end, then answers `BYTES HASH` (FNV-1a 32 of all)
 * - `tcp-bulk HOST PORT MB`: sends MB MiB of pseudo-random bytes to a sink, half-closes, and exits 0
 *   only when the sink's `BYTES HASH` matches what was sent (prints both), 1 otherwise (20 s limit)
 * - `udp-send HOST PORT HEX`: sends one datagram with the given bytes (no answer expected)
 * - `tcp-chat HOST PORT N INTERVAL_MS [LOCALPORT]`: one connection, N request/answer rounds, prints
 *   each answer; exits 1 when an answer takes longer than 3 s
 * - `tcp-client-from HOST PORT TEXT LOCALPORT`: `tcp-client` from a chosen source port
 * - `udp-seq HOST PORT FLOWS N`: FLOWS sockets (source ports 42000 + f) each send N numbered
 *   datagrams to an echo server, interleaved; prints `received REORDERED` and exits 0 only when no
 *   flow's answers came back out of order and at least 95 % came back (3 s after the last send)
 * - `tcp-mirror PORT`: echoes every connection's bytes back unchanged
 * - `tcp-talk HOST PORT N INTERVAL_MS BIG`: one connection, N rounds of a random message (every
 *   fourth one BIG bytes, else 40) read back whole from a `tcp-mirror`; exits 0 (prints `talked N`)
 *   only when every echo is byte-exact, 1 when one differs, the connection ends or takes over 3 s
 */
import dgram from "node:dgram";
import { createHash } from "node:crypto";
import net from "node:net";

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

/** FNV-1a (32 bit) over `b`, continuing from `h`. */
function fnv(h: number, b: Uint8Array): number {
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i], 16777619) >>> 0;
  return h;
}

async function tcpSink(port: number) {
  for await (const conn of Deno.listen({ hostname: "::", port })) {
    (async () => {
      let n = 0;
      let h = 2166136261;
      const buf = new Uint8Array(1 << 16);
      for (;;) {
        const r = await conn.read(buf);
        if (r === null) break;
        n += r;
        h = fnv(h, buf.subarray(0, r));
      }
      await conn.write(enc.encode(`${n} ${h.toString(16)}`));
      conn.close();
    })().catch(() => {});
  }
}

/** Answers each connection's bytes with `<count> <sha256 hex>` once the sender closes its side. */
async function tcpShaSink(port: number) {
  for await (const conn of Deno.listen({ hostname: "::", port })) {
    (async () => {
      let n = 0;
      const h = createHash("sha256");
      const buf = new Uint8Array(1 << 16);
      for (;;) {
        const r = await conn.read(buf);
        if (r === null) break;
        n += r;
        h.update(buf.subarray(0, r));
      }
      await conn.write(enc.encode(`${n} ${h.digest("hex")}`));
      conn.close();
    })().catch(() => {});
  }
}

/**
 * Sends `mb` MiB of pseudo-random bytes paced over about `seconds`, then checks the sink's count and
 * sha256; prints `port <local port>` first (to find the flow), then `sent … sink …`.
 */
async function tcpShaSend(host: string, port: number, mb: number, seconds: number) {
  const timer = setTimeout(() => {
    console.error("tcp-sha-send: timeout");
    Deno.exit(1);
  }, (seconds + 60) * 1000);
  const conn = await Deno.connect({ hostname: host, port });
  console.log(`port ${(conn.localAddr as Deno.NetAddr).port}`);
  const chunk = new Uint8Array(1 << 20);
  const h = createHash("sha256");
  let x = 987654321;
  const t0 = Date.now();
  for (let m = 0; m < mb; m++) {
    for (let i = 0; i < chunk.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      chunk[i] = x >>> 24;
    }
    h.update(chunk);
    for (let o = 0; o < chunk.length;) o += await conn.write(chunk.subarray(o));
    const ahead = t0 + ((m + 1) * seconds * 1000) / mb - Date.now();
    if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
  }
  const got = await sinkReply(conn);
  clearTimeout(timer);
  const want = `${mb * chunk.length} ${h.digest("hex")}`;
  console.log(`sent ${want} sink ${got} in ${Date.now() - t0} ms`);
  if (got !== want) Deno.exit(1);
}

/** Ends the sending side and reads the sink's one-line verdict ("<bytes> <hash>") until it closes. */
async function sinkReply(conn: Deno.Conn): Promise<string> {
  await conn.closeWrite();
  const buf = new Uint8Array(256);
  let got = "";
  for (;;) {
    const r = await conn.read(buf);
    if (r === null) break;
    got += dec.decode(buf.subarray(0, r));
  }
  conn.close();
  return got;
}

/** Like tcpBulk, but paced over `seconds` (1 MB chunks with pauses): a long transfer, checked byte-exact. */
async function tcpBulkFor(host: string, port: number, seconds: number) {
  const timer = setTimeout(() => {
    console.error("tcp-bulk-for: timeout");
    Deno.exit(1);
  }, (seconds + 30) * 1000);
  const conn = await Deno.connect({ hostname: host, port });
  const chunk = new Uint8Array(1 << 20);
  let x = 12345;
  let h = 2166136261;
  let sent = 0;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    for (let i = 0; i < chunk.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      chunk[i] = x >>> 24;
    }
    h = fnv(h, chunk);
    for (let o = 0; o < chunk.length;) o += await conn.write(chunk.subarray(o));
    sent += chunk.length;
    await new Promise((r) => setTimeout(r, 50));
  }
  const got = await sinkReply(conn);
  clearTimeout(timer);
  const want = `${sent} ${h.toString(16)}`;
  console.log(`sent ${want} sink ${got}`);
  if (got !== want) Deno.exit(1);
}

async function tcpBulk(host: string, port: number, mb: number) {
  const timer = setTimeout(() => {
    console.error("tcp-bulk: timeout");
    Deno.exit(1);
  }, 20000);
  const conn = await Deno.connect({ hostname: host, port });
  const chunk = new Uint8Array(1 << 20);
  let x = 12345;
  let h = 2166136261;
  for (let m = 0; m < mb; m++) {
    for (let i = 0; i < chunk.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      chunk[i] = x >>> 24;
    }
    h = fnv(h, chunk);
    for (let o = 0; o < chunk.length;) o += await conn.write(chunk.subarray(o));
  }
  const got = await sinkReply(conn);
  clearTimeout(timer);
  const want = `${mb * chunk.length} ${h.toString(16)}`;
  console.log(`sent ${want} sink ${got}`);
  if (got !== want) Deno.exit(1);
}

function udpBurst(host: string, port: number, n: number) {
  const s = dgram.createSocket({ type: host.includes(":") ? "udp6" : "udp4" });
  const want = new Set<string>();
  const finish = (ok: boolean) => {
    console.log(`${n - want.size}/${n}`);
    s.close();
    Deno.exit(ok ? 0 : 1);
  };
  const timer = setTimeout(() => finish(false), 3000);
  s.on("message", (data) => {
    const text = dec.decode(data);
    want.delete(text.slice(text.indexOf(":") + 1));
    if (want.size === 0) {
      clearTimeout(timer);
      finish(true);
    }
  });
  for (let i = 0; i < n; i++) {
    const text = `burst-${String(i).padStart(6, "0")}-${"x".repeat(40)}`;
    want.add(text);
    s.send(text, port, host);
  }
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

/** Connects from a chosen local port (Deno.connect cannot bind one). */
function connectFrom(host: string, port: number, localPort: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, localPort });
    const timer = setTimeout(() => reject(new Error("connect timeout")), 3000);
    s.once("connect", () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once("error", reject);
  });
}

/** Sends `text` and resolves with the first answer (3 s limit). */
function askOn(s: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${text}`)), 3000);
    s.once("data", (d: Uint8Array) => {
      clearTimeout(timer);
      resolve(dec.decode(d).trim());
    });
    s.write(text);
  });
}

function udpSeq(host: string, port: number, flows: number, n: number) {
  const got = new Array<number>(flows).fill(0);
  const last = new Array<number>(flows).fill(-1);
  let reordered = 0;
  const socks = Array.from({ length: flows }, (_, f) => {
    const s = dgram.createSocket({ type: host.includes(":") ? "udp6" : "udp4" });
    s.bind(42000 + f);
    s.on("message", (m: Uint8Array) => {
      const [, ff, ii] = /(\d+)\.(\d+)$/.exec(dec.decode(m)) ?? [];
      const fi = Number(ff), i = Number(ii);
      if (fi !== f) return;
      got[f]++;
      if (i < last[f] && ++reordered <= 12) console.error(`flow ${f}: ${i} after ${last[f]}`);
      last[f] = Math.max(last[f], i);
    });
    return s;
  });
  let i = 0;
  const tick = () => {
    for (let k = 0; k < 2 && i < n; k++, i++) {
      for (let f = 0; f < flows; f++) socks[f].send(enc.encode(`${f}.${i}`), port, host);
    }
    if (i < n) setTimeout(tick, 1);
    else {
      setTimeout(() => {
        const total = got.reduce((a, b) => a + b, 0);
        console.log(`${total} ${reordered}`);
        Deno.exit(reordered === 0 && total >= 0.95 * flows * n ? 0 : 1);
      }, 3000);
    }
  };
  setTimeout(tick, 200); // let the binds finish
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
      tcpSink(Number(args[0]) + 1);
      tcpShaSink(Number(args[0]) + 2);
      await tcpServer(Number(args[0]), args[1] ?? "echo");
      break;
    case "udp-burst":
      udpBurst(args[0], Number(args[1]), Number(args[2]));
      break;
    case "tcp-sink":
      await tcpSink(Number(args[0]));
      break;
    case "tcp-bulk":
      await tcpBulk(args[0], Number(args[1]), Number(args[2]));
      break;
    case "tcp-sha-send":
      await tcpShaSend(args[0], Number(args[1]), Number(args[2]), Number(args[3]));
      break;
    case "tcp-bulk-for":
      await tcpBulkFor(args[0], Number(args[1]), Number(args[2]));
      break;
    case "udp-send": {
      const sock = dgram.createSocket({ type: args[0].includes(":") ? "udp6" : "udp4" });
      const bytes = new Uint8Array(args[2].match(/../g)!.map((h) => parseInt(h, 16)));
      sock.send(bytes, Number(args[1]), args[0], () => sock.close());
      break;
    }
    case "tcp-client-from": {
      const s = await connectFrom(args[0], Number(args[1]), Number(args[3]));
      console.log(await askOn(s, args[2]));
      s.destroy();
      break;
    }
    case "udp-seq":
      udpSeq(args[0], Number(args[1]), Number(args[2]), Number(args[3]));
      break;
    case "tcp-mirror": {
      for await (const conn of Deno.listen({ hostname: "::", port: Number(args[0]) })) {
        conn.readable.pipeTo(conn.writable).catch(() => {});
      }
      break;
    }
    case "tcp-talk": {
      const conn = await Deno.connect({ hostname: args[0], port: Number(args[1]) });
      const reader = conn.readable.getReader({ mode: "byob" });
      for (let i = 0; i < Number(args[2]); i++) {
        const msg = crypto.getRandomValues(new Uint8Array(i % 4 === 3 ? Number(args[4]) : 40));
        await conn.write(msg);
        const timer = setTimeout(() => {
          console.error(`round ${i}: no whole echo within 3 s`);
          Deno.exit(1);
        }, 3000);
        let got = new Uint8Array(msg.length);
        let have = 0;
        while (have < msg.length) {
          const r = await reader.read(got.subarray(have));
          if (r.done || !r.value) {
            console.error(`round ${i}: the connection ended`);
            Deno.exit(1);
          }
          have += r.value.length;
          got = new Uint8Array(r.value.buffer);
        }
        clearTimeout(timer);
        if (!got.every((b, j) => b === msg[j])) {
          console.error(`round ${i}: the echo differs`);
          Deno.exit(1);
        }
        await new Promise((r) => setTimeout(r, Number(args[3])));
      }
      console.log(`talked ${args[2]}`);
      conn.close();
      break;
    }
    case "tcp-chat": {
      if (args[4] !== undefined) {
        const s = await connectFrom(args[0], Number(args[1]), Number(args[4]));
        for (let i = 0; i < Number(args[2]); i++) {
          console.log(await askOn(s, `m${i}`));
          await new Promise((r) => setTimeout(r, Number(args[3])));
        }
        s.destroy();
        break;
      }
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
