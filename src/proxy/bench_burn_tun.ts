/**
 * The TUN device of the bench slot `nm-fast-aead-cpu` (see bench_burn.ts): a {@link VnetTun} that
 * spins per message. Loaded by the workers only; the main isolate needs just bench_burn.ts.
 * @module
 */

import type { AssembledPacket } from "./seams.ts";
import { type TunFd, VnetTun, type VnetTunOptions } from "./tun_device.ts";
import { type BenchBurn, BURN_MIN_READ, spin } from "./bench_burn.ts";

/** A {@link VnetTun} that spins per message as {@link BenchBurn} says (see the module). */
export class BurningTun extends VnetTun {
  readonly #burn: BenchBurn;

  constructor(burn: BenchBurn, dev: TunFd, opts: VnetTunOptions) {
    super(dev, opts);
    this.#burn = burn;
  }

  override read(): number {
    const n = super.read();
    if (n > BURN_MIN_READ) spin(this.#burn.txUs);
    return n;
  }

  override writeAssembled(p: AssembledPacket): boolean {
    spin(this.#burn.rxUs);
    return super.writeAssembled(p);
  }
}
