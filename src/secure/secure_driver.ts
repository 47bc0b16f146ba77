/**
 * The secure tunnel in the main isolate: owns the node's {@link Handshaker}, answers the workers'
 * requests (a handshake datagram received, a peer that needs a session, a rekey) and hands every new
 * session's keys to all workers; sends its handshake datagrams through worker 0's socket. One
 * handshake per peer, whatever the number of workers (see secure_layer.ts for the worker side).
 *
 * - Peers that never answer (Oakestra's Go nodes, netmanager nodes with `TunnelSecurity: off`) are
 *   asked again with a backoff (1 s doubling to 60 s); in `prefer` they stay raw meanwhile.
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
import { Handshaker, warmUp } from "./handshake.ts";
import { newSendCounters, type SessionKeys } from "./keys.ts";
import { type SecureMode, secureModeOf, type SecureUp } from "./secure_layer.ts";
import type { SecuritySettings } from "./node_security.ts";
import type { SecureInit, ToWorker } from "../proxy/messages.ts";
import { parseEndpoint } from "../proxy/peers.ts";
import { MSG_HS_INIT, MSG_HS_RESP } from "../proxy/wire.ts";
import { isCookieReply } from "./cookie.ts";
import { logger } from "../log.ts";

const log = logger("secure");

/** Warm-up handshakes run when a credential loads (see {@link SecureDriver.set}). */
const WARM_ROUNDS = 20;
/** How long a peer whose certificate was refused stays blocked before it may try again. */
export const BLOCK_MS = 30_000;
const BACKOFF_MAX_MS = 60_000;

interface Phase {
  hopMs: number;
  cpuMs: number;
}

function phasesView(p: { resp?: Phase; answer?: Phase }): NonNullable<SecurePeerView["handshakePhases"]> {
  const r = (x: number) => Math.round(x * 100) / 100;
  const out: NonNullable<SecurePeerView["handshakePhases"]> = {};
  if (p.resp && Number.isFinite(p.resp.hopMs)) out.hopMs = r(p.resp.hopMs);
  if (p.resp) out.cpuMs = r(p.resp.cpuMs);
  if (p.answer && Number.isFinite(p.answer.hopMs)) out.answerHopMs = r(p.answer.hopMs);
  if (p.answer) out.answerCpuMs = r(p.answer.cpuMs);
  return out;
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
  /** Data-plane drops with this peer by reason (replayed, forged, plain data from it while secure). */
  drops?: Record<string, number>;
  /**
   * Where the last handshakes' time went on this node (ms): `hopMs`/`cpuMs` of the HS_RESP of the
   * last one it initiated (the hop from the worker to the main isolate, the crypto and FINAL's send),
   * `answerHopMs`/`answerCpuMs` of the last HS_INIT it answered. `handshakeMs` minus these is the
   * wire and the peer.
   */
  handshakePhases?: { hopMs?: number; cpuMs?: number; answerHopMs?: number; answerCpuMs?: number };
  /** Where it is reached now, when its session followed it away from `endpoint` (roaming, NAT rebinding). */
  at?: string;
  /** Times its session followed it to another endpoint. */
  endpointChanges?: number;
}

