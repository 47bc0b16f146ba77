/**
 * A large static table in Oakestra's table-query result format (memory tests and probes): `n`
 * entries as `n / perJob` jobs, each instance on one of `nodes` remote nodes, with a round-robin
 * ServiceIP (v4 + v6) per job and an instance IP (v4 + v6) per instance — what a real table holds.
 * ServiceIPs lie in 10.30.0.0/16 and fdff::/16, namespace IPs in 10.20.0.0/14 (outside the test nodes'
 * own subnets) and fc00::/112, node IPs in 192.168.0.0/16.
 */
import type { QueryResult } from "../../src/table/query_result.ts";

/** Builds the table; `n` must be a multiple of `perJob` and at most 49152. */
export function bigTable(n: number, perJob = 4, nodes = 200): QueryResult[] {
  const out: QueryResult[] = [];
  const v4 = (x: number) => `${(x >>> 24) & 255}.${(x >>> 16) & 255}.${(x >>> 8) & 255}.${x & 255}`;
  const hex = (x: number) => x.toString(16);
  for (let j = 0; j * perJob < n; j++) {
    const rr4 = v4(0x0a1e0000 + j + 1); // 10.30.x.y
    const rr6 = `fdff::1:${hex(j + 1)}`;
    const list = [];
    for (let k = 0; k < perJob; k++) {
      const i = j * perJob + k;
      const node = i % nodes;
      list.push({
        instance_number: k,
        instance_ip: v4(0x0a1e4000 + i), // 10.30.64.0 up: apart from the RR addresses
        instance_ip_v6: `fdff::2:${hex(i + 1)}`,
        namespace_ip: v4(0x0a140000 + i * 2 + 2), // 10.20.0.0/14
        namespace_ip_v6: `fc00::${hex(i + 2)}`,
        host_ip: v4(0xc0a80000 + node + 1),
        host_port: 50103,
        service_ip: [
          { IpType: "RR", Address: rr4, Address_v6: rr6 },
          { IpType: "instance_ip", Address: v4(0x0a1e4000 + i), Address_v6: `fdff::2:${hex(i + 1)}` },
        ],
      });
    }
    out.push({ app_name: `app${j}.ns.svc${j}.ns`, instance_list: list });
  }
  return out;
}
