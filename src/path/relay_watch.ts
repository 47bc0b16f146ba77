/**
 * The node's side of relaying (issue 12), pure: fed the data plane's peer snapshots (about once a
 * second), it decides when to ask the control plane for a relay — a peer we dial has not answered
 * (no HELLO_ACK / PROBE_REPLY, capabilities unknown) for {@link PUNCH_DEADLINE_MS} since it was
 * added (its `ageMs`) or last answered — the data plane sends a snapshot the moment a never-answering
 * peer crosses that age, so the request leaves about 1.5 s after the first datagram to it — and when to free one — the relayed peer's own endpoint, which we keep HELLOing,
 * answered (a later punch worked). It also keeps which peer endpoints are relayed through which relay
 * endpoints, for `status` (`path`, `via`, `endpoint`).
 *
 * @example
 * ```ts
 * import { RelayWatch } from "./relay_watch.ts";
 * const w = new RelayWatch();
 * w.update([{ endpoint: "203.0.113.7:40000", capsKnown: false }], 0);
 * const asks = w.update([{ endpoint: "203.0.113.7:40000", capsKnown: false }], 3000).request;
 * console.log(asks); // ["203.0.113.7:40000"]
 * ```
 * @module
 */

/**
 * How long a dialled peer may stay silent before a relay is asked for (ms). A working punch answers
 * within about 1 s; the data plane posts its stats as soon as a peer crosses this (not on its 1 s
 * beat), so the request leaves at about 1.5 s and the relay is decided well within 3 s.
 */
export const PUNCH_DEADLINE_MS = 1500;
/**
 * An answering peer we keep sending to that sends nothing back (no data, no HELLO/PROBE answer) for
 * this long is reported silent (ms): it may have moved (roaming), the control plane has it re-check.
 */
export const SILENT_MS = 2000;
/** A request for the same endpoint is repeated at most this often (ms). */
export const REQUEST_EVERY_MS = 15_000;

/** What the watch reads of a peer snapshot (PeerStats). */
export interface WatchedPeer {
  readonly endpoint: string;
  readonly capsKnown: boolean;
  /** When (worker clock) it last answered a HELLO or PROBE; absent when never. */
  readonly lastAnswer?: number;
  /** Milliseconds since the data plane added it (first dialled it). */
  readonly ageMs?: number;
  /** Datagrams sent to it / received from it (any kind), cumulative. */
  readonly txPackets?: number;
  readonly rxPackets?: number;
}

/** What {@link RelayWatch.update} asks for. */
export interface RelayAsks {
  /** Peer endpoints to ask a relay for (punch failed). */
  readonly request: string[];
  /** Relayed peer endpoints that answered directly (free the relay). */
  readonly direct: string[];
  /** Answering peers that fell silent while we kept sending (they may have moved: roaming). */
  readonly silent: string[];
}

interface Seen {
  /** Since when (ms) it is judged: its first snapshot, or when it last answered. */
  since: number;
  answeredEver: boolean;
  lastAnswer: number | undefined;
  askedAt: number;
  tx: number;
  rx: number;
  /** Since when we send to it without hearing anything back (undefined: we heard it since). */
  unheardSince: number | undefined;
}

/** See the module. */
export class RelayWatch {
  readonly #seen = new Map<string, Seen>();
  /** Relayed peer endpoint → relay endpoint, and back. */
  readonly #via = new Map<string, string>();
  readonly #peerOf = new Map<string, string>();

