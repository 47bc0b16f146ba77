/**
 * Tunnel peers: the other nodes' underlay endpoints (`host_ip:host_port` from the translation
 * table's node list), what we learned about them in-band (node id, capabilities, RTT) and what
 * we owe them next (HELLO, PROBE).
 *
 * **Keys.** A peer is identified by its advertised endpoint. Lookups on the receive path take the
 * datagram's source as numbers/bytes and build no strings:
 * - IPv4: the address (uint32) is the `Map` key of a bucket of peers at that address (several
 *   nodes may share an address with different ports, e.g. simulated nodes or NAT port forwards).
 * - IPv6: the key is `2^52 + ipv6Key(addr)` (a 52-bit hash from `packet.ts`, kept disjoint from
 *   IPv4 keys); colliding addresses share a bucket and every hit is confirmed by comparing the
 *   16 bytes. IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`, from a dual-stack socket) are looked up
 *   as IPv4.
 * - Off the hot path, peers are also indexed by their node key string (`"ip:port"` /
 *   `"[ip6]:port"`, canonical text, as `nodeKey` in `src/table/entry.ts` builds it).
 *
 * **Source ports.** A node may send from another port than the one it advertises (Oakestra nodes
 * send from an ephemeral port of a per-destination socket; a NAT may rewrite ports). So by
 * default ({@link PeerTableOptions.matchSourcePort} false) a datagram is accepted when its source
 * *address* is a peer's, preferring the peer whose port also matches; with `matchSourcePort: true`
 * address and port must both match. Replies to HELLO/PROBE should go to the datagram's source
 * endpoint (the path that works through NAT).
 *
 * **Schedule.** {@link PeerTable.tick} is called with the current time (ms, any monotonic origin,
 * e.g. `performance.now()`) and calls back for each HELLO or PROBE to send; it returns when it next
 * needs to run.
 * - HELLO: at once for a new peer. Unanswered after `helloTimeoutMs` → retried with exponential
 *   backoff (`helloRetryMs`, doubling, capped at `helloMaxIntervalMs`) — an old Oakestra node never
 *   answers and ends up costing one datagram every few minutes. Answered → refreshed every
 *   `helloRefreshMs`; after `helloForgetAfter` unanswered refreshes the peer's capabilities are
 *   forgotten (it may have been replaced by an old node) and FAST is switched off.
 * - PROBE: only to peers that announced {@link CAP_PROBE}, and only while RTT is wanted
 *   ({@link PeerTable.requestRtt} leases, e.g. renewed while a Closest ServiceIP has candidates on
 *   that node, or `probeAlways`). One probe outstanding at a time, every `probeIntervalMs`; a probe
 *   unanswered after `probeTimeoutMs` counts as lost; after `probeBackoffAfter` consecutive losses
 *   the interval doubles per further loss up to `probeMaxIntervalMs`.
 * - Liveness ({@link PeerTable.healthOf}): while a peer is probed, one that answers no PROBE and no
 *   HELLO (round trips only) for `downAfterMs` is marked down (cause in `downCause`); any accepted
 *   answer marks it up again and makes a HELLO due at once. Peers not probed (no CAP_PROBE: Oakestra
 *   Go nodes; or `probe: false`, a worker that reads another's results) are `unknown`.
 * - A HELLO/ACK round trip is also an RTT sample. Samples are unambiguous (Karn's rule is moot):
 *   an ACK must echo the outstanding HELLO's random nonce, a PROBE_REPLY the outstanding probe's
 *   sequence number *and* send time; anything else is stale and ignored.
 *
 * **FAST** is enabled towards a peer only while both sides announced {@link CAP_FAST}: ours in
 * `localCaps`, theirs in their last HELLO/HELLO_ACK.
 *
 * Pure: no clock, no I/O; time and nonces come in from the caller.
 *
 * @example
 * ```ts
 * import { type Peer, PeerTable } from "./peers.ts";
 * import { CAP_FAST, CAP_PROBE, encodeHello, encodeProbe } from "./wire.ts";
 * declare const nodes: string[], selfKey: string, buf: Uint8Array, hostPort: number, nodeId: string;
 * declare const srcAddr: number, srcPort: number, send: (p: Peer, len: number) => void;
 * const peers = new PeerTable({ localCaps: CAP_FAST | CAP_PROBE });
 * peers.sync(nodes.filter((k) => k !== selfKey), performance.now());
 * const wake = peers.tick(performance.now(), {
 *   hello: (p, hi, lo) => send(p, encodeHello(buf, 0, { caps: peers.localCaps, nonceHi: hi, nonceLo: lo, hostPort, nodeId })),
 *   probe: (p, seq, us) => send(p, encodeProbe(buf, 0, seq, us)),
 * });
 * // receive path
 * const peer = peers.lookup4(srcAddr, srcPort);
 * if (peer !== undefined) peer.rxPackets++;
 * ```
 * @module
 */

import { PathMtu } from "../path/pmtu.ts";
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { nodeKey } from "../table/entry.ts";
import { ipv6Equal, ipv6Key } from "./packet.ts";
import { laneHash } from "./lanes.ts";
import {
  CAP_FAST,
  CAP_JUMBO,
  CAP_KFAST,
  CAP_KTC,
  CAP_LANES,
  CAP_PROBE,
  type HelloMessage,
  MSG_HELLO,
  MSG_HELLO_ACK,
  MSG_PROBE_REPLY,
  type ProbeMessage,
} from "./wire.ts";

/** A peer endpoint or option is malformed. */
export class PeerError extends Error {
  /** Creates the error with `message` (what is wrong). */
  constructor(message: string) {
    super(message);
    this.name = "PeerError";
  }
}

// ---------------------------------------------------------------------------------------------
// RTT estimator (RFC 6298)

/** Options of {@link RttEstimator}. */
export interface RttOptions {
  /** Clock granularity G in ms (default 1). */
  readonly granularityMs?: number;
  /** Lower bound of the RTO in ms (default 1000, RFC 6298 §2.4). */
  readonly minRtoMs?: number;
  /** Upper bound of the RTO in ms (default 60000). */
  readonly maxRtoMs?: number;
}

/**
 * Smoothed RTT per RFC 6298 §2 (α = 1/8, β = 1/4, K = 4), plus minimum, sample count and the time
 * of the last sample. Times in milliseconds.
 *
 * @example
 * ```ts
 * const e = new RttEstimator({ granularityMs: 0, minRtoMs: 0 });
 * e.sample(100, 0); // srtt 100, rttvar 50, rto 300
 * e.sample(60, 1000); // rttvar 47.5, srtt 95, rto 285
 * ```
 */
export class RttEstimator {
  /** RFC 6298 α. */
  static readonly ALPHA = 1 / 8;
  /** RFC 6298 β. */
  static readonly BETA = 1 / 4;
  /** RFC 6298 K. */
  static readonly K = 4;

  /** Smoothed RTT (ms); NaN before the first sample. */
  srtt: number = NaN;
  /** RTT variation (ms); NaN before the first sample. */
  rttvar: number = NaN;
  /** Retransmission timeout (ms); 1000 (RFC 6298 §2.1) before the first sample, then clamped. */
  rto: number;
  /** Smallest sample seen (ms); Infinity before the first. */
  min: number = Infinity;
  /** Most recent sample (ms); NaN before the first. */
  last: number = NaN;
  /** Samples taken since construction or {@link reset}. */
  samples = 0;
  /** Time of the last sample (ms); -Infinity before the first. */
  lastSampleAt: number = -Infinity;

  readonly #g: number;
  readonly #minRto: number;
  readonly #maxRto: number;

