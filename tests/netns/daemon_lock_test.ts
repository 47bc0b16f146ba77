/**
 * One daemon per state directory: a second daemon in the same namespace on the same state refuses to
 * start ("already running, pid N") before touching anything, and the first one's instances, links,
 * rules and state stay as they were. A daemon killed with SIGKILL leaves no stale lock.
 */
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, isRoot } from "../helpers/netns.ts";
import { deployBody, jobName, linkNames, ruleDump, TestContainer, TestNode } from "../helpers/node.ts";
import { nodeCli, nodeFileArgs } from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

Deno.test(
  { name: "daemon lock: a second daemon on the same state is refused, the first untouched", ...opts },
  async () => {
    const node = await TestNode.start();
    const c = await TestContainer.start();
    try {
      assertEquals((await node.register()).status, 200);
      const job = jobName("l");
      const r = await node.api.post("/container/deploy", deployBody(c.pid, job, 0, "7100:80"));
      assertEquals(r.status, 200, r.body);
      const links = await linkNames(node.ns);
      const rules = await ruleDump(node.ns);
      const state = await Deno.readTextFile(`${node.dir}/state/state.json`).catch(() => "");
      const addrs = (await c.exec(["ip", "-br", "addr"])).stdout;

      // The second daemon: same namespace, same state dir, its own socket (so only the lock stops it).
      const second = await nodeCli(node, [
        "daemon",
        "--subnet",
        node.subnet,
        ...nodeFileArgs(node, `${node.dir}/second.sock`),
      ]);
      assertEquals(second.code, 1, second.stderr);
      assertMatch(second.stderr, new RegExp(`already running, pid ${node.proc!.pid}\\b`));
      assertEquals(
        second.stderr.trim().split("\n").length,
        1,
        `one line, nothing else logged: ${second.stderr}`,
      );

      // Nothing of the first changed, and it still serves its instance.
      assertEquals(await linkNames(node.ns), links);
      assertEquals(await ruleDump(node.ns), rules);
      assertEquals(await Deno.readTextFile(`${node.dir}/state/state.json`).catch(() => ""), state);
      assertEquals((await c.exec(["ip", "-br", "addr"])).stdout, addrs);
      const st = (await node.api.getJson("/status")) as { instances: number; registered: boolean };
      assertEquals([st.registered, st.instances], [true, 1]);
      assertEquals(await Deno.stat(`${node.dir}/second.sock`).catch(() => undefined), undefined);

      // `clean` through another socket is refused as well: the lock, not the socket, tells.
      const clean = await nodeCli(node, ["clean", ...nodeFileArgs(node, `${node.dir}/other.sock`)]);
      assertEquals(clean.code, 1, clean.stderr);
      assertMatch(clean.stderr, /already running, pid \d+ .*stop it first/);
      assertEquals(await linkNames(node.ns), links);

      // SIGKILL leaves no stale lock: the next daemon starts and adopts the instance.
      await node.signal("SIGKILL");
      await node.startDaemon();
      assertEquals(((await node.api.getJson("/status")) as { instances: number }).instances, 1);
      assertEquals((await Deno.readTextFile(`${node.dir}/state/daemon.lock`)).trim(), String(node.proc!.pid));
    } catch (e) {
      console.error(await node.log());
      throw e;
    } finally {
      await c.stop();
      await node.stop();
      await cleanupAll();
    }
  },
);
