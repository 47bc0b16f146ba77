/**
 * The cluster CA of `netmanager control`: created at first start in `<state dir>/tunnel-ca/`
 * (`ca.key` 0600, `ca.json`), it signs the X25519 key each node sends on `nodes/<id>/net/cert/request`
 * (certificate for the node's worker id, valid {@link CERT_VALIDITY_S}; nodes ask again when a third
 * is left) and keeps what it issued in `tunnel-certs.json` (0600). `control node rm` revokes the node:
 * its id and every serial issued to it go into the CA-signed revocation list, published retained on
 * `netmanager/trust/revocations` (nodes get it at once, and on every subscribe). `control node add`
 * lifts the id's revocation (the old serials stay revoked).
 *
 * In etcd mode the CA and the registry live in etcd instead (`<prefix minus "/">-pki/ca` and
 * `…/registry`, created once under a transaction, changed with compare-and-swap), so every replica
 * signs with the same CA; each replica publishes the list on its broker when the sequence changes.
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
import {
  type CaKey,
  caKeyId,
  decodeCertificate,
  ed25519PublicKey,
  generateCa,
  signCertificate,
} from "../secure/cert.ts";
import { CA_KEY_FILE, loadCaKey, writeCa } from "../secure/files.ts";
import { decodeKey, encodeKey } from "../secure/identity.ts";
import { type RevocationList, signRevocationList } from "../secure/revocation.ts";
import { writeAtomic } from "./store.ts";
import type { EtcdClient } from "./etcd.ts";
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
type CaWithValidity = CaKey & { notBefore: number; notAfter: number };

const emptyRegistry = (): Registry => ({
  v: 1,
  sequence: 0,
  issued: {},
  revoked_nodes: [],
  revoked_serials: [],
});

/** Where the CA and the registry are kept. */
interface PkiBackend {
  readonly where: string;
  /** The stored CA, or a fresh one stored first (one wins when replicas race). */
  ca(name: string): Promise<{ ca: CaWithValidity; created: boolean }>;
  read(): Promise<Registry>;
  /** Applies `fn` to the latest registry and stores the result atomically. */
  update<T>(fn: (r: Registry) => T): Promise<T>;
}

function freshCa(name: string): { ca: CaKey; notBefore: number; notAfter: number } {
  const now = Math.floor(Date.now() / 1000);
  return { ca: generateCa(name), notBefore: now - BACKDATE_S, notAfter: now + CA_VALIDITY_S };
}

