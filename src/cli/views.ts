/**
 * Text views of the daemon's `/status` for people: `netmanager status` (one fact per line) and
 * `netmanager peers` (a table). Pure: JSON in, text out; missing or odd fields print as `-`.
 *
 * @example
 * ```ts
 * formatAge(75); // "1m15s ago"
 * formatPeers([{ endpoint: "10.0.0.2:50103", mode: "fast", answering: true, rttMs: 0.4, lastSeenAgoS: 1, drops: 0 }]);
 * ```
 * @module
 */

/** Aligns rows as columns (header first), two spaces apart. */
export function columns(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => String(c ?? "-").padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

/** A duration in seconds as `45s`, `3m05s`, `2h10m`, `4d3h`. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "-";
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, "0")}s`;
  if (t < 86400) return `${Math.floor(t / 3600)}h${String(Math.floor(t / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(t / 86400)}d${Math.floor(t / 3600) % 24}h`;
}

/** An age in seconds as `just now`, `12s ago`, `3m05s ago`; undefined → `never`. */
export function formatAge(s: number | undefined): string {
  if (s === undefined) return "never";
  return s < 1 ? "just now" : `${formatDuration(s)} ago`;
}

/** An RTT in ms: `0.42 ms`, `12 ms`; undefined → `-`. */
export function formatRtt(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "-";
  return ms < 10 ? `${ms.toFixed(2)} ms` : `${Math.round(ms)} ms`;
}

/** One peer row as `/status` reports it (`peers[]`). */
export interface PeerRow {
  node?: string;
  endpoint: string;
  mode: string;
  answering: boolean;
  rttMs?: number;
  lastSeenAgoS?: number;
  drops: number;
  txPackets?: number;
  rxPackets?: number;
  probesLost?: number;
  /** `up` / `down` while probed; `unknown` (no probes answered ever, e.g. an Oakestra Go node: used as up). */
  health?: string;
  downCause?: string;
  downForS?: number;
  path?: string;
  /** With `path: relayed`: the relay endpoint dialled (`endpoint` is the peer's own). */
  via?: string;
  mtu?: number;
}

/** The STATE column: `up`, `DOWN 5s (cause)`, `up?` (not probed: liveness unknown, used as up). */
export function formatHealth(p: Pick<PeerRow, "health" | "downCause" | "downForS">): string {
  if (p.health === "down") {
    return `DOWN${p.downForS !== undefined ? ` ${formatDuration(p.downForS)}` : ""}${
      p.downCause ? ` (${p.downCause})` : ""
    }`;
  }
  return p.health === "up" ? "up" : "up?";
}

/** The `peers` table: peer, endpoint, wire mode, RTT, last seen, packets, drops, probe loss, state. */
export function formatPeers(peers: readonly PeerRow[]): string {
  if (peers.length === 0) return "(no peers yet: a peer appears once traffic goes to or comes from it)";
  return columns(
    [
      "PEER",
      "ENDPOINT",
      "WIRE",
      "RTT",
      "LAST SEEN",
      "TX PKTS",
      "RX PKTS",
      "DROPS",
      "PROBES LOST",
      "PATH",
      "MTU",
      "STATE",
    ],
    peers.map((p) => [
      p.node ?? "-",
      p.endpoint,
      p.answering ? p.mode : `${p.mode} (no HELLO answer)`,
      formatRtt(p.rttMs),
      formatAge(p.lastSeenAgoS),
      String(p.txPackets ?? "-"),
      String(p.rxPackets ?? "-"),
      String(p.drops),
      String(p.probesLost ?? "-"),
      p.path === "relayed" && p.via ? `relayed via ${p.via}` : p.path ?? "-",
      String(p.mtu ?? "-"),
      formatHealth(p),
    ]),
  );
}

const str = (v: unknown): string => v === null || v === undefined || v === "" ? "-" : String(v);
const num = (v: unknown): number | undefined => typeof v === "number" && Number.isFinite(v) ? v : undefined;

/** One ServiceIP's traffic as `/status` reports it (`services[]`). */
interface ServiceRow {
  service?: unknown;
  address?: unknown;
  instance?: unknown;
  txPackets?: unknown;
  txBytes?: unknown;
  rxPackets?: unknown;
  rxBytes?: unknown;
}

/** `netmanager status`: one fact per line. */
export function formatStatus(s: Record<string, unknown>): string {
  const rows: string[][] = [];
  const registered = s.registered === true;
  rows.push(["node", `${str(s.workerId)} (${str(s.mode)}, ${registered ? "registered" : "NOT registered"})`]);
  const re = s.lastRegisterError as { error?: unknown; secondsAgo?: unknown } | null | undefined;
  if (!registered && re) {
    rows.push(["last error", `/register ${formatAge(num(re.secondsAgo))} failed: ${str(re.error)}`]);
  }
  rows.push(["version", str(s.version)]);
  rows.push(["subnet", str(s.subnet)]);
  rows.push(["address", `${str(s.publicAddress)}:${str(s.publicPort)}`]);
  rows.push(["bridge", str(s.bridge)]);
  const pending = num(s.pendingRemovals) ?? 0;
  rows.push(["instances", `${str(s.instances)}${pending > 0 ? ` (${pending} removals pending)` : ""}`]);
  const c = s.cluster as { connected?: unknown; interests?: unknown } | null | undefined;
  rows.push([
    "cluster",
    c
      ? `${c.connected ? "connected" : "DISCONNECTED (retrying)"}, ${
        Array.isArray(c.interests) ? c.interests.length : 0
      } jobs of interest`
      : s.mode === "standalone"
      ? "none (standalone)"
      : "not connected",
  ]);
  const sec = s.security as
    | { mode?: unknown; certificate?: Record<string, unknown> | null; trust?: { revokedNodeIds?: unknown } }
    | null
    | undefined;
  if (sec) {
    const cert = sec.certificate;
    const revoked = Array.isArray(sec.trust?.revokedNodeIds) ? sec.trust.revokedNodeIds.length : 0;
    rows.push([
      "security",
      `${str(sec.mode)}${
        sec.mode === "off"
          ? ""
          : cert
          ? `, certificate ${str(cert.subject)} serial ${str(cert.serial)} until ${str(cert.notAfter)}`
          : ", NO certificate yet"
      }${revoked ? `, ${revoked} node(s) revoked` : ""}`,
    ]);
  }
  const rh = s.relayHost as
    | { pairs?: unknown; packets?: unknown; bytes?: unknown; restarts?: unknown }
    | null;
  if (rh) {
    // RelayCandidate: this node relays other nodes' pairs (src/path/relay_host.ts).
    const restarts = num(rh.restarts) ?? 0;
    rows.push([
      "relay",
      `${str(rh.pairs)} pair(s) relayed here, ${str(rh.packets)} datagrams ${str(rh.bytes)} B${
        restarts ? `, forwarding restarted ${restarts}×` : ""
      }`,
    ]);
  }
  rows.push(["uptime", formatDuration(num(s.uptimeSeconds) ?? NaN)]);
  const dp = s.dataPlane as Record<string, unknown> | null | undefined;
  if (!dp) rows.push(["data plane", registered ? "not running" : "not running (waiting for /register)"]);
  else if (num(dp.tunRx) === undefined) rows.push(["data plane", "starting"]);
  else {
    rows.push(["data plane", "running"]);
    rows.push([
      "packets",
      `tun rx ${dp.tunRx} tx ${dp.tunTx}, tunnel rx ${dp.udpRx} tx ${dp.udpTx}`,
    ]);
    rows.push(["flows", `${str(dp.flows)} (parked packets ${str(dp.parkedNow)})`]);
    const drops = Object.entries((dp.drops ?? {}) as Record<string, unknown>).filter(([, v]) => num(v));
    rows.push(["drops", drops.length ? drops.map(([k, v]) => `${k} ${v}`).join(", ") : "none"]);
  }
  const svcs = Array.isArray(s.services) ? s.services as ServiceRow[] : [];
  // The busiest few (all of them are in --json and the metrics).
  const busiest = [...svcs].sort((a, b) =>
    (num(b.txBytes) ?? 0) + (num(b.rxBytes) ?? 0) -
    ((num(a.txBytes) ?? 0) + (num(a.rxBytes) ?? 0))
  ).slice(0, 5);
  for (const t of busiest) {
    rows.push([
      "service",
      `${str(t.service)} ${str(t.address)}${
        t.instance !== undefined ? ` (instance ${t.instance})` : ""
      }: tx ${str(t.txPackets)} pkts ${str(t.txBytes)} B, rx ${str(t.rxPackets)} pkts ${str(t.rxBytes)} B`,
    ]);
  }
  if (svcs.length > busiest.length) rows.push(["service", `… ${svcs.length - busiest.length} more (--json)`]);
  const peers = Array.isArray(s.peers) ? s.peers as PeerRow[] : [];
  const silent = peers.filter((p) => !p.answering).length;
  const down = peers.filter((p) => p.health === "down");
  rows.push([
    "peers",
    `${peers.length}${silent ? ` (${silent} not answering HELLOs)` : ""}${
      down.length ? `, ${down.length} DOWN: ${down.map((p) => p.node ?? p.endpoint).join(", ")}` : ""
    }${peers.length ? "; see netmanager peers" : ""}`,
  ]);
  return rows.map(([k, v]) => `${k.padEnd(11)} ${v}`).join("\n");
}
