/**
 * The node's handshakes in the data-plane worker that owns the tunnel socket (issue 11: a handshake
 * ≤ 5 ms). Handshake datagrams (0x16..0x18) are steered to that worker (lanes.ts); running the Noise
 * handshake there, with the node's static key, the trust anchor and the cookie secrets the main
 * isolate hands it ({@link HsSetup}), spares each handshake message the hop to the main isolate and
 * back, and a busy main event loop. Keys are installed here at once; the main isolate learns the
 * result ({@link HsUp}: peer, certificate, timing) asynchronously and hands the keys to the other
 * workers. It stays the scheduler: it asks for handshakes (`secure-initiate`: backoff, rekeys,
 * revocations) and rotates the cookie secrets.
 *
 * Handshake datagrams are queued by the secure layer while the bind drains ({@link queue}, bounded)
 * and handled after it ({@link drain}), so replies never go out in the middle of a receive batch.
 * Floods: the layer's forwarding budget, mac1 (one hash) and, under load, mac2 with the node's shared
 * cookie secrets (handshake.ts) keep a stranger's INIT from costing DH work here.
 *
 * @example
 * ```ts
 * import { HandshakeHost } from "./hs_host.ts";
 * const host = new HandshakeHost({
 *   lane: 0,
 *   send: (endpoint, bytes) => console.log("to", endpoint, bytes.length),
 *   post: (m) => console.log(m.type),
 *   install: () => {},
 *   blocked: () => false,
 * });
 * host.initiate("192.168.1.2:50103", 0); // nothing: no setup yet
 * console.log(host.ready); // false
 * ```
 * @module
 */
import { Handshaker, RETRY_MS, SOON_RETRY_MS, warmUp } from "./handshake.ts";
import { isCookieReply } from "./cookie.ts";
import { hasMac2, isHsInit } from "./cookie_wire.ts";
import { KeyRing, newSendCounters, type SessionKeys } from "./keys.ts";
import { MSG_HS_INIT, MSG_HS_RESP } from "../proxy/wire.ts";
import type { HsDown, HsPhase, HsSetup, HsUp } from "./hs_messages.ts";
import { flushTrace, trace, traceAs, tracing } from "./hs_trace.ts";

/** Handshake datagrams queued in one receive batch at most (the layer's budget bounds them per second). */
export const HS_QUEUE_MAX = 256;
/**
 * Replies to this worker's handshakes in progress queued at most (they passed {@link HandshakeHost.expects},
 * so a flood cannot fill this): handled before the INITs.
 */
export const REPLY_QUEUE_MAX = 64;
/** Room of the INIT queue only INITs with a mac2 (a cookie's proof) may take. */
const MAC2_ROOM = 32;
/** Handshake datagrams handled per {@link HandshakeHost.drain} at most (~0.1–1 ms each). */
export const DRAIN_MAX = 16;
/** Warm-up handshakes when a credential loads: V8 optimizes the crypto paths after several runs. */
const WARM_ROUNDS = 20;
/**
 * Warm-up handshakes after those, {@link LATE_WARM_PER_TICK} per {@link HandshakeHost.tick} (100 ms)
 * while no handshake waits: a handshake step after 20 rounds took ~0.7–0.8 ms, after 100 ~0.55, after
 * 300 ~0.45 (in process, 20 ms apart) — ~0.5 ms less on a rekey's path for ~3 ms of CPU a tick for
 * 6 s. Two nodes in namespaces, 16 API rekeys 7 s after the sessions came up, 3 interleaved runs each
 * at load 4–5.5: median 3.48/3.28/5.57 ms with these rounds, 6.52/6.07/6.19 without (min 1.9–2.5 vs
 * 2.6–3.6); earlier, 150 rounds one a tick, rekeys 1.5 s after: 4.37/4.42/3.79 vs 8.7/3.88/7.27 ms.
 */
export const LATE_WARM_ROUNDS = 120;
/** Late warm-up rounds per tick (~1–1.5 ms each). */
export const LATE_WARM_PER_TICK = 2;
const MAX_PEERS = 4096;
/** An open handshake attempt with a peer older than this counts as given up (its time starts anew). */
const ATTEMPT_MAX_MS = 60_000;

