/**
 * Measures per-datagram AEAD for the secure tunnel: node:crypto (`createCipheriv` per datagram, as
 * node's API requires for a new nonce) against libcrypto by FFI with one reused `EVP_CIPHER_CTX`
 * (ffi/libcrypto.ts), ChaCha20-Poly1305 and AES-256-GCM, on 1400-byte and 64 KB buffers, seal and open.
 * CPU-bound and single-threaded: run it on a quiet machine for numbers worth quoting. Prints one
 * JSON object (a table on stderr).
 *
 *   deno run -A scripts/bench_aead.ts [--ms 1500]
 * @module
 */
import crypto from "node:crypto";
import { EvpAead, type EvpAeadName } from "../ffi/libcrypto.ts";

const msArg = Deno.args.indexOf("--ms");
const MS = msArg >= 0 ? Number(Deno.args[msArg + 1]) : 1500;
const key = new Uint8Array(crypto.randomBytes(32));
const ad = new Uint8Array(16);
const nonce = new Uint8Array(12);
const nv = new DataView(nonce.buffer);

const results: { label: string; bytes: number; nsPerOp: number; gbitPerS: number }[] = [];

function run(label: string, size: number, op: (n: number) => void): void {
  let n = 0;
  for (; n < 200; n++) op(n); // warm-up
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < MS) {
    for (let i = 0; i < 64; i++) op(n++);
    t = performance.now();
  }
  const ops = n - 200;
  const ns = ((t - t0) * 1e6) / ops;
  const gbit = (size * 8) / ns;
  results.push({ label, bytes: size, nsPerOp: Math.round(ns), gbitPerS: +gbit.toFixed(2) });
  console.error(
    `${label.padEnd(42)} ${String(size).padStart(6)} B  ${ns.toFixed(0).padStart(7)} ns/op  ${
      gbit.toFixed(2)
    } Gbit/s`,
  );
}

for (const size of [1400, 65536]) {
  for (const name of ["chacha20-poly1305", "aes-256-gcm"] as const) {
    const plain = new Uint8Array(size);
    const node = name as crypto.CipherGCMTypes | "chacha20-poly1305";
    run(`node:crypto ${name} seal`, size, (n) => {
      nv.setUint32(4, n, true);
      const c = crypto.createCipheriv(node as "aes-256-gcm", key, nonce, { authTagLength: 16 });
      c.setAAD(ad, { plaintextLength: size });
      c.update(plain);
      c.final();
      c.getAuthTag();
    });
    const sealed = (() => {
      nv.setUint32(4, 7, true);
      const c = crypto.createCipheriv(node as "aes-256-gcm", key, nonce, { authTagLength: 16 });
      c.setAAD(ad, { plaintextLength: size });
      const body = c.update(plain);
      c.final();
      return { body, tag: c.getAuthTag() };
    })();
    run(`node:crypto ${name} open`, size, () => {
      const d = crypto.createDecipheriv(node as "aes-256-gcm", key, nonce, { authTagLength: 16 });
      d.setAAD(ad, { plaintextLength: size });
      d.setAuthTag(sealed.tag);
      d.update(sealed.body);
      d.final();
    });
    const evpName: EvpAeadName = name;
    const seal = new EvpAead(evpName, key, true);
    const open = new EvpAead(evpName, key, false);
    const buf = new Uint8Array(size + 16);
    run(`libcrypto FFI ${name} seal (ctx reused)`, size, (n) => {
      nv.setUint32(4, n, true);
      seal.seal(nonce, ad, buf, 0, size);
    });
    nv.setUint32(4, 9, true);
    const ct = new Uint8Array(size + 16);
    seal.seal(nonce, ad, ct, 0, size);
    run(`libcrypto FFI ${name} open (ctx reused)`, size, () => {
      buf.set(ct);
      if (!open.open(nonce, ad, buf, 0, size)) throw new Error("open failed");
    });
    seal.close();
    open.close();
  }
}
console.log(JSON.stringify({ bench: "aead per datagram (secure tunnel)", msPerCase: MS, results }));
