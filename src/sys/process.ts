/**
 * Long-running child processes (the demo's daemons and servers) and how to start this program
 * again (as `deno run main.ts` or as the compiled binary).
 *
 * @example
 * ```ts
 * const p = spawnBackground([...selfCommand(), "daemon", "--subnet", "10.18.0.64/26"], { netns: "n1" });
 * await p.stop();
 * ```
 */

/**
 * argv prefix that runs this program again: the release launcher (it sets NETMANAGER_SELF), the
 * compiled binary, or `deno run -A main.ts`.
 */
export function selfCommand(): string[] {
  const launcher = Deno.env.get("NETMANAGER_SELF");
  if (launcher) return [launcher];
  const main = new URL("../../main.ts", import.meta.url);
  const compiled = !Deno.execPath().endsWith("/deno") && !Deno.execPath().endsWith("/deno.exe");
  if (compiled || main.protocol !== "file:") return [Deno.execPath()];
  return [Deno.execPath(), "run", "-A", main.pathname];
}

/** A running background process. */
export interface Background {
  pid: number;
  /** Resolves with the exit code. */
  status: Promise<number>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<number>;
}

/** Options for {@link spawnBackground}. */
export interface SpawnOptions {
  /** Enter only this named network namespace (nsenter --net), keeping the mount namespace. */
  netns?: string;
  /** Enter the network namespace of this PID. */
  netnsOfPid?: number;
  /** Start in a new, empty network namespace (`unshare -n`): a container stand-in. */
  newNetns?: boolean;
  /** Append stdout and stderr to this file. */
  logFile?: string;
}

/** Starts a process in the background. */
export function spawnBackground(argv: string[], opts: SpawnOptions = {}): Background {
  let full = argv;
  if (opts.netns) full = ["nsenter", `--net=/run/netns/${opts.netns}`, ...argv];
  else if (opts.netnsOfPid) full = ["nsenter", "-t", String(opts.netnsOfPid), "-n", ...argv];
  else if (opts.newNetns) full = ["unshare", "-n", ...argv];
  const log = opts.logFile
    ? Deno.openSync(opts.logFile, { create: true, append: true, write: true })
    : undefined;
  const child = new Deno.Command(full[0], {
    args: full.slice(1),
    stdin: "null",
    stdout: log ? "piped" : "null",
    stderr: log ? "piped" : "null",
  }).spawn();
  if (log) {
    // Written synchronously per chunk, so the file is current while the process runs.
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) {
        for (let off = 0; off < chunk.length;) off += log.writeSync(chunk.subarray(off));
      }
    };
    Promise.all([pump(child.stdout), pump(child.stderr)]).finally(() => log.close());
  }
  const status = child.status.then((s) => s.code);
  return {
    pid: child.pid,
    status,
    async stop(graceMs = 3000) {
      try {
        child.kill("SIGTERM");
      } catch {
        return await status;
      }
      const t = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
      }, graceMs);
      const code = await status;
      clearTimeout(t);
      return code;
    },
  };
}
