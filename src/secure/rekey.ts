/**
 * Who rekeys a secure session on time (handshake.ts, secure_driver.ts): the side that initiated it,
 * and the pair's fixed leader ({@link leadsRekey}); the other side {@link REKEY_FOLLOWER_GRACE_MS}
 * later if neither did.
 *
 * @example
 * ```ts
 * import { leadsRekey } from "./rekey.ts";
 * console.log(leadsRekey(new Uint8Array([1]), new Uint8Array([2]))); // true
 * ```
 * @module
 */

/** How much longer than the rekey interval a side that neither initiated the session nor leads the pair waits. */
export const REKEY_FOLLOWER_GRACE_MS = 10_000;

/**
 * Whether the node with static key `own` leads the rekeys with the peer whose static key is `peer`:
 * the lower key (bytewise; equal keys: both). Both sides agree on it, whatever raced at the start, so
 * one of them rekeys on time (`rekeyMs`) even when each side's last completed handshake was the
 * other's (crossing handshakes); the other waits {@link REKEY_FOLLOWER_GRACE_MS} more unless it
 * initiated the session itself (a leader whose INITs do not get through leaves that side on time).
 *
 * @example
 * ```ts
 * import { leadsRekey } from "./rekey.ts";
 * const a = new Uint8Array([1, 2]), b = new Uint8Array([1, 3]);
 * console.log(leadsRekey(a, b), leadsRekey(b, a)); // true false
 * ```
 */
export function leadsRekey(own: Uint8Array, peer: Uint8Array): boolean {
  const n = Math.min(own.length, peer.length);
  for (let i = 0; i < n; i++) if (own[i] !== peer[i]) return own[i] < peer[i];
  return own.length <= peer.length;
}
