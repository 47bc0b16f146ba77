/**
 * Reads the parts of a BPF ELF object (clang `-target bpf`, little-endian ELF64) that a loader needs:
 * each program section's instructions and function name, the relocations of its map references
 * (`ld_imm64` instructions to patch with a map fd), the legacy `maps` section's definitions and the
 * license. Used at build time (scripts/bpf_embed.ts) so the daemon needs neither clang nor an ELF
 * reader; any other relocation (globals, .rodata, calls to non-inlined functions) is refused.
 *
 * @example
 * ```ts
 * import { readBpfObject } from "./bpf_elf.ts";
 * declare const bytes: Uint8Array;
 * const obj = readBpfObject(bytes);
 * console.log(obj.programs.map((p) => p.name), obj.maps.map((m) => m.name));
 * ```
 */

/** The object is not one this reader accepts. */
export class BpfElfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BpfElfError";
  }
}

/** A map as defined in the object's `maps` section (`struct map_def` of bpf/kfast.c). */
export interface BpfMapDef {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** One program: its section, function name, instructions and map references. */
export interface BpfProgramDef {
  section: string;
  name: string;
  insns: Uint8Array;
  /** Instruction index of each `ld_imm64` that loads a map, and the map's name. */
  relocs: { insn: number; map: string }[];
}

/** What {@link readBpfObject} returns. */
export interface BpfObject {
  license: string;
  maps: BpfMapDef[];
  programs: BpfProgramDef[];
}

interface Section {
  name: string;
  type: number;
  offset: number;
  size: number;
  link: number;
  info: number;
}

const SHT_SYMTAB = 2;
const SHT_REL = 9;
const STT_FUNC = 2;
const R_BPF_64_64 = 1;
const MAP_DEF_SIZE = 20;

function cString(b: Uint8Array, at: number): string {
  let end = at;
  while (end < b.length && b[end] !== 0) end++;
  return new TextDecoder().decode(b.subarray(at, end));
}

/** Parses `bytes` (bounds-checked; throws {@link BpfElfError} on anything unexpected). */
export function readBpfObject(bytes: Uint8Array): BpfObject {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (ok: boolean, what: string) => {
    if (!ok) throw new BpfElfError(`BPF object: ${what}`);
  };
  need(bytes.length >= 64 && v.getUint32(0) === 0x7f454c46, "not an ELF file");
  need(bytes[4] === 2 && bytes[5] === 1, "not ELF64 little-endian");
  need(v.getUint16(18, true) === 247, "not e_machine EM_BPF");
  const shoff = Number(v.getBigUint64(0x28, true));
  const shentsize = v.getUint16(0x3a, true);
  const shnum = v.getUint16(0x3c, true);
  const shstrndx = v.getUint16(0x3e, true);
  need(shentsize === 64 && shoff + shnum * 64 <= bytes.length && shstrndx < shnum, "bad section table");
  const raw: Omit<Section, "name">[] = [];
  const nameOff: number[] = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * 64;
    nameOff.push(v.getUint32(o, true));
    const s = {
      type: v.getUint32(o + 4, true),
      offset: Number(v.getBigUint64(o + 24, true)),
      size: Number(v.getBigUint64(o + 32, true)),
      link: v.getUint32(o + 40, true),
      info: v.getUint32(o + 44, true),
    };
    need(s.type === 8 /* NOBITS */ || s.offset + s.size <= bytes.length, `section ${i} out of bounds`);
    raw.push(s);
  }
  const strtab = raw[shstrndx];
  const secs: Section[] = raw.map((s, i) => ({ ...s, name: cString(bytes, strtab.offset + nameOff[i]) }));
  const data = (s: Section) => bytes.subarray(s.offset, s.offset + s.size);

  const symtabIdx = secs.findIndex((s) => s.type === SHT_SYMTAB);
  need(symtabIdx >= 0, "no symbol table");
  const symtab = secs[symtabIdx];
  const symstr = secs[symtab.link];
  need(symstr !== undefined, "no symbol string table");
  const syms: { name: string; info: number; shndx: number; value: number }[] = [];
  for (let o = symtab.offset; o + 24 <= symtab.offset + symtab.size; o += 24) {
    syms.push({
      name: cString(bytes, symstr.offset + v.getUint32(o, true)),
      info: bytes[o + 4],
      shndx: v.getUint16(o + 6, true),
      value: Number(v.getBigUint64(o + 8, true)),
    });
  }

  const mapsIdx = secs.findIndex((s) => s.name === "maps");
  const maps: BpfMapDef[] = [];
  if (mapsIdx >= 0) {
    const m = secs[mapsIdx];
    for (const s of syms.filter((x) => x.shndx === mapsIdx && x.name !== "")) {
      need(s.value + MAP_DEF_SIZE <= m.size, `map ${s.name} out of bounds`);
      const o = m.offset + s.value;
      maps.push({
        name: s.name,
        type: v.getUint32(o, true),
        keySize: v.getUint32(o + 4, true),
        valueSize: v.getUint32(o + 8, true),
        maxEntries: v.getUint32(o + 12, true),
        flags: v.getUint32(o + 16, true),
      });
    }
  }
  maps.sort((a, b) => a.name < b.name ? -1 : 1);

  const licIdx = secs.findIndex((s) => s.name === "license");
  need(licIdx >= 0, "no license section");
  const license = cString(data(secs[licIdx]), 0);

  const programs: BpfProgramDef[] = [];
  secs.forEach((s, i) => {
    if (
      s.type !== 1 /* PROGBITS */ || s.size === 0 || !(s.name.startsWith("tc") || s.name.startsWith("xdp"))
    ) {
      if (s.name === ".text") need(s.size === 0, ".text is not empty (a function was not inlined)");
      return;
    }
    const funcs = syms.filter((x) => x.shndx === i && (x.info & 0xf) === STT_FUNC);
    need(funcs.length === 1 && funcs[0].value === 0, `section ${s.name}: one function expected`);
    need(s.size % 8 === 0, `section ${s.name}: not whole instructions`);
    const relocs: { insn: number; map: string }[] = [];
    const rel = secs.find((r) => r.type === SHT_REL && r.info === i);
    if (rel) {
      for (let o = rel.offset; o + 16 <= rel.offset + rel.size; o += 16) {
        const off = Number(v.getBigUint64(o, true));
        const info = v.getBigUint64(o + 8, true);
        const sym = syms[Number(info >> 32n)];
        const type = Number(info & 0xffffffffn);
        need(
          sym !== undefined && type === R_BPF_64_64 && sym.shndx === mapsIdx,
          `section ${s.name}: relocation at ${off} is not a map reference`,
        );
        need(
          off % 8 === 0 && off + 16 <= s.size && bytes[s.offset + off] === 0x18,
          `section ${s.name}: relocation at ${off} is not on ld_imm64`,
        );
        relocs.push({ insn: off / 8, map: sym.name });
      }
    }
    programs.push({ section: s.name, name: funcs[0].name, insns: data(s).slice(), relocs });
  });
  return { license, maps, programs };
}
