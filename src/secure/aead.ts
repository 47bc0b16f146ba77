/**
 * Which library seals and opens the secure tunnel's AES-256-GCM in this isolate: Intel's ipsec-mb
 * (ffi/ipsec_mb.ts, VAES + AVX-512, 3–4× libcrypto's speed on CPUs that have them) when it is
 * installed and usable, else OpenSSL's libcrypto (ffi/libcrypto.ts). Both produce the same bytes, so
 * the choice is local to a node. `NETMANAGER_AEAD=libcrypto` (or `ipsec-mb`, which fails when it is
 * unusable) overrides the automatic choice, e.g. to compare them.
 *
 * @example
 * ```ts
 * import { aeadBackend, newAesGcm } from "./aead.ts";
 * const key = new Uint8Array(32);
 * const seal = newAesGcm(key, true);
 * console.log(aeadBackend()); // "ipsec-mb" or "libcrypto"
 * seal.close();
 * ```
 * @module
 */

import { EvpAead } from "../../ffi/libcrypto.ts";
import { IpsecMbAead, ipsecMbAvailable, IpsecMbError, ipsecMbUnavailable } from "../../ffi/ipsec_mb.ts";

/** The methods the secure layer uses, which both backends have. */
export type AesGcm = Pick<
  EvpAead,
  "sealAdTo" | "openAd" | "begin" | "update" | "finishSeal" | "finishOpen" | "close"
>;

/** A library {@link newAesGcm} can use. */
export type AeadBackend = "ipsec-mb" | "libcrypto";

let chosen: AeadBackend | undefined;

/** The backend of this isolate (chosen at the first call, see the module). */
export function aeadBackend(): AeadBackend {
  if (chosen !== undefined) return chosen;
  const wanted = Deno.env.get("NETMANAGER_AEAD") ?? "auto";
  if (wanted === "libcrypto") chosen = "libcrypto";
  else if (wanted === "ipsec-mb") {
    if (!ipsecMbAvailable()) throw new IpsecMbError(ipsecMbUnavailable() ?? "ipsec-mb unusable");
    chosen = "ipsec-mb";
  } else if (wanted === "auto") chosen = ipsecMbAvailable() ? "ipsec-mb" : "libcrypto";
  else {throw new IpsecMbError(
      `NETMANAGER_AEAD must be auto, ipsec-mb or libcrypto, not ${JSON.stringify(wanted)}`,
    );}
  return chosen;
}

/** Why ipsec-mb is not used (undefined when it is, or when libcrypto was asked for). */
export function aeadFallbackReason(): string | undefined {
  return aeadBackend() === "libcrypto" ? ipsecMbUnavailable() : undefined;
}

/** An AES-256-GCM context with the 32-byte `key`, sealing when `encrypt`, else opening. */
export function newAesGcm(key: Uint8Array, encrypt: boolean): AesGcm {
  return aeadBackend() === "ipsec-mb"
    ? new IpsecMbAead(key, encrypt)
    : new EvpAead("aes-256-gcm", key, encrypt);
}
