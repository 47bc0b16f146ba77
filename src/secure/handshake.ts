/**
 * The secure tunnel's handshakes, run in one place per node (the main isolate): Noise
 * `Noise_XX_25519_AESGCM_BLAKE2s` (noise.ts) in three datagrams (HS_INIT, HS_RESP, HS_FINISH;
 * secure_wire.ts). Each side's static key is its node identity (src/secure/identity.ts) and its Noise
 * payload its certificate (cert.ts); the receiver verifies the certificate with the trust store (CA
 * signature, validity, revocation) and that the certificate's public key is the Noise static key the
 * peer just proved it holds. A completed handshake yields {@link SessionKeys} for every worker's
 * KeyRing (keys.ts), sent by message: one handshake per peer, whatever the number of workers.
 *
 * Cost bounds for strangers: an HS_INIT costs the responder two DH and is answered at most
 * {@link INIT_BURST} times per source, refilled at {@link INIT_PER_SECOND}, and
 * {@link GLOBAL_INIT_PER_SECOND} over the table's nodes (`known`), {@link STRANGER_INIT_PER_SECOND} over
 * everyone else, so a flood from many spoofed strangers does not starve the nodes' handshakes;
 * pending states are capped ({@link MAX_PENDING}; strangers may hold {@link STRANGER_PENDING} of them)
 * and expire after {@link PENDING_MS}. Over budget, an INIT is answered with a cookie instead of DH
 * (cookie.ts): a sender that proves its address (mac2) is served from the proven budgets
 * ({@link PROVEN_BURST}, {@link GLOBAL_PROVEN_PER_SECOND}), which spoofed datagrams cannot spend. INITs
 * without the cluster's mac1 are dropped after one hash.
 * Everything malformed or unauthentic is counted by reason ({@link Handshaker.drops}) and changes
 * nothing else.
 *
 * Rekey: the side that initiated a session initiates again after `rekeyMs` (default 120 s;
 * `TunnelRekeySeconds`), and so does the pair's fixed leader ({@link leadsRekey}: the lower static
 * key) whichever side initiated; the other side after `rekeyMs` + 10 s if neither did. (Crossing
 * handshakes — both sides initiating at once, as at start — leave each side with the other's session
 * last; without the leader both then waited the extra 10 s.) A worker that passed 2^32 messages asks
 * for one too ({@link Handshaker.wantRekey}). Sessions send until
 * `rekeyMs` + 60 s and are accepted until `rekeyMs` + 90 s, so the previous keys cover in-flight
 * datagrams. {@link Handshaker.setTrust} re-checks live sessions against a new trust snapshot and
 * returns the peers to cut off (revocation).
 *
 * @example
 * ```ts
 * import { Handshaker } from "./handshake.ts";
 * import { generateCa, signCertificate } from "./cert.ts";
 * import { generateIdentity } from "./identity.ts";
 * const ca = generateCa("c");
 * const now = Math.floor(Date.now() / 1000);
 * const trust = { caPublicKeys: [ca.publicKey], revokedSerials: [], revokedNodeIds: [], generation: 1 };
 * const node = (id: string) => {
 *   const identity = generateIdentity();
 *   const certificate = signCertificate(ca, { nodeId: id, publicKey: identity.publicKey, notBefore: now - 60, notAfter: now + 3600 });
 *   return new Handshaker({ credential: { identity, certificate }, trust });
 * };
 * const a = node("a"), b = node("b");
 * const m1 = a.initiate("B", 0)!;
 * const m2 = b.handle("A", m1, 0, m1.length).reply!;
 * const r = a.handle("B", m2, 0, m2.length); // a has keys now, r.reply is HS_FINISH
 * const f = b.handle("A", r.reply!, 0, r.reply!.length); // b too
 * console.log(r.established?.peer, f.established?.peer, a.peerState("B")?.cert?.subject); // B A b
 * ```
 * @module
 */
