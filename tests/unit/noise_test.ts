import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  aeadDecrypt,
  aeadEncrypt,
  generateKeyPair,
  HandshakeState,
  type KeyPair,
  type NoiseCipher,
  NoiseError,
  type NoiseHash,
  type NoisePattern,
  publicKeyOf,
} from "../../src/secure/noise.ts";

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_static?: string;
  init_ephemeral: string;
  init_remote_static?: string;
  resp_prologue: string;
  resp_static?: string;
  resp_ephemeral: string;
  handshake_hash: string;
  messages: { payload: string; ciphertext: string }[];
}

const hex = (s: string): Uint8Array => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const pair = (s: string | undefined): KeyPair | undefined =>
  s === undefined ? undefined : { privateKey: hex(s), publicKey: publicKeyOf(hex(s)) };

const fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/noise_cacophony.json", import.meta.url)),
) as { source: string; vectors: Vector[] };

for (const v of fixture.vectors) {
  Deno.test(`noise: cacophony vector ${v.protocol_name}`, () => {
    const [, pattern, , cipher, hash] = v.protocol_name.split("_") as [
      string,
      NoisePattern,
      string,
      NoiseCipher,
      NoiseHash,
    ];
    const ini = new HandshakeState({
      pattern,
      initiator: true,
      hash,
      cipher,
      prologue: hex(v.init_prologue),
      s: pair(v.init_static),
      e: pair(v.init_ephemeral),
      rs: v.init_remote_static ? hex(v.init_remote_static) : undefined,
    });
    const res = new HandshakeState({
      pattern,
      initiator: false,
      hash,
      cipher,
      prologue: hex(v.resp_prologue),
      s: pair(v.resp_static),
      e: pair(v.resp_ephemeral),
    });
    let i = 0;
    for (; !ini.complete; i++) {
      const [w, r] = i % 2 === 0 ? [ini, res] : [res, ini];
      const m = v.messages[i];
      assertEquals(toHex(w.writeMessage(hex(m.payload))), m.ciphertext, `handshake message ${i}`);
      assertEquals(toHex(r.readMessage(hex(m.ciphertext))), m.payload);
    }
    assert(res.complete);
    assertEquals(toHex(ini.handshakeHash), v.handshake_hash);
    assertEquals(toHex(res.handshakeHash), v.handshake_hash);
    const [i2r, r2i] = ini.split();
    const [i2r2, r2i2] = res.split();
    assertEquals(toHex(i2r), toHex(i2r2));
    assertEquals(toHex(r2i), toHex(r2i2));
    const n = { i: 0n, r: 0n };
    for (; i < v.messages.length; i++) {
      // Transport messages keep alternating senders after the handshake (cacophony's convention).
      const fromIni = i % 2 === 0;
      const k = fromIni ? i2r : r2i;
      const nonce = fromIni ? n.i++ : n.r++;
      const m = v.messages[i];
      assertEquals(
        toHex(aeadEncrypt(k, nonce, new Uint8Array(0), hex(m.payload), cipher)),
        m.ciphertext,
        `transport ${i}`,
      );
      assertEquals(toHex(aeadDecrypt(k, nonce, new Uint8Array(0), hex(m.ciphertext), cipher)), m.payload);
    }
  });
}

Deno.test("noise: the fixture names its source and covers XX and IK with BLAKE2s and both ciphers", () => {
  assert(fixture.source.includes("cacophony"));
  const names = fixture.vectors.map((v) => v.protocol_name);
  assert(names.includes("Noise_XX_25519_ChaChaPoly_BLAKE2s"));
  assert(names.includes("Noise_IK_25519_ChaChaPoly_BLAKE2s"));
  assert(names.includes("Noise_XX_25519_AESGCM_BLAKE2s"));
});

function xx(): { ini: HandshakeState; res: HandshakeState; msgs: Uint8Array[] } {
  const ini = new HandshakeState({ pattern: "XX", initiator: true, s: generateKeyPair() });
  const res = new HandshakeState({ pattern: "XX", initiator: false, s: generateKeyPair() });
  const msgs: Uint8Array[] = [];
  msgs.push(ini.writeMessage(new Uint8Array(0)));
  res.readMessage(msgs[0]);
  msgs.push(res.writeMessage(Uint8Array.of(1, 2, 3)));
  ini.readMessage(msgs[1]);
  msgs.push(ini.writeMessage(Uint8Array.of(4, 5)));
  return { ini, res, msgs };
}

Deno.test("noise: XX with random keys agrees, and each side learns the other's static key", () => {
  const { ini, res, msgs } = xx();
  assertEquals(Array.from(res.readMessage(msgs[2])), [4, 5]);
  assertEquals(toHex(ini.split()[0]), toHex(res.split()[0]));
  assert(ini.remoteStatic && res.remoteStatic);
});

Deno.test("noise: every flipped bit of the last XX message is refused and the state is dead", () => {
  const { msgs } = xx();
  for (let bit = 0; bit < msgs[2].length * 8; bit += 7) {
    const { ini, res, msgs: m } = xx();
    void ini;
    const bad = m[2].slice();
    bad[bit >> 3] ^= 1 << (bit & 7);
    assertThrows(() => res.readMessage(bad), NoiseError);
    assertThrows(() => res.readMessage(m[2]), NoiseError); // failed state stays failed
  }
});

Deno.test("noise: truncated and oversized messages, wrong turns and low-order keys throw NoiseError", () => {
  const res = new HandshakeState({ pattern: "XX", initiator: false, s: generateKeyPair() });
  assertThrows(() => res.readMessage(new Uint8Array(31)), NoiseError);
  const res2 = new HandshakeState({ pattern: "XX", initiator: false, s: generateKeyPair() });
  assertThrows(() => res2.writeMessage(new Uint8Array(0)), NoiseError);
  assertThrows(() => res2.readMessage(new Uint8Array(70000)), NoiseError);
  // An all-zero ephemeral is a low-order point: the responder's ee must refuse it.
  const res3 = new HandshakeState({ pattern: "XX", initiator: false, s: generateKeyPair() });
  res3.readMessage(new Uint8Array(32));
  assertThrows(() => res3.writeMessage(new Uint8Array(0)), NoiseError);
  assertThrows(() => new HandshakeState({ pattern: "XX", initiator: true }), NoiseError);
  assertThrows(
    () => new HandshakeState({ pattern: "IK", initiator: true, s: generateKeyPair() }),
    NoiseError,
  );
});
