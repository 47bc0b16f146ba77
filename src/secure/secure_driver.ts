/**
 * The secure tunnel in the main isolate: the scheduler and the record of the node's handshakes, which
 * run in the data-plane worker that owns the tunnel socket (hs_host.ts; handshake datagrams are
 * steered to it, lanes.ts). It hands that worker — every worker, in fact — what a handshake needs
 * (the node's credential, the trust snapshot, the cookie secrets it rotates: {@link HsSetup}), asks
 * for handshakes (a worker needs a session, rekeys due, the table's nodes, a restarted worker), and
 * learns each result asynchronously (`secure-hs-done`: peer, certificate, timing) to hand the keys to
 * the other workers and show them in status. One handshake per peer, whatever the number of workers.
 *
 * - Peers that never answer (Oakestra's Go nodes, netmanager nodes with `TunnelSecurity: off`) are
 *   asked again with a backoff (250 ms doubling to 60 s); in `prefer` they stay raw meanwhile.
 * - A peer whose certificate is refused (foreign CA, expired, revoked, not its key) is blocked in
 *   every worker for {@link BLOCK_MS}: no raw fallback with it in `prefer` either.
 * - {@link SecureDriver.set} with a new trust snapshot cuts sessions whose certificate is now revoked
 *   (their keys leave every worker at once) and blocks those peers.
 *
 * @example
 * ```ts
 * import { SecureDriver } from "./secure_driver.ts";
 * import type { ToWorker } from "../proxy/messages.ts";
 * const d = new SecureDriver({ broadcast: (m: ToWorker) => {}, toLane0: (m: ToWorker) => {} });
 * d.set({ mode: "off", credential: undefined, trust: { caPublicKeys: [], revokedSerials: [], revokedNodeIds: [], generation: 0 } });
 * console.log(d.init()); // undefined: off
 * ```
 * @module
 */
import type { SessionKeys } from "./keys.ts";
import { type SecureMode, secureModeOf, type SecureUp } from "./secure_layer.ts";
import type { SecuritySettings } from "./node_security.ts";
import type { SecureInit, ToWorker } from "../proxy/messages.ts";
import { COOKIE_SECRET_MS, type CookieSecrets, newCookieSecret } from "./cookie.ts";
import type { HsPhase, HsSetup, HsUp } from "./hs_messages.ts";
import { type TrustSnapshot, TrustStore, type VerifiedCert } from "./trust.ts";
import { logger } from "../log.ts";
import { flushTrace, trace, traceAs, tracing } from "./hs_trace.ts";
import { leadsRekey, REKEY_FOLLOWER_GRACE_MS } from "./rekey.ts";

const log = logger("secure");

/** How long a peer whose certificate was refused stays blocked before it may try again. */
export const BLOCK_MS = 30_000;
const BACKOFF_MAX_MS = 60_000;
/**
 * First wait before an unanswered peer is asked again, doubling to {@link BACKOFF_MAX_MS}: an INIT
 * lost because the peer was not up yet costs 250 ms, not a second (the waits under 1 s have their
 * own timer; the 1 s tick takes the longer ones).
 */
export const RETRY_FIRST_MS = 250;

type Phase = HsPhase;

function phasesView(p: { resp?: Phase; answer?: Phase }): NonNullable<SecurePeerView["handshakePhases"]> {
  const r = (x: number) => Math.round(x * 100) / 100;
  const out: NonNullable<SecurePeerView["handshakePhases"]> = {};
  if (p.resp && Number.isFinite(p.resp.hopMs)) out.hopMs = r(p.resp.hopMs);
  if (p.resp) out.cpuMs = r(p.resp.cpuMs);
  if (p.answer && Number.isFinite(p.answer.hopMs)) out.answerHopMs = r(p.answer.hopMs);
  if (p.answer) out.answerCpuMs = r(p.answer.cpuMs);
  return out;
}

/** A peer's completed handshakes as the worker reported them. */
interface PeerRecord {
  cert: VerifiedCert;
  /** Wall-clock ms of the last completed handshake. */
  lastHandshakeMs: number;
  /** Handshakes completed after the first. */
  rekeys: number;
  /** Whether this node initiated the current session. */
  initiator: boolean;
  /** The current session's creation (-Infinity: a worker asked for a rekey). */
  createdMs: number;
}

