/**
 * The cluster CA of `netmanager control`: created at first start in `<state dir>/tunnel-ca/`
 * (`ca.key` 0600, `ca.json`), it signs the X25519 key each node sends on `nodes/<id>/net/cert/request`
 * (certificate for the node's worker id, valid {@link CERT_VALIDITY_S}; nodes ask again when a third
 * is left) and keeps what it issued in `tunnel-certs.json` (0600). `control node rm` revokes the node:
 * its id and every serial issued to it go into the CA-signed revocation list, published retained on
 * `netmanager/trust/revocations` (nodes get it at once, and on every subscribe). `control node add`
 * lifts the id's revocation (the old serials stay revoked).
 *
 * Limit: in etcd mode each replica keeps its CA and registry in its own state dir — copy `tunnel-ca/`
 * to every replica before starting it; revocations are published by the replica that handled the rm.
 *
 * @example
 * ```ts
 * import { ClusterPki } from "./pki.ts";
 * const pki = await ClusterPki.open("/var/lib/netmanager/control");
 * const answer = await pki.issue("w1", "<base64 X25519 key>"); // { certificate, ca_public_key, … } or { error }
 * const list = await pki.revoke("w1"); // signed list to publish (retained)
 * ```
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
import { type CaKey, decodeCertificate, generateCa, signCertificate } from "../secure/cert.ts";
import { CA_KEY_FILE, loadCaKey, writeCa } from "../secure/files.ts";
import { decodeKey, encodeKey } from "../secure/identity.ts";
import { type RevocationList, signRevocationList } from "../secure/revocation.ts";
import { writeAtomic } from "./store.ts";
import { logger } from "../log.ts";

const log = logger("control");

/** Validity of node certificates: 30 days. */
export const CERT_VALIDITY_S = 30 * 86400;
/** Certificates start 5 minutes in the past (clocks of nodes differ). */
export const BACKDATE_S = 300;
/** Validity of the cluster CA created at first start: 10 years. */
export const CA_VALIDITY_S = 10 * 365 * 86400;

const RegistrySchema = z.object({
  v: z.literal(1),
  sequence: z.number().int().min(0),
  issued: z.record(
    z.string(),
    z.array(
      z.object({
        serial: z.string(),
        public_key: z.string(),
        not_after: z.number(),
        certificate: z.string(),
      }),
    ),
  ),
  revoked_nodes: z.array(z.string()),
  revoked_serials: z.array(z.object({ serial: z.string(), not_after: z.number() })),
});
type Registry = z.infer<typeof RegistrySchema>;

/** The control plane's answer on `nodes/<id>/net/cert/result`. */
export type CertAnswer =
  | { certificate: string; ca_public_key: string; ca_name: string; ca_not_after: number }
  | { error: string };

/** The cluster CA and what it issued and revoked. */
export class ClusterPki {
  readonly ca: CaKey & { notBefore: number; notAfter: number };
  readonly caDir: string;
  readonly #path: string;
  #reg: Registry;

  private constructor(
    ca: CaKey & { notBefore: number; notAfter: number },
    caDir: string,
    path: string,
    reg: Registry,
  ) {
    this.ca = ca;
    this.caDir = caDir;
    this.#path = path;
    this.#reg = reg;
  }

  /** Loads the CA of `stateDir` (creating it at first start) and the registry. Throws on unusable files. */
  static async open(stateDir: string, name = "netmanager cluster"): Promise<ClusterPki> {
    const dir = `${stateDir.replace(/\/+$/, "")}/tunnel-ca`;
    let created = false;
    try {
      await Deno.stat(`${dir}/${CA_KEY_FILE}`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      const now = Math.floor(Date.now() / 1000);
      await writeCa(dir, generateCa(name), { notBefore: now - BACKDATE_S, notAfter: now + CA_VALIDITY_S });
      created = true;
    }
    const ca = await loadCaKey(dir);
    const path = `${stateDir.replace(/\/+$/, "")}/tunnel-certs.json`;
    let reg: Registry = { v: 1, sequence: 0, issued: {}, revoked_nodes: [], revoked_serials: [] };
    try {
      reg = RegistrySchema.parse(JSON.parse(await Deno.readTextFile(path)));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new Error(`cannot use ${path}: ${(e as Error).message}`);
      }
    }
    log.info(created ? "cluster CA created" : "cluster CA loaded", { keyId: ca.keyId, dir });
    return new ClusterPki(ca, dir, path, reg);
  }

