/**
 * Revocation lists: the CA signs the serials and node ids it revokes, with a sequence number that
 * only grows. Sent as JSON (the control plane publishes it retained on {@link REVOCATION_TOPIC});
 * a node accepts a list only when a CA it trusts signed it and its sequence is not older than the
 * one it holds, so a forged or replayed older list changes nothing.
 *
 * @example
 * ```ts
 * import { generateCa } from "./cert.ts";
 * import { signRevocationList, verifyRevocationList } from "./revocation.ts";
 * const ca = generateCa("cluster");
 * const list = signRevocationList(ca, { sequence: 1, issuedAt: 1_800_000_000, serials: [], nodeIds: ["w3"] });
 * verifyRevocationList(JSON.parse(JSON.stringify(list)), [ca.publicKey]).nodeIds; // ["w3"]
 * ```
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
import { type CaKey, caKeyId, caSign, caVerify, CertError, ed25519PublicKeyObject } from "./cert.ts";

/** MQTT topic of the cluster's revocation list (retained; published by the control plane only). */
export const REVOCATION_TOPIC = "netmanager/trust/revocations";

const DOMAIN = new TextEncoder().encode("netmanager-revocations-v1\0");
const NODE_ID = /^[^/+#\s]{1,128}$/;

/** A signed revocation list as sent (JSON). */
export const RevocationListSchema = z.object({
  v: z.literal(1),
  issuer: z.string().regex(/^[0-9a-f]{16}$/),
  sequence: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  issued_at: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  serials: z.array(z.string().regex(/^[0-9a-f]{16}$/)).max(100_000),
  node_ids: z.array(z.string().regex(NODE_ID)).max(100_000),
  signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/),
}).strict();

/** A signed revocation list. */
export type RevocationList = z.infer<typeof RevocationListSchema>;

/** A verified revocation list. */
export interface VerifiedRevocations {
  issuer: string;
  sequence: number;
  issuedAt: number;
  serials: string[];
  nodeIds: string[];
}

function signedBytes(l: Omit<RevocationList, "signature">): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify([l.v, l.issuer, l.sequence, l.issued_at, l.serials, l.node_ids]),
  );
}

/** Signs a revocation list with the CA. */
export function signRevocationList(
  ca: CaKey,
  l: { sequence: number; issuedAt: number; serials: string[]; nodeIds: string[] },
): RevocationList {
  const body = {
    v: 1 as const,
    issuer: ca.keyId,
    sequence: l.sequence,
    issued_at: l.issuedAt,
    serials: [...l.serials].sort(),
    node_ids: [...l.nodeIds].sort(),
  };
  const signature = Buffer.from(caSign(ca, DOMAIN, signedBytes(body))).toString("base64");
  return RevocationListSchema.parse({ ...body, signature });
}

/**
 * Validates and verifies a received list against trusted CA keys. Throws CertError: "malformed"
 * (shape), "unknown-ca" (issuer not trusted), "signature" (not signed by it: forged or altered).
 */
export function verifyRevocationList(
  value: unknown,
  caPublicKeys: readonly Uint8Array[],
): VerifiedRevocations {
  const r = RevocationListSchema.safeParse(value);
  if (!r.success) {
    throw new CertError("malformed", `revocation list malformed: ${r.error.issues[0]?.message}`);
  }
  const l = r.data;
  const key = caPublicKeys.find((k) => caKeyId(k) === l.issuer);
  if (!key) throw new CertError("unknown-ca", `revocation list from unknown CA ${l.issuer}`);
  const sig = new Uint8Array(Buffer.from(l.signature, "base64"));
  if (!caVerify(ed25519PublicKeyObject(key), DOMAIN, signedBytes(l), sig)) {
    throw new CertError("signature", "revocation list signature does not verify");
  }
  return {
    issuer: l.issuer,
    sequence: l.sequence,
    issuedAt: l.issued_at,
    serials: l.serials,
    nodeIds: l.node_ids,
  };
}
