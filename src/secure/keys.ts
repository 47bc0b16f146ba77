/**
 * The secure tunnel's data keys in one data-plane worker: seal and open SECURE data datagrams
 * (secure_wire.ts) with AES-256-GCM through ipsec-mb or libcrypto (aead.ts chooses; one context per
 * key and direction, reused — libcrypto measured 5–20× faster than node:crypto per datagram,
 * ipsec-mb's VAES code 3–4× libcrypto on 64 KB messages, `scripts/bench_aead.ts`).
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
import { type AesGcm, newAesGcm } from "./aead.ts";
import { ReplayWindow } from "./replay.ts";
import { MSG_SECURE } from "../proxy/wire.ts";
import {
  counterLane,
  counterValue,
  decodeSecureHeader,
  SECURE_F_LAST,
  SECURE_F_PART,
  SECURE_HEADER_LEN,
  SECURE_OVERHEAD,
  SECURE_PART_INDEX,
  SECURE_TAG_LEN,
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
  /** A part of a message sealed as one that is not the next of the message in progress (lost, reordered, made up). */
  PART: -6,
} as const;

/** What the last datagram {@link KeyRing.open} accepted was (see {@link KeyRing.opened}). */
export const Opened = {
  /** Sealed on its own: authenticated. */
  SINGLE: 0,
  /** A part of a message before its last: decrypted but NOT authenticated yet (only for reassembly). */
  PART: 1,
  /** The last part: the whole message authenticated. */
  LAST: 2,
} as const;

/** Drop reason names of the {@link OpenResult} values, by `-result`. */
export const OPEN_RESULT_NAMES: readonly string[] = [
  "",
  "secure_malformed",
  "secure_no_session",
  "secure_expired",
  "secure_replay",
  "secure_auth",
  "secure_part_dropped",
];

class DataSession {
  readonly seal: AesGcm;
  readonly open: AesGcm;
  /** Messages sent by this lane (one slot of the shared counters, or a private one). */
  readonly #sent: Float64Array;
  readonly #lane: number;
  readonly windows: (ReplayWindow | undefined)[] = [];
  /** Context for messages opened in parts (a second one: single datagrams may come in between). */
  #openParts: AesGcm | undefined = undefined;
  constructor(readonly keys: SessionKeys, lane: number, readonly sendOnly: boolean) {
    this.seal = newAesGcm(keys.sendKey, true);
    this.open = newAesGcm(keys.recvKey, false);
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
  get openParts(): AesGcm {
    return this.#openParts ??= newAesGcm(this.keys.recvKey, false);
  }
  close(): void {
    this.seal.close();
    this.open.close();
    this.#openParts?.close();
  }
}

/** A message being opened in parts, one per peer at a time (its parts feed one reassembly). */
interface PartStream {
  session: DataSession;
  counter: number;
  lane: number;
  /** Index of the next part; -1: none expected (ended or broken). */
  next: number;
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
  /** After {@link open} accepted a datagram: an {@link Opened} value. */
  opened = 0;
  readonly #nonce = new Uint8Array(12);
  #dv: DataView | undefined = undefined;
  readonly #header = new SecureHeader();
  readonly #streams = new Map<string, PartStream>();
  /** The message whose part {@link open} just returned as {@link Opened.PART} (see {@link openRun}). */
  #run: PartStream | undefined = undefined;
  // The message being sealed in parts (see beginParts).
  #sealing: DataSession | undefined = undefined;
  #sealHi = 0;
  #sealLo = 0;
  #sealLane = 0;

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
    const old = this.#byIndex.get(keys.localIndex);
    if (old !== undefined) this.#retire(old);
    const s = new DataSession(keys, this.lane, sendOnly);
    this.#byIndex.set(keys.localIndex, s);
    const cur = this.#current.get(keys.peer);
    if (!cur || cur.keys.createdMs <= keys.createdMs) this.#current.set(keys.peer, s);
    this.wantsRekey.delete(keys.peer);
  }

