/**
 * The command line: help, version, and bad input failing with one clear line before anything is
 * touched (no root needed: every case fails during validation).
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const d = new TextDecoder();
  return { code: o.code, stdout: d.decode(o.stdout), stderr: d.decode(o.stderr) };
}

Deno.test("cli: --help everywhere, version", async () => {
  const top = await cli(["--help"]);
  assertEquals(top.code, 0);
  for (const c of ["daemon", "debug", "table", "status", "version", "clean", "demo"]) {
    assertMatch(top.stdout, new RegExp(`\\n  ${c}`));
  }
  for (
    const sub of [["daemon", "--help"], ["table", "show", "--help"], ["status", "--help"], [
      "clean",
      "--help",
    ]]
  ) {
    const r = await cli(sub);
    assertEquals(r.code, 0, sub.join(" "));
    assertMatch(r.stdout, /Usage: netmanager/);
  }
  const v = await cli(["version"]);
  assertEquals(v.code, 0);
  assertMatch(v.stdout, /^netmanager \d+\.\d+\.\d+/);
  assertMatch(v.stdout, /^commit {2}\S+\ndeno {4}\d+\.\d+\.\d+\narch {4}(x86_64|aarch64) \(linux\)$/m);
  assertMatch((await cli(["-V"])).stdout.trim(), /^\d+\.\d+\.\d+/);
});

Deno.test("cli: bad flags and files fail with one clear line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const base = [
      "daemon",
      "--socket",
      `${dir}/s.sock`,
      "--state-dir",
      `${dir}/st`,
      "--tuncfg",
      `${ROOT}config/tuncfg.json`,
    ];
    const bad = await cli([...base, "--subnet", "10.18.0.65/26"]);
    assertEquals(bad.code, 1);
    assertMatch(
      bad.stderr,
      /^netmanager: --subnet: invalid IPv4 prefix "10\.18\.0\.65\/26": host bits set\n$/,
    );
    await Deno.writeTextFile(`${dir}/t.json`, `[{"app_name":"bad","instance_list":[]}]`);
    const st = await cli([...base, "--subnet", "10.18.0.64/26", "--static-table", `${dir}/t.json`]);
    assertEquals(st.code, 1);
    assertMatch(st.stderr, /static table \[0\]\.app_name: job name "bad"/);
    await Deno.writeTextFile(`${dir}/n.json`, `{"NodePublicPort": "70000"}`);
    const cfg = await cli([...base, "--cfg", `${dir}/n.json`]);
    assertEquals(cfg.code, 1);
    assertMatch(cfg.stderr, /n\.json: key "NodePublicPort": NodePublicPort must be a port number/);
    const unknown = await cli(["frobnicate"]);
    assert(unknown.code !== 0);
    assertMatch(unknown.stderr, /unknown command 'frobnicate'/);
    const status = await cli(["status", "--socket", `${dir}/none.sock`]);
    assertEquals(status.code, 1);
    assertMatch(status.stderr, /cannot reach netmanager/);
    let exists = true;
    try {
      await Deno.stat(`${dir}/st`);
    } catch {
      exists = false;
    }
    assertEquals(exists, false, "nothing was created");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
