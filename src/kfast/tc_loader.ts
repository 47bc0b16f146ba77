/**
 * Loads the embedded tc fast-path programs (src/kfast/tc_prog.gen.ts): creates their maps, patches the
 * map fds into the `ld_imm64` instructions, loads them (verifier log on refusal) and attaches them
 * with tcx — `nm_kf_out` on the instances' side, `nm_kf_in` on the underlay. tcx attachments belong
 * to the devices, so a killed daemon leaves them working; {@link TcPrograms.adopt} picks them (and
 * their maps, by the programs' map ids) up again, {@link cleanTcPrograms} removes them by name.
 *
 * @example
 * ```ts
 * import { TcPrograms } from "./tc_loader.ts";
 * const p = TcPrograms.load();
 * p.attach({ out: [5], in: [2] });
 * p.close(); // fds only: the attachments stay until detach()
 * ```
 */
import { Buffer } from "node:buffer";
import {
  BPF_PROG_TYPE_SCHED_CLS,
  BPF_TCX_INGRESS,
  BpfMap,
  closeFd,
  mapFdById,
  mapInfo,
  progFdById,
  progInfo,
  tcxAttach,
  tcxDetach,
  tcxQuery,
} from "../sys/bpf.ts";
import { BpfError, loadProgram } from "../../ffi/bpf.ts";
import { TC_OBJECT } from "./tc_prog.gen.ts";
import { cstr, libc } from "../../ffi/libc.ts";
import type { BpfEmbedded } from "./tc_types.ts";

/** Program names (kernel object names, ≤ 15 bytes). */
export const TC_PROG_OUT = "nm_kf_out";
export const TC_PROG_IN = "nm_kf_in";
const OURS = new Set([TC_PROG_OUT, TC_PROG_IN]);

/** The maps by name (without the `nm_kf_` prefix). */
export interface TcMaps {
  egress: BpfMap;
  ingress: BpfMap;
  locals: BpfMap;
  peers: BpfMap;
  config: BpfMap;
  stats: BpfMap;
  /** ServiceIP → candidates + RR counter (first packets decided in the kernel, src/kfast/tc_services.ts). */
  svc: BpfMap;
  /** Local namespace IP → its InstanceIP. */
  snat: BpfMap;
}

/** Where the programs are attached: ifindexes (tcx ingress). */
export interface TcAttachments {
  out: number[];
  in: number[];
}

function mapsOf(byName: Map<string, BpfMap>): TcMaps {
  const get = (n: string) => {
    const m = byName.get(`nm_kf_${n}`);
    if (!m) throw new BpfError(`map nm_kf_${n} missing`, 2);
    return m;
  };
  return {
    egress: get("egress"),
    ingress: get("ingress"),
    locals: get("locals"),
    peers: get("peers"),
    config: get("config"),
    stats: get("stats"),
    svc: get("svc"),
    snat: get("snat"),
  };
}

/** Loaded programs and their maps (fds owned here). */
export class TcPrograms {
  readonly maps: TcMaps;
  /** Program fds by name. */
  readonly progs: ReadonlyMap<string, number>;

  private constructor(maps: TcMaps, progs: Map<string, number>) {
    this.maps = maps;
    this.progs = progs;
  }

  /** Creates the maps and loads the programs of `obj` (the embedded object by default). */
  static load(obj: BpfEmbedded = TC_OBJECT): TcPrograms {
    const byName = new Map<string, BpfMap>();
    const progs = new Map<string, number>();
    try {
      for (const d of obj.maps) byName.set(d.name, BpfMap.create(d));
      for (const p of obj.programs) {
        const insns = new Uint8Array(Buffer.from(p.insns, "base64"));
        const dv = new DataView(insns.buffer);
        for (const r of p.relocs) {
          const m = byName.get(r.map);
          const at = r.insn * 8;
          if (!m || at + 16 > insns.length || insns[at] !== 0x18) {
            throw new BpfError(`relocation of ${p.name} at ${r.insn}`, 22);
          }
          insns[at + 1] = (insns[at + 1] & 0x0f) | (1 << 4); // src_reg = BPF_PSEUDO_MAP_FD
          dv.setInt32(at + 4, m.fd, true);
          dv.setInt32(at + 12, 0, true);
        }
        progs.set(
          p.name,
          loadProgram({ name: p.name, type: BPF_PROG_TYPE_SCHED_CLS, insns, license: obj.license }),
        );
      }
      return new TcPrograms(mapsOf(byName), progs);
    } catch (e) {
      for (const m of byName.values()) m.close();
      for (const fd of progs.values()) closeFd(fd);
      throw e;
    }
  }

