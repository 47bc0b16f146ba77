import { assertEquals } from "../helpers/assert.ts";
import { DeployBody, normalizeKeys, RegisterBody, UndeployBody } from "../../src/api/schemas.ts";
import { handle } from "../../src/api/server.ts";
import type { NodeService } from "../../src/api/service.ts";

Deno.test("schemas: NodeEngine bodies parse exactly", () => {
  assertEquals(RegisterBody.parse({ client_id: "64a1b2c3d4e5f60718293a4b", cluster_address: "192.0.2.10" }), {
    client_id: "64a1b2c3d4e5f60718293a4b",
    cluster_address: "192.0.2.10",
  });
  assertEquals(RegisterBody.parse({ client_id: "w" }).cluster_address, "");
  const d = DeployBody.parse({ pid: 1234, serviceName: "a.b.c.d", instanceNumber: 0, portMappings: "80:80" });
  assertEquals(d.portMappings, "80:80");
  assertEquals(DeployBody.parse({ pid: 0, serviceName: "a.b.c.d", instanceNumber: 2 }).portMappings, "");
  assertEquals(
    UndeployBody.parse({ serviceName: "a.b.c.d", instanceNumber: 1, pid: -1, portMappings: "" })
      .instanceNumber,
    1,
  );
});

Deno.test("schemas: wrong types and missing fields fail", () => {
  for (
    const bad of [
      { pid: "1", serviceName: "a.b.c.d", instanceNumber: 0 },
      { pid: 1.5, serviceName: "a.b.c.d", instanceNumber: 0 },
      { pid: -1, serviceName: "a.b.c.d", instanceNumber: 0 },
      { pid: 1, serviceName: "", instanceNumber: 0 },
      { pid: 1, instanceNumber: 0 },
      { pid: 1, serviceName: "a.b.c.d", instanceNumber: -1 },
      { pid: 1, serviceName: "a.b.c.d", instanceNumber: 0, portMappings: 80 },
    ]
  ) assertEquals(DeployBody.safeParse(bad).success, false, JSON.stringify(bad));
  assertEquals(RegisterBody.safeParse({ client_id: "" }).success, false);
  assertEquals(RegisterBody.safeParse({ client_id: "a b" }).success, false);
  assertEquals(RegisterBody.safeParse({ client_id: "w", cluster_address: "mqtt://x/y" }).success, false);
  assertEquals(RegisterBody.safeParse({ client_id: "w", cluster_address: "fd00::1" }).success, true);
});

Deno.test("schemas: keys match case-insensitively like Go's decoder", () => {
  assertEquals(normalizeKeys({ PID: 1, servicename: "x" }, ["pid", "serviceName"]), {
    pid: 1,
    serviceName: "x",
  });
});

const fakeNode: NodeService = {
  register: () => Promise.resolve({ ok: true }),
  deploy: () => Promise.resolve({ ipv4: "10.18.0.66", ipv6: "fc00::2" }),
  undeploy: () => Promise.resolve(),
  status: () => ({ ok: 1 }),
  table: () => [],
  instances: () => [],
};

Deno.test("api routing: status codes, reply keys, error bodies name the field", async () => {
  const req = (method: string, path: string, body?: string) =>
    handle(new Request(`http://localhost${path}`, { method, body }), fakeNode);
  assertEquals((await req("GET", "/missing")).status, 404);
  const m = await req("GET", "/register");
  assertEquals([m.status, m.headers.get("allow")], [405, "POST"]);
  const ok = await req(
    "POST",
    "/container/deploy",
    JSON.stringify({ pid: 5, serviceName: "a.b.c.d", instanceNumber: 0 }),
  );
  assertEquals(ok.status, 200);
  assertEquals(ok.headers.get("content-type"), "application/json");
  assertEquals(await ok.json(), { serviceName: "a.b.c.d", nsAddress: "10.18.0.66", nsAddressv6: "fc00::2" });
  const bad = await req(
    "POST",
    "/container/deploy",
    JSON.stringify({ pid: "5", serviceName: "a.b.c.d", instanceNumber: 0 }),
  );
  assertEquals(bad.status, 400);
  assertEquals((await bad.json()).field, "pid");
  const missing = await req("POST", "/unikernel/deploy", JSON.stringify({ pid: 0, instanceNumber: 0 }));
  assertEquals(await missing.json(), { error: "serviceName is required", field: "serviceName" });
  assertEquals((await req("POST", "/register", "{")).status, 400);
  assertEquals(
    (await req("POST", "/container/undeploy/", JSON.stringify({ serviceName: "a.b.c.d", instanceNumber: 0 })))
      .status,
    200,
  );
});
