/**
 * `deno task check`: type-checks every module of the project and every `@example` in its JSDoc
 * (`deno check --doc`), so an example that no longer compiles fails the check and the test suite
 * (`scripts/test.ts` runs it first).
 *
 * @example
 * ```ts
 * import { typeCheck } from "./check.ts";
 * if (!(await typeCheck())) Deno.exit(1);
 * ```
 */

/** What is checked: everything `deno check` covered before examples were checked. */
export const CHECK_ROOTS = ["main.ts", "src/", "ffi/", "tests/", "scripts/"];

/**
 * Files type-checked without their examples (`deno check` instead of `deno check --doc`). Empty: the
 * check excludes nothing, and every example type-checks. Keep it that way; a file listed here must
 * be temporary and say why.
 */
export const DOC_CHECK_PENDING: readonly string[] = [];

const root = new URL("..", import.meta.url).pathname;

/** The TypeScript files under `roots` (relative to the repository), sorted. */
export async function tsFiles(roots: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const st = await Deno.stat(root + rel);
    if (st.isFile) {
      if (/\.(ts|tsx|mts)$/.test(rel)) out.push(rel);
      return;
    }
    for await (const e of Deno.readDir(root + rel)) {
      await walk(`${rel.replace(/\/$/, "")}/${e.name}`);
    }
  };
  for (const r of roots) await walk(r);
  return out.sort();
}

async function denoCheck(args: string[]): Promise<boolean> {
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", ...args],
    cwd: root,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  return code === 0;
}

/** Runs `deno check --doc` over {@link CHECK_ROOTS} (pending files without `--doc`); true when clean. */
export async function typeCheck(): Promise<boolean> {
  const files = await tsFiles(CHECK_ROOTS);
  const pending = new Set(DOC_CHECK_PENDING);
  const withDoc = files.filter((f) => !pending.has(f));
  const withoutDoc = files.filter((f) => pending.has(f));
  const docOk = await denoCheck(["--doc", ...withDoc]);
  const plainOk = withoutDoc.length === 0 || await denoCheck(withoutDoc);
  return docOk && plainOk;
}

if (import.meta.main) {
  const ok = await typeCheck();
  console.log(ok ? "type check (with doc examples): ok" : "type check (with doc examples): FAILED");
  Deno.exit(ok ? 0 : 1);
}
