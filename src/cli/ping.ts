/**
 * `netmanager ping <ServiceIP|InstanceIP|service|DNS name|peer>`: the path the data plane takes to a
 * target, like `tailscale ping` — table entry (which ServiceIP, which policy) → candidate
 * instances → the node each runs on → the wire mode towards that node → RTT and loss measured by the
 * in-band PROBEs over a short window. Reads the daemon's `/table` and `/status` twice; sends
 * nothing itself. A DNS name the node serves (`service.servicens.app.appns.<suffix>`, with
 * `closest.` or `instance-N.` in front) is resolved by the node's own resolver (`/dns/lookup`, which
 * asks the cluster on a miss) and the address it answers is pinged.
 *
 * @example
 * ```ts
 * const hits = findTargets("10.30.0.1", [], "10.0.0.1:50103", []);
 * hits.length; // 0: not in the table
 * ```
 */
import { canonicalIp } from "../addr/mod.ts";
import { Command } from "@commander-js/extra-typings";
import { ApiClient } from "../api/client.ts";
import { DEFAULT_SOCKET, fail, UsageError } from "./common.ts";
import { columns, formatAge, formatRtt, type PeerRow } from "./views.ts";

/** A `/table` row (the fields used here). */
export interface PingTableRow {
  serviceName: string;
  instanceNumber: number;
  serviceIPs: Array<{ kind: string; ipv4?: string; ipv6?: string }>;
  nsAddress?: string;
  node: string;
  policy?: string;
}

/** A `/status` peer row with its probe counters. */
export type PingPeer = PeerRow & { probesSent?: number; probesLost?: number };

/** One candidate path to the target. */
export interface PingHit {
  /** How the target matched: the ServiceIP kind (`RR`, `Closest`, `instance_ip`…), `name` or `peer`. */
  via: string;
  /** The table row, unless the target was a peer. */
  row?: PingTableRow;
  /** `ip:port` of the node. */
  node: string;
  /** True when the node is this one. */
  local: boolean;
  /** The peer towards that node, when known. */
  peer?: PingPeer;
}

/**
 * The paths to `target` (an address, a service name, a peer's worker id or `ip:port`) given the
 * table rows, this node's `ip:port` and its peers.
 */
export function findTargets(
  target: string,
  rows: readonly PingTableRow[],
  self: string,
  peers: readonly PingPeer[],
): PingHit[] {
  const peerOf = (node: string) => peers.find((p) => p.endpoint === node);
  const hit = (via: string, row: PingTableRow): PingHit => {
    const peer = peerOf(row.node);
    return { via, row, node: row.node, local: row.node === self, ...(peer ? { peer } : {}) };
  };
  const t = target.toLowerCase();
  // Addresses compared in canonical form: fdff:2000:0::1 names the same ServiceIP as fdff:2000::1.
  const ip = canonicalIp(target);
  const byIp = ip === undefined
    ? []
    : rows.flatMap((r) =>
      r.serviceIPs.filter((s) => canonicalIp(s.ipv4) === ip || canonicalIp(s.ipv6) === ip).map((s) =>
        hit(s.kind, r)
      )
    );
  if (byIp.length) return byIp;
  const byName = rows.filter((r) => r.serviceName.toLowerCase() === t).map((r) => hit("name", r));
  if (byName.length) return byName;
  return peers.filter((p) => p.endpoint === target || p.node === target).map((p) => ({
    via: "peer",
    node: p.endpoint,
    local: false,
    peer: p,
  }));
}

/** A `/dns/lookup` answer (the fields used here). */
export interface PingLookup {
  rcode: string;
  source: string;
  answers: Array<{ type: string; data: unknown }>;
}

/**
 * The addresses (A, AAAA) of a lookup answer, canonical, in answer order.
 *
 * @example
 * ```ts
 * lookupAddresses({ rcode: "NOERROR", source: "table", answers: [{ type: "A", data: "10.30.0.1" }] }); // ["10.30.0.1"]
 * ```
 */
export function lookupAddresses(r: PingLookup): string[] {
  const out: string[] = [];
  for (const a of r.answers ?? []) {
    if ((a.type === "A" || a.type === "AAAA") && typeof a.data === "string") {
      const ip = canonicalIp(a.data);
      if (ip !== undefined && !out.includes(ip)) out.push(ip);
    }
  }
  return out;
}

/** Probe counters over the window: sent, lost; undefined when nothing was probed. */
export function lossOver(before: PingPeer | undefined, after: PingPeer | undefined): {
  sent: number;
  lost: number;
} | undefined {
  if (!after) return undefined;
  const sent = (after.probesSent ?? 0) - (before?.probesSent ?? 0);
  const lost = (after.probesLost ?? 0) - (before?.probesLost ?? 0);
  return sent > 0 ? { sent, lost: Math.max(0, Math.min(sent, lost)) } : undefined;
}