  /** Feeds one snapshot at `now` (ms, any clock that moves forward). */
  update(peers: readonly WatchedPeer[], now: number): RelayAsks {
    const request: string[] = [];
    const direct: string[] = [];
    const quiet: string[] = [];
    const present = new Set<string>();
    for (const p of peers) {
      present.add(p.endpoint);
      let s = this.#seen.get(p.endpoint);
      const fresh = s === undefined;
      if (s === undefined) {
        s = {
          since: now,
          answeredEver: p.lastAnswer !== undefined,
          lastAnswer: p.lastAnswer,
          askedAt: -Infinity,
          tx: p.txPackets ?? 0,
          rx: p.rxPackets ?? 0,
          unheardSince: undefined,
        };
        this.#seen.set(p.endpoint, s);
      }
      const answered = !fresh && p.lastAnswer !== undefined && p.lastAnswer !== s.lastAnswer;
      s.lastAnswer = p.lastAnswer;
      const sent = (p.txPackets ?? 0) !== s.tx;
      const heard = answered || (p.rxPackets ?? 0) !== s.rx;
      s.tx = p.txPackets ?? 0;
      s.rx = p.rxPackets ?? 0;
      if (heard) s.unheardSince = undefined;
      else if (sent && s.unheardSince === undefined) s.unheardSince = now;
      if (this.#peerOf.has(p.endpoint)) continue; // a relay endpoint: answers come through the relay
      if (this.#via.has(p.endpoint)) {
        // Relayed, and we keep HELLOing its own endpoint: an answer there means the direct path works.
        if (answered && now - s.askedAt >= 1000) {
          s.askedAt = now;
          direct.push(p.endpoint);
        }
        continue;
      }
      if (answered || p.capsKnown) {
        s.since = now;
        s.answeredEver = true;
        if (
          s.unheardSince !== undefined && now - s.unheardSince >= SILENT_MS &&
          now - s.askedAt >= REQUEST_EVERY_MS
        ) {
          s.askedAt = now;
          quiet.push(p.endpoint);
        }
        continue;
      }
      // Never answered: silent since it was added; else since its last answer was seen.
      const silent = !s.answeredEver && p.ageMs !== undefined ? p.ageMs : now - s.since;
      if (silent >= PUNCH_DEADLINE_MS && now - s.askedAt >= REQUEST_EVERY_MS) {
        s.askedAt = now;
        request.push(p.endpoint);
      }
    }
    for (const k of this.#seen.keys()) if (!present.has(k)) this.#seen.delete(k);
    return { request, direct, silent: quiet };
  }

  /** The control plane relays `peer` through `via` (undefined: relay freed, `peer` is dialled again). */
  setRelay(peer: string, via: string | undefined): void {
    const old = this.#via.get(peer);
    if (old !== undefined) this.#peerOf.delete(old);
    if (via === undefined) {
      this.#via.delete(peer);
      this.#seen.delete(peer); // judged afresh from the next snapshot
      return;
    }
    this.#via.set(peer, via);
    this.#peerOf.set(via, peer);
  }

  /** The relay endpoint `peer` is reached through, if relayed. */
  viaOf(peer: string): string | undefined {
    return this.#via.get(peer);
  }

  /** The peer endpoint behind relay endpoint `via`, if it is one. */
  peerBehind(via: string): string | undefined {
    return this.#peerOf.get(via);
  }

  /** Every relayed peer endpoint and its relay endpoint. */
  relays(): Array<[peer: string, via: string]> {
    return [...this.#via.entries()];
  }
}

/** A `status` peer row, as far as relaying changes it. */
export interface RelayRow {
  endpoint: string;
  path?: "direct" | "punched" | "relayed";
  via?: string;
}

/**
 * `status` rows with relaying shown: the row dialled at a relay endpoint becomes `path: relayed`,
 * `via` that endpoint and `endpoint` the peer's own; the row of the peer's own endpoint (our
 * background punch towards it) is left out while relayed.
 */
export function showRelays<T extends RelayRow>(rows: readonly T[], watch: RelayWatch): T[] {
  const out: T[] = [];
  for (const r of rows) {
    if (watch.viaOf(r.endpoint) !== undefined) continue;
    const peer = watch.peerBehind(r.endpoint);
    out.push(peer === undefined ? r : { ...r, path: "relayed", via: r.endpoint, endpoint: peer });
  }
  return out;
}

/**
 * Peer snapshots with relaying marked (for metrics): the one dialled at a relay endpoint gets
 * `via` (that endpoint) and `relayFor` (the peer's own); the background punch towards a relayed
 * peer's own endpoint is left out.
 */
export function relayStats<T extends { endpoint: string }>(
  peers: readonly T[],
  watch: RelayWatch,
): Array<T & { via?: string; relayFor?: string }> {
  const out: Array<T & { via?: string; relayFor?: string }> = [];
  for (const p of peers) {
    if (watch.viaOf(p.endpoint) !== undefined) continue;
    const peer = watch.peerBehind(p.endpoint);
    out.push(peer === undefined ? p : { ...p, via: p.endpoint, relayFor: peer });
  }
  return out;
}
