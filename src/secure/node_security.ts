/**
 * The node's side of tunnel trust: its identity, its certificate (from files named in netcfg.json, or
 * from `netmanager control` over MQTT), the CA it trusts and the revocations it learned, turned into
 * the {@link SecuritySettings} the data plane gets through `dataplane.setSecurity(...)` — at start and
 * on every change (new certificate, new revocation list).
 *
 * Cluster mode: the node publishes its public key on `nodes/<id>/net/cert/request`; the control plane
 * answers on `nodes/<id>/net/cert/result` with the certificate and its CA key. The node accepts it only
 * when it is for its own id and key and signed by that CA (and by `TunnelCaFile` when one pins it), and
 * keeps both in StateDir so a restart starts with them. It asks again when a third of the validity is
 * left. Revocation lists (retained on `netmanager/trust/revocations`) are used only when a trusted CA
 * signed them and their sequence is not older: forged ones are counted and ignored.
 *
 * @example
 * ```ts
 * import { NodeSecurity } from "./node_security.ts";
 * const sec = await NodeSecurity.load({
 *   mode: "prefer", stateDir: "/var/lib/netmanager", certFile: "", caFile: "", onChange: (s) => console.log(s.trust.generation),
 * });
 * sec.status(); // { mode: "prefer", publicKey: "…", certificate: null, … }
 * ```
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
import { caKeyId, CertError, iso, verifyCertificate } from "./cert.ts";
import { type CaPublic, certToPem, loadCaPublic, loadCertFile, TrustFileError } from "./files.ts";
import { decodeKey, encodeKey, loadIdentity, loadOrCreateIdentity, type NodeIdentity } from "./identity.ts";
import { verifyRevocationList } from "./revocation.ts";
import type { NodeCredential, TrustSnapshot } from "./trust.ts";
import { logger } from "../log.ts";
import { aeadBackend, aeadFallbackReason } from "./aead.ts";

const log = logger("trust");

/** `TunnelSecurity` of netcfg.json. */
export type TunnelSecurityMode = "off" | "prefer" | "require";

/** What the data plane gets: `dataplane.setSecurity(settings)`. */
export interface SecuritySettings {
  mode: TunnelSecurityMode;
  credential: NodeCredential | undefined;
  trust: TrustSnapshot;
}

/** Files kept in StateDir in cluster mode (the certificate and CA the control plane gave). */
export const CLUSTER_CERT_FILE = "tunnel-cert.pem";
/** The control plane's CA public part, as `ca.json`. */
export const CLUSTER_CA_FILE = "tunnel-ca.json";

/** Removes the certificate and CA a control plane gave (`netmanager clean`); the identity stays. */
export async function removeClusterCertificate(stateDir: string): Promise<void> {
  const dir = stateDir.replace(/\/+$/, "");
  for (const f of [CLUSTER_CERT_FILE, CLUSTER_CA_FILE]) await Deno.remove(`${dir}/${f}`).catch(() => {});
}

/** Topic suffixes below `nodes/<id>/net/` (the node requests, the control plane answers). */
export const CERT_REQUEST_SUFFIX = "cert/request";
/** See {@link CERT_REQUEST_SUFFIX}. */
export const CERT_RESULT_SUFFIX = "cert/result";

/** Topic of a node's certificate request. */
export function certRequestTopic(worker: string): string {
  return `nodes/${worker}/net/${CERT_REQUEST_SUFFIX}`;
}

/** Topic of the control plane's certificate answer to a node. */
export function certResultTopic(worker: string): string {
  return `nodes/${worker}/net/${CERT_RESULT_SUFFIX}`;
}

/** node → control: `{"public_key": base64 X25519}`. */
export const CertRequestSchema = z.object({ public_key: z.string() });

