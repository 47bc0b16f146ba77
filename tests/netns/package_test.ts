/**
 * Release packages, built once per suite run with scripts/package.sh (x86_64 and aarch64, archives and
 * .debs): the archive runs from an empty directory with no deno on PATH, offline and read-only, as a
 * node in a network namespace; the aarch64 one carries an aarch64 Deno and runs `version` and `config
 * check` under qemu user-mode emulation (skipped, saying why, without qemu-user); the .deb installs into a scratch
 * root with dpkg; install.sh installs, upgrades (keeping configs and state) and uninstalls in a scratch
 * root; the systemd units pass `systemd-analyze verify`. Nothing is installed into this machine's
 * /usr or /etc.
 */
import { ApiClient } from "../../src/api/client.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { createNs, deleteNs, isRoot, run, type RunResult } from "../helpers/netns.ts";
import { releaseDir } from "../helpers/release.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
/** A PATH with the system tools (ip, iptables) and no deno. */
const PATH = "/usr/sbin:/usr/bin:/sbin:/bin";
const DENO_VERSION = "2.9.6";

interface Packages {
  dir: string;
  archive: Record<"x86_64" | "aarch64", string>;
  deb: Record<"x86_64" | "aarch64", string>;
}

const temps: string[] = [];
async function tempDir(prefix: string): Promise<string> {
  const d = await Deno.makeTempDir({ prefix });
  temps.push(d);
  return d;
}
globalThis.addEventListener("unload", () => {
  for (const d of temps) {
    try {
      Deno.removeSync(d, { recursive: true });
    } catch { /* gone */ }
  }
});

let building: Promise<Packages> | undefined;
/** Every package, built once per suite run (tests/helpers/release.ts; npm downloads cached in .cache/). */
function packages(): Promise<Packages> {
  building ??= (async () => {
    const dir = await releaseDir();
    const files = [...Deno.readDirSync(dir)].map((e) => e.name);
    const pick = (re: RegExp) => {
      const f = files.filter((n) => re.test(n));
      assertEquals(f.length, 1, `one file matching ${re} in ${files.join(", ")}`);
      return `${dir}/${f[0]}`;
    };
    return {
      dir,
      archive: {
        x86_64: pick(/^netmanager-[0-9][^/]*-linux-x86_64\.tar\.gz$/),
        aarch64: pick(/^netmanager-[0-9][^/]*-linux-aarch64\.tar\.gz$/),
      },
      deb: { x86_64: pick(/^netmanager_.*_amd64\.deb$/), aarch64: pick(/^netmanager_.*_arm64\.deb$/) },
    };
  })();
  return building;
}

/** Unpacks an archive into a fresh empty directory; returns the release tree inside it. */
async function unpack(archive: string): Promise<string> {
  const dir = await tempDir("nmrel-");
  const r = await run(["tar", "-xzf", archive, "-C", dir]);
  assertEquals(r.code, 0, r.stderr);
  const top = [...Deno.readDirSync(dir)];
  assertEquals(top.length, 1, "one top directory");
  return `${dir}/${top[0].name}`;
}

/** Deno's cache for the packaged program in these tests (as root it would be /var/cache/netmanager). */
const denoDir = Deno.makeTempDirSync({ prefix: "nmdenodir-" });
temps.push(denoDir);

/** Runs a command with a clean environment whose PATH has no deno. */
function clean(cmd: string[]): Promise<RunResult> {
  return run(["env", "-i", `PATH=${PATH}`, `DENO_DIR=${denoDir}`, ...cmd]);
}

/** Every path in a tree with its size and mode (to show a release is never written to). */
async function listing(dir: string): Promise<string> {
  return (await run(["find", dir, "-printf", "%P %s %m\\n"])).stdout.split("\n").sort().join("\n");
}

function buildInfo(tree: string): Record<string, string> {
  return Object.fromEntries(
    Deno.readTextFileSync(`${tree}/BUILD_INFO`).trim().split("\n").map((l) =>
      l.split("=", 2) as [string, string]
    ),
  );
}

/** The ELF machine of a binary: 62 = x86_64, 183 = aarch64. */
function elfMachine(path: string): number {
  const f = Deno.openSync(path);
  const head = new Uint8Array(20);
  f.readSync(head);
  f.close();
  assertEquals([...head.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], `${path} is ELF`);
  return new DataView(head.buffer).getUint16(18, true);
}

