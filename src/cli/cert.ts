/**
 * `netmanager cert`: the offline PKI of tunnel security, in the spirit of `nebula-cert`, for nodes
 * without `netmanager control` (e.g. under Oakestra's own cluster manager):
 *
 * - `cert ca --out DIR [--name N] [--days D]`: a new CA (`DIR/ca.key` 0600, `DIR/ca.json` to give nodes);
 * - `cert show [--state-dir DIR]`: this node's public key (the identity is created if needed);
 * - `cert sign --ca DIR --node-id ID --public-key KEY [--days D] --out FILE`: a node certificate;
 * - `cert inspect FILE [--ca ca.json]`: subject, serial, validity, issuer (and the signature with `--ca`).
 *
 * Usage errors exit 2, runtime errors 1.
 *
 * @example
 * ```sh
 * netmanager cert ca --out /etc/netmanager/ca --name lab
 * netmanager cert show                       # on the node: prints its public key
 * netmanager cert sign --ca /etc/netmanager/ca --node-id node1 --public-key <key> --out node1.crt
 * netmanager cert inspect node1.crt --ca /etc/netmanager/ca/ca.json
 * ```
 */
import { Command } from "@commander-js/extra-typings";
import { DEFAULT_PATHS } from "../config/mod.ts";
import {
  caKeyId,
  CertError,
  decodeCertificate,
  generateCa,
  iso,
  signCertificate,
  verifyCertificate,
} from "../secure/cert.ts";
import { loadCaKey, loadCaPublic, loadCertFile, writeCa, writeCertFile } from "../secure/files.ts";
import { decodeKey, encodeKey, loadOrCreateIdentity } from "../secure/identity.ts";
import { configFromFlags, fail, UsageError } from "./common.ts";

const BACKDATE_S = 300;

function daysOf(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 36500) {
    throw new UsageError(`--days "${text}" must be a whole number of days 1..36500`);
  }
  return Number(text);
}

const now = () => Math.floor(Date.now() / 1000);

/** `netmanager cert` with its subcommands. */
export function certCmd() {
  const ca = new Command("ca")
    .description("create a CA for tunnel certificates (DIR/ca.key stays secret, DIR/ca.json goes to nodes)")
    .requiredOption(
      "--out <dir>",
      "directory of the new CA (created; an existing ca.key is never overwritten)",
    )
    .option("--name <name>", "name of the CA", "netmanager")
    .option("--days <days>", "validity in days", "3650")
    .action(async (opts) => {
      try {
        const days = daysOf(opts.days);
        if (!/^[\x20-\x7e]{1,128}$/.test(opts.name)) {
          throw new UsageError("--name must be 1..128 printable characters");
        }
        const t = now();
        const key = generateCa(opts.name);
        const w = await writeCa(opts.out, key, { notBefore: t - BACKDATE_S, notAfter: t + days * 86400 });
        console.log(`CA "${key.name}" key id ${key.keyId}, valid until ${iso(t + days * 86400)}`);
        console.log(`secret key: ${w.keyPath} (mode 0600; keep it off the nodes)`);
        console.log(`trust file: ${w.publicPath} (TunnelCaFile of every node)`);
      } catch (e) {
        fail(e);
      }
    });

  const show = new Command("show")
    .description("print this node's tunnel public key (creating its identity in the state dir if needed)")
    .option("--state-dir <dir>", "state directory (default: StateDir of netcfg.json)")
    .option("--cfg <file>", `netcfg.json (default ${DEFAULT_PATHS.netcfg})`)
    .action(async (opts) => {
      try {
        const stateDir = opts.stateDir ?? (await configFromFlags({ cfg: opts.cfg })).net.StateDir;
        const id = await loadOrCreateIdentity(stateDir);
        if (id.created) console.error(`netmanager: created tunnel identity ${id.path} (mode 0600)`);
        console.log(encodeKey(id.publicKey));
      } catch (e) {
        fail(e);
      }
    });

  const sign = new Command("sign")
    .description("sign a node's public key (from `cert show`) with a CA")
    .requiredOption("--ca <dir>", "CA directory (or its ca.key)")
    .requiredOption("--node-id <id>", "the node's id (its worker id)")
    .requiredOption("--public-key <key>", "the node's public key, base64 (`netmanager cert show`)")
    .requiredOption("--out <file>", "certificate file to write (PEM; TunnelCertFile of the node)")
    .option("--days <days>", "validity in days (at most the CA's)", "365")
    .action(async (opts) => {
      try {
        const days = daysOf(opts.days);
        if (!/^[^/+#\s]{1,128}$/.test(opts.nodeId) || new TextEncoder().encode(opts.nodeId).length > 128) {
          throw new UsageError(`--node-id "${opts.nodeId}" must be 1..128 bytes without / + # or spaces`);
        }
        let key: Uint8Array;
        try {
          key = decodeKey(opts.publicKey, "--public-key");
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        const caKey = await loadCaKey(opts.ca);
        const t = now();
        if (t >= caKey.notAfter) throw new Error(`CA ${caKey.keyId} expired at ${iso(caKey.notAfter)}`);
        const notAfter = Math.min(t + days * 86400, caKey.notAfter);
        const cert = signCertificate(caKey, {
          nodeId: opts.nodeId,
          publicKey: key,
          notBefore: t - BACKDATE_S,
          notAfter,
        });
        await writeCertFile(opts.out, cert);
        const c = decodeCertificate(cert);
        console.log(`certificate ${c.serial} for ${c.nodeId}, valid until ${iso(c.notAfter)}: ${opts.out}`);
      } catch (e) {
        fail(e);
      }
    });

  const inspect = new Command("inspect")
    .description("show a certificate: subject, serial, validity, issuer (verify it with --ca)")
    .argument("<file>", "certificate (PEM)")
    .option("--ca <file>", "CA file (ca.json) to verify the signature and validity against")
    .option("--json", "print JSON")
    .action(async (file, opts) => {
      try {
        const bytes = await loadCertFile(file);
        const c = decodeCertificate(bytes);
        let verdict = "not checked (give --ca)";
        let ok = true;
        if (opts.ca !== undefined) {
          const ca = await loadCaPublic(opts.ca);
          try {
            verifyCertificate(bytes, [ca.publicKey], now());
            verdict = `valid, signed by CA "${ca.name}" (${caKeyId(ca.publicKey)})`;
          } catch (e) {
            ok = false;
            verdict = `INVALID: ${(e as Error).message} (${e instanceof CertError ? e.reason : "error"})`;
          }
        }
        const view = {
          subject: c.nodeId,
          serial: c.serial,
          publicKey: encodeKey(c.publicKey),
          notBefore: iso(c.notBefore),
          notAfter: iso(c.notAfter),
          issuer: c.issuerKeyId,
          bytes: bytes.length,
          verification: verdict,
        };
        if (opts.json) console.log(JSON.stringify(view, null, 2));
        else {
          for (const [k, v] of Object.entries(view)) console.log(`${k.padEnd(12)} ${v}`);
        }
        if (!ok) Deno.exit(1);
      } catch (e) {
        fail(e);
      }
    });

  return new Command("cert")
    .description("tunnel certificates without a control plane: ca, show, sign, inspect")
    .addCommand(ca)
    .addCommand(show)
    .addCommand(sign)
    .addCommand(inspect);
}