/** Options of a {@link HandshakeHost}. */
export interface HandshakeHostOptions {
  /** The worker's lane (named in its drop reports). */
  lane: number;
  /** Sends a handshake datagram to an endpoint key (`ip:port`) from the worker's socket. */
  send: (endpoint: string, bytes: Uint8Array) => void;
  /** Posts to the main isolate. */
  post: (m: HsUp) => void;
  /** Installs a session's keys in this worker. */
  install: (keys: SessionKeys) => void;
  /** Peers refused or revoked (no handshake with them meanwhile). */
  blocked: (peer: string) => boolean;
  /** Wall clock (ms) of the handshaker (tests). */
  now?: () => number;
  /** Warm the crypto paths up when a credential loads (default true; the worker that gets the handshakes). */
  warm?: boolean;
}

interface Queued {
  peer: string;
  bytes: Uint8Array;
  known: boolean;
  /** performance.now() when it was received. */
  at: number;
}

/** See the module. */
export class HandshakeHost {
  readonly #o: HandshakeHostOptions;
  #hs: Handshaker | undefined;
  #setup: HsSetup | undefined;
  #queue: Queued[] = [];
  #replies: Queued[] = [];
  readonly #moved = new Map<string, string>();
  /**
   * When this worker sent each HS_INIT of its handshakes still open (performance.now()), by the
   * INIT's sender index: a handshake is timed from its own INIT, also when a retry went out meanwhile.
   */
  readonly #started = new Map<number, { peer: string; at: number }>();
  /**
   * The first HS_INIT of the attempt still open with each peer (performance.now()) and the INITs sent
   * in it: retries and cookie rounds included, what a rekey under a flood costs.
   */
  readonly #attempt = new Map<string, { at: number; inits: number }>();
  /** The INIT of each peer's handshake that this worker answered: its phase, and when it was received. */
  readonly #answers = new Map<string, { phase: HsPhase; at: number }>();
  #warmLeft = 0;
  /** Warm-up rounds left for the ticks (see {@link LATE_WARM_ROUNDS}). */
  #lateLeft = 0;
  /** Warm now, with handshakes asked for while warming: they start at the next {@link drain}. */
  #kick = false;
  /** Handshakes asked for while warming up (peer → lane). */
  readonly #deferred = new Map<string, number>();
  #dropsSent = "";
  /** Handshake datagrams dropped because the queue was full. */
  #queueDrops = 0;

  /** A host with no setup (handshakes start with {@link setup}). */
  constructor(o: HandshakeHostOptions) {
    this.#o = o;
    if (tracing) traceAs(`w${o.lane}`);
  }

  /** True when it runs handshakes (a setup with a credential). */
  get ready(): boolean {
    return this.#hs !== undefined;
  }

  /** Applies a setup: a first one builds the handshaker (and warms its paths), later ones replace trust and credential. */
  setup(s: HsSetup | undefined): void {
    this.#setup = s;
    if (!s) {
      this.#hs = undefined;
      this.#queue = [];
      this.#replies = [];
      this.#warmLeft = 0;
      this.#lateLeft = 0;
      this.#kick = false;
      this.#deferred.clear();
      return;
    }
    if (this.#hs) {
      // Revoked or expired peers are cut here too; the main isolate removes their keys everywhere.
      this.#hs.setTrust(s.trust, s.credential);
      this.#hs.setCookieSecrets(s.cookieSecrets);
      return;
    }
    this.#hs = new Handshaker({
      credential: s.credential,
      trust: s.trust,
      rekeyMs: s.rekeyMs,
      cookies: s.cookies,
      cookieSecrets: s.cookieSecrets,
      ...(this.#o.now ? { now: this.#o.now } : {}),
    });
    // The first handshake should not pay for cold crypto paths (tens of ms): one round now, the
    // others between the worker's batches ({@link warmStep}) — or all at once before a starting
    // worker's loop runs ({@link warmNow}).
    if (this.#o.warm === false) return;
    if (tracing) trace("warm-start");
    this.#warmRound(s);
    this.#warmLeft = WARM_ROUNDS - 1;
    this.#lateLeft = LATE_WARM_ROUNDS;
  }