/** control → node. */
export const CertResultSchema = z.union([
  z.object({
    certificate: z.string().max(1024),
    ca_public_key: z.string(),
    ca_name: z.string().max(128).default("cluster"),
    ca_not_after: z.number().int().min(0).default(0),
  }),
  z.object({ error: z.string().max(1000) }),
]);

/** Tunnel trust configuration that cannot be used (bad file, key mismatch, expired certificate). */
export class SecurityConfigError extends Error {
  override name = "SecurityConfigError";
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

interface Held {
  certificate: Uint8Array;
  serial: string;
  nodeId: string;
  notBefore: number;
  notAfter: number;
  issuer: string;
  source: string;
}

/** Options of {@link NodeSecurity.load}. */
export interface NodeSecurityOptions {
  mode: TunnelSecurityMode;
  stateDir: string;
  /** `TunnelCertFile` ("" = none). */
  certFile: string;
  /** `TunnelCaFile` ("" = none). */
  caFile: string;
  /** Called with the new settings after every change (not for the initial ones: read {@link NodeSecurity.current}). */
  onChange?: (s: SecuritySettings) => void;
}

/** Checks that a certificate is for `identity` and signed by `ca` now; throws SecurityConfigError. */
function checkOwnCert(cert: Uint8Array, ca: Uint8Array, identity: NodeIdentity, where: string): Held {
  let c;
  try {
    c = verifyCertificate(cert, [ca], nowSeconds());
  } catch (e) {
    const reason = e instanceof CertError ? e.reason : "malformed";
    throw new SecurityConfigError(`${where}: ${(e as Error).message} (${reason})`);
  }
  if (!Buffer.from(c.publicKey).equals(Buffer.from(identity.publicKey))) {
    throw new SecurityConfigError(
      `${where} is for another key: sign the key \`netmanager cert show\` prints (${
        encodeKey(identity.publicKey)
      })`,
    );
  }
  return {
    certificate: cert,
    serial: c.serial,
    nodeId: c.nodeId,
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    issuer: c.issuerKeyId,
    source: where,
  };
}

/**
 * Validates `TunnelCertFile`/`TunnelCaFile` without changing anything (what `config check` runs):
 * readable, well-formed, the certificate signed by the CA and valid now, and for this node's key when
 * its identity already exists. Returns a one-line summary. Throws SecurityConfigError.
 */
export async function checkTunnelFiles(
  net: { TunnelSecurity: TunnelSecurityMode; TunnelCertFile: string; TunnelCaFile: string; StateDir: string },
): Promise<string> {
  if (net.TunnelSecurity === "off") return "off";
  if (net.TunnelCertFile !== "" && net.TunnelCaFile === "") {
    throw new SecurityConfigError("TunnelCertFile needs TunnelCaFile (the CA that signed it, ca.json)");
  }
  let ca: CaPublic | undefined;
  try {
    if (net.TunnelCaFile !== "") ca = await loadCaPublic(net.TunnelCaFile);
    if (net.TunnelCertFile === "") {
      return `${net.TunnelSecurity}, certificate from the control plane${
        ca ? `, CA pinned to ${ca.keyId}` : ""
      }`;
    }
    const cert = await loadCertFile(net.TunnelCertFile);
    const id = await loadIdentity(net.StateDir).catch((e) => {
      throw new SecurityConfigError((e as Error).message);
    });
    const held = id ? checkOwnCert(cert, ca!.publicKey, id, net.TunnelCertFile) : (() => {
      try {
        const c = verifyCertificate(cert, [ca!.publicKey], nowSeconds());
        return { nodeId: c.nodeId, notAfter: c.notAfter };
      } catch (e) {
        throw new SecurityConfigError(`${net.TunnelCertFile}: ${(e as Error).message}`);
      }
    })();
    return `${net.TunnelSecurity}, certificate of ${held.nodeId} until ${iso(held.notAfter)} (CA ${
      ca!.keyId
    })`;
  } catch (e) {
    if (e instanceof TrustFileError) throw new SecurityConfigError(e.message);
    throw e;
  }
}

/** The node's tunnel trust state. */
export class NodeSecurity {
  readonly mode: TunnelSecurityMode;
  readonly identity: NodeIdentity | undefined;
  /** Counters (live). */
  readonly stats = {
    certificatesAccepted: 0,
    certificatesRefused: 0,
    certificateRequests: 0,
    revocationListsAccepted: 0,
    /** Lists not signed by a trusted CA (forged or altered). */
    revocationListsForged: 0,
    /** Lists older than the one held (replayed). */
    revocationListsStale: 0,
    revocationListsMalformed: 0,
  };
  readonly #opts: NodeSecurityOptions;
  readonly #offline: boolean;
  #pinned: CaPublic | undefined;
  #ca: { publicKey: Uint8Array; name: string } | undefined;
  #held: Held | undefined;
  #revokedSerials: string[] = [];
  #revokedNodeIds: string[] = [];
  #sequence = -1;
  #generation = 1;
  #lastRefusal = "";

