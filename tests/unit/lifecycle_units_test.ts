/**
 * Pure parts of the lifecycle work: ARP announcement and neighbour-advertisement layouts, the
 * API gate's framing helpers, the bridge MAC derivation, the new rtnetlink requests (neighbour
 * delete, bridge and link with a MAC, MAC decoding), and the state store refusing a FIFO.
 */
import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { arpAnnouncement, neighbourAdvertisement } from "../../ffi/announce.ts";
import {
  AF,
  buildDelNeigh,
  buildNewBridge,
  buildSetLink,
  IFLA,
  NDA,
  NlEncoder,
  parseAttrs,
  RTM,
} from "../../ffi/netlink_msg.ts";
import { bodyLength, headEnd } from "../../src/api/gate.ts";
import { bridgeMac } from "../../src/env/manager.ts";
import { StateError, StateStore } from "../../src/env/state.ts";

const MAC = new Uint8Array([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

Deno.test("announce: ARP announcement is a request with sender = target = the address", () => {
  const ip = new Uint8Array([10, 18, 0, 66]);
  const p = arpAnnouncement(MAC, ip);
  deepStrictEqual([...p.subarray(0, 8)], [0, 1, 8, 0, 6, 4, 0, 1]);
  deepStrictEqual([...p.subarray(8, 14)], [...MAC]);
  deepStrictEqual([...p.subarray(14, 18)], [...ip]);
  deepStrictEqual([...p.subarray(18, 24)], [0, 0, 0, 0, 0, 0]);
  deepStrictEqual([...p.subarray(24, 28)], [...ip]);
  throws(() => arpAnnouncement(MAC, new Uint8Array(16)), RangeError);
});

Deno.test("announce: unsolicited NA has the override flag and the target link-layer option", () => {
  const ip = new Uint8Array(16).fill(7);
  const p = neighbourAdvertisement(MAC, ip);
  strictEqual(p.length, 32);
  strictEqual(p[0], 136);
  strictEqual(p[1], 0);
  strictEqual(p[4], 0x20, "O set, S and R clear");
  deepStrictEqual([...p.subarray(8, 24)], [...ip]);
  deepStrictEqual([...p.subarray(24, 32)], [2, 1, ...MAC]);
  throws(() => neighbourAdvertisement(new Uint8Array(5), ip), RangeError);
});

Deno.test("gate: end of head and body length", () => {
  const t = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\nrest");
  strictEqual(headEnd(t, t.length), t.length - 4);
  strictEqual(headEnd(t, 20), -1);
  deepStrictEqual(bodyLength("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"), { length: 12 });
  deepStrictEqual(bodyLength("POST / HTTP/1.1\r\ncontent-length:7\r\n\r\n"), { length: 7 });
  deepStrictEqual(bodyLength("GET / HTTP/1.1\r\n\r\n"), { length: 0 });
  deepStrictEqual(bodyLength("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), { refuse: 411 });
  deepStrictEqual(bodyLength("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), {
    refuse: 400,
  });
  deepStrictEqual(bodyLength("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), { refuse: 400 });
});

Deno.test("bridge MAC: stable, locally administered unicast, differs per node subnet", async () => {
  const a = await bridgeMac("goProxyBridge", "10.18.0.64/26,fc00::a:1200:4000/120");
  const b = await bridgeMac("goProxyBridge", "10.18.0.64/26,fc00::a:1200:4000/120");
  const c = await bridgeMac("goProxyBridge", "10.18.0.128/26,fc00::a:1200:8000/120");
  deepStrictEqual(a, b);
  ok(a.some((x, i) => x !== c[i]));
  strictEqual(a.length, 6);
  strictEqual(a[0] & 3, 2);
});

Deno.test("netlink: RTM_DELNEIGH, bridge with a MAC, set MAC", () => {
  const enc = new NlEncoder(new Uint8Array(256));
  const ip = new Uint8Array([10, 18, 0, 66]);
  const m = buildDelNeigh(enc, 9, 5, 4, ip);
  const dv = new DataView(m.buffer, m.byteOffset, m.byteLength);
  strictEqual(dv.getUint16(4, true), RTM.DELNEIGH);
  strictEqual(m[16], AF.INET);
  strictEqual(dv.getInt32(20, true), 5);
  const attrs = parseAttrs(m, 28, m.length);
  deepStrictEqual([...m.subarray(attrs.get(NDA.DST)!.off, attrs.get(NDA.DST)!.off + 4)], [...ip]);
  throws(() => buildDelNeigh(enc, 1, 5, 6, ip), RangeError);

  const br = buildNewBridge(enc, 10, "br0", 1450, MAC);
  const a = parseAttrs(br, 32, br.length).get(IFLA.ADDRESS)!;
  deepStrictEqual([...br.subarray(a.off, a.off + a.len)], [...MAC]);
  const set = buildSetLink(enc, 11, 3, { address: MAC });
  const s = parseAttrs(set, 32, set.length).get(IFLA.ADDRESS)!;
  deepStrictEqual([...set.subarray(s.off, s.off + s.len)], [...MAC]);
  throws(() => buildSetLink(enc, 12, 3, { address: new Uint8Array(4) }), RangeError);
});

Deno.test("state: a FIFO at the state path is refused at once, with the recovery named", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const r = new Deno.Command("mkfifo", { args: [`${dir}/state.json`] }).outputSync();
    strictEqual(r.code, 0);
    const store = new StateStore(dir);
    throws(() => store.load(), (e: unknown) => {
      ok(e instanceof StateError);
      ok(/not a regular file/.test(e.message) && /netmanager clean/.test(e.message), e.message);
      return true;
    });
    store.remove();
    strictEqual(store.load(), undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
