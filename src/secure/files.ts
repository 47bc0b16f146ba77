/**
 * Files of the offline PKI (`netmanager cert`, `TunnelCertFile`/`TunnelCaFile` in netcfg.json):
 *
 * - a CA directory: `ca.key` (JSON with the Ed25519 private key, mode 0600; refused when group or
 *   others may read it) and `ca.json` (the public part: name, key, validity — what nodes trust);
 * - a node certificate: the binary certificate in PEM armour (`NETMANAGER CERTIFICATE`).
 *
 * @example
 * ```ts
 * import { generateCa } from "./cert.ts";
 * import { loadCaKey, loadCaPublic, writeCa } from "./files.ts";
 * const dir = await Deno.makeTempDir();
 * await writeCa(dir, generateCa("lab"), { notBefore: 0, notAfter: 4_000_000_000 });
 * const ca = await loadCaKey(dir); // signs
 * const pub = await loadCaPublic(`${dir}/ca.json`); // trusts
 * ```
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
import { type CaKey, caKeyId, decodeCertificate, ed25519PublicKey } from "./cert.ts";
import { decodeKey, encodeKey } from "./identity.ts";

/** File names inside a CA directory. */
export const CA_KEY_FILE = "ca.key";
/** The public part of the CA (what `TunnelCaFile` names). */
export const CA_PUBLIC_FILE = "ca.json";

/** A PKI file that cannot be read, written or used. */
export class TrustFileError extends Error {
  override name = "TrustFileError";
}

/** The public part of a CA. */
export interface CaPublic {
  name: string;
  publicKey: Uint8Array;
  keyId: string;
  notBefore: number;
  notAfter: number;
}

const CaPublicSchema = z.object({
  kind: z.literal("netmanager-ca"),
  v: z.literal(1),
  name: z.string().min(1).max(128),
  publicKey: z.string(),
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  notBefore: z.number().int().min(0),
  notAfter: z.number().int().min(0),
});

const CaKeySchema = CaPublicSchema.extend({ kind: z.literal("netmanager-ca-key"), privateKey: z.string() });

function dirPath(dir: string, name: string): string {
  return `${dir.replace(/\/+$/, "")}/${name}`;
}

/** Writes `ca.key` (0600, exclusive: an existing CA is never overwritten) and `ca.json` into `dir`. */
export async function writeCa(
  dir: string,
  ca: CaKey,
  validity: { notBefore: number; notAfter: number },
): Promise<{
  keyPath: string;
  publicPath: string;
}> {
  const pub = {
    kind: "netmanager-ca",
    v: 1,
    name: ca.name,
    publicKey: encodeKey(ca.publicKey),
    keyId: ca.keyId,
    notBefore: validity.notBefore,
    notAfter: validity.notAfter,
  };
  const keyPath = dirPath(dir, CA_KEY_FILE);
  const publicPath = dirPath(dir, CA_PUBLIC_FILE);
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(
      keyPath,
      JSON.stringify({ ...pub, kind: "netmanager-ca-key", privateKey: encodeKey(ca.privateKey) }) + "\n",
      { createNew: true, mode: 0o600 },
    );
    await Deno.chmod(keyPath, 0o600);
    await Deno.writeTextFile(publicPath, JSON.stringify(pub, null, 2) + "\n", { mode: 0o644 });
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) {
      throw new TrustFileError(`${keyPath} exists: refusing to overwrite a CA key`);
    }
    throw new TrustFileError(`cannot write CA into ${dir}: ${(e as Error).message}`);
  }
  return { keyPath, publicPath };
}

async function readJson(path: string, what: string, secret: boolean): Promise<unknown> {
  let text: string;
  try {
    if (secret) {
      const st = await Deno.stat(path);
      if ((st.mode ?? 0) & 0o077) {
        throw new TrustFileError(
          `${what} ${path} is accessible by group or others (mode ${
            ((st.mode ?? 0) & 0o777).toString(8)
          }): ` +
            `chmod 600 it`,
        );
      }
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof TrustFileError) throw e;
    throw new TrustFileError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new TrustFileError(`${what} ${path} is not JSON`);
  }
}

