/**
 * Builds the data-plane Worker as the package ships it: worker.ts minified and split into chunks
 * (`deno bundle --code-splitting`), its entry named `worker.bundle.js` (src/proxy/dataplane.ts loads it
 * when present). Split, not one file: what the Worker imports only on demand — the handshakes
 * (src/secure/hs_host.ts, loaded when a setup arrives) with `node:crypto` — stays in a chunk that a
 * worker of a node without tunnel security never loads. In one file the bundler hoists their
 * `import … from "node:crypto"` to the top, and every worker isolate loaded node:crypto at start
 * (~3–4 MB resident each, measured in tests/netns/memory_test.ts).
 *
 *   deno run -A scripts/worker_bundle.ts <repository> <outdir>…   (scripts/package.sh runs it)
 *
 * @example
 * ```ts
 * import { bundleWorker, workerStartImports } from "./worker_bundle.ts";
 * const dir = await Deno.makeTempDir();
 * await bundleWorker(Deno.execPath(), new URL("../", import.meta.url).pathname, [dir]);
 * console.log(await workerStartImports(dir)); // the node: modules a worker loads at start
 * ```
 */

/** A chunk name in an output directory already taken by a file with other content. */
export class BundleCollisionError extends Error {
  constructor(readonly path: string) {
    super(`worker bundle: ${path} exists with other content`);
  }
}

/**
 * Bundles `<root>/src/proxy/worker.ts` (minified, split) and copies the files into each of `outDirs`,
 * the entry as `worker.bundle.js`. The chunks' names carry a hash of their content: a directory may
 * already hold the main program's chunks; a name taken by other content is an error.
 */
export async function bundleWorker(deno: string, root: string, outDirs: string[]): Promise<string[]> {
  const tmp = await Deno.makeTempDir({ prefix: "nm-worker-bundle-" });
  try {
    const r = await new Deno.Command(deno, {
      args: [
        "bundle",
        "--quiet",
        "--minify",
        "--code-splitting",
        "--outdir",
        tmp,
        `${root}/src/proxy/worker.ts`,
      ],
    }).output();
    if (r.code !== 0) throw new Error(`deno bundle worker.ts: ${new TextDecoder().decode(r.stderr)}`);
    const names: string[] = [];
    for await (const e of Deno.readDir(tmp)) if (e.isFile) names.push(e.name);
    names.sort();
    if (!names.includes("worker.js")) throw new Error(`deno bundle worker.ts: no worker.js in ${names}`);
    const out: string[] = [];
    for (const dir of outDirs) {
      await Deno.mkdir(dir, { recursive: true });
      for (const n of names) {
        const to = `${dir}/${n === "worker.js" ? "worker.bundle.js" : n}`;
        const bytes = await Deno.readFile(`${tmp}/${n}`);
        if (n !== "worker.js") {
          const old = await Deno.readFile(to).catch(() => undefined);
          if (old && !sameBytes(old, bytes)) throw new BundleCollisionError(to);
        }
        await Deno.writeFile(to, bytes);
        out.push(to);
      }
    }
    return out;
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * The `node:` modules a Worker loads at start from the bundle in `dir`: those imported statically by
 * `worker.bundle.js` and the chunks it imports statically (dynamic `import()`s are not followed).
 */
export async function workerStartImports(dir: string): Promise<string[]> {
  const seen = new Set<string>();
  const nodes = new Set<string>();
  const visit = async (file: string): Promise<void> => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = await Deno.readTextFile(`${dir}/${file}`);
    // Static imports only: `import x from"…"`, `import{…}from"…"`, `import"…"` (minified or not).
    for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*["']([^"']+)["']/g)) {
      const spec = m[1];
      if (spec.startsWith("node:")) nodes.add(spec);
      else if (spec.startsWith("./")) await visit(spec.slice(2));
    }
  };
  await visit("worker.bundle.js");
  return [...nodes].sort();
}

if (import.meta.main) {
  const [root, ...dirs] = Deno.args;
  if (!root || dirs.length === 0) {
    console.error("usage: deno run -A scripts/worker_bundle.ts <repository> <outdir>…");
    Deno.exit(2);
  }
  await bundleWorker(Deno.execPath(), root, dirs);
}