Deno.test({
  name: "package: the x86_64 archive runs from an empty directory without deno on PATH: version, a node",
  ...opts,
}, async () => {
  const pkgs = await packages();
  const tree = await unpack(pkgs.archive.x86_64);
  const before = await listing(tree);
  const info = buildInfo(tree);
  assertEquals([info.arch, info.deno], ["x86_64", DENO_VERSION]);
  assertEquals(elfMachine(`${tree}/lib/deno`), 62);
  assert((await clean(["sh", "-c", "command -v deno"])).code !== 0, "no deno on this PATH");
  const v = await clean([`${tree}/bin/netmanager`, "version", "--json"]);
  assertEquals(v.code, 0, v.stderr);
  assertEquals(v.stderr, "", "nothing on stderr (no download, no warning)");
  const got = JSON.parse(v.stdout);
  assertEquals(got, {
    version: info.version,
    commit: info.commit,
    deno: DENO_VERSION,
    arch: "x86_64",
    os: "linux",
  });
  assertMatch(got.commit, /^[0-9a-f]{7,}(-dirty)?$/, "the commit is baked in");

  // A node: the launcher in a namespace with no network at all, the release read-only.
  const ns = await createNs("p");
  const dir = await tempDir("nmnode-");
  const sock = `${dir}/nm.sock`;
  const script = `mount --bind ${tree} ${tree} && mount -o remount,bind,ro ${tree} && ` +
    `exec nsenter --net=/run/netns/${ns} ${tree}/bin/netmanager daemon --subnet 10.18.0.64/26 ` +
    `--socket ${sock} --state-dir ${dir}/state --cfg ${tree}/config/netcfg.json --tuncfg ${tree}/config/tuncfg.json`;
  const daemon = new Deno.Command("env", {
    args: ["-i", `PATH=${PATH}`, `DENO_DIR=${denoDir}`, "unshare", "-m", "sh", "-c", script],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = daemon.output();
  const api = new ApiClient(sock);
  try {
    const deadline = Date.now() + 20000;
    while (!(await Deno.stat(sock).then(() => true, () => false))) {
      if (Date.now() > deadline) throw new Error("the packaged daemon did not come up");
      await new Promise((r) => setTimeout(r, 100));
    }
    // Registering starts the data plane: the TUN (FFI) and the packet worker (a second module graph).
    assertEquals((await api.post("/register", { client_id: "w1", cluster_address: "" })).status, 200);
    const st = await clean([`${tree}/bin/netmanager`, "status", "--json", "--socket", sock]);
    assertEquals(st.code, 0, st.stderr);
    const status = JSON.parse(st.stdout);
    assertEquals(
      [status.version, status.mode, status.registered, status.subnet],
      [info.version, "standalone", true, "10.18.0.64/26,fc00::a:1200:4000/120"],
    );
    assert(status.dataPlane !== null, "the data plane runs");
    const links = (await run(["ip", "-n", ns, "-br", "link"])).stdout;
    assertMatch(links, /goProxyBridge/);
    assertMatch(links, /goProxyTun/);
  } finally {
    api.close();
    try {
      daemon.kill("SIGTERM");
    } catch { /* exited */ }
    const out = await output;
    const log = new TextDecoder().decode(out.stderr);
    await deleteNs(ns);
    assertEquals(out.code, 0, `the daemon stops cleanly on SIGTERM: ${log}`);
    assertMatch(log, /netmanager started/);
  }
  assertEquals(await listing(tree), before, "the release was not written to");
});

Deno.test({ name: "package: the aarch64 archive and .deb carry an aarch64 Deno", ...opts }, async () => {
  const pkgs = await packages();
  const tree = await unpack(pkgs.archive.aarch64);
  assertEquals(buildInfo(tree).arch, "aarch64");
  assertEquals(elfMachine(`${tree}/lib/deno`), 183);
  assertMatch((await run(["file", "-b", `${tree}/lib/deno`])).stdout, /ELF 64-bit LSB .*ARM aarch64/);
  const ctl = await run(["dpkg-deb", "-f", pkgs.deb.aarch64, "Architecture"]);
  assertEquals(ctl.stdout.trim(), "arm64");
  const x = await tempDir("nmdeb-");
  assertEquals((await run(["dpkg-deb", "-x", pkgs.deb.aarch64, x])).code, 0);
  assertEquals(elfMachine(`${x}/usr/lib/netmanager/lib/deno`), 183);
});

/** qemu's aarch64 user-mode emulator and the aarch64 C library it loads Deno with (Debian cross packages). */
const QEMU = ["/usr/bin/qemu-aarch64", "/usr/bin/qemu-aarch64-static"].find((p) => existsSync(p));
const AARCH64_LIBC = "/usr/aarch64-linux-gnu";
const qemuMissing = !QEMU ? "no qemu-aarch64" : !existsSync(`${AARCH64_LIBC}/lib/ld-linux-aarch64.so.1`) ||
    !existsSync(`${AARCH64_LIBC}/lib/libgcc_s.so.1`)
  ? `no aarch64 libc in ${AARCH64_LIBC}`
  : undefined;

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name: "package: the aarch64 archive runs under qemu user-mode emulation: version, config check" +
    (qemuMissing
      ? ` (SKIPPED: ${qemuMissing}; apt-get install qemu-user libc6-arm64-cross libgcc-s1-arm64-cross, as scripts/bootstrap.sh does)`
      : ""),
  ...opts,
  ignore: opts.ignore || qemuMissing !== undefined,
}, async () => {
  const pkgs = await packages();
  const tree = await unpack(pkgs.archive.aarch64);
  // The release's own launcher runs its own aarch64 Deno; only the exec of that binary goes through
  // qemu (no binfmt_misc registration: nothing changes on this machine).
  await Deno.rename(`${tree}/lib/deno`, `${tree}/lib/deno.aarch64`);
  await Deno.writeTextFile(
    `${tree}/lib/deno`,
    `#!/bin/sh\nexec ${QEMU} -L ${AARCH64_LIBC} "$(dirname "$0")/deno.aarch64" "$@"\n`,
    { mode: 0o755 },
  );
  const dir = await tempDir("nmdenodir-arm64-"); // V8's code cache is per architecture
  const emulated = (args: string[]) =>
    run(["env", "-i", `PATH=${PATH}`, `DENO_DIR=${dir}`, `${tree}/bin/netmanager`, ...args]);
  const t0 = Date.now();
  const v = await emulated(["version", "--json"]);
  assertEquals(v.code, 0, v.stderr);
  const info = buildInfo(tree);
  assertEquals(JSON.parse(v.stdout), {
    version: info.version,
    commit: info.commit,
    deno: DENO_VERSION,
    arch: "aarch64",
    os: "linux",
  });
  const tVersion = Date.now() - t0;
  // The two config checks (a good and a broken file) are independent runs: side by side (each is one
  // emulated process; the version run before them filled the code cache they both read).
  const bad = `${dir}/bad.json`;
  await Deno.writeTextFile(bad, JSON.stringify({ NodePublicPort: "x" }));
  const [ok, broken] = await Promise.all([
    emulated([
      "config",
      "check",
      "--cfg",
      `${tree}/config/netcfg.json`,
      "--tuncfg",
      `${tree}/config/tuncfg.json`,
    ]),
    emulated(["config", "check", "--cfg", bad, "--tuncfg", `${tree}/config/tuncfg.json`]),
  ]);
  assertEquals(ok.code, 0, ok.stderr);
  assertMatch(ok.stdout, /^OK$/m);
  assertEquals(broken.code, 1, broken.stdout);
  assertMatch(broken.stderr, /key "NodePublicPort": NodePublicPort must be a port number/);
  console.error(
    `aarch64 under qemu: version in ${(tVersion / 1000).toFixed(1)} s, then 2 config checks side by side: ` +
      `${((Date.now() - t0) / 1000).toFixed(1)} s in all`,
  );
});

