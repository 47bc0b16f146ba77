import { assert, assertEquals } from "../helpers/assert.ts";
import {
  InstanceDeployBodySchema,
  type NodeMessage,
  parseNodeMessage,
  ServiceDeployBodySchema,
  subnetResultTopic,
  tableQueryResultTopic,
  updatesTopic,
} from "../../src/cluster/mod.ts";

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

function invalid(m: NodeMessage, includes: string): void {
  assert(m.kind === "invalid", `expected invalid, got ${JSON.stringify(m)}`);
  assert(m.problem.includes(includes), `problem "${m.problem}" lacks "${includes}"`);
}

Deno.test("messages: subnet request", () => {
  assertEquals(parseNodeMessage("nodes/6650f1c2a41b9e03d7000001/net/subnet", enc({ METHOD: "GET" })), {
    kind: "subnet",
    worker: "6650f1c2a41b9e03d7000001",
  });
  invalid(parseNodeMessage("nodes/w1/net/subnet", enc({ METHOD: "POST" })), "METHOD");
  invalid(parseNodeMessage("nodes/w1/net/subnet", enc({})), "METHOD");
  invalid(parseNodeMessage("nodes/w1/net/subnet", "not json"), "not JSON");
  invalid(parseNodeMessage("nodes/w1/net/subnet", new Uint8Array([0xff, 0xfe])), "not JSON");
});

Deno.test("messages: our own results and unknown topics are ignored (the subnet-regex quirk)", () => {
  for (const t of [subnetResultTopic("w1"), tableQueryResultTopic("w1"), "nodes/w1/net/service/undeployed"]) {
    assertEquals(parseNodeMessage(t, enc({ address: "10.18.0.0" })).kind, "ignored", t);
  }
  assertEquals(parseNodeMessage("nodes/w1/net/subnet/extra", enc({ METHOD: "GET" })).kind, "ignored");
  assertEquals(parseNodeMessage("nodes/a/b/net/subnet", enc({ METHOD: "GET" })).kind, "ignored");
  assertEquals(subnetResultTopic("w1"), "nodes/w1/net/subnetwork/result");
  assertEquals(tableQueryResultTopic("w1"), "nodes/w1/net/tablequery/result");
  assertEquals(updatesTopic("a.b.c.d"), "jobs/a.b.c.d/updates_available");
});

Deno.test("messages: table query by sip or sname; sip wins; both empty is malformed", () => {
  const t = "nodes/w1/net/tablequery/request";
  assertEquals(parseNodeMessage(t, enc({ sname: "", sip: "10.30.0.1" })), {
    kind: "tablequery",
    worker: "w1",
    key: "10.30.0.1",
  });
  assertEquals(parseNodeMessage(t, enc({ sname: "a.b.c.d", sip: "" })), {
    kind: "tablequery",
    worker: "w1",
    key: "a.b.c.d",
  });
  assertEquals(parseNodeMessage(t, enc({ sname: "a.b.c.d" })), {
    kind: "tablequery",
    worker: "w1",
    key: "a.b.c.d",
  });
  assertEquals(parseNodeMessage(t, enc({ sname: "a.b.c.d", sip: "fdff::1" })).kind, "tablequery");
  assertEquals((parseNodeMessage(t, enc({ sname: "x", sip: "fdff::1" })) as { key: string }).key, "fdff::1");
  invalid(parseNodeMessage(t, enc({ sname: "", sip: "" })), "both empty");
  invalid(parseNodeMessage(t, enc({ sip: 5 })), "sip");
  invalid(parseNodeMessage(t, enc([1, 2])), "");
});