  /** Creates an estimator with no samples; `opts` sets G and the RTO bounds. */
  constructor(opts: RttOptions = {}) {
    this.#g = opts.granularityMs ?? 1;
    this.#minRto = opts.minRtoMs ?? 1000;
    this.#maxRto = opts.maxRtoMs ?? 60000;
    if (!(this.#g >= 0 && this.#minRto >= 0 && this.#maxRto >= this.#minRto)) {
      throw new PeerError("RTT options: need granularity ≥ 0 and 0 ≤ minRto ≤ maxRto");
    }
    this.rto = this.#clamp(1000);
  }

  /** Adds a measurement `rttMs` taken at `nowMs`. Negative or non-finite samples are ignored (false). */
  sample(rttMs: number, nowMs: number): boolean {
    if (!(rttMs >= 0 && Number.isFinite(rttMs))) return false;
    if (this.samples === 0) {
      this.srtt = rttMs;
      this.rttvar = rttMs / 2;
    } else {
      // RTTVAR first, with the SRTT from before this sample (RFC 6298 §2.3).
      this.rttvar = (1 - RttEstimator.BETA) * this.rttvar + RttEstimator.BETA * Math.abs(this.srtt - rttMs);
      this.srtt = (1 - RttEstimator.ALPHA) * this.srtt + RttEstimator.ALPHA * rttMs;
    }
    this.rto = this.#clamp(this.srtt + Math.max(this.#g, RttEstimator.K * this.rttvar));
    if (rttMs < this.min) this.min = rttMs;
    this.last = rttMs;
    this.samples++;
    this.lastSampleAt = nowMs;
    return true;
  }

  /** Forgets every sample. */
  reset(): void {
    this.srtt = NaN;
    this.rttvar = NaN;
    this.rto = this.#clamp(1000);
    this.min = Infinity;
    this.last = NaN;
    this.samples = 0;
    this.lastSampleAt = -Infinity;
  }

  #clamp(v: number): number {
    return Math.min(this.#maxRto, Math.max(this.#minRto, v));
  }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/** An underlay endpoint parsed from text. */
export interface Endpoint {
  /** Address family. */
  readonly family: 4 | 6;
  /** IPv4 address as uint32 (0 for IPv6). */
  readonly ip4: number;
  /** IPv6 address bytes (IPv6 only). */
  readonly ip6?: Uint8Array;
  /** UDP port (1..65535). */
  readonly port: number;
  /** Canonical node key: `"ip:port"` or `"[ip6]:port"`. */
  readonly key: string;
}

function checkPort(port: number, text: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new PeerError(`invalid port in peer endpoint "${text}"`);
  }
}

/**
 * Parses an endpoint from an address and a port; the address may be IPv4 or IPv6 text.
 * Throws {@link PeerError} when malformed. IPv4-mapped IPv6 text is kept as IPv6.
 */
export function endpointOf(ip: string, port: number): Endpoint {
  checkPort(port, `${ip}:${port}`);
  const v4 = tryParseIPv4(ip);
  if (v4 !== undefined) return { family: 4, ip4: v4, port, key: nodeKey(formatIPv4(v4), port) };
  const v6 = tryParseIPv6(ip);
  if (v6 === undefined) throw new PeerError(`invalid address in peer endpoint "${ip}"`);
  return { family: 6, ip4: 0, ip6: v6, port, key: nodeKey(formatIPv6(v6), port) };
}

/**
 * Parses a node key `"a.b.c.d:port"` or `"[v6]:port"` (the form `nodeKey` produces).
 *
 * @example
 * ```ts
 * parseEndpoint("[fd00::1]:50103").port === 50103;
 * ```
 */
export function parseEndpoint(text: string): Endpoint {
  let ip: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]:");
    if (close < 0) throw new PeerError(`invalid peer endpoint "${text}" (want "[ip6]:port")`);
    ip = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0 || text.indexOf(":") !== colon) {
      throw new PeerError(`invalid peer endpoint "${text}" (want "ip:port" or "[ip6]:port")`);
    }
    ip = text.slice(0, colon);
    portText = text.slice(colon + 1);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) throw new PeerError(`invalid port in peer endpoint "${text}"`);
  return endpointOf(ip, Number(portText));
}

// ---------------------------------------------------------------------------------------------
// Peer

/**
 * One peer node. Identity fields are read-only; counters are plain numbers the engine increments
 * directly (`peer.txPackets++`); the scheduling fields are managed by {@link PeerTable} and exposed
 * read-only by convention for inspection.
 */
export class Peer {
  /** Canonical node key `"ip:port"` / `"[ip6]:port"`. */
  readonly key: string;
  /** Underlay address family. */
  readonly family: 4 | 6;
  /** IPv4 address as uint32 (0 for IPv6). */
  readonly ip4: number;
  /** IPv6 address bytes (undefined for IPv4). */
  readonly ip6: Uint8Array | undefined;
  /** Advertised tunnel port. */
  readonly port: number;
  /** Internal bucket key (see the module documentation). */
  readonly bucketKey: number;

  /** Node (worker) id from its last HELLO/HELLO_ACK; undefined until heard. */
  nodeId: string | undefined = undefined;
  /** True once a HELLO or HELLO_ACK told us its capabilities (and until they are forgotten). */
  capsKnown = false;
  /** Its capability bits (0 while unknown). */
  remoteCaps = 0;
  /** JUMBO ids to and from it are lane-tagged: both sides announced {@link CAP_LANES}. */
  lanes = false;
  /** Its wire version (0 while unknown). */
  remoteVersion = 0;
  /** Its advertised port as it announced it (0 while unknown). */
  announcedPort = 0;
  /** Send FAST datagrams to it: both sides announced {@link CAP_FAST}. */
  fast = false;
  /** Send JUMBO messages to it: both sides announced {@link CAP_FAST} and {@link CAP_JUMBO}. */
  jumbo = false;
  /** Its RTT estimator. */
  readonly rtt: RttEstimator;
  /** Time (ms) anything was last received from it; -Infinity when never. */
  lastSeen: number = -Infinity;

  /** Packets sent to it. */
  txPackets = 0;
  /** Bytes (UDP payload) sent to it. */
  txBytes = 0;
  /** Packets received from it. */
  rxPackets = 0;
  /** Bytes (UDP payload) received from it. */
  rxBytes = 0;
  /** Packets to or from it that were dropped. */
  drops = 0;

  /** HELLOs sent. */
  hellosSent = 0;
  /** Consecutive HELLOs unanswered. */
  helloFailures = 0;
  /** A HELLO is waiting for its ACK. */
  helloOutstanding = false;
  /** When the last HELLO was sent (ms). */
  helloSentAt: number = -Infinity;
  /** Nonce of the last HELLO sent (high word). */
  helloNonceHi = 0;
  /** Nonce of the last HELLO sent (low word). */
  helloNonceLo = 0;
  /** When the next HELLO is due (ms), unless one is outstanding. */
  nextHelloAt: number = -Infinity;

