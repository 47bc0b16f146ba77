/**
 * Node certificates: a CA (Ed25519, node:crypto) binds a node id to its X25519 tunnel key for a validity
 * window. Compact binary encoding, carried in the handshake:
 *
 * ```
 * 0     version (1)
 * 1     serial (8 bytes, random)
 * 9     node id length L (1..128), then L bytes UTF-8 node id (no / + # or spaces, as worker ids)
 * 10+L  X25519 public key (32)
 * 42+L  notBefore, notAfter (u64 big-endian unix seconds each)
 * 58+L  issuer key id (8 bytes: SHA-256 of the CA public key, first 8 bytes)
 * 66+L  Ed25519 signature (64) over "netmanager-cert-v1\0" ‖ bytes [0, 66+L)
 * ```
 *
 * 130 + L bytes in all (154 for a 24-character Oakestra node id). Decoding is strict: exact length,
 * known version, valid UTF-8 and id, notBefore < notAfter; every failure is a {@link CertError} with a
 * reason code.
 *
 * @example
 * ```ts
 * import { generateCa, signCertificate, verifyCertificate } from "./cert.ts";
 * import { generateIdentity } from "./identity.ts";
 * const ca = generateCa("cluster");
 * const now = Math.floor(Date.now() / 1000);
 * const cert = signCertificate(ca, {
 *   nodeId: "w1", publicKey: generateIdentity().publicKey, notBefore: now - 300, notAfter: now + 86400,
 * });
 * const c = verifyCertificate(cert, [ca.publicKey], now); // c.nodeId === "w1"
 * ```
 */
import crypto from "node:crypto";
import { Buffer } from "node:buffer";

/** Encoding version this module writes and accepts. */
export const CERT_VERSION = 1;
/** Longest node id in bytes (as the control plane's worker ids). */
export const MAX_NODE_ID_BYTES = 128;
const FIXED_BYTES = 1 + 8 + 1 + 32 + 8 + 8 + 8 + 64;
/** Largest encoded certificate. */
export const MAX_CERT_BYTES = FIXED_BYTES + MAX_NODE_ID_BYTES;
const SIGNATURE_BYTES = 64;
const CERT_DOMAIN = new TextEncoder().encode("netmanager-cert-v1\0");
const NODE_ID = /^[^/+#\s]{1,128}$/;
// PKCS#8 DER prefix of a raw Ed25519 private key (RFC 8410): lets node:crypto load a 32-byte seed.
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/** Why a certificate (or revocation list) was refused. */
export type CertErrorReason =
  | "malformed"
  | "version"
  | "unknown-ca"
  | "signature"
  | "not-yet-valid"
  | "expired"
  | "revoked";

/** A certificate that does not decode, verify or is not (or no longer) valid; `reason` says which. */
export class CertError extends Error {
  override name = "CertError";
  constructor(readonly reason: CertErrorReason, message: string) {
    super(message);
  }
}

/** What a CA vouches for. Serial is 16 hex digits (random when signing without one). */
export interface CertFields {
  serial: string;
  nodeId: string;
  /** X25519 public key, 32 bytes. */
  publicKey: Uint8Array;
  /** Unix seconds. */
  notBefore: number;
  /** Unix seconds, exclusive. */
  notAfter: number;
  /** 16 hex digits, see {@link caKeyId}. */
  issuerKeyId: string;
}

/** A decoded certificate: its fields plus the signed bytes and signature. */
export interface Certificate extends CertFields {
  version: number;
  /** The bytes the signature covers (without the domain prefix). */
  signed: Uint8Array;
  signature: Uint8Array;
}

/** A certificate authority: Ed25519 key pair (raw 32-byte seed and public key). */
export interface CaKey {
  name: string;
  privateKey: Uint8Array;
  publicKey: Uint8Array;
  /** 16 hex digits, see {@link caKeyId}. */
  keyId: string;
}

/** Identifier of a CA key: first 8 bytes of SHA-256 of its raw public key, in hex. */
export function caKeyId(publicKey: Uint8Array): string {
  return crypto.createHash("sha256").update(publicKey).digest("hex").slice(0, 16);
}

/** A fresh CA key pair. */
export function generateCa(name: string): CaKey {
  const { privateKey } = crypto.generateKeyPairSync("ed25519");
  const jwk = privateKey.export({ format: "jwk" });
  const publicKey = new Uint8Array(Buffer.from(jwk.x!, "base64url"));
  return {
    name,
    privateKey: new Uint8Array(Buffer.from(jwk.d!, "base64url")),
    publicKey,
    keyId: caKeyId(publicKey),
  };
}

/** The Ed25519 public key of a raw 32-byte seed. */
export function ed25519PublicKey(seed: Uint8Array): Uint8Array {
  const x = crypto.createPublicKey(ed25519PrivateKeyObject(seed)).export({ format: "jwk" }).x!;
  return new Uint8Array(Buffer.from(x, "base64url"));
}

function ed25519PrivateKeyObject(seed: Uint8Array): crypto.KeyObject {
  if (seed.length !== 32) throw new CertError("malformed", "Ed25519 private key must be 32 bytes");
  return crypto.createPrivateKey({
    key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]),
    format: "der",
    type: "pkcs8",
  });
}

