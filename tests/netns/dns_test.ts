/**
 * Service names end to end in a simulated cluster: `netmanager control` (embedded broker) and three
 * nodes, `dig` from inside an instance namespace against its node's bridge address (v4 and v6, UDP and
 * TCP); misses go to the control plane, undeploys disappear within TTL + 1 s, other names are forwarded
 * to a dnsmasq in its own namespace, queries from the underlay get no answer, fuzzed packets do not
 * crash the daemon. A standalone node with a static table answers the closest form. The mDNS
 * responder answers one-shot and QU questions, and avahi-resolve (avahi-daemon on a private D-Bus).
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { type SimInstance, type SimNode, World } from "../../src/demo/world.ts";
import { formatIPv4, formatIPv6 } from "../../src/addr/mod.ts";
import { parseNodeSubnet } from "../../src/config/mod.ts";
import { runTool } from "../../src/sys/command.ts";
import { addWebAndClient, CLI, deploy, threeNodes, WEB, withWorld } from "../helpers/world.ts";
import { eventually } from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const UPSTREAM = "192.168.77.53";
const ROOT = new URL("../../", import.meta.url).pathname;

interface Dig {
  status: string;
  answers: { name: string; ttl: number; type: string; data: string }[];
  ms: number;
  flags: string;
}

/** Runs dig in `netns` (an instance pid or a named namespace). Timeout → status "TIMEOUT". */
async function dig(where: SimInstance | string, server: string, args: string[]): Promise<Dig> {
  const ns = typeof where === "string" ? [`--net=/run/netns/${where}`] : ["-t", String(where.pid), "-n"];
  const r = await runTool("nsenter", [
    ...ns,
    "dig",
    `@${server}`,
    "+tries=1",
    "+timeout=2",
    "+nocookie",
    ...args,
  ]);
  const out = r.stdout;
  if (/connection timed out|no servers could be reached/.test(out)) {
    return { status: "TIMEOUT", answers: [], ms: -1, flags: "" };
  }
  const status = /status: (\w+)/.exec(out)?.[1] ?? `?${out}${r.stderr}`;
  const flags = /;; flags: ([a-z ]+);/.exec(out)?.[1] ?? "";
  const ms = Number(/Query time: (\d+) msec/.exec(out)?.[1] ?? -1);
  const answers: Dig["answers"] = [];
  const sec = out.split(";; ANSWER SECTION:\n")[1];
  if (sec) {
    for (const line of sec.split("\n\n")[0].split("\n")) {
      const [name, ttl, , type, ...data] = line.split(/\s+/);
      if (name) answers.push({ name, ttl: Number(ttl), type, data: data.join(" ") });
    }
  }
  return { status, answers, ms, flags };
}

const datas = (d: Dig) => d.answers.map((a) => a.data).sort();

/** The node's bridge addresses (subnet + 1). */
async function bridgeOf(node: SimNode): Promise<{ v4: string; v6: string }> {
  const st = (await node.api.getJson("/status")) as { subnet: string };
  const s = parseNodeSubnet(st.subnet);
  return { v4: formatIPv4(s.gateway4), v6: formatIPv6(s.gateway6) };
}

async function metric(node: SimNode, re: RegExp): Promise<number> {
  const r = await node.api.request("GET", "/metrics");
  const m = re.exec(r.body);
  return m ? Number(m[1]) : 0;
}

interface Service {
  rr4: string;
  rr6: string;
  inst: { v4: string; v6: string }[];
}

async function serviceOf(w: World, job: string): Promise<Service> {
  const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
  const s = svc.find((x) => x.job_name === job)!;
  const rr = (s.service_ip_list as Array<{ Address: string; Address_v6: string }>)[0];
  const inst =
    (s.instance_list as Array<{ instance_number: number; instance_ip: string; instance_ip_v6: string }>)
      .sort((a, b) => a.instance_number - b.instance_number)
      .map((i) => ({ v4: i.instance_ip, v6: i.instance_ip_v6 }));
  return { rr4: rr.Address, rr6: rr.Address_v6, inst };
}

