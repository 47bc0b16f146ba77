/**
 * A headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
 * (`--remote-debugging-pipe`: commands on fd 3, replies on fd 4, each a JSON text ending in NUL),
 * optionally inside a network namespace. It runs in its own session (setsid), so `close()` ends
 * exactly the browser and its child processes (by process group), then removes its profile dir.
 *
 * @example
 * ```ts
 * const b = await Chromium.launch({ netns: "nmtest-ctl", dir: "/tmp/x" });
 * try {
 *   const page = await b.open("http://127.0.0.1:10100/ui/");
 *   await page.evaluate("document.title");
 * } finally {
 *   await b.close();
 * }
 * ```
 */
import { runTool } from "../../src/sys/command.ts";

/** A DevTools error reply. */
export class CdpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CdpError";
  }
}

type Json = Record<string, unknown>;

/** One tab (a flat-mode session). */
export interface Page {
  /** Evaluates `expression` in the page; its value (by value). */
  evaluate(expression: string): Promise<unknown>;
  /** A PNG screenshot of the viewport. */
  screenshot(): Promise<Uint8Array>;
  /** Sends any DevTools command in this session. */
  send(method: string, params?: Json): Promise<Json>;
}

/** A running browser. */
export class Chromium {
  readonly pid: number;
  readonly profile: string;
  readonly #proc: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pending = new Map<number, { resolve: (v: Json) => void; reject: (e: Error) => void }>();
  #next = 1;
  #closed = false;

  private constructor(proc: Deno.ChildProcess, pid: number, profile: string) {
    this.#proc = proc;
    this.pid = pid;
    this.profile = profile;
    this.#writer = proc.stdin.getWriter();
    void this.#read();
  }

  /**
   * Starts chromium (in `netns` when given) with a fresh profile under `dir`; its stderr goes to
   * `<dir>/chromium.log`.
   */
  static async launch(
    opts: { netns?: string; dir: string; width?: number; height?: number },
  ): Promise<Chromium> {
    const profile = await Deno.makeTempDir({ dir: opts.dir, prefix: "chromium-profile-" });
    const pidFile = `${opts.dir}/chromium.pid`;
    const flags = [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-extensions",
      "--remote-debugging-pipe",
      `--user-data-dir=${profile}`,
      `--window-size=${opts.width ?? 1280},${opts.height ?? 1000}`,
      "about:blank",
    ];
    // bash writes its pid (= chromium's after exec) and wires the pipe: fd 3 ← our stdin, fd 4 → our stdout.
    const script =
      `echo $$ > "$1"; shift; exec chromium "$@" 3<&0 4>&1 1>/dev/null 2>>"${opts.dir}/chromium.log"`;
    const argv = [
      ...(opts.netns ? ["nsenter", `--net=/run/netns/${opts.netns}`] : []),
      "setsid",
      "bash",
      "-c",
      script,
      "bash",
      pidFile,
      ...flags,
    ];
    const proc = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let pid = 0;
    const deadline = Date.now() + 10_000;
    while (!pid) {
      pid = Number((await Deno.readTextFile(pidFile).catch(() => "")).trim());
      if (!pid && Date.now() > deadline) throw new Error("chromium did not start");
      if (!pid) await new Promise((r) => setTimeout(r, 20));
    }
    const b = new Chromium(proc, pid, profile);
    await b.send("Browser.getVersion").catch(async (e) => {
      await b.close();
      throw e;
    });
    return b;
  }

  async #read(): Promise<void> {
    let buf = new Uint8Array(0);
    const dec = new TextDecoder();
    try {
      for await (const chunk of this.#proc.stdout) {
        const joined = new Uint8Array(buf.length + chunk.length);
        joined.set(buf);
        joined.set(chunk, buf.length);
        buf = joined;
        for (let i = buf.indexOf(0); i >= 0; i = buf.indexOf(0)) {
          const msg = JSON.parse(dec.decode(buf.subarray(0, i))) as Json;
          buf = buf.slice(i + 1);
          const id = msg.id as number | undefined;
          const p = id !== undefined ? this.#pending.get(id) : undefined;
          if (!p) continue; // an event
          this.#pending.delete(id!);
          if (msg.error) p.reject(new CdpError(JSON.stringify(msg.error)));
          else p.resolve((msg.result ?? {}) as Json);
        }
      }
    } catch {
      // the pipe closed
    }
    for (const p of this.#pending.values()) p.reject(new CdpError("chromium exited"));
    this.#pending.clear();
  }

  /** Sends a DevTools command (in `sessionId` when given); resolves with its result. */
  send(method: string, params: Json = {}, sessionId?: string, timeoutMs = 15_000): Promise<Json> {
    if (this.#closed) return Promise.reject(new CdpError("browser closed"));
    const id = this.#next++;
    const msg = JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) });
    return new Promise<Json>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new CdpError(`${method}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#writer.write(new TextEncoder().encode(msg + "\0")).catch((e) => {
        this.#pending.delete(id);
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  /** Opens `url` in a new tab and returns it (navigation started; poll with evaluate). */
  async open(url: string): Promise<Page> {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    const sid = sessionId as string;
    const send = (method: string, params: Json = {}) => this.send(method, params, sid);
    await send("Page.enable");
    await send("Runtime.enable");
    await send("Page.navigate", { url });
    return {
      send,
      async evaluate(expression: string) {
        const r = await send("Runtime.evaluate", { expression, returnByValue: true });
        if (r.exceptionDetails) throw new CdpError(`evaluate: ${JSON.stringify(r.exceptionDetails)}`);
        return (r.result as { value?: unknown }).value;
      },
      async screenshot() {
        const r = await send("Page.captureScreenshot", { format: "png" });
        const bin = atob(r.data as string);
        return Uint8Array.from(bin, (c) => c.charCodeAt(0));
      },
    };
  }

  /**
   * Closes the browser (Browser.close, then SIGKILL to its process group after 5 s), waits for it
   * and removes the profile directory. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.send("Browser.close", {}, undefined, 3000).catch(() => {});
    this.#closed = true;
    const exited = await Promise.race([
      this.#proc.status.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5000)),
    ]);
    // Only our session: chromium is its leader (setsid), its helpers are in its group.
    await runTool("kill", ["-KILL", "--", `-${this.pid}`]);
    if (!exited) await this.#proc.status;
    await this.#writer.close().catch(() => {});
    await Deno.remove(this.profile, { recursive: true }).catch(() => {});
  }
}
