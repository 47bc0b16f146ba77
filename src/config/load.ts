/**
 * Loading `netcfg.json` / `tuncfg.json`: file → case-insensitive key match (Oakestra decodes JSON
 * case-insensitively) → environment overrides (variables named like the keys, as Oakestra's gonfig
 * does) → zod validation → caller's CLI overrides. Every failure names the file, the key and the
 * problem.
 *
 * @example
 * ```ts
 * import { NetCfgSchema } from "./schema.ts";
 * const { value } = await loadConfigFile("/etc/netmanager/netcfg.json", NetCfgSchema, { required: false });
 * console.log(value.NodePublicPort); // 50103 unless the file or the environment sets another
 * ```
 */
import { z } from "zod";

/** A configuration file that cannot be used; the message names file, key and problem. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Result of loading one file. */
export interface Loaded<T> {
  value: T;
  /** Keys present in the file that the schema does not know (ignored, reported). */
  unknownKeys: string[];
  /** False when the file did not exist and defaults were used. */
  fromFile: boolean;
}

/** Options for {@link loadConfigFile}. */
export interface LoadOptions {
  /** When true a missing file is an error; otherwise defaults are used. */
  required: boolean;
  /** Environment to read overrides from (defaults to Deno.env). */
  env?: Record<string, string | undefined>;
  /** Values that override file and environment (CLI flags), by schema key. */
  overrides?: Record<string, unknown>;
}

// deno-lint-ignore no-explicit-any
type AnyObjectSchema = z.ZodObject<any>;

/** Reads, merges and validates one config file against `schema`. */
export async function loadConfigFile<S extends AnyObjectSchema>(
  path: string,
  schema: S,
  opts: LoadOptions,
): Promise<Loaded<z.output<S>>> {
  let text: string | undefined;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound) || opts.required) {
      throw new ConfigError(`${path}: cannot read: ${e instanceof Error ? e.message : e}`);
    }
  }
  let raw: unknown = {};
  if (text !== undefined) {
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`${path}: invalid JSON: ${e instanceof Error ? e.message : e}`);
    }
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      throw new ConfigError(`${path}: must contain a JSON object`);
    }
  }
  return {
    ...parseConfigObject(path, raw as Record<string, unknown>, schema, opts),
    fromFile: text !== undefined,
  };
}

/** Validates an already-parsed object (used by loadConfigFile and tests). */
export function parseConfigObject<S extends AnyObjectSchema>(
  source: string,
  raw: Record<string, unknown>,
  schema: S,
  opts: Omit<LoadOptions, "required">,
): Omit<Loaded<z.output<S>>, "fromFile"> {
  const keys = Object.keys(schema.shape);
  const byLower = new Map(keys.map((k) => [k.toLowerCase(), k]));
  const merged: Record<string, unknown> = {};
  const unknownKeys: string[] = [];
  const spelled = new Map<string, string>();
  for (const [k, v] of Object.entries(raw)) {
    const known = byLower.get(k.toLowerCase());
    if (known === undefined) {
      unknownKeys.push(k);
      continue;
    }
    // Keys match case-insensitively (as Oakestra decodes them), so two spellings are ambiguous.
    const before = spelled.get(known);
    if (before !== undefined) {
      throw new ConfigError(
        `${source}: keys "${before}" and "${k}" differ only by case (both set ${known}); keep one`,
      );
    }
    spelled.set(known, k);
    merged[known] = v;
  }
  const env = opts.env ?? Deno.env.toObject();
  const fromEnv = new Set<string>();
  for (const k of keys) {
    const v = env[k];
    if (v !== undefined) {
      merged[k] = v;
      fromEnv.add(k);
    }
  }
  const fromFlags = new Set<string>();
  for (const [k, v] of Object.entries(opts.overrides ?? {})) {
    if (v !== undefined) {
      merged[k] = v;
      fromFlags.add(k);
    }
  }
  const parsed = schema.safeParse(merged);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => {
      const key = i.path.map(String).join(".") || "(root)";
      const origin = fromFlags.has(key)
        ? " (from the command line)"
        : fromEnv.has(key)
        ? " (from environment variable)"
        : "";
      return `key "${key}"${origin}: ${i.message}`;
    });
    throw new ConfigError(`${source}: ${problems.join("; ")}`);
  }
  return { value: parsed.data, unknownKeys };
}
