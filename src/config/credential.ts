/**
 * The node's MQTT credential: `MqttUsername`/`MqttPassword` (netcfg.json or the environment), else
 * the credential file (`MqttCredentialFile`, default `<StateDir>/mqtt-credential.json`) that
 * `netmanager control node add <id> --out …` writes. A credential file readable by group or others
 * is refused (as ssh refuses such keys). The password is never logged.
 *
 * @example
 * ```ts
 * import { loadNodeConfig } from "./mod.ts";
 * const cfg = await loadNodeConfig();
 * const cred = await loadMqttCredential(cfg.net); // { username, password, source } | undefined
 * ```
 */
import { z } from "zod";
import { ConfigError } from "./load.ts";
import type { NetCfg } from "./schema.ts";

/** File name of the credential inside the node's StateDir. */
export const MQTT_CREDENTIAL_FILE_NAME = "mqtt-credential.json";

/** A node's MQTT username and password, and where they came from. */
export interface MqttCredential {
  username: string;
  password: string;
  /** `netcfg` or the file path. */
  source: string;
}

const CredentialFileSchema = z.object({ username: z.string().min(1), password: z.string().min(1) });

/** Resolves the credential; undefined when none is configured. Throws ConfigError. */
export async function loadMqttCredential(
  net: Pick<NetCfg, "MqttUsername" | "MqttPassword" | "MqttCredentialFile" | "StateDir">,
): Promise<MqttCredential | undefined> {
  if (net.MqttUsername !== "" || net.MqttPassword !== "") {
    if (net.MqttUsername === "" || net.MqttPassword === "") {
      throw new ConfigError("MqttUsername and MqttPassword must be given together");
    }
    return { username: net.MqttUsername, password: net.MqttPassword, source: "netcfg" };
  }
  const explicit = net.MqttCredentialFile !== "";
  const path = explicit
    ? net.MqttCredentialFile
    : `${net.StateDir.replace(/\/+$/, "")}/${MQTT_CREDENTIAL_FILE_NAME}`;
  let text: string;
  try {
    const st = await Deno.stat(path);
    if ((st.mode ?? 0) & 0o077) {
      throw new ConfigError(
        `MQTT credential file ${path} is accessible by group or others (mode ` +
          `${((st.mode ?? 0) & 0o777).toString(8)}): chmod 600 it`,
      );
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    if (e instanceof Deno.errors.NotFound && !explicit) return undefined;
    throw new ConfigError(`cannot read MQTT credential file ${path}: ${(e as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ConfigError(`MQTT credential file ${path} is not JSON {"username": …, "password": …}`);
  }
  const r = CredentialFileSchema.safeParse(value);
  if (!r.success) {
    throw new ConfigError(`MQTT credential file ${path} must hold {"username": …, "password": …}`);
  }
  return { ...r.data, source: path };
}
