/**
 * The secure tunnel as a layer on one worker's tunnel bind (bind.ts) and packet loop (loop.ts).
 *
 * Design (issue 11): one handshake per peer, run in the tunnel socket's worker (hs_host.ts); its keys are
 * installed there at once and in the other workers' {@link KeyRing} by message. Each worker seals with its own counter space
 * (the counter's top byte is its lane), so workers never repeat a nonce and need no shared state; a
 * receiver keeps a replay window per (session, sending lane) in whichever worker the cleartext lane
 * key in the SECURE header steers the datagram to (the reuseport program reads it, lanes.ts).
 *
 * - **Egress** ({@link SecureLayer.sealBatch}): the bind lays datagrams out as before (raw, FAST or
 *   JUMBO for the peer's mode) and, at flush, this layer copies each send entry into a second batch —
 *   every datagram of a GSO run sealed on its own (16-byte header, 16-byte tag, so a run's segment size
 *   grows by 32 and a long run may take two sends) towards peers with a session, unchanged towards
 *   others (`prefer` with a raw peer, control datagrams), dropped in `require` (counted, and a
 *   handshake is asked for). A JUMBO message the bind queued contiguously (its `messages` lengths) is
 *   sealed with one AEAD call in place and sent as gather entries (header + ciphertext slice per
 *   datagram; the same bytes as sealed in parts, see keys.ts `sealMessage`).
 * - **Ingress** ({@link SecureLayer.inbound}): SECURE datagrams are opened in place (replay window
 *   first, moved only after the tag verified) and the inner datagram goes on to the engine as if it had
 *   arrived plain; the next parts of a JUMBO message in the same GRO run are opened with the first
 *   ({@link SecureLayer.openRun}: their ciphertexts moved together, one AEAD update); handshake datagrams go to the worker's handshake host (hs_host.ts); in `require` plain data (raw, FAST,
 *   JUMBO) is dropped before the engine sees it; HELLO/PROBE stay plain (capabilities and RTT; they
 *   deliver nothing to instances).
 *
 * The TUN MTU leaves room for the 32 bytes (config: MTUsize − 32 when `TunnelSecurity` is not off).
 *
 * @example
 * ```ts
 * import { SecureLayer, SecureMode } from "./secure_layer.ts";
 * const layer = new SecureLayer({ lane: 0, post: (m) => console.log(m.type) });
 * layer.setMode(SecureMode.REQUIRE);
 * console.log(layer.active); // true
 * ```
 * @module
 */
import { type SendBatch, UDP_MAX_SEGMENTS } from "../../ffi/udp.ts";
import { hasMac2, isHsInit } from "./cookie_wire.ts";
import { KeyRing, OPEN_RESULT_NAMES, Opened, OpenResult, type SessionKeys } from "./keys.ts";
import { isHandshakeType, SECURE_HEADER_LEN, SECURE_OVERHEAD, SECURE_TAG_LEN } from "./secure_wire.ts";
import { JUMBO_MAX_CHUNKS, JUMBO_TAG_LEN, MSG_FAST, MSG_JUMBO, MSG_SECURE } from "../proxy/wire.ts";

/** `TunnelSecurity` as a number for the hot path. */
export const SecureMode = { OFF: 0, PREFER: 1, REQUIRE: 2 } as const;
/** A value of {@link SecureMode}. */
export type SecureMode = (typeof SecureMode)[keyof typeof SecureMode];

/** `TunnelSecurity` names to {@link SecureMode}. */
export function secureModeOf(name: "off" | "prefer" | "require"): SecureMode {
  return name === "require" ? SecureMode.REQUIRE : name === "prefer" ? SecureMode.PREFER : SecureMode.OFF;
}

/** What {@link SecureLayer.inbound} decided about a datagram. */
export const Inbound = {
  /** Plain: hand it to the engine unchanged. */
  PASS: 0,
  /** Opened: the inner datagram is at `off + 16`, {@link SecureLayer.innerLen} bytes, from {@link SecureLayer.peer}. */
  OPENED: 1,
  /** Consumed (a handshake forwarded) or dropped (counted). */
  DONE: 2,
} as const;

