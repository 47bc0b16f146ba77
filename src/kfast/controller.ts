/**
 * Kernel fast path, the node's side: owns the {@link KernelFastPath} and re-plans it when the table
 * changes or the set of capable peers changes (from the workers' merged peer view, every second).
 * Re-planning is coalesced: at most one pass runs, and one more follows when something changed meanwhile.
 *
 * @example
 * ```ts
 * import { KfastController } from "./controller.ts";
 * import { TranslationTable } from "../table/table.ts";
 * const table = new TranslationTable();
 * const k = await KfastController.start({
 *   localIp: "192.168.1.1", localPort: 50103, bridge: "goProxyBridge", mtu: 1450, table: () => table,
 * });
 * k.onTableChange();
 * await k.stop();
 * ```
 */
import { logger } from "../log.ts";
import type { TableEntry } from "../table/entry.ts";
import type { TranslationTable } from "../table/table.ts";
import type { PeerStats } from "../proxy/peers.ts";
import { KernelFastPath, type KernelFastPathStatus } from "./kernel.ts";
import { type KfastPlan, planKfast } from "./plan.ts";
import type { KernelFlow } from "./conntrack.ts";
import { type Pin, selectMoves, type TunFlow } from "./move.ts";
import { kernelUse, parseUseFlows, type UseFlow } from "./usage.ts";
import { KFAST_MARK_BASE, KFAST_MARK_MASK } from "./render.ts";
import { runTool } from "../sys/command.ts";

/** What the controller drives: the VXLAN + nftables design (kernel.ts) or the tc programs (tc_path.ts). */
interface KfastBackend {
  readonly plan: KfastPlan;
  apply(plan: KfastPlan): Promise<void>;
  move(flows: readonly Pin[], now: number): Promise<number>;
  gcPins(now: number): Promise<number>;
  pinned(): ReadonlySet<string>;
  flows(): Promise<KernelFlow[]>;
  status(): KernelFastPathStatus;
  stop(): Promise<void>;
}

const log = logger("kfast");

/** How long a capable peer stays on the kernel path while the workers do not report it (ms). */
const KEEP_MS = 5000;
/** Running flows moved per look (one `conntrack -D` each, queued with the table's programming). */
const MAX_MOVES = 256;
/**
 * While TUN flows of kernel-carried services are not moved yet, the next look follows after this long
 * (ms) instead of the workers' once-a-second report: a flow moves within ~2 looks of its first packets.
 */
export const FAST_SWEEP_MS = 100;
/** After a look that found such a flow, quick looks go on this long (ms): new flows nearby move fast too. */
export const FAST_KEEP_MS = 2000;
/** How often the kernel's flows are read for use (well under the interests' 10 s idle expiry). */
export const USE_MS = 3000;

/** Options of {@link KfastController.start}. */
export interface KfastControllerOptions {
  /** This node's underlay IPv4 and tunnel port (entries naming them are local). */
  localIp: string;
  localPort: number;
  bridge: string;
  mtu: number;
  /** VXLAN port (default 4789). */
  port?: number;
  /** The translation table (once the data plane runs). */
  table: () => TranslationTable | undefined;
  /** The workers' live flows (the TUN path's): running flows move onto the kernel path. */
  tunFlows?: () => Promise<readonly TunFlow[]>;
  /** "vxlan" (default: kernel VXLAN + nftables) or "tc" (eBPF programs, Oakestra raw IP-in-UDP). */
  mode?: "vxlan" | "tc";
  /** tc mode: a flow's kernel entries go after this long without a packet (ms, default 30 s). */
  idleMs?: number;
  /**
   * Addresses (dotted) the kernel carried traffic for lately, every {@link USE_MS}: the ServiceIPs this
   * node's flows dialled and the InstanceIPs of peers' senders; their jobs are in use (the workers
   * never see these packets; src/kfast/usage.ts).
   */
  onKernelUse?: (serviceIps: readonly string[]) => void;
}

/** Every entry of a table (control path; entry objects built on demand). */
function* entriesOf(t: TranslationTable): Generator<TableEntry> {
  for (const job of t.jobs()) yield* t.job(job);
}

