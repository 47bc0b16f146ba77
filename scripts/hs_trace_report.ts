/**
 * Reads the handshake trace of a run (`NETMANAGER_HS_TRACE=<dir>` in the daemons' environment,
 * src/secure/hs_trace.ts) and prints, per handshake a node initiated, where its time went (ms):
 * `toPeer` (INIT sent → read by the peer's worker: the wire, the peer's wake-up, or the peer not yet
 * running its handshakes), `peerQueue` (read → handled), `peerCrypto` (the INIT's DH and RESP),
 * `back` (RESP sent → read here), `queue`, `crypto` (RESP read, certificate checked, FINISH made),
 * `install` (keys in the worker), `finish` (FINISH sent), with each thread's CPU and run-queue wait
 * in the crypto steps; then medians. Two-node runs (each daemon's own address is the peer it never names).
 *
 *   deno run -A scripts/hs_trace_report.ts DIR [--json]
 * @module
 */
interface Ev {
  t: number;
  ev: string;
  pid: number;
  in: string;
  cpuUs: number;
  waitUs: number;
  peer?: string;
  type?: number;
  ms?: number;
  [k: string]: unknown;
}

const dir = Deno.args[0];
if (!dir) {
  console.error("usage: hs_trace_report.ts DIR [--json]");
  Deno.exit(2);
}
const evs: Ev[] = [];
for (const e of Deno.readDirSync(dir)) {
  if (!e.name.endsWith(".jsonl")) continue;
  for (const l of Deno.readTextFileSync(`${dir}/${e.name}`).split("\n")) if (l) evs.push(JSON.parse(l));
}
evs.sort((a, b) => a.t - b.t);
const addrs = new Set(evs.flatMap((e) => (e.peer ? [e.peer] : [])));
const byPid = new Map<number, Ev[]>();
for (const e of evs) (byPid.get(e.pid) ?? byPid.set(e.pid, []).get(e.pid)!).push(e);
const own = new Map<number, string>();
for (const [pid, es] of byPid) {
  const named = new Set(es.flatMap((e) => (e.peer ? [e.peer] : [])));
  const mine = [...addrs].filter((a) => !named.has(a));
  if (mine.length === 1) own.set(pid, mine[0]);
}
const ms = (us: number) => Math.round(us / 10) / 100;
const after = (es: Ev[] | undefined, t: number, f: (e: Ev) => boolean) => es?.find((e) => e.t >= t && f(e));
const rows: Record<string, number | string>[] = [];
for (const s of evs.filter((e) => e.ev === "init-sent")) {
  const me = own.get(s.pid);
  const rPid = [...own].find(([p, a]) => a === s.peer && byPid.get(p)!.some((e) => Math.abs(e.t - s.t) < 5e6))
    ?.[0];
  const mine = byPid.get(s.pid)!, theirs = rPid === undefined ? undefined : byPid.get(rPid);
  const rx = after(theirs, s.t - 1000, (e) => e.ev === "rx" && e.type === 22 && e.peer === me);
  if (!rx || rx.t - s.t > 5e6) continue;
  const h = after(theirs, rx.t, (e) => e.ev === "handle" && e.type === 22);
  const hd = h && after(theirs, h.t, (e) => e.ev === "handled" && e.type === 22);
  const rs = hd && after(theirs, hd.t, (e) => e.ev === "resp-sent");
  const rx2 = rs && after(mine, s.t, (e) => e.ev === "rx" && e.type === 23 && e.peer === s.peer);
  const h2 = rx2 && after(mine, rx2.t, (e) => e.ev === "handle" && e.type === 23);
  const hd2 = h2 && after(mine, h2.t, (e) => e.ev === "handled" && e.type === 23);
  const inst = hd2 && after(mine, hd2.t, (e) => e.ev === "installed");
  const fin = inst && after(mine, inst.t, (e) => e.ev === "reply-sent");
  const done = fin && after(mine, fin.t - 5000, (e) => e.ev === "done" && e.peer === s.peer);
  if (!h || !hd || !rs || !rx2 || !h2 || !hd2 || !inst || !fin) continue;
  const warming = theirs!.some((e) => e.ev === "warm-start" && e.t < rx.t) &&
    !theirs!.some((e) => e.ev === "warm-done" && e.t < rx.t);
  rows.push({
    node: me ?? "?",
    totalMs: ms(fin.t - s.t),
    handshakeMs: done?.ms !== undefined ? Math.round(done.ms * 100) / 100 : "",
    toPeer: ms(rx.t - s.t),
    peerQueue: ms(h.t - rx.t),
    peerCrypto: ms(hd.t - h.t),
    peerCryptoCpu: ms(hd.cpuUs - h.cpuUs),
    peerCryptoWait: ms(hd.waitUs - h.waitUs),
    peerSend: ms(rs.t - hd.t),
    back: ms(rx2.t - rs.t),
    queue: ms(h2.t - rx2.t),
    crypto: ms(hd2.t - h2.t),
    cryptoCpu: ms(hd2.cpuUs - h2.cpuUs),
    cryptoWait: ms(hd2.waitUs - h2.waitUs),
    install: ms(inst.t - hd2.t),
    finish: ms(fin.t - inst.t),
    peerWarming: warming ? "yes" : "",
  });
}
if (Deno.args.includes("--json")) console.log(JSON.stringify(rows));
else {
  const keys = Object.keys(rows[0] ?? {});
  console.log(keys.join("\t"));
  for (const r of rows) console.log(keys.map((k) => r[k]).join("\t"));
  const med = (k: string) => {
    const xs = rows.map((r) => r[k]).filter((x): x is number => typeof x === "number").sort((a, b) => a - b);
    return xs.length ? xs[xs.length >> 1] : "";
  };
  console.log(keys.map((k) => (k === "node" ? "median" : med(k))).join("\t"));
}