/** Per-peer view for status. */
export interface SecurePeerView {
  endpoint: string;
  state: "secure" | "refused";
  subject?: string;
  certExpires?: string;
  lastHandshakeSecondsAgo?: number;
  rekeys?: number;
  refusedReason?: string;
  /** Duration of the last handshake this node initiated with the peer (its HS_INIT sent → keys installed), ms. */
  handshakeMs?: number;
  /**
   * The same handshake from the first HS_INIT of its attempt (ms): with the retries after lost
   * datagrams and the cookie rounds under a flood (`handshakeAttemptInits`: the HS_INITs it took).
   */
  handshakeAttemptMs?: number;
  handshakeAttemptInits?: number;
  /** Data-plane drops with this peer by reason (replayed, forged, plain data from it while secure). */
  drops?: Record<string, number>;
  /**
   * Where the last handshakes' time went on this node, in the worker that runs them (ms): `hopMs`/`cpuMs`
   * of the HS_RESP of the last one it initiated (received → handled, and the crypto with the keys'
   * install and FINAL's send), `answerHopMs`/`answerCpuMs` of the last HS_INIT it answered.
   * `handshakeMs` minus these is the wire and the peer.
   */
  handshakePhases?: { hopMs?: number; cpuMs?: number; answerHopMs?: number; answerCpuMs?: number };
  /** Where it is reached now, when its session followed it away from `endpoint` (roaming, NAT rebinding). */
  at?: string;
  /** Times its session followed it to another endpoint. */
  endpointChanges?: number;
}

/** One completed handshake in {@link SecureDriver.recent} (the last {@link RECENT_MAX}). */
export interface HandshakeRecord {
  peer: string;
  /** This node's part: it sent the HS_INIT (`initiator`) or answered it (`responder`). */
  role: "initiator" | "responder";
  /**
   * Initiator: its HS_INIT sent → keys installed (ms); responder: the HS_INIT received → keys
   * installed (its HS_FINISH handled).
   */
  ms?: number;
  /** Wall clock (ms since the epoch) when it completed. */
  atMs: number;
}

/** Handshakes kept for {@link SecureDriver.recent}. */
export const RECENT_MAX = 64;

/** The outcome of one peer's rekey asked for with {@link SecureDriver.rekey}. */
export interface RekeyResult {
  peer: string;
  subject?: string;
  /** Its HS_INIT sent → keys installed (ms), as the worker that ran it measured. */
  handshakeMs?: number;
  /** Where the time went on this node (see {@link SecurePeerView.handshakePhases}). */
  phases?: SecurePeerView["handshakePhases"];
  /** Why there is no figure (`timeout`: no session within the wait; `refused`: certificate refused). */
  error?: string;
}

/** A rekey asked for that cannot run (HTTP status for the API). */
export class RekeyError extends Error {
  /** 404: no session with the peer; 409: no handshakes on this node (security off, no certificate). */
  readonly status: 404 | 409;
  constructor(status: 404 | 409, message: string) {
    super(message);
    this.name = "RekeyError";
    this.status = status;
  }
}

/** Options of a {@link SecureDriver}. */
export interface SecureDriverOptions {
  /** Posts to every worker. */
  broadcast: (m: ToWorker) => void;
  /** Posts to worker 0 (the tunnel socket's worker: handshake datagrams are steered to it). */
  toLane0: (m: ToWorker) => void;
  /** Posts to every worker but worker 0 (keys worker 0 installed itself); default: {@link broadcast}. */
  toOthers?: (m: ToWorker) => void;
  /** Rekey interval (ms); default 120 s (netcfg `TunnelRekeySeconds`, see {@link SecureDriver.rekeyMs}). */
  rekeyMs?: number;
  /**
   * The other nodes of the table (node keys): sessions are set up with them before traffic needs
   * them (with the same backoff), so `require` does not drop a flow's first packets.
   */
  knownPeers?: () => Iterable<string>;
}

