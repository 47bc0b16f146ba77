/**
 * Metrics in the Prometheus text exposition format (version 0.0.4): a small typed builder,
 * {@link MetricsWriter}, and the data plane's families on top of it
 * ({@link writeDataPlaneMetrics}), rendered from plain counter objects.
 *
 * Format rules kept here: one `# HELP` and one `# TYPE` line per family, then its samples
 * together; label values escape `\`, `"` and newline (`\\`, `\"`, `\n`); HELP text escapes `\`
 * and newline; values print as decimal numbers, `+Inf`, `-Inf` or `NaN`; names are checked against
 * `[a-zA-Z_:][a-zA-Z0-9_:]*` (labels `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`); a family
 * name, or a label set within a family, may appear only once. Output ends with a newline.
 * Families and samples keep the order they were added in.
 *
 * Pure: builds a string, no I/O.
 *
 * @example
 * ```ts
 * const w = new MetricsWriter();
 * w.counter("netmanager_packets_total", "Packets by direction.")
 *   .sample(10, { direction: "tun_rx" })
 *   .sample(12, { direction: "udp_tx" });
 * w.gauge("netmanager_flows", "Active flows.").sample(3);
 * const body = w.text(); // serve as text/plain; version=0.0.4
 * ```
 * @module
 */

/** Content type of {@link MetricsWriter.text} output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A label set: label name → value, in output order. */
export type Labels = Readonly<Record<string, string>>;

/** Metric family types we emit. */
export type MetricType = "counter" | "gauge" | "untyped";

