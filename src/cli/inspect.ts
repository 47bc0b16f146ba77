/**
 * Inspection subcommands that talk to a running daemon: `status`, `peers` and `table show`.
 */
import { Command } from "@commander-js/extra-typings";
import { ApiClient } from "../api/client.ts";
import { DEFAULT_SOCKET, fail } from "./common.ts";
import { columns, formatPeers, formatStatus, type PeerRow } from "./views.ts";

export { columns } from "./views.ts";

async function withClient<T>(socket: string, fn: (c: ApiClient) => Promise<T>): Promise<T> {
  const c = new ApiClient(socket);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** `netmanager status`. */
export function statusCmd() {
  return new Command("status")
    .description("show whether the node is registered, its subnet, address, cluster link and data plane")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--json", "print JSON")
    .action(async (opts) => {
      try {
        const s = await withClient(opts.socket, (c) => c.getJson("/status")) as Record<string, unknown>;
        console.log(opts.json ? JSON.stringify(s, null, 2) : formatStatus(s));
      } catch (e) {
        fail(e);
      }
    });
}

interface RekeyRow {
  peer: string;
  subject?: string;
  handshakeMs?: number;
  error?: string;
}

/** `netmanager peers rekey [PEER]`: fresh handshakes with running peers now, and what each took. */
function rekeyCmd() {
  return new Command("rekey")
    .description(
      "rekey the secure sessions with PEER (ip:port) or with every peer now; prints each handshake's time",
    )
    .argument("[peer]", "the peer's tunnel endpoint (ip:port, as `netmanager status` shows it)")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--json", "print JSON")
    .action(async (peer, opts) => {
      try {
        const r = await withClient(opts.socket, (c) => c.post("/secure/rekey", peer ? { peer } : {}));
        if (r.status !== 200) throw new Error(`POST /secure/rekey: HTTP ${r.status} ${r.body}`);
        const rows = ((r.json as { rekeys?: RekeyRow[] })?.rekeys ?? []) as RekeyRow[];
        if (opts.json) {
          console.log(JSON.stringify(rows, null, 2));
          return;
        }
        console.log(columns(
          ["PEER", "SUBJECT", "HANDSHAKE"],
          rows.map((x) => [
            x.peer,
            x.subject ?? "-",
            x.handshakeMs !== undefined ? `${x.handshakeMs} ms` : (x.error ?? "-"),
          ]),
        ));
        if (rows.length === 0) console.log("(no secure sessions)");
        if (rows.some((x) => x.error !== undefined)) Deno.exitCode = 1;
      } catch (e) {
        fail(e);
      }
    });
}

/** `netmanager peers` (and `peers rekey`). */
export function peersCmd() {
  return new Command("peers")
    .enablePositionalOptions() // `peers rekey --socket` reaches rekey
    .addCommand(rekeyCmd())
    .description("list peer nodes: wire mode, RTT, last seen, packets, drops")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--json", "print JSON")
    .action(async (opts) => {
      try {
        const s = await withClient(opts.socket, (c) => c.getJson("/status")) as { peers?: PeerRow[] };
        const peers = Array.isArray(s.peers) ? s.peers : [];
        console.log(opts.json ? JSON.stringify(peers, null, 2) : formatPeers(peers));
      } catch (e) {
        fail(e);
      }
    });
}

interface TableRow {
  serviceName: string;
  instanceNumber: number;
  serviceIPs: Array<{ kind: string; ipv4?: string; ipv6?: string }>;
  nsAddress?: string;
  nsAddressv6?: string;
  node: string;
  policy?: string;
}

interface FlowRow {
  version: number;
  proto: number;
  src: string;
  sport: number;
  dialled: string;
  dport: number;
  chosen: string;
  node: string;
  packets: number;
  bytes: number;
  /** "kernel" for flows the kernel fast path carries (src/kfast/), else the TUN path. */
  path?: string;
}

const PROTO_NAMES: Record<number, string> = { 1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6" };

function hostPort(addr: string, port: number): string {
  return addr.includes(":") ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** `netmanager table show`. */
export function tableCmd() {
  const show = new Command("show")
    .description("print the translation table (ServiceIPs, instances, nodes, policy)")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--json", "print JSON")
    .option("--flows", "print live flows with packet and byte counters")
    .action(async (opts) => {
      try {
        const route = opts.flows ? "/table?flows=1" : "/table";
        const data = await withClient(opts.socket, (c) => c.getJson(route));
        if (opts.json) {
          console.log(JSON.stringify(data, null, 2));
          return;
        }
        if (opts.flows) {
          const flows = ((data as { flows?: FlowRow[] }).flows ?? []) as FlowRow[];
          console.log(columns(
            ["PROTO", "SOURCE", "DESTINATION", "INSTANCE", "NODE", "PACKETS", "BYTES", "PATH"],
            flows.map((f) => [
              PROTO_NAMES[f.proto] ?? String(f.proto),
              hostPort(f.src, f.sport),
              hostPort(f.dialled, f.dport),
              f.chosen,
              f.node,
              String(f.packets),
              String(f.bytes),
              f.path ?? "tun",
            ]),
          ));
          if (flows.length === 0) console.log("(no flows)");
          return;
        }
        const rows =
          (Array.isArray(data) ? data : (data as { entries?: TableRow[] }).entries ?? []) as TableRow[];
        console.log(columns(
          ["SERVICE", "INST", "SERVICE IPS", "NS ADDRESS", "NS ADDRESS V6", "NODE", "POLICY"],
          rows.map((r) => [
            r.serviceName,
            String(r.instanceNumber),
            r.serviceIPs.map((s) => `${s.kind}:${[s.ipv4, s.ipv6].filter(Boolean).join("/")}`).join(" "),
            r.nsAddress ?? "-",
            r.nsAddressv6 ?? "-",
            r.node,
            r.policy ?? "-",
          ]),
        ));
        if (rows.length === 0) console.log("(table is empty)");
      } catch (e) {
        fail(e);
      }
    });
  return new Command("table").description("inspect the translation table").addCommand(show);
}