  /** Until when (ms) our HELLOs to it withhold {@link CAP_JUMBO}: its JUMBO messages were getting lost. */
  jumboRefusedUntil: number = -Infinity;
  /** Times we refused its JUMBO messages (the refusal doubles each time, up to 10 min). */
  jumboRefusals = 0;
  /** Our last HELLO to it withheld CAP_JUMBO (so one must announce it again when the time is up). */
  jumboWithheld = false;
  /** JUMBO messages from it completed / lost in the current one-second window. */
  jumboOk = 0;
  /** See {@link jumboOk}. */
  jumboLost = 0;
  /** Start of that window (ms). */
  jumboWindowAt: number = -Infinity;
  /** Its JUMBO message ids as we track them: the latest id in the window, once synced. */
  jumboBase = 0;
  /** A JUMBO message from it completed since the table started tracking it. */
  jumboSynced = false;
  /** When (ms) the last message with an id inside the window arrived. */
  jumboInWindowAt: number = -Infinity;
  /** A run of consecutive ids outside the window (a restarted sender), to resync on. */
  jumboCand = 0;
  /** Length of that run. */
  jumboCandRun = 0;
  /** JUMBO messages whose id was far outside the window (made up, or from a restarted sender). */
  jumboStrays = 0;
  /** JUMBO messages from it judged lost (gaps and unfinished ones inside the window). */
  jumboLostTotal = 0;
  /** Id of the next JUMBO message we send it (consecutive, so the receiver sees gaps). */
  jumboSeq: number = (Math.random() * 0x100000000) >>> 0;
  /**
   * With {@link lanes}: the next 16-bit sequence number per id stream (lane key & 7); an id is
   * `(sequence << 16) | lane key` (see {@link jumboLaneId}).
   */
  readonly jumboLaneSeqs: Uint16Array = crypto.getRandomValues(new Uint16Array(JUMBO_STREAMS));
  /** With {@link lanes}: its JUMBO ids as we track them, per stream (created on first use). */
  jumboStreams: JumboTrack[] | undefined = undefined;

  /** PROBEs sent. */
  probesSent = 0;
  /** PROBEs that timed out. */
  probesLost = 0;
  /** Consecutive PROBEs lost. */
  consecutiveLosses = 0;
  /** Replies (PROBE_REPLY, HELLO_ACK) that matched nothing outstanding. */
  staleReplies = 0;
  /** A PROBE is waiting for its reply. */
  probeOutstanding = false;
  /** Sequence number of the last PROBE sent. */
  probeSeq = 0;
  /** When the last PROBE was sent (ms). */
  probeSentAt: number = -Infinity;
  /** The wire timestamp (µs) of the last PROBE sent. */
  probeSentUs: number = NaN;
  /** When the next PROBE may be sent (ms). */
  nextProbeAt: number = -Infinity;
  /** RTT is wanted until this time (ms); see {@link PeerTable.requestRtt}. */
  rttWantedUntil: number = -Infinity;
  /** We HELLO it because the control plane asked (hole punching, src/path), not only for the table. */
  punched = false;
  /** When it was added to the table (ms): how long a punch towards it has been tried (relay_watch.ts). */
  addedAt = 0;
  /** Its path MTU, probed in-band (src/path/pmtu.ts). */
  readonly path: PathMtu = new PathMtu();

  /** Last accepted PROBE_REPLY or HELLO_ACK (a round trip: both directions work); -Infinity when never. */
  lastAnswerAt: number = -Infinity;
  /** Since when (ms) its liveness is judged: while we probe it; -Infinity when not judged (unknown). */
  watchedSince: number = -Infinity;
  /** Marked down: no answer to our probes/HELLOs for `downAfterMs` while we probed it. */
  down = false;
  /** When it was marked down or up last (ms); -Infinity when never. */
  healthChangedAt: number = -Infinity;
  /** Why it was marked down (for the log line), while down. */
  downCause = "";
  /** Times it was marked down. */
  downCount = 0;

  /**
   * Where it is reached now: its advertised endpoint, or the source of the last datagram that
   * authenticated under its secure session when that moved (roaming, NAT rebinding; see
   * {@link PeerTable.follow}). Data, HELLOs and PROBEs go here.
   */
  at: Endpoint;
  /** Times {@link at} moved. */
  endpointChanges = 0;

  /** Creates a peer for `ep` (use {@link PeerTable.add}, which also indexes it). */
  constructor(ep: Endpoint, rtt: RttOptions | undefined) {
    this.key = ep.key;
    this.family = ep.family;
    this.ip4 = ep.ip4;
    this.ip6 = ep.ip6;
    this.port = ep.port;
    this.bucketKey = ep.family === 4 ? ep.ip4 : V6_KEY_BASE + ipv6Key(ep.ip6 as Uint8Array, 0);
    this.rtt = new RttEstimator(rtt);
    this.at = ep;
  }

  /** True when IPv4 `addr:port` is where it is reached now ({@link at}). */
  isAt4(addr: number, port: number): boolean {
    const a = this.at;
    return a.family === 4 && a.ip4 === addr >>> 0 && a.port === port;
  }

  /** True when the IPv6 address at `buf[off..off+16]`, port `port`, is where it is reached now. */
  isAt6(buf: Uint8Array, off: number, port: number): boolean {
    const a = this.at;
    if (a.port !== port) return false;
    if (isV4Mapped(buf, off)) {
      const v4 = ((buf[off + 12] << 24) | (buf[off + 13] << 16) | (buf[off + 14] << 8) | buf[off + 15]) >>> 0;
      return this.isAt4(v4, port);
    }
    return a.family === 6 && ipv6Equal(a.ip6!, 0, buf, off);
  }
}

/** Bucket keys of IPv6 peers start here (IPv4 keys are < 2^32). */
const V6_KEY_BASE = 2 ** 52;

/**
 * Lane-tagged JUMBO ids (CAP_LANES) form this many sequences per peer, by `laneHash(key) & 7`: with a
 * power-of-two worker count on both nodes one sender worker makes and one receiver worker sees each,
 * so gaps in one still mean lost messages.
 */
export const JUMBO_STREAMS = 8;

/** Where a stream of JUMBO ids stands (see PeerTable.noteJumboId). */
export interface JumboTrack {
  jumboBase: number;
  jumboSynced: boolean;
  jumboInWindowAt: number;
  jumboCand: number;
  jumboCandRun: number;
}

/** The id of the next JUMBO message to `peer` for a packet with lane key `key` ({@link advanceJumboId} uses it up). */
export function jumboLaneId(peer: Peer, key: number): number {
  if (!peer.lanes) return peer.jumboSeq;
  return ((peer.jumboLaneSeqs[laneHash(key) & (JUMBO_STREAMS - 1)] << 16) | (key & 0xffff)) >>> 0;
}

/** Moves on to the next id after a JUMBO message with lane key `key` went out (consecutive: gaps show losses). */
export function advanceJumboId(peer: Peer, key: number): void {
  if (!peer.lanes) peer.jumboSeq = (peer.jumboSeq + 1) >>> 0;
  else peer.jumboLaneSeqs[laneHash(key) & (JUMBO_STREAMS - 1)]++; // (a Uint16Array wraps)
}

/** How far ahead of a peer's latest JUMBO message id an id counts (see PeerTable.noteJumboId). */
export const JUMBO_WINDOW = 64;
/** A peer's JUMBO ids may move to a new window only after this long without one in the old (ms). */
export const JUMBO_RESYNC_IDLE_MS = 2000;
/** Consecutive completed ids outside the window that make the new one. */
export const JUMBO_RESYNC_RUN = 3;

// ---------------------------------------------------------------------------------------------
// Table