/** dnsmasq answering example.test names, in its own namespace on the underlay. */
async function startDnsmasq(w: World): Promise<string> {
  const ns = await w.namespace("dnsm");
  await w.attach(ns, "dm", UPSTREAM);
  const dir = await w.tempDir("dnsmasq");
  w.spawnIn(ns, [
    "dnsmasq",
    "--keep-in-foreground",
    "--no-resolv",
    "--no-hosts",
    "--bind-interfaces",
    `--listen-address=${UPSTREAM}`,
    "--local-ttl=60",
    "--address=/example.test/192.0.2.7",
    "--address=/example.test/2001:db8::7",
    `--pid-file=${dir}/pid`,
    "--user=root",
  ], `${dir}/dnsmasq.log`);
  await eventually(
    () => dig(ns, UPSTREAM, ["www.example.test"]),
    (d) => d.status === "NOERROR",
    5000,
  );
  return ns;
}

Deno.test(
  { name: "dns: service names in a three-node cluster (dig from an instance)", ...opts },
  async () => {
    Deno.env.set("DnsUpstream", UPSTREAM);
    Deno.env.set("DnsRateLimit", "100000");
    try {
      await withWorld(async (w) => {
        const upstreamNs = await startDnsmasq(w);
        const { nodes } = await threeNodes(w);
        await addWebAndClient(w);
        const web = await serviceOf(w, WEB);
        const s0 = await w.server("web0");
        const s1 = await w.server("web1");
        const client = await w.instance("client");
        await deploy(nodes[1], WEB, 0, s0.pid);
        await deploy(nodes[2], WEB, 1, s1.pid);
        await deploy(nodes[0], CLI, 0, client.pid);
        const br = await bridgeOf(nodes[0]);
        const name = "web.ns.app.ns.local";

        // First query on n1 is a miss (n1 hosts no WEB instance): answered through the control plane.
        const first = await dig(client, br.v4, [name, "A"]);
        assertEquals([first.status, datas(first)], ["NOERROR", [web.rr4]]);
        assertMatch(first.flags, /\baa\b/);
        assertEquals(first.answers[0].ttl, 5);
        // v6 transport and AAAA; case-insensitive; TCP.
        assertEquals(datas(await dig(client, br.v6, [name, "AAAA"])), [web.rr6]);
        assertEquals(datas(await dig(client, br.v4, ["WEB.Ns.APP.ns.LOCAL", "A"])), [web.rr4]);
        assertEquals(datas(await dig(client, br.v6, ["+tcp", name, "AAAA"])), [web.rr6]);
        // instance-N, v4 and v6.
        for (const n of [0, 1]) {
          assertEquals(datas(await dig(client, br.v4, [`instance-${n}.${name}`, "A"])), [web.inst[n].v4]);
          assertEquals(datas(await dig(client, br.v6, [`instance-${n}.${name}`, "AAAA"])), [web.inst[n].v6]);
        }
        // PTR of the RR ServiceIP and of an Instance IP (v4 and v6).
        assertEquals(datas(await dig(client, br.v4, ["-x", web.rr4])), [`${name}.`]);
        assertEquals(datas(await dig(client, br.v4, ["-x", web.inst[1].v4])), [`instance-1.${name}.`]);
        assertEquals(datas(await dig(client, br.v6, ["-x", web.inst[0].v6])), [`instance-0.${name}.`]);
        // Unknown service → NXDOMAIN (through the control plane); malformed name → NXDOMAIN; existing
        // name without the asked type → NOERROR, empty.
        const nx = await dig(client, br.v4, ["nosuch.ns.app.ns.local", "A"]);
        assertEquals([nx.status, nx.answers.length], ["NXDOMAIN", 0]);
        assertEquals((await dig(client, br.v4, ["a.b.local", "A"])).status, "NXDOMAIN");
        const nodata = await dig(client, br.v4, [name, "TXT"]);
        assertEquals([nodata.status, nodata.answers.length], ["NOERROR", 0]);
        // Other names: forwarded to the upstream (dnsmasq).
        assertEquals(datas(await dig(client, br.v4, ["www.example.test", "A"])), ["192.0.2.7"]);
        assertEquals(datas(await dig(client, br.v6, ["www.example.test", "AAAA"])), ["2001:db8::7"]);
        assert(await metric(nodes[0], /netmanager_dns_upstream_forwarded_total (\d+)/) >= 1);

        // An ordinary client (curl, through glibc's resolver) reaches the service by name over the overlay.
        const rc = await Deno.makeTempFile({ prefix: `${w.prefix}-resolv-` });
        try {
          await Deno.writeTextFile(rc, `nameserver ${br.v4}\n`);
          const got = new Set<string>();
          for (let k = 0; k < 4; k++) {
            const r = await runTool("nsenter", [
              "-t",
              String(client.pid),
              "-n",
              "unshare",
              "-m",
              "sh",
              "-c",
              `mount --bind ${rc} /etc/resolv.conf && curl -s -m 3 http://${name}/`,
            ]);
            assertEquals(r.code, 0, r.stderr);
            got.add(r.stdout.trim());
          }
          assertEquals([...got].sort(), ["web0", "web1"]);
        } finally {
          await Deno.remove(rc);
        }

        // The daemon API says where an answer came from.
        const lk = await w.cli(nodes[0], ["dns", "lookup", name, "--json"]);
        assertEquals((JSON.parse(lk) as { source: string }).source, "table");
        const lk2 = JSON.parse(await w.cli(nodes[0], ["dns", "lookup", "www.example.test", "--json"])) as {
          source: string;
          answers: { data: string }[];
        };
        assertEquals([lk2.source, lk2.answers[0]?.data], ["upstream-cache", "192.0.2.7"]);

        // A newly deployed service resolves on the first query (miss → control plane), fast. Each miss
        // sits between two hits (same client, same node, the name in its table): what the machine's
        // load adds to a query right then.
        const times: number[] = [];
        const hits: number[] = [];
        const hit = async () => hits.push((await dig(client, br.v4, [name, "A"])).ms);
        for (const k of [1, 2, 3, 4, 5]) {
          const job = `app.ns.new${k}.ns`;
          await w.ctl(["service", "add", job]);
          await w.ctl(["instance", "add", job, "0"]);
          const inst = await w.instance(`new${k}`);
          await deploy(nodes[2], job, 0, inst.pid);
          const rr = (await serviceOf(w, job)).rr4;
          await hit();
          const d = await dig(client, br.v4, [`new${k}.ns.app.ns.local`, "A"]);
          await hit();
          assertEquals([d.status, datas(d)], ["NOERROR", [rr]]);
          times.push(d.ms);
        }
        // Target ≤ 20 ms (issue 13) on a quiet machine, where a hit takes 0–4 ms (dig's clock steps 4 ms).
        // Under the full suite's load on 2 cores each process may wait for a CPU: a hit is two processes
        // (dig, the daemon), a miss four (dig, the daemon, the broker, the control plane) and two MQTT
        // hops, so the bound adds twice the hits' median to 20 ms (twice their slowest to 250 ms for the
        // slowest miss: one miss of five took 120 ms beside 8 ms hits in a loaded fresh-clone run). Loaded runs measured misses 12–48 ms (median 28) with hits 4–28 (median 16);
        // quiet ones misses 4–24 with hits 0–4. A miss path that waits (a poll, a timeout, a retry)
        // makes misses slow while the hits beside them stay fast: it still fails.
        const sorted = [...times].sort((a, b) => a - b);
        const sortedHits = [...hits].sort((a, b) => a - b);
        const local = sortedHits[Math.floor(hits.length / 2)];
        const medianMax = 20 + 2 * local, slowestMax = 250 + 2 * sortedHits[hits.length - 1];
        console.log(
          `dig query time (ms): misses via the control plane ${times.join(", ")}; hits ${hits.join(", ")}; ` +
            `bounds: median ${medianMax}, slowest ${slowestMax}`,
        );
        assert(
          sorted[2] <= medianMax && sorted[4] <= slowestMax,
          `miss latency (ms) ${times}: median ${sorted[2]} (≤ ${medianMax}), slowest ${sorted[4]} ` +
            `(≤ ${slowestMax}); hits ${hits}`,
        );

        // Undeploy instance 1: its name disappears within TTL + 1 s; the service name stays.
        const t0 = Date.now();
        await nodes[2].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 1 });
        await w.ctl(["instance", "rm", WEB, "1"]);
        await eventually(
          () => dig(client, br.v4, [`instance-1.${name}`, "A"]),
          (d) => d.status === "NXDOMAIN",
          6000,
        );
        console.log(`undeployed instance gone from DNS after ${Date.now() - t0} ms`);
        assertEquals(datas(await dig(client, br.v4, [name, "A"])), [web.rr4]);

        // From the underlay (dnsmasq's namespace, with a route to n1's subnet): no answer, though the
        // packet reaches the server (its refusal counter moves).
        await runTool("ip", ["-n", upstreamNs, "route", "add", `${br.v4}/32`, "via", "192.168.77.1"]);
        const refusedBefore = await metric(nodes[0], /outcome="refused_client"} (\d+)/);
        assertEquals((await dig(upstreamNs, br.v4, [name, "A"])).status, "TIMEOUT");
        assert(
          await metric(nodes[0], /outcome="refused_client"} (\d+)/) > refusedBefore,
          "query reached the node",
        );

        // 10k fuzzed packets: the daemon survives, counts them, and still answers.
        const fz = await runTool("nsenter", [
          "-t",
          String(client.pid),
          "-n",
          Deno.execPath(),
          "run",
          "-A",
          `${ROOT}tests/helpers/dns_fuzz.ts`,
          br.v4,
          "53",
          "10000",
          "7",
        ]);
        assertEquals(fz.code, 0, fz.stderr);
        assertEquals(fz.stdout.trim(), "10000");
        assertEquals(datas(await dig(client, br.v4, [name, "A"])), [web.rr4]);
        const malformed = await metric(nodes[0], /outcome="malformed"} (\d+)/);
        console.log(`fuzz: 10000 sent, ${malformed} counted malformed`);
        assert(malformed >= 100, `malformed ${malformed}`); // reached the parser (how many depends on socket drops)
        const st = await nodes[0].api.request("GET", "/status");
        assertEquals(st.status, 200);
      });
    } finally {
      Deno.env.delete("DnsUpstream");
      Deno.env.delete("DnsRateLimit");
    }
  },
);

