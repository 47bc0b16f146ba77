/**
 * The commander-free daemon command line (`parseDaemonArgv`): a plain command line gives exactly
 * the flags commander gives; anything else is left to commander (undefined).
 */
import { Command } from "@commander-js/extra-typings";
import { assertEquals } from "../helpers/assert.ts";
import { parseDaemonArgv } from "../../src/cli/daemon_flags.ts";
import { daemonCmd, debugCmd } from "../../src/cli/daemon.ts";

/** What commander's own `daemon`/`debug` command parses from `argv` (its action is not run). */
function commanderFlags(argv: string[]): Record<string, unknown> {
  const cmd = argv[0] === "debug" ? debugCmd() : daemonCmd();
  cmd.action(() => {});
  new Command("netmanager").enablePositionalOptions().addCommand(cmd).parse(argv, { from: "user" });
  return cmd.opts();
}

Deno.test("daemon flags: plain command lines parse as commander parses them", () => {
  const lines = [
    ["daemon"],
    ["debug"],
    ["daemon", "--subnet", "10.18.0.64/26", "--socket", "/tmp/x.sock", "--state-dir=/tmp/st"],
    ["daemon", "--cfg", "a.json", "--tuncfg", "b.json", "--log-level", "warn", "--log-format", "json"],
    ["debug", "--metrics-addr", "127.0.0.1:9464", "--static-table", "t.json", "--log-level", "info"],
    ["daemon", "--subnet", "10.18.0.64/26", "--subnet", "10.18.0.128/26"],
  ];
  for (const argv of lines) {
    const fast = parseDaemonArgv(argv);
    assertEquals(fast?.debug, argv[0] === "debug", argv.join(" "));
    assertEquals({ ...fast!.flags }, commanderFlags(argv), argv.join(" "));
  }
});

Deno.test("daemon flags: help, unknown options, stray arguments and other commands go to commander", () => {
  for (
    const argv of [
      ["daemon", "--help"],
      ["daemon", "-h"],
      ["daemon", "--bogus", "x"],
      ["daemon", "extra"],
      ["daemon", "--subnet"],
      ["daemon", "--subnet", "-x"],
      ["status"],
      ["--version"],
      [],
    ]
  ) {
    assertEquals(parseDaemonArgv(argv), undefined, argv.join(" "));
  }
});