/** Keeps the kernel's fast path in line with the table and the peers. */
export class KfastController {
  readonly #k: KfastBackend;
  readonly #o: KfastControllerOptions;
  #peers = new Set<string>();
  /** When each peer was last reported capable (ms). */
  #lastKfast = new Map<string, number>();
  #running = false;
  #again = false;
  #idle: Promise<void> = Promise.resolve();
  #stopped = false;
  #sweeping = false;
  /** The quick follow-up look (FAST_SWEEP_MS), while one is due. */
  #fastTimer: ReturnType<typeof setTimeout> | undefined;
  /** Quick looks go on until then (ms). */
  #fastUntil = 0;
  /** Packet counts of TUN flows to kernel-carried services at the last look. */
  #seen = new Map<string, number>();
  /** Byte counts of the kernel's flows at the last use reading, and when it was (ms). */
  #useBytes = new Map<string, number>();
  #useAt = 0;

  /** Tunnel port of each peer (its endpoint in the workers' view; read by the tc mode). */
  #portsFrom = new Map<string, number>();

  private constructor(k: KfastBackend, o: KfastControllerOptions) {
    this.#k = k;
    this.#o = o;
  }

  /** Sets the kernel up (throws `KernelFastPathError` when it cannot be). */
  static async start(o: KfastControllerOptions): Promise<KfastController> {
    if (o.mode === "tc") {
      const ports = new Map<string, number>();
      const { TcFastPath } = await import("./tc_path.ts");
      const k = await TcFastPath.start({
        localIp: o.localIp,
        localPort: o.localPort,
        bridge: o.bridge,
        peerPort: (ip) => ports.get(ip),
        ...(o.idleMs !== undefined ? { idleMs: o.idleMs } : {}),
      });
      const c = new KfastController(k, o);
      c.#portsFrom = ports;
      return c;
    }
    const k = await KernelFastPath.start({
      localIp: o.localIp,
      bridge: o.bridge,
      mtu: o.mtu,
      ...(o.port !== undefined ? { port: o.port } : {}),
    });
    return new KfastController(k, o);
  }

