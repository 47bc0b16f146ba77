/**
 * `struct iovec` arrays in plain bytes, for readv/writev through FFI.
 *
 * @example
 * ```ts
 * import { putIov } from "./iov.ts";
 * const iov = new Uint32Array(2 * 4); // two iovecs
 * putIov(iov, 0, 0x1000, 10);
 * ```
 * @module
 */

/** Sets `struct iovec` `i` in `w` (a pointer as two little-endian words, then the length). */
export function putIov(w: Uint32Array, i: number, addr: number, len: number): void {
  w[i * 4] = addr >>> 0;
  w[i * 4 + 1] = (addr / 0x100000000) >>> 0;
  w[i * 4 + 2] = len;
  w[i * 4 + 3] = 0;
}