import crypto from "node:crypto";
import {
  generateKeyPair,
  HandshakeState,
  type HandshakeState as NoiseState,
  type KeyPair,
  NoiseError,
} from "./noise.ts";
import {
  decodeHandshake,
  encodeHandshake,
  HandshakeHeader,
  HS_INIT_NOISE_LEN,
  MAX_CERT_LEN,
} from "./secure_wire.ts";
import { MSG_HS_FINISH, MSG_HS_INIT, MSG_HS_RESP } from "../proxy/wire.ts";
import type { SessionKeys } from "./keys.ts";
import { type NodeCredential, type TrustSnapshot, TrustStore, type VerifiedCert } from "./trust.ts";
import { CertError } from "./cert.ts";
import { leadsRekey, REKEY_FOLLOWER_GRACE_MS } from "./rekey.ts";
import {
  addMacs,
  type CaMacKeys,
  checkMac1,
  COOKIE_REPLY_LEN,
  COOKIE_USE_MS,
  CookieJar,
  cookieReceiver,
  type CookieSecrets,
  hasMac2,
  INIT_BODY_LEN,
  INIT_WIRE_LEN,
  isCookieReply,
  keysForCa,
  MAC_LEN,
  openCookieReply,
} from "./cookie.ts";

/** Default interval between rekeys (the issue: at least every 2 minutes). */
export const DEFAULT_REKEY_MS = 120_000;
/** HS_INITs answered per peer in a burst, and refilled per second. */
export const INIT_BURST = 8;
export const INIT_PER_SECOND = 4;
/** HS_INITs answered per second over all peers. */
export const GLOBAL_INIT_PER_SECOND = 200;
/**
 * HS_INITs a second answered with DH from sources outside the table in total (without a cookie's
 * proof): the handshakes run in the tunnel socket's worker, whose CPU the data path shares.
 */
export const STRANGER_INIT_PER_SECOND = 50;
/**
 * COOKIE replies sent per second at most (each costs hashes and an AES-GCM seal, no DH): to the
 * table's nodes' addresses, and to strangers' (fewer: spoofed strangers' addresses rarely answer ARP,
 * and datagrams queued for them count against the tunnel socket's send buffer).
 */
export const COOKIE_REPLIES_PER_SECOND = 500;
export const STRANGER_COOKIE_REPLIES_PER_SECOND = 50;
/**
 * HS_INITs with a valid mac2 (the sender proved its address with our cookie) answered per source in a
 * burst and refilled per second, and over all sources per second: budgets spoofed datagrams cannot spend.
 */
export const PROVEN_BURST = 8;
export const PROVEN_PER_SECOND = 4;
export const GLOBAL_PROVEN_PER_SECOND = 200;
/** Most handshakes in progress (either role). */
export const MAX_PENDING = 1024;
/** Of {@link MAX_PENDING}, most that strangers' HS_INITs may hold (the rest stays for the table's nodes). */
export const STRANGER_PENDING = 768;
/** A handshake not completed within this is forgotten. */
export const PENDING_MS = 5_000;
/** An initiator waits this long before sending a new HS_INIT to the same peer... */
export const RETRY_MS = 1_000;
/**
 * ...except for the scheduler's short first retries to a peer that never answered yet (250 and 500 ms,
 * secure_driver.ts: its INIT was likely lost because the peer was not up yet). Rekeys keep
 * {@link RETRY_MS}: under a flood spoofing the peer's address, every rekey INIT is a DH the flood
 * can make the responder spend.
 */
export const SOON_RETRY_MS = 200;

const PROLOGUE = new TextEncoder().encode("netmanager secure tunnel v1");

/** What one handshake datagram led to. */
export interface HandshakeOutcome {
  /** A datagram to send back to the peer. */
  reply?: Uint8Array;
  /** A session established with the peer: install its keys in every worker. */
  established?: SessionKeys;
  /** The peer proved a key but its certificate was refused (reason): do not fall back to raw with it. */
  refused?: string;
}