  async #save(): Promise<void> {
    await writeAtomic(this.#path, JSON.stringify(this.#reg) + "\n");
  }

  /** Revoked node ids (live view). */
  revokedNodes(): readonly string[] {
    return this.#reg.revoked_nodes;
  }

  /**
   * Signs `publicKey` (base64 X25519) for `worker`, or hands back the certificate issued before for
   * the same key while more than half of its validity is left. Refused for a revoked node id.
   */
  async issue(worker: string, publicKey: string, now = Math.floor(Date.now() / 1000)): Promise<CertAnswer> {
    if (this.#reg.revoked_nodes.includes(worker)) {
      return { error: `node ${worker} is revoked (control node add ${worker} lifts it)` };
    }
    let key: Uint8Array;
    try {
      key = decodeKey(publicKey, "public_key");
    } catch (e) {
      return { error: (e as Error).message };
    }
    const b64 = encodeKey(key);
    const revoked = new Set(this.#reg.revoked_serials.map((r) => r.serial));
    const prior = (this.#reg.issued[worker] ?? []).find((c) =>
      c.public_key === b64 && !revoked.has(c.serial) && c.not_after - now > CERT_VALIDITY_S / 2
    );
    let certificate: string;
    if (prior) {
      certificate = prior.certificate;
    } else {
      let bytes: Uint8Array;
      try {
        bytes = signCertificate(this.ca, {
          nodeId: worker,
          publicKey: key,
          notBefore: now - BACKDATE_S,
          notAfter: Math.min(now + CERT_VALIDITY_S, this.ca.notAfter),
        });
      } catch (e) {
        return { error: (e as Error).message };
      }
      const c = decodeCertificate(bytes);
      certificate = Buffer.from(bytes).toString("base64");
      // Keep the live ones only: expired certificates need no record (nor revocation).
      const live = (this.#reg.issued[worker] ?? []).filter((x) => x.not_after > now);
      this.#reg.issued[worker] = [...live, {
        serial: c.serial,
        public_key: b64,
        not_after: c.notAfter,
        certificate,
      }];
      await this.#save();
      log.info("tunnel certificate issued", { worker, serial: c.serial, notAfter: c.notAfter });
    }
    return {
      certificate,
      ca_public_key: encodeKey(this.ca.publicKey),
      ca_name: this.ca.name,
      ca_not_after: this.ca.notAfter,
    };
  }

  /** Revokes `worker` (its id and every live serial issued to it); returns the new signed list. */
  async revoke(worker: string, now = Math.floor(Date.now() / 1000)): Promise<RevocationList> {
    const issued = this.#reg.issued[worker] ?? [];
    const known = new Set(this.#reg.revoked_serials.map((r) => r.serial));
    for (const c of issued) {
      if (!known.has(c.serial)) this.#reg.revoked_serials.push({ serial: c.serial, not_after: c.not_after });
    }
    delete this.#reg.issued[worker];
    if (!this.#reg.revoked_nodes.includes(worker)) this.#reg.revoked_nodes.push(worker);
    this.#reg.sequence++;
    await this.#save();
    log.info("tunnel certificates revoked", { worker, serials: issued.map((c) => c.serial) });
    return this.list(now);
  }

  /** Lifts the revocation of a node id (`control node add`); its old serials stay revoked. */
  async unrevoke(worker: string, now = Math.floor(Date.now() / 1000)): Promise<RevocationList | undefined> {
    if (!this.#reg.revoked_nodes.includes(worker)) return undefined;
    this.#reg.revoked_nodes = this.#reg.revoked_nodes.filter((w) => w !== worker);
    this.#reg.sequence++;
    await this.#save();
    return this.list(now);
  }

  /** The current revocation list, signed (expired serials left out: they no longer verify anyway). */
  list(now = Math.floor(Date.now() / 1000)): RevocationList {
    return signRevocationList(this.ca, {
      sequence: this.#reg.sequence,
      issuedAt: now,
      serials: this.#reg.revoked_serials.filter((r) => r.not_after > now).map((r) => r.serial),
      nodeIds: this.#reg.revoked_nodes,
    });
  }
}
