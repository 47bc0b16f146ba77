/**
 * Test helpers for network namespaces: unique names per run, creation, command execution inside a
 * namespace, and guaranteed clean-up.
 *
 * Every namespace a test makes gets the per-run prefix, so parallel runs and leftovers from a crashed
 * run never collide, and `cleanupAll()` can remove everything this run created.
 */

/** True when the tests run as root (network-namespace tests need it). */
export const isRoot: boolean = (() => {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
})();

/**
 * Per-run prefix for every namespace and interface name a test creates (short: IFNAMSIZ is 16). A
 * benchmark started by scripts/bench.ts takes the runner's prefix (NETMANAGER_BENCH_PREFIX), so the
 * runner's clean-up finds what it left.
 */
export const RUN_PREFIX: string = (() => {
  try {
    const given = Deno.env.get("NETMANAGER_BENCH_PREFIX");
    if (given && /^[a-z0-9]{1,8}$/.test(given)) return `${given}t`;
  } catch { /* no env permission: a plain test run */ }
  return `t${(Date.now() % 100000).toString(36)}${Math.floor(Math.random() * 36 * 36).toString(36)}`;
})();

let counter = 0;

/** Returns a fresh unique name with the run prefix, at most 15 characters. */
export function uniqueName(tag: string): string {
  counter++;
  return `${RUN_PREFIX}${tag}${counter}`.slice(0, 15);
}

/** Result of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command and returns its exit code and output; never throws on a non-zero exit. */
export async function run(cmd: string[], stdin?: string): Promise<RunResult> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs a command and throws with its stderr when it fails. */
export async function sh(cmd: string[], stdin?: string): Promise<string> {
  const r = await run(cmd, stdin);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Runs `cmd` inside the named network namespace. */
export function inNs(ns: string, cmd: string[], stdin?: string): Promise<string> {
  return sh(["ip", "netns", "exec", ns, ...cmd], stdin);
}

const created = new Set<string>();

/**
 * Creates a named network namespace with loopback up and no routes out of the machine.
 * It is deleted by `deleteNs` or `cleanupAll`.
 */
export async function createNs(tag: string): Promise<string> {
  const name = uniqueName(tag);
  await sh(["ip", "netns", "add", name]);
  created.add(name);
  await sh(["ip", "-n", name, "link", "set", "lo", "up"]);
  return name;
}

/** Deletes one namespace this run created (ignores one that is already gone). */
export async function deleteNs(name: string): Promise<void> {
  await run(["ip", "netns", "del", name]);
  created.delete(name);
}

/** Deletes every namespace this run created. Call it in `finally`. */
export async function cleanupAll(): Promise<void> {
  for (const name of [...created]) await deleteNs(name);
}

/**
 * Joins two namespaces with a veth pair and gives each end an address (CIDR notation).
 * Returns the interface names inside `a` and `b`.
 */
export async function link(
  a: string,
  b: string,
  addrA: string,
  addrB: string,
): Promise<{ ifA: string; ifB: string }> {
  const ifA = uniqueName("a");
  const ifB = uniqueName("b");
  await sh(["ip", "link", "add", ifA, "netns", a, "type", "veth", "peer", "name", ifB, "netns", b]);
  await sh(["ip", "-n", a, "addr", "add", addrA, "dev", ifA]);
  await sh(["ip", "-n", b, "addr", "add", addrB, "dev", ifB]);
  await sh(["ip", "-n", a, "link", "set", ifA, "up"]);
  await sh(["ip", "-n", b, "link", "set", ifB, "up"]);
  return { ifA, ifB };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