/** See the module. */
export class SecureDriver {
  #mode: SecureMode = 0;
  /** What the workers run: `prefer` without a certificate is off there (nothing can be sealed). */
  #workerMode: SecureMode = 0;
  #modeName: SecuritySettings["mode"] = "off";
  /** What the workers run handshakes with (undefined: none). */
  #setup: HsSetup | undefined;
  #trust: TrustStore | undefined;
  readonly #o: SecureDriverOptions;
  /**
   * Rekey interval (ms) of the sessions set up from the next {@link set} on; the environment's
   * `NETMANAGER_REKEY_SECONDS`, when set, overrides it (tests).
   */
  rekeyMs: number;
  #effectiveRekeyMs = 120_000;
  readonly #attempts = new Map<string, { n: number; nextAt: number }>();
  readonly #blocked = new Map<string, { until: number; reason: string }>();
  readonly #keys = new Map<string, SessionKeys[]>();
  readonly #peers = new Map<string, PeerRecord>();
  /** Duration of the last handshake this node initiated per peer (ms). */
  readonly #hsMs = new Map<string, number>();
  /** Its attempt per peer: first HS_INIT → keys (ms), and the HS_INITs sent. */
  readonly #attemptMs = new Map<string, { ms: number; inits: number }>();
  /** Per peer: the phases of the last handshake this node initiated (`resp`) and answered (`answer`). */
  readonly #phases = new Map<string, { resp?: Phase; answer?: Phase }>();
  /** Each worker's handshake drops (cumulative, by lane). */
  readonly #hsDrops = new Map<number, Record<string, number>>();
  #cookie: CookieSecrets = { current: newCookieSecret() };
  #cookieAt = Date.now();
  #timer: ReturnType<typeof setInterval> | undefined;
  /** The short first retries' timers (see {@link RETRY_FIRST_MS}). */
  readonly #retries = new Set<ReturnType<typeof setTimeout>>();
  #warnedNoCredential = false;
  /** Peers followed to another endpoint (peer key → endpoint key): handshakes go there too. */
  readonly #moved = new Map<string, string>();
  /** Per peer: times it was followed to another endpoint. */
  readonly #changes = new Map<string, number>();
  /** Endpoint changes of all peers. */
  endpointChanges = 0;
  /** The last handshakes completed (oldest first, {@link RECENT_MAX} at most). */
  readonly #recent: HandshakeRecord[] = [];
  /** Rekeys asked for ({@link rekey}) waiting for their session, by peer. */
  readonly #waiters = new Map<string, ((r: RekeyResult) => void)[]>();

  /** A driver posting through `o` (mode off until {@link set}). */
  constructor(o: SecureDriverOptions) {
    this.#o = o;
    this.rekeyMs = o.rekeyMs ?? 120_000;
    if (tracing) traceAs("main");
  }

  /** Applies settings (start, credential or trust updates). */
  set(s: SecuritySettings): void {
    const mode = secureModeOf(s.mode);
    this.#mode = mode;
    this.#modeName = s.mode;
    const workerMode = !s.credential && mode === 1 ? 0 : mode;
    const modeChanged = workerMode !== this.#workerMode;
    this.#workerMode = workerMode;
    const hadSetup = this.#setup !== undefined;
    if (mode === 0) {
      this.#setup = undefined;
      this.#trust = undefined;
      this.#keys.clear();
      this.#peers.clear();
      this.#blocked.clear();
      if (this.#timer !== undefined) clearInterval(this.#timer);
      this.#timer = undefined;
      if (hadSetup) this.#o.broadcast({ type: "secure-hs-setup", setup: undefined });
      if (modeChanged) this.#o.broadcast({ type: "secure-mode", mode: workerMode });
      return;
    }
    if (!s.credential) {
      // No certificate yet (cluster mode before registration): nobody can be authenticated. In
      // require nothing flows; in prefer everything stays raw until the certificate arrives.
      if (!this.#warnedNoCredential) {
        log.warn("tunnel security is on but this node has no certificate yet: no secure sessions", {
          mode: s.mode,
        });
        this.#warnedNoCredential = true;
      }
      this.#setup = undefined;
      if (hadSetup) this.#o.broadcast({ type: "secure-hs-setup", setup: undefined });
    } else {
      if (hadSetup) this.#cut(s.trust);
      else {
        const env = Number(Deno.env.get("NETMANAGER_REKEY_SECONDS"));
        this.#effectiveRekeyMs = env > 0 ? env * 1000 : this.rekeyMs;
      }
      this.#trust = new TrustStore(s.trust);
      this.#setup = {
        credential: s.credential,
        trust: s.trust,
        rekeyMs: this.#effectiveRekeyMs,
        // NETMANAGER_HS_COOKIES=off (tests: what a flood does without them) answers no cookies.
        cookies: Deno.env.get("NETMANAGER_HS_COOKIES") !== "off",
        cookieSecrets: this.#cookie,
      };
      this.#o.broadcast({ type: "secure-hs-setup", setup: this.#setup });
      if (tracing) trace("setup", { first: !hadSetup });
      if (!hadSetup) queueMicrotask(() => this.tick()); // sessions with the table's nodes right away
    }
    if (modeChanged) this.#o.broadcast({ type: "secure-mode", mode: workerMode });
    this.#timer ??= setInterval(() => this.tick(), 1000);
  }

