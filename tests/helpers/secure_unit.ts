/**
 * A cluster CA for the secure unit tests: its trust snapshot and node credentials it signs.
 *
 * @example
 * ```ts
 * import { unitCa } from "./secure_unit.ts";
 * const { trust, cred } = unitCa(1_800_000_000_000);
 * console.log(trust.caPublicKeys.length, cred("node-a").certificate !== undefined);
 * ```
 */
import { type CaKey, generateCa, signCertificate } from "../../src/secure/cert.ts";
import { generateIdentity } from "../../src/secure/identity.ts";
import type { NodeCredential, TrustSnapshot } from "../../src/secure/trust.ts";

/** What {@link unitCa} gives. */
export interface UnitCa {
  ca: CaKey;
  trust: TrustSnapshot;
  /** A new node identity with a certificate valid from `nowMs` − 60 s for a day. */
  cred: (nodeId: string) => NodeCredential;
}

/** A fresh CA ("cluster"), a trust snapshot of it alone, and a credential maker (times around `nowMs`). */
export function unitCa(nowMs = Date.now()): UnitCa {
  const ca = generateCa("cluster");
  const trust: TrustSnapshot = {
    caPublicKeys: [ca.publicKey],
    revokedSerials: [],
    revokedNodeIds: [],
    generation: 1,
  };
  const now = Math.floor(nowMs / 1000);
  const cred = (nodeId: string): NodeCredential => {
    const identity = generateIdentity();
    const certificate = signCertificate(ca, {
      nodeId,
      publicKey: identity.publicKey,
      notBefore: now - 60,
      notAfter: now + 86400,
    });
    return { identity, certificate };
  };
  return { ca, trust, cred };
}
