/**
 * The secure tunnel's data keys in one data-plane worker: seal and open SECURE data datagrams
 * (secure_wire.ts) with AES-256-GCM through libcrypto (ffi/libcrypto.ts: one context per key and
 * direction, reused — measured 5–20× faster than node:crypto per datagram, `scripts/bench_aead.ts`).
 *
 * Keys come from the handshake, which runs in one place (the main isolate, handshake.ts) and are
 * installed into every worker by message ({@link SessionKeys} is structured-cloneable). So that
 * workers sharing one key never repeat a nonce, each counts in its own space: the counter's top byte
 * is the worker's lane ({@link KeyRing}'s `lane`), the low 56 bits its message number. A receiver keeps
 * one replay window per (session, sending lane): its datagrams arrive at whichever worker the lane key
 * steers them to, and each worker checks only what it receives.
 *
 * Lifetimes (after WireGuard): a session sends for {@link SessionKeys.sendUntilMs} or
 * {@link REKEY_AFTER_MESSAGES} per lane (then {@link KeyRing.wantsRekey} asks for a new handshake) and
 * is accepted until {@link SessionKeys.expiresMs}: the previous session stays installed for in-flight
 * datagrams while a new one takes over sending.
 *
 * @example
 * ```ts
 * import { KeyRing } from "./keys.ts";
 * const k = crypto.getRandomValues(new Uint8Array(32)), now = Date.now();
 * const a = new KeyRing(0), b = new KeyRing(1);
 * a.install({ peer: "b", localIndex: 1, remoteIndex: 2, sendKey: k, recvKey: k, createdMs: now, sendUntilMs: now + 120e3, expiresMs: now + 180e3 });
 * b.install({ peer: "a", localIndex: 2, remoteIndex: 1, sendKey: k, recvKey: k, createdMs: now, sendUntilMs: now + 120e3, expiresMs: now + 180e3 });
 * const buf = new Uint8Array(16 + 5 + 16);
 * buf.set([0x45, 1, 2, 3, 4], 16);
 * const n = a.seal("b", buf, 0, 5, 0, now); // 37
 * console.log(b.open(buf, 0, n, now), b.peer); // 5 "a" (the datagram at buf[16 .. 21))
 * ```
 * @module
 */
import { EvpAead } from "../../ffi/libcrypto.ts";
import { ReplayWindow } from "./replay.ts";
import {
  counterLane,
  counterValue,
  decodeSecureHeader,
  SECURE_HEADER_LEN,
  SECURE_OVERHEAD,
  SecureHeader,
  writeSecureHeader,
} from "./secure_wire.ts";

/** Messages per lane after which the session asks for a rekey (the issue: after 2^32 messages). */
export const REKEY_AFTER_MESSAGES = 2 ** 32;
/** Messages per lane after which a session refuses to send (the rekey must have happened). */
export const REJECT_AFTER_MESSAGES = 2 ** 32 + 2 ** 24;
/** Most lanes (the counter's top byte). */
export const MAX_LANES = 256;

/** One session's keys as the handshake hands them to the workers (structured-cloneable). */
export interface SessionKeys {
  /** The peer's endpoint key (how the data plane names a peer). */
  peer: string;
  /** Our index (the peer writes it into its datagrams) and the peer's (we write it). */
  localIndex: number;
  remoteIndex: number;
  sendKey: Uint8Array;
  recvKey: Uint8Array;
  /** Wall-clock times (ms): established, last send, last accepted receive. */
  createdMs: number;
  sendUntilMs: number;
  expiresMs: number;
  /**
   * Messages sent per lane ({@link MAX_LANES} float64 slots), shared by the main isolate with every
   * worker: a restarted worker continues its lane's count, so it never repeats a nonce and the peer's
   * replay window accepts it. Absent (tests): each ring counts on its own.
   */
  sendCounters?: SharedArrayBuffer;
}

/** A {@link SessionKeys.sendCounters} buffer. */
export function newSendCounters(): SharedArrayBuffer {
  return new SharedArrayBuffer(8 * MAX_LANES);
}

