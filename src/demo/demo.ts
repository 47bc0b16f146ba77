/**
 * The demo (README quick start, command 1): a three-node overlay on embedded defaults.
 * `netmanager control` (embedded MQTT broker, allocation, HTTP API) runs in its own namespace; three
 * simulated nodes run the daemon in cluster mode and get their subnets over MQTT. A web service has
 * two instances on nodes 2 and 3 and a client on node 1; requests through the round-robin
 * ServiceIP alternate between them; after one instance is undeployed the traffic moves to the
 * other. The client also reaches the service by name through its node's DNS server. Everything is
 * removed at the end and checked to be gone.
 */
import { selfCommand } from "../sys/process.ts";
import { World } from "./world.ts";

const CONTROL_IP = "192.168.77.254";
const WEB = "demo.demo.web.default";
const CLIENT = "demo.demo.client.default";

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
    step(`start netmanager control (embedded MQTT broker) at ${CONTROL_IP}`);
    await w.control(CONTROL_IP);

    step("start three nodes in cluster mode; each registers and gets its subnet over MQTT");
    const nodes = [];
    for (let i = 1; i <= 3; i++) {
      const n = await w.clusterNode(`n${i}`, `192.168.77.${i}`, CONTROL_IP);
      const st = await n.api.getJson("/status") as Record<string, unknown>;
      print(`  node n${i}: underlay 192.168.77.${i}, subnet ${st.subnet}`);
      nodes.push(n);
    }

    step("register the services and their instances with the control plane");
    print("  " + await w.ctl(["service", "add", WEB]));
    print("  " + await w.ctl(["service", "add", CLIENT]));
    for (const [job, n] of [[WEB, 0], [WEB, 1], [CLIENT, 0]] as const) {
      print("  " + await w.ctl(["instance", "add", job, String(n)]));
    }
    const services = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
    const web = services.find((s) => s.job_name === WEB)!;
    const rr = (web.service_ip_list as Array<{ Address: string }>)[0].Address;
    print(`  ${WEB}: round-robin ServiceIP ${rr}`);

    step("deploy: server-1 on n2, server-2 on n3, the client on n1 (NodeEngine API)");
    const server1 = await w.server("server-1");
    const server2 = await w.server("server-2");
    const client = await w.instance("client");
    const deploys: Array<[number, string, number, number]> = [[1, WEB, 0, server1.pid], [
      2,
      WEB,
      1,
      server2.pid,
    ], [
      0,
      CLIENT,
      0,
      client.pid,
    ]];
    for (const [i, job, n, pid] of deploys) {
      const r = await nodes[i].api.post("/container/deploy", {
        pid,
        serviceName: job,
        instanceNumber: n,
        portMappings: "",
      });
      check(r.status === 200, `${job}#${n} on n${i + 1} → ${r.body}`);
    }

    step(`client → http://${rr}/ six times (round robin across nodes)`);
    const answers: string[] = [];
    for (let k = 0; k < 6; k++) answers.push(await retry(() => w.httpGet(client, `http://${rr}/`)));
    for (const a of answers) print(`  answered by ${a}`);
    check(
      answers.every((a, k) => k === 0 || a !== answers[k - 1]) && new Set(answers).size === 2,
      "answers alternate between server-1 and server-2",
    );

    step("netmanager table show (node n1)");
    print(await w.cli(nodes[0], ["table", "show"]));

    const st1 = await nodes[0].api.getJson("/status") as { subnet: string };
    const [a, b, c, d] = st1.subnet.split("/")[0].split(".").map(Number);
    const dnsIp = `${a}.${b}.${c}.${d + 1}`; // the bridge address of n1 (its DNS server)
    const webName = "web.default.demo.demo.local";
    step(`client → http://${webName}/ by name (n1's DNS server on its bridge, ${dnsIp})`);
    print(await w.cli(nodes[0], ["dns", "lookup", webName]));
    const resolv = await Deno.makeTempFile({ prefix: `${w.prefix}-resolv-` });
    try {
      await Deno.writeTextFile(resolv, `nameserver ${dnsIp}\n`);
      const get = [...selfCommand(), "demo-get", `http://${webName}/`].join(" ");
      const byName = await retry(() =>
        w.execIn(client, ["unshare", "-m", "sh", "-c", `mount --bind ${resolv} /etc/resolv.conf && ${get}`])
      );
      print(`  answered by ${byName}`);
      check(byName === "server-1" || byName === "server-2", "a request by service name reaches the service");
    } finally {
      await Deno.remove(resolv);
    }

    step("undeploy server-1 (NodeEngine on n2 + control plane)");
    const u = await nodes[1].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 0 });
    check(u.status === 200, `undeploy on n2 → HTTP ${u.status}`);
    print("  " + await w.ctl(["instance", "rm", WEB, "0"]));
    await new Promise((r) => setTimeout(r, 300));
    const after: string[] = [];
    for (let k = 0; k < 4; k++) after.push(await retry(() => w.httpGet(client, `http://${rr}/`)));
    for (const a of after) print(`  answered by ${a}`);
    check(after.every((a) => a === "server-2"), "all traffic moved to server-2");
  } catch (e) {
    ok = false;
    print(`  FAIL ${e instanceof Error ? e.message : e}`);
  } finally {
    if (!ok) await w.diagnose(print);
    step("remove everything");
    const left = await w.destroy();
    check(left.length === 0, `no namespaces left${left.length ? `: ${left.join(", ")}` : ""}`);
  }
  print(`\ndemo ${ok ? "succeeded" : "FAILED"} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return ok;
}

async function retry<T>(fn: () => Promise<T>, tries = 30): Promise<T> {
  for (let i = 1;; i++) {
    try {
      return await fn();
    } catch (e) {
      if (i >= tries) throw e;
      await new Promise((r) => setTimeout(r, 150));
    }
  }
}