/** Per-peer view for status and metrics. */
export interface PeerSecureState {
  /** The peer's verified certificate of the current session. */
  cert?: VerifiedCert;
  /** Wall-clock ms of the last completed handshake (0: none yet). */
  lastHandshakeMs: number;
  /** Handshakes completed after the first. */
  rekeys: number;
  /** The current session: whether we initiated it, and its keys' times. */
  initiator: boolean;
  current?: SessionKeys;
  /** Local indexes of this peer's sessions still accepted. */
  indexes: number[];
}

interface Pending {
  peer: string;
  state: NoiseState;
  localIndex: number;
  remoteIndex: number;
  startedMs: number;
  initiator: boolean;
  /** Initiator: the HS_INIT without MACs and its mac1 (to resend it with a cookie's mac2, once). */
  body?: Uint8Array;
  mac1?: Uint8Array;
  cookied?: boolean;
}

interface Bucket {
  tokens: number;
  atMs: number;
}

/** Options of a {@link Handshaker}. */
export interface HandshakerOptions {
  credential: NodeCredential;
  trust: TrustSnapshot;
  /** Rekey interval (ms), default {@link DEFAULT_REKEY_MS}. */
  rekeyMs?: number;
  /** Wall clock in ms (tests move it). */
  now?: () => number;
  /**
   * Cookies under load (cookie.ts), default true; false: an INIT over budget is only dropped (tests
   * show what the flood does then).
   */
  cookies?: boolean;
  /** Cookie secrets shared with other handshakers of the node (see {@link Handshaker.setCookieSecrets}). */
  cookieSecrets?: CookieSecrets;
}

function refill(b: Bucket, now: number, rate: number, cap: number): void {
  b.tokens = Math.min(cap, b.tokens + ((now - b.atMs) / 1000) * rate);
  b.atMs = now;
}

/** Runs a node's handshakes with all peers (see the module). */
export class Handshaker {
  /** Drops by reason (`hs_malformed`, `hs_rate_limited`, `hs_mac2_invalid`, `hs_unknown_index`, `hs_noise`, `hs_cert_<reason>`, `hs_cert_key_mismatch`, `hs_pending_full`). */
  readonly drops: Record<string, number> = {};
  readonly rekeyMs: number;
  #cred: NodeCredential;
  #trust: TrustStore;
  readonly #now: () => number;
  readonly #pending = new Map<number, Pending>();
  readonly #peers = new Map<string, PeerSecureState>();
  /** Last HS_INIT we sent per peer (ms). */
  readonly #initiated = new Map<string, number>();
  readonly #buckets = new Map<string, Bucket>();
  readonly #global: Bucket = { tokens: STRANGER_INIT_PER_SECOND, atMs: 0 };
  /** The table's nodes' own global budget (strangers cannot drain it). */
  readonly #globalKnown: Bucket = { tokens: GLOBAL_INIT_PER_SECOND, atMs: 0 };
  readonly #hdr = new HandshakeHeader();
  readonly #cookiesOn: boolean;
  #caKeys: CaMacKeys[] = [];
  readonly #jar = new CookieJar();
  /** Cookies peers gave us (to put mac2 on our INITs to them). */
  readonly #cookies = new Map<string, { cookie: Uint8Array; atMs: number }>();
  readonly #proven = new Map<string, Bucket>();
  readonly #globalProven: Bucket = { tokens: GLOBAL_PROVEN_PER_SECOND, atMs: 0 };
  readonly #cookieBudget: Bucket = { tokens: COOKIE_REPLIES_PER_SECOND, atMs: 0 };
  readonly #strangerCookieBudget: Bucket = { tokens: STRANGER_COOKIE_REPLIES_PER_SECOND, atMs: 0 };
  /** The next handshake's ephemeral key pair, made ahead ({@link prepare}); used once, then gone. */
  #spare: KeyPair | undefined;

