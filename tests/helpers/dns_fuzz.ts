/**
 * Sends N fuzzed DNS packets over UDP to HOST:PORT (run inside an instance namespace):
 * random bytes, valid queries (dns-packet) with bytes flipped, truncated or extended, compression
 * loops, huge counts. Prints how many were sent.
 *
 * deno run -A tests/helpers/dns_fuzz.ts HOST PORT N SEED
 */
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";

const [host, portText, nText, seedText] = Deno.args;
const port = Number(portText);
const n = Number(nText);
let seed = Number(seedText ?? "1") >>> 0 || 1;
const rnd = (k: number) => {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed % k;
};

const names = ["web.ns.app.ns.local", "instance-0.web.ns.app.ns.local", "example.test", "x.local", "."];
const types = ["A", "AAAA", "PTR", "ANY", "TXT", "SRV"] as unknown as readonly "A"[];

function valid(): Buffer {
  return dnsPacket.encode({
    type: "query",
    id: rnd(65536),
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name: names[rnd(names.length)], type: types[rnd(types.length)], class: "IN" }],
    ...(rnd(2) ? { additionals: [{ type: "OPT", name: ".", udpPayloadSize: rnd(65536) } as never] } : {}),
  });
}

function fuzzed(): Uint8Array {
  switch (rnd(6)) {
    case 0: { // random bytes
      const b = new Uint8Array(rnd(600));
      for (let i = 0; i < b.length; i++) b[i] = rnd(256);
      return b;
    }
    case 1: { // bit flips
      const b = new Uint8Array(valid());
      for (let k = 0; k < 1 + rnd(6); k++) b[rnd(b.length)] ^= 1 << rnd(8);
      return b;
    }
    case 2: { // truncated
      const b = new Uint8Array(valid());
      return b.subarray(0, rnd(b.length));
    }
    case 3: { // header counts lie
      const b = new Uint8Array(valid());
      b[4 + rnd(8)] = rnd(256);
      return b;
    }
    case 4: { // compression pointer loop in the question name
      const b = new Uint8Array(valid());
      b[12] = 0xc0;
      b[13] = 12;
      return b;
    }
    default: { // a response, or garbage appended
      const b = new Uint8Array(valid());
      if (rnd(2)) b[2] |= 0x80;
      const extra = new Uint8Array(rnd(100)).map(() => rnd(256));
      const out = new Uint8Array(b.length + extra.length);
      out.set(b);
      out.set(extra, b.length);
      return out;
    }
  }
}

const sock = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
sock.on("message", () => {});
let sent = 0;
for (let i = 0; i < n; i++) {
  await new Promise<void>((r) => sock.send(fuzzed(), port, host, () => r()));
  sent++;
  if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5)); // let the socket buffers drain
}
sock.close();
console.log(sent);
