/**
 * Closest ServiceIPs from `netmanager control`, end to end in namespaces: a control plane (embedded
 * broker) and three nodes. `control service ls` shows the Closest IPs, the nodes' tables hold the
 * `Closest` entry from the control plane's table results, `dig closest.<service>…` answers them (A and
 * AAAA), and TCP through the Closest ServiceIP (v4 and v6) reaches an instance, the local one once
 * there is one (the node's Closest policy: local first). `--no-closest` gives a service none.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import type { SimInstance } from "../../src/demo/world.ts";
import { formatIPv4, formatIPv6 } from "../../src/addr/mod.ts";
import { parseNodeSubnet } from "../../src/config/mod.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { ask, CLI, deploy, runIn, threeNodes, WEB, withWorld } from "../helpers/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const BARE = "app.ns.bare.ns";
const NAME = "web.ns.app.ns.local";

/** The A or AAAA answers of `dig` from inside the client against its node's bridge address. */
async function digAnswers(
  client: SimInstance,
  server: string,
  name: string,
  type: string,
): Promise<string[]> {
  const out = await runIn(client, ["dig", `@${server}`, "+tries=1", "+timeout=2", "+short", name, type]);
  return out.split("\n").filter((l) => l !== "").sort();
}

interface Job {
  job_name: string;
  RR_ip: string;
  RR_ip_v6: string;
  Closest_ip: string;
  Closest_ip_v6: string;
  service_ip_list: Array<{ IpType: string; Address: string; Address_v6: string }>;
}

Deno.test({
  name: "closest: Closest ServiceIPs from the control plane — ls, tables, dig closest.…, TCP",
  ...opts,
}, async () => {
  await withWorld(async (w) => {
    const { nodes } = await threeNodes(w);
    const added = await w.ctl(["service", "add", WEB]);
    assertMatch(added, /^added: app\.ns\.web\.ns id \w+ RR \S+ \S+ Closest 10\.30\.\d+\.\d+ fdff:1000::\S*$/);
    await w.ctl(["service", "add", CLI]);
    assertMatch(await w.ctl(["service", "add", BARE, "--no-closest"]), / no Closest$/);
    for (const n of [0, 1, 2]) await w.ctl(["instance", "add", WEB, String(n)]);
    await w.ctl(["instance", "add", CLI, "0"]);
    const jobs = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Job[];
    const web = jobs.find((j) => j.job_name === WEB)!;
    const bare = jobs.find((j) => j.job_name === BARE)!;
    assertEquals(web.service_ip_list.map((s) => s.IpType), ["RR", "Closest"]);
    assertEquals([web.service_ip_list[1].Address, web.service_ip_list[1].Address_v6], [
      web.Closest_ip,
      web.Closest_ip_v6,
    ]);
    assertMatch(web.Closest_ip_v6, /^fdff:1000::/);
    assertEquals([bare.Closest_ip, bare.service_ip_list.length], ["", 1]);
    // The table view: a CLOSEST column with the addresses, "-" for the service without.
    const ls = (await w.ctl(["service", "ls"])).split("\n");
    assertMatch(ls[0], /\bCLOSEST\s+CLOSEST6\b/);
    assert(
      ls.some((l) => l.includes(WEB) && l.includes(web.Closest_ip) && l.includes(web.Closest_ip_v6)),
      ls.join("\n"),
    );
    assert(ls.some((l) => l.includes(BARE) && / - +- /.test(l)), ls.join("\n"));

    // Instances of WEB on n2 and n3; the client on n1.
    const srv = [];
    for (const n of [0, 1, 2]) srv.push(await w.instance(`web${n}`, [...TOOL, "servers", "80", `web${n}`]));
    const client = await w.instance("client");
    await deploy(nodes[1], WEB, 0, srv[0].pid);
    await deploy(nodes[2], WEB, 1, srv[1].pid);
    await deploy(nodes[0], CLI, 0, client.pid);

    // TCP through the Closest ServiceIP (v4, then v6) reaches an instance (the table comes from the
    // control plane on the first packet); one of n2/n3, and the same one while nothing changes.
    const first = await eventually(() => ask(client, web.Closest_ip), (v) => v === "web0" || v === "web1");
    const v6 = await eventually(() => ask(client, web.Closest_ip_v6), (v) => v === "web0" || v === "web1");
    console.log(`closest from n1 (v4, v6): ${first}, ${v6}`);
    // n1's table holds the Closest entry of the control plane's result, for both instances.
    const rows = (await nodes[0].api.getJson("/table")) as Array<
      { serviceName: string; serviceIPs: Array<{ kind: string; ipv4?: string; ipv6?: string }> }
    >;
    const webRows = rows.filter((r) => r.serviceName === WEB);
    assertEquals(webRows.length, 2);
    for (const r of webRows) {
      const c = r.serviceIPs.find((s) => s.kind === "Closest");
      assertEquals([c?.ipv4, c?.ipv6], [web.Closest_ip, web.Closest_ip_v6]);
    }

    // dig closest.<service> (A and AAAA) from the client against n1's DNS.
    const st = (await nodes[0].api.getJson("/status")) as { subnet: string };
    const sub = parseNodeSubnet(st.subnet);
    const br4 = formatIPv4(sub.gateway4);
    const br6 = formatIPv6(sub.gateway6);
    assertEquals(await digAnswers(client, br4, `closest.${NAME}`, "A"), [web.Closest_ip]);
    assertEquals(await digAnswers(client, br6, `closest.${NAME}`, "AAAA"), [web.Closest_ip_v6]);
    assertEquals(await digAnswers(client, br4, NAME, "A"), [web.RR_ip]);
    // A service without Closest IPs: its closest name has no address.
    assertEquals(await digAnswers(client, br4, "closest.bare.ns.app.ns.local", "A"), []);

    // An instance on the client's own node: Closest now picks it (local first) for every new
    // conversation, v4 and v6, while RR still spreads over all three.
    await deploy(nodes[0], WEB, 2, srv[2].pid);
    await eventually(() => ask(client, web.Closest_ip), (v) => v === "web2");
    for (let k = 0; k < 6; k++) assertEquals(await ask(client, web.Closest_ip), "web2");
    for (let k = 0; k < 3; k++) assertEquals(await ask(client, web.Closest_ip_v6), "web2");
    const rr = new Set<string>();
    for (let k = 0; k < 6; k++) rr.add(await ask(client, web.RR_ip));
    assertEquals(rr.size, 3, `RR reaches every instance: ${[...rr]}`);
  });
});
