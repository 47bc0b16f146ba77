import { assertEquals } from "../helpers/assert.ts";
import {
  add,
  chainNames,
  dnatRules,
  missingJumps,
  restoreScript,
  teardownScript,
} from "../../src/env/rules.ts";

const n = chainNames("OAKESTRA", "goProxyBridge");

Deno.test("rules: DNAT text per family", () => {
  const ports = [{ proto: "udp" as const, hostPort: 90, containerPort: 100 }];
  assertEquals(dnatRules(4, ports, "10.18.0.66"), [
    "-p udp -m addrtype --dst-type LOCAL -m udp --dport 90 -j DNAT --to-destination 10.18.0.66:100",
  ]);
  assertEquals(dnatRules(6, ports, "fc00::2")[0].endsWith("--to-destination [fc00::2]:100"), true);
});

Deno.test("rules: missing hooks detected from a dump; teardown removes only what exists", () => {
  const dump = [
    "*filter",
    ":FORWARD ACCEPT [0:0]",
    ":OAKESTRA-FWD - [0:0]",
    "-A FORWARD -j OAKESTRA-FWD",
    "COMMIT",
    "*nat",
    ":OAKESTRA - [0:0]",
    "-A PREROUTING -j OAKESTRA",
    "COMMIT",
  ].join("\n");
  assertEquals(missingJumps(n, dump), [
    { table: "nat", line: "-A OUTPUT -j OAKESTRA" },
    { table: "nat", line: "-A POSTROUTING -j OAKESTRA-POST" },
  ]);
  assertEquals(missingJumps(n, "")[0], { table: "filter", line: "-I FORWARD 1 -j OAKESTRA-FWD" });
  assertEquals(
    teardownScript(n, dump),
    "*filter\n-D FORWARD -j OAKESTRA-FWD\n-F OAKESTRA-FWD\n-X OAKESTRA-FWD\nCOMMIT\n*nat\n-D PREROUTING -j OAKESTRA\n-F OAKESTRA\n-X OAKESTRA\nCOMMIT\n",
  );
  assertEquals(teardownScript(n, ""), "");
});

Deno.test("rules: restore script layout", () => {
  assertEquals(
    restoreScript([{ table: "nat", declare: ["X"], lines: ["-j ACCEPT"].map(add("X")) }, {
      table: "filter",
      lines: [],
    }]),
    "*nat\n:X - [0:0]\n-A X -j ACCEPT\nCOMMIT\n",
  );
});