Deno.test({
  name: "package: the .deb installs into a scratch root with dpkg, upgrades, removes, purges",
  ...opts,
}, async () => {
  const pkgs = await packages();
  const root = await tempDir("nmroot-");
  for (const d of ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"]) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  await Deno.writeTextFile(`${root}/var/lib/dpkg/status`, "");
  const dpkg = (...args: string[]) =>
    run([
      "dpkg",
      `--root=${root}`,
      "--force-not-root",
      "--force-script-chrootless",
      "--force-depends",
      ...args,
    ]);
  const inst = await dpkg("-i", pkgs.deb.x86_64);
  assertEquals(inst.code, 0, inst.stderr + inst.stdout);

  // The files, their owners and modes.
  const listed = (await dpkg("-L", "netmanager")).stdout.split("\n");
  for (
    const f of [
      "/usr/bin/netmanager",
      "/usr/lib/netmanager/bin/netmanager",
      "/usr/lib/netmanager/lib/deno",
      "/usr/lib/netmanager/lib/app/main.ts",
      "/lib/systemd/system/netmanager.service",
      "/lib/systemd/system/netmanager-control.service",
      "/etc/netmanager/netcfg.json",
      "/etc/netmanager/tuncfg.json",
    ]
  ) assert(listed.includes(f), `${f} is in the package`);
  assertEquals(await Deno.readLink(`${root}/usr/bin/netmanager`), "../lib/netmanager/bin/netmanager");
  for (
    const [f, mode] of [["usr/lib/netmanager/lib/deno", 0o755], [
      "usr/lib/netmanager/bin/netmanager",
      0o755,
    ]] as const
  ) {
    const st = await Deno.stat(`${root}/${f}`);
    assertEquals([st.mode! & 0o7777, st.uid, st.gid], [mode, 0, 0], f);
  }
  const state = await Deno.stat(`${root}/var/lib/netmanager`);
  assertEquals(state.mode! & 0o777, 0o700, "postinst made the state dir (0700) in the scratch root");
  const conffiles = (await run(["dpkg-deb", "-e", pkgs.deb.x86_64, `${root}/ctl`])).code === 0
    ? await Deno.readTextFile(`${root}/ctl/conffiles`)
    : "";
  assertEquals(conffiles.trim().split("\n").sort(), [
    "/etc/netmanager/control.env",
    "/etc/netmanager/netcfg.json",
    "/etc/netmanager/netmanager.env",
    "/etc/netmanager/tuncfg.json",
  ]);
  const unit = await Deno.readTextFile(`${root}/lib/systemd/system/netmanager.service`);
  assertMatch(unit, /^ExecStart=\/usr\/bin\/netmanager daemon /m);
  const v = await clean([`${root}/usr/bin/netmanager`, "version"]);
  assertEquals(v.code, 0, v.stderr);
  assertMatch(v.stdout, /^netmanager [0-9]/);

  // Reinstall over it (an upgrade): a changed config and the state survive.
  await Deno.writeTextFile(`${root}/etc/netmanager/netcfg.json`, '{"ClusterUrl":"10.0.0.1"}\n');
  await Deno.writeTextFile(`${root}/var/lib/netmanager/state.json`, "{}\n");
  const up = await dpkg("--force-confold", "-i", pkgs.deb.x86_64);
  assertEquals(up.code, 0, up.stderr);
  assertEquals(await Deno.readTextFile(`${root}/etc/netmanager/netcfg.json`), '{"ClusterUrl":"10.0.0.1"}\n');
  assertEquals(await Deno.readTextFile(`${root}/var/lib/netmanager/state.json`), "{}\n");

  // Remove keeps configs and state; purge removes them.
  assertEquals((await dpkg("-r", "netmanager")).code, 0);
  assertEquals(await exists(`${root}/usr/lib/netmanager`), false);
  assertEquals(await exists(`${root}/usr/bin/netmanager`), false);
  assertEquals(await exists(`${root}/etc/netmanager/netcfg.json`), true);
  assertEquals(await exists(`${root}/var/lib/netmanager/state.json`), true);
  assertEquals((await dpkg("-P", "netmanager")).code, 0);
  assertEquals(await exists(`${root}/etc/netmanager`), false);
  assertEquals(await exists(`${root}/var/lib/netmanager`), false);
});

Deno.test({
  name: "install.sh: archive into a scratch root, upgrade keeps configs and state, uninstall, purge",
  ...opts,
}, async () => {
  const pkgs = await packages();
  const root = await tempDir("nmdest-");
  const install = (...args: string[]) =>
    run(["bash", `${ROOT}scripts/install.sh`, "--destdir", root, ...args]);
  const first = await install(pkgs.archive.x86_64);
  assertEquals(first.code, 0, first.stderr);
  assertEquals(await Deno.readLink(`${root}/usr/local/bin/netmanager`), "../lib/netmanager/bin/netmanager");
  for (const f of ["netcfg.json", "tuncfg.json", "netmanager.env", "control.env"]) {
    assert(await exists(`${root}/etc/netmanager/${f}`), f);
  }
  assertEquals((await Deno.stat(`${root}/var/lib/netmanager`)).mode! & 0o777, 0o700);
  assertMatch(
    await Deno.readTextFile(`${root}/etc/systemd/system/netmanager.service`),
    /^ExecStart=\/usr\/local\/bin\/netmanager daemon /m,
  );
  const v1 = await clean([`${root}/usr/local/bin/netmanager`, "version"]);
  assertEquals(v1.code, 0, v1.stderr);

  // Upgrade to a "newer" release (the same tree with another version), run by the installed install.sh.
  const next = await unpack(pkgs.archive.x86_64);
  const info = buildInfo(next);
  await Deno.writeTextFile(
    `${next}/BUILD_INFO`,
    `version=99.0.0\ncommit=${info.commit}\narch=x86_64\ndeno=${info.deno}\n`,
  );
  await Deno.writeTextFile(`${root}/etc/netmanager/netcfg.json`, '{"ClusterUrl":"10.0.0.1"}\n');
  await Deno.writeTextFile(`${root}/var/lib/netmanager/state.json`, "{}\n");
  await Deno.writeTextFile(`${root}/etc/systemd/system/netmanager.service`, "stale\n");
  const up = await run(["bash", `${root}/usr/local/lib/netmanager/install.sh`, "--destdir", root, next]);
  assertEquals(up.code, 0, up.stderr);
  assertMatch(
    up.stderr,
    new RegExp(`upgrading ${info.version.replaceAll(".", "\\.").replaceAll("+", "\\+")} → 99\\.0\\.0`),
  );
  assertMatch(up.stderr, /keeping \/etc\/netmanager\/netcfg\.json/);
  assertEquals(buildInfo(`${root}/usr/local/lib/netmanager`).version, "99.0.0");
  assertEquals(await Deno.readTextFile(`${root}/etc/netmanager/netcfg.json`), '{"ClusterUrl":"10.0.0.1"}\n');
  assertEquals(await Deno.readTextFile(`${root}/var/lib/netmanager/state.json`), "{}\n");
  assertMatch(await Deno.readTextFile(`${root}/etc/systemd/system/netmanager.service`), /^ExecStart=/m);
  assertEquals(await exists(`${root}/usr/local/lib/netmanager.old`), false);
  assertEquals((await clean([`${root}/usr/local/bin/netmanager`, "version"])).code, 0);

  // Uninstall keeps configs and state; --purge removes them.
  const rm = await install("--uninstall");
  assertEquals(rm.code, 0, rm.stderr);
  for (
    const f of [
      "usr/local/bin/netmanager",
      "usr/local/lib/netmanager",
      "etc/systemd/system/netmanager.service",
    ]
  ) {
    assertEquals(await exists(`${root}/${f}`), false, f);
  }
  assertEquals(await Deno.readTextFile(`${root}/etc/netmanager/netcfg.json`), '{"ClusterUrl":"10.0.0.1"}\n');
  assert(await exists(`${root}/var/lib/netmanager/state.json`));
  assertEquals((await install("--uninstall", "--purge")).code, 0);
  assertEquals(await exists(`${root}/etc/netmanager`), false);
  assertEquals(await exists(`${root}/var/lib/netmanager`), false);
  // Bad input: not a release.
  const bad = await install("/etc/hostname");
  assertEquals(bad.code, 1);
  assertMatch(bad.stderr, /neither a release archive or directory nor an executable/);
});

Deno.test({
  name: "systemd units: systemd-analyze verify is clean; journald, start limit, capabilities",
  ...opts,
}, async () => {
  const pkgs = await packages();
  const tree = await unpack(pkgs.archive.x86_64);
  const dir = await tempDir("nmunits-");
  const units = ["netmanager.service", "netmanager-control.service"];
  for (const u of units) {
    const text = await Deno.readTextFile(`${tree}/systemd/${u}`);
    assertEquals(/^Standard(Output|Error)=/m.test(text), false, `${u} logs to the journal`);
    assertMatch(text, /^Restart=on-failure$/m);
    assertMatch(text, /^StartLimitIntervalSec=\d+$/m);
    assertMatch(text, /^StartLimitBurst=\d+$/m);
    await Deno.writeTextFile(
      `${dir}/${u}`,
      text.replaceAll("/usr/local/bin/netmanager", `${tree}/bin/netmanager`),
    );
  }
  const node = await Deno.readTextFile(`${dir}/netmanager.service`);
  assertMatch(node, /^CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN CAP_SYS_PTRACE$/m);
  assertMatch(node, /^DeviceAllow=\/dev\/net\/tun rw$/m);
  assertMatch(await Deno.readTextFile(`${dir}/netmanager-control.service`), /^CapabilityBoundingSet=$/m);
  const verify = await run(["systemd-analyze", "verify", "--man=no", ...units.map((u) => `${dir}/${u}`)]);
  assertEquals([verify.code, verify.stdout + verify.stderr], [0, ""]);
  // The check has teeth: a unit whose program is missing fails it.
  await Deno.writeTextFile(
    `${dir}/netmanager.service`,
    node.replaceAll(`${tree}/bin/netmanager`, `${dir}/missing`),
  );
  const broken = await run(["systemd-analyze", "verify", "--man=no", `${dir}/netmanager.service`]);
  assert(broken.code !== 0, "verify fails for a missing program");
  assertMatch(broken.stderr, /is not executable|No such file/);
});

function exists(p: string): Promise<boolean> {
  return Deno.lstat(p).then(() => true, () => false);
}