function checkPublic(p: z.infer<typeof CaPublicSchema>, path: string): CaPublic {
  let publicKey: Uint8Array;
  try {
    publicKey = decodeKey(p.publicKey, "CA public key");
  } catch (e) {
    throw new TrustFileError(`${path}: ${(e as Error).message}`);
  }
  if (caKeyId(publicKey) !== p.keyId) {
    throw new TrustFileError(`${path}: keyId does not match the public key`);
  }
  if (p.notBefore >= p.notAfter) throw new TrustFileError(`${path}: notBefore must precede notAfter`);
  return { name: p.name, publicKey, keyId: p.keyId, notBefore: p.notBefore, notAfter: p.notAfter };
}

/** Reads a CA's public file (`ca.json`, what `TunnelCaFile` names). Throws TrustFileError. */
export async function loadCaPublic(path: string): Promise<CaPublic> {
  const r = CaPublicSchema.safeParse(await readJson(path, "CA file", false));
  if (!r.success) {
    throw new TrustFileError(`${path} is not a netmanager CA file (ca.json of \`netmanager cert ca\`)`);
  }
  return checkPublic(r.data, path);
}

/** Reads the CA key of a CA directory (or a `ca.key` path) for signing. Throws TrustFileError. */
export async function loadCaKey(dirOrFile: string): Promise<CaKey & { notBefore: number; notAfter: number }> {
  let path = dirOrFile;
  try {
    if ((await Deno.stat(dirOrFile)).isDirectory) path = dirPath(dirOrFile, CA_KEY_FILE);
  } catch (e) {
    throw new TrustFileError(`cannot read CA ${dirOrFile}: ${(e as Error).message}`);
  }
  const r = CaKeySchema.safeParse(await readJson(path, "CA key", true));
  // Never echo the content: it holds the private key.
  if (!r.success) {
    throw new TrustFileError(`${path} is not a netmanager CA key (ca.key of \`netmanager cert ca\`)`);
  }
  const pub = checkPublic({ ...r.data, kind: "netmanager-ca" }, path);
  let privateKey: Uint8Array;
  try {
    privateKey = decodeKey(r.data.privateKey, "CA private key");
  } catch (e) {
    throw new TrustFileError(`${path}: ${(e as Error).message}`);
  }
  if (!Buffer.from(ed25519PublicKey(privateKey)).equals(Buffer.from(pub.publicKey))) {
    throw new TrustFileError(`${path}: public key does not match the private key`);
  }
  return {
    name: pub.name,
    privateKey,
    publicKey: pub.publicKey,
    keyId: pub.keyId,
    notBefore: pub.notBefore,
    notAfter: pub.notAfter,
  };
}

const PEM_BEGIN = "-----BEGIN NETMANAGER CERTIFICATE-----";
const PEM_END = "-----END NETMANAGER CERTIFICATE-----";

/** PEM armour of a certificate. */
export function certToPem(cert: Uint8Array): string {
  const b64 = Buffer.from(cert).toString("base64").replace(/.{1,64}/g, "$&\n");
  return `${PEM_BEGIN}\n${b64}${PEM_END}\n`;
}

/** The certificate bytes of a PEM text (decoded strictly); throws TrustFileError or CertError. */
export function certFromPem(text: string, what = "certificate"): Uint8Array {
  const m = new RegExp(`^\\s*${PEM_BEGIN}\\s*([A-Za-z0-9+/=\\s]+?)\\s*${PEM_END}\\s*$`).exec(text);
  if (!m) throw new TrustFileError(`${what} is not a PEM "NETMANAGER CERTIFICATE"`);
  const bytes = new Uint8Array(Buffer.from(m[1].replace(/\s+/g, ""), "base64"));
  decodeCertificate(bytes);
  return bytes;
}

/** Reads a certificate file (PEM). Throws TrustFileError (with the CertError's reason in the message). */
export async function loadCertFile(path: string): Promise<Uint8Array> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new TrustFileError(`cannot read certificate ${path}: ${(e as Error).message}`);
  }
  try {
    return certFromPem(text, path);
  } catch (e) {
    if (e instanceof TrustFileError) throw e;
    throw new TrustFileError(`certificate ${path}: ${(e as Error).message}`);
  }
}

/** Writes a certificate as PEM (mode 0644: it is public). */
export async function writeCertFile(path: string, cert: Uint8Array): Promise<void> {
  try {
    await Deno.writeTextFile(path, certToPem(cert), { mode: 0o644 });
  } catch (e) {
    throw new TrustFileError(`cannot write certificate ${path}: ${(e as Error).message}`);
  }
}
