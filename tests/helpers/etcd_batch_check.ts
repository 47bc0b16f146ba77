/**
 * Run inside a test namespace beside an etcd member (`deno run -A etcd_batch_check.ts <endpoint>`):
 * drives one {@link EtcdStore} with changes issued at once (so they share transactions), among
 * them refused ones and an address released and taken again in the same batch, then opens a
 * second store on the same prefix and prints what both hold, and the claim of the reused address,
 * as JSON.
 */
import { EtcdStore } from "../../src/cluster/etcd_store.ts";

const endpoint = Deno.args[0];
const cluster = `b${crypto.randomUUID().slice(0, 8)}`;
const a = await EtcdStore.open({ endpoints: [endpoint], cluster });
const svc = (k: number) => ({
  _id: `j${k}`,
  app_name: "a",
  app_ns: "b",
  microservice_name: `s${k}`,
  microservice_namespace: "d",
});
// One service with 8 instances, one at a time.
await a.change((s) => s.deployService(svc(0)));
for (let n = 0; n < 8; n++) await a.change((s) => s.deployInstance("j0", n));
const freed = a.state.job("j0")!.instance_list[3].instance_ip;
// At once: 40 node subnets, 20 services, refusals between them, and instance 3 removed while
// instance 8 is deployed (it takes the address 3 gave back, in the same batch).
const settled = await Promise.allSettled([
  ...Array.from({ length: 40 }, (_, k) => a.change((s) => s.nodeSubnet(`w${k}`))),
  a.change((s) => s.removeInstance("nope", 0)),
  ...Array.from({ length: 20 }, (_, k) => a.change((s) => s.deployService(svc(k + 1)))),
  a.change((s) => s.removeInstance("j0", 3)),
  a.change((s) => s.deployInstance("j0", 8)),
  a.change((s) => s.deployInstance("ghost", 1)), // no such service: refused
]);
const refused = settled.filter((r) => r.status === "rejected").map((r) =>
  String((r as PromiseRejectedResult).reason)
);
const b = await EtcdStore.open({ endpoints: [endpoint], cluster });
const claim = await a.etcd.get(`${a.prefix}claims/ip/${freed}`);
console.log(JSON.stringify({
  refused,
  freed,
  inst8: a.state.job("j0")!.instance_list.find((i) => i.instance_number === 8)?.instance_ip,
  claimOfFreed: claim?.value,
  a: a.state.toFile(),
  b: b.state.toFile(),
}));
await a.close();
await b.close();