  private constructor(opts: NodeSecurityOptions, identity: NodeIdentity | undefined) {
    this.#opts = opts;
    this.mode = opts.mode;
    this.identity = identity;
    this.#offline = opts.certFile !== "";
  }

  /**
   * Loads (or creates) the identity and the configured or kept certificate. Throws SecurityConfigError
   * for unusable files: a node configured for encryption must not start with a broken trust setup.
   */
  static async load(opts: NodeSecurityOptions): Promise<NodeSecurity> {
    if (opts.mode === "off") return new NodeSecurity(opts, undefined);
    if (opts.certFile !== "" && opts.caFile === "") {
      throw new SecurityConfigError("TunnelCertFile needs TunnelCaFile (the CA that signed it, ca.json)");
    }
    // The data plane's AES-GCM library (the workers choose the same way): a bad NETMANAGER_AEAD
    // stops the start here, with its reason, instead of in a worker at the first session.
    try {
      aeadBackend();
    } catch (e) {
      throw new SecurityConfigError((e as Error).message);
    }
    let identity: NodeIdentity;
    try {
      identity = await loadOrCreateIdentity(opts.stateDir);
    } catch (e) {
      throw new SecurityConfigError((e as Error).message);
    }
    const s = new NodeSecurity(opts, identity);
    try {
      if (opts.caFile !== "") {
        s.#pinned = await loadCaPublic(opts.caFile);
        s.#ca = { publicKey: s.#pinned.publicKey, name: s.#pinned.name };
      }
      if (opts.certFile !== "") {
        s.#held = checkOwnCert(await loadCertFile(opts.certFile), s.#ca!.publicKey, identity, opts.certFile);
        log.info("tunnel certificate loaded", s.#summary());
      } else {
        await s.#loadKept();
        if (!s.#held) {
          log.info("no tunnel certificate yet: asked from the control plane after registration", {
            mode: opts.mode,
            ...(opts.mode === "require" ? { effect: "no tunnel traffic with peers until it arrives" } : {}),
          });
        }
      }
    } catch (e) {
      if (e instanceof TrustFileError) throw new SecurityConfigError(e.message);
      throw e;
    }
    return s;
  }

  /** Cluster mode: the certificate and CA a previous run received (ignored when unusable now). */
  async #loadKept(): Promise<void> {
    const dir = this.#opts.stateDir.replace(/\/+$/, "");
    let ca: CaPublic;
    let cert: Uint8Array;
    try {
      ca = await loadCaPublic(`${dir}/${CLUSTER_CA_FILE}`);
      cert = await loadCertFile(`${dir}/${CLUSTER_CERT_FILE}`);
    } catch {
      return; // none yet (first start) or unreadable: the control plane sends new ones
    }
    if (this.#pinned && this.#pinned.keyId !== ca.keyId) return;
    try {
      this.#held = checkOwnCert(cert, ca.publicKey, this.identity!, `${dir}/${CLUSTER_CERT_FILE}`);
      this.#ca = { publicKey: ca.publicKey, name: ca.name };
      log.info("kept tunnel certificate loaded", this.#summary());
    } catch (e) {
      log.info("kept tunnel certificate not used; asking the control plane", {
        reason: (e as Error).message,
      });
    }
  }

  /** The settings for the data plane now. */
  current(): SecuritySettings {
    return {
      mode: this.mode,
      credential: this.identity && this.#held
        ? { identity: this.identity, certificate: this.#held.certificate }
        : undefined,
      trust: {
        caPublicKeys: this.#ca ? [this.#ca.publicKey] : [],
        revokedSerials: [...this.#revokedSerials],
        revokedNodeIds: [...this.#revokedNodeIds],
        generation: this.#generation,
      },
    };
  }

  /** True when the control plane should be asked for a (new) certificate: none, or a third of its validity left. */
  needsCertificate(now = nowSeconds()): boolean {
    if (this.mode === "off" || this.#offline) return false;
    if (!this.#held) return true;
    return now >= this.#held.notAfter - Math.floor((this.#held.notAfter - this.#held.notBefore) / 3);
  }

  /** The body of `nodes/<id>/net/cert/request`. */
  certRequest(): { public_key: string } {
    this.stats.certificateRequests++;
    return { public_key: encodeKey(this.identity!.publicKey) };
  }

  /**
   * A `cert/result` from the control plane for node `workerId`: accepted (kept in StateDir, settings
   * updated) when it is for this node's id and key, signed by the CA it names (the pinned one, if any)
   * and valid now. Returns whether it was accepted; never throws.
   */
  async acceptCertResult(body: unknown, workerId: string): Promise<boolean> {
    if (this.mode === "off" || this.#offline) return false;
    const refuse = (why: string) => {
      this.stats.certificatesRefused++;
      this.#lastRefusal = why;
      log.warn("tunnel certificate from the control plane refused", { reason: why });
      return false;
    };
    const r = CertResultSchema.safeParse(body);
    if (!r.success) return refuse("malformed answer");
    if ("error" in r.data) return refuse(`control plane: ${r.data.error}`);
    let caKey: Uint8Array;
    let cert: Uint8Array;
    try {
      caKey = decodeKey(r.data.ca_public_key, "CA public key");
      cert = new Uint8Array(Buffer.from(r.data.certificate, "base64"));
    } catch (e) {
      return refuse((e as Error).message);
    }
    if (this.#pinned && caKeyId(caKey) !== this.#pinned.keyId) {
      return refuse(`CA ${caKeyId(caKey)} is not the pinned TunnelCaFile CA ${this.#pinned.keyId}`);
    }
    let held: Held;
    try {
      held = checkOwnCert(cert, caKey, this.identity!, "certificate from the control plane");
    } catch (e) {
      return refuse((e as Error).message);
    }
    if (held.nodeId !== workerId) return refuse(`certificate is for node ${held.nodeId}, not ${workerId}`);
    held.source = "control plane";
    const sameCa = this.#ca && Buffer.from(this.#ca.publicKey).equals(Buffer.from(caKey));
    this.#held = held;
    this.#ca = { publicKey: caKey, name: r.data.ca_name };
    if (!sameCa) {
      // A new CA: revocations of the old one do not apply.
      this.#revokedSerials = [];
      this.#revokedNodeIds = [];
      this.#sequence = -1;
    }
    this.stats.certificatesAccepted++;
    await this.#keep(cert, caKey, r.data.ca_name, r.data.ca_not_after);
    log.info("tunnel certificate received", this.#summary());
    this.#changed();
    return true;
  }

  async #keep(cert: Uint8Array, caKey: Uint8Array, name: string, notAfter: number): Promise<void> {
    const dir = this.#opts.stateDir.replace(/\/+$/, "");
    try {
      await Deno.writeTextFile(`${dir}/${CLUSTER_CERT_FILE}`, certToPem(cert), { mode: 0o644 });
      await Deno.writeTextFile(
        `${dir}/${CLUSTER_CA_FILE}`,
        JSON.stringify({
          kind: "netmanager-ca",
          v: 1,
          name,
          publicKey: encodeKey(caKey),
          keyId: caKeyId(caKey),
          notBefore: 0,
          notAfter: notAfter || Number.MAX_SAFE_INTEGER,
        }) + "\n",
        { mode: 0o644 },
      );
    } catch (e) {
      log.warn("tunnel certificate not kept in StateDir", { error: (e as Error).message });
    }
  }

  /**
   * A revocation list (retained topic): used when a trusted CA signed it and it is not older than the
   * one held. Returns what happened; never throws.
   */
  acceptRevocations(body: unknown): "accepted" | "unchanged" | "stale" | "forged" | "malformed" | "no-ca" {
    if (this.mode === "off") return "unchanged";
    if (!this.#ca) return "no-ca"; // the retained list comes again with the next subscribe
    let v;
    try {
      v = verifyRevocationList(body, [this.#ca.publicKey]);
    } catch (e) {
      const reason = e instanceof CertError ? e.reason : "malformed";
      if (reason === "malformed") {
        this.stats.revocationListsMalformed++;
        log.warn("malformed revocation list ignored", { error: (e as Error).message });
        return "malformed";
      }
      this.stats.revocationListsForged++;
      log.warn("revocation list not signed by the cluster CA: ignored", {
        reason,
        error: (e as Error).message,
      });
      return "forged";
    }
    if (v.sequence < this.#sequence) {
      this.stats.revocationListsStale++;
      log.warn("older revocation list ignored", { sequence: v.sequence, held: this.#sequence });
      return "stale";
    }
    if (v.sequence === this.#sequence) return "unchanged";
    this.#sequence = v.sequence;
    this.#revokedSerials = v.serials;
    this.#revokedNodeIds = v.nodeIds;
    this.stats.revocationListsAccepted++;
    log.info("revocation list applied", {
      sequence: v.sequence,
      serials: v.serials.length,
      nodes: v.nodeIds,
    });
    this.#changed();
    return "accepted";
  }

  #changed(): void {
    this.#generation++;
    this.#opts.onChange?.(this.current());
  }

  #summary(): Record<string, unknown> {
    const h = this.#held!;
    return {
      subject: h.nodeId,
      serial: h.serial,
      notAfter: iso(h.notAfter),
      issuer: h.issuer,
      source: h.source,
    };
  }

  /** For `status --json`: own certificate (never the private key), trusted CA, revocations, counters. */
  status(): Record<string, unknown> {
    const h = this.#held;
    const fallback = this.mode === "off" ? undefined : aeadFallbackReason();
    return {
      mode: this.mode,
      // The library sealing and opening data (src/secure/aead.ts), and why not ipsec-mb.
      aead: this.mode === "off" ? null : aeadBackend(),
      ...(fallback ? { aeadFallback: fallback } : {}),
      publicKey: this.identity ? encodeKey(this.identity.publicKey) : null,
      certificate: h
        ? {
          subject: h.nodeId,
          serial: h.serial,
          notBefore: iso(h.notBefore),
          notAfter: iso(h.notAfter),
          expiresInSeconds: h.notAfter - nowSeconds(),
          issuer: h.issuer,
          source: h.source,
        }
        : null,
      ca: this.#ca ? { name: this.#ca.name, keyId: caKeyId(this.#ca.publicKey) } : null,
      trust: {
        generation: this.#generation,
        revocationSequence: this.#sequence,
        revokedSerials: [...this.#revokedSerials],
        revokedNodeIds: [...this.#revokedNodeIds],
      },
      lastRefusal: this.#lastRefusal || null,
      stats: { ...this.stats },
    };
  }
}
