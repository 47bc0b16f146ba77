/**
 * Per-ServiceIP traffic counters of one data-plane worker: packets and bytes that local instances
 * sent to a ServiceIP or InstanceIP (`tx`) and that were delivered to local instances from one
 * (`rx`: a reply whose source was restored to the dialled ServiceIP, or a request whose source is a
 * client's InstanceIP). An InstanceIP names one instance, so its counters are that instance's.
 *
 * Cost on the packet path: counters are typed arrays indexed by the table's ServiceIP group number
 * (no objects, no strings); the last address looked up (IPv4) is cached, so a run of packets of one
 * flow costs a compare and two additions each. Group numbers change only with the table: when its
 * generation moves, the counts are carried over to the groups' new numbers by address (addresses
 * that left the table are dropped, which keeps the label set bounded by the table).
 *
 * @example
 * ```ts
 * import { ServiceCounters, SVC_TX } from "./service_counters.ts";
 * import { TranslationTable } from "../table/table.ts";
 * import { parseIPv4 } from "../addr/mod.ts";
 * const t = new TranslationTable();
 * t.replaceJob("app.ns.svc.ns", [{
 *   job: "app.ns.svc.ns", instance: 0, nodeIp: "192.0.2.1", nodePort: 50103,
 *   nsip4: parseIPv4("10.18.0.66"), serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }],
 * }]);
 * const c = new ServiceCounters(t);
 * c.add4(parseIPv4("10.30.0.1"), 84, SVC_TX);
 * c.report(); // [{ address: "10.30.0.1", txPackets: 1, txBytes: 84, rxPackets: 0, rxBytes: 0 }]
 * ```
 * @module
 */
import { formatIPv4, tryParseIPv6 } from "../addr/mod.ts";
import type { TranslationTable } from "../table/table.ts";
import type { TableReader } from "../table/shared_view.ts";
import type { ServiceIpKind } from "../table/entry.ts";

/** Direction: sent by a local instance to the address. */
export const SVC_TX = 0;
/** Direction: delivered to a local instance from the address. */
export const SVC_RX = 1;

/** One address's traffic (plain data, postMessage-able). */
export interface ServiceTraffic {
  /** The ServiceIP or InstanceIP (canonical text). */
  address: string;
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
}

/** Per-ServiceIP counters of one worker. See the module documentation. */
export class ServiceCounters {
  readonly #table: TableReader;
  /** Two per group: [tx, rx]. */
  #packets = new Float64Array(64);
  #bytes = new Float64Array(64);
  /** The address (v4 number, v6 text) a group's counts belong to; undefined while it has none. */
  #keys: (number | string | undefined)[] = [];
  #gen: number;
  #last4 = -1;
  #lastGroup4 = -1;

  /** Counters over the (worker's) table `table`: the owner's, or a Worker's shared view of it. */
  constructor(table: TableReader) {
    this.#table = table;
    this.#gen = table.generation;
  }