Deno.test(
  { name: "dns: closest form, TC truncation, unikernel resolv.conf, rate limit (standalone node)", ...opts },
  async () => {
    Deno.env.set("DnsRateLimit", "200");
    try {
      await withWorld(async (w) => {
        const dir = await w.tempDir("st");
        const file = `${dir}/table.json`;
        const sips = [
          { IpType: "RR", Address: "10.30.7.1", Address_v6: "fdff::7:1" },
          { IpType: "Closest", Address: "10.30.7.2", Address_v6: "fdff::7:2" },
        ];
        // 60 instances: their RR answer is 1 record, but ANY on instance names is small; a big answer
        // comes from many Closest... so use 40 distinct RR addresses over instances to overflow 512 bytes.
        const list = [];
        for (let k = 0; k < 40; k++) {
          list.push({
            instance_number: k,
            instance_ip: `10.30.8.${k + 1}`,
            instance_ip_v6: `fdff::8:${k + 1}`,
            namespace_ip: `10.18.1.${k + 2}`,
            namespace_ip_v6: `fc00::1:${k + 2}`,
            host_ip: "192.168.77.9",
            host_port: 50103,
            service_ip: [
              ...sips,
              { IpType: "RR", Address: `10.30.9.${k + 1}`, Address_v6: `fdff::9:${k + 1}` },
              { IpType: "instance_ip", Address: `10.30.8.${k + 1}`, Address_v6: `fdff::8:${k + 1}` },
            ],
          });
        }
        await Deno.writeTextFile(file, JSON.stringify([{ app_name: "big.ns.svc.ns", instance_list: list }]));
        const node = await w.node("s1", "10.18.0.64/26", ["--static-table", file]);
        const client = await w.instance("c");
        await deploy(node, "big.ns.cli.ns", 0, client.pid);
        const br = await bridgeOf(node);
        const name = "svc.ns.big.ns.local";
        assertEquals(datas(await dig(client, br.v4, [`closest.${name}`, "A"])), ["10.30.7.2"]);
        assertEquals(datas(await dig(client, br.v6, [`closest.${name}`, "AAAA"])), ["fdff::7:2"]);
        // 41 A records do not fit 512 bytes: without EDNS the UDP answer is truncated (TC), dig retries
        // over TCP and gets all of them.
        const plain = await dig(client, br.v4, ["+noedns", "+ignore", name, "A"]);
        assertMatch(plain.flags, /\btc\b/);
        assertEquals(plain.answers.length, 0);
        const full = await dig(client, br.v4, ["+noedns", name, "A"]);
        assertEquals(full.answers.length, 41);
        assert(await metric(node, /outcome="truncated"} (\d+)/) >= 1);

        // A unikernel's named namespace gets /etc/netns/<name>/resolv.conf: `ip netns exec` resolves
        // service names with no server given; undeploy removes the file.
        const uk = `${w.prefix}.ns.uk.ns`;
        const r = await node.api.post("/unikernel/deploy", {
          pid: 0,
          serviceName: uk,
          instanceNumber: 0,
          portMappings: "",
        });
        assertEquals(r.status, 200, r.body);
        const nsName = `${uk}.instance.0`;
        const rcPath = `/etc/netns/${nsName}/resolv.conf`;
        assertMatch(
          await Deno.readTextFile(rcPath),
          new RegExp(`nameserver ${br.v4.replaceAll(".", "\\.")}`),
        );
        const inUk = await runTool("ip", [
          "netns",
          "exec",
          nsName,
          "dig",
          "+short",
          "+tries=1",
          `closest.${name}`,
        ]);
        assertEquals(inUk.stdout.trim(), "10.30.7.2", inUk.stderr);
        assertEquals(
          (await node.api.post("/unikernel/undeploy", { serviceName: uk, instanceNumber: 0 })).status,
          200,
        );
        await eventually(
          () => Deno.stat(`/etc/netns/${nsName}`).then(() => true, () => false),
          (x) => !x,
          3000,
        );

        // Per-client rate limit (DnsRateLimit=200 for this node): a burst of 3000 queries is mostly
        // dropped (counted), and the client is answered again once its bucket refills. With the default
        // limit (the cluster test, 100000) the same burst is answered (fuzz: thousands parsed).
        const accepted0 = await metric(node, /outcome="query_udp"} (\d+)/);
        const tb = Date.now();
        const fz = await runTool("nsenter", [
          "-t",
          String(client.pid),
          "-n",
          Deno.execPath(),
          "run",
          "-A",
          `${ROOT}tests/helpers/dns_fuzz.ts`,
          br.v4,
          "53",
          "3000",
          "3",
        ]);
        const burstS = (Date.now() - tb) / 1000; // an upper bound of the burst's duration
        assertEquals(fz.code, 0, fz.stderr);
        const limited = await metric(node, /outcome="rate_limited"} (\d+)/);
        const accepted = (await metric(node, /outcome="query_udp"} (\d+)/)) - accepted0;
        console.log(`rate limit 200/s: ${accepted} accepted, ${limited} dropped of 3000 in ≤ ${burstS} s`);
        assert(
          limited > 0 && accepted <= 200 + 200 * burstS + 50,
          `accepted ${accepted}, limited ${limited}`,
        );
        await new Promise((r) => setTimeout(r, 1000));
        assertEquals(datas(await dig(client, br.v4, [`closest.${name}`, "A"])), ["10.30.7.2"]);
      });
    } finally {
      Deno.env.delete("DnsRateLimit");
    }
  },
);

