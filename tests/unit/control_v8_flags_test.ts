/**
 * The packaged control plane runs with V8's young generation limited (issue 14's RSS target): the
 * release's launcher passes the flag for `control` (and not for other commands), the systemd unit sets
 * DENO_V8_FLAGS, and `deno compile` bakes the semi-space flag in (a compiled binary ignores
 * DENO_V8_FLAGS). Launcher and unit add --optimize-for-size for `control` (V8 rejects a flag it does
 * not know, so the probes also prove the list is accepted). Checked by running a probe that churns
 * garbage and reports V8's new-space size: ~2 MiB with 1 MB semi-spaces, ~14 MiB without.
 */
import { assert, assertEquals } from "../helpers/assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const FLAG = "--max-semi-space-size=1";
/** What the launcher and the unit run `control` with. */
const CONTROL_FLAGS = `${FLAG},--optimize-for-size`;
/**
 * Bound for new space with 1 MB semi-spaces: measured 0.5–2.25 MiB (V8 sometimes holds an extra
 * 256 KiB page past 2 × 1 MiB); with V8's defaults the probe grows it to 14–16 MiB.
 */
const LIMITED = 4 * 2 ** 20;

const PROBE = `import v8 from "node:v8";
let keep = [];
for (let i = 0; i < 300000; i++) { keep.push({ a: i, b: "x" + i }); if (keep.length > 50000) keep = []; }
const ns = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
console.log(JSON.stringify({ newSpace: ns.space_size, args: Deno.args }));
`;

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text.trim().split("\n").pop()!) as { newSpace: number; args: string[] };
}

Deno.test("control v8 flags: the release launcher limits the young generation for control only", async () => {
  const top = await Deno.makeTempDir({ prefix: "nm-v8flags-" });
  try {
    // A release tree as scripts/package.sh lays it out, with the probe as the program.
    await Deno.mkdir(`${top}/bin`);
    await Deno.mkdir(`${top}/lib/app`, { recursive: true });
    await Deno.copyFile(`${ROOT}scripts/launcher.sh`, `${top}/bin/netmanager`);
    await Deno.chmod(`${top}/bin/netmanager`, 0o755);
    await Deno.symlink(Deno.execPath(), `${top}/lib/deno`);
    await Deno.writeTextFile(`${top}/lib/app/main.ts`, PROBE);
    await Deno.writeTextFile(`${top}/lib/app/deno.json`, "{}\n");
    const env = { DENO_DIR: `${top}/cache` };
    const control = await run(`${top}/bin/netmanager`, ["control", "--state-dir", "x"], env);
    assertEquals(control.args, ["control", "--state-dir", "x"]);
    assert(control.newSpace <= LIMITED, `control: new space ${control.newSpace} bytes`);
    // Another command runs with V8's defaults: the probe sees the difference.
    const other = await run(`${top}/bin/netmanager`, ["version"], env);
    assert(other.newSpace > LIMITED, `version: new space ${other.newSpace} bytes (expected V8's default)`);
  } finally {
    await Deno.remove(top, { recursive: true });
  }
});

Deno.test("control v8 flags: the systemd unit's DENO_V8_FLAGS limits the young generation", async () => {
  const unit = await Deno.readTextFile(`${ROOT}config/netmanager-control.service`);
  const m = /^Environment=DENO_V8_FLAGS=(\S+)$/m.exec(unit);
  assert(m, "netmanager-control.service sets no DENO_V8_FLAGS");
  assertEquals(m[1], CONTROL_FLAGS);
  const dir = await Deno.makeTempDir({ prefix: "nm-v8flags-" });
  try {
    await Deno.writeTextFile(`${dir}/probe.ts`, PROBE);
    const withEnv = await run(Deno.execPath(), ["run", "--no-config", `${dir}/probe.ts`], {
      DENO_V8_FLAGS: m[1],
    });
    assert(withEnv.newSpace <= LIMITED, `with the unit's DENO_V8_FLAGS: new space ${withEnv.newSpace} bytes`);
    const without = await run(Deno.execPath(), ["run", "--no-config", `${dir}/probe.ts`]);
    assert(without.newSpace > LIMITED, `without: new space ${without.newSpace} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("control v8 flags: launcher, unit, deno compile and the store benchmark name the same flag", async () => {
  const launcher = await Deno.readTextFile(`${ROOT}scripts/launcher.sh`);
  assert(
    launcher.includes(`control)\n    daemon_opts="--v8-flags=${CONTROL_FLAGS}"`),
    "launcher: control",
  );
  // deno compile: the runtime of a compiled binary ignores DENO_V8_FLAGS, so the flag is baked in.
  const compile = await Deno.readTextFile(`${ROOT}scripts/compile.sh`);
  assertEquals(/^v8_flags=(\S+)$/m.exec(compile)?.[1], FLAG);
  assert(
    compile.includes(`compile --frozen -A --v8-flags="$v8_flags"`),
    "compile.sh does not pass $v8_flags",
  );
  const bench = await Deno.readTextFile(`${ROOT}scripts/bench_store.ts`);
  assert(
    bench.includes(`?? "${CONTROL_FLAGS}"`),
    "bench_store.ts measures the control plane with other flags",
  );
});
