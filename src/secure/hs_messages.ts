/**
 * Messages between the main isolate's `SecureDriver` (secure_driver.ts) and the handshake host
 * in the data-plane worker that owns the tunnel socket (hs_host.ts). Plain data (structured clone;
 * the node's private key crosses only this in-process channel, never the wire or a log).
 *
 * @example
 * ```ts
 * import type { HsDown } from "./hs_messages.ts";
 * const m: HsDown = { type: "secure-initiate", peer: "192.168.1.2:50103", lane: 0 };
 * console.log(m.type); // secure-initiate
 * ```
 * @module
 */
import type { CookieSecrets } from "./cookie.ts";
import type { SessionKeys } from "./keys.ts";
import type { NodeCredential, TrustSnapshot, VerifiedCert } from "./trust.ts";

/** What a worker needs to run the node's handshakes. */
export interface HsSetup {
  credential: NodeCredential;
  trust: TrustSnapshot;
  /** Rekey interval of new sessions (ms). */
  rekeyMs: number;
  /** Cookies under load (false: a test shows what a flood does without them). */
  cookies: boolean;
  /** The node's cookie secrets (the main isolate rotates them). */
  cookieSecrets: CookieSecrets;
}

/** Where a handshake's time went in the worker (ms): datagram received → handled, and handling it (with the reply's send). */
export interface HsPhase {
  hopMs: number;
  cpuMs: number;
}

/** Main → worker. */
export type HsDown =
  /** Run handshakes with this setup (new credential or trust); undefined: none (off, no certificate). */
  | { type: "secure-hs-setup"; setup: HsSetup | undefined }
  /** The node's cookie secrets rotated. */
  | { type: "secure-hs-cookie"; secrets: CookieSecrets }
  /**
   * Start a handshake with `peer` (lane key of the datagram that needs it); `soon`: a short first
   * retry to a peer that never answered yet (handshake.ts `SOON_RETRY_MS`); `force`: an operator's rekey
   * (`POST /secure/rekey`), sent even when an INIT went out less than `RETRY_MS` ago.
   */
  | { type: "secure-initiate"; peer: string; lane: number; soon?: boolean; force?: boolean }
  /** Forget these peers' handshake state (left the table, revoked). */
  | { type: "secure-hs-forget"; peers: string[] };

/** Worker → main. */
export type HsUp =
  /**
   * A handshake completed in the worker (its keys are installed there already): the main isolate
   * records it for status and hands the keys to the other workers.
   */
  | {
    type: "secure-hs-done";
    keys: SessionKeys;
    cert: VerifiedCert;
    initiator: boolean;
    /** Initiator: its HS_INIT sent → keys installed (ms). */
    handshakeMs?: number;
    /** Initiator: the attempt's first HS_INIT sent → keys installed (ms), and the INITs it took (retries). */
    attempt?: { ms: number; inits: number };
    /** The phases of the RESP this node handled (initiator) and of the INIT it answered (responder). */
    resp?: HsPhase;
    answer?: HsPhase;
    /** Responder: the peer's HS_INIT received → keys installed here (its HS_FINISH handled), ms. */
    readyMs?: number;
  }
  /** A peer's certificate was refused (foreign CA, expired, revoked, not its key). */
  | { type: "secure-hs-refused"; peer: string; reason: string }
  /** The worker's handshake paths are warm: handshakes asked for before (lost while it started) can go now. */
  | { type: "secure-hs-ready"; lane: number }
  /** The worker's handshake drop counters (cumulative), when they changed. */
  | { type: "secure-hs-drops"; lane: number; drops: Record<string, number> };
