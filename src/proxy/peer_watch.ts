/**
 * Watches the peer snapshots the data-plane Worker reports (about once a second) and turns changes
 * into events an operator cares about: a peer that stops answering HELLOs (its capabilities are
 * forgotten, traffic falls back to raw mode), one that answers again, and wire-mode changes
 * (raw / fast / jumbo), and liveness: a probed peer marked down (with the cause) or up again — each
 * logged once per change. It also keeps, per peer, the wall-clock time its `lastSeen` last moved, so
 * `status` and `peers` can print "last seen 3s ago" (the Worker's clock is not this thread's).
 *
 * Pure: no I/O; the caller logs the events.
 *
 * @example
 * ```ts
 * const w = new PeerWatch();
 * const events = w.update([], Date.now()); // [] at first
 * ```
 * @module
 */
import type { PeerStats } from "./peers.ts";

/** How traffic to a peer is framed. */
export type WireMode = "raw" | "fast" | "jumbo";

/** The wire mode a snapshot shows. */
export function wireModeOf(p: Pick<PeerStats, "fast" | "jumbo">): WireMode {
  return p.jumbo ? "jumbo" : p.fast ? "fast" : "raw";
}

/** Something about a peer worth a log line. */
export type PeerEvent =
  | { kind: "silent"; endpoint: string; node?: string; lastSeenAgoMs?: number; mode: WireMode }
  | { kind: "back"; endpoint: string; node?: string; silentForMs: number; mode: WireMode }
  | { kind: "mode"; endpoint: string; node?: string; from: WireMode; to: WireMode }
  | { kind: "down"; endpoint: string; node?: string; cause: string }
  | { kind: "up"; endpoint: string; node?: string; downForMs: number };

/** A peer as `status` / `peers` show it. */
export interface PeerView {
  /** Node (worker) id, when known. */
  node?: string;
  /** `ip:port`. */
  endpoint: string;
  /** Current wire mode. */
  mode: WireMode;
  /** Answered our HELLOs (speaks netmanager's in-band protocol; an Oakestra Go node never does). */
  answering: boolean;
  /** Smoothed RTT (ms), when known. */
  rttMs?: number;
  /** Seconds since anything arrived from it, when ever. */
  lastSeenAgoS?: number;
  /** Packets to/from it dropped. */
  drops: number;
  /** Packets sent / received. */
  txPackets: number;
  rxPackets: number;
  /** RTT probes sent / lost. */
  probesSent: number;
  probesLost: number;
  /**
   * Liveness: `up` / `down` while probed; `unknown` for a peer that does not answer probes (an
   * Oakestra Go node): new flows still go to it (treated as up).
   */
  health?: "up" | "down" | "unknown";
  /** While down: why, and for how many seconds. */
  downCause?: string;
  downForS?: number;
  /**
   * How it is reached (issue 12): `direct`, `punched` (through a NAT mapping opened on the control
   * plane's request) or `relayed` (through the relay endpoint `via`; `endpoint` is then the peer's
   * own, the row's dialled key is `via`).
   */
  path?: "direct" | "punched" | "relayed";
  via?: string;
  /** Outer path MTU in use towards it, and whether an in-band probe measured it (src/path/pmtu.ts). */
  mtu?: number;
  mtuProbed?: boolean;
}

interface Seen {
  caps: boolean;
  everCaps: boolean;
  mode: WireMode;
  lastSeen?: number;
  /** Wall-clock ms when lastSeen last moved. */
  lastSeenWall?: number;
  silentSince?: number;
  down: boolean;
  /** Wall-clock ms when it was seen down. */
  downSince?: number;
}

/** See the module documentation. */
export class PeerWatch {
  readonly #seen = new Map<string, Seen>();
  #last: readonly PeerStats[] = [];
  #lastWall = 0;

