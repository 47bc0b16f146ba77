/**
 * What a node trusts: CA public keys and revocations, as a plain structured-cloneable
 * {@link TrustSnapshot} (it crosses into data-plane Workers by postMessage), and {@link TrustStore}, which
 * verifies peers' certificates against one snapshot. A new snapshot (new generation) replaces the store.
 *
 * @example
 * ```ts
 * import { generateCa, signCertificate } from "./cert.ts";
 * import { generateIdentity } from "./identity.ts";
 * import { TrustStore } from "./trust.ts";
 * const ca = generateCa("cluster");
 * const now = Math.floor(Date.now() / 1000);
 * const cert = signCertificate(ca, {
 *   nodeId: "w2", publicKey: generateIdentity().publicKey, notBefore: now - 300, notAfter: now + 3600,
 * });
 * const store = new TrustStore({ caPublicKeys: [ca.publicKey], revokedSerials: [], revokedNodeIds: [], generation: 1 });
 * const peer = store.verify(cert, now); // peer.nodeId === "w2"; throws CertError("revoked") once revoked
 * ```
 */
import type crypto from "node:crypto";
import { Buffer } from "node:buffer";
import {
  caKeyId,
  CertError,
  type Certificate,
  certSignedBy,
  checkValidity,
  decodeCertificate,
  ed25519PublicKeyObject,
} from "./cert.ts";
import type { NodeIdentity } from "./identity.ts";

/** Trust anchors and revocations; plain data (structured-cloneable). */
export interface TrustSnapshot {
  /** Raw Ed25519 CA public keys (32 bytes each). */
  caPublicKeys: Uint8Array[];
  /** Revoked certificate serials (16 hex digits). */
  revokedSerials: string[];
  /** Revoked node ids: every certificate of such a node is refused. */
  revokedNodeIds: string[];
  /** Grows with every update, so holders can tell a newer snapshot. */
  generation: number;
}

/** A peer certificate that verified. */
export interface VerifiedCert {
  nodeId: string;
  /** The peer's X25519 static key (32 bytes): the Noise handshake must prove possession of it. */
  publicKey: Uint8Array;
  serial: string;
  /** Unix seconds. */
  notAfter: number;
  /** Human form for status: `<nodeId>`. */
  subject: string;
}

/** What the data plane needs to prove itself: its key pair and its CA-signed certificate. */
export interface NodeCredential {
  identity: NodeIdentity;
  certificate: Uint8Array;
}

/** A snapshot that trusts nobody (no CA): generation 0. */
export function emptyTrust(): TrustSnapshot {
  return { caPublicKeys: [], revokedSerials: [], revokedNodeIds: [], generation: 0 };
}

/** Certificates whose CA signature a {@link TrustStore} checked and keeps (bytes → decoded). */
export const SIGNED_CACHE_MAX = 1024;

/**
 * Verifies certificates against one {@link TrustSnapshot}. Cheap to rebuild on every update. A
 * certificate whose signature verified is kept by its exact bytes ({@link SIGNED_CACHE_MAX}), so a
 * peer's next handshakes (rekeys) skip the Ed25519 check (~0.3 ms of a side's ~1 ms of CPU); validity
 * and revocation are checked every time. A new snapshot (new store) starts with none.
 */
export class TrustStore {
  readonly generation: number;
  readonly #cas = new Map<string, crypto.KeyObject>();
  readonly #signed = new Map<string, Certificate>();
  readonly #serials: Set<string>;
  readonly #nodes: Set<string>;

  constructor(s: TrustSnapshot) {
    this.generation = s.generation;
    for (const k of s.caPublicKeys) this.#cas.set(caKeyId(k), ed25519PublicKeyObject(k));
    this.#serials = new Set(s.revokedSerials);
    this.#nodes = new Set(s.revokedNodeIds);
  }

  /**
   * Decodes and verifies `cert` at `nowSeconds`: known issuer, valid signature, within validity, not
   * revoked. Throws CertError whose `reason` says why not.
   */
  verify(cert: Uint8Array, nowSeconds: number): VerifiedCert {
    const id = Buffer.from(cert.buffer, cert.byteOffset, cert.byteLength).toString("base64");
    let c = this.#signed.get(id);
    if (c === undefined) {
      c = decodeCertificate(cert);
      const key = this.#cas.get(c.issuerKeyId);
      if (!key) {
        throw new CertError(
          "unknown-ca",
          `certificate of ${c.nodeId} is issued by unknown CA ${c.issuerKeyId}`,
        );
      }
      if (!certSignedBy(c, key)) {
        throw new CertError("signature", `certificate of ${c.nodeId}: bad signature`);
      }
      if (this.#signed.size >= SIGNED_CACHE_MAX) this.#signed.clear();
      this.#signed.set(id, c);
    }
    checkValidity(c, nowSeconds);
    const v: VerifiedCert = {
      nodeId: c.nodeId,
      publicKey: c.publicKey,
      serial: c.serial,
      notAfter: c.notAfter,
      subject: c.nodeId,
    };
    if (this.isRevoked(v)) {
      throw new CertError("revoked", `certificate ${c.serial} of ${c.nodeId} is revoked`);
    }
    return v;
  }

  /** Whether a (previously verified) certificate is revoked in this snapshot: live sessions re-check. */
  isRevoked(v: Pick<VerifiedCert, "serial" | "nodeId">): boolean {
    return this.#serials.has(v.serial) || this.#nodes.has(v.nodeId);
  }
}