/** Options of {@link PeerTable}. Times in ms. */
export interface PeerTableOptions {
  /** Our capability bits, announced in HELLO/ACK (default `CAP_FAST | CAP_PROBE`). */
  readonly localCaps?: number;
  /** Accept a datagram only when its source port equals the peer's advertised port (default false). */
  readonly matchSourcePort?: boolean;
  /** First HELLO retry interval (default 1000). */
  readonly helloRetryMs?: number;
  /** How long to wait for a HELLO_ACK (default 1000). */
  readonly helloTimeoutMs?: number;
  /** Longest interval between HELLOs to a silent peer (default 300000). */
  readonly helloMaxIntervalMs?: number;
  /** HELLO refresh interval once answered (default 30000). */
  readonly helloRefreshMs?: number;
  /** HELLO refresh towards punched peers and while {@link PeerTable.behindNat} (default 25000, ≤ the refresh). */
  readonly natKeepaliveMs?: number;
  /** Unanswered refreshes after which a peer's capabilities are forgotten (default 3). */
  readonly helloForgetAfter?: number;
  /** PROBE interval while RTT is wanted (default 1000). */
  readonly probeIntervalMs?: number;
  /** How long to wait for a PROBE_REPLY before counting a loss (default 1000). */
  readonly probeTimeoutMs?: number;
  /**
   * PROBE interval while RTT is requested ({@link PeerTable.requestRtt}: a Closest ServiceIP has
   * candidates there), so a changed path shows in the smoothed RTT within seconds (default: `probeIntervalMs`).
   */
  readonly leasedProbeIntervalMs?: number;
  /** Consecutive losses after which the probe interval starts doubling (default 3). */
  readonly probeBackoffAfter?: number;
  /** Longest probe interval under backoff (default 30000). */
  readonly probeMaxIntervalMs?: number;
  /** Probe every capable peer all the time, not only while requested (default false). */
  readonly probeAlways?: boolean;
  /** How long one {@link PeerTable.requestRtt} keeps probing (default 60000). */
  readonly rttLeaseMs?: number;
  /** {@link PeerTable.rttOf} is undefined when the last sample is older than this (default 30000). */
  readonly rttMaxAgeMs?: number;
  /** {@link PeerTable.rttOf} is undefined after this many consecutive probe losses (default 3). */
  readonly rttLossesToUnknown?: number;
  /** Source of uint32 nonces (default `crypto.getRandomValues`). */
  readonly nonce?: () => number;
  /**
   * 0..255: the last byte of every HELLO nonce and PROBE sequence number we send, so that the echoed
   * HELLO_ACK / PROBE_REPLY is steered back to this data-plane worker (see `lanes.ts`). Default none.
   */
  readonly laneTag?: number;
  /**
   * Read gaps between a peer's JUMBO ids as lost messages (default true). False when this node runs
   * several data-plane workers: each sees only the messages of its lanes.
   */
  readonly jumboGaps?: boolean;
  /** RTT estimator options. */
  readonly rtt?: RttOptions;
  /**
   * Send PROBEs at all (default true). With several data-plane workers one table probes and the
   * others read its results (`peer_health.ts`), so a peer gets one probe stream, not one per worker.
   */
  readonly probe?: boolean;
  /**
   * A peer we probe that answers no PROBE or HELLO for this long is marked down (default 3000; 0: never).
   * Peers that never announced {@link CAP_PROBE} (Oakestra's Go nodes) are never judged: unknown.
   */
  readonly downAfterMs?: number;
}

/** A peer's liveness as judged by its table: `unknown` when it is not probed (e.g. an Oakestra Go node). */
export type PeerHealthState = "up" | "down" | "unknown";

/** Callbacks of {@link PeerTable.tick}: build and send the datagram to the peer. */
export interface PeerActions {
  /** Send a HELLO carrying this nonce. */
  hello(peer: Peer, nonceHi: number, nonceLo: number): void;
  /** Send a PROBE with this sequence number and timestamp (µs). */
  probe(peer: Peer, seq: number, timestampUs: number): void;
}

/** What {@link PeerTable.sync} changed. */
export interface PeerSyncResult {
  /** Peers created. */
  readonly added: Peer[];
  /** Peers removed (their state is gone). */
  readonly removed: Peer[];
}

/** A plain snapshot of one peer, for status output and metrics. */
export interface PeerStats {
  /** Node key `"ip:port"`. */
  readonly endpoint: string;
  /** Where it is reached now, when its secure session followed it elsewhere (roaming, NAT rebinding). */
  readonly at?: string;
  /** Times this worker followed it to another endpoint. */
  readonly endpointChanges?: number;
  /** Node id, when known. */
  readonly node?: string;
  /** Smoothed RTT (ms) as {@link PeerTable.rttOf} reports it, when known and fresh. */
  readonly rttMs?: number;
  /** Smallest RTT seen (ms), when any. */
  readonly minRttMs?: number;
  /** FAST mode on. */
  readonly fast: boolean;
  /** JUMBO messages go to it (both announced CAP_JUMBO). */
  readonly jumbo: boolean;
  /** Both sides announced {@link CAP_KFAST} (or both {@link CAP_KTC}): the kernel fast path may carry flows to it. */
  readonly kfast?: boolean;
  /** Times we refused its JUMBO messages because they were getting lost. */
  readonly jumboRefusals: number;
  /** Capabilities known. */
  readonly capsKnown: boolean;
  /** Packets sent. */
  readonly txPackets: number;
  /** Bytes sent. */
  readonly txBytes: number;
  /** Packets received. */
  readonly rxPackets: number;
  /** Bytes received. */
  readonly rxBytes: number;
  /** Drops. */
  readonly drops: number;
  /** PROBEs sent. */
  readonly probesSent: number;
  /** PROBEs lost. */
  readonly probesLost: number;
  /** Outer path MTU in use towards it (bytes of an outer IP packet), and whether a probe measured it. */
  readonly mtu?: number;
  readonly mtuProbed?: boolean;
  /** Reached through a punched NAT mapping (hole punching). */
  readonly punched?: boolean;
  /** Set by the main isolate (relay_watch.ts): reached through the relay endpoint `via`; `relayFor` is the peer's own endpoint. */
  readonly via?: string;
  readonly relayFor?: string;
  /** Milliseconds since it was added (dialled first). */
  readonly ageMs?: number;
  /** When (this worker's clock, ms) it last answered a HELLO or PROBE; absent when never (relay_watch.ts). */
  readonly lastAnswer?: number;
  /** Last time anything was received (ms), when ever. */
  readonly lastSeen?: number;
  /** Liveness: up/down while probed, unknown otherwise (Oakestra Go nodes never answer probes). */
  readonly health?: PeerHealthState;
  /** While down: why (no answer for how long). */
  readonly downCause?: string;
  /** Times it was marked down. */
  readonly downCount?: number;
}

