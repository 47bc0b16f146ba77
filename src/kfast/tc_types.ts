/**
 * The shape of the generated module src/kfast/tc_prog.gen.ts (compiled bpf/kfast.c, embedded).
 *
 * @example
 * ```ts
 * import type { BpfEmbedded } from "./tc_types.ts";
 * const empty: BpfEmbedded = { sourceSha256: "", license: "GPL", maps: [], programs: [] };
 * ```
 */
import type { BpfMapDef } from "./bpf_elf.ts";

/** Programs and maps of one BPF object, as embedded bytes. */
export interface BpfEmbedded {
  /** sha256 (hex) of the C source the object was compiled from. */
  sourceSha256: string;
  license: string;
  maps: BpfMapDef[];
  programs: {
    section: string;
    name: string;
    relocs: { insn: number; map: string }[];
    /** Instructions, base64. */
    insns: string;
  }[];
}
