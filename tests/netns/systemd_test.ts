/**
 * The shipped systemd units under a real systemd: `systemd-nspawn --boot` runs systemd as PID 1 of a
 * container (own PID, mount, network and IPC namespaces, `--private-network`: only loopback) over a
 * minimal root — this machine's /usr through an overlay, a fresh /etc holding the release's units and
 * configs, the x86_64 release (built by scripts/package.sh) read-only at /opt/netmanager. Checked:
 * both units start and run (`systemctl status`), their logs are in journald under their identifiers,
 * the node registers and runs its data plane (TUN, BPF steering) under the unit's hardening,
 * Restart=on-failure brings back a killed daemon, and a broken config stops after the start limit
 * (5 starts in 120 s) instead of restarting forever. Nothing is installed into this machine.
 *
 * Two things about the container, not the units: network-online.target waits for a link that a
 * private network never has, so systemd-networkd-wait-online is masked; and nspawn's own seccomp
 * filter refuses bpf(2) to everything in the container, so `--system-call-filter=bpf` lets the data
 * plane load its steering program as it does on a host.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot, run, type RunResult } from "../helpers/netns.ts";
import { eventually } from "../helpers/setup.ts";
import { releaseDir } from "../helpers/release.ts";

const NSPAWN = ["/usr/bin/systemd-nspawn", "/bin/systemd-nspawn"].find((p) => {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
});
const skip = !isRoot
  ? "needs root"
  : !NSPAWN
  ? "no systemd-nspawn (apt-get install systemd-container)"
  : undefined;

/** The container's PID 1 (systemd): the first `systemd` process below the nspawn process `pid`. */
async function containerInit(pid: number): Promise<number | undefined> {
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift()!;
    const kids = (await run(["ps", "-o", "pid=,comm=", "--ppid", String(p)])).stdout.trim().split("\n");
    for (const k of kids) {
      const [id, comm] = k.trim().split(/\s+/);
      if (!id) continue;
      if (comm === "systemd") return Number(id);
      queue.push(Number(id));
    }
  }
  return undefined;
}

