/**
 * Hostile tunnel traffic for the trust tests, run inside a node namespace with
 * `deno run -A spoof.ts <cmd> …` (its datagrams carry that namespace's underlay address):
 * - `inner HOST PORT SRC DST DPORT TEXT`: one raw-mode datagram carrying a UDP packet SRC → DST:DPORT
 * - `flood HOST PORT SECONDS KEYS BINDS`: for SECONDS, raw-mode datagrams whose inner sources cycle
 *   through KEYS IPv4 ServiceIPs (10.30.x.y) and KEYS IPv6 ones (fdff::1:x), sent from each local
 *   address in the comma-separated BINDS in turn; prints `{"sent":N,"pps":R}`
 * - `jumbo HOST PORT COUNT GAP`: COUNT complete two-chunk JUMBO messages (TCP to 10.18.0.66) with
 *   made-up ids, each GAP above the previous (a sender's consecutive ids with GAP-1 lost between)
 */
import dgram from "node:dgram";
import { buildIPv4Tcp, buildIPv4Udp, buildIPv6Udp } from "./packets.ts";

const [cmd, ...args] = Deno.args;

function socket(bind?: string): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  return new Promise((resolve, reject) => {
    s.once("error", reject);
    s.bind({ address: bind, port: 0 }, () => resolve(s));
  });
}

function send(s: dgram.Socket, b: Uint8Array, host: string, port: number): Promise<void> {
  return new Promise((resolve) => s.send(b, port, host, () => resolve()));
}

if (cmd === "inner") {
  const [host, port, src, dst, dport, text] = args;
  const s = await socket();
  const p = buildIPv4Udp({
    src,
    dst,
    srcPort: 5555,
    dstPort: Number(dport),
    payload: new TextEncoder().encode(text),
  });
  await send(s, p, host, Number(port));
  s.close();
} else if (cmd === "flood") {
  const [host, portText, secondsText, keysText, binds] = args;
  const port = Number(portText);
  const keys = Number(keysText);
  const socks = await Promise.all(binds.split(",").map((b) => socket(b)));
  // Prebuilt packets, patched per key (the inner source), so the sender is not the bottleneck.
  const p4 = buildIPv4Udp({ src: "10.30.0.0", dst: "10.18.0.66", srcPort: 1, dstPort: 9, payload: 32 });
  const p6 = buildIPv6Udp({ src: "fdff::1:0", dst: "fc00::102", srcPort: 1, dstPort: 9, payload: 32 });
  const end = performance.now() + Number(secondsText) * 1000;
  let sent = 0;
  let k = 0;
  const t0 = performance.now();
  while (performance.now() < end) {
    const batch: Promise<void>[] = [];
    for (let i = 0; i < 256; i++, k = (k + 1) % keys) {
      const v6 = (sent + i) % 2 === 1;
      const p = (v6 ? p6 : p4).slice();
      if (v6) {
        p[8 + 12] = (k >>> 24) & 0xff; // inner source fdff::1:<k> (bytes 12..15 of the address)
        p[8 + 13] = (k >>> 16) & 0xff;
        p[8 + 14] = (k >>> 8) & 0xff;
        p[8 + 15] = k & 0xff;
      } else {
        p[14] = (k >>> 8) & 0xff; // inner source 10.30.<k>
        p[15] = k & 0xff;
        // the IPv4 header checksum is not checked by the receiver before it parks
      }
      batch.push(send(socks[(sent + i) % socks.length], p, host, port));
    }
    await Promise.all(batch);
    sent += 256;
  }
  console.log(JSON.stringify({ sent, pps: Math.round(sent / ((performance.now() - t0) / 1000)) }));
  for (const s of socks) s.close();
} else if (cmd === "jumbo") {
  const [host, port, countText, gapText] = args;
  const s = await socket();
  const inner = buildIPv4Tcp({
    src: "10.30.0.2",
    dst: "10.18.0.66",
    srcPort: 80,
    dstPort: 999,
    payload: 400,
  });
  const first = inner.length - 100; // chunk 1 carries the last 100 bytes (no longer than chunk 0)
  let id = (Math.random() * 0x100000000) >>> 0;
  for (let n = 0; n < Number(countText); n++) {
    id = (id + Number(gapText)) >>> 0;
    const tag = (k: number) => [0x15, k, 2, 1, id >>> 24, (id >>> 16) & 255, (id >>> 8) & 255, id & 255];
    const c0 = new Uint8Array([...tag(0), 1, 0, 0x05, 0x78, 0, 20, 0, 16, ...inner.subarray(0, first)]);
    const c1 = new Uint8Array([...tag(1), ...inner.subarray(first)]);
    await send(s, c0, host, Number(port));
    await send(s, c1, host, Number(port));
  }
  s.close();
} else {
  console.error(`unknown command ${cmd}`);
  Deno.exit(2);
}
