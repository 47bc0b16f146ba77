/**
 * The cookie-holders' handshake budget (issue 11, `prefer`/`require` alike): an HS_INIT gets it only
 * when its mac2 verifies (mac1 first, then the node's current or previous cookie secret), and that is
 * checked only under load — a stranger who puts garbage in mac2 no longer gets it (on the commit
 * before, any non-zero mac2 did: 500 forwarded/s instead of the strangers' 100, and the queue's
 * reserved room).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import { encodeHandshake } from "../../src/secure/secure_wire.ts";
import { MSG_HS_INIT } from "../../src/proxy/wire.ts";
import { addMacs, CookieJar, keysForCa } from "../../src/secure/cookie.ts";
import { HandshakeHost, HS_QUEUE_MAX } from "../../src/secure/hs_host.ts";
import { SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import type { HsSetup } from "../../src/secure/hs_messages.ts";

const { ca, trust, cred } = unitCa();
const mac1Key = keysForCa(ca.publicKey).mac1;
const body = (sender: number) =>
  encodeHandshake(MSG_HS_INIT, 0, sender, 0, crypto.getRandomValues(new Uint8Array(32)));
/** An INIT with the cluster's mac1 and 16 random bytes as mac2 (what a stranger can put there). */
const garbageInit = (sender: number) => {
  const m = addMacs(body(sender), mac1Key);
  m.set(crypto.getRandomValues(new Uint8Array(16)), 56);
  m[71] |= 1; // never all zero
  return m;
};

function node() {
  const secrets = { current: crypto.getRandomValues(new Uint8Array(32)) };
  const setup: HsSetup = {
    credential: cred("a"),
    trust,
    rekeyMs: 120_000,
    cookies: true,
    cookieSecrets: secrets,
  };
  const host = new HandshakeHost({
    lane: 0,
    warm: false,
    send: () => {},
    post: () => {},
    install: () => {},
    blocked: () => false,
  });
  host.setup(setup);
  // The cookie this node gives `source` (what a COOKIE reply carries), to put a real mac2 on INITs.
  const jar = new CookieJar();
  jar.setSecrets(secrets);
  const provenInit = (source: string, sender: number) =>
    addMacs(body(sender), mac1Key, jar.cookieFor(source, Date.now()));
  return { host, secrets, provenInit };
}

Deno.test("hs mac2: under load a garbage mac2 no longer buys the cookie-holders' forwarding budget; a real cookie does; the normal path checks nothing", () => {
  const { host, provenInit } = node();
  const layer = new SecureLayer({ lane: 0, post: () => {} });
  layer.setMode(SecureMode.PREFER);
  let forwarded = 0, checks = 0;
  layer.handshake = () => (forwarded++, true);
  layer.proven = (p, b, o, l) => (checks++, host.proven(p, b, o, l));
  const STRANGER = "10.9.9.9:40000";
  const now = 1_000_000;
  // A stranger's flood, all within one instant (no refill): garbage mac2 on every INIT.
  for (let i = 0; i < 1000; i++) {
    const m = garbageInit(1000 + i);
    layer.inbound(m, 0, m.length, undefined, () => STRANGER, now);
  }
  // The strangers' 100, nothing from the cookie-holders' 500 (before the fix: 500).
  assertEquals(forwarded, 100, "garbage mac2 forwarded");
  assertEquals(checks, 900, "mac2 checked only once the strangers' budget was spent");
  assert((host.drops().hs_mac2_invalid ?? 0) >= 900, "counted as hs_mac2_invalid");
  // The same stranger's INITs with a cookie this node gave it: still forwarded under the flood.
  forwarded = 0;
  for (let i = 0; i < 10; i++) {
    const m = provenInit(STRANGER, 5000 + i);
    layer.inbound(m, 0, m.length, undefined, () => STRANGER, now);
  }
  assertEquals(forwarded, 10, "cookie-proven INITs forwarded under load");
  // ...but a cookie made for another source proves nothing here.
  forwarded = 0;
  const other = provenInit("10.9.9.8:40000", 6000);
  layer.inbound(other, 0, other.length, undefined, () => STRANGER, now);
  assertEquals(forwarded, 0, "another source's cookie");
  // Normal path (a fresh second, budget left): no mac2 check at all, garbage or not.
  const layer2 = new SecureLayer({ lane: 0, post: () => {} });
  layer2.setMode(SecureMode.PREFER);
  checks = 0;
  forwarded = 0;
  layer2.handshake = () => (forwarded++, true);
  layer2.proven = (p, b, o, l) => (checks++, host.proven(p, b, o, l));
  for (let i = 0; i < 50; i++) {
    const m = garbageInit(7000 + i);
    layer2.inbound(m, 0, m.length, "10.0.0.2:50103", () => "10.0.0.2:50103", now);
  }
  assertEquals([forwarded, checks], [50, 0]);
});

Deno.test("hs mac2: the handshake queue's reserved room takes only INITs whose mac2 verifies (current or previous secret)", () => {
  const { host, secrets, provenInit } = node();
  let taken = 0;
  // A flood spoofing node B fills its share of the queue.
  for (let i = 0; i < 300; i++) {
    const m = addMacs(body(2000 + i), mac1Key);
    if (host.queue("B", m, 0, m.length, true)) taken++;
  }
  assertEquals(taken, HS_QUEUE_MAX - 32);
  const g = garbageInit(9);
  assertEquals(host.queue("B", g, 0, g.length, true), false, "garbage mac2: no room (before: taken)");
  const p = provenInit("B", 10);
  assert(host.queue("B", p, 0, p.length, true), "a real cookie's INIT finds room");
  // After a rotation the previous secret's cookies still prove; a stranger's cookie for B does not.
  host.onMessage({
    type: "secure-hs-cookie",
    secrets: { current: crypto.getRandomValues(new Uint8Array(32)), previous: secrets.current },
  });
  const p2 = provenInit("B", 11);
  assert(host.queue("B", p2, 0, p2.length, true), "previous secret");
  const p3 = provenInit("C", 12);
  assertEquals(host.queue("B", p3, 0, p3.length, true), false, "a cookie for another source");
});
