/**
 * iptables/ip6tables through `iptables-restore --noflush` (one process per batch, atomic) and
 * `iptables-save` (to see what exists). Callers build rule text with `src/env/rules.ts`.
 *
 * @example
 * ```ts
 * await iptablesRestore(4, "*nat\n-A OAKESTRA -p tcp --dport 80 -j DNAT --to-destination 10.18.0.66:80\nCOMMIT\n");
 * ```
 */
import { runTool, ToolError } from "./command.ts";

/** Address family of a rule set. */
export type Family = 4 | 6;

const RESTORE = { 4: "iptables-restore", 6: "ip6tables-restore" } as const;
const SAVE = { 4: "iptables-save", 6: "ip6tables-save" } as const;

/** Applies a restore script without flushing other rules; throws ToolError when the kernel refuses it. */
export async function iptablesRestore(family: Family, script: string, netns?: string): Promise<void> {
  const r = await runTool(RESTORE[family], ["--noflush", "-w", "5"], { stdin: script, netns });
  if (r.code !== 0) throw new ToolError(RESTORE[family], r);
}

/** Returns `iptables-save` output for one table. */
export async function iptablesSave(family: Family, table: string, netns?: string): Promise<string> {
  const r = await runTool(SAVE[family], ["-t", table], { netns });
  if (r.code !== 0) throw new ToolError(SAVE[family], r);
  return r.stdout;
}

/**
 * Serializes restores per family and merges those queued while one runs into one process
 * ("group commit"): 60 concurrent deploys cost a handful of iptables-restore runs, and the nft
 * backend never sees two transactions racing. When a merged batch fails, each request is retried
 * alone so only the faulty one fails.
 */
export class RestoreQueue {
  #pending: { 4: Req[]; 6: Req[] } = { 4: [], 6: [] };
  #running: { 4: boolean; 6: boolean } = { 4: false, 6: false };
  readonly #netns?: string;

  constructor(netns?: string) {
    this.#netns = netns;
  }

  /** Queues a script (`*table` sections with COMMIT) and resolves when it has been applied. */
  apply(family: Family, script: string): Promise<void> {
    if (script.trim() === "") return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#pending[family].push({ script, resolve, reject });
      if (!this.#running[family]) this.#drain(family);
    });
  }

  async #drain(family: Family): Promise<void> {
    this.#running[family] = true;
    try {
      while (this.#pending[family].length > 0) {
        const batch = this.#pending[family].splice(0);
        try {
          await iptablesRestore(family, batch.map((r) => r.script).join(""), this.#netns);
          for (const r of batch) r.resolve();
        } catch (e) {
          if (batch.length === 1) {
            batch[0].reject(e);
            continue;
          }
          for (const r of batch) {
            try {
              await iptablesRestore(family, r.script, this.#netns);
              r.resolve();
            } catch (e2) {
              r.reject(e2);
            }
          }
        }
      }
    } finally {
      this.#running[family] = false;
    }
  }
}

interface Req {
  script: string;
  resolve: () => void;
  reject: (e: unknown) => void;
}