/** Options of a {@link SecureDriver}. */
export interface SecureDriverOptions {
  /** Posts to every worker. */
  broadcast: (m: ToWorker) => void;
  /** Posts to worker 0 (it sends the handshake datagrams when {@link sendNow} cannot). */
  toLane0: (m: ToWorker) => void;
  /**
   * Sends a handshake datagram at once from this isolate (the tunnel socket); false: it could not.
   * Spares a message hop per handshake datagram (the handshake's latency).
   */
  sendNow?: (m: Extract<ToWorker, { type: "secure-send" }>) => boolean;
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
  #hs: Handshaker | undefined;
  readonly #o: SecureDriverOptions;
  /**
   * Rekey interval (ms) of the sessions set up from the next {@link set} on; the environment's
   * `NETMANAGER_REKEY_SECONDS`, when set, overrides it (tests).
   */
  rekeyMs: number;
  readonly #attempts = new Map<string, { n: number; nextAt: number }>();
  readonly #blocked = new Map<string, { until: number; reason: string }>();
  readonly #keys = new Map<string, SessionKeys[]>();
  /** When this node sent the first HS_INIT of a handshake still open with the peer (performance.now()). */
  readonly #hsStarted = new Map<string, number>();
  /** Duration of the last handshake this node initiated per peer (ms). */
  readonly #hsMs = new Map<string, number>();
  /** The last HS_RESP handled: its hop from the worker, and the time handling it (ms). */
  #lastHs: Phase = { hopMs: NaN, cpuMs: NaN };
  /** Per peer: the phases of the last handshake this node initiated (`resp`) and answered (`answer`). */
  readonly #phases = new Map<string, { resp?: Phase; answer?: Phase }>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #warmTimer: ReturnType<typeof setTimeout> | undefined;
  #warnedNoCredential = false;
  /** Peers followed to another endpoint (peer key → endpoint key): handshakes go there too. */
  readonly #moved = new Map<string, string>();
  /** Per peer: times it was followed to another endpoint. */
  readonly #changes = new Map<string, number>();
  /** Endpoint changes of all peers. */
  endpointChanges = 0;

  /** A driver posting through `o` (mode off until {@link set}). */
  constructor(o: SecureDriverOptions) {
    this.#o = o;
    this.rekeyMs = o.rekeyMs ?? 120_000;
  }

