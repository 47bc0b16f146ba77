/**
 * The node → control-plane report (netmanager nodes only; an Oakestra Go node never sends one): every
 * {@link REPORT_INTERVAL_MS} a node publishes its version, endpoint and, per peer node, the RTT its
 * in-band PROBEs measured and the packets exchanged, on `nodes/<id>/netmanager/report` (QoS 0: a lost
 * report is replaced by the next). The topic is outside `nodes/<id>/net/`, so an Oakestra cluster
 * manager never sees it; the embedded broker's ACL lets a node publish there (below `nodes/<id>/`).
 *
 * The control plane checks each report before keeping it ({@link ReportStore.accept}, pure): at most
 * {@link MAX_REPORT_BYTES} bytes, valid JSON matching {@link NodeReportSchema} (at most
 * {@link MAX_REPORT_PEERS} peers, strings bounded), from a registered node, at most one per
 * {@link MIN_REPORT_GAP_MS} per node. Only the latest report of each registered node is kept (in memory).
 *
 * @example
 * ```ts
 * const store = new ReportStore();
 * const r = store.accept("w1", '{"v":1,"version":"1.0","endpoint":"192.0.2.1:50103","peers":[]}', 1000, () => true);
 * r.ok; // true
 * store.get("w1")?.report.endpoint; // "192.0.2.1:50103"
 * ```
 */
import { z } from "zod";
import { WORKER_ID, zodProblems } from "./schemas.ts";

export { MAX_REPORT_PEERS, REPORT_INTERVAL_MS, REPORT_TOPIC_FILTER, reportTopic } from "../control/report.ts";
import { MAX_REPORT_PEERS, MAX_REPORT_SERVICES } from "../control/report.ts";
/** Largest report accepted (bytes, before parsing). */
export const MAX_REPORT_BYTES = 64 * 1024;
/** Reports of one node closer together than this are dropped (a node sends one per 5 s). */
export const MIN_REPORT_GAP_MS = 1000;

const REPORT_TOPIC = /^nodes\/([^/]+)\/netmanager\/report$/;

/**
 * The worker id of a report topic, or undefined when `topic` is no report topic.
 *
 * @example
 * ```ts
 * workerOfReportTopic("nodes/w1/netmanager/report"); // "w1"
 * ```
 */
export function workerOfReportTopic(topic: string): string | undefined {
  const m = REPORT_TOPIC.exec(topic);
  return m && WORKER_ID.test(m[1]) ? m[1] : undefined;
}

const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const text = (max: number) => z.string().max(max);

/** One peer as a node reports it. */
export const ReportPeerSchema = z.object({
  /** The peer's worker id, when it told us (HELLO). */
  node: text(128).optional(),
  /** `ip:port` of the peer's tunnel. */
  endpoint: text(64),
  /** Wire mode (raw, fast, jumbo, …). */
  mode: text(32),
  /** Answers HELLOs (a netmanager node). */
  answering: z.boolean(),
  rtt_ms: z.number().min(0).max(600_000).optional(),
  last_seen_s: count.optional(),
  tx_packets: count,
  rx_packets: count,
  drops: count,
  probes_sent: count,
  probes_lost: count,
});

/** One ServiceIP / InstanceIP's traffic as a node reports it (what its local instances sent and got). */
export const ReportServiceSchema = z.object({
  /** Job name (from the node's table). */
  service: text(256),
  address: text(64),
  kind: text(16),
  instance: count.optional(),
  tx_packets: count,
  tx_bytes: count,
  rx_packets: count,
  rx_bytes: count,
});

/** A node's report (version 1). Unknown keys are dropped. */
export const NodeReportSchema = z.object({
  v: z.literal(1),
  version: text(64),
  /** The node's tunnel endpoint `ip:port`. */
  endpoint: text(64),
  instances: count.optional(),
  uptime_s: count.optional(),
  peers: z.array(ReportPeerSchema).max(MAX_REPORT_PEERS),
  /** Traffic per ServiceIP (absent from nodes before it was added). */
  services: z.array(ReportServiceSchema).max(MAX_REPORT_SERVICES).optional(),
});

/** A peer in a report. */
export type ReportPeer = z.infer<typeof ReportPeerSchema>;
/** A ServiceIP's traffic in a report. */
export type ReportService = z.infer<typeof ReportServiceSchema>;
/** A node's report. */
export type NodeReport = z.infer<typeof NodeReportSchema>;

/** Why a report was dropped. */
export type ReportRefusal = "too_large" | "not_json" | "invalid" | "unknown_node" | "too_often";

/** The outcome of {@link ReportStore.accept}. */
export type ReportOutcome = { ok: true } | { ok: false; reason: ReportRefusal; problem: string };

const decoder = new TextDecoder("utf-8", { fatal: true });

/** The latest report of each node, checked and bounded. */
export class ReportStore {
  readonly #latest = new Map<string, { at: number; report: NodeReport }>();
  /** Refusals by cause (for logs and tests). */
  readonly refused: Record<ReportRefusal, number> = {
    too_large: 0,
    not_json: 0,
    invalid: 0,
    unknown_node: 0,
    too_often: 0,
  };

  /**
   * Checks and keeps the report of `worker` received at `now` (ms). `known(worker)` says whether the
   * worker is a registered node; reports of others are dropped (so the store holds at most one
   * report per registered node). Never throws.
   */
  accept(
    worker: string,
    payload: Uint8Array | string,
    now: number,
    known: (worker: string) => boolean,
  ): ReportOutcome {
    const refuse = (reason: ReportRefusal, problem: string): ReportOutcome => {
      this.refused[reason]++;
      return { ok: false, reason, problem };
    };
    const size = typeof payload === "string" ? payload.length : payload.byteLength;
    if (size > MAX_REPORT_BYTES) return refuse("too_large", `${size} bytes > ${MAX_REPORT_BYTES}`);
    if (!WORKER_ID.test(worker) || !known(worker)) return refuse("unknown_node", `no node "${worker}"`);
    const last = this.#latest.get(worker);
    if (last && now - last.at < MIN_REPORT_GAP_MS) {
      return refuse("too_often", `${now - last.at} ms after the previous one`);
    }
    let value: unknown;
    try {
      value = JSON.parse(typeof payload === "string" ? payload : decoder.decode(payload));
    } catch (e) {
      return refuse("not_json", (e as Error).message);
    }
    const r = NodeReportSchema.safeParse(value);
    if (!r.success) return refuse("invalid", zodProblems(r.error));
    this.#latest.set(worker, { at: now, report: r.data });
    return { ok: true };
  }

  /** The latest report of `worker` and when it arrived (ms). */
  get(worker: string): { at: number; report: NodeReport } | undefined {
    return this.#latest.get(worker);
  }

  /** Drops the reports of workers that are no longer registered. */
  prune(known: (worker: string) => boolean): void {
    for (const w of [...this.#latest.keys()]) if (!known(w)) this.#latest.delete(w);
  }
}
