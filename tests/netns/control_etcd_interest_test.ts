/**
 * The etcd store's interest keys against a real etcd member (loopback, free ports): the interests
 * table queries bring (one per new node and job) gather for a short window and reach etcd as a few
 * transactions, not one per etcd round trip; they are shown at once and sit on the replica's
 * lease; a second replica shows them on the job through its watch; closing the store with keys
 * still waiting for their window neither hangs nor leaves them behind. An interest taken back right
 * after it was put is not shown again when the put's echo comes through the watch after the take-back
 * (the race seen once in control_etcd_test's replica scenario; on the old code 1 round in 10-30 showed it).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { hasEtcd, startEtcd } from "../helpers/etcd.ts";
import { EtcdStore } from "../../src/cluster/etcd_store.ts";

const opts = { ignore: !isRoot || !hasEtcd(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "etcd store: interests of many table queries go to etcd in a few transactions, on the lease",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-etcd-interest-" });
    let etcd: { url: string; stop: () => Promise<void> } | undefined;
    const stores: EtcdStore[] = [];
    try {
      etcd = await startEtcd(dir, 30000);
      const open = async () => {
        const s = await EtcdStore.open({ endpoints: [etcd!.url], cluster: "itest" });
        stores.push(s);
        return s;
      };
      const a = await open();
      const b = await open();
      const P = a.prefix;
      await a.change((s) =>
        s.deployService({
          _id: "job0",
          app_name: "a",
          app_ns: "b",
          microservice_name: "c",
          microservice_namespace: "d",
        })
      );
      const revision = async () => (await a.etcd.rangePrefix(`${P}cluster`)).revision;
      const before = await revision();
      const first = a.interest("job0", "w0", true);
      assertEquals(a.state.job("job0")!.interested_nodes, ["w0"], "shown at once, before etcd has it");
      await first;
      // 60 new interests, 3 every 10 ms (300/s, as from a busy broker): without a window each
      // tick's keys were one transaction of their own (etcd answers within the tick), ~20.
      const recorded: Promise<void>[] = [];
      for (let t = 1; t <= 20; t++) {
        for (let k = 0; k < 3; k++) recorded.push(a.interest(`job${k}`, `w${t}`, true));
        await new Promise((r) => setTimeout(r, 10));
      }
      await Promise.all(recorded);
      const txns = (await revision()) - before;
      assert(txns >= 1 && txns <= 6, `60 interests took ${txns} transactions (expected a few)`);
      const { kvs } = await a.etcd.rangePrefix(`${P}interest/`);
      assertEquals(kvs.length, 61);
      // every key on a's lease: read one with its lease through the gateway
      const r = await fetch(`${etcd.url}/v3/kv/range`, {
        method: "POST",
        body: JSON.stringify({ key: btoa(`${P}interest/job0/w0`) }),
      });
      const lease = ((await r.json()) as { kvs: Array<{ lease?: string }> }).kvs[0].lease;
      assert(lease !== undefined && lease !== "0", "an interest key is on the replica's lease");
      // the second replica learns them from its watch and shows them on the job
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && (b.state.job("job0")?.interested_nodes.length ?? 0) < 21) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assertEquals(b.state.job("job0")?.interested_nodes.length, 21);
      // keys still in their window when the store closes: close neither hangs nor errs, and the
      // revoked lease takes every key of a with it
      const late = [a.interest("job9", "w1", true), a.interest("job9", "w2", true)];
      await a.close();
      await Promise.all(late);
      const left = await b.etcd.rangePrefix(`${P}interest/`);
      assertEquals(left.kvs.length, 0, "a's lease revoked: its interests are gone");
    } finally {
      for (const s of stores) await s.close().catch(() => {});
      await etcd?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "etcd store: an interest taken back right after it was put is not shown again by the put's late echo",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-etcd-interest-" });
    let etcd: { url: string; stop: () => Promise<void> } | undefined;
    let a: EtcdStore | undefined;
    try {
      etcd = await startEtcd(dir, 30000);
      a = await EtcdStore.open({ endpoints: [etcd.url], cluster: "itest" });
      const s = a;
      await s.change((st) =>
        st.deployService({
          _id: "job0",
          app_name: "a",
          app_ns: "b",
          microservice_name: "c",
          microservice_namespace: "d",
        })
      );
      const shown = () => s.state.job("job0")!.interested_nodes.includes("wr");
      for (let round = 0; round < 80; round++) {
        // The put is in etcd; its echo comes through the watch a moment later, while the deletion waits
        // for its write window (the order interest/remove right after a table query produces).
        await s.interest("job0", "wr", true);
        const off = s.interest("job0", "wr", false);
        assertEquals(shown(), false, "taken back at once");
        let reappeared = 0;
        const until = Date.now() + 120;
        while (Date.now() < until) {
          if (shown()) reappeared++;
          await new Promise((r) => setTimeout(r, 2));
        }
        await off;
        assertEquals(reappeared, 0, `round ${round}: the put's echo showed the interest again`);
        assertEquals((await s.etcd.rangePrefix(`${s.prefix}interest/`)).kvs.length, 0);
      }
      // The echo of the deletion neither shows anything again; a new put after it shows the interest.
      await s.interest("job0", "wr", true);
      assertEquals(shown(), true);
    } finally {
      await a?.close().catch(() => {});
      await etcd?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
