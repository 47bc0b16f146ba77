/**
 * The shipped Grafana dashboard (`config/grafana/netmanager-dashboard.json`): every query is valid
 * PromQL (`promtool check rules` on the queries as recording rules, Grafana variables substituted),
 * and every metric it names is one the node or the control plane exports.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { NodeMetrics } from "../../src/proxy/metrics.ts";
import { controlRegistry } from "../../src/cluster/metrics.ts";
import { ClusterState } from "../../src/cluster/state.ts";

const PATH = new URL("../../config/grafana/netmanager-dashboard.json", import.meta.url).pathname;

interface Dashboard {
  uid: string;
  panels: Array<{ title: string; targets: Array<{ expr: string; legendFormat?: string }> }>;
}

async function exportedNames(): Promise<Set<string>> {
  const node = new NodeMetrics({
    dataPlane: () => undefined,
    registered: () => true,
    clusterConnected: () => true,
    instances: () => 0,
  });
  const ctl = controlRegistry({ state: new ClusterState(), health: () => ({ ok: true }) });
  const names = new Set<string>();
  for (const text of [await node.text(), await ctl.metrics()]) {
    for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      names.add(m[1]);
      if (m[2] === "histogram") { for (const s of ["_bucket", "_count", "_sum"]) names.add(m[1] + s); }
    }
  }
  return names;
}

Deno.test("grafana dashboard: valid PromQL, only exported metrics", async () => {
  const d = JSON.parse(await Deno.readTextFile(PATH)) as Dashboard;
  assertEquals(d.uid, "netmanager-overview");
  const exprs = d.panels.flatMap((p) => p.targets.map((t) => t.expr));
  assert(exprs.length >= 15);
  assert(exprs.some((e) => e.includes("netmanager_service_bytes_total")), "a panel for traffic per service");
  for (const t of d.panels.flatMap((p) => p.targets)) {
    // Grafana's legend templates are {{label}}: doubled braces would show up in the legend.
    assert(!/\{\{\{|\}\}\}/.test(t.legendFormat ?? ""), `legend ${t.legendFormat}`);
  }
  const names = await exportedNames();
  for (const e of exprs) {
    for (const m of e.matchAll(/\b((?:netmanager|process)_[a-z_]+)\b/g)) {
      assert(names.has(m[1]), `dashboard uses ${m[1]}, which nothing exports (in: ${e})`);
    }
  }
  const dir = await Deno.makeTempDir();
  try {
    const rules = exprs.map((e, i) =>
      `  - record: dashboard:q${i}\n    expr: ${
        JSON.stringify(e.replaceAll("$__rate_interval", "5m").replaceAll("$instance", ".*"))
      }`
    );
    await Deno.writeTextFile(
      `${dir}/rules.yml`,
      `groups:\n- name: dashboard\n  rules:\n${rules.join("\n")}\n`,
    );
    const o = await new Deno.Command("promtool", { args: ["check", "rules", `${dir}/rules.yml`] }).output();
    const out = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
    assertEquals(o.code, 0, out);
    assert(out.includes(`SUCCESS: ${exprs.length} rules found`), out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