  /** Applies settings (start, credential or trust updates). */
  set(s: SecuritySettings): void {
    const mode = secureModeOf(s.mode);
    this.#mode = mode;
    this.#modeName = s.mode;
    const workerMode = !s.credential && mode === 1 ? 0 : mode;
    const modeChanged = workerMode !== this.#workerMode;
    this.#workerMode = workerMode;
    if (mode === 0) {
      this.#hs = undefined;
      this.#keys.clear();
      this.#blocked.clear();
      if (this.#timer !== undefined) clearInterval(this.#timer);
      this.#timer = undefined;
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
      this.#hs = undefined;
    } else if (this.#hs) {
      const cut = this.#hs.setTrust(s.trust, s.credential);
      if (cut.length > 0) {
        log.warn("peers' certificates revoked: their sessions are closed", { peers: cut });
        for (const p of cut) {
          this.#keys.delete(p);
          this.#blocked.set(p, { until: Date.now() + BLOCK_MS, reason: "revoked" });
        }
        this.#o.broadcast({ type: "secure-remove", peers: cut, forget: false });
        this.#o.broadcast({ type: "secure-block", peers: cut, blocked: true });
      }
    } else {
      const env = Number(Deno.env.get("NETMANAGER_REKEY_SECONDS"));
      const rekeyMs = env > 0 ? env * 1000 : this.rekeyMs;
      // NETMANAGER_HS_COOKIES=off (tests: what a flood does without them) answers no cookies.
      const cookies = Deno.env.get("NETMANAGER_HS_COOKIES") !== "off";
      this.#hs = new Handshaker({ credential: s.credential, trust: s.trust, rekeyMs, cookies });
      // The first handshake with a peer should not pay for cold crypto paths (tens of ms): one round
      // now, more in the background, a turn of the event loop each, until a handshake datagram arrives (V8
      // optimizes after several runs: a first handshake's CPU ~5 ms after one round, ~2.5 ms after 20;
      // scripts/bench_hs.ts).
      log.debug("handshake paths warmed up", { ms: Math.round(warmUp(s.credential, s.trust) * 10) / 10 });
      this.#warmMore(s, WARM_ROUNDS - 1);
      queueMicrotask(() => this.tick()); // sessions with the table's nodes right away
    }
    if (modeChanged) this.#o.broadcast({ type: "secure-mode", mode: workerMode });
    this.#timer ??= setInterval(() => this.tick(), 1000);
  }

  #warmMore(s: SecuritySettings, left: number): void {
    if (left <= 0 || !s.credential) return;
    this.#warmTimer = setTimeout(() => {
      this.#warmTimer = undefined;
      if (!this.#hs) return; // (turned off meanwhile)
      warmUp(s.credential!, s.trust);
      this.#warmMore(s, left - 1);
    }, 0);
  }

  /**
   * What a (re)started worker begins with. A restarted one (`restart`) gets the keys to send with
   * only (its replay windows are lost), and every peer is rekeyed at once so that it can receive again.
   */
  init(restart = false): SecureInit | undefined {
    if (this.#workerMode === 0) return undefined;
    if (restart && this.#hs) {
      for (const peer of this.#keys.keys()) this.#initiate(peer, 0, true);
    }
    return {
      mode: this.#workerMode,
      keys: [...this.#keys.values()].flat(),
      blocked: [...this.#blocked.keys()],
      ...(this.#moved.size > 0 ? { moved: [...this.#moved] } : {}),
      ...(restart ? { sendOnly: true } : {}),
    };
  }

  /** A handshake datagram arrived: no warm-up round may delay its answer (they only matter before the first). */
  #stopWarming(): void {
    if (this.#warmTimer !== undefined) clearTimeout(this.#warmTimer);
    this.#warmTimer = undefined;
  }

  /** Handles a worker's message of the secure layer. */
  onWorker(m: SecureUp): void {
    const hs = this.#hs;
    if (!hs) return;
    if (m.type === "secure-hs") this.#stopWarming();
    switch (m.type) {
      case "secure-hs": {
        if (this.#blocked.has(m.peer)) return;
        const t = performance.timeOrigin + performance.now();
        const out = hs.handle(m.peer, m.bytes, 0, m.bytes.length, m.known);
        if (out.reply) this.#send(m.peer, out.reply);
        // Where a handshake's time goes on this node: the worker → main isolate hop, and the crypto
        // (with the reply's send) here — for the INIT it answered, and the RESP of one it initiated.
        const ph = {
          hopMs: m.at !== undefined ? t - m.at : NaN,
          cpuMs: performance.timeOrigin + performance.now() - t,
        };
        if (m.bytes[0] === MSG_HS_INIT && out.reply && !isCookieReply(out.reply, 0, out.reply.length)) {
          this.#phase(m.peer).answer = ph;
        } else if (m.bytes[0] === MSG_HS_RESP) this.#lastHs = ph;
        if (out.established) this.#established(out.established);
        if (out.refused) this.#refuse(m.peer, out.refused);
        break;
      }
      case "secure-want":
        this.#initiate(m.peer, m.lane, false);
        break;
      case "secure-rekey":
        hs.wantRekey(m.peer);
        break;
      case "secure-moved":
        this.#follow(m.peer, m.endpoint);
        break;
    }
  }

  /**
   * A worker followed `peer` to `endpoint` (a datagram authenticated under its session came from
   * there): every worker and this isolate's handshakes send there from now on. Reports of the same
   * move from several workers count once.
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

  #initiate(peer: string, lane: number, rekey: boolean): void {
    const hs = this.#hs;
    if (!hs || this.#blocked.has(peer)) return;
    const now = Date.now();
    const a = this.#attempts.get(peer) ?? { n: 0, nextAt: 0 };
    if (!rekey && now < a.nextAt) return;
    const bytes = hs.initiate(peer, lane);
    if (!bytes) return;
    if (this.#hsStarted.size > 4096) this.#hsStarted.clear();
    this.#hsStarted.set(peer, performance.now()); // each HS_INIT starts a new handshake (new ephemeral key)
    a.n++;
    a.nextAt = now + Math.min(BACKOFF_MAX_MS, 1000 * 2 ** Math.min(a.n - 1, 6));
    this.#attempts.set(peer, a);
    this.#send(peer, bytes);
  }

  #send(peer: string, bytes: Uint8Array): void {
    let ep;
    try {
      ep = parseEndpoint(this.#moved.get(peer) ?? peer);
    } catch {
      return;
    }
    const m = {
      type: "secure-send" as const,
      bytes,
      family: ep.family,
      addr4: ep.ip4,
      ...(ep.ip6 ? { addr6: ep.ip6 } : {}),
      port: ep.port,
    };
    if (this.#o.sendNow?.(m)) return;
    this.#o.toLane0(m);
  }

  #established(k: SessionKeys): void {
    k.sendCounters ??= newSendCounters(); // shared by the workers, kept across their restarts
    const first = !this.#keys.has(k.peer);
    // Keep the previous session for in-flight datagrams; older ones expire in the workers.
    const list = (this.#keys.get(k.peer) ?? []).filter((x) => x.expiresMs > Date.now()).slice(-1);
    list.push(k);
    this.#keys.set(k.peer, list);
    this.#attempts.delete(k.peer);
    this.#o.broadcast({ type: "secure-keys", keys: [k] });
    const st = this.#hs?.peerState(k.peer);
    // Only a session this node initiated ends its HS_INIT's handshake (the peer's own may cross it).
    const t0 = st?.initiator ? this.#hsStarted.get(k.peer) : undefined;
    if (t0 !== undefined) {
      this.#hsStarted.delete(k.peer);
      if (this.#hsMs.size > 4096) this.#hsMs.clear();
      const ms = performance.now() - t0;
      this.#hsMs.set(k.peer, ms);
      const r = (x: number) => Math.round(x * 100) / 100;
      this.#phase(k.peer).resp = this.#lastHs;
      log.debug("handshake timed", {
        peer: k.peer,
        ms: r(ms),
        hopMs: r(this.#lastHs.hopMs),
        cpuMs: r(this.#lastHs.cpuMs),
      });
    }
    if (first) log.info("secure session established", { peer: k.peer, subject: st?.cert?.subject });
    else log.debug("secure session rekeyed", { peer: k.peer, rekeys: st?.rekeys });
  }

  #refuse(peer: string, reason: string): void {
    if (!this.#blocked.has(peer)) {
      log.warn("peer's tunnel certificate refused: no traffic with it", { peer, reason });
    }
    this.#blocked.set(peer, { until: Date.now() + BLOCK_MS, reason });
    this.#keys.delete(peer);
    this.#o.broadcast({ type: "secure-remove", peers: [peer], forget: false });
    this.#o.broadcast({ type: "secure-block", peers: [peer], blocked: true });
  }

  /** Every second: rekeys due, blocks that ran out. */
  tick(): void {
    const hs = this.#hs;
    const now = Date.now();
    const lift: string[] = [];
    for (const [p, b] of this.#blocked) if (now >= b.until) lift.push(p);
    if (lift.length > 0) {
      for (const p of lift) this.#blocked.delete(p);
      this.#o.broadcast({ type: "secure-block", peers: lift, blocked: false });
    }
    if (!hs) return;
    for (const peer of hs.due()) this.#initiate(peer, 0, true);
    if (this.#o.knownPeers) {
      for (const peer of this.#o.knownPeers()) if (!hs.peerState(peer)) this.#initiate(peer, 0, false);
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
    if (this.#hs) {
      for (const [endpoint, s] of this.#hs.peers()) {
        out.push({
          endpoint,
          state: "secure",
          ...(s.cert
            ? { subject: s.cert.subject, certExpires: new Date(s.cert.notAfter * 1000).toISOString() }
            : {}),
          lastHandshakeSecondsAgo: Math.round((now - s.lastHandshakeMs) / 1000),
          rekeys: s.rekeys,
          ...(this.#hsMs.has(endpoint)
            ? { handshakeMs: Math.round(this.#hsMs.get(endpoint)! * 100) / 100 }
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
    if (this.#hs) {
      for (const [endpoint, s] of this.#hs.peers()) {
        out.push({
          endpoint,
          state: "secure" as const,
          ...(s.cert ? { subject: s.cert.subject, certNotAfter: s.cert.notAfter } : {}),
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

  /** Handshake drops by reason (for the metrics). */
  drops(): Record<string, number> {
    return { ...(this.#hs?.drops ?? {}) };
  }

  /** The mode's name. */
  get mode(): SecuritySettings["mode"] {
    return this.#modeName;
  }

  /** Stops the timers. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stopWarming();
  }
}
