/**
 * The node's state file: every resource the environment manager created, so a restart (also after
 * SIGKILL or a reboot) reconciles instead of leaking, and `netmanager clean` can remove everything.
 * Written atomically (temp file + rename) after every change.
 *
 * @example
 * ```ts
 * const store = new StateStore("/var/lib/netmanager");
 * const s = store.load() ?? emptyState();
 * store.save(s);
 * ```
 */
import { z } from "zod";
import { isIPv4, isIPv6 } from "../addr/mod.ts";

const PortSchema = z.object({
  proto: z.enum(["tcp", "udp"]),
  hostPort: z.number().int().min(1).max(65535),
  containerPort: z.number().int().min(1).max(65535),
});

/** One deployed instance's network resources. */
export const InstanceRecordSchema = z.object({
  key: z.string(),
  job: z.string(),
  instance: z.number().int().min(0),
  kind: z.enum(["container", "unikernel"]),
  pid: z.number().int().optional(),
  netns: z.string().optional(),
  hostVeth: z.string(),
  peerVeth: z.string(),
  offset: z.number().int(),
  ipv4: z.string().refine(isIPv4),
  ipv6: z.string().refine(isIPv6),
  ports: z.array(PortSchema),
  createdAt: z.string(),
  /** Undeployed; its resources are being removed in the background. */
  removing: z.boolean().optional(),
  /**
   * "pending": reserved (address, veth names, ports) and written before the first kernel change of
   * its deploy; "ready" (or absent, older files) once the deploy completed. A restart removes
   * whatever a pending record may have created: its deploy never answered 200.
   */
  phase: z.enum(["pending", "ready"]).optional(),
});

/** A deployed instance's record. */
export type InstanceRecord = z.infer<typeof InstanceRecordSchema>;

/** The whole state file. */
export const NodeStateSchema = z.object({
  version: z.literal(1),
  workerId: z.string().optional(),
  clusterAddress: z.string().optional(),
  subnet: z.string().optional(),
  bridge: z.string().optional(),
  natChain: z.string().optional(),
  tun: z.string().optional(),
  vethCounter: z.number().int().min(0),
  allocator: z.object({ first: z.number(), last: z.number(), next: z.number(), free: z.array(z.number()) })
    .optional(),
  instances: z.array(InstanceRecordSchema),
});

/** The node state. */
export type NodeState = z.infer<typeof NodeStateSchema>;

/** A fresh, empty state. */
export function emptyState(): NodeState {
  return { version: 1, vethCounter: 0, instances: [] };
}

/** A state file that exists but cannot be read as state. */
export class StateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StateError";
  }
}

const RECOVERY = " (to start over: `netmanager clean`, which removes the node's networking and this file)";

/** Reads and writes `state.json` in a directory. */
export class StateStore {
  readonly path: string;
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    this.path = `${dir}/state.json`;
  }

  /**
   * The saved state, or undefined when there is none. Throws StateError for a corrupt file and for
   * a path that is not a regular file (a FIFO would block the read forever).
   */
  load(): NodeState | undefined {
    let text: string;
    try {
      const st = Deno.lstatSync(this.path);
      if (!st.isFile) {
        const what = st.isSymlink ? "a symbolic link" : st.isDirectory ? "a directory" : "not a regular file";
        throw new StateError(
          `${this.path} is ${what} (a FIFO, socket or device?): refusing to read it; ` +
            "remove it or run `netmanager clean`",
        );
      }
      text = Deno.readTextFileSync(this.path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      if (e instanceof StateError) throw e;
      throw new StateError(`${this.path}: ${e instanceof Error ? e.message : e}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new StateError(`${this.path}: invalid JSON: ${e instanceof Error ? e.message : e}${RECOVERY}`);
    }
    const r = NodeStateSchema.safeParse(raw);
    if (!r.success) {
      throw new StateError(`${this.path}: ${z.prettifyError(r.error).replaceAll("\n", " ")}${RECOVERY}`);
    }
    return r.data;
  }

  /** Writes the state atomically (mode 0600). */
  save(state: NodeState): void {
    Deno.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.tmp`;
    Deno.writeTextFileSync(tmp, JSON.stringify(state, null, 1), { mode: 0o600 });
    Deno.renameSync(tmp, this.path);
  }

  /**
   * Deletes the state file (after a full clean), also when something else stands at its path (a
   * directory or FIFO that start-up refused); true when something was removed.
   */
  remove(): boolean {
    let removed = false;
    for (const p of [this.path, `${this.path}.tmp`]) {
      try {
        Deno.removeSync(p, { recursive: true });
        if (p === this.path) removed = true;
      } catch {
        // already gone
      }
    }
    return removed;
  }
}