/** node:crypto key object of a raw Ed25519 public key; throws CertError("malformed") for a bad one. */
export function ed25519PublicKeyObject(publicKey: Uint8Array): crypto.KeyObject {
  if (publicKey.length !== 32) throw new CertError("malformed", "Ed25519 public key must be 32 bytes");
  try {
    return crypto.createPublicKey({
      key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKey).toString("base64url") },
      format: "jwk",
    });
  } catch (e) {
    throw new CertError("malformed", `bad Ed25519 public key: ${(e as Error).message}`);
  }
}

/** Ed25519 signature of `domain ‖ data` with a CA key. */
export function caSign(ca: CaKey, domain: Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(
    crypto.sign(null, Buffer.concat([domain, data]), ed25519PrivateKeyObject(ca.privateKey)),
  );
}

/** Checks an Ed25519 signature of `domain ‖ data`. */
export function caVerify(
  key: crypto.KeyObject,
  domain: Uint8Array,
  data: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (signature.length !== SIGNATURE_BYTES) return false;
  return crypto.verify(null, Buffer.concat([domain, data]), key, signature);
}

/** A random 8-byte serial in hex. */
export function randomSerial(): string {
  return Buffer.from(crypto.randomBytes(8)).toString("hex");
}

function checkFields(f: CertFields): Uint8Array {
  if (!/^[0-9a-f]{16}$/.test(f.serial)) throw new CertError("malformed", "serial must be 16 hex digits");
  if (!/^[0-9a-f]{16}$/.test(f.issuerKeyId)) {
    throw new CertError("malformed", "issuer key id must be 16 hex digits");
  }
  const id = new TextEncoder().encode(f.nodeId);
  if (!NODE_ID.test(f.nodeId) || id.length > MAX_NODE_ID_BYTES) {
    throw new CertError("malformed", `bad node id "${f.nodeId}" (1..128 bytes, no / + # or spaces)`);
  }
  if (f.publicKey.length !== 32) throw new CertError("malformed", "public key must be 32 bytes");
  if (f.publicKey.every((b) => b === 0)) throw new CertError("malformed", "public key is all zero");
  for (const t of [f.notBefore, f.notAfter]) {
    if (!Number.isSafeInteger(t) || t < 0) throw new CertError("malformed", "validity must be unix seconds");
  }
  if (f.notBefore >= f.notAfter) throw new CertError("malformed", "notBefore must precede notAfter");
  return id;
}

function encodeSigned(f: CertFields): Uint8Array {
  const id = checkFields(f);
  const out = new Uint8Array(FIXED_BYTES - SIGNATURE_BYTES + id.length);
  const dv = new DataView(out.buffer);
  out[0] = CERT_VERSION;
  out.set(Buffer.from(f.serial, "hex"), 1);
  out[9] = id.length;
  out.set(id, 10);
  let o = 10 + id.length;
  out.set(f.publicKey, o);
  o += 32;
  dv.setBigUint64(o, BigInt(f.notBefore));
  dv.setBigUint64(o + 8, BigInt(f.notAfter));
  o += 16;
  out.set(Buffer.from(f.issuerKeyId, "hex"), o);
  return out;
}

/** Encodes a certificate (its fields and signature) to bytes. Throws CertError for bad fields. */
export function encodeCertificate(c: CertFields & { signature: Uint8Array }): Uint8Array {
  if (c.signature.length !== SIGNATURE_BYTES) throw new CertError("malformed", "signature must be 64 bytes");
  const signed = encodeSigned(c);
  const out = new Uint8Array(signed.length + SIGNATURE_BYTES);
  out.set(signed);
  out.set(c.signature, signed.length);
  return out;
}