  /** A new trust snapshot: cuts the sessions whose certificate it revokes or that expired. */
  #cut(trust: TrustSnapshot): void {
    const store = new TrustStore(trust);
    const now = Math.floor(Date.now() / 1000);
    const cut: string[] = [];
    for (const [peer, r] of this.#peers) {
      if (store.isRevoked(r.cert) || now >= r.cert.notAfter) cut.push(peer);
    }
    if (cut.length === 0) return;
    log.warn("peers' certificates revoked: their sessions are closed", { peers: cut });
    for (const p of cut) {
      this.#keys.delete(p);
      this.#peers.delete(p);
      this.#blocked.set(p, { until: Date.now() + BLOCK_MS, reason: "revoked" });
    }
    this.#o.broadcast({ type: "secure-remove", peers: cut, forget: false });
    this.#o.broadcast({ type: "secure-block", peers: cut, blocked: true });
    this.#o.toLane0({ type: "secure-hs-forget", peers: cut });
  }

  /**
   * What a (re)started worker begins with. A restarted one (`restart`) gets the keys to send with
   * only (its replay windows are lost), and every peer is rekeyed at once so that it can receive again.
   */
  init(restart = false): SecureInit | undefined {
    if (this.#workerMode === 0) return undefined;
    if (restart && this.#setup) {
      // After the new worker's init message (a restarted worker 0 runs them).
      const peers = [...this.#keys.keys()];
      setTimeout(() => {
        for (const peer of peers) this.#initiate(peer, 0, true);
      }, 0);
    }
    return {
      mode: this.#workerMode,
      keys: [...this.#keys.values()].flat(),
      blocked: [...this.#blocked.keys()],
      ...(this.#moved.size > 0 ? { moved: [...this.#moved] } : {}),
      ...(restart ? { sendOnly: true } : {}),
      ...(this.#setup ? { hs: this.#setup } : {}),
    };
  }

  /** Handles a worker's message of the secure layer or of its handshakes. */
  onWorker(m: SecureUp | HsUp): void {
    switch (m.type) {
      case "secure-hs-drops":
        this.#hsDrops.set(m.lane, m.drops);
        return;
      case "secure-moved":
        this.#follow(m.peer, m.endpoint);
        return;
      case "secure-hs-ready":
        // Worker 0 runs handshakes now: ask again for those posted before it was there (no backoff).
        if (m.lane === 0 && this.#setup) {
          if (tracing) trace("hs-ready");
          this.#attempts.clear();
          this.tick();
        }
        return;
    }
    if (!this.#setup) return;
    switch (m.type) {
      case "secure-hs-done":
        this.#established(m);
        break;
      case "secure-hs-refused":
        this.#refuse(m.peer, m.reason);
        break;
      case "secure-want":
        this.#initiate(m.peer, m.lane, false);
        break;
      case "secure-rekey": {
        const r = this.#peers.get(m.peer);
        if (r) r.createdMs = -Infinity;
        break;
      }
    }
  }

  /**
   * A worker followed `peer` to `endpoint` (a datagram authenticated under its session came from
   * there): every worker sends there from now on (handshakes too). Reports of the same move from
   * several workers count once.
   */
  #follow(peer: string, endpoint: string): void {
    const was = this.#moved.get(peer) ?? peer;
    if (was === endpoint) return;
    if (!this.#keys.has(peer)) return; // (its session is gone: nothing to follow)
    if (endpoint === peer) this.#moved.delete(peer);
    else {
      if (this.#moved.size >= 4096 && !this.#moved.has(peer)) return;
      this.#moved.set(peer, endpoint);
    }
    if (this.#changes.size < 4096 || this.#changes.has(peer)) {
      this.#changes.set(peer, (this.#changes.get(peer) ?? 0) + 1);
    }
    this.endpointChanges++;
    log.info("peer moved: its secure session follows it", { peer, from: was, to: endpoint });
    this.#o.broadcast({ type: "secure-moved", peer, endpoint });
  }

  /**
   * Rekeys the sessions with `peer` (or with every peer that has one) now: a fresh handshake from this
   * node, as a scheduled rekey, sent even when one went out less than a second ago (the peer's INIT
   * budget still applies: handshake.ts `INIT_PER_SECOND` a second, `INIT_BURST` at once). Resolves when each session is
   * installed (or after `timeoutMs`) with the time it took — `netmanager peers rekey`.
   */
  rekey(peer?: string, timeoutMs = 3000): Promise<RekeyResult[]> {
    if (!this.#setup) {
      return Promise.reject(
        new RekeyError(409, "no secure handshakes on this node (tunnel security off or no certificate)"),
      );
    }
    if (peer !== undefined && !this.#peers.has(peer)) {
      return Promise.reject(new RekeyError(404, `no secure session with ${peer}`));
    }
    const targets = peer !== undefined ? [peer] : [...this.#peers.keys()];
    return Promise.all(targets.map((p) =>
      new Promise<RekeyResult>((resolve) => {
        const list = this.#waiters.get(p) ?? [];
        const t = setTimeout(() => {
          const i = list.indexOf(done);
          if (i >= 0) list.splice(i, 1);
          if (list.length === 0 && this.#waiters.get(p) === list) this.#waiters.delete(p);
          resolve({ peer: p, error: "timeout" });
        }, timeoutMs);
        const done = (r: RekeyResult) => {
          clearTimeout(t);
          resolve(r);
        };
        list.push(done);
        this.#waiters.set(p, list);
        this.#initiate(p, 0, true, false, true);
      })
    ));
  }

  #settle(peer: string, r: RekeyResult): void {
    const list = this.#waiters.get(peer);
    if (!list) return;
    this.#waiters.delete(peer);
    for (const f of list) f(r);
  }

  /** The last handshakes this node completed (oldest first): each side's time, for benchmarks and status. */
  recent(): HandshakeRecord[] {
    return [...this.#recent];
  }

  #initiate(peer: string, lane: number, rekey: boolean, soon = false, force = false): void {
    if (!this.#setup || this.#blocked.has(peer)) return;
    const now = Date.now();
    const a = this.#attempts.get(peer) ?? { n: 0, nextAt: 0 };
    if (!rekey && now < a.nextAt) return;
    a.n++;
    const wait = Math.min(BACKOFF_MAX_MS, RETRY_FIRST_MS * 2 ** Math.min(a.n - 1, 8));
    a.nextAt = now + wait;
    if (this.#attempts.size >= 4096 && !this.#attempts.has(peer)) this.#attempts.clear();
    this.#attempts.set(peer, a);
    if (!rekey && wait < 1000 && this.#retries.size < 4096) {
      const t = setTimeout(() => {
        this.#retries.delete(t);
        if (this.#setup && !this.#peers.has(peer) && this.#attempts.get(peer) === a) {
          this.#initiate(peer, lane, false, true);
        }
      }, wait);
      this.#retries.add(t);
    }
    if (tracing) trace("ask", { peer, n: a.n, rekey });
    this.#o.toLane0({
      type: "secure-initiate",
      peer,
      lane,
      ...(soon ? { soon } : {}),
      ...(force ? { force } : {}),
    });
  }

  #established(m: Extract<HsUp, { type: "secure-hs-done" }>): void {
    const k = m.keys;
    if (tracing) {
      trace("done", { peer: k.peer, initiator: m.initiator, ms: m.handshakeMs, attempt: m.attempt });
      flushTrace();
    }
    if (this.#blocked.has(k.peer) || this.#trust?.isRevoked(m.cert)) {
      // Refused or revoked while its handshake ran: its keys leave the worker that made them.
      this.#o.toLane0({ type: "secure-remove", peers: [k.peer], forget: false });
      this.#settle(k.peer, { peer: k.peer, error: "refused" });
      return;
    }
    const ms = m.initiator ? m.handshakeMs : m.readyMs;
    if (this.#recent.length >= RECENT_MAX) this.#recent.shift();
    this.#recent.push({
      peer: k.peer,
      role: m.initiator ? "initiator" : "responder",
      ...(ms !== undefined ? { ms: Math.round(ms * 100) / 100 } : {}),
      atMs: Date.now(),
    });
    const first = !this.#keys.has(k.peer);
    // Keep the previous session for in-flight datagrams; older ones expire in the workers.
    const list = (this.#keys.get(k.peer) ?? []).filter((x) => x.expiresMs > Date.now()).slice(-1);
    list.push(k);
    this.#keys.set(k.peer, list);
    this.#attempts.delete(k.peer);
    (this.#o.toOthers ?? this.#o.broadcast)({ type: "secure-keys", keys: [k] });
    const prev = this.#peers.get(k.peer);
    if (this.#peers.size >= 4096 && !prev) return;
    this.#peers.set(k.peer, {
      cert: m.cert,
      lastHandshakeMs: Date.now(),
      rekeys: prev ? prev.rekeys + 1 : 0,
      initiator: m.initiator,
      createdMs: k.createdMs,
    });
    const r = (x: number) => Math.round(x * 100) / 100;
    if (m.handshakeMs !== undefined) {
      if (this.#hsMs.size > 4096) this.#hsMs.clear();
      this.#hsMs.set(k.peer, m.handshakeMs);
      if (m.attempt) {
        if (this.#attemptMs.size > 4096) this.#attemptMs.clear();
        this.#attemptMs.set(k.peer, m.attempt);
      }
      if (m.resp) this.#phase(k.peer).resp = m.resp;
      log.debug("handshake timed", {
        peer: k.peer,
        ms: r(m.handshakeMs),
        hopMs: m.resp ? r(m.resp.hopMs) : undefined,
        cpuMs: m.resp ? r(m.resp.cpuMs) : undefined,
      });
    }
    if (m.answer) this.#phase(k.peer).answer = m.answer;
    if (m.initiator) {
      this.#settle(k.peer, {
        peer: k.peer,
        subject: m.cert.subject,
        ...(m.handshakeMs !== undefined ? { handshakeMs: r(m.handshakeMs) } : {}),
        ...(this.#phases.has(k.peer) ? { phases: phasesView(this.#phases.get(k.peer)!) } : {}),
      });
    }
    if (first) log.info("secure session established", { peer: k.peer, subject: m.cert.subject });
    else log.debug("secure session rekeyed", { peer: k.peer, rekeys: prev?.rekeys });
  }

  #refuse(peer: string, reason: string): void {
    if (!this.#blocked.has(peer)) {
      log.warn("peer's tunnel certificate refused: no traffic with it", { peer, reason });
    }
    this.#blocked.set(peer, { until: Date.now() + BLOCK_MS, reason });
    this.#settle(peer, { peer, error: "refused" });
    this.#keys.delete(peer);
    this.#peers.delete(peer);
    this.#o.broadcast({ type: "secure-remove", peers: [peer], forget: false });
    this.#o.broadcast({ type: "secure-block", peers: [peer], blocked: true });
  }

  /** Every second: rekeys due, blocks that ran out, the cookie secret's rotation. */
  tick(): void {
    flushTrace();
    const now = Date.now();
    const lift: string[] = [];
    for (const [p, b] of this.#blocked) if (now >= b.until) lift.push(p);
    if (lift.length > 0) {
      for (const p of lift) this.#blocked.delete(p);
      this.#o.broadcast({ type: "secure-block", peers: lift, blocked: false });
    }
    if (!this.#setup) return;
    if (now - this.#cookieAt >= COOKIE_SECRET_MS) {
      this.#cookie = { current: newCookieSecret(), previous: this.#cookie.current };
      this.#cookieAt = now;
      this.#setup = { ...this.#setup, cookieSecrets: this.#cookie };
      this.#o.broadcast({ type: "secure-hs-cookie", secrets: this.#cookie });
    }
    for (const [peer, r] of this.#peers) {
      // The initiator of the session rekeys it, and the pair's leader (the lower static key) whichever
      // side did: after crossing handshakes each side's last session is the other's, and with the
      // initiator alone both waited 10 s longer (rekeys every 15 s at a 5 s interval). The other side
      // waits 10 s longer (no crossing handshakes).
      const onTime = r.initiator || leadsRekey(this.#setup.credential.identity.publicKey, r.cert.publicKey);
      if (now - r.createdMs >= this.#effectiveRekeyMs + (onTime ? 0 : REKEY_FOLLOWER_GRACE_MS)) {
        this.#initiate(peer, 0, true);
      }
    }
    if (this.#o.knownPeers) {
      for (const peer of this.#o.knownPeers()) if (!this.#peers.has(peer)) this.#initiate(peer, 0, false);
    }
  }

  #phase(peer: string): { resp?: Phase; answer?: Phase } {
    let p = this.#phases.get(peer);
    if (p === undefined) {
      if (this.#phases.size > 4096) this.#phases.clear();
      p = {};
      this.#phases.set(peer, p);
    }
    return p;
  }

  /** Per-peer secure state for status. */
  peers(): SecurePeerView[] {
    const out: SecurePeerView[] = [];
    const now = Date.now();
    if (this.#setup) {
      for (const [endpoint, s] of this.#peers) {
        out.push({
          endpoint,
          state: "secure",
          subject: s.cert.subject,
          certExpires: new Date(s.cert.notAfter * 1000).toISOString(),
          lastHandshakeSecondsAgo: Math.round((now - s.lastHandshakeMs) / 1000),
          rekeys: s.rekeys,
          ...(this.#hsMs.has(endpoint)
            ? { handshakeMs: Math.round(this.#hsMs.get(endpoint)! * 100) / 100 }
            : {}),
          ...(this.#attemptMs.has(endpoint)
            ? {
              handshakeAttemptMs: Math.round(this.#attemptMs.get(endpoint)!.ms * 100) / 100,
              handshakeAttemptInits: this.#attemptMs.get(endpoint)!.inits,
            }
            : {}),
          ...(this.#phases.has(endpoint) ? { handshakePhases: phasesView(this.#phases.get(endpoint)!) } : {}),
          ...(this.#moved.has(endpoint) ? { at: this.#moved.get(endpoint) } : {}),
          ...(this.#changes.has(endpoint) ? { endpointChanges: this.#changes.get(endpoint) } : {}),
        });
      }
    }
    for (const [endpoint, b] of this.#blocked) {
      out.push({ endpoint, state: "refused", refusedReason: b.reason });
    }
    return out;
  }

  /** Per-peer figures for the metrics. */
  metrics(): {
    endpoint: string;
    state: "secure" | "refused";
    subject?: string;
    certNotAfter?: number;
    lastHandshakeAgeSeconds?: number;
    rekeys?: number;
    handshakeSeconds?: number;
    endpointChanges?: number;
  }[] {
    const now = Date.now();
    const out = [];
    if (this.#setup) {
      for (const [endpoint, s] of this.#peers) {
        out.push({
          endpoint,
          state: "secure" as const,
          subject: s.cert.subject,
          certNotAfter: s.cert.notAfter,
          lastHandshakeAgeSeconds: (now - s.lastHandshakeMs) / 1000,
          rekeys: s.rekeys,
          ...(this.#hsMs.has(endpoint) ? { handshakeSeconds: this.#hsMs.get(endpoint)! / 1000 } : {}),
          endpointChanges: this.#changes.get(endpoint) ?? 0,
        });
      }
    }
    for (const endpoint of this.#blocked.keys()) out.push({ endpoint, state: "refused" as const });
    return out;
  }

  /** Handshake drops by reason, summed over the workers that run handshakes (for the metrics). */
  drops(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const d of this.#hsDrops.values()) {
      for (const [k, v] of Object.entries(d)) out[k] = (out[k] ?? 0) + v;
    }
    return out;
  }

  /** The mode's name. */
  get mode(): SecuritySettings["mode"] {
    return this.#modeName;
  }

  /** Stops the timers. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const t of this.#retries) clearTimeout(t);
    this.#retries.clear();
    for (const peer of [...this.#waiters.keys()]) this.#settle(peer, { peer, error: "stopped" });
  }
}