/** The text of a ping: a heading and one row per path; `ok` is false when no path answers. */
export function formatPing(
  target: string,
  hits: readonly PingHit[],
  after: readonly PingPeer[],
  windowS: number,
): { text: string; ok: boolean } {
  if (hits.length === 0) {
    return {
      text: `${target}: not in this node's table and no such peer ` +
        "(in cluster mode the node asks the cluster on the first packet to it; try again after sending traffic)",
      ok: false,
    };
  }
  const first = hits[0];
  const head = first.row
    ? first.via === "name"
      ? `${target}: service with ${hits.length} instance(s)`
      : `${target}: ${first.via} ServiceIP of ${first.row.serviceName}` +
        `${first.row.policy ? ` (policy ${first.row.policy})` : ""}, ${hits.length} candidate(s)`
    : `${target}: peer node`;
  let ok = false;
  const rows = hits.map((h) => {
    const now = after.find((p) => p.endpoint === h.node);
    const loss = lossOver(h.peer, now);
    let verdict: string;
    if (h.local) {
      verdict = "local (over the bridge, no tunnel)";
      ok = true;
    } else if (!now) {
      verdict = "no traffic to this node yet (no peer state)";
    } else if (loss && loss.lost === loss.sent) {
      verdict = `NO ANSWER (${loss.lost}/${loss.sent} probes lost)`;
    } else if (!now.answering) {
      verdict = now.mode === "raw" && (now.probesSent ?? 0) === 0
        ? "raw peer (no PROBE support: an Oakestra Go node?)"
        : "NOT ANSWERING HELLOs";
    } else {
      verdict = loss
        ? `ok, ${loss.lost}/${loss.sent} probes lost in ${windowS}s`
        : "ok (not probed in the window)";
      ok = true;
    }
    return [
      h.row ? `${h.row.serviceName}#${h.row.instanceNumber}` : "-",
      h.row?.nsAddress ?? "-",
      `${now?.node ?? h.peer?.node ?? (h.local ? "this node" : "-")} ${h.node}`,
      h.local ? "-" : now?.mode ?? "-",
      h.local ? "-" : formatRtt(now?.rttMs),
      h.local ? "-" : formatAge(now?.lastSeenAgoS),
      verdict,
    ];
  });
  return {
    text: `${head}\n${
      columns(["INSTANCE", "NS ADDRESS", "NODE", "WIRE", "RTT", "LAST SEEN", "RESULT"], rows)
    }`,
    ok,
  };
}

/** Resolves `name` through the node (A, then AAAA): its addresses, or why there are none. */
async function resolveName(
  c: ApiClient,
  name: string,
): Promise<{ addresses: string[]; source: string; why: string }> {
  let why = "";
  for (const type of ["A", "AAAA"]) {
    const res = await c.request("GET", `/dns/lookup?${new URLSearchParams({ name, type })}`);
    if (res.status !== 200) {
      return { addresses: [], source: "", why: `DNS lookup failed: ${res.body.trim()}` };
    }
    const r = JSON.parse(res.body) as PingLookup;
    const addresses = lookupAddresses(r);
    if (addresses.length) return { addresses, source: r.source, why: "" };
    why ||= r.rcode === "NOERROR"
      ? `the name has no address (DNS NOERROR, from ${r.source})`
      : r.rcode === "NXDOMAIN"
      ? `no such name (DNS NXDOMAIN, from ${r.source})`
      : `the name could not be resolved (DNS ${r.rcode}, from ${r.source})`;
  }
  return { addresses: [], source: "", why };
}

/** `netmanager ping`. */
export function pingCmd() {
  return new Command("ping")
    .description("show the path to a ServiceIP, InstanceIP, service, DNS name or peer, with RTT and loss")
    .argument(
      "<target>",
      "ServiceIP, InstanceIP, job name, DNS name (service.servicens.app.appns.local), peer worker id or ip:port",
    )
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--wait <seconds>", "how long to watch the probes", "3")
    .action(async (name, opts) => {
      let target = name;
      try {
        const wait = Number(opts.wait);
        if (!Number.isFinite(wait) || wait < 0 || wait > 60) {
          throw new UsageError("--wait must be 0..60 seconds");
        }
        const c = new ApiClient(opts.socket);
        try {
          const status = async () =>
            await c.getJson("/status") as { peers?: PingPeer[]; publicAddress?: string; publicPort?: number };
          let rows = await c.getJson("/table") as PingTableRow[];
          const s0 = await status();
          const self = `${s0.publicAddress ?? ""}:${s0.publicPort ?? ""}`;
          let hits = findTargets(target, Array.isArray(rows) ? rows : [], self, s0.peers ?? []);
          if (hits.length === 0 && canonicalIp(target) === undefined && target.includes(".")) {
            // A DNS name: resolved by the node's resolver (a miss asks the cluster and fills the table).
            const found = await resolveName(c, target);
            if (found.addresses.length === 0) {
              console.log(`${target}: ${found.why}`);
              Deno.exit(1);
            }
            rows = await c.getJson("/table") as PingTableRow[];
            for (const ip of found.addresses) {
              hits = findTargets(ip, Array.isArray(rows) ? rows : [], self, s0.peers ?? []);
              if (hits.length) {
                console.log(`${target} → ${found.addresses.join(", ")} (DNS, from ${found.source})`);
                target = ip;
                break;
              }
            }
            if (hits.length === 0) {
              console.log(`${target} → ${found.addresses.join(", ")} (DNS, from ${found.source})`);
              target = found.addresses[0];
            }
          }
          if (hits.length && wait > 0) await new Promise((r) => setTimeout(r, wait * 1000));
          const s1 = hits.length && wait > 0 ? await status() : s0;
          const out = formatPing(target, hits, s1.peers ?? [], wait);
          console.log(out.text);
          if (!out.ok) Deno.exit(1);
        } finally {
          c.close();
        }
      } catch (e) {
        fail(e);
      }
    });
}
