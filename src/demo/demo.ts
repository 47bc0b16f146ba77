/**
 * The demo (README quick start, command 1): a simulated node with two instances that reach each
 * other over the bridge, and a port mapping reachable from the node. Prints what it does and what
 * answered, then removes everything and checks nothing is left.
 */
import { World } from "./world.ts";

/** Runs the demo; resolves true when every step worked. */
export async function runDemo(print: (line: string) => void = console.log): Promise<boolean> {
  const t0 = performance.now();
  const w = new World();
  let ok = true;
  const step = (s: string) => print(`\n== ${s}`);
  const check = (cond: boolean, what: string) => {
    print(`${cond ? "  ok  " : "  FAIL"} ${what}`);
    if (!cond) ok = false;
  };
  try {
    step("start node n1 (namespace, netmanager daemon in standalone mode, subnet 10.18.0.64/26)");
    const n1 = await w.node("n1", "10.18.0.64/26");
    const status = await n1.api.getJson("/status") as Record<string, unknown>;
    print(`  node n1: registered=${status.registered} subnet=${status.subnet} bridge=${status.bridge}`);

    step("deploy two instances of demo.demo.web.default through the NodeEngine API");
    const job = "demo.demo.web.default";
    const client = await w.instance("client");
    const server = await w.server("server-1");
    const rc = await n1.api.post("/container/deploy", {
      pid: client.pid,
      serviceName: job,
      instanceNumber: 0,
      portMappings: "",
    });
    const rs = await n1.api.post("/container/deploy", {
      pid: server.pid,
      serviceName: job,
      instanceNumber: 1,
      portMappings: "8080:80",
    });
    print(`  instance 0 (client): HTTP ${rc.status} ${rc.body}`);
    print(`  instance 1 (server-1, port 8080→80): HTTP ${rs.status} ${rs.body}`);
    check(rc.status === 200 && rs.status === 200, "both deploys answered 200");
    const serverIp = (rs.json as { nsAddress: string }).nsAddress;
    const serverIp6 = (rs.json as { nsAddressv6: string }).nsAddressv6;

    step("instance → instance over the bridge");
    const a4 = await retry(() => w.httpGet(client, `http://${serverIp}/`));
    check(a4 === "server-1", `client GET http://${serverIp}/ → "${a4}"`);
    const a6 = await retry(() => w.httpGet(client, `http://[${serverIp6}]/`));
    check(a6 === "server-1", `client GET http://[${serverIp6}]/ → "${a6}"`);

    step("port mapping: node n1 → its own address :8080 → server-1:80");
    const viaMap = await retry(() =>
      w.execOnNode(n1, ["curl", "-s", "--max-time", "3", "http://10.18.0.65:8080/"])
    );
    check(viaMap === "server-1", `n1 GET http://10.18.0.65:8080/ → "${viaMap}"`);

    step("instances on n1 (netmanager's GET /instances)");
    const inst = await n1.api.getJson("/instances") as Array<Record<string, unknown>>;
    for (const i of inst) {
      print(`  ${i.serviceName} #${i.instanceNumber}  ${i.nsAddress}  ${i.nsAddressv6}  veth ${i.veth}`);
    }

    step("undeploy both");
    for (const n of [0, 1]) {
      const r = await n1.api.post("/container/undeploy", { serviceName: job, instanceNumber: n });
      check(r.status === 200, `undeploy instance ${n} → HTTP ${r.status}`);
    }
  } catch (e) {
    ok = false;
    print(`  FAIL ${e instanceof Error ? e.message : e}`);
  } finally {
    step("remove everything");
    const left = await w.destroy();
    check(left.length === 0, `no namespaces left${left.length ? `: ${left.join(", ")}` : ""}`);
  }
  print(`\ndemo ${ok ? "succeeded" : "FAILED"} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return ok;
}

async function retry<T>(fn: () => Promise<T>, tries = 20): Promise<T> {
  for (let i = 1;; i++) {
    try {
      return await fn();
    } catch (e) {
      if (i >= tries) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