  /** Feeds a snapshot taken at wall-clock `nowMs`; returns the events since the previous one. */
  update(peers: readonly PeerStats[], nowMs: number): PeerEvent[] {
    const events: PeerEvent[] = [];
    const present = new Set<string>();
    for (const p of peers) {
      present.add(p.endpoint);
      const mode = wireModeOf(p);
      const s = this.#seen.get(p.endpoint);
      const id = p.node !== undefined ? { node: p.node } : {};
      if (!s) {
        this.#seen.set(p.endpoint, {
          caps: p.capsKnown,
          everCaps: p.capsKnown,
          mode,
          lastSeen: p.lastSeen,
          lastSeenWall: p.lastSeen !== undefined ? nowMs : undefined,
          down: p.health === "down",
          ...(p.health === "down" ? { downSince: nowMs } : {}),
        });
        if (mode !== "raw") events.push({ kind: "mode", endpoint: p.endpoint, ...id, from: "raw", to: mode });
        if (p.health === "down") {
          events.push({ kind: "down", endpoint: p.endpoint, ...id, cause: p.downCause ?? "" });
        }
        continue;
      }
      if (!s.down && p.health === "down") {
        s.down = true;
        s.downSince = nowMs;
        events.push({ kind: "down", endpoint: p.endpoint, ...id, cause: p.downCause ?? "no answer" });
      } else if (s.down && p.health !== "down") {
        s.down = false;
        events.push({ kind: "up", endpoint: p.endpoint, ...id, downForMs: nowMs - (s.downSince ?? nowMs) });
        s.downSince = undefined;
      }
      if (p.lastSeen !== undefined && p.lastSeen !== s.lastSeen) {
        s.lastSeen = p.lastSeen;
        s.lastSeenWall = nowMs;
      }
      if (s.caps && !p.capsKnown) {
        s.silentSince = nowMs;
        events.push({
          kind: "silent",
          endpoint: p.endpoint,
          ...id,
          ...(s.lastSeenWall !== undefined ? { lastSeenAgoMs: nowMs - s.lastSeenWall } : {}),
          mode,
        });
      } else if (!s.caps && p.capsKnown && s.everCaps) {
        events.push({
          kind: "back",
          endpoint: p.endpoint,
          ...id,
          silentForMs: s.silentSince !== undefined ? nowMs - s.silentSince : 0,
          mode,
        });
        s.silentSince = undefined;
      }
      if (mode !== s.mode) events.push({ kind: "mode", endpoint: p.endpoint, ...id, from: s.mode, to: mode });
      s.caps = p.capsKnown;
      s.everCaps ||= p.capsKnown;
      s.mode = mode;
    }
    for (const k of this.#seen.keys()) if (!present.has(k)) this.#seen.delete(k);
    this.#last = peers;
    this.#lastWall = nowMs;
    return events;
  }

  /** The latest snapshot as rows for `status` / `peers`, ages judged at wall-clock `nowMs`. */
  view(nowMs: number = this.#lastWall): PeerView[] {
    return this.#last.map((p) => {
      const s = this.#seen.get(p.endpoint);
      const at = s?.lastSeenWall;
      return {
        ...(p.node !== undefined ? { node: p.node } : {}),
        endpoint: p.endpoint,
        mode: wireModeOf(p),
        answering: p.capsKnown,
        ...(p.rttMs !== undefined ? { rttMs: p.rttMs } : {}),
        ...(at !== undefined ? { lastSeenAgoS: Math.max(0, Math.round((nowMs - at) / 1000)) } : {}),
        drops: p.drops,
        txPackets: p.txPackets,
        rxPackets: p.rxPackets,
        probesSent: p.probesSent,
        probesLost: p.probesLost,
        health: p.health ?? "unknown",
        ...(p.health === "down" && p.downCause !== undefined ? { downCause: p.downCause } : {}),
        ...(p.health === "down" && s?.downSince !== undefined
          ? { downForS: Math.max(0, Math.round((nowMs - s.downSince) / 1000)) }
          : {}),
        path: p.punched ? "punched" : "direct",
        ...(p.mtu !== undefined ? { mtu: p.mtu, mtuProbed: p.mtuProbed === true } : {}),
      };
    });
  }
}