/** The state dir: `tunnel-ca/` (ca.key 0600, ca.json) and `tunnel-certs.json` (0600). */
class FileBackend implements PkiBackend {
  readonly where: string;
  readonly #dir: string;
  readonly #path: string;
  constructor(stateDir: string) {
    const base = stateDir.replace(/\/+$/, "");
    this.#dir = `${base}/tunnel-ca`;
    this.#path = `${base}/tunnel-certs.json`;
    this.where = this.#dir;
  }
  async ca(name: string): Promise<{ ca: CaWithValidity; created: boolean }> {
    let created = false;
    try {
      await Deno.stat(`${this.#dir}/${CA_KEY_FILE}`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      const f = freshCa(name);
      await writeCa(this.#dir, f.ca, f);
      created = true;
    }
    return { ca: await loadCaKey(this.#dir), created };
  }
  async read(): Promise<Registry> {
    try {
      return RegistrySchema.parse(JSON.parse(await Deno.readTextFile(this.#path)));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return emptyRegistry();
      throw new Error(`cannot use ${this.#path}: ${(e as Error).message}`);
    }
  }
  async update<T>(fn: (r: Registry) => T): Promise<T> {
    const reg = await this.read();
    const before = JSON.stringify(reg);
    const out = fn(reg);
    if (JSON.stringify(reg) !== before) await writeAtomic(this.#path, JSON.stringify(reg) + "\n");
    return out;
  }
}

const CaRecordSchema = z.object({
  name: z.string(),
  privateKey: z.string(),
  notBefore: z.number().int(),
  notAfter: z.number().int(),
});

/** etcd: `<pki prefix>ca` and `<pki prefix>registry`, shared by every replica of the cluster. */
class EtcdBackend implements PkiBackend {
  readonly where: string;
  readonly #etcd: EtcdClient;
  readonly #caKey: string;
  readonly #regKey: string;
  constructor(etcd: EtcdClient, prefix: string) {
    this.#etcd = etcd;
    this.#caKey = `${prefix}ca`;
    this.#regKey = `${prefix}registry`;
    this.where = `etcd ${prefix}`;
  }
  async ca(name: string): Promise<{ ca: CaWithValidity; created: boolean }> {
    const f = freshCa(name);
    const mine = JSON.stringify({
      name,
      privateKey: encodeKey(f.ca.privateKey),
      notBefore: f.notBefore,
      notAfter: f.notAfter,
    });
    const key = this.#caKey;
    const r = await this.#etcd.txn([{ key, version: 0 }], [{ put: { key, value: mine } }], [{
      get: { key },
    }]);
    const rec = CaRecordSchema.parse(JSON.parse(r.succeeded ? mine : r.read[0]?.value ?? ""));
    const privateKey = decodeKey(rec.privateKey, "CA private key in etcd");
    const publicKey = ed25519PublicKey(privateKey);
    return {
      ca: {
        name: rec.name,
        privateKey,
        publicKey,
        keyId: caKeyId(publicKey),
        notBefore: rec.notBefore,
        notAfter: rec.notAfter,
      },
      created: r.succeeded,
    };
  }
  async #get(): Promise<{ reg: Registry; modRevision: number }> {
    const kv = await this.#etcd.get(this.#regKey);
    if (!kv) return { reg: emptyRegistry(), modRevision: 0 };
    return { reg: RegistrySchema.parse(JSON.parse(kv.value)), modRevision: kv.modRevision };
  }
  async read(): Promise<Registry> {
    return (await this.#get()).reg;
  }
  async update<T>(fn: (r: Registry) => T): Promise<T> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const { reg, modRevision } = await this.#get();
      const before = JSON.stringify(reg);
      const out = fn(reg);
      if (JSON.stringify(reg) === before) return out;
      const key = this.#regKey;
      const cmp = modRevision === 0 ? { key, version: 0 } : { key, modRevision };
      const r = await this.#etcd.txn([cmp], [{ put: { key, value: JSON.stringify(reg) } }]);
      if (r.succeeded) return out;
      await new Promise((res) => setTimeout(res, 5 + Math.random() * 20)); // another replica won: again
    }
    throw new Error(`etcd ${this.#regKey}: too many conflicting updates`);
  }
}

/** The control plane's answer on `nodes/<id>/net/cert/result`. */
export type CertAnswer =
  | { certificate: string; ca_public_key: string; ca_name: string; ca_not_after: number }
  | { error: string };

/** The cluster CA and what it issued and revoked. */
export class ClusterPki {
  readonly ca: CaWithValidity;
  /** Where the CA lives (a directory, or `etcd <prefix>`). */
  readonly where: string;
  readonly #store: PkiBackend;

  private constructor(ca: CaWithValidity, store: PkiBackend) {
    this.ca = ca;
    this.where = store.where;
    this.#store = store;
  }

  /**
   * Loads the CA (creating it at first start) from the state dir, or with `etcd` from etcd under
   * `etcdPrefix` (a prefix of its own, e.g. `/netmanager/<cluster>-pki/`). Throws on unusable data.
   */
  static async open(
    stateDir: string,
    opts: { name?: string; etcd?: EtcdClient; etcdPrefix?: string } = {},
  ): Promise<ClusterPki> {
    const store = opts.etcd
      ? new EtcdBackend(opts.etcd, opts.etcdPrefix ?? "/netmanager/cluster-pki/")
      : new FileBackend(stateDir);
    const { ca, created } = await store.ca(opts.name ?? "netmanager cluster");
    log.info(created ? "cluster CA created" : "cluster CA loaded", { keyId: ca.keyId, where: store.where });
    return new ClusterPki(ca, store);
  }

  /** The registry's sequence (grows with every revocation change). */
  async sequence(): Promise<number> {
    return (await this.#store.read()).sequence;
  }

  /**
   * Signs `publicKey` (base64 X25519) for `worker`, or hands back the certificate issued before for
   * the same key while more than half of its validity is left. Refused for a revoked node id.
   */
  async issue(worker: string, publicKey: string, now = Math.floor(Date.now() / 1000)): Promise<CertAnswer> {
    let key: Uint8Array;
    try {
      key = decodeKey(publicKey, "public_key");
    } catch (e) {
      return { error: (e as Error).message };
    }
    const b64 = encodeKey(key);
    const ca = this.ca;
    const r = await this.#store.update(
      (reg): { error: string } | { certificate: string; serial?: string } => {
        if (reg.revoked_nodes.includes(worker)) {
          return { error: `node ${worker} is revoked (control node add ${worker} lifts it)` };
        }
        const revoked = new Set(reg.revoked_serials.map((x) => x.serial));
        const prior = (reg.issued[worker] ?? []).find((c) =>
          c.public_key === b64 && !revoked.has(c.serial) && c.not_after - now > CERT_VALIDITY_S / 2
        );
        if (prior) return { certificate: prior.certificate };
        let bytes: Uint8Array;
        try {
          bytes = signCertificate(ca, {
            nodeId: worker,
            publicKey: key,
            notBefore: now - BACKDATE_S,
            notAfter: Math.min(now + CERT_VALIDITY_S, ca.notAfter),
          });
        } catch (e) {
          return { error: (e as Error).message };
        }
        const c = decodeCertificate(bytes);
        const certificate = Buffer.from(bytes).toString("base64");
        // Keep the live ones only: expired certificates need no record (nor revocation).
        const live = (reg.issued[worker] ?? []).filter((x) => x.not_after > now);
        reg.issued[worker] = [...live, {
          serial: c.serial,
          public_key: b64,
          not_after: c.notAfter,
          certificate,
        }];
        return { certificate, serial: c.serial };
      },
    );
    if ("error" in r) return r;
    if (r.serial) log.info("tunnel certificate issued", { worker, serial: r.serial });
    return {
      certificate: r.certificate,
      ca_public_key: encodeKey(ca.publicKey),
      ca_name: ca.name,
      ca_not_after: ca.notAfter,
    };
  }

  /** Revokes `worker` (its id and every live serial issued to it); returns the new signed list. */
  async revoke(worker: string, now = Math.floor(Date.now() / 1000)): Promise<RevocationList> {
    const serials = await this.#store.update((reg) => {
      const issued = reg.issued[worker] ?? [];
      const known = new Set(reg.revoked_serials.map((r) => r.serial));
      for (const c of issued) {
        if (!known.has(c.serial)) reg.revoked_serials.push({ serial: c.serial, not_after: c.not_after });
      }
      delete reg.issued[worker];
      if (!reg.revoked_nodes.includes(worker)) reg.revoked_nodes.push(worker);
      reg.sequence++;
      return issued.map((c) => c.serial);
    });
    log.info("tunnel certificates revoked", { worker, serials });
    return this.list(now);
  }

  /** Lifts the revocation of a node id (`control node add`); its old serials stay revoked. */
  async unrevoke(worker: string, now = Math.floor(Date.now() / 1000)): Promise<RevocationList | undefined> {
    const changed = await this.#store.update((reg) => {
      if (!reg.revoked_nodes.includes(worker)) return false;
      reg.revoked_nodes = reg.revoked_nodes.filter((w) => w !== worker);
      reg.sequence++;
      return true;
    });
    return changed ? await this.list(now) : undefined;
  }

  /** The current revocation list, signed (expired serials left out: they no longer verify anyway). */
  async list(now = Math.floor(Date.now() / 1000)): Promise<RevocationList> {
    const reg = await this.#store.read();
    return signRevocationList(this.ca, {
      sequence: reg.sequence,
      issuedAt: now,
      serials: reg.revoked_serials.filter((r) => r.not_after > now).map((r) => r.serial),
      nodeIds: reg.revoked_nodes,
    });
  }
}
