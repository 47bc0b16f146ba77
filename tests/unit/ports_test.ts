import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { formatPortMappings, parsePortMappings, PortMappingError } from "../../src/env/ports.ts";

Deno.test("ports: Oakestra grammar examples", () => {
  assertEquals(parsePortMappings(""), []);
  assertEquals(parsePortMappings("80:80/udp"), [{ proto: "udp", hostPort: 80, containerPort: 80 }]);
  assertEquals(parsePortMappings("80:80/udp;90:100/udp"), [
    { proto: "udp", hostPort: 80, containerPort: 80 },
    { proto: "udp", hostPort: 90, containerPort: 100 },
  ]);
  assertEquals(parsePortMappings("80"), [{ proto: "tcp", hostPort: 80, containerPort: 80 }]);
  assertEquals(parsePortMappings("80:80"), [{ proto: "tcp", hostPort: 80, containerPort: 80 }]);
  assertEquals(parsePortMappings("80:80/tcp;90:100/tcp"), [
    { proto: "tcp", hostPort: 80, containerPort: 80 },
    { proto: "tcp", hostPort: 90, containerPort: 100 },
  ]);
  assertEquals(parsePortMappings("6080:60/tcp;53/udp"), [
    { proto: "tcp", hostPort: 6080, containerPort: 60 },
    { proto: "udp", hostPort: 53, containerPort: 53 },
  ]);
});

Deno.test("ports: invalid entries are refused with the entry named", () => {
  for (
    const bad of [
      "80:80-80",
      " ",
      "hello",
      "80:",
      ":80",
      "80,90",
      "0:80",
      "80:70000",
      "80:80:80",
      "80;",
      "80;80",
      "1.5",
    ]
  ) {
    assertThrows(() => parsePortMappings(bad), PortMappingError, "invalid port mapping");
  }
  assertThrows(() => parsePortMappings("80:80-80"), PortMappingError, `"80:80-80"`);
  assertThrows(() => parsePortMappings("50103/udp", 50103), PortMappingError, "tunnel");
  assertThrows(() => parsePortMappings("50103", 50103), PortMappingError, "tunnel");
  assertEquals(parsePortMappings("50104/udp", 50103).length, 1);
  // the same host port on different protocols is fine
  assertEquals(parsePortMappings("53/udp;53/tcp").length, 2);
});

Deno.test("ports: canonical formatting round-trips", () => {
  const ms = parsePortMappings("80;90:100/udp");
  assertEquals(formatPortMappings(ms), "80:80/tcp;90:100/udp");
  assertEquals(parsePortMappings(formatPortMappings(ms)), ms);
});