  /** Counts a packet of `len` bytes to (`SVC_TX`) or from (`SVC_RX`) the IPv4 address `addr`. */
  add4(addr: number, len: number, dir: number): void {
    if (this.#gen !== this.#table.generation) this.#remap();
    let g = this.#lastGroup4;
    if (addr !== this.#last4) {
      g = this.#table.groupOf4(addr);
      this.#last4 = addr;
      this.#lastGroup4 = g;
    }
    if (g >= 0) this.#add(g, len, dir);
  }

  /** Counts a packet of `len` bytes to or from the IPv6 address at `buf[off..off+16]`. */
  add6(buf: Uint8Array, off: number, len: number, dir: number): void {
    if (this.#gen !== this.#table.generation) this.#remap();
    const g = this.#table.groupOf6(buf, off);
    if (g >= 0) this.#add(g, len, dir);
  }

  #add(g: number, len: number, dir: number): void {
    if (this.#keys[g] === undefined) this.#claim(g);
    const i = (g << 1) | dir;
    this.#packets[i]++;
    this.#bytes[i] += len;
  }

  /** A group counts for the first time: remember its address (off the per-packet path). */
  #claim(g: number): void {
    const need = (g + 1) << 1;
    if (need > this.#packets.length) {
      const n = Math.max(need, this.#packets.length << 1);
      const p = new Float64Array(n);
      p.set(this.#packets);
      const b = new Float64Array(n);
      b.set(this.#bytes);
      this.#packets = p;
      this.#bytes = b;
    }
    this.#keys[g] = this.#table.groupKey(g);
  }

  /** The table changed: move each address's counts to its group's current number. */
  #remap(): void {
    const t = this.#table;
    const old = this.#keys;
    const pk = this.#packets.slice();
    const by = this.#bytes.slice();
    // A Worker's view may change under the lookups: start over from the saved counts until no change
    // overlapped (the owner's table never races).
    for (;;) {
      const v = t.readBegin();
      this.#remapFrom(old, pk, by);
      if (t.readValid(v)) return;
    }
  }

  #remapFrom(old: readonly (number | string | undefined)[], pk: Float64Array, by: Float64Array): void {
    const t = this.#table;
    this.#packets.fill(0);
    this.#bytes.fill(0);
    this.#keys = [];
    this.#gen = t.generation;
    this.#last4 = -1;
    this.#lastGroup4 = -1;
    for (let g = 0; g < old.length; g++) {
      const k = old[g];
      if (k === undefined) continue;
      let ng: number;
      if (typeof k === "number") ng = t.groupOf4(k);
      else {
        const b = tryParseIPv6(k);
        ng = b ? t.groupOf6(b, 0) : -1;
      }
      if (ng < 0) continue; // the address left the table: its series ends
      if (this.#keys[ng] === undefined) this.#claim(ng);
      for (let d = 0; d < 2; d++) {
        this.#packets[(ng << 1) | d] += pk[(g << 1) | d];
        this.#bytes[(ng << 1) | d] += by[(g << 1) | d];
      }
    }
  }

  /** Every address that carried traffic, with its counts. */
  report(): ServiceTraffic[] {
    if (this.#gen !== this.#table.generation) this.#remap();
    const out: ServiceTraffic[] = [];
    const keys = this.#keys;
    for (let g = 0; g < keys.length; g++) {
      const k = keys[g];
      if (k === undefined) continue;
      const i = g << 1;
      out.push({
        address: typeof k === "number" ? formatIPv4(k) : k,
        txPackets: this.#packets[i],
        txBytes: this.#bytes[i],
        rxPackets: this.#packets[i + 1],
        rxBytes: this.#bytes[i + 1],
      });
    }
    return out;
  }
}

/** Sums several workers' reports by address. */
export function mergeServiceTraffic(parts: readonly (readonly ServiceTraffic[])[]): ServiceTraffic[] {
  const by = new Map<string, ServiceTraffic>();
  for (const part of parts) {
    for (const s of part) {
      const had = by.get(s.address);
      if (!had) by.set(s.address, { ...s });
      else {
        had.txPackets += s.txPackets;
        had.txBytes += s.txBytes;
        had.rxPackets += s.rxPackets;
        had.rxBytes += s.rxBytes;
      }
    }
  }
  return [...by.values()];
}

/** One address's traffic with its names from the table (for metrics, status and reports). */
export interface NamedServiceTraffic extends ServiceTraffic {
  /** Job name of the service (several jobs sharing one address: their names joined by ","). */
  service: string;
  /** Balancing kind of the address (`Instance` for an InstanceIP). */
  kind: ServiceIpKind;
  /** An InstanceIP: the instance it names. */
  instance?: number;
}

/**
 * Names merged counts from `table` (the main isolate's). Addresses no longer in the table are left
 * out, so the series stay bounded by the table's ServiceIPs. Sorted by service, then address.
 */
export function nameServiceTraffic(
  list: readonly ServiceTraffic[],
  table: TranslationTable,
): NamedServiceTraffic[] {
  const out: NamedServiceTraffic[] = [];
  for (const s of list) {
    const g = table.service(s.address);
    if (!g || g.entries.length === 0) continue;
    const jobs = [...new Set(g.entries.map((e) => e.job))].join(",");
    out.push({
      ...s,
      service: jobs,
      kind: g.kind,
      ...(g.kind === "Instance" && g.entries.length === 1 ? { instance: g.entries[0].instance } : {}),
    });
  }
  return out.sort((a, b) =>
    a.service < b.service ? -1 : a.service > b.service ? 1 : a.address < b.address ? -1 : 1
  );
}