/** Worker → main messages of this layer. */
export type SecureUp =
  /** `at`: when the worker received it (performance.timeOrigin + now, ms: comparable across isolates). */
  | { type: "secure-hs"; peer: string; bytes: Uint8Array; known: boolean; at?: number }
  | { type: "secure-want"; peer: string; lane: number }
  | { type: "secure-rekey"; peer: string }
  /** This worker followed `peer` to `endpoint` (an authenticated datagram came from there). */
  | { type: "secure-moved"; peer: string; endpoint: string };

/** Options of a {@link SecureLayer}. */
export interface SecureLayerOptions {
  /** The worker's lane (0..255): its counter space. */
  lane: number;
  /** Posts to the main isolate. */
  post: (m: SecureUp) => void;
}

const WANT_EVERY_MS = 1000;
/** Handshake datagrams one worker forwards per second at most (strangers' floods stop here). */
const HS_FORWARD_PER_SECOND = 500;
/** Of them, from strangers (not a table node, no verified mac2): their handshakes run in this worker (hs_host.ts). */
const HS_STRANGER_PER_SECOND = 100;

/** Drop reasons counted here (beside the key ring's). */
const DROP_NAMES = [
  "secure_required",
  "secure_no_session",
  "secure_plain_from_secure_peer",
  "secure_wrong_source",
  "secure_downgrade",
  "secure_hs_flood",
  "secure_refused_peer",
] as const;
const D_REQUIRED = 0,
  D_NO_SESSION = 1,
  D_PLAIN_SECURE = 2,
  D_WRONG_SOURCE = 3,
  D_DOWNGRADE = 4,
  D_HS_FLOOD = 5;
const D_REFUSED = 6;
/** Peers with per-peer drop counts kept at most (known peers only; beyond that only node-wide counts). */
const MAX_PEER_DROPS = 4096;
/** How long a secure-capable peer may stay without a session (retries at 1, 2 s) before plain data to it is a downgrade. */
export const DOWNGRADE_GRACE_MS = 3000;

/** One worker's secure layer (see the module). */
export class SecureLayer {
  mode: SecureMode = SecureMode.OFF;
  readonly ring: KeyRing;
  /** After {@link inbound} returned OPENED: the inner datagram's length and the session's peer. */
  innerLen = 0;
  peer = "";
  /** Datagrams sealed and opened. */
  sealed = 0;
  opened = 0;
  /** Of the opened: parts taken with the one before them in a receive run ({@link openRun}). */
  openedInRuns = 0;
  readonly #drops = new Float64Array(DROP_NAMES.length);
  readonly #openDrops = new Float64Array(OPEN_RESULT_NAMES.length);
  /**
   * Per peer (a session's peer, or a known peer's address): drops by reason — replayed, forged,
   * expired sealed datagrams and plain data from a peer that has a session. Bounded by
   * {@link MAX_PEER_DROPS} peers.
   */
  readonly #peerDrops = new Map<string, Record<string, number>>();
  readonly #post: (m: SecureUp) => void;
  readonly #lane: number;
  readonly #wanted = new Map<string, number>();
  /** Peers that had a session in this worker (plain datagrams to them later are downgrades). */
  readonly #everSecure = new Set<string>();
  /**
   * Whether a peer announced it can do secure sessions (CAP_SECURE in its HELLO; the worker sets
   * this from its peer table). In `prefer`, plain data to such a peer after {@link DOWNGRADE_GRACE_MS}
   * of asking for a session counts as a downgrade (handshakes stripped on the way) and is warned.
   */
  secureCapable: (peer: string) => boolean = () => false;
  /**
   * Endpoint following (WireGuard's roaming): called when a datagram that authenticated under
   * `peer`'s session (tag and replay window checked) came from another source than where `peer` is
   * reached now; the worker moves the peer there and returns true, or false when `peer` is not one
   * of its peers (a stranger's session) and nothing moved.
   */
  follow: (peer: string) => boolean = () => false;
  /**
   * Test knob (`NETMANAGER_ROAM_UNAUTHENTICATED=1`): follow the session named in any SECURE header,
   * before its tag and replay window are checked — what an implementation without the check would
   * do; tests show that a replayed datagram then moves a peer. Never set in production.
   */
  followUnauthenticated = false;
  /** When the worker first asked for a session with each peer that has none yet. */
  readonly #firstWant = new Map<string, number>();
  /**
   * Peers whose certificate was refused or revoked: no plain fallback with them in `prefer` either
   * (nothing is sent to them, their plain data is dropped).
   */
  readonly blocked: Set<string> = new Set();
  /** Handshake datagrams forwarded: from strangers, from the table's nodes, INITs with a verified mac2 under load. */
  readonly #hsTokens = [HS_STRANGER_PER_SECOND, HS_FORWARD_PER_SECOND, HS_FORWARD_PER_SECOND];
  #hsAt = 0;
  /** Sealing: the next JUMBO chunk index of the message being sealed in parts (-1: none). */
  #partNext = -1;
  #partPeer = "";
  /**
   * After {@link inbound} returned OPENED: an `Opened` value (keys.ts) — `Opened.PART` is a
   * JUMBO chunk not yet authenticated: it may only go to reassembly, and that reassembly may only
   * complete on an authenticated last part (the loop checks).
   */
  part = 0;
  /**
   * Takes a handshake datagram in this worker (hs_host.ts queues it): true when taken; otherwise (or
   * unset) it goes to the main isolate.
   */
  handshake:
    | ((peer: string, buf: Uint8Array, off: number, len: number, known: boolean) => boolean)
    | undefined = undefined;
  /**
   * False for a handshake reply to no handshake of this worker's (hs_host.ts `expects`): dropped
   * before the forwarding budget, which a flood's reflected cookie replies would otherwise spend.
   */
  expects: ((peer: string, buf: Uint8Array, off: number, len: number) => boolean) | undefined = undefined;
  /** True for an HS_INIT whose mac1 and mac2 verify (hs_host.ts `proven`); unset: none is proven here. */
  proven: ((peer: string, buf: Uint8Array, off: number, len: number) => boolean) | undefined = undefined;

