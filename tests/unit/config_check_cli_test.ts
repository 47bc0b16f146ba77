/**
 * `netmanager config check`: the shipped configs pass; broken files fail with exit 1 and a message
 * naming file and key; unknown keys are a warning with exit 0; nothing on the system changes (no
 * links appear); usage errors exit 2.
 */
import { assertEquals, assertMatch } from "../helpers/assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function check(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}main.ts`, "config", "check", ...args],
  }).output();
  const d = new TextDecoder();
  return { code: o.code, out: d.decode(o.stdout), err: d.decode(o.stderr) };
}

async function links(): Promise<string> {
  const o = await new Deno.Command("ip", { args: ["-o", "link"] }).output();
  return new TextDecoder().decode(o.stdout);
}

Deno.test("config check: good, broken, warned and misused", async () => {
  const dir = await Deno.makeTempDir();
  const before = await links();
  try {
    const good = await check("--cfg", `${ROOT}config/netcfg.json`, "--tuncfg", `${ROOT}config/tuncfg.json`);
    assertEquals(good.code, 0, good.err);
    assertMatch(good.out, /^services\s+10\.30\.0\.0\/16, fdff::\/16$/m);
    assertMatch(good.out, /^OK$/m);

    const bad = `${dir}/bad.json`;
    await Deno.writeTextFile(bad, JSON.stringify({ FastMode: "yes" }));
    const b = await check("--cfg", bad, "--tuncfg", `${ROOT}config/tuncfg.json`);
    assertEquals(b.code, 1);
    assertEquals(
      b.err.trim(),
      `netmanager: ${bad}: key "FastMode": expected a boolean (true or false, or the strings "true"/"false"), got "yes"`,
    );

    const dup = `${dir}/dup.json`;
    await Deno.writeTextFile(dup, '{"NodePublicPort": "50103", "nodepublicport": "50104"}');
    const d = await check("--cfg", dup, "--tuncfg", `${ROOT}config/tuncfg.json`);
    assertEquals(d.code, 1);
    assertMatch(d.err, /keys "NodePublicPort" and "nodepublicport" differ only by case/);

    const json = `${dir}/broken.json`;
    await Deno.writeTextFile(json, '{"Debug": tru');
    const j = await check("--cfg", json, "--tuncfg", `${ROOT}config/tuncfg.json`);
    assertEquals(j.code, 1);
    assertMatch(j.err, /broken\.json: invalid JSON/);

    const tun = `${dir}/tun.json`;
    await Deno.writeTextFile(tun, JSON.stringify({ MTUsize: 100, Extra: 1 }));
    const t = await check("--cfg", `${ROOT}config/netcfg.json`, "--tuncfg", tun);
    assertEquals(t.code, 1);
    assertMatch(t.err, /tun\.json: key "MTUsize": MTUsize must be an integer 1280\.\.65535, got 100/);

    const warn = `${dir}/warn.json`;
    await Deno.writeTextFile(warn, JSON.stringify({ FastMdoe: false }));
    const w = await check("--cfg", warn, "--tuncfg", `${ROOT}config/tuncfg.json`);
    assertEquals(w.code, 0, w.err);
    assertMatch(w.err, /netmanager: warning: .*warn\.json: ignoring unknown keys FastMdoe/);
    assertMatch(w.out, /OK with 1 warning/);

    const missing = await check("--cfg", `${dir}/none.json`);
    assertEquals(missing.code, 1);
    assertMatch(missing.err, /none\.json: cannot read/);

    const usage = await check("--bogus");
    assertEquals(usage.code, 2);
    assertMatch(usage.err, /^netmanager: unknown option '--bogus'/);
    assertEquals(await links(), before, "config check must not touch the system");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