  /**
   * One warm-up handshake, its keys installed in a throwaway key ring and removed: the first real
   * handshake's install (libcrypto loaded, AEAD contexts made: tens of ms cold) is warm too.
   */
  #warmRound(s: HsSetup): void {
    warmUp(s.credential, s.trust, (k) => {
      const ring = new KeyRing(this.#o.lane);
      ring.install({ ...k, sendCounters: newSendCounters() });
      ring.removePeer(k.peer);
    });
  }

  /** True while warm-up rounds are left (the worker runs {@link warmStep} between its batches meanwhile). */
  get warming(): boolean {
    return this.#warmLeft > 0;
  }

  /**
   * One warm-up round (~1–2 ms); after the last, the handshakes asked for meanwhile start (next drain) — on warm
   * paths, so that a node's first handshake is as fast as its rekeys (its HS_INIT is what the time
   * counts from; a peer's INIT is answered between rounds, not after them).
   */
  warmStep(): void {
    const s = this.#setup;
    if (this.#warmLeft <= 0 || !s) return;
    this.#warmRound(s);
    if (--this.#warmLeft > 0) return;
    if (tracing) trace("warm-done", { deferred: this.#deferred.size });
    this.#hs?.prepare();
    // The handshakes asked for meanwhile start at the next drain: from the running loop, which reads
    // their replies at once (from warmNow, before the loop, a RESP waited for the loop to start).
    this.#kick = this.#deferred.size > 0;
    this.#o.post({ type: "secure-hs-ready", lane: this.#o.lane });
  }

  #startDeferred(): void {
    this.#kick = false;
    const asked = [...this.#deferred];
    this.#deferred.clear();
    for (const [peer, lane] of asked) this.initiate(peer, lane);
  }

  /**
   * Runs the warm-up rounds left at once (a worker that has not started its loop yet: nothing waits
   * for it); the handshakes asked for meanwhile start at the loop's first {@link drain}.
   */
  warmNow(): void {
    while (this.#warmLeft > 0) this.warmStep();
  }

  /** Handles a message of the main isolate. */
  onMessage(m: HsDown): void {
    switch (m.type) {
      case "secure-hs-setup":
        this.setup(m.setup);
        break;
      case "secure-hs-cookie":
        if (this.#setup) this.#setup = { ...this.#setup, cookieSecrets: m.secrets };
        this.#hs?.setCookieSecrets(m.secrets);
        break;
      case "secure-initiate":
        this.initiate(m.peer, m.lane, m.soon === true, m.force === true);
        break;
      case "secure-hs-forget":
        for (const p of m.peers) {
          this.#hs?.forget(p);
          for (const [i, s] of this.#started) if (s.peer === p) this.#started.delete(i);
          this.#attempt.delete(p);
        }
        break;
    }
  }

  /** `peer` is reached at `endpoint` now (its session followed it): handshakes go there. */
  moved(peer: string, endpoint: string): void {
    if (endpoint === peer) this.#moved.delete(peer);
    else if (this.#moved.size < MAX_PEERS || this.#moved.has(peer)) this.#moved.set(peer, endpoint);
  }

  /**
   * Starts a handshake with `peer` (nothing when one went out less than a second ago — unless
   * `force`: an operator's rekey — or none can).
   */
  initiate(peer: string, lane: number, soon = false, force = false): void {
    const hs = this.#hs;
    if (!hs || this.#o.blocked(peer)) return;
    if (this.#warmLeft > 0) {
      if (this.#deferred.size < MAX_PEERS) this.#deferred.set(peer, lane);
      return;
    }
    // A short retry is for a peer that never answered (as the main isolate saw it): a session this
    // worker completed meanwhile, its news on the way, makes it one handshake too many (a crossing one).
    if (soon && hs.peerState(peer)?.current) return;
    if (tracing) trace("init-ask", { peer });
    const bytes = hs.initiate(peer, lane, force ? 0 : soon ? SOON_RETRY_MS : RETRY_MS);
    if (!bytes) return;
    const now = performance.now();
    if (this.#started.size >= 64) {
      // (INITs never answered: a peer not up, an Oakestra node in prefer.)
      for (const [i, x] of this.#started) if (now - x.at > ATTEMPT_MAX_MS) this.#started.delete(i);
      if (this.#started.size >= MAX_PEERS) this.#started.clear();
    }
    // Each HS_INIT starts a new handshake (new ephemeral key, new index: bytes 4..8).
    this.#started.set(((bytes[4] << 24) | (bytes[5] << 16) | (bytes[6] << 8) | bytes[7]) >>> 0, {
      peer,
      at: now,
    });
    const a = this.#attempt.get(peer);
    // (An attempt older than this was given up — a peer that never answered — and a new one begins.)
    if (a && now - a.at < ATTEMPT_MAX_MS) a.inits++;
    else {
      if (this.#attempt.size >= MAX_PEERS) this.#attempt.clear();
      this.#attempt.set(peer, { at: now, inits: 1 });
    }
    this.#o.send(this.#moved.get(peer) ?? peer, bytes);
    hs.prepare(); // the next handshake's ephemeral key, now that the INIT is out
    if (tracing) trace("init-sent", { peer }, now);
    if (tracing) trace("init-sent-end", { peer }), flushTrace();
  }

  /**
   * False for a reply to no handshake of ours with `peer` (handshake.ts `expects`): the secure layer
   * drops it before it spends the handshake forwarding budget (a flood's reflected cookie replies).
   */
  expects(peer: string, buf: Uint8Array, off: number, len: number): boolean {
    return this.#hs === undefined || this.#hs.expects(peer, buf, off, len);
  }

  /**
   * True for an HS_INIT from `peer` whose mac1 and mac2 verify (handshake.ts `provenInit`): asked
   * only under load, before a cookie-holders' budget or queue room is granted — a stranger's garbage
   * in mac2 buys nothing.
   */
  proven(peer: string, buf: Uint8Array, off: number, len: number): boolean {
    return this.#hs !== undefined && this.#hs.provenInit(peer, buf, off, len);
  }

  /**
   * A handshake datagram `buf[off .. off+len)` from `peer` (`known`: one of the table's nodes),
   * received now: copied and handled at {@link drain}. False: not taken (no setup, or the queue is full).
   */
  queue(peer: string, buf: Uint8Array, off: number, len: number, known: boolean): boolean {
    if (!this.#hs) return false;
    const bytes = { peer, bytes: buf.slice(off, off + len), known, at: performance.now() };
    if (!isHsInit(buf, off)) {
      // A reply the layer let through answers one of our handshakes (expects): ahead of any INIT
      // flood, so a loaded worker neither drops nor delays it behind the flood's INITs.
      if (this.#replies.length >= REPLY_QUEUE_MAX) {
        this.#queueDrops++;
        return false;
      }
      this.#replies.push(bytes);
      return true;
    }
    // Strangers' INITs (a flood's) fill half the queue at most: the table's nodes keep the rest, and
    // the last MAC2_ROOM places are for INITs whose mac2 verifies (checked only then: a flood
    // spoofing a node's address has no cookie, and garbage in mac2 does not pass).
    const n = this.#queue.length;
    if (
      n >= (known ? HS_QUEUE_MAX - MAC2_ROOM : HS_QUEUE_MAX / 2) &&
      (n >= HS_QUEUE_MAX || !hasMac2(buf, off, len) || !this.proven(peer, buf, off, len))
    ) {
      this.#queueDrops++;
      return false;
    }
    this.#queue.push(bytes);
    return true;
  }

  /**
   * Handles queued handshake datagrams (after the bind's receive batch): the replies to our
   * handshakes, then {@link DRAIN_MAX} INITs at most, so that a flood's share of the worker comes in
   * slices between its packet batches.
   */
  drain(): void {
    if (this.#kick) this.#startDeferred();
    if (this.#replies.length > 0) {
      const r = this.#replies;
      this.#replies = [];
      for (const d of r) this.#handle(d);
    }
    const q = this.#queue;
    if (q.length === 0) return;
    const n = Math.min(q.length, DRAIN_MAX);
    for (let i = 0; i < n; i++) this.#handle(q[i]);
    this.#queue = n === q.length ? [] : q.slice(n);
  }

  /** True while handshake work is waiting (queued datagrams, warm-up rounds): the worker must not sleep. */
  get busy(): boolean {
    return this.#queue.length > 0 || this.#replies.length > 0 || this.#warmLeft > 0 || this.#kick;
  }

  #handle(d: Queued): void {
    const hs = this.#hs;
    if (!hs || this.#o.blocked(d.peer)) return;
    const t = performance.now();
    if (tracing) trace("rx", { peer: d.peer, type: d.bytes[0], len: d.bytes.length }, d.at);
    if (tracing) trace("handle", { peer: d.peer, type: d.bytes[0] }, t);
    const out = hs.handle(d.peer, d.bytes, 0, d.bytes.length, d.known);
    const type = d.bytes[0];
    if (tracing) trace("handled", { peer: d.peer, type, reply: out.reply?.length, up: !!out.established });
    if (type === MSG_HS_INIT && out.reply && !isCookieReply(out.reply, 0, out.reply.length)) {
      // The INIT answered: its phase is reported with the session (FINISH).
      const ph = { hopMs: t - d.at, cpuMs: 0 };
      this.#o.send(this.#moved.get(d.peer) ?? d.peer, out.reply);
      ph.cpuMs = performance.now() - t;
      if (tracing) trace("resp-sent", { peer: d.peer }), flushTrace();
      if (this.#answers.size >= MAX_PEERS) this.#answers.clear();
      this.#answers.set(d.peer, { phase: ph, at: d.at });
      hs.prepare(); // (after the RESP went out)
      return;
    }
    // Keys first: the peer may send data as soon as our FINISH reaches it.
    let readyAt = 0;
    if (out.established) {
      const k = out.established;
      k.sendCounters ??= newSendCounters(); // shared by the workers, kept across their restarts
      this.#o.install(k);
      readyAt = performance.now(); // the session is ready here (what handshakeMs ends at)
      if (tracing) trace("installed", { peer: d.peer }, readyAt);
    }
    if (out.reply) this.#o.send(this.#moved.get(d.peer) ?? d.peer, out.reply);
    if (tracing && out.reply) trace("reply-sent", { peer: d.peer, type });
    if (tracing) flushTrace();
    if (out.established) {
      const resp = type === MSG_HS_RESP ? { hopMs: t - d.at, cpuMs: performance.now() - t } : undefined;
      this.#report(out.established, resp, readyAt);
    }
    if (out.refused) this.#o.post({ type: "secure-hs-refused", peer: d.peer, reason: out.refused });
    if (out.established) hs.prepare();
  }

  /** Posts a completed handshake; `readyAt`: when its keys were installed here (performance.now()). */
  #report(k: SessionKeys, resp: HsPhase | undefined, readyAt: number): void {
    const st = this.#hs?.peerState(k.peer);
    if (!st?.cert) return;
    const t0 = st.initiator ? this.#started.get(k.localIndex)?.at : undefined;
    // (One of ours answered: the handshaker dropped our other INITs to this peer, superseded.)
    if (st.initiator) {
      for (const [i, s] of this.#started) if (s.peer === k.peer) this.#started.delete(i);
    }
    const a = st.initiator ? this.#attempt.get(k.peer) : undefined;
    this.#attempt.delete(k.peer);
    const answer = st.initiator ? undefined : this.#answers.get(k.peer);
    this.#answers.delete(k.peer);
    this.#o.post({
      type: "secure-hs-done",
      keys: k,
      cert: st.cert,
      initiator: st.initiator,
      ...(t0 !== undefined ? { handshakeMs: readyAt - t0 } : {}),
      ...(a !== undefined ? { attempt: { ms: readyAt - a.at, inits: a.inits } } : {}),
      ...(resp ? { resp } : {}),
      ...(answer ? { answer: answer.phase, readyMs: readyAt - answer.at } : {}),
    });
  }

  /** Timers (about every 100 ms): the drop counters, when they changed; a late warm-up round. */
  tick(): void {
    flushTrace();
    for (
      let i = 0;
      i < LATE_WARM_PER_TICK && this.#lateLeft > 0 && this.#warmLeft === 0 && this.#setup && !this.busy;
      i++
    ) {
      this.#lateLeft--;
      this.#warmRound(this.#setup);
    }
    const drops = this.drops();
    const json = JSON.stringify(drops);
    if (json !== this.#dropsSent) {
      this.#dropsSent = json;
      this.#o.post({ type: "secure-hs-drops", lane: this.#o.lane, drops });
    }
  }

  /** Handshake drops by reason, cumulative. */
  drops(): Record<string, number> {
    const d = { ...(this.#hs?.drops ?? {}) };
    if (this.#queueDrops > 0) d.hs_queue_full = this.#queueDrops;
    return d;
  }
}