  /**
   * The programs a previous daemon attached to these devices, with their maps; undefined when none
   * (or only part) is found — then {@link cleanTcPrograms} and {@link load}.
   */
  static adopt(at: TcAttachments, obj: BpfEmbedded = TC_OBJECT): TcPrograms | undefined {
    const progs = new Map<string, number>();
    const byName = new Map<string, BpfMap>();
    const close = () => {
      for (const fd of progs.values()) closeFd(fd);
      for (const m of byName.values()) m.close();
    };
    const want = (name: string, ifs: number[]) => {
      for (const ifindex of ifs) {
        const found = attachedOurs(ifindex).find((p) => p.name === name);
        if (!found) return false;
        if (progs.has(name)) {
          if (progInfo(progs.get(name)!).id !== found.id) return false;
          closeFd(found.fd);
        } else progs.set(name, found.fd);
      }
      return true;
    };
    try {
      if (!want(TC_PROG_OUT, at.out) || !want(TC_PROG_IN, at.in) || progs.size !== 2) {
        close();
        return undefined;
      }
      for (const fd of progs.values()) {
        for (const id of progInfo(fd).mapIds) {
          const mfd = mapFdById(id);
          if (mfd === undefined) continue;
          const name = mapInfo(mfd).name;
          const spec = obj.maps.find((m) => m.name === name);
          if (!spec || byName.has(name)) {
            closeFd(mfd);
            continue;
          }
          byName.set(name, BpfMap.adopt(mfd, spec));
        }
      }
      if (byName.size !== obj.maps.length) {
        close();
        return undefined;
      }
      return new TcPrograms(mapsOf(byName), progs);
    } catch (e) {
      close();
      // Programs of an older build (other map layouts): not adoptable, the caller cleans and loads.
      if (e instanceof BpfError && e.message.includes("different layout")) return undefined;
      throw e;
    }
  }

  /** Attaches `nm_kf_out` / `nm_kf_in` (tcx ingress) to the devices. */
  attach(at: TcAttachments): void {
    for (const i of at.out) tcxAttach(i, this.progs.get(TC_PROG_OUT)!, BPF_TCX_INGRESS);
    for (const i of at.in) tcxAttach(i, this.progs.get(TC_PROG_IN)!, BPF_TCX_INGRESS);
  }

  /** Detaches them (devices gone or already detached are skipped). */
  detach(at: TcAttachments): void {
    for (const i of at.out) safeDetach(i, this.progs.get(TC_PROG_OUT)!);
    for (const i of at.in) safeDetach(i, this.progs.get(TC_PROG_IN)!);
  }

  /**
   * Attaches `nm_kf_out` to one more device (an instance's host-side veth: its packets then skip the
   * bridge). Already ours there: nothing; a previous load's `nm_kf_out` there is replaced.
   */
  attachOut(ifindex: number): void {
    const fd = this.progs.get(TC_PROG_OUT)!;
    const id = progInfo(fd).id;
    let have = false;
    for (const p of attachedOurs(ifindex)) {
      if (p.name === TC_PROG_OUT && p.id === id) have = true;
      else if (p.name === TC_PROG_OUT) safeDetach(ifindex, p.fd);
      closeFd(p.fd);
    }
    if (!have) tcxAttach(ifindex, fd, BPF_TCX_INGRESS);
  }

  /** Detaches `nm_kf_out` from one device (gone or not attached: nothing). */
  detachOut(ifindex: number): void {
    safeDetach(ifindex, this.progs.get(TC_PROG_OUT)!);
  }

  /** Closes the fds (attached programs keep running; their maps live while they do). */
  close(): void {
    for (const fd of this.progs.values()) closeFd(fd);
    for (const m of Object.values(this.maps) as BpfMap[]) m.close();
  }
}

function safeDetach(ifindex: number, fd: number): void {
  try {
    tcxDetach(ifindex, fd, BPF_TCX_INGRESS);
  } catch (e) {
    if (!(e instanceof BpfError) || (e.errno !== 19 && e.errno !== 2)) throw e;
  }
}

/** Our programs attached at a device's tcx ingress (fds the caller closes). */
function attachedOurs(ifindex: number): { id: number; name: string; fd: number }[] {
  const out: { id: number; name: string; fd: number }[] = [];
  for (const id of tcxQuery(ifindex, BPF_TCX_INGRESS)) {
    const fd = progFdById(id);
    if (fd === undefined) continue;
    const name = progInfo(fd).name;
    if (OURS.has(name)) out.push({ id, name, fd });
    else closeFd(fd);
  }
  return out;
}

/**
 * Detaches every program of ours from the tcx ingress of every device of this network namespace
 * (`netmanager clean`, a start that cannot adopt); their maps go with the last reference. Returns
 * how many were detached.
 */
export function cleanTcPrograms(): number {
  let n = 0;
  for (const ifindex of deviceIndexes()) {
    let ours: { id: number; name: string; fd: number }[];
    try {
      ours = attachedOurs(ifindex);
    } catch (e) {
      // A kernel without tcx (< 6.6) or BPF refuses the query: nothing of ours can be there.
      if (e instanceof BpfError && (e.errno === 22 || e.errno === 1 || e.errno === 95)) continue;
      throw e;
    }
    for (const p of ours) {
      safeDetach(ifindex, p.fd);
      closeFd(p.fd);
      n++;
    }
  }
  return n;
}

/**
 * The ifindexes of the calling thread's network namespace (/proc/thread-self/net/dev and
 * if_nametoindex both follow the thread's namespace; /sys/class/net follows the sysfs mount).
 */
export function deviceIndexes(): number[] {
  const out: number[] = [];
  for (const line of Deno.readTextFileSync("/proc/thread-self/net/dev").split("\n").slice(2)) {
    const name = line.split(":")[0].trim();
    if (!name) continue;
    const i = libc.if_nametoindex(cstr(name));
    if (i > 0) out.push(i);
  }
  return out;
}
