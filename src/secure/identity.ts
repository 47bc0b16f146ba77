/**
 * The node's tunnel identity: an X25519 key pair (Noise static key) generated with node:crypto at first
 * start and kept in `<StateDir>/tunnel-identity.json`, mode 0600. A file readable by group or others is
 * refused (as ssh refuses such keys). The private key is never logged: errors name the file, not its content.
 *
 * @example
 * ```ts
 * import { loadOrCreateIdentity, encodeKey } from "./identity.ts";
 * const id = await loadOrCreateIdentity("/var/lib/netmanager");
 * console.log(encodeKey(id.publicKey)); // base64, 44 characters, as `netmanager cert show` prints it
 * ```
 */
import crypto from "node:crypto";
import { Buffer } from "node:buffer";
import { z } from "zod";

/** File name of the identity inside the node's StateDir. */
export const IDENTITY_FILE_NAME = "tunnel-identity.json";

/** The node's static X25519 key pair (raw 32-byte keys). */
export interface NodeIdentity {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

/** An identity file that cannot be read, created or trusted. */
export class IdentityError extends Error {
  override name = "IdentityError";
}

/** Result of {@link loadOrCreateIdentity} with the file it came from. */
export interface LoadedIdentity extends NodeIdentity {
  path: string;
  created: boolean;
}

// PKCS#8 DER prefix of a raw X25519 private key (RFC 8410): lets node:crypto derive the public key.
const X25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");

const IdentityFileSchema = z.object({
  kind: z.literal("netmanager-tunnel-identity"),
  v: z.literal(1),
  privateKey: z.string(),
  publicKey: z.string(),
});

/** Base64 (standard, padded) of a raw key, the form the CLI prints and accepts. */
export function encodeKey(key: Uint8Array): string {
  return Buffer.from(key).toString("base64");
}

/** Parses a base64 32-byte key; throws IdentityError naming `what` otherwise. */
export function decodeKey(text: string, what = "key"): Uint8Array {
  const t = text.trim();
  if (!/^[A-Za-z0-9+/]{43}=$/.test(t)) {
    throw new IdentityError(`${what} must be 32 bytes in base64 (44 characters)`);
  }
  return new Uint8Array(Buffer.from(t, "base64"));
}

/** Generates a fresh X25519 key pair. */
export function generateIdentity(): NodeIdentity {
  const { privateKey } = crypto.generateKeyPairSync("x25519");
  const jwk = privateKey.export({ format: "jwk" });
  return {
    privateKey: new Uint8Array(Buffer.from(jwk.d!, "base64url")),
    publicKey: new Uint8Array(Buffer.from(jwk.x!, "base64url")),
  };
}

/** The X25519 public key of a raw private key (node:crypto does the scalar multiplication). */
export function x25519PublicKey(privateKey: Uint8Array): Uint8Array {
  if (privateKey.length !== 32) throw new IdentityError("X25519 private key must be 32 bytes");
  const key = crypto.createPrivateKey({
    key: Buffer.concat([X25519_PKCS8_PREFIX, privateKey]),
    format: "der",
    type: "pkcs8",
  });
  const x = crypto.createPublicKey(key).export({ format: "jwk" }).x!;
  return new Uint8Array(Buffer.from(x, "base64url"));
}

function identityPath(stateDir: string): string {
  return `${stateDir.replace(/\/+$/, "")}/${IDENTITY_FILE_NAME}`;
}

/** Reads the identity of `stateDir`; undefined when the file does not exist. Throws IdentityError. */
export async function loadIdentity(stateDir: string): Promise<LoadedIdentity | undefined> {
  const path = identityPath(stateDir);
  let text: string;
  try {
    const st = await Deno.stat(path);
    if ((st.mode ?? 0) & 0o077) {
      throw new IdentityError(
        `tunnel identity ${path} is accessible by group or others (mode ` +
          `${((st.mode ?? 0) & 0o777).toString(8)}): chmod 600 it`,
      );
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof IdentityError) throw e;
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new IdentityError(`cannot read tunnel identity ${path}: ${(e as Error).message}`);
  }
  let parsed: z.infer<typeof IdentityFileSchema>;
  try {
    parsed = IdentityFileSchema.parse(JSON.parse(text));
  } catch {
    // Never echo the content: it holds the private key.
    throw new IdentityError(`tunnel identity ${path} is not a netmanager identity file`);
  }
  const privateKey = decodeKey(parsed.privateKey, `private key in ${path}`);
  const publicKey = decodeKey(parsed.publicKey, `public key in ${path}`);
  if (!Buffer.from(x25519PublicKey(privateKey)).equals(Buffer.from(publicKey))) {
    throw new IdentityError(`tunnel identity ${path}: public key does not match the private key`);
  }
  return { privateKey, publicKey, path, created: false };
}

/**
 * Loads the identity of `stateDir`, creating it (mode 0600, exclusive create) at first start.
 * Throws IdentityError for an unreadable, foreign or group/other-readable file.
 */
export async function loadOrCreateIdentity(stateDir: string): Promise<LoadedIdentity> {
  const existing = await loadIdentity(stateDir);
  if (existing) return existing;
  const path = identityPath(stateDir);
  const id = generateIdentity();
  const body = JSON.stringify({
    kind: "netmanager-tunnel-identity",
    v: 1,
    privateKey: encodeKey(id.privateKey),
    publicKey: encodeKey(id.publicKey),
  }) + "\n";
  try {
    await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(path, body, { createNew: true, mode: 0o600 });
    await Deno.chmod(path, 0o600); // the umask cannot widen 0600, but a pre-set umask of 0 is not assumed
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) {
      // Another process created it first: use theirs.
      const other = await loadIdentity(stateDir);
      if (other) return other;
    }
    throw new IdentityError(`cannot create tunnel identity ${path}: ${(e as Error).message}`);
  }
  return { ...id, path, created: true };
}
