/**
 * A delaying wire for tests (this kernel has no netem): run inside a node's network namespace as
 * `deno run -A delay_tun.ts NAME CONFIG.json`. It opens a TUN `NAME`, prints `ready`, and writes
 * every IPv4 packet it reads back into the TUN after the delay that CONFIG gives its destination
 * (`{"192.168.77.2": 25, "192.168.77.3": 0}`, ms; re-read when the file changes; unlisted → 0).
 * The test routes locally sent packets for those destinations into the TUN (policy rule `iif lo`);
 * written back, they arrive with `iif NAME`, miss the rule and are forwarded out of the underlay
 * link — the path one way is slower by the delay, and the node's RTT to that peer with it.
 */
import { openTun } from "../../ffi/tun.ts";

const [name, configPath] = Deno.args;
if (!name || !configPath) {
  console.error("usage: delay_tun.ts NAME CONFIG.json");
  Deno.exit(2);
}
const tun = openTun({ name, nonBlocking: true });
let delays = new Map<string, number>();
let mtime = -1;
function reload(): void {
  try {
    const st = Deno.statSync(configPath);
    const m = st.mtime?.getTime() ?? 0;
    if (m === mtime) return;
    mtime = m;
    const raw = JSON.parse(Deno.readTextFileSync(configPath)) as Record<string, number>;
    delays = new Map(Object.entries(raw).map(([k, v]) => [k, Number(v) || 0]));
  } catch {
    // keep the previous delays while the file is being rewritten
  }
}
reload();
console.log("ready");

/** Packets waiting, in release order per delay class (FIFO within one destination). */
const queue: Array<{ at: number; bytes: Uint8Array }> = [];
const buf = new Uint8Array(65536);
let lastReload = performance.now();
for (;;) {
  const now = performance.now();
  if (now - lastReload > 100) {
    reload();
    lastReload = now;
  }
  while (queue.length > 0 && queue[0].at <= now) {
    const p = queue.shift()!;
    tun.write(p.bytes, p.bytes.length);
  }
  const wait = queue.length > 0 ? Math.max(0, Math.min(100, Math.ceil(queue[0].at - now))) : 100;
  if (tun.wait(wait) <= 0) continue;
  for (;;) {
    const n = tun.read(buf);
    if (n <= 0) break;
    if ((buf[0] >> 4) !== 4) continue;
    const dst = `${buf[16]}.${buf[17]}.${buf[18]}.${buf[19]}`;
    const at = performance.now() + (delays.get(dst) ?? 0);
    const item = { at, bytes: buf.slice(0, n) };
    // Keep release order sorted (delays differ per destination; the queue stays short).
    let i = queue.length;
    while (i > 0 && queue[i - 1].at > at) i--;
    queue.splice(i, 0, item);
  }
}