/** Why {@link KeyRing.open} refused a datagram (negative results). */
export const OpenResult = {
  /** Not a SECURE data datagram (bad header, too short). */
  MALFORMED: -1,
  /** No session with that receiver index (never, or expired and removed). */
  NO_SESSION: -2,
  /** The session is past its lifetime. */
  EXPIRED: -3,
  /** The counter was seen or is older than the window. */
  REPLAY: -4,
  /** The tag did not verify (forged, corrupted, or another key). */
  AUTH: -5,
} as const;

/** Drop reason names of the {@link OpenResult} values, by `-result`. */
export const OPEN_RESULT_NAMES: readonly string[] = [
  "",
  "secure_malformed",
  "secure_no_session",
  "secure_expired",
  "secure_replay",
  "secure_auth",
];

class DataSession {
  readonly seal: EvpAead;
  readonly open: EvpAead;
  /** Messages sent by this lane (one slot of the shared counters, or a private one). */
  readonly #sent: Float64Array;
  readonly #lane: number;
  readonly windows: (ReplayWindow | undefined)[] = [];
  constructor(readonly keys: SessionKeys, lane: number, readonly sendOnly: boolean) {
    this.seal = new EvpAead("aes-256-gcm", keys.sendKey, true);
    this.open = new EvpAead("aes-256-gcm", keys.recvKey, false);
    this.#sent = keys.sendCounters ? new Float64Array(keys.sendCounters) : new Float64Array(MAX_LANES);
    this.#lane = lane;
  }
  get sent(): number {
    return this.#sent[this.#lane];
  }
  /** The next message number of this lane (only this lane's worker writes its slot). */
  next(): number {
    const n = this.#sent[this.#lane];
    this.#sent[this.#lane] = n + 1;
    return n;
  }
  close(): void {
    this.seal.close();
    this.open.close();
  }
}

/** One worker's sessions (see the module). */
export class KeyRing {
  /** The peer of the last datagram {@link open} accepted. */
  peer = "";
  /** The session's peer of the last datagram {@link open} refused as expired, replayed or forged ("" if none). */
  refusedPeer = "";
  /** Peers whose current session passed {@link REKEY_AFTER_MESSAGES} here (the owner asks for a handshake). */
  readonly wantsRekey: Set<string> = new Set();
  readonly #byIndex = new Map<number, DataSession>();
  readonly #current = new Map<string, DataSession>();
  readonly #nonce = new Uint8Array(12);
  readonly #header = new SecureHeader();

  /** A ring for the worker of `lane` (0..255). */
  constructor(readonly lane: number) {
    if (!Number.isInteger(lane) || lane < 0 || lane >= MAX_LANES) {
      throw new RangeError(`lane ${lane} out of range`);
    }
  }

  /**
   * Installs a new session; it becomes the peer's sending session (the previous stays for receiving).
   * `sendOnly`: a restarted worker's sessions from before its start — its replay windows are gone, so
   * it refuses their datagrams (the main isolate rekeys every peer on a restart).
   */
  install(keys: SessionKeys, sendOnly = false): void {
    this.#byIndex.get(keys.localIndex)?.close();
    const s = new DataSession(keys, this.lane, sendOnly);
    this.#byIndex.set(keys.localIndex, s);
    const cur = this.#current.get(keys.peer);
    if (!cur || cur.keys.createdMs <= keys.createdMs) this.#current.set(keys.peer, s);
    this.wantsRekey.delete(keys.peer);
  }

  /** Removes every session of `peer` (revoked, or the peer left). */
  removePeer(peer: string): void {
    for (const [i, s] of this.#byIndex) {
      if (s.keys.peer === peer) {
        s.close();
        this.#byIndex.delete(i);
      }
    }
    this.#current.delete(peer);
    this.wantsRekey.delete(peer);
  }