function defaultNonce(): number {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

function positive(v: number | undefined, dflt: number, name: string): number {
  const x = v ?? dflt;
  if (!(x >= 0 && x < Infinity)) throw new PeerError(`option ${name} must be a finite number ≥ 0, got ${v}`);
  return x;
}

/** The set of peers and their in-band state. See the module documentation. */
export class PeerTable {
  /** JUMBO messages judged lost, all peers (see {@link noteJumboId}). */
  jumboLost = 0;
  readonly #byKey = new Map<string, Peer>();
  readonly #buckets = new Map<number, Peer[]>();
  #localCaps: number;
  readonly #matchPort: boolean;
  readonly #helloRetry: number;
  readonly #helloTimeout: number;
  readonly #helloMax: number;
  readonly #helloRefresh: number;
  readonly #natKeepalive: number;
  /** This node is behind NAT (its observed endpoint differs): refresh every peer at the NAT keepalive. */
  behindNat = false;
  readonly #helloForget: number;
  readonly #probeInterval: number;
  readonly #probeLeased: number;
  readonly #probeTimeout: number;
  readonly #probeBackoffAfter: number;
  readonly #probeMax: number;
  readonly #probeAlways: boolean;
  readonly #rttLease: number;
  readonly #rttMaxAge: number;
  readonly #rttLosses: number;
  readonly #nonce: () => number;
  readonly #laneTag: number;
  readonly #jumboGaps: boolean;
  readonly #rttOpts: RttOptions | undefined;
  readonly #probe: boolean;
  readonly #downAfter: number;
  #now = -Infinity;
  /** Peers reached at another endpoint than their key's ({@link follow}), by that endpoint's key. */
  readonly #moved = new Map<string, Peer>();
  /** The same for IPv4: `addr · 65536 + port` → peer (no allocation on the receive path). */
  readonly #moved4 = new Map<number, Peer>();

  /** Creates an empty table; see {@link PeerTableOptions} for the defaults. */
  constructor(opts: PeerTableOptions = {}) {
    this.#localCaps = (opts.localCaps ?? (CAP_FAST | CAP_PROBE)) >>> 0;
    this.#matchPort = opts.matchSourcePort ?? false;
    this.#helloRetry = positive(opts.helloRetryMs, 1000, "helloRetryMs");
    this.#helloTimeout = positive(opts.helloTimeoutMs, 1000, "helloTimeoutMs");
    this.#helloMax = positive(opts.helloMaxIntervalMs, 300_000, "helloMaxIntervalMs");
    this.#helloRefresh = positive(opts.helloRefreshMs, 30_000, "helloRefreshMs");
    this.#natKeepalive = Math.min(
      this.#helloRefresh,
      positive(opts.natKeepaliveMs, 25_000, "natKeepaliveMs"),
    );
    this.#helloForget = Math.max(1, positive(opts.helloForgetAfter, 3, "helloForgetAfter"));
    this.#probeInterval = positive(opts.probeIntervalMs, 1000, "probeIntervalMs");
    this.#probeLeased = positive(opts.leasedProbeIntervalMs, this.#probeInterval, "leasedProbeIntervalMs");
    this.#probeTimeout = positive(opts.probeTimeoutMs, 1000, "probeTimeoutMs");
    this.#probeBackoffAfter = Math.max(1, positive(opts.probeBackoffAfter, 3, "probeBackoffAfter"));
    this.#probeMax = positive(opts.probeMaxIntervalMs, 30_000, "probeMaxIntervalMs");
    this.#probeAlways = opts.probeAlways ?? false;
    this.#rttLease = positive(opts.rttLeaseMs, 60_000, "rttLeaseMs");
    this.#rttMaxAge = positive(opts.rttMaxAgeMs, 30_000, "rttMaxAgeMs");
    this.#rttLosses = Math.max(1, positive(opts.rttLossesToUnknown, 3, "rttLossesToUnknown"));
    const nonce = opts.nonce ?? defaultNonce;
    const tag = opts.laneTag ?? -1;
    if (tag !== -1 && (!Number.isInteger(tag) || tag < 0 || tag > 255)) {
      throw new RangeError(`laneTag must be 0..255, got ${tag}`);
    }
    this.#laneTag = tag;
    this.#jumboGaps = opts.jumboGaps ?? true;
    this.#nonce = tag < 0 ? nonce : () => ((nonce() & ~0xff) | tag) >>> 0;
    this.#rttOpts = opts.rtt;
    this.#probe = opts.probe ?? true;
    this.#downAfter = positive(opts.downAfterMs, 3000, "downAfterMs");
  }

  /** Whether this table sends PROBEs (see {@link PeerTableOptions.probe}). */
  get probes(): boolean {
    return this.#probe;
  }

  /** `peer`'s liveness: `down` / `up` while it is probed and judged, else `unknown` (treated as up). */
  healthOf(peer: Peer): PeerHealthState {
    if (peer.down) return "down";
    return peer.watchedSince > -Infinity ? "up" : "unknown";
  }

  /** Our capability bits (what HELLO/ACK should announce). */
  get localCaps(): number {
    return this.#localCaps;
  }

  /** Our capabilities as announced to `peer`: without {@link CAP_JUMBO} while we refuse its JUMBO messages. */
  capsFor(peer: Peer, now: number): number {
    return now < peer.jumboRefusedUntil ? (this.#localCaps & ~CAP_JUMBO) >>> 0 : this.#localCaps;
  }

  /**
   * Counts a JUMBO message from `peer` that was completed (`ok`) or lost. When more than 0.1 % of a
   * second's messages (and at least 2) were lost, JUMBO messages from it are refused — a lost
   * datagram costs a whole 64 KB super-packet, so on a lossy path per-segment FAST datagrams serve
   * TCP better: a HELLO without CAP_JUMBO is due at once, for 60 s, doubling with every refusal up
   * to 10 min; then a HELLO offers JUMBO again. Returns true when this call started a refusal.
   */
  noteJumbo(peer: Peer, ok: boolean, now: number): boolean {
    if (now - peer.jumboWindowAt >= 1000) {
      peer.jumboWindowAt = now;
      peer.jumboOk = 0;
      peer.jumboLost = 0;
    }
    if (ok) {
      peer.jumboOk++;
      return false;
    }
    peer.jumboLost++;
    if (now < peer.jumboRefusedUntil) return false;
    if (peer.jumboLost < 2 || peer.jumboLost * 1000 <= peer.jumboOk + peer.jumboLost) return false;
    peer.jumboRefusedUntil = now + Math.min(600_000, 60_000 * 2 ** Math.min(peer.jumboRefusals, 4));
    peer.jumboRefusals++;
    peer.jumboWithheld = true;
    peer.helloOutstanding = false; // announce at once (an outstanding HELLO offered JUMBO)
    peer.nextHelloAt = now;
    return true;
  }

  /**
   * Counts JUMBO message `id` from `peer`, completed or dropped unfinished, against a window of its
   * consecutive ids, then {@link noteJumbo}. Only ids up to {@link JUMBO_WINDOW} ahead of the latest
   * count: a gap within the window is messages lost; an id behind it (reordered) counts as done; an
   * id far outside is ignored (the peer's ids start at random, so a spoofed datagram from its
   * address hits the window with odds of 64 in 2^32). A restarted peer has new ids: after
   * {@link JUMBO_RESYNC_IDLE_MS} without an id in the window, {@link JUMBO_RESYNC_RUN} consecutive
   * completed ids become the new window — without counting anything lost. Returns true when this
   * call started a refusal.
   */
  noteJumboId(peer: Peer, id: number, completed: boolean, now: number): boolean {
    id >>>= 0;
    const before = peer.jumboLostTotal;
    const refused = this.#noteJumboId(peer, id, completed, now);
    this.jumboLost += peer.jumboLostTotal - before;
    return refused;
  }

  #noteJumboId(peer: Peer, id: number, completed: boolean, now: number): boolean {
    if (peer.lanes) {
      // Lane-tagged ids: one 16-bit sequence per stream (JUMBO_STREAMS).
      const streams = peer.jumboStreams ??= Array.from({ length: JUMBO_STREAMS }, () => ({
        jumboBase: 0,
        jumboSynced: false,
        jumboInWindowAt: -Infinity,
        jumboCand: 0,
        jumboCandRun: 0,
      }));
      return this.#track(
        peer,
        streams[laneHash(id & 0xffff) & (JUMBO_STREAMS - 1)],
        id >>> 16,
        0xffff,
        completed,
        now,
      );
    }
    if (!this.#jumboGaps) {
      // Our workers each see a part of this peer's one sequence: only an incomplete message is lost.
      if (!completed) peer.jumboLostTotal++;
      return this.noteJumbo(peer, completed, now);
    }
    return this.#track(peer, peer, id, 0xffffffff, completed, now);
  }

  /** Judges id `id` of a sequence counted modulo `mask + 1` whose state is `t`. */
  #track(peer: Peer, t: JumboTrack, id: number, mask: number, completed: boolean, now: number): boolean {
    const wrap = (v: number) => mask === 0xffffffff ? v >>> 0 : v & mask;
    if (!t.jumboSynced) {
      if (!completed) return false;
      t.jumboSynced = true;
      t.jumboBase = id;
      t.jumboInWindowAt = now;
      return this.noteJumbo(peer, true, now);
    }
    const d = wrap(id - t.jumboBase);
    if (d >= 1 && d <= JUMBO_WINDOW) {
      t.jumboBase = id;
      t.jumboInWindowAt = now;
      let refused = false;
      const lost = d - 1 + (completed ? 0 : 1);
      peer.jumboLostTotal += lost;
      for (let k = 1; k < d; k++) refused = this.noteJumbo(peer, false, now) || refused;
      return this.noteJumbo(peer, completed, now) || refused;
    }
    if (d === 0 || d > mask + 1 - JUMBO_WINDOW) {
      // The latest id or a recent one (reordered): its loss was counted when the gap showed.
      if (completed) t.jumboInWindowAt = now;
      return false;
    }
    peer.jumboStrays++;
    if (!completed || now - t.jumboInWindowAt < JUMBO_RESYNC_IDLE_MS) return false;
    t.jumboCandRun = id === wrap(t.jumboCand + 1) ? t.jumboCandRun + 1 : 1;
    t.jumboCand = id;
    if (t.jumboCandRun >= JUMBO_RESYNC_RUN) {
      t.jumboBase = id;
      t.jumboInWindowAt = now;
      t.jumboCandRun = 0;
    }
    return false;
  }

  /** Number of peers. */
  get size(): number {
    return this.#byKey.size;
  }

  /** All peers, in insertion order. */
  peers(): IterableIterator<Peer> {
    return this.#byKey.values();
  }

  /**
   * Whether a peer that never answered became `deadlineMs` old in (`since`, `now`]: its punch
   * failed, the relay decision (src/path/relay_watch.ts) should not wait for the next 1 s stats.
   */
  punchStalled(since: number, now: number, deadlineMs: number): boolean {
    for (const p of this.#byKey.values()) {
      if (p.capsKnown || p.lastAnswerAt > -Infinity) continue;
      const due = p.addedAt + deadlineMs;
      if (due > since && due <= now) return true;
    }
    return false;
  }

  /**
   * Changes our capabilities (e.g. FAST off when offloads turned out unavailable): recomputes every
   * peer's FAST flag and makes a HELLO due at once so peers learn it.
   */
  setLocalCaps(caps: number, now: number): void {
    this.#localCaps = caps >>> 0;
    for (const p of this.#byKey.values()) {
      this.#updateFast(p);
      // An outstanding HELLO announced the old caps: abandon it (its ACK becomes stale) and resend.
      p.helloOutstanding = false;
      p.nextHelloAt = now;
    }
  }

  // ------------------------------------------------------------------------- membership

  /** Adds the peer at `ip:port` (HELLO due at `now`); returns the existing one when present. */
  add(ip: string, port: number, now: number): Peer {
    return this.#addEndpoint(endpointOf(ip, port), now);
  }

  /** Adds the peer named by a node key (`"ip:port"` / `"[ip6]:port"`). */
  addKey(key: string, now: number): Peer {
    return this.#addEndpoint(parseEndpoint(key), now);
  }

  #addEndpoint(ep: Endpoint, now: number): Peer {
    const have = this.#byKey.get(ep.key);
    if (have !== undefined) return have;
    const p = new Peer(ep, this.#rttOpts);
    p.nextHelloAt = now;
    p.addedAt = now;
    this.#byKey.set(p.key, p);
    const b = this.#buckets.get(p.bucketKey);
    if (b === undefined) this.#buckets.set(p.bucketKey, [p]);
    else b.push(p);
    return p;
  }

  /** Removes a peer by node key; true when it was present. */
  remove(key: string): boolean {
    const p = this.get(key);
    if (p === undefined) return false;
    this.#unfollow(p);
    this.#byKey.delete(p.key);
    const b = this.#buckets.get(p.bucketKey);
    if (b !== undefined) {
      const i = b.indexOf(p);
      if (i >= 0) b.splice(i, 1);
      if (b.length === 0) this.#buckets.delete(p.bucketKey);
    }
    return true;
  }

  /**
   * Makes the peer set equal to `keys` (node keys, e.g. the translation table's `nodes()` minus
   * this node's own): adds the new ones, removes the missing ones, keeps the state of the rest.
   * Throws {@link PeerError} on a malformed key before changing anything.
   */
  sync(keys: Iterable<string>, now: number): PeerSyncResult {
    const want = new Map<string, Endpoint>();
    for (const k of keys) {
      const ep = parseEndpoint(k);
      want.set(ep.key, ep);
    }
    const removed: Peer[] = [];
    for (const p of [...this.#byKey.values()]) {
      if (!want.has(p.key)) {
        this.remove(p.key);
        removed.push(p);
      }
    }
    const added: Peer[] = [];
    for (const ep of want.values()) {
      if (!this.#byKey.has(ep.key)) added.push(this.#addEndpoint(ep, now));
    }
    return { added, removed };
  }

  /** The peer with node key `key` (any textual form of the address), or undefined. */
  get(key: string): Peer | undefined {
    const p = this.#byKey.get(key);
    if (p !== undefined) return p;
    try {
      return this.#byKey.get(parseEndpoint(key).key);
    } catch {
      return undefined;
    }
  }

  // ------------------------------------------------------------------------- receive-path lookups

  /**
   * The peer a datagram from IPv4 `addr:port` belongs to, or undefined (drop it). Exact endpoint
   * first; without `matchSourcePort` any peer at that address (the first added). No allocation.
   */
  lookup4(addr: number, port: number): Peer | undefined {
    const b = this.#buckets.get(addr);
    if (this.#moved4.size > 0) {
      const m = this.#moved4.get((addr >>> 0) * 65536 + port);
      if (m !== undefined && (b === undefined || !b.some((p) => p.port === port))) return m;
    }
    if (b === undefined) return undefined;
    for (let i = 0; i < b.length; i++) if (b[i].port === port) return b[i];
    // The reflector's answers come from the relay's address (same host): never a relay peer's.
    if (port === this.#notPeerPort && addr === this.#notPeerAddr) return undefined;
    return this.#matchPort ? undefined : b[0];
  }

  #notPeerAddr = -1;
  #notPeerPort = -1;
  /**
   * IPv4 `addr:port` is never a peer, even where `matchSourcePort` is off and peers share its
   * address: the control plane's reflector, whose host may also be a relay (src/path/relay.ts).
   */
  setNotPeer(addr: number, port: number): void {
    this.#notPeerAddr = addr >>> 0;
    this.#notPeerPort = port;
  }

  /**
   * The peer a datagram from the IPv6 address at `buf[off..off+16]`, port `port` belongs to, or
   * undefined. IPv4-mapped addresses are looked up as IPv4. No allocation.
   */
  lookup6(buf: Uint8Array, off: number, port: number): Peer | undefined {
    if (isV4Mapped(buf, off)) {
      return this.lookup4(
        ((buf[off + 12] << 24) | (buf[off + 13] << 16) | (buf[off + 14] << 8) | buf[off + 15]) >>> 0,
        port,
      );
    }
    const b = this.#buckets.get(V6_KEY_BASE + ipv6Key(buf, off));
    if (this.#moved.size > this.#moved4.size) {
      for (const m of this.#moved.values()) {
        if (
          m.at.family === 6 && m.isAt6(buf, off, port) &&
          !b?.some((p) => p.port === port && p.ip6 !== undefined && ipv6Equal(p.ip6, 0, buf, off))
        ) return m;
      }
    }
    if (b === undefined) return undefined;
    let sameAddr: Peer | undefined;
    for (let i = 0; i < b.length; i++) {
      const p = b[i];
      if (p.ip6 === undefined || !ipv6Equal(p.ip6, 0, buf, off)) continue;
      if (p.port === port) return p;
      sameAddr ??= p;
    }
    return this.#matchPort ? undefined : sameAddr;
  }

  /**
   * `peer` is now reached at `ep` (its secure session authenticated a datagram from there: roaming,
   * a NAT rebinding). Datagrams from `ep` are then the peer's, and everything to the peer goes
   * there; `ep` equal to its key's endpoint moves it back. Returns false when nothing changed.
   *
   * @example
   * ```ts
   * import { parseEndpoint, PeerTable } from "./peers.ts";
   * const t = new PeerTable();
   * const p = t.addKey("10.0.0.1:50103", 0);
   * t.follow(p, parseEndpoint("10.0.9.9:40001"));
   * t.lookup4(0x0a000909, 40001) === p; // true
   * ```
   */
  follow(peer: Peer, ep: Endpoint): boolean {
    if (peer.at.key === ep.key || this.#byKey.get(peer.key) !== peer) return false;
    this.#unfollow(peer);
    peer.at = ep;
    peer.endpointChanges++;
    if (ep.key !== peer.key) {
      this.#moved.set(ep.key, peer);
      if (ep.family === 4) this.#moved4.set(ep.ip4 * 65536 + ep.port, peer);
    }
    return true;
  }

  #unfollow(p: Peer): void {
    const a = p.at;
    if (a.key === p.key || this.#moved.get(a.key) !== p) return;
    this.#moved.delete(a.key);
    if (a.family === 4) this.#moved4.delete(a.ip4 * 65536 + a.port);
  }

  /**
   * True when a datagram from `addr` (IPv4 uint32, or 16 IPv6 bytes at `off`) and source `port`
   * comes from a known peer (honouring `matchSourcePort`).
   *
   * @example
   * ```ts
   * import { PeerTable } from "./peers.ts";
   * import { parseIPv4, parseIPv6 } from "../addr/mod.ts";
   * declare const peers: PeerTable;
   * peers.isKnown(parseIPv4("131.1.0.2"), 50103);
   * peers.isKnown(parseIPv6("fd00::2"), 40000);
   * ```
   */
  isKnown(addr: number | Uint8Array, port: number, off = 0): boolean {
    return (typeof addr === "number" ? this.lookup4(addr, port) : this.lookup6(addr, off, port)) !==
      undefined;
  }

  // ------------------------------------------------------------------------- in-band messages

  /**
   * A HELLO arrived from `peer`: learns its id and capabilities. Returns true when the caller should
   * answer with a HELLO_ACK echoing `msg`'s nonce (always, for a HELLO; false if `msg` is an ACK).
   */
  onHello(peer: Peer, msg: HelloMessage, now: number): boolean {
    if (msg.type !== MSG_HELLO) return false;
    this.#learn(peer, msg, now);
    if (!peer.helloOutstanding) {
      // It is alive and told us its caps: no need to chase it with retries or our own refresh
      // while it keeps refreshing (it learns ours from our ACK).
      peer.helloFailures = 0;
      peer.nextHelloAt = now + this.#refreshOf(peer);
    }
    return true;
  }

  /**
   * A HELLO_ACK arrived from `peer`. Accepted (true) only when it echoes the nonce of our
   * outstanding HELLO: then capabilities are learned, the round trip is an RTT sample and the next
   * HELLO is a refresh. Otherwise counted in `staleReplies` (false).
   */
  onHelloAck(peer: Peer, msg: HelloMessage, now: number): boolean {
    if (msg.type !== MSG_HELLO_ACK) return false;
    peer.lastSeen = Math.max(peer.lastSeen, now);
    if (!peer.helloOutstanding || msg.nonceHi !== peer.helloNonceHi || msg.nonceLo !== peer.helloNonceLo) {
      peer.staleReplies++;
      return false;
    }
    peer.helloOutstanding = false;
    peer.helloFailures = 0;
    peer.nextHelloAt = now + this.#refreshOf(peer);
    this.#learn(peer, msg, now);
    peer.rtt.sample(now - peer.helloSentAt, now);
    this.#answered(peer, now);
    return true;
  }

  /**
   * A PROBE_REPLY arrived from `peer`. Accepted (true) only when it echoes the outstanding probe's
   * sequence number and send time; then the RTT (now − send time) is sampled and losses reset.
   * (Answering a peer's PROBE needs no state: echo it with `probeToReplyInPlace`.)
   */
  onProbeReply(peer: Peer, msg: ProbeMessage, now: number): boolean {
    if (msg.type !== MSG_PROBE_REPLY) return false;
    peer.lastSeen = Math.max(peer.lastSeen, now);
    if (
      !peer.probeOutstanding || msg.seq !== peer.probeSeq || msg.timestampUs !== peer.probeSentUs
    ) {
      peer.staleReplies++;
      return false;
    }
    peer.probeOutstanding = false;
    peer.consecutiveLosses = 0;
    peer.nextProbeAt = peer.probeSentAt + this.#intervalOf(peer, now);
    peer.rtt.sample(now - peer.probeSentAt, now);
    this.#answered(peer, now);
    return true;
  }

  /** A round trip with `peer` completed: it is alive (up again when it was down). */
  #answered(peer: Peer, now: number): void {
    peer.lastAnswerAt = now;
    if (peer.down) {
      peer.down = false;
      peer.downCause = "";
      peer.healthChangedAt = now;
      // Its HELLOs may have backed off (or its caps been forgotten) while it was down: ask now.
      peer.helloFailures = 0;
      peer.helloOutstanding = false;
      peer.nextHelloAt = now;
    }
  }

  /** Records that something (data or control) arrived from `peer`: `bytes` of UDP payload at `now`. */
  noteRx(peer: Peer, bytes: number, now: number, datagrams = 1): void {
    peer.rxPackets += datagrams;
    peer.rxBytes += bytes;
    if (now > peer.lastSeen) peer.lastSeen = now;
  }

  /** Records a datagram of `bytes` sent to `peer`. */
  noteTx(peer: Peer, bytes: number): void {
    peer.txPackets++;
    peer.txBytes += bytes;
  }

  #learn(peer: Peer, msg: HelloMessage, now: number): void {
    const id = msg.nodeId === "" ? undefined : msg.nodeId;
    if (peer.nodeId !== undefined && id !== undefined && id !== peer.nodeId) {
      // Another node now answers at this endpoint: its RTT history is not ours to keep.
      peer.rtt.reset();
      peer.probeOutstanding = false;
      peer.consecutiveLosses = 0;
    }
    if (id !== undefined) peer.nodeId = id;
    peer.remoteCaps = msg.caps >>> 0;
    peer.remoteVersion = msg.version;
    peer.announcedPort = msg.hostPort;
    peer.capsKnown = true;
    if (now > peer.lastSeen) peer.lastSeen = now;
    this.#updateFast(peer);
  }

  #updateFast(p: Peer): void {
    p.fast = p.capsKnown && (this.#localCaps & p.remoteCaps & CAP_FAST) !== 0;
    p.jumbo = p.fast && (this.#localCaps & p.remoteCaps & CAP_JUMBO) !== 0;
    p.lanes = p.jumbo && (this.#localCaps & p.remoteCaps & CAP_LANES) !== 0;
  }

  // ------------------------------------------------------------------------- RTT

  /**
   * Keeps RTT measurement to `peer` going until `now + rttLeaseMs` (call again to renew), e.g. while
   * a Closest ServiceIP has candidates on that node.
   */
  requestRtt(peer: Peer, now: number): void {
    const until = now + this.#rttLease;
    if (until > peer.rttWantedUntil) peer.rttWantedUntil = until;
  }

  /**
   * The smoothed RTT (ms) to `peer`, or undefined when unknown: no sample yet, the last one older
   * than `rttMaxAgeMs` (against `now`, default the time of the last {@link tick}), or the last
   * `rttLossesToUnknown` probes all lost.
   */
  rttOf(peer: Peer, now: number = this.#now): number | undefined {
    const e = peer.rtt;
    if (e.samples === 0 || peer.consecutiveLosses >= this.#rttLosses) return undefined;
    if (now - e.lastSampleAt > this.#rttMaxAge) return undefined;
    return e.srtt;
  }

  /**
   * {@link rttOf} by canonical node key (the shape `BalancerOptions.rttOf` takes; table keys are
   * canonical). One `Map` lookup, no parsing.
   */
  rttOfNode(key: string, now: number = this.#now): number | undefined {
    const p = this.#byKey.get(key);
    return p === undefined ? undefined : this.rttOf(p, now);
  }

  // ------------------------------------------------------------------------- schedule

  /** The probe interval of `p`: shorter while its RTT is requested (a Closest choice depends on it). */
  #intervalOf(p: Peer, now: number): number {
    return now < p.rttWantedUntil ? Math.min(this.#probeLeased, this.#probeInterval) : this.#probeInterval;
  }

  #probeGap(p: Peer, now: number): number {
    const losses = p.consecutiveLosses;
    const base = this.#intervalOf(p, now);
    if (losses < this.#probeBackoffAfter) return base;
    const exp = Math.min(30, losses - this.#probeBackoffAfter + 1);
    return Math.min(Math.max(base, this.#probeMax), base * 2 ** exp);
  }

  /** HELLO refresh towards `peer`: the NAT keepalive through a punched mapping or from behind NAT. */
  #refreshOf(peer: Peer): number {
    return peer.punched || this.behindNat ? this.#natKeepalive : this.#helloRefresh;
  }

  #helloGap(failures: number, peer: Peer): number {
    if (failures <= 0) return this.#refreshOf(peer);
    return Math.min(this.#helloMax, this.#helloRetry * 2 ** Math.min(30, failures - 1));
  }

  #wantsProbe(p: Peer, now: number): boolean {
    // A peer once judged keeps being probed while down even if its caps were forgotten meanwhile.
    if (p.down) return this.#probe;
    return this.#probe && p.capsKnown && (p.remoteCaps & this.#localCaps & CAP_PROBE) !== 0 &&
      (this.#probeAlways || now < p.rttWantedUntil);
  }

  /**
   * Runs the schedule at `now`: expires unanswered HELLOs and PROBEs (a lost probe counts in
   * `probesLost`), then calls `out.hello` / `out.probe` for each message due. Returns the time
   * (ms) at which it next has something to do (Infinity when nothing is pending).
   */
  tick(now: number, out: PeerActions): number {
    if (now > this.#now) this.#now = now;
    let next = Infinity;
    for (const p of this.#byKey.values()) {
      // HELLO
      if (p.helloOutstanding && now >= p.helloSentAt + this.#helloTimeout) {
        p.helloOutstanding = false;
        p.helloFailures++;
        if (p.capsKnown && p.helloFailures >= this.#helloForget) {
          p.capsKnown = false;
          p.remoteCaps = 0;
          this.#updateFast(p);
        }
        p.nextHelloAt = p.helloSentAt + Math.max(this.#helloTimeout, this.#helloGap(p.helloFailures, p));
      }
      if (p.jumboWithheld && now >= p.jumboRefusedUntil) {
        p.jumboWithheld = false; // the refusal is over: offer JUMBO again
        p.helloOutstanding = false;
        p.nextHelloAt = now;
      }
      if (!p.helloOutstanding && now >= p.nextHelloAt) {
        p.helloOutstanding = true;
        p.helloSentAt = now;
        p.helloNonceHi = this.#nonce() >>> 0;
        p.helloNonceLo = this.#nonce() >>> 0;
        p.hellosSent++;
        out.hello(p, p.helloNonceHi, p.helloNonceLo);
      }
      next = Math.min(next, p.helloOutstanding ? p.helloSentAt + this.#helloTimeout : p.nextHelloAt);

      // PROBE
      if (p.probeOutstanding && now >= p.probeSentAt + this.#probeTimeout) {
        p.probeOutstanding = false;
        p.probesLost++;
        p.consecutiveLosses++;
        p.nextProbeAt = p.probeSentAt + Math.max(this.#probeTimeout, this.#probeGap(p, now));
      }
      const wanted = this.#wantsProbe(p, now);
      if (!wanted && !p.probeOutstanding) {
        // Not probed: its liveness is not judged (unknown, taken as up).
        p.watchedSince = -Infinity;
        p.down = false;
      } else if (this.#downAfter > 0) {
        if (p.watchedSince === -Infinity) p.watchedSince = now;
        const silent = now - Math.max(p.lastAnswerAt, p.watchedSince);
        if (!p.down && silent >= this.#downAfter) {
          p.down = true;
          p.downCount++;
          p.healthChangedAt = now;
          p.downCause = `no answer to ${p.consecutiveLosses} probe(s) and HELLOs for ${
            Math.round(silent)
          } ms`;
        } else if (!p.down) {
          next = Math.min(next, Math.max(p.lastAnswerAt, p.watchedSince) + this.#downAfter);
        }
      }
      if (p.probeOutstanding) {
        next = Math.min(next, p.probeSentAt + this.#probeTimeout);
      } else if (wanted) {
        if (now >= p.nextProbeAt) {
          p.probeOutstanding = true;
          p.probeSeq = this.#laneTag < 0
            ? (p.probeSeq + 1) >>> 0
            : ((((p.probeSeq >>> 8) + 1) << 8) | this.#laneTag) >>> 0;
          p.probeSentAt = now;
          p.probeSentUs = now * 1000;
          p.probesSent++;
          out.probe(p, p.probeSeq, p.probeSentUs);
          next = Math.min(next, now + this.#probeTimeout);
        } else {
          next = Math.min(next, p.nextProbeAt);
        }
      }
    }
    return next;
  }

  // ------------------------------------------------------------------------- inspection

  /** A plain snapshot of every peer (for `status` and metrics), RTT judged at `now`. */
  stats(now: number = this.#now): PeerStats[] {
    const out: PeerStats[] = [];
    for (const p of this.#byKey.values()) {
      const rtt = this.rttOf(p, now);
      out.push({
        endpoint: p.key,
        ...(p.at.key !== p.key ? { at: p.at.key } : {}),
        ...(p.endpointChanges > 0 ? { endpointChanges: p.endpointChanges } : {}),
        ...(p.nodeId !== undefined ? { node: p.nodeId } : {}),
        ...(rtt !== undefined ? { rttMs: rtt } : {}),
        ...(p.rtt.samples > 0 ? { minRttMs: p.rtt.min } : {}),
        fast: p.fast,
        jumbo: p.jumbo,
        ...(p.capsKnown && (this.#localCaps & p.remoteCaps & (CAP_KFAST | CAP_KTC)) !== 0
          ? { kfast: true }
          : {}),
        jumboRefusals: p.jumboRefusals,
        capsKnown: p.capsKnown,
        txPackets: p.txPackets,
        txBytes: p.txBytes,
        rxPackets: p.rxPackets,
        rxBytes: p.rxBytes,
        drops: p.drops,
        probesSent: p.probesSent,
        probesLost: p.probesLost,
        mtu: p.path.mtu,
        mtuProbed: p.path.probed,
        ...(p.punched ? { punched: true } : {}),
        ...(p.lastAnswerAt > -Infinity ? { lastAnswer: p.lastAnswerAt } : {}),
        ageMs: Math.max(0, now - p.addedAt),
        ...(p.lastSeen > -Infinity ? { lastSeen: p.lastSeen } : {}),
        health: this.healthOf(p),
        ...(p.down ? { downCause: p.downCause } : {}),
        downCount: p.downCount,
      });
    }
    return out;
  }
}

function isV4Mapped(buf: Uint8Array, off: number): boolean {
  for (let i = 0; i < 10; i++) if (buf[off + i] !== 0) return false;
  return buf[off + 10] === 0xff && buf[off + 11] === 0xff;
}
