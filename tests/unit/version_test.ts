/**
 * `netmanager version`: in a checkout the commit comes from git; the text names version, commit, Deno
 * and architecture.
 */
import { buildCommit, buildInfo, formatBuildInfo, VERSION } from "../../src/version.ts";
import { assertEquals, assertMatch } from "../helpers/assert.ts";

Deno.test("version: commit from git in a checkout; all four facts printed", async () => {
  const git = await new Deno.Command("git", {
    args: ["-C", new URL("../../", import.meta.url).pathname, "rev-parse", "--short", "HEAD"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const expected = git.success ? new TextDecoder().decode(git.stdout).trim() : "unknown";
  assertEquals(await buildCommit(), expected);
  const info = await buildInfo();
  assertEquals([info.version, info.deno, info.arch, info.os], [
    VERSION,
    Deno.version.deno,
    Deno.build.arch,
    "linux",
  ]);
  const text = formatBuildInfo(info);
  assertMatch(text, new RegExp(`^netmanager ${VERSION.replaceAll(".", "\\.")}\\n`));
  assertMatch(text, new RegExp(`^commit  ${expected}$`, "m"));
  assertMatch(text, new RegExp(`^deno    ${Deno.version.deno.replaceAll(".", "\\.")}$`, "m"));
  assertMatch(text, new RegExp(`^arch    ${Deno.build.arch} \\(linux\\)$`, "m"));
});