Deno.test({
  name:
    "systemd: the shipped units run under systemd as PID 1 (nspawn): status, journald, restart, start limit" +
    (skip ? ` (SKIPPED: ${skip})` : ""),
  ignore: skip !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const work = await Deno.makeTempDir({ prefix: "nmsystemd-" });
  let nspawn: Deno.ChildProcess | undefined;
  let output: Promise<Deno.CommandOutput> | undefined;
  try {
    // The release, as shipped (built once per suite run).
    const release = await releaseDir();
    const archive = [...Deno.readDirSync(release)].find((e) => /-linux-x86_64\.tar\.gz$/.test(e.name))!.name;
    assertEquals((await run(["tar", "-xzf", `${release}/${archive}`, "-C", work])).code, 0);
    const tree = `${work}/${archive.replace(/\.tar\.gz$/, "")}`;

    // A minimal root: /etc of its own, /usr from this machine with a writable overlay on top.
    const root = `${work}/root`;
    const upper = `${work}/usr-upper`;
    for (
      const d of ["etc/systemd/system", "etc/netmanager", "var", "run", "tmp", "proc", "sys", "dev", "usr"]
    ) {
      await Deno.mkdir(`${root}/${d}`, { recursive: true });
    }
    await Deno.mkdir(`${upper}/local/bin`, { recursive: true });
    for (const l of ["bin", "lib", "lib64", "sbin"]) await Deno.symlink(`usr/${l}`, `${root}/${l}`);
    for (const f of ["passwd", "group", "nsswitch.conf"]) {
      await Deno.copyFile(`/etc/${f}`, `${root}/etc/${f}`);
    }
    assertEquals((await run(["cp", "-L", "/etc/os-release", `${root}/etc/os-release`])).code, 0);
    // iptables-save & co. are Debian alternatives: links through /etc/alternatives.
    assertEquals((await run(["cp", "-a", "/etc/alternatives", `${root}/etc/`])).code, 0);
    for (const u of ["netmanager.service", "netmanager-control.service"]) {
      await Deno.copyFile(`${tree}/systemd/${u}`, `${root}/etc/systemd/system/${u}`);
    }
    await Deno.symlink("/dev/null", `${root}/etc/systemd/system/systemd-networkd-wait-online.service`);
    // The shipped RestartSec (5 s) times five start-limit attempts would be half this test's run time;
    // a drop-in shortens only that delay — the burst limit and the restart policy are the shipped ones.
    await Deno.mkdir(`${root}/etc/systemd/system/netmanager.service.d`, { recursive: true });
    await Deno.writeTextFile(
      `${root}/etc/systemd/system/netmanager.service.d/10-test-restart-delay.conf`,
      "[Service]\nRestartSec=1\n",
    );
    await Deno.writeTextFile(
      `${root}/etc/systemd/system/nmtest.target`,
      "[Unit]\nDescription=netmanager units under test\n" +
        "Wants=netmanager.service netmanager-control.service\nAfter=netmanager.service netmanager-control.service\n",
    );
    for (const f of ["netcfg.json", "tuncfg.json"]) {
      await Deno.copyFile(`${tree}/config/${f}`, `${root}/etc/netmanager/${f}`);
    }
    await Deno.writeTextFile(
      `${root}/etc/netmanager/netmanager.env`,
      'NETMANAGER_ARGS="--subnet 10.18.0.64/26"\n',
    );
    // /usr/local/bin/netmanager (the units' ExecStart) is the release's launcher, as install.sh links it.
    await Deno.symlink("/opt/netmanager/bin/netmanager", `${upper}/local/bin/netmanager`);

    nspawn = new Deno.Command(NSPAWN!, {
      args: [
        "--quiet",
        "--register=no", // no machined on this machine's (absent) system bus
        "--keep-unit",
        "--boot",
        `--directory=${root}`,
        "--private-network",
        `--machine=nmtest-${Deno.pid}`,
        "--system-call-filter=bpf",
        "--console=passive",
        `--overlay=/usr:${upper}:/usr`,
        `--bind-ro=${tree}:/opt/netmanager`,
        "--",
        "--unit=nmtest.target",
        "systemd.firstboot=off",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    output = nspawn.output();
    let init: number | undefined;
    await eventually(
      async () => {
        init = await containerInit(nspawn!.pid);
        return init !== undefined;
      },
      Boolean,
      20_000,
      "systemd as the container's PID 1",
      200,
    );
    const inside = (cmd: string[]): Promise<RunResult> => run(["nsenter", "-t", String(init), "-a", ...cmd]);
    const status = async (u: string) => (await inside(["systemctl", "status", "--no-pager", u])).stdout;
    const journal = async (u: string) =>
      (await inside(["journalctl", "--no-pager", "-o", "short", "-u", u])).stdout;
    const show = async (u: string, p: string) =>
      (await inside(["systemctl", "show", "--value", "-p", p, u])).stdout.trim();

    // 1. Both units start; their logs are in the journal under their identifiers.
    await eventually(
      async () => {
        const a = await inside(["systemctl", "is-active", "netmanager", "netmanager-control"]);
        return a.stdout.trim() === "active\nactive";
      },
      Boolean,
      60_000,
      "both units active",
      500,
    );
    await eventually(
      async () => / netmanager\[\d+\]: .*netmanager started/.test(await journal("netmanager")),
      Boolean,
      60_000,
      "node started (journal)",
      500,
    );
    await eventually(
      async () =>
        / netmanager-control\[\d+\]: .*control plane started/.test(await journal("netmanager-control")),
      Boolean,
      60_000,
      "control plane started (journal)",
      500,
    );
    assertMatch(await status("netmanager"), /Active: active \(running\)/);
    assertMatch(await status("netmanager-control"), /Active: active \(running\)/);
    // The hardening is in force: the node's bounding set is exactly the four capabilities.
    const pid = Number(await show("netmanager", "MainPID"));
    assert(pid > 0);
    const caps = (await inside(["grep", "^CapBnd", `/proc/${pid}/status`])).stdout;
    assertMatch(
      caps,
      /CapBnd:\s+0000000000283000/,
      "CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE, CAP_SYS_ADMIN",
    );

    // 2. The node registers and runs its data plane under the unit.
    const reg = await inside([
      "curl",
      "-s",
      "-w",
      "%{http_code}",
      "--unix-socket",
      "/etc/netmanager/netmanager.sock",
      "-H",
      "content-type: application/json",
      "-d",
      '{"client_id":"w1","cluster_address":""}',
      "http://localhost/register",
    ]);
    assertMatch(reg.stdout, /200$/, reg.stdout + reg.stderr);
    await eventually(
      async () => /goProxyTun/.test((await inside(["ip", "-br", "link"])).stdout),
      Boolean,
      20_000,
      "the TUN is up",
      200,
    );
    assertMatch(await journal("netmanager"), /registered \{"workerId":"w1"/);

    // 3. Restart=on-failure: a killed daemon comes back (another PID), the journal says why.
    assertEquals((await inside(["kill", "-9", String(pid)])).code, 0);
    await eventually(
      async () => {
        const now = Number(await show("netmanager", "MainPID"));
        return now > 0 && now !== pid && (await show("netmanager", "ActiveState")) === "active";
      },
      Boolean,
      30_000,
      "restarted after SIGKILL",
      300,
    );
    const j = await journal("netmanager");
    assertMatch(j, /netmanager\.service: Main process exited, code=killed, status=9\/KILL/);
    assertMatch(j, /netmanager\.service: Scheduled restart job, restart counter is at 1/);

    // 4. A broken config: the daemon says what is wrong, systemd retries and gives up at the limit.
    const since = Math.floor(Date.now() / 1000) - 1; // this step's journal only
    await Deno.writeTextFile(
      `${root}/etc/netmanager/netcfg.json`,
      JSON.stringify({
        ...JSON.parse(await Deno.readTextFile(`${tree}/config/netcfg.json`)),
        NodePublicPort: "x",
      }),
    );
    await inside(["systemctl", "reset-failed", "netmanager"]); // a fresh start-limit window
    await inside(["systemctl", "restart", "netmanager"]);
    await eventually(
      async () => {
        return (await show("netmanager", "ActiveState")) === "failed" &&
          /Start request repeated too quickly/.test(await journal("netmanager"));
      },
      Boolean,
      90_000,
      "start limit hit",
      300,
    );
    // The daemons' stderr reaches the journal through a stream that may lag systemd's own messages:
    // wait for the fifth start's line, then make sure no sixth follows.
    // Starts are counted by the daemon PIDs that logged the error since this step began.
    const attemptsIn = (j: string) =>
      new Set(
        j.split("\n").filter((l) => /key "NodePublicPort"/.test(l)).map((l) =>
          /netmanager\[(\d+)\]/.exec(l)?.[1]
        ),
      ).size;
    const stepJournal = async () =>
      (await inside(["journalctl", "--no-pager", "-o", "short", "-u", "netmanager", "-S", `@${since}`]))
        .stdout;
    await eventually(
      async () => attemptsIn(await stepJournal()),
      (n) => n >= 5,
      10_000,
      "5 starts logged",
      300,
    );
    await new Promise((r) => setTimeout(r, 2000));
    const jb = await stepJournal();
    assertMatch(jb, /key "NodePublicPort": NodePublicPort must be a port number/);
    assertEquals(
      attemptsIn(jb),
      5,
      `StartLimitBurst=5 starts, then no more:\n${
        jb.split("\n").filter((l) => /NodePublicPort|restart counter|Start|Stopp|exited/.test(l)).join("\n")
      }`,
    );
    await new Promise((r) => setTimeout(r, 2500)); // past RestartSec (1 s here): still failed, no sixth start
    assertEquals(await show("netmanager", "ActiveState"), "failed");
    assertEquals(attemptsIn(await stepJournal()), 5);
    assertMatch(
      await status("netmanager-control"),
      /Active: active \(running\)/,
      "the control plane is unaffected",
    );
  } finally {
    if (nspawn) {
      try {
        nspawn.kill("SIGTERM"); // nspawn asks the container's systemd to shut down
      } catch { /* exited */ }
      const killer = setTimeout(() => {
        try {
          nspawn!.kill("SIGKILL");
        } catch { /* exited */ }
      }, 20_000);
      await output;
      clearTimeout(killer);
    }
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
});