  /** A layer for worker `lane` (mode off until {@link setMode}). */
  constructor(o: SecureLayerOptions) {
    this.#lane = o.lane;
    this.#post = o.post;
    this.ring = new KeyRing(o.lane);
  }

  /** True when datagrams pass through this layer (mode not off). */
  get active(): boolean {
    return this.mode !== SecureMode.OFF;
  }

  /** Sets the mode; off forgets every key. */
  setMode(mode: SecureMode): void {
    this.mode = mode;
    if (mode === SecureMode.OFF) {
      this.ring.close();
      this.#everSecure.clear();
      this.blocked.clear();
    }
  }

  /** Installs a session's keys (`sendOnly`: see KeyRing.install). */
  install(keys: SessionKeys, sendOnly = false): void {
    this.ring.install(keys, sendOnly);
    this.#everSecure.add(keys.peer);
    this.#firstWant.delete(keys.peer);
  }

  /** Removes a peer's keys (revoked, left); `forget` also forgets it was ever secure. */
  remove(peer: string, forget: boolean): void {
    this.ring.removePeer(peer);
    if (forget) this.#everSecure.delete(peer);
  }

  /** Asks the main isolate for a handshake with `peer` (once a second at most). */
  want(peer: string, lane: number, nowMs: number): void {
    const last = this.#wanted.get(peer);
    if (last !== undefined && nowMs - last < WANT_EVERY_MS) return;
    if (this.#wanted.size > 4096) this.#wanted.clear();
    if (this.#firstWant.size > 4096) this.#firstWant.clear();
    if (!this.#firstWant.has(peer) && !this.ring.has(peer)) this.#firstWant.set(peer, nowMs);
    this.#wanted.set(peer, nowMs);
    this.#post({ type: "secure-want", peer, lane });
  }

  /** Timers: expired keys, rekey requests. */
  tick(nowMs: number): void {
    this.ring.expire(nowMs);
    for (const p of this.ring.wantsRekey) this.#post({ type: "secure-rekey", peer: p });
    this.ring.wantsRekey.clear();
  }

  /**
   * False when the `n` queued entries can go out as they are (`prefer`, no entry to a peer with a
   * session, refused or once secure): the bind then skips the copy. Asks for handshakes as needed.
   */
  needsSealing(n: number, peers: readonly (string | undefined)[], lanes: Int32Array, nowMs: number): boolean {
    if (this.mode === SecureMode.REQUIRE) return true;
    const ring = this.ring;
    for (let i = 0; i < n; i++) {
      const p = peers[i];
      if (p === undefined) continue;
      if (ring.has(p) || this.blocked.has(p) || this.#everSecure.has(p)) return true;
      this.want(p, lanes[i], nowMs);
      if (this.#downgraded(p, nowMs)) return true; // counted in sealBatch
    }
    return false;
  }

  /**
   * Copies the `n` send entries of `src` into `dst` for sending, sealing those to peers with a
   * session (see the module): `peers[i]` is entry i's peer key (undefined: a control datagram, sent
   * plain), `lanes[i]` its lane key. Returns the number of entries in `dst`. `dst` needs room for 2n.
   */
  sealBatch(
    src: SendBatch,
    n: number,
    peers: readonly (string | undefined)[],
    lanes: Int32Array,
    dst: SendBatch,
    maxPayload: number,
    nowMs: number,
    messages?: Int32Array,
  ): number {
    const ring = this.ring;
    let out = 0;
    // Headers of messages sealed whole live in dst's last slot (gather entries point at them).
    const hdrBase = (dst.slots - 1) * dst.slotSize;
    let hdrUsed = 0;
    let skipTail = false;
    for (let i = 0; i < n; i++) {
      const peer = peers[i];
      const from = i * src.slotSize + src.offsets[i];
      const size = src.sizes[i];
      const seg = src.segSizes[i];
      const sealing = peer !== undefined && ring.canSend(peer, nowMs);
      const msg = messages === undefined ? 0 : messages[i];
      if (msg < 0 && skipTail) continue; // the tail of a message sealed whole (below): already sent
      skipTail = false;
      if (sealing && msg > 0 && seg > 0 && src.data[from] === MSG_JUMBO) {
        // A JUMBO message contiguous in this entry's slot: ONE AEAD call in place, and gather
        // entries (a header, a ciphertext slice per datagram) so the kernel lays the datagrams out.
        const count = Math.ceil(msg / seg);
        if (
          hdrUsed + count * SECURE_HEADER_LEN <= dst.slotSize &&
          from + msg + SECURE_TAG_LEN <= (i + 1) * src.slotSize
        ) {
          const hdrAt = hdrBase + hdrUsed;
          const c = ring.sealMessage(peer, lanes[i], src.data, from, msg, seg, dst.data, hdrAt, nowMs);
          if (c > 0) {
            hdrUsed += c * SECURE_HEADER_LEN;
            out = this.#gatherEntries(src, i, from, msg, seg, c, dst, out, hdrAt, maxPayload);
            this.sealed += c;
            this.#partNext = -1;
            skipTail = true;
            continue;
          }
        }
      }
      if (!sealing) {
        if (peer !== undefined) {
          this.want(peer, lanes[i], nowMs);
          if (this.blocked.has(peer)) {
            this.#drops[D_REFUSED] += seg > 0 ? Math.ceil(size / seg) : 1;
            continue;
          }
          if (this.mode === SecureMode.REQUIRE) {
            this.#drops[D_NO_SESSION] += seg > 0 ? Math.ceil(size / seg) : 1;
            continue;
          }
          if (this.#everSecure.has(peer) || this.#downgraded(peer, nowMs)) {
            this.#drops[D_DOWNGRADE]++;
            this.#peerDrop(peer, DROP_NAMES[D_DOWNGRADE]);
          }
        }
        dst.data.set(src.data.subarray(from, from + size), out * dst.slotSize);
        this.#copyDst(src, i, dst, out);
        dst.offsets[out] = 0;
        dst.sizes[out] = size;
        dst.segSizes[out] = seg;
        out++;
        continue;
      }
      // Each datagram of the run sealed on its own, or the chunks of a JUMBO message as one (parts);
      // sealed datagrams go out in GSO runs again, split where a send is full or a size differs.
      const step = seg > 0 ? seg : size;
      const data = src.data;
      let open = false, entrySeg = 0, count = 0, short = false;
      for (let at = 0; at < size; at += step) {
        const p = from + at;
        const len = Math.min(step, size - at);
        // A JUMBO chunk (tag: type, index, count): part of its message, begun at chunk 0.
        let part = -1, last = false;
        if (data[p] === MSG_JUMBO && len > JUMBO_TAG_LEN) {
          const idx = data[p + 1], cnt = data[p + 2];
          if (idx === 0 && cnt >= 2 && cnt <= JUMBO_MAX_CHUNKS && ring.beginParts(peer, lanes[i], nowMs)) {
            this.#partNext = 1;
            this.#partPeer = peer;
            part = 0;
          } else if (idx > 0 && idx === this.#partNext && idx < cnt && peer === this.#partPeer) {
            part = idx;
            last = idx === cnt - 1;
            this.#partNext = last ? -1 : idx + 1;
          } else this.#partNext = -1;
          if (part < 0) {
            // Never sealed on its own: a receiver refuses single JUMBO chunks (see inbound).
            this.#openDrops[-OpenResult.PART]++;
            continue;
          }
        }
        const w = part >= 0 ? len + (last ? SECURE_OVERHEAD : SECURE_HEADER_LEN) : len + SECURE_OVERHEAD;
        if (
          !open || w > entrySeg || short || count >= UDP_MAX_SEGMENTS || dst.sizes[out] + w > maxPayload
        ) {
          if (open) dst.segSizes[out++] = count > 1 ? entrySeg : 0;
          this.#copyDst(src, i, dst, out);
          dst.offsets[out] = 0;
          dst.sizes[out] = 0;
          open = true;
          entrySeg = w;
          count = 0;
          short = false;
        }
        const to = out * dst.slotSize + dst.sizes[out];
        const wrote = part >= 0
          ? ring.sealPart(data, p, len, dst.data, to, part, last)
          : ring.sealTo(peer, data, p, len, dst.data, to, lanes[i], nowMs);
        if (wrote < 0) { // (its session just ended)
          this.#partNext = -1;
          break;
        }
        dst.sizes[out] += wrote;
        count++;
        if (wrote < entrySeg) short = true;
        this.sealed++;
      }
      if (open) dst.segSizes[out++] = count > 1 ? entrySeg : 0;
    }
    return out;
  }

  /** A secure-capable peer still without a session after the grace: its handshakes are being stripped. */
  #downgraded(peer: string, nowMs: number): boolean {
    const t = this.#firstWant.get(peer);
    return t !== undefined && nowMs - t >= DOWNGRADE_GRACE_MS && this.secureCapable(peer);
  }

  /**
   * Queues the `count` datagrams of a message sealed whole (see sealBatch) as gather entries of
   * `dst` from `out` on: datagram k is header k (`dst.data[hdrAt + 16k ..]`) and ciphertext bytes
   * `[k·dsize, (k+1)·dsize)` of `src.data[from ..]` (the last with the tag), in GSO runs of equal
   * segments; the last datagram gets its own entry when it is longer than the others. Returns the
   * next free entry.
   */
  #gatherEntries(
    src: SendBatch,
    i: number,
    from: number,
    len: number,
    dsize: number,
    count: number,
    dst: SendBatch,
    out: number,
    hdrAt: number,
    maxPayload: number,
  ): number {
    const w = SECURE_HEADER_LEN + dsize;
    const lastBody = len - (count - 1) * dsize + SECURE_TAG_LEN;
    const per = Math.max(1, Math.min(UDP_MAX_SEGMENTS, Math.floor(maxPayload / w)));
    for (let k = 0; k < count;) {
      let c = Math.min(per, count - k);
      if (k + c === count && c > 1 && SECURE_HEADER_LEN + lastBody > w) c--;
      const j = out++;
      this.#copyDst(src, i, dst, j);
      dst.setGather(j, 2 * c);
      let size = 0;
      for (let q = 0; q < c; q++) {
        const d = k + q;
        const body = d === count - 1 ? lastBody : dsize;
        dst.setGatherPiece(j, 2 * q, dst, hdrAt + d * SECURE_HEADER_LEN, SECURE_HEADER_LEN);
        dst.setGatherPiece(j, 2 * q + 1, src, from + d * dsize, body);
        size += SECURE_HEADER_LEN + body;
      }
      dst.offsets[j] = 0;
      dst.sizes[j] = size;
      dst.segSizes[j] = c > 1 ? w : 0;
      k += c;
    }
    return out;
  }

  #copyDst(src: SendBatch, i: number, dst: SendBatch, j: number): void {
    dst.gathers[j] = 0;
    dst.dstFamilies[j] = src.dstFamilies[i];
    dst.dst4[j] = src.dst4[i];
    const s6 = src.dst6, d6 = dst.dst6;
    for (let k = 0; k < 16; k++) d6[j * 16 + k] = s6[i * 16 + k]; // (no view per entry)
    dst.dstScopes[j] = src.dstScopes[i];
    dst.dstPorts[j] = src.dstPorts[i];
  }

  /**
   * Looks at a received datagram `buf[off .. off+len)` from `peerKey()` (built only when needed):
   * returns an {@link Inbound} value. `sourcePeer` is the known peer at the source address (its key),
   * if any; `sourceExact`: the source is exactly where that peer is reached now (address and port),
   * not only its address.
   */
  inbound(
    buf: Uint8Array,
    off: number,
    len: number,
    sourcePeer: string | undefined,
    sourceKey: () => string,
    nowMs: number,
    sourceExact = true,
  ): number {
    const t = buf[off];
    if (t === MSG_SECURE) {
      if (this.followUnauthenticated) {
        const p = this.ring.peerOf(buf, off, len);
        if (p !== "" && (p !== sourcePeer || !sourceExact)) this.follow(p);
      }
      const r = this.ring.open(buf, off, len, nowMs);
      if (r < 0) {
        this.#openDrops[-r]++;
        if (this.ring.refusedPeer !== "") this.#peerDrop(this.ring.refusedPeer, OPEN_RESULT_NAMES[-r]);
        return Inbound.DONE;
      }
      const own = this.ring.peer;
      this.part = this.ring.opened;
      if (sourcePeer !== own || !sourceExact) {
        // Authenticated (a whole datagram or a message's last part) from elsewhere than where its
        // peer is reached: the peer moved (roaming, NAT rebinding) and is followed there — unless
        // the source is exactly another peer's endpoint (a datagram re-sent from there is refused).
        // Strangers' sessions are checked by the engine's stranger path.
        const otherPeer = sourcePeer !== undefined && sourcePeer !== own;
        if (otherPeer && sourceExact) {
          this.#drops[D_WRONG_SOURCE]++;
          return Inbound.DONE;
        }
        if (this.part !== Opened.PART && this.follow(own)) sourcePeer = own;
        else if (otherPeer) {
          this.#drops[D_WRONG_SOURCE]++;
          return Inbound.DONE;
        }
      }
      const jumbo = buf[off + SECURE_HEADER_LEN] === MSG_JUMBO;
      if (
        this.part === Opened.PART ? !jumbo || sourcePeer === undefined : this.part === Opened.SINGLE && jumbo
      ) {
        // Unauthenticated bytes go nowhere but a known peer's reassembly; and JUMBO chunks come only
        // in parts, so an authentic single chunk can never complete a reassembly holding parts.
        this.#openDrops[-OpenResult.PART]++;
        return Inbound.DONE;
      }
      this.opened++;
      this.innerLen = r;
      this.peer = this.ring.peer;
      return Inbound.OPENED;
    }
    if (isHandshakeType(t)) {
      const tk = this.#hsTokens;
      if (nowMs > this.#hsAt) {
        const add = ((nowMs - this.#hsAt) / 1000) * HS_FORWARD_PER_SECOND;
        tk[0] = Math.min(
          HS_STRANGER_PER_SECOND,
          tk[0] + add / (HS_FORWARD_PER_SECOND / HS_STRANGER_PER_SECOND),
        );
        tk[1] = Math.min(HS_FORWARD_PER_SECOND, tk[1] + add);
        tk[2] = Math.min(HS_FORWARD_PER_SECOND, tk[2] + add);
        this.#hsAt = nowMs;
      }
      const known = sourcePeer !== undefined;
      // A peer followed to another endpoint keeps its key (its session's name) for the handshake.
      let peer: string | undefined;
      if (this.expects && !isHsInit(buf, off)) {
        peer = sourcePeer !== undefined && sourceExact ? sourcePeer : sourceKey();
        if (!this.expects(peer, buf, off, len)) return Inbound.DONE;
      }
      // A flood spoofing a node's address spends that class; under load (class spent) an INIT whose
      // mac2 verifies (hs_host.ts `proven`: mac1, then the cookie) has the cookie-holders' own.
      let k = known ? 1 : 0;
      if (tk[k] < 1 && this.proven && hasMac2(buf, off, len)) {
        peer ??= sourcePeer !== undefined && sourceExact ? sourcePeer : sourceKey();
        if (this.proven(peer, buf, off, len)) k = 2;
      }
      if (tk[k] < 1) {
        this.#drops[D_HS_FLOOD]++;
        return Inbound.DONE;
      }
      tk[k]--;
      peer ??= sourcePeer !== undefined && sourceExact ? sourcePeer : sourceKey();
      // The worker runs the node's handshakes (hs_host.ts): no hop to the main isolate.
      if (this.handshake?.(peer, buf, off, len, known)) return Inbound.DONE;
      const at = performance.timeOrigin + performance.now();
      this.#post({ type: "secure-hs", peer, bytes: buf.slice(off, off + len), known, at });
      return Inbound.DONE;
    }
    const hi = t >>> 4;
    const data = hi === 4 || hi === 6 || t === MSG_FAST || t === MSG_JUMBO;
    if (!data) return Inbound.PASS; // HELLO, PROBE, unknown: the engine's business
    if (this.mode === SecureMode.REQUIRE) {
      this.#drops[D_REQUIRED]++;
      return Inbound.DONE;
    }
    if (sourcePeer !== undefined && this.blocked.has(sourcePeer)) {
      this.#drops[D_REFUSED]++;
      return Inbound.DONE;
    }
    if (sourcePeer !== undefined && this.ring.has(sourcePeer)) {
      // prefer: a peer with a session sends sealed; plain data from its address is spoofed (or stale).
      this.#drops[D_PLAIN_SECURE]++;
      this.#peerDrop(sourcePeer, DROP_NAMES[D_PLAIN_SECURE]);
      return Inbound.DONE;
    }
    return Inbound.PASS;
  }

  /**
   * After {@link inbound} returned OPENED with {@link part} `Opened.PART` for the datagram at
   * `buf[off .. off+step)` of a receive run: takes the next datagrams of that run that are the next
   * parts of the same message (up to `max`; keys.ts `openRun`: headers checked byte for byte, one
   * AEAD update for all) and returns how many. Part k's inner bytes (a JUMBO chunk, unauthenticated
   * until the message's last part verifies) are then at `buf[off + 16 + k·(step − 16) ..]`,
   * `step − 16` bytes each.
   */
  openRun(buf: Uint8Array, off: number, step: number, max: number): number {
    if (this.part !== Opened.PART) return 0;
    const n = this.ring.openRun(buf, off, step, max);
    this.opened += n;
    this.openedInRuns += n;
    return n;
  }

  /** A reassembly completed by an unauthenticated part was dropped (counted as `secure_part_dropped`). */
  refuseCompletion(): void {
    this.#openDrops[-OpenResult.PART]++;
  }

  /** Offset of the inner datagram after OPENED. */
  static readonly INNER_OFFSET: number = SECURE_HEADER_LEN;

  /** Adds drop counts by name. */
  addDrops(drops: Record<string, number>): void {
    this.#drops.forEach((v, i) => {
      if (v > 0) drops[DROP_NAMES[i]] = v;
    });
    this.#openDrops.forEach((v, i) => {
      if (v > 0 && i > 0) drops[OPEN_RESULT_NAMES[i]] = v;
    });
  }

  #peerDrop(peer: string, reason: string): void {
    let d = this.#peerDrops.get(peer);
    if (!d) {
      if (this.#peerDrops.size >= MAX_PEER_DROPS) return;
      d = {};
      this.#peerDrops.set(peer, d);
    }
    d[reason] = (d[reason] ?? 0) + 1;
  }

  /** Per-peer drop counts by reason (peer key → reason → count), undefined when there are none. */
  peerDrops(): Record<string, Record<string, number>> | undefined {
    if (this.#peerDrops.size === 0) return undefined;
    const out: Record<string, Record<string, number>> = {};
    for (const [p, d] of this.#peerDrops) out[p] = { ...d };
    return out;
  }

  /** The worker's lane. */
  get lane(): number {
    return this.#lane;
  }
}