  /** A handshaker proving `credential` and trusting `trust`. */
  constructor(o: HandshakerOptions) {
    this.#cred = o.credential;
    this.#trust = new TrustStore(o.trust);
    this.rekeyMs = o.rekeyMs ?? DEFAULT_REKEY_MS;
    if (!(this.rekeyMs >= 1000)) throw new RangeError("rekey interval must be at least 1 s");
    this.#now = o.now ?? Date.now;
    this.#cookiesOn = o.cookies ?? true;
    this.#caKeys = o.trust.caPublicKeys.map(keysForCa);
    if (o.cookieSecrets) this.#jar.setSecrets(o.cookieSecrets);
  }

  /**
   * Makes the next handshake's ephemeral key pair now (~0.1 ms), off the critical path: the caller
   * runs it after a handshake's datagram went out, so the next HS_INIT or HS_RESP does not wait for it.
   */
  prepare(): void {
    this.#spare ??= generateKeyPair();
  }

  /** The prepared ephemeral key pair, taken (never used twice), or undefined (the state makes one). */
  #ephemeral(): KeyPair | undefined {
    const e = this.#spare;
    this.#spare = undefined;
    return e;
  }

  /** Checks mac2 and makes cookies with `s` (the node's secrets, rotated by their owner). */
  setCookieSecrets(s: CookieSecrets): void {
    this.#jar.setSecrets(s);
  }

  /** The MAC keys of our first CA (the cluster's), for our INITs. */
  #ownKeys(): CaMacKeys {
    return this.#caKeys[0] ?? keysForCa(new Uint8Array(32));
  }

  /** The wire HS_INIT of `body` to `peer`: mac1, and mac2 with the peer's cookie while it is fresh. */
  #withMacs(peer: string, body: Uint8Array, now: number): Uint8Array {
    const c = this.#cookies.get(peer);
    const fresh = c !== undefined && now - c.atMs < COOKIE_USE_MS;
    if (c && !fresh) this.#cookies.delete(peer);
    return addMacs(body, this.#ownKeys().mac1, fresh ? c.cookie : undefined);
  }

  #drop(reason: string): HandshakeOutcome {
    this.drops[reason] = (this.drops[reason] ?? 0) + 1;
    return {};
  }

  #newIndex(): number {
    for (;;) {
      const i = crypto.randomBytes(4).readUInt32BE(0);
      if (i !== 0 && !this.#pending.has(i) && !this.#indexInUse(i)) return i;
    }
  }

  #indexInUse(i: number): boolean {
    for (const p of this.#peers.values()) if (p.indexes.includes(i)) return true;
    return false;
  }

  #expirePending(now: number): void {
    for (const [i, p] of this.#pending) if (now - p.startedMs >= PENDING_MS) this.#pending.delete(i);
  }

  /** The peer's state for status (undefined: never completed a handshake). */
  peerState(peer: string): PeerSecureState | undefined {
    return this.#peers.get(peer);
  }

  /** All peers with a completed handshake. */
  peers(): IterableIterator<[string, PeerSecureState]> {
    return this.#peers.entries();
  }

  /**
   * Starts a handshake with `peer` (lane key `lane` of the datagram that needs it): the HS_INIT to
   * send, or undefined when one went out less than `gapMs` ({@link RETRY_MS}) ago.
   */
  initiate(peer: string, lane: number, gapMs: number = RETRY_MS): Uint8Array | undefined {
    const now = this.#now();
    const last = this.#initiated.get(peer);
    if (last !== undefined && now - last < gapMs) return undefined;
    this.#expirePending(now);
    if (this.#pending.size >= MAX_PENDING) {
      this.#drop("hs_pending_full");
      return undefined;
    }
    this.#initiated.set(peer, now);
    const state = new HandshakeState({
      pattern: "XX",
      cipher: "AESGCM",
      initiator: true,
      prologue: PROLOGUE,
      s: this.#cred.identity,
      e: this.#ephemeral(),
    });
    const localIndex = this.#newIndex();
    const body = encodeHandshake(MSG_HS_INIT, lane, localIndex, 0, state.writeMessage(new Uint8Array(0)));
    const wire = this.#withMacs(peer, body, now);
    this.#pending.set(localIndex, {
      peer,
      state,
      localIndex,
      remoteIndex: 0,
      startedMs: now,
      initiator: true,
      body,
      mac1: wire.slice(INIT_BODY_LEN, INIT_BODY_LEN + MAC_LEN),
    });
    return wire;
  }

  /**
   * False when the handshake datagram `buf[off .. off+len)` from `peer` is a reply (HS_RESP, HS_FINISH,
   * COOKIE) to no handshake of ours in progress with `peer` — what a flood's reflected cookie replies
   * are — so that the receive path drops it with a lookup (counted `hs_unknown_index`) before it
   * spends a forwarding budget that the real peer's replies need (malformed ones: `hs_malformed`). So
   * what passes answers a handshake of ours: an off-path sender cannot forge that. HS_INITs: always true.
   */
  expects(peer: string, buf: Uint8Array, off: number, len: number): boolean {
    if (len < 1 || buf[off] === MSG_HS_INIT) return true;
    let p: Pending | undefined;
    if (isCookieReply(buf, off, len)) {
      p = len === COOKIE_REPLY_LEN ? this.#pending.get(cookieReceiver(buf, off)) : undefined;
      if (p?.initiator && p.peer === peer && !p.cookied) return true;
    } else if (decodeHandshake(buf, off, len, this.#hdr)) {
      p = this.#pending.get(this.#hdr.receiver);
      if (p && p.peer === peer && p.initiator === (this.#hdr.type === MSG_HS_RESP)) return true;
    } else {
      this.#drop("hs_malformed");
      return false;
    }
    this.#drop("hs_unknown_index");
    return false;
  }

  /**
   * True when the HS_INIT `buf[off .. off+len)` from `peer` carries the cluster's mac1 and a mac2 under
   * our current or previous cookie secret for `peer`: a sender that proved its address. Called only
   * under load (the caller's budget for its class is spent), so the normal path pays no hash;
   * a non-zero mac2 that does not verify counts as `hs_mac2_invalid`.
   */
  provenInit(peer: string, buf: Uint8Array, off: number, len: number): boolean {
    if (!hasMac2(buf, off, len) || !checkMac1(buf, off, len, this.#caKeys)) return false;
    if (this.#jar.checkMac2(buf, off, peer, this.#now())) return true;
    this.#drop("hs_mac2_invalid");
    return false;
  }

  /** An HS_INIT with a valid mac2 from `peer`: a token from the proven budgets. */
  #takeProven(peer: string, now: number): boolean {
    refill(this.#globalProven, now, GLOBAL_PROVEN_PER_SECOND, GLOBAL_PROVEN_PER_SECOND);
    let b = this.#proven.get(peer);
    if (!b) {
      if (this.#proven.size >= 4096) this.#proven.clear();
      b = { tokens: PROVEN_BURST, atMs: now };
      this.#proven.set(peer, b);
    }
    refill(b, now, PROVEN_PER_SECOND, PROVEN_BURST);
    if (b.tokens < 1 || this.#globalProven.tokens < 1) return false;
    b.tokens--;
    this.#globalProven.tokens--;
    return true;
  }

  /** A COOKIE reply we got for one of our INITs: its mac2'd resend (once per INIT). */
  #onCookie(peer: string, buf: Uint8Array, off: number, len: number, now: number): HandshakeOutcome {
    if (len !== COOKIE_REPLY_LEN) return this.#drop("hs_malformed");
    const p = this.#pending.get(cookieReceiver(buf, off));
    if (!p || !p.initiator || p.peer !== peer || !p.body || !p.mac1 || p.cookied) {
      return this.#drop("hs_unknown_index");
    }
    for (const k of this.#caKeys) {
      const r = openCookieReply(buf, off, len, k, p.mac1);
      if (!r) continue;
      p.cookied = true;
      if (this.#cookies.size >= 4096) this.#cookies.clear();
      this.#cookies.set(peer, { cookie: r.cookie, atMs: now });
      return { reply: addMacs(p.body, k.mac1, r.cookie) };
    }
    return this.#drop("hs_cookie_invalid");
  }

  #takeToken(peer: string, now: number, known: boolean): boolean {
    const global = known ? this.#globalKnown : this.#global;
    const rate = known ? GLOBAL_INIT_PER_SECOND : STRANGER_INIT_PER_SECOND;
    refill(global, now, rate, rate);
    let b = this.#buckets.get(peer);
    if (!b) {
      if (this.#buckets.size >= 4096) this.#buckets.clear(); // peers only: bounded by the table anyway
      b = { tokens: INIT_BURST, atMs: now };
      this.#buckets.set(peer, b);
    }
    refill(b, now, INIT_PER_SECOND, INIT_BURST);
    if (b.tokens < 1 || global.tokens < 1) return false;
    b.tokens--;
    global.tokens--;
    return true;
  }

  /** Verifies the peer's certificate `payload` against the static key Noise authenticated. */
  #verify(payload: Uint8Array, remoteStatic: Uint8Array | undefined, now: number): VerifiedCert | string {
    if (payload.length === 0 || payload.length > MAX_CERT_LEN || !remoteStatic) return "hs_cert_missing";
    let v: VerifiedCert;
    try {
      v = this.#trust.verify(payload, Math.floor(now / 1000));
    } catch (e) {
      if (e instanceof CertError) return `hs_cert_${e.reason}`;
      return "hs_cert_invalid";
    }
    if (v.publicKey.length !== remoteStatic.length || !crypto.timingSafeEqual(v.publicKey, remoteStatic)) {
      return "hs_cert_key_mismatch";
    }
    return v;
  }

  #establish(p: Pending, cert: VerifiedCert, now: number): SessionKeys {
    const [i2r, r2i] = p.state.split();
    const keys: SessionKeys = {
      peer: p.peer,
      localIndex: p.localIndex,
      remoteIndex: p.remoteIndex,
      sendKey: p.initiator ? i2r : r2i,
      recvKey: p.initiator ? r2i : i2r,
      createdMs: now,
      sendUntilMs: now + this.rekeyMs + 60_000,
      expiresMs: now + this.rekeyMs + 90_000,
    };
    const prev = this.#peers.get(p.peer);
    const indexes = (prev?.indexes ?? []).filter((i) => {
      const c = prev?.current;
      return c !== undefined && i === c.localIndex; // keep the one previous session, drop older
    });
    indexes.push(p.localIndex);
    this.#peers.set(p.peer, {
      cert,
      lastHandshakeMs: now,
      rekeys: prev ? prev.rekeys + 1 : 0,
      initiator: p.initiator,
      current: keys,
      indexes,
    });
    this.#initiated.delete(p.peer);
    // Our other HS_INITs to this peer still open are superseded by the one answered: the peer's answers
    // to them (a peer that read several queued INITs at its start, retries included, answers each)
    // complete nothing more. (Safe: a responder installs keys only at the FINISH we will not send. A
    // crossing handshake the peer initiated still completes: both sides count it.)
    if (p.initiator) {
      for (const [i, q] of this.#pending) if (q.peer === p.peer && q.initiator) this.#pending.delete(i);
    }
    return keys;
  }

  /**
   * Handles a handshake datagram `buf[off .. off+len)` from `peer` (an underlay endpoint; `known`:
   * one of the table's nodes). Never throws on datagram contents.
   */
  handle(peer: string, buf: Uint8Array, off: number, len: number, known = false): HandshakeOutcome {
    const h = this.#hdr;
    const now = this.#now();
    if (isCookieReply(buf, off, len)) return this.#onCookie(peer, buf, off, len, now);
    let macKeys: CaMacKeys | undefined;
    if (len >= 1 && buf[off] === MSG_HS_INIT) {
      // mac1 first: an INIT from outside the cluster costs one hash.
      macKeys = checkMac1(buf, off, len, this.#caKeys);
      if (!macKeys) return this.#drop(len === INIT_WIRE_LEN ? "hs_mac1" : "hs_malformed");
      len = INIT_BODY_LEN;
    }
    if (!decodeHandshake(buf, off, len, h)) return this.#drop("hs_malformed");
    this.#expirePending(now);
    const noise = buf.slice(h.noiseOffset, h.noiseOffset + h.noiseLength);
    if (h.type === MSG_HS_INIT) {
      if (noise.length !== HS_INIT_NOISE_LEN) return this.#drop("hs_malformed");
      let proven = false;
      if (!this.#takeToken(peer, now, known)) {
        // Under load: only senders that prove their address (our cookie's mac2) get DH work.
        if (!this.#cookiesOn) return this.#drop("hs_rate_limited");
        // (A flood's INITs carry no mac2: no hash spent on checking zeros.)
        if (hasMac2(buf, off, INIT_WIRE_LEN) && this.#jar.checkMac2(buf, off, peer, now)) {
          if (!this.#takeProven(peer, now)) return this.#drop("hs_rate_limited");
          proven = true;
        } else {
          const rate = known ? COOKIE_REPLIES_PER_SECOND : STRANGER_COOKIE_REPLIES_PER_SECOND;
          const budget = known ? this.#cookieBudget : this.#strangerCookieBudget;
          refill(budget, now, rate, rate);
          if (budget.tokens < 1) return this.#drop("hs_rate_limited");
          budget.tokens--;
          this.#drop("hs_cookie_sent");
          return { reply: this.#jar.reply(buf, off, peer, h.lane, h.sender, macKeys!, now) };
        }
      }
      if (this.#pending.size >= (known || proven ? MAX_PENDING : STRANGER_PENDING)) {
        return this.#drop("hs_pending_full");
      }
      const state = new HandshakeState({
        pattern: "XX",
        cipher: "AESGCM",
        initiator: false,
        prologue: PROLOGUE,
        s: this.#cred.identity,
        e: this.#ephemeral(),
      });
      try {
        state.readMessage(noise);
        const localIndex = this.#newIndex();
        const msg2 = state.writeMessage(this.#cred.certificate);
        this.#pending.set(localIndex, {
          peer,
          state,
          localIndex,
          remoteIndex: h.sender,
          startedMs: now,
          initiator: false,
        });
        return { reply: encodeHandshake(MSG_HS_RESP, h.lane, localIndex, h.sender, msg2) };
      } catch (e) {
        if (e instanceof NoiseError) return this.#drop("hs_noise");
        throw e;
      }
    }
    const p = this.#pending.get(h.receiver);
    const wantInitiator = h.type === MSG_HS_RESP;
    if (!p || p.peer !== peer || p.initiator !== wantInitiator) return this.#drop("hs_unknown_index");
    // From here a failure ends this handshake: its state cannot go on after a failed read.
    try {
      const payload = p.state.readMessage(noise);
      const v = this.#verify(payload, p.state.remoteStatic, now);
      if (typeof v === "string") {
        this.#pending.delete(h.receiver);
        this.#drop(v);
        return { refused: v };
      }
      if (h.type === MSG_HS_RESP) {
        p.remoteIndex = h.sender;
        const msg3 = p.state.writeMessage(this.#cred.certificate);
        this.#pending.delete(h.receiver);
        const established = this.#establish(p, v, now);
        return {
          reply: encodeHandshake(MSG_HS_FINISH, h.lane, p.localIndex, p.remoteIndex, msg3),
          established,
        };
      }
      if (h.sender !== p.remoteIndex) {
        this.#pending.delete(h.receiver);
        return this.#drop("hs_unknown_index");
      }
      this.#pending.delete(h.receiver);
      return { established: this.#establish(p, v, now) };
    } catch (e) {
      this.#pending.delete(h.receiver);
      if (e instanceof NoiseError) return this.#drop("hs_noise");
      throw e;
    }
  }

  /** Peers whose current session is due for a rekey at `now` (the caller initiates with them). */
  due(): string[] {
    const now = this.#now();
    const out: string[] = [];
    for (const [peer, s] of this.#peers) {
      if (!s.current) continue;
      const age = now - s.current.createdMs;
      const onTime = s.initiator ||
        (s.cert !== undefined && leadsRekey(this.#cred.identity.publicKey, s.cert.publicKey));
      if (age >= this.rekeyMs + (onTime ? 0 : REKEY_FOLLOWER_GRACE_MS)) out.push(peer);
    }
    return out;
  }

  /** A worker passed the message limit with `peer`: make it due now. */
  wantRekey(peer: string): void {
    const s = this.#peers.get(peer);
    if (s?.current) s.current = { ...s.current, createdMs: -Infinity };
  }

  /** Forgets `peer` (it left the table); its workers' keys are removed by the caller. */
  forget(peer: string): void {
    this.#peers.delete(peer);
    this.#initiated.delete(peer);
    for (const [i, p] of this.#pending) if (p.peer === peer) this.#pending.delete(i);
  }

  /**
   * Replaces the trust snapshot (and the credential, when given) and re-checks every live session's
   * certificate: returns the peers whose certificate is now revoked or expired. The caller removes
   * their keys from every worker; they must handshake again (and will be refused).
   */
  setTrust(trust: TrustSnapshot, credential?: NodeCredential): string[] {
    this.#trust = new TrustStore(trust);
    this.#caKeys = trust.caPublicKeys.map(keysForCa);
    if (credential) this.#cred = credential;
    const now = Math.floor(this.#now() / 1000);
    const cut: string[] = [];
    for (const [peer, s] of this.#peers) {
      if (s.cert && (this.#trust.isRevoked(s.cert) || now >= s.cert.notAfter)) cut.push(peer);
    }
    for (const peer of cut) this.forget(peer);
    return cut;
  }

  /** Handshakes in progress. */
  get pending(): number {
    return this.#pending.size;
  }
}

/**
 * Runs one handshake of this node with itself (two throwaway {@link Handshaker}s, nothing sent) so
 * that the first real handshake does not pay for compiling and loading its crypto paths (X25519,
 * AES-GCM, BLAKE2s, the certificate check: ~30–50 ms cold on the first use, ~1 ms warm). Returns
 * its duration (ms); never throws (a credential the trust refuses still warms the same paths).
 *
 * @example
 * ```ts
 * import { warmUp } from "./handshake.ts";
 * import { generateCa, signCertificate } from "./cert.ts";
 * import { generateIdentity } from "./identity.ts";
 * const ca = generateCa("c");
 * const identity = generateIdentity();
 * const now = Math.floor(Date.now() / 1000);
 * const certificate = signCertificate(ca, { nodeId: "a", publicKey: identity.publicKey, notBefore: now - 60, notAfter: now + 3600 });
 * const ms = warmUp({ identity, certificate }, { caPublicKeys: [ca.publicKey], revokedSerials: [], revokedNodeIds: [], generation: 1 });
 * console.log(ms >= 0); // true
 * ```
 */
export function warmUp(
  credential: NodeCredential,
  trust: TrustSnapshot,
  onKeys?: (keys: SessionKeys) => void,
): number {
  const t0 = performance.now();
  try {
    const a = new Handshaker({ credential, trust }), b = new Handshaker({ credential, trust });
    const m1 = a.initiate("warm-up", 0);
    const m2 = m1 && b.handle("warm-up", m1, 0, m1.length, true).reply;
    const r = m2 ? a.handle("warm-up", m2, 0, m2.length, true) : undefined;
    if (r?.established) onKeys?.(r.established);
    if (r?.reply) b.handle("warm-up", r.reply, 0, r.reply.length, true);
  } catch {
    // only a warm-up
  }
  return performance.now() - t0;
}