/** A metric or label name is invalid, a family is repeated, or a counter value is negative. */
export class MetricsError extends Error {
  /** Creates the error with `message` (what is wrong). */
  constructor(message: string) {
    super(message);
    this.name = "MetricsError";
  }
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * Escapes a label value: backslash, double quote and line feed.
 *
 * @example
 * ```ts
 * escapeLabelValue('a"b\\c\nd'); // 'a\\"b\\\\c\\nd'
 * ```
 */
export function escapeLabelValue(v: string): string {
  return v.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** Escapes HELP text: backslash and line feed. */
export function escapeHelp(v: string): string {
  return v.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

/**
 * Formats a sample value: `+Inf`, `-Inf`, `NaN`, else the shortest decimal JS prints (which
 * Prometheus parses, exponent forms included). `-0` prints as `0`.
 */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  if (v === 0) return "0";
  return String(v);
}

function checkLabelName(name: string): void {
  if (!LABEL_NAME.test(name) || name.startsWith("__")) throw new MetricsError(`invalid label name "${name}"`);
}

/**
 * Formats a label set as `{a="x",b="y"}`, or `""` when empty. Validates names and escapes values.
 *
 * @example
 * ```ts
 * formatLabels({ reason: "no_route" }); // '{reason="no_route"}'
 * ```
 */
export function formatLabels(labels: Labels | undefined): string {
  if (labels === undefined) return "";
  let s = "";
  for (const name in labels) {
    checkLabelName(name);
    s += `${s === "" ? "" : ","}${name}="${escapeLabelValue(labels[name])}"`;
  }
  return s === "" ? "" : `{${s}}`;
}

/** One metric family being written; add samples with {@link MetricFamily.sample}. */
export class MetricFamily {
  /** Family name. */
  readonly name: string;
  /** Family type. */
  readonly type: MetricType;
  /** HELP text (unescaped). */
  readonly help: string;
  readonly #constLabels: Labels | undefined;
  readonly #lines: string[] = [];
  readonly #seen = new Set<string>();

  /** @internal use {@link MetricsWriter.counter} / {@link MetricsWriter.gauge} */
  constructor(name: string, type: MetricType, help: string, constLabels: Labels | undefined) {
    this.name = name;
    this.type = type;
    this.help = help;
    this.#constLabels = constLabels;
  }

  /**
   * Adds a sample with `value` and `labels` (after the writer's constant labels). Throws
   * {@link MetricsError} for a repeated label set, a label clashing with a constant label, or a
   * counter value that is negative or NaN. Returns the family for chaining.
   */
  sample(value: number, labels?: Labels): this {
    if (this.type === "counter" && !(value >= 0)) {
      throw new MetricsError(`counter ${this.name} must be ≥ 0, got ${value}`);
    }
    let ls = labels;
    if (this.#constLabels !== undefined) {
      for (const k in labels) {
        if (k in this.#constLabels) {
          throw new MetricsError(`label "${k}" of ${this.name} clashes with a constant label`);
        }
      }
      ls = { ...this.#constLabels, ...labels };
    }
    const l = formatLabels(ls);
    if (this.#seen.has(l)) throw new MetricsError(`duplicate sample ${this.name}${l}`);
    this.#seen.add(l);
    this.#lines.push(`${this.name}${l} ${formatValue(value)}`);
    return this;
  }

  /** Number of samples added. */
  get size(): number {
    return this.#lines.length;
  }

  /** The family's text: HELP, TYPE and sample lines, each ending in a newline. */
  text(): string {
    let s = `# HELP ${this.name} ${escapeHelp(this.help)}\n# TYPE ${this.name} ${this.type}\n`;
    for (const line of this.#lines) s += `${line}\n`;
    return s;
  }
}

/** Options of {@link MetricsWriter}. */
export interface MetricsWriterOptions {
  /** Labels added to every sample (e.g. `{ node: workerId }`), first. */
  readonly constLabels?: Labels;
}

/** Collects metric families and renders them. See the module documentation. */
export class MetricsWriter {
  readonly #families: MetricFamily[] = [];
  readonly #names = new Set<string>();
  readonly #constLabels: Labels | undefined;

  /** Creates an empty writer; `opts.constLabels` go on every sample. */
  constructor(opts: MetricsWriterOptions = {}) {
    if (opts.constLabels !== undefined) {
      formatLabels(opts.constLabels); // validates names
      this.#constLabels = Object.keys(opts.constLabels).length > 0 ? opts.constLabels : undefined;
    }
  }

  /** Starts a counter family (name should end in `_total`). */
  counter(name: string, help: string): MetricFamily {
    return this.family(name, "counter", help);
  }

  /** Starts a gauge family. */
  gauge(name: string, help: string): MetricFamily {
    return this.family(name, "gauge", help);
  }

  /** Starts a family of any type; throws {@link MetricsError} on a bad or repeated name. */
  family(name: string, type: MetricType, help: string): MetricFamily {
    if (!METRIC_NAME.test(name)) throw new MetricsError(`invalid metric name "${name}"`);
    if (this.#names.has(name)) throw new MetricsError(`metric family "${name}" written twice`);
    this.#names.add(name);
    const f = new MetricFamily(name, type, help, this.#constLabels);
    this.#families.push(f);
    return f;
  }

  /** The exposition text of every family, in the order they were started. */
  text(): string {
    let s = "";
    for (const f of this.#families) s += f.text();
    return s;
  }
}

// ---------------------------------------------------------------------------------------------
// Data plane families

/** A packet and byte count. */
export interface PacketCount {
  /** Packets. */
  readonly packets: number;
  /** Bytes. */
  readonly bytes: number;
}

/** One peer's figures (the shape `PeerTable.stats()` returns). */
export interface PeerMetrics {
  /** Node key `"ip:port"` / `"[ip6]:port"`. */
  readonly endpoint: string;
  /** Node (worker) id, when known. */
  readonly node?: string;
  /** Smoothed RTT in ms, when known. */
  readonly rttMs?: number;
  /** FAST mode on towards this peer. */
  readonly fast: boolean;
  /** Packets sent to it. */
  readonly txPackets: number;
  /** Bytes sent to it. */
  readonly txBytes: number;
  /** Packets received from it. */
  readonly rxPackets: number;
  /** Bytes received from it. */
  readonly rxBytes: number;
  /** Packets to/from it dropped. */
  readonly drops: number;
  /** PROBEs sent. */
  readonly probesSent: number;
  /** PROBEs lost. */
  readonly probesLost: number;
}

/** The data plane's figures, summed over workers. */
export interface DataPlaneMetrics {
  /** Read from the TUN. */
  readonly tunRx: PacketCount;
  /** Written to the TUN. */
  readonly tunTx: PacketCount;
  /** Received from peers over UDP. */
  readonly udpRx: PacketCount;
  /** Sent to peers over UDP. */
  readonly udpTx: PacketCount;
  /** Dropped packets by reason (label value), in output order. */
  readonly drops: Readonly<Record<string, number>>;
  /** Packets parked now, waiting for a table answer. */
  readonly parkedPackets: number;
  /** Active flows. */
  readonly flows: number;
  /** Translation table entries. */
  readonly tableEntries: number;
  /** Peers. */
  readonly peers: readonly PeerMetrics[];
  /** JUMBO messages (whole TCP super-packets) sent and received. */
  readonly jumbo?: { readonly tx: number; readonly rx: number };
  /** Table-query results and entries the control plane refused, by cause (see control/route_check.ts). */
  readonly routesRejected?: Readonly<Record<string, number>>;
}

function peerLabels(p: PeerMetrics, extra?: Labels): Labels {
  return { ...(p.node !== undefined ? { node: p.node } : {}), endpoint: p.endpoint, ...extra };
}

/**
 * Writes the data plane's families into `w`:
 * `netmanager_packets_total` / `netmanager_bytes_total` {direction = tun_rx | tun_tx | udp_rx | udp_tx},
 * `netmanager_drops_total` {reason}, gauges `netmanager_parked_packets`, `netmanager_flows`,
 * `netmanager_table_entries`, `netmanager_peers`, and per peer {node (when known), endpoint}:
 * `netmanager_peer_rtt_seconds` (only peers with a known RTT), `netmanager_peer_fast` (0/1),
 * `netmanager_peer_packets_total` / `netmanager_peer_bytes_total` {direction = tx | rx},
 * `netmanager_peer_drops_total`, `netmanager_peer_probes_sent_total`, `netmanager_peer_probes_lost_total`.
 */
export function writeDataPlaneMetrics(w: MetricsWriter, m: DataPlaneMetrics): void {
  const dirs: [string, PacketCount][] = [
    ["tun_rx", m.tunRx],
    ["tun_tx", m.tunTx],
    ["udp_rx", m.udpRx],
    ["udp_tx", m.udpTx],
  ];
  const pk = w.counter("netmanager_packets_total", "Packets handled by the data plane, by direction.");
  for (const [d, c] of dirs) pk.sample(c.packets, { direction: d });
  const by = w.counter("netmanager_bytes_total", "Bytes handled by the data plane, by direction.");
  for (const [d, c] of dirs) by.sample(c.bytes, { direction: d });
  const dr = w.counter("netmanager_drops_total", "Packets dropped, by reason.");
  for (const reason in m.drops) dr.sample(m.drops[reason], { reason });
  if (m.jumbo) {
    const j = w.counter("netmanager_jumbo_messages_total", "TCP super-packets carried as one JUMBO message.");
    j.sample(m.jumbo.tx, { direction: "tx" });
    j.sample(m.jumbo.rx, { direction: "rx" });
  }
  if (m.routesRejected) {
    const rr = w.counter(
      "netmanager_routes_rejected_total",
      "Table-query results and entries refused before reaching the data plane, by reason.",
    );
    for (const reason in m.routesRejected) rr.sample(m.routesRejected[reason], { reason });
  }
  w.gauge("netmanager_parked_packets", "Packets parked waiting for a table answer.").sample(m.parkedPackets);
  w.gauge("netmanager_flows", "Active flows in the conversion cache.").sample(m.flows);
  w.gauge("netmanager_table_entries", "Entries in the translation table.").sample(m.tableEntries);
  w.gauge("netmanager_peers", "Known peer nodes.").sample(m.peers.length);

  const rtt = w.gauge("netmanager_peer_rtt_seconds", "Smoothed round-trip time to a peer node.");
  const fast = w.gauge("netmanager_peer_fast", "1 when FAST mode is on towards a peer node.");
  const ppk = w.counter("netmanager_peer_packets_total", "Packets exchanged with a peer node, by direction.");
  const pby = w.counter("netmanager_peer_bytes_total", "Bytes exchanged with a peer node, by direction.");
  const pdr = w.counter("netmanager_peer_drops_total", "Packets to or from a peer node that were dropped.");
  const ps = w.counter("netmanager_peer_probes_sent_total", "RTT probes sent to a peer node.");
  const pl = w.counter(
    "netmanager_peer_probes_lost_total",
    "RTT probes to a peer node that went unanswered.",
  );
  for (const p of m.peers) {
    const l = peerLabels(p);
    if (p.rttMs !== undefined) rtt.sample(p.rttMs / 1000, l);
    fast.sample(p.fast ? 1 : 0, l);
    ppk.sample(p.txPackets, peerLabels(p, { direction: "tx" }));
    ppk.sample(p.rxPackets, peerLabels(p, { direction: "rx" }));
    pby.sample(p.txBytes, peerLabels(p, { direction: "tx" }));
    pby.sample(p.rxBytes, peerLabels(p, { direction: "rx" }));
    pdr.sample(p.drops, l);
    ps.sample(p.probesSent, l);
    pl.sample(p.probesLost, l);
  }
}

/**
 * Renders the data plane's metrics as exposition text (a fresh {@link MetricsWriter} with
 * `opts`, then {@link writeDataPlaneMetrics}).
 */
export function renderDataPlaneMetrics(m: DataPlaneMetrics, opts: MetricsWriterOptions = {}): string {
  const w = new MetricsWriter(opts);
  writeDataPlaneMetrics(w, m);
  return w.text();
}