Deno.test("messages: service/deployed accepts host_port as string or number, canonicalises v6", () => {
  const t = "nodes/w1/net/service/deployed";
  const base = {
    appname: "a.b.c.d",
    status: "DEPLOYED",
    instance_number: 0,
    nsip: "10.18.0.2",
    nsipv6: "FC00:0::2",
    host_port: "50103",
    host_ip: "192.168.1.10",
  };
  const m = parseNodeMessage(t, enc(base));
  assert(m.kind === "deployed");
  assertEquals(m.worker, "w1");
  assertEquals(m.notice.host_port, 50103);
  assertEquals(m.notice.nsipv6, "fc00::2");
  assertEquals(m.notice.instance_number, 0);
  const n = parseNodeMessage(t, enc({ ...base, host_port: 50104, nsipv6: "", extra: { x: 1 } }));
  assert(n.kind === "deployed");
  assertEquals([n.notice.host_port, n.notice.nsipv6], [50104, undefined]);
  const nil = parseNodeMessage(t, enc({ ...base, nsipv6: "<nil>", host_ip: "2001:DB8::1" }));
  assert(nil.kind === "deployed");
  assertEquals([nil.notice.nsipv6, nil.notice.host_ip], [undefined, "2001:db8::1"]);
  invalid(parseNodeMessage(t, enc({ ...base, host_port: "http" })), "host_port");
  invalid(parseNodeMessage(t, enc({ ...base, host_port: 70000 })), "host_port");
  invalid(parseNodeMessage(t, enc({ ...base, host_port: 0 })), "host_port");
  invalid(parseNodeMessage(t, enc({ ...base, nsip: "10.18.0" })), "nsip");
  invalid(parseNodeMessage(t, enc({ ...base, nsipv6: "zz" })), "nsipv6");
  invalid(parseNodeMessage(t, enc({ ...base, host_ip: "" })), "host_ip");
  invalid(parseNodeMessage(t, enc({ ...base, instance_number: -1 })), "instance_number");
  invalid(parseNodeMessage(t, enc({ ...base, instance_number: 1.5 })), "instance_number");
  invalid(parseNodeMessage(t, enc({ ...base, appname: undefined })), "appname");
});

Deno.test("messages: address-changed and interest/remove", () => {
  const m = parseNodeMessage(
    "nodes/w1/net/service/address-changed",
    enc({
      appname: "a.b.c.d",
      status: "",
      instance_number: 0,
      nsip: "",
      nsipv6: "",
      host_port: "50103",
      host_ip: "1.2.3.4",
    }),
  );
  assert(m.kind === "address-changed");
  assertEquals([m.notice.host_ip, m.notice.host_port], ["1.2.3.4", 50103]);
  invalid(
    parseNodeMessage("nodes/w1/net/service/address-changed", enc({ host_ip: "x", host_port: "1" })),
    "host_ip",
  );
  assertEquals(parseNodeMessage("nodes/w1/net/interest/remove", enc({ appname: "10.30.0.1" })), {
    kind: "interest-remove",
    worker: "w1",
    key: "10.30.0.1",
  });
  invalid(parseNodeMessage("nodes/w1/net/interest/remove", enc({ appname: "" })), "appname");
});

Deno.test("messages: HTTP bodies — service and instance deploy", () => {
  const d = { app_name: "a", app_ns: "b", microservice_name: "c", microservice_namespace: "d" };
  assert(ServiceDeployBodySchema.safeParse({ deployment_descriptor: d }).success);
  const full = ServiceDeployBodySchema.parse({
    _id: "6650f1c2a41b9e03d7000001",
    deployment_descriptor: { ...d, RR_ip: "10.30.0.9", RR_ip_v6: "", image: "x", requirements: {} },
  });
  assertEquals([full.deployment_descriptor.RR_ip, full.deployment_descriptor.RR_ip_v6], [
    "10.30.0.9",
    undefined,
  ]);
  for (
    const bad of [
      {},
      { deployment_descriptor: { ...d, app_name: "app-" } },
      { deployment_descriptor: { ...d, app_name: "app_" } },
      { deployment_descriptor: { ...d, microservice_name: "service!" } },
      { deployment_descriptor: { ...d, microservice_name: "service." } },
      { deployment_descriptor: { ...d, app_ns: "" } },
      { deployment_descriptor: { ...d, app_ns: "x".repeat(31) } },
      { deployment_descriptor: { app_name: "a", app_ns: "b", microservice_name: "c" } },
      { _id: "a.b", deployment_descriptor: d },
      { _id: "node", deployment_descriptor: d },
      { _id: "", deployment_descriptor: d },
    ]
  ) {
    assert(!ServiceDeployBodySchema.safeParse(bad).success, JSON.stringify(bad));
  }
  assertEquals(InstanceDeployBodySchema.parse({ _id: "x", instance_number: "3" }).instance_number, 3);
  assert(!InstanceDeployBodySchema.safeParse({ _id: "x", instance_number: -1 }).success);
  assert(!InstanceDeployBodySchema.safeParse({ _id: "x" }).success);
  assert(!InstanceDeployBodySchema.safeParse({ instance_number: 1 }).success);
});
