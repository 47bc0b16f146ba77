import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  type CredentialBackend,
  type CredentialRecord,
  CredentialStore,
  loadOrCreateApiToken,
  mayPublish,
  maySubscribe,
} from "../../src/cluster/auth.ts";
import { loadMqttCredential } from "../../src/config/mod.ts";

Deno.test("auth ACL: a node publishes only its own requests, subscribes only its own results and job updates", () => {
  for (
    const t of [
      "subnet",
      "tablequery/request",
      "service/deployed",
      "service/address-changed",
      "interest/remove",
    ]
  ) {
    assert(mayPublish("w1", `nodes/w1/net/${t}`), t);
    assert(!mayPublish("w1", `nodes/w2/net/${t}`), t);
  }
  assert(!mayPublish("w1", "nodes/w1/net/tablequery/result"));
  assert(!mayPublish("w1", "nodes/w1/net/subnetwork/result"));
  assert(!mayPublish("w1", "jobs/a.b.c.d/updates_available"));
  assert(!mayPublish("w1", "nodes/w10/net/subnet"));
  assert(maySubscribe("w1", "nodes/w1/net/tablequery/result"));
  assert(maySubscribe("w1", "jobs/a.b.c.d/updates_available"));
  assert(maySubscribe("w1", "jobs/+/updates_available"));
  for (
    const f of [
      "nodes/w2/net/tablequery/result",
      "nodes/+/net/#",
      "#",
      "jobs/#",
      "jobs/a+/updates_available",
      "nodes/w1",
    ]
  ) {
    assert(!maySubscribe("w1", f), f);
  }
});

Deno.test("auth store: credentials issued at once (concurrent 'control node add') all reach the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const s = await CredentialStore.open(dir);
    const issued = await Promise.all(["w1", "w2", "w3", "w4", "w5"].map((w) => s.issue(w)));
    const again = await CredentialStore.open(dir);
    for (const c of issued) assert(again.verify(c.username, c.password), c.username);
    assertEquals(again.workers(), ["w1", "w2", "w3", "w4", "w5"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("auth store: issue, verify, rotate, revoke; 0600 files, no password on disk; token kept", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const s = await CredentialStore.open(dir);
    const a = await s.issue("w1");
    assert(s.verify("w1", a.password) && !s.verify("w1", "x") && !s.verify("w2", a.password));
    assertEquals((await Deno.stat(s.path)).mode! & 0o777, 0o600);
    assert(!(await Deno.readTextFile(s.path)).includes(a.password));
    const b = await s.issue("w1");
    assert(b.replaced && !s.verify("w1", a.password) && s.verify("w1", b.password));
    const again = await CredentialStore.open(dir);
    assert(again.verify("w1", b.password));
    assert(await again.revoke("w1") && !(await again.revoke("w1")));
    assert(!(await CredentialStore.open(dir)).verify("w1", b.password));
    const bad = await s.issue("a/b").then(() => "", (e: Error) => e.message);
    assertMatch(bad, /bad worker id/);
    const t1 = await loadOrCreateApiToken(dir);
    const t2 = await loadOrCreateApiToken(dir);
    assert(t1.created && !t2.created && t1.token === t2.token);
    assertEquals((await Deno.stat(t1.path)).mode! & 0o777, 0o600);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node credential: netcfg keys, default file in StateDir, explicit file must exist, both keys needed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const base = { MqttUsername: "", MqttPassword: "", MqttCredentialFile: "", StateDir: dir };
    assertEquals(await loadMqttCredential(base), undefined);
    assertEquals(
      (await loadMqttCredential({ ...base, MqttUsername: "w1", MqttPassword: "p" }))?.source,
      "netcfg",
    );
    assertMatch(
      await loadMqttCredential({ ...base, MqttUsername: "w1" }).then(() => "", (e: Error) => e.message),
      /together/,
    );
    await Deno.writeTextFile(`${dir}/mqtt-credential.json`, '{"username":"w1","password":"pw"}', {
      mode: 0o600,
    });
    assertEquals((await loadMqttCredential(base))?.password, "pw");
    assertMatch(
      await loadMqttCredential({ ...base, MqttCredentialFile: `${dir}/nope.json` }).then(
        () => "",
        (e: Error) => e.message,
      ),
      /cannot read/,
    );
    await Deno.writeTextFile(`${dir}/bad.json`, '{"user":"w1"}', { mode: 0o600 });
    assertMatch(
      await loadMqttCredential({ ...base, MqttCredentialFile: `${dir}/bad.json` }).then(
        () => "",
        (e: Error) => e.message,
      ),
      /must hold/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("auth store on a shared backend: a replica's file is imported once; issue/verify/revoke go through it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nm-auth-shared-" });
  try {
    const file = await CredentialStore.open(dir);
    const old = await file.issue("w1");
    const records = new Map<string, CredentialRecord>();
    const backend: CredentialBackend = {
      location: "memory",
      get: (w) => records.get(w),
      workers: () => [...records.keys()],
      put: (w, r) => Promise.resolve(void records.set(w, r)),
      delete: (w) => Promise.resolve(void records.delete(w)),
    };
    // Another replica already issued w2: kept; w1 comes from this replica's file.
    records.set("w2", { sha256: "0".repeat(64), created: "x" });
    const a = await CredentialStore.shared(backend, dir);
    assertEquals(a.workers(), ["w1", "w2"]);
    assert(a.verify("w1", old.password), "the file's credential is accepted");
    // A second replica on the same backend sees what the first issues and revokes.
    const b = await CredentialStore.shared(backend);
    const c = await a.issue("w3");
    assert(b.verify("w3", c.password));
    assert(!b.verify("w3", c.password + "x"));
    assert(await b.revoke("w3"));
    assert(!a.verify("w3", c.password) && !a.has("w3"));
    assertEquals(await a.revoke("w3"), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
