/**
 * bench_machine_cpu.ts: the machine's busy CPU (incl. irq/softirq/steal) over a TCP 1 test's window,
 * taken from the sampler's /proc/stat log and the raw iperf3 JSON's mtime and duration.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { busyOver, machineCpuOf, parseStatLog } from "../../scripts/bench_machine_cpu.ts";

// user nice system idle iowait irq softirq steal (ticks); 2 CPUs → 200 ticks per second at HZ 100
const line = (t: number, user: number, sys: number, idle: number, softirq: number) =>
  `${t} cpu ${user} 0 ${sys} ${idle} 0 0 ${softirq} 0 0 0`;

Deno.test("machine cpu: busy counts softirq and system time, idle and iowait do not", () => {
  const s = parseStatLog([line(100, 0, 0, 0, 0), line(101, 50, 30, 100, 20), "garbage", ""].join("\n"));
  assertEquals(s.length, 2);
  assertEquals(busyOver(s, 100, 101, 2), { pctCore: 100, ownPctCore: null, seconds: 1 });
  assertEquals(busyOver(s, 100.5, 101, 2), null, "one sample inside the window is no measurement");
});

Deno.test("machine cpu: attributed = the sampled processes' ticks (softirq included by tick accounting), never above the machine's", () => {
  // 2 CPUs, 1 s: 150 of 200 ticks busy (20 softirq); the namespaces' processes and ksoftirqd used 60 ticks
  const s = parseStatLog(["50.0 1000 cpu 0 0 0 0 0 0 0 0", "51.0 1060 cpu 100 0 30 50 0 0 20 0"].join("\n"));
  assertEquals(busyOver(s, 50, 51, 2), { pctCore: 150, ownPctCore: 60, seconds: 1 });
  const all = parseStatLog(
    ["50.0 1000 cpu 0 0 0 0 0 0 0 0", "51.0 1300 cpu 100 0 30 50 0 0 20 0"].join("\n"),
  );
  assertEquals(busyOver(all, 50, 51, 2)?.ownPctCore, 150, "capped at the machine's busy time");
  // a process that exited (its ticks gone from the sum): 0, not a negative figure
  const gone = parseStatLog(
    ["50.0 1000 cpu 0 0 0 0 0 0 0 0", "51.0 900 cpu 100 0 30 50 0 0 20 0"].join("\n"),
  );
  assertEquals(busyOver(gone, 50, 51, 2)?.ownPctCore, 0);
});

Deno.test("machine cpu: a results directory gives each TCP 1 test's busy %core and %core per Gbit/s", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // the test ran 3 s and its JSON was written at t = 1000: window [997.2, 999.9] → samples 997.2 … 999.8
    const lines = [];
    for (let i = 0; i <= 40; i++) {
      const t = 995 + i * 0.2;
      const inTest = t >= 997 && t <= 1000;
      // 2 CPUs, 40 ticks per 0.2 s: in the test 30 of them busy (half softirq), 10 before/after
      lines.push({ t, busy: inTest ? 30 : 10 });
    }
    let user = 0, soft = 0, idle = 0;
    const log = lines.map(({ t, busy }, i) => {
      if (i > 0) {
        user += busy / 2;
        soft += busy / 2;
        idle += 40 - busy;
      }
      return line(Number(t.toFixed(1)), user, 0, idle, soft);
    }).join("\n");
    await Deno.writeTextFile(`${dir}/procstat.log`, log + "\n");
    await Deno.mkdir(`${dir}/raw/vxlan-r1`, { recursive: true });
    const file = `${dir}/raw/vxlan-r1/tcp1.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({ end: { sum_received: { seconds: 3, bits_per_second: 10e9 } } }),
    );
    await Deno.utime(file, 1000, 1000);
    await Deno.mkdir(`${dir}/raw/nm-ktc-r1`); // no tcp1.json (probe failed): no row
    const r = await machineCpuOf(dir, 2);
    assertEquals(r.length, 1);
    assertEquals([r[0].path, r[0].rep, r[0].gbit], ["vxlan", 1, 10]);
    assertEquals(r[0].pctCore, 150); // 30 of 40 ticks busy on 2 CPUs
    assertEquals(r[0].pctCorePerGbit, 15);
    assert(r[0].seconds > 2.4 && r[0].seconds <= 2.7);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
