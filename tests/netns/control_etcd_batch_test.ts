/**
 * The etcd store's batches against a real etcd member (on loopback, free ports): changes issued
 * at once share transactions, refused ones among them leave nothing behind, an address released
 * and taken again in one batch is owned by its new row, and a second store reading the prefix
 * holds exactly what the first one holds (tests/helpers/etcd_batch_check.ts does the driving).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot, sh } from "../helpers/netns.ts";
import { startEtcd } from "../helpers/etcd.ts";
import type { StateFile } from "../../src/cluster/schemas.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test({
  name:
    "etcd store: batched changes with refusals and a release+reuse in one transaction; a second store agrees",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-etcd-batch-" });
    let etcd: { url: string; stop: () => Promise<void> } | undefined;
    try {
      etcd = await startEtcd(dir, 30000);
      const out = JSON.parse(
        await sh([
          Deno.execPath(),
          "run",
          "-A",
          "--config",
          `${ROOT}deno.json`,
          `${ROOT}tests/helpers/etcd_batch_check.ts`,
          etcd.url,
        ]),
      ) as {
        refused: string[];
        freed: string;
        inst8: string;
        claimOfFreed: string;
        a: StateFile;
        b: StateFile;
      };
      assertEquals(out.refused.length, 2, out.refused.join("\n"));
      assert(out.refused.some((r) => /no service with id or name "nope"/.test(r)), out.refused.join("\n"));
      assert(out.refused.some((r) => /"ghost"/.test(r)), out.refused.join("\n"));
      assertEquals(out.a.nodes.length, 40);
      assertEquals(out.a.jobs.length, 21);
      assertEquals(new Set(out.a.nodes.map((n) => n.subnet)).size, 40);
      const j0 = out.a.jobs.find((j) => j._id === "j0")!;
      assertEquals(j0.instance_list.map((i) => i.instance_number), [0, 1, 2, 4, 5, 6, 7, 8]);
      assertEquals(out.inst8, out.freed, "instance 8 took the address instance 3 gave back");
      assertEquals(out.claimOfFreed, "inst/j0/8", "its claim names the new owner");
      // (in any order: a store lists jobs and nodes as it learnt them)
      const sorted = (f: StateFile) =>
        JSON.stringify({
          ...f,
          jobs: [...f.jobs].sort((x, y) => x._id < y._id ? -1 : 1),
          nodes: [...f.nodes].sort((x, y) => x.worker_id < y.worker_id ? -1 : 1),
        });
      assertEquals(sorted(out.b), sorted(out.a), "a second store reads the same state");
    } finally {
      await etcd?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