  /** Removes sessions past their lifetime. */
  expire(nowMs: number): void {
    for (const [i, s] of this.#byIndex) {
      if (nowMs < s.keys.expiresMs) continue;
      s.close();
      this.#byIndex.delete(i);
      if (this.#current.get(s.keys.peer) === s) this.#current.delete(s.keys.peer);
    }
  }

  /** True when `peer` has a session we may send with at `nowMs`. */
  canSend(peer: string, nowMs: number): boolean {
    const s = this.#current.get(peer);
    return s !== undefined && nowMs < s.keys.sendUntilMs + 60_000 && s.sent < REJECT_AFTER_MESSAGES;
  }

  /** Number of sessions installed. */
  get size(): number {
    return this.#byIndex.size;
  }

  /**
   * Seals the datagram at `buf[at+16 .. at+16+len)` for `peer`: writes the header before it and the
   * tag after it (the caller leaves 16 bytes each side) and returns the SECURE datagram's length
   * (`len + 32` at `buf[at ..]`), or -1 when `peer` has no session that may send.
   */
  seal(peer: string, buf: Uint8Array, at: number, len: number, laneKey: number, nowMs: number): number {
    return this.sealTo(peer, buf, at + SECURE_HEADER_LEN, len, buf, at, laneKey, nowMs);
  }

  /**
   * Seals `src[srcOff .. srcOff+len)` for `peer` into `dst[at ..]` (header, ciphertext, tag) and
   * returns the SECURE datagram's length, or -1 when `peer` has no session that may send.
   */
  sealTo(
    peer: string,
    src: Uint8Array,
    srcOff: number,
    len: number,
    dst: Uint8Array,
    at: number,
    laneKey: number,
    nowMs: number,
  ): number {
    const s = this.#current.get(peer);
    if (!s || !this.canSend(peer, nowMs)) return -1;
    const n = s.next();
    if (n === REKEY_AFTER_MESSAGES || nowMs >= s.keys.sendUntilMs) this.wantsRekey.add(peer);
    const hi = ((this.lane << 24) | Math.floor(n / 0x100000000)) >>> 0;
    writeSecureHeader(dst, at, laneKey, s.keys.remoteIndex, hi, n >>> 0);
    const nonce = this.#nonce;
    nonce.set(dst.subarray(at + 8, at + 16), 4);
    s.seal.sealTo(
      nonce,
      dst.subarray(at, at + SECURE_HEADER_LEN),
      src,
      srcOff,
      len,
      dst,
      at + SECURE_HEADER_LEN,
    );
    return len + SECURE_OVERHEAD;
  }

  /** True while `peer` has a session installed (sending or only receiving). */
  has(peer: string): boolean {
    return this.#current.has(peer);
  }

  /**
   * Opens the SECURE datagram at `buf[off .. off+len)` in place: returns the inner datagram's length
   * (it is at `buf[off+16 ..]`, from {@link peer}) or a negative {@link OpenResult}. Only an
   * authenticated datagram moves a replay window.
   */
  open(buf: Uint8Array, off: number, len: number, nowMs: number): number {
    const h = this.#header;
    if (!decodeSecureHeader(buf, off, len, h)) return OpenResult.MALFORMED;
    const s = this.#byIndex.get(h.receiver);
    this.refusedPeer = "";
    if (!s) return OpenResult.NO_SESSION;
    this.refusedPeer = s.keys.peer; // (cleared again when the datagram is accepted)
    if (nowMs >= s.keys.expiresMs || s.sendOnly) return OpenResult.EXPIRED;
    const lane = counterLane(h.counterHi);
    const n = counterValue(h.counterHi, h.counterLo);
    if (n >= REJECT_AFTER_MESSAGES) return OpenResult.REPLAY;
    const w = s.windows[lane] ??= new ReplayWindow();
    if (!w.check(n)) return OpenResult.REPLAY;
    const nonce = this.#nonce;
    nonce.set(buf.subarray(off + 8, off + 16), 4);
    const inner = len - SECURE_OVERHEAD;
    if (
      !s.open.open(nonce, buf.subarray(off, off + SECURE_HEADER_LEN), buf, off + SECURE_HEADER_LEN, inner)
    ) {
      return OpenResult.AUTH;
    }
    w.accept(n);
    this.refusedPeer = "";
    this.peer = s.keys.peer;
    return inner;
  }

  /** Frees every context. */
  close(): void {
    for (const s of this.#byIndex.values()) s.close();
    this.#byIndex.clear();
    this.#current.clear();
  }
}
