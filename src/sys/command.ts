/**
 * Running system tools. The one place (with the other `src/sys` modules) that knows command lines.
 *
 * @example
 * ```ts
 * const r = await runTool("iptables-save", ["-t", "nat"]);
 * if (r.code !== 0) throw new ToolError("iptables-save", r);
 * ```
 */

/** Result of a finished tool run. */
export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A tool that exited non-zero or could not be started. */
export class ToolError extends Error {
  readonly code: number;
  readonly stderr: string;
  constructor(what: string, r: ToolResult) {
    super(
      `${what} failed (exit ${r.code}): ${
        r.stderr.trim().split("\n").slice(0, 3).join(" | ") || "no output"
      }`,
    );
    this.name = "ToolError";
    this.code = r.code;
    this.stderr = r.stderr;
  }
}

/** Options for {@link runTool}. */
export interface RunOptions {
  /** Text written to the tool's stdin. */
  stdin?: string;
  /** Run inside this named network namespace (`ip netns exec`). */
  netns?: string;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Runs a tool to completion; a missing binary gives code 127 and a message instead of throwing. */
export async function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<ToolResult> {
  const argv = opts.netns ? ["ip", "netns", "exec", opts.netns, cmd, ...args] : [cmd, ...args];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    return { code: 127, stdout: "", stderr: `cannot run ${argv[0]}: ${e instanceof Error ? e.message : e}` };
  }
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    try {
      await w.write(encoder.encode(opts.stdin));
      await w.close();
    } catch {
      // The tool exited before reading all input; its exit code tells what happened.
    }
  }
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Runs a tool and throws ToolError on a non-zero exit; returns stdout. */
export async function mustRun(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await runTool(cmd, args, opts);
  if (r.code !== 0) throw new ToolError(`${cmd} ${args.join(" ")}`.trim(), r);
  return r.stdout;
}
