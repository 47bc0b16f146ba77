import { assert, assertEquals } from "../helpers/assert.ts";
import {
  addMacs,
  checkMac1,
  COOKIE_REPLY_LEN,
  COOKIE_SECRET_MS,
  CookieJar,
  INIT_WIRE_LEN,
  keysForCa,
  openCookieReply,
} from "../../src/secure/cookie.ts";

const ca = crypto.getRandomValues(new Uint8Array(32));
const k = keysForCa(ca);
const body = () => {
  const b = crypto.getRandomValues(new Uint8Array(40));
  b[0] = 0x16;
  return b;
};

Deno.test("cookie: mac1 needs the cluster's CA key; any change to the INIT breaks it", () => {
  const init = addMacs(body(), k.mac1);
  assertEquals(init.length, INIT_WIRE_LEN);
  assert(checkMac1(init, 0, init.length, [keysForCa(new Uint8Array(32)), k]) === k);
  assertEquals(checkMac1(init, 0, init.length, [keysForCa(new Uint8Array(32))]), undefined);
  const t = init.slice();
  t[10] ^= 1;
  assertEquals(checkMac1(t, 0, t.length, [k]), undefined);
  assertEquals(checkMac1(init, 0, 40, [k]), undefined);
});

Deno.test("cookie: a reply opens only for the INIT it answers; mac2 binds the source and expires with the secret", () => {
  let now = 1_000_000;
  const jar = new CookieJar();
  const init = addMacs(body(), k.mac1);
  const reply = jar.reply(init, 0, "10.0.0.1:50103", 3, 77, k, now);
  assertEquals(reply.length, COOKIE_REPLY_LEN);
  assert(reply.length < init.length, "no amplification");
  const mac1 = init.subarray(40, 56);
  const got = openCookieReply(reply, 0, reply.length, k, mac1)!;
  assertEquals(got.receiver, 77);
  assertEquals(
    openCookieReply(reply, 0, reply.length, k, new Uint8Array(16)),
    undefined,
    "another INIT's mac1",
  );
  assertEquals(openCookieReply(reply, 0, reply.length, keysForCa(new Uint8Array(32)), mac1), undefined);
  const bad = reply.slice();
  bad[30] ^= 1;
  assertEquals(openCookieReply(bad, 0, bad.length, k, mac1), undefined);
  const again = addMacs(init.subarray(0, 40), k.mac1, got.cookie);
  assert(jar.checkMac2(again, 0, "10.0.0.1:50103", now));
  assert(!jar.checkMac2(again, 0, "10.0.0.1:50104", now), "another port");
  assert(!jar.checkMac2(init, 0, "10.0.0.1:50103", now), "no mac2");
  now += COOKIE_SECRET_MS + 1;
  assert(jar.checkMac2(again, 0, "10.0.0.1:50103", now), "the previous secret still counts");
  now += COOKIE_SECRET_MS + 1;
  assert(!jar.checkMac2(again, 0, "10.0.0.1:50103", now), "two rotations later it does not");
});