/** Decodes a certificate strictly (no signature check). Throws CertError. */
export function decodeCertificate(bytes: Uint8Array): Certificate {
  if (bytes.length < 10) throw new CertError("malformed", `certificate too short (${bytes.length} bytes)`);
  if (bytes[0] !== CERT_VERSION) throw new CertError("version", `unknown certificate version ${bytes[0]}`);
  const len = bytes[9];
  if (len < 1 || len > MAX_NODE_ID_BYTES) throw new CertError("malformed", `bad node id length ${len}`);
  if (bytes.length !== FIXED_BYTES + len) {
    throw new CertError("malformed", `certificate is ${bytes.length} bytes, expected ${FIXED_BYTES + len}`);
  }
  let nodeId: string;
  try {
    nodeId = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(10, 10 + len));
  } catch {
    throw new CertError("malformed", "node id is not UTF-8");
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let o = 10 + len;
  const publicKey = bytes.slice(o, o + 32);
  o += 32;
  const nb = dv.getBigUint64(o);
  const na = dv.getBigUint64(o + 8);
  o += 16;
  if (nb > BigInt(Number.MAX_SAFE_INTEGER) || na > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CertError("malformed", "validity out of range");
  }
  const fields: CertFields = {
    serial: Buffer.from(bytes.subarray(1, 9)).toString("hex"),
    nodeId,
    publicKey,
    notBefore: Number(nb),
    notAfter: Number(na),
    issuerKeyId: Buffer.from(bytes.subarray(o, o + 8)).toString("hex"),
  };
  checkFields(fields);
  o += 8;
  return {
    version: CERT_VERSION,
    ...fields,
    signed: bytes.slice(0, o),
    signature: bytes.slice(o, o + SIGNATURE_BYTES),
  };
}

/** Signs a certificate with a CA; `serial` defaults to a random one. Returns the encoded bytes. */
export function signCertificate(
  ca: CaKey,
  fields: Omit<CertFields, "serial" | "issuerKeyId"> & { serial?: string },
): Uint8Array {
  const f: CertFields = { ...fields, serial: fields.serial ?? randomSerial(), issuerKeyId: ca.keyId };
  const signed = encodeSigned(f);
  return encodeCertificate({ ...f, signature: caSign(ca, CERT_DOMAIN, signed) });
}

/** Whether a certificate's signature is by `key`. */
export function certSignedBy(c: Certificate, key: crypto.KeyObject): boolean {
  return caVerify(key, CERT_DOMAIN, c.signed, c.signature);
}

/** Throws CertError("not-yet-valid" | "expired") unless notBefore ≤ now < notAfter. */
export function checkValidity(c: CertFields, nowSeconds: number): void {
  if (nowSeconds < c.notBefore) {
    throw new CertError("not-yet-valid", `certificate of ${c.nodeId} is valid from ${iso(c.notBefore)}`);
  }
  if (nowSeconds >= c.notAfter) {
    throw new CertError("expired", `certificate of ${c.nodeId} expired at ${iso(c.notAfter)}`);
  }
}

/** Unix seconds as an ISO 8601 UTC string. */
export function iso(seconds: number): string {
  return new Date(seconds * 1000).toISOString();
}

/**
 * Decodes and verifies a certificate against raw CA public keys at `nowSeconds`: issuer known, signature
 * valid, within its validity window. Throws CertError with the reason. (Revocation: see TrustStore.)
 */
export function verifyCertificate(
  bytes: Uint8Array,
  caPublicKeys: readonly Uint8Array[],
  nowSeconds: number,
): Certificate {
  const c = decodeCertificate(bytes);
  const ca = caPublicKeys.find((k) => caKeyId(k) === c.issuerKeyId);
  if (!ca) {
    throw new CertError("unknown-ca", `certificate of ${c.nodeId} is issued by unknown CA ${c.issuerKeyId}`);
  }
  if (!certSignedBy(c, ed25519PublicKeyObject(ca))) {
    throw new CertError("signature", `certificate of ${c.nodeId}: bad signature`);
  }
  checkValidity(c, nowSeconds);
  return c;
}
