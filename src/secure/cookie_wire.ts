/**
 * The cookie fields of an HS_INIT as bytes, without any crypto: the workers' secure layer needs only
 * {@link hasMac2} to pick a forwarding budget, and importing `cookie.ts` (node:crypto) there would load
 * Node's crypto compatibility layer into every data-plane Worker (~2 MB each).
 *
 * @example
 * ```ts
 * import { hasMac2, INIT_WIRE_LEN } from "./cookie_wire.ts";
 * console.log(hasMac2(new Uint8Array(INIT_WIRE_LEN), 0, INIT_WIRE_LEN)); // false: not an HS_INIT
 * ```
 * @module
 */
import { MSG_HS_INIT } from "../proxy/wire.ts";

/** Length of each MAC. */
export const MAC_LEN = 16;
/** HS_INIT without its MACs (secure_wire.ts: header 8 + ephemeral key 32). */
export const INIT_BODY_LEN = 40;
/** HS_INIT on the wire: body, mac1, mac2. */
export const INIT_WIRE_LEN: number = INIT_BODY_LEN + 2 * MAC_LEN;

/** True when `buf[off .. off+len)` is an HS_INIT with a (not yet checked) mac2. */
export function hasMac2(buf: Uint8Array, off: number, len: number): boolean {
  if (len !== INIT_WIRE_LEN || buf[off] !== MSG_HS_INIT) return false;
  for (let i = off + INIT_WIRE_LEN - MAC_LEN; i < off + INIT_WIRE_LEN; i++) if (buf[i] !== 0) return true;
  return false;
}

/** True when `buf[off]` starts an HS_INIT (the other handshake datagrams are replies). */
export function isHsInit(buf: Uint8Array, off: number): boolean {
  return buf[off] === MSG_HS_INIT;
}
