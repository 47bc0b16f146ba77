import { assert, assertEquals, assertRejects } from "../helpers/assert.ts";
import { STATE_FILE_NAME, StateFileError, StateStore, writeAtomic } from "../../src/cluster/store.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nmctl-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("store: missing file → empty state; saves survive a reopen", () =>
  withDir(async (dir) => {
    const sub = `${dir}/a/b`; // created on open
    const { store, state } = await StateStore.open(sub);
    assertEquals(state.jobs().length, 0);
    assertEquals(store.path, `${sub}/${STATE_FILE_NAME}`);
    state.nodeSubnet("w1");
    const j = state.deployService({
      _id: "j",
      app_name: "a",
      app_ns: "b",
      microservice_name: "c",
      microservice_namespace: "d",
    });
    state.deployInstance(j.job._id, 0);
    await store.save();
    const again = await StateStore.open(sub);
    assertEquals(again.state.toFile(), state.toFile());
    assertEquals(again.state.nodeSubnet("w1").node.subnet, "10.18.0.0");
    assertEquals(again.state.nodeSubnet("w2").node.subnet, "10.18.0.64");
    assertEquals([...Deno.readDirSync(sub)].map((e) => e.name), [STATE_FILE_NAME]); // no tmp left
    const mode = (await Deno.stat(store.path)).mode! & 0o777;
    assertEquals(mode, 0o600);
  }));

Deno.test("store: concurrent saves are serialized and the file ends with the latest state", () =>
  withDir(async (dir) => {
    const { store, state } = await StateStore.open(dir);
    const saves: Promise<void>[] = [];
    for (let k = 0; k < 50; k++) {
      state.nodeSubnet(`w${k}`);
      saves.push(store.save());
    }
    await Promise.all(saves);
    const { state: loaded } = await StateStore.open(dir);
    assertEquals(loaded.nodes().length, 50);
    assertEquals(loaded.node("w49")?.subnet, "10.18.12.64");
  }));

Deno.test("store: a corrupt file is a clear error and is never overwritten", () =>
  withDir(async (dir) => {
    const path = `${dir}/${STATE_FILE_NAME}`;
    for (
      const text of [
        "{ not json",
        '{"version":1}',
        "",
        '{"version":1,"jobs":[],"nodes":[{"worker_id":"w","subnet":"1.2.3.4","subnet_v6":"fc00::"}],"pools":{"subnet4":{"next":"0","free":[]},"subnet6":{"next":"0","free":[]},"service4":{"next":"0","free":[]},"instance6":{"next":"0","free":[]},"rr6":{"next":"0","free":[]}}}',
      ]
    ) {
      await Deno.writeTextFile(path, text);
      const e = await assertRejects(() => StateStore.open(dir), StateFileError, path);
      assert(e.message.includes("fix or move it away"), e.message);
      assertEquals(await Deno.readTextFile(path), text);
    }
  }));

Deno.test("store: a failed save rejects and later saves still work", () =>
  withDir(async (dir) => {
    const { store, state } = await StateStore.open(`${dir}/s`);
    state.nodeSubnet("w1");
    await Deno.remove(`${dir}/s`, { recursive: true }); // the directory vanished
    await assertRejects(() => store.save());
    await Deno.mkdir(`${dir}/s`);
    state.nodeSubnet("w2");
    await store.save();
    assertEquals((await StateStore.open(`${dir}/s`)).state.nodes().length, 2);
  }));

Deno.test("store: writeAtomic replaces the file whole", () =>
  withDir(async (dir) => {
    const p = `${dir}/f.json`;
    await writeAtomic(p, "x".repeat(100000));
    await writeAtomic(p, "short");
    assertEquals(await Deno.readTextFile(p), "short");
  }));