  /** The workers' merged peer view: capable (both announced), IPv4, not down. */
  onPeers(peers: readonly PeerStats[], now = Date.now()): void {
    void this.#sweep(now);
    const seen = new Map<string, PeerStats>();
    for (const p of peers) {
      const ip = p.endpoint.slice(0, p.endpoint.lastIndexOf(":"));
      if (/^\d+\.\d+\.\d+\.\d+$/.test(ip)) {
        seen.set(ip, p);
        const port = Number(p.endpoint.slice(p.endpoint.lastIndexOf(":") + 1));
        if (Number.isInteger(port) && port > 0 && port < 65536) this.#portsFrom.set(ip, port);
      }
      if (p.kfast && p.health !== "down") this.#lastKfast.set(ip, now);
    }
    const next = new Set<string>();
    for (const [ip, at] of this.#lastKfast) {
      const p = seen.get(ip);
      // A table change re-creates a worker's peer (its capabilities unknown until the next HELLO):
      // keep the kernel path for a while instead of flapping; a peer down or without the bit leaves at once.
      const refused = p !== undefined && (p.health === "down" || (p.capsKnown && !p.kfast));
      if (!refused && now - at < KEEP_MS) next.add(ip);
      else if (now - at >= KEEP_MS || refused) this.#lastKfast.delete(ip);
    }
    if (next.size === this.#peers.size && [...next].every((p) => this.#peers.has(p))) return;
    this.#peers = next;
    this.#schedule();
  }

  /**
   * Moves running TUN flows of kernel-carried services onto the kernel path (src/kfast/move.ts) and
   * drops pins of ended flows; called with the workers' peer view, about once a second.
   */
  async #sweep(now: number): Promise<void> {
    const get = this.#o.tunFlows;
    if (!get || this.#sweeping || this.#stopped) return;
    const services = this.#k.plan.services;
    const reading = this.#o.onKernelUse !== undefined && this.#peers.size > 0; // kernel use (below)
    if (services.size === 0 && this.#k.status().pins === 0 && !reading) {
      this.#seen.clear();
      return;
    }
    this.#sweeping = true;
    try {
      if (services.size > 0) {
        const before = this.#seen;
        const sel = selectMoves(await get(), services, before, this.#k.pinned());
        this.#seen = sel.seen;
        if (sel.moves.length > 0) {
          // The rest stay active and unpinned: the next looks move them.
          const n = await this.#k.move(sel.moves.slice(0, MAX_MOVES), now);
          if (n > 0) log.info("running TUN flows moved onto the kernel path", { flows: n });
        }
        // A candidate new since the last look or still active on the TUN: look again soon (an idle
        // one waits for the workers' next report, so idle flows cost nothing).
        const pinned = this.#k.pinned();
        for (const [key, packets] of sel.seen) {
          const was = before.get(key);
          if (pinned.has(key) || (was !== undefined && packets <= was)) continue;
          this.#fastUntil = now + FAST_KEEP_MS;
          break;
        }
        if (now < this.#fastUntil) this.#fastLook();
      }
      await this.#k.gcPins(now);
      if (reading && now - this.#useAt >= USE_MS) {
        this.#useAt = now;
        const flows = await this.#useFlows();
        if (flows) {
          const u = kernelUse(flows, this.#useBytes);
          this.#useBytes = u.bytes;
          if (u.used.length > 0) this.#o.onKernelUse?.(u.used);
        }
      }
    } catch (e) {
      log.debug("kernel fast path: moving TUN flows failed (retried next time)", { error: String(e) });
    } finally {
      this.#sweeping = false;
    }
  }

  /** Schedules one sweep in {@link FAST_SWEEP_MS} (none when one is due already). */
  #fastLook(): void {
    if (this.#fastTimer !== undefined || this.#stopped) return;
    this.#fastTimer = setTimeout(() => {
      this.#fastTimer = undefined;
      void this.#sweep(Date.now());
    }, FAST_SWEEP_MS);
  }

  /**
   * The kernel's flows as far as use goes: VXLAN mode reads our marked conntrack entries; tc mode its
   * flow entries' counters (both addresses of a flow: the dialled one and the sender's InstanceIP).
   */
  async #useFlows(): Promise<UseFlow[] | undefined> {
    if (this.mode === "tc") {
      return (await this.#k.flows()).flatMap((f) => {
        const key = `${f.proto} ${f.src} ${f.sport} ${f.dialled} ${f.dport}`;
        return [
          { key: `${key} d`, addr: f.dialled, bytes: f.packets },
          { key: `${key} s`, addr: f.senderIp, bytes: f.packets },
        ];
      });
    }
    const r = await runTool("conntrack", ["-L", "-m", `${KFAST_MARK_BASE}/${KFAST_MARK_MASK}`]);
    return r.code === 0 ? parseUseFlows(r.stdout) : undefined;
  }

  /** "tc" or "vxlan" (the design running). */
  get mode(): "vxlan" | "tc" {
    return this.#o.mode ?? "vxlan";
  }

  /** A worker saw new flows: look at them soon when some could move (flows of kernel-carried services). */
  onNewFlows(): void {
    if (this.#k.plan.services.size > 0 && this.#o.tunFlows) this.#fastLook();
  }

  /** The table changed. */
  onTableChange(): void {
    this.#schedule();
  }

  #schedule(): void {
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    this.#idle = (async () => {
      let failures = 0;
      do {
        this.#again = false;
        const t = this.#o.table();
        if (!t) break;
        const plan = planKfast({
          entries: entriesOf(t),
          isLocal: (e) => e.nodeIp === this.#o.localIp && e.nodePort === this.#o.localPort,
          peers: this.#peers,
        });
        try {
          await this.#k.apply(plan);
        } catch (e) {
          // Rebuilt from scratch by apply(); a few retries, then the next change tries again.
          log.debug("kernel fast path: retrying after a failed step", { error: String(e) });
          if (++failures < 5 && !this.#stopped) this.#again = true;
          await new Promise((r) => setTimeout(r, 200));
        }
      } while (this.#again && !this.#stopped);
      this.#running = false;
    })();
  }

  /** Resolves when no re-planning is running (tests). */
  settled(): Promise<void> {
    return this.#idle;
  }

  /** The flows the kernel carries for this node's instances (for `table show --flows`). */
  flows(): Promise<KernelFlow[]> {
    return this.#k.flows();
  }

  /** What is programmed. */
  status(): KernelFastPathStatus {
    return this.#k.status();
  }

  /** Removes everything from the kernel. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#fastTimer);
    await this.#idle.catch(() => {});
    await this.#k.stop();
  }
}
