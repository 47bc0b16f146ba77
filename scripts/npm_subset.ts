/**
 * Copies from one DENO_DIR to another exactly the npm packages deno.lock pins (their registry.json and
 * version directories), so a release carries its dependencies and nothing stale from a shared cache.
 *
 *   deno run -A scripts/npm_subset.ts deno.lock FROM_DENO_DIR TO_DENO_DIR
 */
import { z } from "zod";

const Lock = z.object({ version: z.string(), npm: z.record(z.string(), z.unknown()).default({}) });

/** Splits a deno.lock npm key (`@scope/name@1.2.3_peer@4.5.6`) into package name and version. */
export function parseNpmKey(key: string): { name: string; version: string } {
  const at = key.indexOf("@", 1);
  if (at < 0) throw new Error(`deno.lock: unexpected npm key "${key}"`);
  const name = key.slice(0, at);
  const version = key.slice(at + 1).split("_")[0];
  if (!/^[a-z0-9@][a-z0-9._\/-]*$/i.test(name) || name.includes("..") || !/^[0-9A-Za-z.+-]+$/.test(version)) {
    throw new Error(`deno.lock: unexpected npm key "${key}"`);
  }
  return { name, version };
}

async function copy(from: string, to: string): Promise<void> {
  await Deno.mkdir(to.slice(0, to.lastIndexOf("/")), { recursive: true });
  const r = await new Deno.Command("cp", { args: ["-a", from, to], stderr: "piped" }).output();
  if (!r.success) throw new Error(`cp ${from}: ${new TextDecoder().decode(r.stderr).trim()}`);
}

if (import.meta.main) {
  const [lockPath, from, to] = Deno.args;
  if (!to) {
    console.error("usage: npm_subset.ts deno.lock FROM_DENO_DIR TO_DENO_DIR");
    Deno.exit(2);
  }
  const lock = Lock.parse(JSON.parse(await Deno.readTextFile(lockPath)));
  const reg = "npm/registry.npmjs.org";
  const names = new Set<string>();
  for (const key of Object.keys(lock.npm)) {
    const { name, version } = parseNpmKey(key);
    names.add(name);
    await copy(`${from}/${reg}/${name}/${version}`, `${to}/${reg}/${name}/${version}`);
  }
  // Deno keeps registry metadata only for packages it resolved from a range (the direct ones).
  for (const name of names) {
    const meta = `${reg}/${name}/registry.json`;
    const present = await Deno.stat(`${from}/${meta}`).then(() => true, () => false);
    if (present) await copy(`${from}/${meta}`, `${to}/${meta}`);
  }
  console.error(`npm_subset: ${Object.keys(lock.npm).length} package versions`);
}
