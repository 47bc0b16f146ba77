/**
 * Entries whose every field encodes (job, version, instance), so a reader can tell a consistent
 * answer from a torn one (tests/unit/shared_table_test.ts and its reader Worker).
 */
import type { TableEntry } from "../../src/table/entry.ts";

/** Job name of job `j`. */
export const hammerJob = (j: number): string => `app${j}.ns.svc${j}.ns`;
/** Round-robin ServiceIPv4 of job `j` (10.30.x.y). */
export const hammerRR4 = (j: number): number => (0x0a1e0000 + j + 1) >>> 0;
/** Node IP text of job `j` in `version`. */
export const hammerNode = (j: number, version: number): string => `192.168.${version}.${j & 255}:50103`;

/** Namespace IPv4: 10.20/16, bits job(11) version(2) instance(3). */
export function hammerNsip4(j: number, version: number, k: number): number {
  return ((10 << 24) | (20 << 16) | (j << 5) | (version << 3) | k) >>> 0;
}

/** The (job, version, instance) of a namespace IPv4, or undefined when it is not one of ours. */
export function decodeNsip4(a: number): { job: number; version: number; instance: number } | undefined {
  if (a >>> 16 !== ((10 << 8) | 20)) return undefined;
  return { job: (a >>> 5) & 0x7ff, version: (a >>> 3) & 3, instance: a & 7 };
}

/** The entries of job `j` in `version` (1..4 instances, depending on the version). */
export function hammerEntries(j: number, version: number): TableEntry[] {
  const out: TableEntry[] = [];
  for (let k = 0; k < 1 + ((j + version) % 4); k++) {
    const ns = hammerNsip4(j, version, k);
    const ns6 = new Uint8Array(16);
    ns6[0] = 0xfc;
    ns6[14] = (ns >>> 8) & 255;
    ns6[15] = ns & 255;
    ns6[13] = (ns >>> 16) & 255;
    const inst6 = ns6.slice();
    inst6[0] = 0xfd;
    out.push({
      job: hammerJob(j),
      instance: k,
      nodeIp: `192.168.${version}.${j & 255}`,
      nodePort: 50103,
      nsip4: ns,
      nsip6: ns6,
      serviceIps: [
        { kind: "RoundRobin", v4: hammerRR4(j) },
        { kind: "Instance", v4: (ns ^ 0x00010000) >>> 0, v6: inst6 },
      ],
    });
  }
  return out;
}
