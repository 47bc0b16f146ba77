/**
 * Root tests for ffi/netlink.ts and ffi/netns.ts against the real kernel, checked with `ip -j`.
 *
 * Every link is made through a netlink socket opened *inside* a test namespace
 * (`Netlink.openInNetns`), so nothing is created in the root namespace. Addresses are
 * 10.213.77.0/26 and fd00:d5:4d::/120, and exist only inside the test namespaces; traffic (ping)
 * is sent only from inside them to them.
 */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { cstr, Errno, libc } from "../../ffi/libc.ts";
import { Netlink, NetlinkError } from "../../ffi/netlink.ts";
import {
  closeFd,
  createNamedNetns,
  deleteNamedNetns,
  NetnsError,
  openNetnsByName,
  openNetnsByPid,
  withNetns,
} from "../../ffi/netns.ts";
import { cleanupAll, createNs, isRoot, run, sh, uniqueName } from "../helpers/netns.ts";

const V4 = (last: number) => new Uint8Array([10, 213, 77, last]);
const V6 = (last: number) => new Uint8Array([0xfd, 0, 0, 0xd5, 0, 0x4d, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
const V6S = (last: number) => `fd00:d5:4d::${last.toString(16)}`;

const threadNs = () => Deno.readLinkSync("/proc/thread-self/ns/net");
/** The namespace an fd refers to, in the `net:[inode]` form of /proc/…/ns/net links. */
const fdTarget = (fd: number) => `net:[${Deno.statSync(`/proc/self/fd/${fd}`).ino}]`;

interface IpLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  flags: string[];
  master?: string;
  address?: string;
  linkinfo?: { info_kind?: string };
}
interface IpAddr {
  ifname: string;
  addr_info: Array<{ family: string; local: string; prefixlen: number }>;
}
interface IpRoute {
  dst: string;
  gateway?: string;
  dev: string;
}

async function ipJson<T>(prefix: string[], args: string[]): Promise<T> {
  return JSON.parse(await sh([...prefix, "ip", "-j", ...args])) as T;
}

async function hasCommand(name: string): Promise<boolean> {
  return (await run(["sh", "-c", `command -v ${name}`])).code === 0;
}

function expectErrno(fn: () => unknown, code: number, re?: RegExp): void {
  throws(fn, (e: unknown) => {
    ok(e instanceof NetlinkError, `expected NetlinkError, got ${e}`);
    strictEqual(e.errno, code, e.message);
    if (re) ok(re.test(e.message), `message ${JSON.stringify(e.message)} should match ${re}`);
    return true;
  });
}

/** Starts `unshare -n sleep 30` (a container stand-in) and waits until it runs in its own netns. */
async function startContainer(): Promise<Deno.ChildProcess> {
  const child = new Deno.Command("unshare", { args: ["-n", "sleep", "30"], stdout: "null", stderr: "null" })
    .spawn();
  const own = Deno.readLinkSync("/proc/self/ns/net");
  for (let i = 0; i < 200; i++) {
    try {
      const comm = Deno.readTextFileSync(`/proc/${child.pid}/comm`).trim();
      if (comm === "sleep" && Deno.readLinkSync(`/proc/${child.pid}/ns/net`) !== own) return child;
    } catch { /* not there yet */ }
    await new Promise((r) => setTimeout(r, 10));
  }
  child.kill("SIGKILL");
  await child.status;
  throw new Error("unshare -n sleep did not enter its own network namespace");
}

Deno.test({
  name: "createNamedNetns/deleteNamedNetns behave like ip netns add/del",
  ignore: !isRoot,
  async fn() {
    const name = uniqueName("nn");
    const before = threadNs();
    try {
      createNamedNetns(name);
      strictEqual(threadNs(), before, "JS thread must be back in its namespace");
      const list = (await sh(["ip", "netns", "list"])).split("\n").map((l) => l.split(" ")[0]);
      ok(list.includes(name), `ip netns list should show ${name}`);
      const links = await ipJson<IpLink[]>(["ip", "netns", "exec", name], ["link"]);
      deepStrictEqual(links.map((l) => l.ifname), ["lo"], "a fresh namespace holds only lo");

      const fd = openNetnsByName(name);
      try {
        ok(fdTarget(fd).startsWith("net:["), fdTarget(fd));
        ok(fdTarget(fd) !== before, "the new namespace is not ours");
      } finally {
        closeFd(fd);
      }

      throws(() => createNamedNetns(name), (e: unknown) => {
        ok(e instanceof NetnsError);
        strictEqual(e.errno, Errno.EEXIST);
        ok(e.message.includes("already exists"), e.message);
        return true;
      });
      strictEqual(threadNs(), before);

      deleteNamedNetns(name);
      const after = (await sh(["ip", "netns", "list"])).split("\n").map((l) => l.split(" ")[0]);
      ok(!after.includes(name), "ip netns list must no longer show it");
      throws(
        () => deleteNamedNetns(name),
        (e: unknown) => e instanceof NetnsError && e.errno === Errno.ENOENT,
      );
      throws(
        () => openNetnsByName(name),
        (e: unknown) => e instanceof NetnsError && e.errno === Errno.ENOENT,
      );
      throws(() => createNamedNetns("a/b"), RangeError);

      // interoperability: ip creates, we delete; we create, ip deletes
      const byIp = await createNs("ip");
      deleteNamedNetns(byIp);
      ok(!(await sh(["ip", "netns", "list"])).includes(byIp));
      createNamedNetns(name);
      await sh(["ip", "netns", "del", name]);
      ok(!(await sh(["ip", "netns", "list"])).includes(name));
    } finally {
      await run(["ip", "netns", "del", name]);
      await cleanupAll();
    }
  },
});

Deno.test({
  name: "openNetnsByPid: own PID works, a missing PID gives a clear error",
  ignore: !isRoot,
  fn() {
    const fd = openNetnsByPid(Deno.pid);
    try {
      strictEqual(fdTarget(fd), Deno.readLinkSync("/proc/self/ns/net"));
    } finally {
      closeFd(fd);
    }
    throws(() => openNetnsByPid(0x7ffffff0), (e: unknown) => {
      ok(e instanceof NetnsError);
      strictEqual(e.errno, 3 /* ESRCH */);
      ok(e.message.includes(`no process with PID ${0x7ffffff0}`), e.message);
      return true;
    });
    throws(() => openNetnsByPid(-1), RangeError);
    throws(() => closeFd(fd), (e: unknown) => e instanceof NetnsError && e.errno === 9 /* EBADF */);
  },
});

Deno.test({
  name: "openInNetns/withNetns always restore the thread's namespace",
  ignore: !isRoot,
  async fn() {
    const before = threadNs();
    const ns = await createNs("rs");
    try {
      const fd = openNetnsByName(ns);
      try {
        const inside = withNetns(fd, () => threadNs());
        ok(inside !== before, "inside the callback the thread is in the other namespace");
        strictEqual(inside, fdTarget(fd));
        strictEqual(threadNs(), before);
        throws(() =>
          withNetns(fd, () => {
            throw new Error("boom");
          }), /boom/);
        strictEqual(threadNs(), before, "restored after a throwing callback");
        throws(() => withNetns(fd, () => Promise.resolve(1)), TypeError);
        strictEqual(threadNs(), before, "restored after an async callback");
        // the socket lives in the namespace: it sees that namespace's links only
        const nl = Netlink.openInNetns(fd);
        try {
          deepStrictEqual(nl.listLinks().map((l) => l.name), ["lo"]);
        } finally {
          nl.close();
        }
        strictEqual(threadNs(), before);
      } finally {
        closeFd(fd);
      }
      // an fd that is not a namespace: setns fails with EINVAL, nothing moves
      const notNs = libc.open(cstr("/proc/self/status"), 0o2000000, 0);
      ok(notNs >= 0);
      try {
        throws(
          () => Netlink.openInNetns(notNs),
          (e: unknown) => e instanceof NetnsError && e.errno === Errno.EINVAL,
        );
      } finally {
        closeFd(notNs);
      }
      strictEqual(threadNs(), before);
      throws(() => Netlink.openInNetns(987654), (e: unknown) => e instanceof NetnsError && e.errno === 9);
      strictEqual(threadNs(), before);
    } finally {
      await cleanupAll();
    }
  },
});

Deno.test({
  name: "netlink: bridge, veths into a named netns and a PID netns, addresses, routes, ping, errors",
  ignore: !isRoot,
  async fn(t) {
    const before = threadNs();
    const rootNs = Deno.readLinkSync("/proc/self/ns/net");
    const nodeNs = await createNs("nd");
    const peerNs = await createNs("pe");
    const br = uniqueName("br");
    const vh1 = uniqueName("h");
    const vh2 = uniqueName("h");
    let container: Deno.ChildProcess | undefined;
    const fds: number[] = [];
    const socks: Netlink[] = [];
    const open = (fd: number) => {
      fds.push(fd);
      // never act on the root namespace by mistake
      ok(fdTarget(fd) !== rootNs, "refusing to work in the root network namespace");
      return fd;
    };
    const sock = (fd: number) => {
      const s = Netlink.openInNetns(fd);
      socks.push(s);
      return s;
    };
    try {
      container = await startContainer();
      const pid = container.pid;
      const nodeFd = open(openNetnsByName(nodeNs));
      const peerFd = open(openNetnsByName(peerNs));
      const ctrFd = open(openNetnsByPid(pid));
      const host = sock(nodeFd);
      const inCtr = ["nsenter", `--net=/proc/${pid}/ns/net`];

      let brIdx = 0;
      await t.step("bridge up with v4 /26 and v6 /120 (nodad)", () => {
        host.createBridge(br, 1450);
        brIdx = host.linkIndex(br)!;
        ok(brIdx > 0);
        host.setLink(brIdx, { up: true });
        host.addAddress(brIdx, { family: 4, addr: V4(1), prefixLen: 26 });
        host.addAddress(brIdx, { family: 6, addr: V6(1), prefixLen: 120 }, { noDad: true });
      });

      await t.step("veth into a named netns and into a PID's netns, enslaved, MTU 1450", () => {
        host.createVeth(vh1, "eth0", { mtu: 1450, peerNetnsFd: peerFd, master: brIdx });
        host.setLink(host.linkIndex(vh1)!, { up: true });
        host.createVeth(vh2, "eth0", {
          mtu: 1450,
          peerNetnsFd: ctrFd,
          master: brIdx,
          up: true,
          peerIndex: 2,
        });
        for (const [fd, last] of [[peerFd, 2], [ctrFd, 3]]) {
          const c = sock(fd);
          const idx = c.linkIndex("eth0")!;
          ok(idx > 0);
          c.addAddress(idx, { family: 4, addr: V4(last), prefixLen: 26 });
          c.addAddress(idx, { family: 6, addr: V6(last), prefixLen: 120 }, { noDad: true });
          c.setLink(idx, { up: true });
          c.setLink(c.linkIndex("lo")!, { up: true });
          if (last === 2) c.setLink(idx, { gsoMaxSegs: 45 }); // (the instance's TSO cap, jumboTsoSegs)
          c.addRoute({ family: 4, dstLen: 0, gateway: V4(1) });
          c.addRoute({ family: 6, dstLen: 0, gateway: V6(1) });
        }
        strictEqual(threadNs(), before);
      });

      await t.step("ip -j link in the node netns: bridge, enslaved veths, MTU, up", async () => {
        const links = await ipJson<IpLink[]>(["ip", "netns", "exec", nodeNs], ["-d", "link"]);
        const byName = new Map(links.map((l) => [l.ifname, l]));
        const b = byName.get(br)!;
        strictEqual(b.linkinfo?.info_kind, "bridge");
        strictEqual(b.mtu, 1450);
        ok(b.flags.includes("UP"));
        for (const v of [vh1, vh2]) {
          const l = byName.get(v)!;
          ok(l, `${v} in node netns`);
          strictEqual(l.linkinfo?.info_kind, "veth");
          strictEqual(l.master, br);
          strictEqual(l.mtu, 1450);
          ok(l.flags.includes("UP"), `${v} up`);
        }
        // the same through our own dump
        const mine = host.listLinks();
        const hb = mine.find((l) => l.name === br)!;
        const { mac, ...rest } = hb;
        deepStrictEqual(rest, { index: brIdx, name: br, kind: "bridge", up: true, mtu: 1450 });
        strictEqual([...mac!].map((x) => x.toString(16).padStart(2, "0")).join(":"), b.address);
        for (const v of [vh1, vh2]) {
          const l = mine.find((x) => x.name === v)!;
          strictEqual(l.kind, "veth");
          strictEqual(l.master, brIdx);
          strictEqual(l.up, true);
          strictEqual(l.mtu, 1450);
        }
        // nothing of ours leaked into the root namespace
        const rootLinks = await ipJson<IpLink[]>([], ["link"]);
        ok(!rootLinks.some((l) => [br, vh1, vh2].includes(l.ifname)), "no test link in the root netns");
      });

      await t.step("ip -j addr/route in the peer and container netns", async () => {
        for (const [prefix, last] of [[["ip", "netns", "exec", peerNs], 2], [inCtr, 3]] as const) {
          const addrs = await ipJson<IpAddr[]>([...prefix], ["addr", "show", "dev", "eth0"]);
          const info = addrs[0].addr_info.map((a) => `${a.family} ${a.local}/${a.prefixlen}`);
          ok(info.includes(`inet 10.213.77.${last}/26`), info.join(", "));
          ok(info.includes(`inet6 ${V6S(last)}/120`), info.join(", "));
          const r4 = await ipJson<IpRoute[]>([...prefix], ["route"]);
          ok(
            r4.some((r) => r.dst === "default" && r.gateway === "10.213.77.1" && r.dev === "eth0"),
            JSON.stringify(r4),
          );
          const r6 = await ipJson<IpRoute[]>([...prefix], ["-6", "route"]);
          ok(
            r6.some((r) => r.dst === "default" && r.gateway === V6S(1) && r.dev === "eth0"),
            JSON.stringify(r6),
          );
          const links = await ipJson<IpLink[]>([...prefix], ["link"]);
          const eth0 = links.find((l) => l.ifname === "eth0")!;
          strictEqual(eth0.mtu, 1450);
          ok(eth0.flags.includes("UP"));
          const d = await ipJson<Array<IpLink & { gso_max_segs?: number }>>([...prefix], ["-d", "link"]);
          strictEqual(d.find((l) => l.ifname === "eth0")!.gso_max_segs, last === 2 ? 45 : 65535);
          ok(links.find((l) => l.ifname === "lo")!.flags.includes("UP"));
          if (last === 3) strictEqual(eth0.ifindex, 2, "peerIndex honoured");
        }
        // our own address dump agrees
        const c = sock(peerFd);
        const idx = c.linkIndex("eth0")!;
        const mine = c.listAddresses(idx).filter((a) => a.addr[0] !== 0xfe); // drop link-local
        deepStrictEqual(
          mine.map((a) => [a.index, a.family, [...a.addr].join("."), a.prefixLen]).sort(),
          [[idx, 4, "10.213.77.2", 26], [idx, 6, [...V6(2)].join("."), 120]].sort(),
        );
        ok(c.listAddresses().some((a) => a.family === 4 && a.addr[0] === 127), "unfiltered dump includes lo");
      });

      await t.step({
        name: "ping across the bridge (v4 and v6) from inside the namespaces",
        ignore: !(await hasCommand("ping")),
        fn: async () => {
          const ping = ["ping", "-c", "1", "-W", "2"];
          await sh(["ip", "netns", "exec", peerNs, ...ping, "10.213.77.1"]);
          await sh(["ip", "netns", "exec", peerNs, ...ping, "10.213.77.3"]);
          await sh(["ip", "netns", "exec", peerNs, ...ping, V6S(3)]);
          await sh([...inCtr, ...ping, "10.213.77.2"]);
          await sh([...inCtr, ...ping, V6S(1)]);
        },
      });

      await t.step("errors: EEXIST, ENODEV, ignoreExisting, replace, closed socket", () => {
        expectErrno(
          () => host.createBridge(br),
          Errno.EEXIST,
          new RegExp(`create bridge ${br}: File exists`),
        );
        expectErrno(() => host.createVeth(vh1, "x0"), Errno.EEXIST);
        expectErrno(() => host.deleteLink(987654), Errno.ENODEV, /delete link 987654: No such device/);
        expectErrno(() => host.setLink(987654, { up: true }), Errno.ENODEV);
        expectErrno(
          () => host.addAddress(brIdx, { family: 4, addr: V4(1), prefixLen: 26 }),
          Errno.EEXIST,
          /add address 10\.213\.77\.1\/26/,
        );
        host.addAddress(brIdx, { family: 4, addr: V4(1), prefixLen: 26 }, { ignoreExisting: true });
        expectErrno(() => host.setLink(brIdx, { mtu: 10 }), Errno.EINVAL);
        strictEqual(host.linkIndex("nosuchlink0"), undefined);
        const c = sock(peerFd);
        expectErrno(() => c.addRoute({ family: 4, dstLen: 0, gateway: V4(1) }), Errno.EEXIST);
        c.addRoute({ family: 4, dstLen: 0, gateway: V4(1) }, { replace: true });
        c.deleteAddress(c.linkIndex("eth0")!, { family: 6, addr: V6(2), prefixLen: 120 });
        expectErrno(
          () => c.deleteAddress(c.linkIndex("eth0")!, { family: 6, addr: V6(2), prefixLen: 120 }),
          Errno.EADDRNOTAVAIL,
        );
        const closed = Netlink.openInNetns(peerFd);
        closed.close();
        closed.close();
        throws(() => closed.listLinks(), /closed/);
      });

      await t.step("dumps spanning many datagrams (120 veth pairs, 240 addresses)", async () => {
        const names: string[] = [];
        for (let i = 0; i < 120; i++) {
          const a = `m${i}a`;
          host.createVeth(a, `m${i}b`, { up: true });
          host.addAddress(host.linkIndex(a)!, {
            family: 4,
            addr: new Uint8Array([10, 213, 78, i]),
            prefixLen: 32,
          });
          host.addAddress(host.linkIndex(a)!, {
            family: 4,
            addr: new Uint8Array([10, 213, 79, i]),
            prefixLen: 32,
          });
          names.push(a, `m${i}b`);
        }
        const ipLinks = await ipJson<IpLink[]>(["ip", "netns", "exec", nodeNs], ["link"]);
        const mine = host.listLinks();
        deepStrictEqual(mine.map((l) => l.name).sort(), ipLinks.map((l) => l.ifname).sort());
        ok(mine.length > 240);
        const v4 = host.listAddresses().filter((a) => a.family === 4 && a.addr[1] === 213 && a.addr[2] >= 78);
        strictEqual(v4.length, 240);
        for (let i = 0; i < 120; i++) host.deleteLink(host.linkIndex(`m${i}a`)!); // takes m<i>b along
        strictEqual(host.listLinks().filter((l) => /^m\d+[ab]$/.test(l.name)).length, 0);
      });

      await t.step("delete links: the peer end disappears with its veth", async () => {
        host.deleteLink(host.linkIndex(vh1)!);
        strictEqual(host.linkIndex(vh1), undefined);
        const peerLinks = await ipJson<IpLink[]>(["ip", "netns", "exec", peerNs], ["link"]);
        ok(!peerLinks.some((l) => l.ifname === "eth0"), "peer end gone");
        host.deleteLink(host.linkIndex(vh2)!);
        const ctrLinks = await ipJson<IpLink[]>(inCtr, ["link"]);
        deepStrictEqual(ctrLinks.map((l) => l.ifname), ["lo"]);
        host.deleteLink(brIdx);
        deepStrictEqual(host.listLinks().map((l) => l.name), ["lo"]);
      });
      strictEqual(threadNs(), before);
    } finally {
      for (const s of socks) s.close();
      for (const fd of fds) closeFd(fd);
      if (container) {
        container.kill("SIGKILL");
        await container.status;
      }
      await cleanupAll();
    }
  },
});
