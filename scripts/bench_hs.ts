/**
 * The secure handshake's CPU (issue 11: handshake ≤ 5 ms on a LAN), in one process without the
 * network: a node's first handshake after `k` warm-up rounds (the daemon runs 20 when its credential
 * loads, src/secure/secure_driver.ts), and warm handshakes. CPU time (process.cpuUsage), so a busy
 * machine stretches the wall time but not the figures much. Prints JSON.
 *
 * `deno run -A scripts/bench_hs.ts` (runs itself in fresh processes, as the daemon starts cold).
 * @module
 */
import process from "node:process";
import { Handshaker, warmUp } from "../src/secure/handshake.ts";
import { generateCa, signCertificate } from "../src/secure/cert.ts";
import { generateIdentity } from "../src/secure/identity.ts";

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** One node's first handshake after `k` warm-up rounds: CPU ms of INIT + RESP + FINAL (both sides). */
function first(k: number): { cpuMs: number; wallMs: number; warmCpuMs: number[] } {
  const ca = generateCa("c");
  const trust = { caPublicKeys: [ca.publicKey], revokedSerials: [], revokedNodeIds: [], generation: 1 };
  const now = Math.floor(Date.now() / 1000);
  const cred = (id: string) => {
    const identity = generateIdentity();
    const certificate = signCertificate(ca, {
      nodeId: id,
      publicKey: identity.publicKey,
      notBefore: now - 60,
      notAfter: now + 86400,
    });
    return { identity, certificate };
  };
  const ca1 = cred("a"), cb = cred("b");
  for (let i = 0; i < k; i++) warmUp(ca1, trust);
  const run = () => {
    const a = new Handshaker({ credential: ca1, trust }), b = new Handshaker({ credential: cb, trust });
    const c0 = cpu(), t0 = performance.now();
    const m1 = a.initiate("B", 0)!;
    const r2 = b.handle("A", m1, 0, m1.length, true);
    const r3 = a.handle("B", r2.reply!, 0, r2.reply!.length, true);
    if (!r3.established) throw new Error("no session");
    return { cpuMs: cpu() - c0, wallMs: performance.now() - t0 };
  };
  const f = run();
  const warm: number[] = [];
  for (let i = 0; i < 50; i++) warm.push(run().cpuMs);
  return { ...f, warmCpuMs: warm };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const r2 = (x: number) => Math.round(x * 100) / 100;

if (Deno.args[0] === "--one") {
  console.log(JSON.stringify(first(Number(Deno.args[1]))));
} else {
  const out: Record<string, unknown> = {};
  for (const k of [1, 20]) {
    const runs = [];
    for (let i = 0; i < 5; i++) {
      const p = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-code-cache", new URL(import.meta.url).pathname, "--one", String(k)],
        stdout: "piped",
      }).output();
      runs.push(JSON.parse(new TextDecoder().decode(p.stdout)));
    }
    out[`firstAfter${k}WarmUpsCpuMs`] = {
      median: r2(median(runs.map((r) => r.cpuMs))),
      runs: runs.map((r) => r2(r.cpuMs)),
    };
    out[`warmCpuMsAfter${k}`] = r2(median(runs.flatMap((r) => r.warmCpuMs)));
  }
  console.log(JSON.stringify(out, null, 1));
}