async function mdnsQuery(
  inst: SimInstance,
  group: string,
  name: string,
  type: string,
  qu = false,
): Promise<
  | { from: string; id: number; questions: string[]; answers: { type: string; ttl: number; data: string }[] }
  | null
> {
  const r = await runTool("nsenter", [
    "-t",
    String(inst.pid),
    "-n",
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}tests/helpers/mdns_query.ts`,
    group,
    name,
    type,
    ...(qu ? ["qu"] : []),
  ]);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test(
  { name: "mdns: one-shot and QU questions answered by unicast; avahi-resolve (v4, v6)", ...opts },
  async () => {
    await withWorld(async (w) => {
      const dir = await w.tempDir("md");
      const file = `${dir}/table.json`;
      await Deno.writeTextFile(
        file,
        JSON.stringify([{
          app_name: "shop.ns.web.ns",
          instance_list: [{
            instance_number: 0,
            instance_ip: "10.30.8.1",
            instance_ip_v6: "fdff::8:1",
            namespace_ip: "10.18.1.2",
            namespace_ip_v6: "fc00::1:2",
            host_ip: "192.168.77.9",
            host_port: 50103,
            service_ip: [
              { IpType: "RR", Address: "10.30.7.1", Address_v6: "fdff::7:1" },
              { IpType: "instance_ip", Address: "10.30.8.1", Address_v6: "fdff::8:1" },
            ],
          }],
        }]),
      );
      const node = await w.node("m1", "10.18.0.64/26", ["--static-table", file]);
      const client = await w.instance("c");
      await deploy(node, "shop.ns.cli.ns", 0, client.pid);
      const br = await bridgeOf(node);
      const name = "web.ns.shop.ns.local";
      // One-shot query from an ordinary port: unicast answer with our id and question, TTL ≤ 10.
      const a = await mdnsQuery(client, "224.0.0.251", name, "A");
      assert(a !== null, "no mDNS answer");
      assertEquals([a.id, a.questions, a.answers.map((x) => x.data)], [4242, [name], ["10.30.7.1"]]);
      assertEquals(a.from, `${br.v4}:5353`);
      assert(a.answers[0].ttl <= 10);
      const i6 = await mdnsQuery(client, "224.0.0.251", `instance-0.${name}`, "AAAA");
      assertEquals(i6?.answers.map((x) => x.data), ["fdff::8:1"]);
      // Over IPv6 (ff02::fb on the instance's interface).
      const ifname = (await w.execIn(client, ["ip", "-o", "link", "show"])).split("\n")
        .map((l) => l.split(": ")[1]?.split("@")[0]).find((n) => n && n !== "lo")!;
      // Once the instance's link-local address has passed DAD it is the source of its ff02::fb queries
      // (real mDNS clients too): a link-local sender on the bridge is answered, to its link-local address.
      const settled = (out: string) => /fe80:/.test(out) && !/tentative/.test(out);
      await eventually(
        () => w.execIn(client, ["ip", "-6", "addr", "show", "dev", ifname, "scope", "link"]),
        settled,
        10000,
      );
      await eventually(
        async () =>
          (await runTool("ip", [
            "-n",
            node.ns,
            "-6",
            "addr",
            "show",
            "dev",
            "goProxyBridge",
            "scope",
            "link",
          ])).stdout,
        settled,
        10000,
      );
      const v6 = await eventually(
        () => mdnsQuery(client, `ff02::fb%${ifname}`, name, "AAAA"),
        (x) => x !== null,
        5000,
      );
      assertEquals(v6?.answers.map((x) => x.data), ["fdff::7:1"]);
      assertMatch(v6?.from ?? "", /^fe80:/);
      // A QU question from port 5353: unicast answer to the asker.
      const qu = await mdnsQuery(client, "224.0.0.251", name, "A", true);
      assertEquals(qu?.answers.map((x) => x.data), ["10.30.7.1"]);
      // Unknown names and names outside the suffix: silence (no negative answers, no forwarding).
      assertEquals(await mdnsQuery(client, "224.0.0.251", "nosuch.ns.shop.ns.local", "A"), null);
      assertEquals(await mdnsQuery(client, "224.0.0.251", "www.example.test", "A"), null);
      // Unicast to the bridge address port 5353 reaches no responder (it listens on the group only).
      assertEquals(await mdnsQuery(client, br.v4, name, "A"), null);
      // Avahi (avahi-daemon on a private D-Bus, in the instance): avahi-resolve gets both families.
      for (const [fam, want] of [["4", "10.30.7.1"], ["6", "fdff::7:1"]]) {
        const av = await runTool("nsenter", [
          "-t",
          String(client.pid),
          "-n",
          "unshare",
          "-m",
          "--propagation",
          "private",
          "sh",
          `${ROOT}tests/helpers/avahi_resolve.sh`,
          await w.tempDir(`avahi${fam}`),
          name,
          fam,
        ]);
        assertEquals([av.code, av.stdout.trim()], [0, `${name}\t${want}`], av.stderr);
      }
    });
  },
);
