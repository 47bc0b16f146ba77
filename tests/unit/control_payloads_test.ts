/**
 * Unit tests for src/control/payloads.ts: topic names, outgoing payloads (exact keys and types),
 * subnet-result validation and the table-query matching keys of reference §2.4.
 */
import {
  addressChangedPayload,
  canonicalIp,
  deployedPayload,
  interestRemovePayload,
  jobOfUpdatesTopic,
  nodeTopics,
  parseSubnetResult,
  PayloadError,
  resultKeys,
  subnetRequestPayload,
  tableQueryPayload,
  updatesTopic,
  workerIdProblem,
} from "../../src/control/payloads.ts";
import { QueryResultSchema } from "../../src/table/query_result.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";

const ID = "65f0c0ffee0000000000beef";

Deno.test("control payloads: node topics are Oakestra's", () => {
  assertEquals(nodeTopics(ID), {
    subnetRequest: `nodes/${ID}/net/subnet`,
    subnetResult: `nodes/${ID}/net/subnetwork/result`,
    tableQueryRequest: `nodes/${ID}/net/tablequery/request`,
    tableQueryResult: `nodes/${ID}/net/tablequery/result`,
    serviceDeployed: `nodes/${ID}/net/service/deployed`,
    addressChanged: `nodes/${ID}/net/service/address-changed`,
    interestRemove: `nodes/${ID}/net/interest/remove`,
    punch: `nodes/${ID}/net/punch`, // netmanager addition (hole punching)
  });
  assertEquals(updatesTopic("app.ns.svc.ns"), "jobs/app.ns.svc.ns/updates_available");
  assertEquals(jobOfUpdatesTopic("jobs/app.ns.svc.ns/updates_available"), "app.ns.svc.ns");
  assertEquals(jobOfUpdatesTopic("jobs//updates_available"), undefined);
  assertEquals(jobOfUpdatesTopic("jobs/a/b/updates_available"), undefined);
  assertEquals(jobOfUpdatesTopic(`nodes/${ID}/net/tablequery/result`), undefined);
});

Deno.test("control payloads: worker ids that would break topics are refused", () => {
  assertEquals(workerIdProblem(ID), undefined);
  assert(workerIdProblem("") !== undefined);
  assert(workerIdProblem("a/b") !== undefined);
  assert(workerIdProblem("a+") !== undefined);
  assert(workerIdProblem("#") !== undefined);
  assert(workerIdProblem("a\0b") !== undefined);
});

Deno.test("control payloads: outgoing payloads have exactly the reference keys and types", () => {
  assertEquals(JSON.stringify(subnetRequestPayload()), `{"METHOD":"GET"}`);
  assertEquals(JSON.stringify(tableQueryPayload({ sip: "10.30.0.1" })), `{"sname":"","sip":"10.30.0.1"}`);
  assertEquals(JSON.stringify(tableQueryPayload({ sname: "a.b.c.d" })), `{"sname":"a.b.c.d","sip":""}`);
  assertEquals(
    JSON.stringify(deployedPayload({
      job: "a.b.c.d",
      instance: 3,
      nsip: "10.18.0.66",
      nsipv6: "fc00::2",
      hostIp: "192.0.2.10",
      hostPort: 50103,
    })),
    `{"appname":"a.b.c.d","status":"DEPLOYED","instance_number":3,"nsip":"10.18.0.66","nsipv6":"fc00::2",` +
      `"host_port":"50103","host_ip":"192.0.2.10"}`,
  );
  assertEquals(
    JSON.stringify(
      addressChangedPayload({ job: "a.b.c.d", instance: 0, hostIp: "192.0.2.11", hostPort: 50103 }),
    ),
    `{"appname":"a.b.c.d","status":"","instance_number":0,"nsip":"","nsipv6":"","host_port":"50103",` +
      `"host_ip":"192.0.2.11"}`,
  );
  assertEquals(JSON.stringify(interestRemovePayload("a.b.c.d")), `{"appname":"a.b.c.d"}`);
});

Deno.test("control payloads: subnet result validated and canonicalised", () => {
  assertEquals(parseSubnetResult({ address: "10.18.0.64", addressv6: "fc00:0::" }), {
    v4: "10.18.0.64",
    v6: "fc00::",
  });
  // Unknown keys pass.
  assertEquals(parseSubnetResult({ address: "10.18.1.0", addressv6: "fc00::100", extra: 1 }).v6, "fc00::100");
  assertThrows(() => parseSubnetResult({ address: "", addressv6: "fc00::" }), PayloadError, "address");
  assertThrows(
    () => parseSubnetResult({ address: "10.18.0.64", addressv6: "10.1.1.1" }),
    PayloadError,
    "addressv6",
  );
  assertThrows(() => parseSubnetResult({ address: "10.18.0.64" }), PayloadError, "addressv6");
  assertThrows(() => parseSubnetResult("GET"), PayloadError);
  assertThrows(() => parseSubnetResult(null), PayloadError);
});

Deno.test("control payloads: canonical IPs", () => {
  assertEquals(canonicalIp("10.30.0.1"), "10.30.0.1");
  assertEquals(canonicalIp("FDFF:0::0001"), "fdff::1");
  assertEquals(canonicalIp("a.b.c.d"), undefined);
  assertEquals(canonicalIp(""), undefined);
  assertEquals(canonicalIp(null), undefined);
});

Deno.test("control payloads: result keys are app_name, query_key and every service/instance IP", () => {
  const r = QueryResultSchema.parse({
    app_name: "app.ns.svc.ns",
    query_key: "fdff:2000:0::1",
    instance_list: [{
      instance_number: 0,
      instance_ip: "10.30.0.2",
      instance_ip_v6: "fdff::2",
      namespace_ip: "10.18.0.66",
      host_ip: "131.1.0.1",
      host_port: 50103,
      service_ip: [
        { IpType: "RR", Address: "10.30.0.1", Address_v6: "fdff:2000::1" },
        { IpType: "instance_ip", Address: "10.30.0.2", Address_v6: "fdff::2" },
      ],
    }, {
      instance_number: 1,
      instance_ip: "10.30.0.3",
      service_ip: [{ IpType: "instance_ip", Address: "10.30.0.3", Address_v6: null }],
    }],
  });
  const k = resultKeys(r);
  assertEquals([...k.names].sort(), ["app.ns.svc.ns"]);
  assertEquals([...k.ips].sort(), ["10.30.0.1", "10.30.0.2", "10.30.0.3", "fdff:2000::1", "fdff::2"]);
  // A name query: query_key is a name, not an address.
  const byName = resultKeys(
    QueryResultSchema.parse({ app_name: "", query_key: "x.y.z.w", instance_list: [] }),
  );
  assertEquals([...byName.names], ["x.y.z.w"]);
  assertEquals(byName.ips.size, 0);
});