  /** Removes every session of `peer` (revoked, or the peer left). */
  removePeer(peer: string): void {
    this.#streams.delete(peer);
    for (const [i, s] of this.#byIndex) {
      if (s.keys.peer === peer) {
        this.#retire(s);
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
      this.#retire(s);
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
    s.seal.sealAdTo(
      this.#nonceOf(dst, at),
      dst,
      at,
      SECURE_HEADER_LEN,
      src,
      srcOff,
      len,
      dst,
      at + SECURE_HEADER_LEN,
    );
    return len + SECURE_OVERHEAD;
  }

  /**
   * Starts sealing a message of several datagrams as one AEAD for `peer` (one counter for all its
   * parts; see secure_wire.ts): false when `peer` has no session that may send. Then
   * {@link sealPart} for each part in order, the last with `last` set.
   */
  beginParts(peer: string, laneKey: number, nowMs: number): boolean {
    const s = this.#current.get(peer);
    if (!s || !this.canSend(peer, nowMs)) return false;
    const n = s.next();
    if (n === REKEY_AFTER_MESSAGES || nowMs >= s.keys.sendUntilMs) this.wantsRekey.add(peer);
    this.#sealing = s;
    this.#sealHi = ((this.lane << 24) | Math.floor(n / 0x100000000)) >>> 0;
    this.#sealLo = n >>> 0;
    this.#sealLane = laneKey;
    return true;
  }

  /**
   * Seals part `index` of the message begun with {@link beginParts}: `src[srcOff .. +len)` into
   * `dst[at ..]` (header, ciphertext, and on the last part the tag). Returns the datagram's length, or
   * -1 when there is no message in parts (its session was removed meanwhile).
   */
  sealPart(
    src: Uint8Array,
    srcOff: number,
    len: number,
    dst: Uint8Array,
    at: number,
    index: number,
    last: boolean,
  ): number {
    const s = this.#sealing;
    if (s === undefined || index < 0 || index > SECURE_PART_INDEX) return -1; // (its session just ended)
    const flags = SECURE_F_PART | index | (last ? SECURE_F_LAST : 0);
    writeSecureHeader(dst, at, this.#sealLane, s.keys.remoteIndex, this.#sealHi, this.#sealLo, flags);
    if (index === 0) s.seal.begin(this.#nonceOf(dst, at), dst, at, SECURE_HEADER_LEN);
    s.seal.update(src, srcOff, len, dst, at + SECURE_HEADER_LEN);
    if (!last) return SECURE_HEADER_LEN + len;
    s.seal.finishSeal(dst, at + SECURE_HEADER_LEN + len);
    this.#sealing = undefined;
    return SECURE_OVERHEAD + len;
  }

  /**
   * Seals a message of `count = ceil(len / dsize)` datagrams (2..64; a JUMBO message laid out
   * contiguously at `buf[off .. off+len)`, datagram k being `dsize` bytes from `off + k·dsize`) for
   * `peer` as ONE AEAD call, in place: the ciphertext replaces the plaintext and the tag goes to
   * `buf[off+len .. +16)` (the caller leaves room). The `count` part headers (secure_wire.ts) go to
   * `hdrs[hdrOff + 16k ..]`; the datagrams on the wire are header k then ciphertext bytes
   * `[k·dsize, (k+1)·dsize)` (the last with the tag): byte for byte what {@link sealPart} makes part
   * by part, so receivers open them as before. Returns `count`, or -1 when `peer` has no session that
   * may send (nothing written) or the sizes do not make 2..64 parts.
   */
  sealMessage(
    peer: string,
    laneKey: number,
    buf: Uint8Array,
    off: number,
    len: number,
    dsize: number,
    hdrs: Uint8Array,
    hdrOff: number,
    nowMs: number,
  ): number {
    const count = dsize > 0 ? Math.ceil(len / dsize) : 0;
    if (count < 2 || count > SECURE_PART_INDEX + 1 || off < 0 || off + len + SECURE_TAG_LEN > buf.length) {
      return -1;
    }
    if (hdrOff < 0 || hdrOff + count * SECURE_HEADER_LEN > hdrs.length) return -1;
    const s = this.#current.get(peer);
    if (!s || !this.canSend(peer, nowMs)) return -1;
    const n = s.next();
    if (n === REKEY_AFTER_MESSAGES || nowMs >= s.keys.sendUntilMs) this.wantsRekey.add(peer);
    const hi = ((this.lane << 24) | Math.floor(n / 0x100000000)) >>> 0, lo = n >>> 0;
    // Header 0 written field by field; the others are its copy with their flags (index, last):
    // words through one DataView of the headers' memory.
    writeSecureHeader(hdrs, hdrOff, laneKey, s.keys.remoteIndex, hi, lo, SECURE_F_PART);
    const dv = this.#dataView(hdrs);
    const h0 = hdrs.byteOffset + hdrOff;
    const w0 = dv.getUint16(h0 + 2), w1 = dv.getUint32(h0 + 4), w2 = dv.getUint32(h0 + 8);
    const w3 = dv.getUint32(h0 + 12);
    for (let k = 1; k < count; k++) {
      const a = h0 + k * SECURE_HEADER_LEN;
      dv.setUint8(a, MSG_SECURE);
      dv.setUint8(a + 1, SECURE_F_PART | k | (k === count - 1 ? SECURE_F_LAST : 0));
      dv.setUint16(a + 2, w0);
      dv.setUint32(a + 4, w1);
      dv.setUint32(a + 8, w2);
      dv.setUint32(a + 12, w3);
    }
    s.seal.sealAdTo(this.#nonceOf(hdrs, hdrOff), hdrs, hdrOff, SECURE_HEADER_LEN, buf, off, len, buf, off);
    return count;
  }

  /** The peer of the session a SECURE datagram's header names ("" if none); nothing is checked. */
  peerOf(buf: Uint8Array, off: number, len: number): string {
    const h = this.#header;
    if (!decodeSecureHeader(buf, off, len, h)) return "";
    return this.#byIndex.get(h.receiver)?.keys.peer ?? "";
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
    this.#run = undefined;
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
    if (h.flags !== 0) return this.#openPart(s, w, h, n, lane, buf, off, len);
    if (!w.check(n)) return OpenResult.REPLAY;
    const inner = len - SECURE_OVERHEAD;
    if (
      !s.open.openAd(
        this.#nonceOf(buf, off),
        buf,
        off,
        SECURE_HEADER_LEN,
        buf,
        off + SECURE_HEADER_LEN,
        inner,
      )
    ) {
      return OpenResult.AUTH;
    }
    w.accept(n);
    this.refusedPeer = "";
    this.peer = s.keys.peer;
    this.opened = Opened.SINGLE;
    return inner;
  }

  /**
   * A part of a message sealed as one: decrypted in place as the next piece of its peer's message
   * in progress (part 0 starts one, after the replay check); the last part's tag authenticates the
   * whole message and only then moves the replay window. Parts before the last come back as
   * {@link Opened.PART}: unauthenticated, their only use is the reassembly that the last completes.
   */
  #openPart(
    s: DataSession,
    w: ReplayWindow,
    h: SecureHeader,
    n: number,
    lane: number,
    buf: Uint8Array,
    off: number,
    len: number,
  ): number {
    const index = h.flags & SECURE_PART_INDEX;
    const last = (h.flags & SECURE_F_LAST) !== 0;
    const peer = s.keys.peer;
    let st = this.#streams.get(peer);
    if (index === 0) {
      if (!w.check(n)) return OpenResult.REPLAY;
      if (st === undefined) {
        st = { session: s, counter: n, lane, next: 0 };
        this.#streams.set(peer, st);
      }
      st.session = s;
      st.counter = n;
      st.lane = lane;
      s.openParts.begin(this.#nonceOf(buf, off), buf, off, SECURE_HEADER_LEN);
    } else if (
      st === undefined || st.next !== index || st.session !== s || st.counter !== n || st.lane !== lane
    ) {
      if (st !== undefined && st.session === s && st.counter === n) st.next = -1; // the message cannot complete
      return OpenResult.PART;
    }
    const inner = len - SECURE_HEADER_LEN - (last ? SECURE_TAG_LEN : 0);
    const at = off + SECURE_HEADER_LEN;
    s.openParts.update(buf, at, inner, buf, at);
    st.next = -1;
    if (last) {
      if (!s.openParts.finishOpen(buf, at + inner) || !w.accept(n)) return OpenResult.AUTH;
      this.opened = Opened.LAST;
    } else {
      st.next = index + 1;
      this.opened = Opened.PART;
      this.#run = st;
    }
    this.refusedPeer = "";
    this.peer = peer;
    return inner;
  }

  /**
   * After {@link open} returned a part (not the last) of a message for the datagram at
   * `buf[off .. off+step)`: takes the following datagrams of the same receive run — up to `max`, each
   * `step` bytes at `buf[off + k·step ..]` (a GRO run: one source, equal sizes) — that are the next
   * parts of the SAME message (header byte for byte the first's: type, lane key, receiver index,
   * counter; flags exactly "part, index i+k", never the last), stopping at the first that is not.
   * Their ciphertexts are moved together behind the first datagram's (over the headers between
   * them) and decrypted with ONE update of the message's AEAD: part k's bytes end up at
   * `buf[off + 16 + k·(step − 16) ..]`, `step − 16` bytes each. Returns how many were taken (0:
   * none; the caller opens the rest one by one). Like every part before the last, the bytes are
   * NOT authenticated until the message's last part verifies (only for reassembly; Opened.PART).
   */
  openRun(buf: Uint8Array, off: number, step: number, max: number): number {
    const st = this.#run;
    this.#run = undefined;
    const inner = step - SECURE_HEADER_LEN;
    if (st === undefined || st.next <= 0 || this.opened !== Opened.PART || inner <= 0) return 0;
    if (!Number.isInteger(off) || off < 0 || !Number.isInteger(max) || max <= 0) return 0;
    if (off + step > buf.length) return 0;
    // Bytes 2..15 of every header (lane key, receiver index, counter) must equal the first's: read
    // as words through one DataView of the receive memory (no view per part).
    const dv = this.#dataView(buf);
    const o = buf.byteOffset + off;
    const r0 = dv.getUint16(o + 2), r1 = dv.getUint32(o + 4), r2 = dv.getUint32(o + 8);
    const r3 = dv.getUint32(o + 12);
    let n = 0;
    for (let idx = st.next; n < max && idx < SECURE_PART_INDEX; idx++) {
      const h = off + (n + 1) * step;
      if (h + step > buf.length || buf[h] !== MSG_SECURE || buf[h + 1] !== (SECURE_F_PART | idx)) break;
      const a = buf.byteOffset + h;
      if (
        dv.getUint16(a + 2) !== r0 || dv.getUint32(a + 4) !== r1 || dv.getUint32(a + 8) !== r2 ||
        dv.getUint32(a + 12) !== r3
      ) break; // another message, session or lane: not this run's
      n++;
    }
    if (n === 0) return 0;
    // Part k's ciphertext moves 16·k bytes down (over the headers): one contiguous stream.
    const to = off + step;
    for (let k = 1; k <= n; k++) {
      const from = off + k * step + SECURE_HEADER_LEN;
      buf.copyWithin(off + SECURE_HEADER_LEN + k * inner, from, from + inner);
    }
    st.session.openParts.update(buf, to, n * inner, buf, to);
    st.next += n;
    return n;
  }

  /** A DataView of `buf`'s whole memory (the last one made is kept: a receive arena's slots share one). */
  #dataView(buf: Uint8Array): DataView {
    const mem = buf.buffer;
    let dv = this.#dv;
    if (dv === undefined || dv.buffer !== mem) this.#dv = dv = new DataView(mem);
    return dv;
  }

  /** The AEAD nonce of the SECURE header at `buf[at ..]`: 4 zero bytes and the counter (no view made). */
  #nonceOf(buf: Uint8Array, at: number): Uint8Array {
    const nonce = this.#nonce;
    for (let i = 4; i < 12; i++) nonce[i] = buf[at + i + 4];
    return nonce;
  }

  /** Frees a session's contexts and forgets every use of them (a message in parts in either direction). */
  #retire(s: DataSession): void {
    s.close();
    if (this.#run?.session === s) this.#run = undefined;
    if (this.#streams.get(s.keys.peer)?.session === s) this.#streams.delete(s.keys.peer);
    if (this.#sealing === s) this.#sealing = undefined;
  }

  /** Frees every context. */
  close(): void {
    this.#sealing = undefined;
    this.#run = undefined;
    for (const s of this.#byIndex.values()) s.close();
    this.#byIndex.clear();
    this.#current.clear();
    this.#streams.clear();
  }
}
