/**
 * A relay on an ordinary node (issue 12, netcfg `RelayCandidate: true`): the node offers itself to
 * the control plane (relay_msg.ts `offer`, repeated every 10 s, withdrawn on stop), and the control
 * plane — when it has no relay of its own — places pairs of NAT'd nodes on it (`serve`). The
 * allocations are those of the control plane's relay (relay.ts: the same forwarding Worker, locks
 * by HELLO from the address the control plane's reflector saw, per-node rate limits, idle expiry),
 * only the list of nodes and their addresses comes from the control plane in each command.
 *
 * @example
 * ```ts
 * import { RelayHost } from "./relay_host.ts";
 * const h = new RelayHost({ worker: "w3", address: "127.0.0.1", publish: (t, b) => console.log(t, b) });
 * await h.handle({ op: "pair", a: "w1", b: "w2", observed: { w1: "127.0.0.1", w2: "127.0.0.1" } });
 * await h.stop();
 * ```
 * @module
 */
import { logger } from "../log.ts";
import { RelayServer, type RelayTotals } from "./relay.ts";
import {
  parseRelayServe,
  RELAY_OFFER_EVERY_MS,
  relayOfferTopic,
  relayServedTopic,
  relayServeTopic,
} from "./relay_msg.ts";

const log = logger("relay-host");

/** Options of {@link RelayHost}. */
export interface RelayHostOptions {
  /** This node's worker id. */
  worker: string;
  /** This node's public IPv4 address (where the relayed nodes dial its allocations). */
  address: string;
  /** Bind address of the allocations (default 0.0.0.0). */
  host?: string;
  /** Per-node rate in bytes per second (default 125 000 000 = 1 Gbit/s). */
  bytesPerSec?: number;
  /** Allocation ports come from this range (default: any free port). */
  ports?: readonly [number, number];
  /** Publishes a JSON body to the control plane (false/rejected: not sent, e.g. disconnected). */
  publish: (topic: string, body: unknown) => unknown;
}

/** See the module. */
export class RelayHost {
  readonly #opts: RelayHostOptions;
  readonly #server: RelayServer;
  /** Each relayed node's public address, as the control plane's reflector saw it. */
  readonly #observed = new Map<string, string>();
  readonly #timer: ReturnType<typeof setInterval>;
  /** New each start: the control plane sees a restarted relay (without the old allocations). */
  readonly #id = crypto.randomUUID();

  constructor(opts: RelayHostOptions) {
    this.#opts = opts;
    this.#server = new RelayServer({
      address: opts.address,
      host: opts.host ?? "0.0.0.0",
      observedIp: (w) => this.#observed.get(w),
      bytesPerSec: opts.bytesPerSec ?? 125_000_000,
      ...(opts.ports ? { ports: opts.ports } : {}),
      onFreed: (a, b) => this.#opts.publish(relayServedTopic(opts.worker), { a, b, freed: true }),
    });
    this.offer();
    this.#timer = setInterval(() => this.offer(), RELAY_OFFER_EVERY_MS);
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** The topic the control plane's commands arrive on. */
  get topic(): string {
    return relayServeTopic(this.#opts.worker);
  }

  /** Offers this node as a relay (again; also right after a reconnect). */
  offer(): void {
    this.#opts.publish(relayOfferTopic(this.#opts.worker), {
      on: true,
      address: this.#opts.address,
      id: this.#id,
    });
  }

  /** Applies one command of the control plane (malformed: logged, nothing changes). */
  async handle(body: unknown): Promise<void> {
    const c = parseRelayServe(body);
    if (!c) return void log.warn("ignoring malformed relay command", { topic: this.topic });
    if (c.op === "observed" || c.op === "pair") {
      for (const [w, ip] of Object.entries(c.observed)) this.#observed.set(w, ip);
      this.#server.observedChanged();
    }
    if (c.op === "drop") {
      if (this.#server.drop(c.a, c.b)) this.#prune();
    } else if (c.op === "pair") {
      const served = relayServedTopic(this.#opts.worker);
      try {
        const { ports, created } = await this.#server.pair(c.a, c.b);
        if (created) log.info("relaying for the control plane", { nodes: `${c.a} ${c.b}` });
        this.#opts.publish(served, { a: c.a, b: c.b, ports });
      } catch (e) {
        this.#opts.publish(served, { a: c.a, b: c.b, error: (e as Error).message });
      }
    }
  }

  /** Forgets the addresses of nodes without allocations here. */
  #prune(): void {
    for (const w of [...this.#observed.keys()]) {
      if (this.#server.partnersOf(w).length === 0) this.#observed.delete(w);
    }
  }

  /** Counters of this node's relay (for `status`). */
  totals(): RelayTotals {
    return this.#server.totals();
  }

  /** Withdraws the offer (waiting at most a second for it to leave) and frees every allocation. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#server.stop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.resolve(this.#opts.publish(relayOfferTopic(this.#opts.worker), { on: false })).catch(() => {}),
      new Promise((r) => timer = setTimeout(r, 1000)),
    ]);
    clearTimeout(timer);
  }
}
