/**
 * The replicated control plane toward etcd over TLS with client certificates: an etcd 3.4 member
 * (in a namespace of its own) that requires a client certificate signed by the test CA
 * (`--client-cert-auth`); a replica given `--etcd-cacert/--etcd-cert/--etcd-key` starts and
 * allocates; one without the client certificate, or with one of another CA, is refused by etcd and
 * does not start (a clear error naming etcd).
 */
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, createNs, isRoot, sh } from "../helpers/netns.ts";
import { replicaArgv } from "../helpers/etcd.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

/** A CA, a server certificate for 127.0.0.1, a client certificate; and a client of another CA. */
async function makePki(dir: string): Promise<void> {
  const key = (name: string) => [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${dir}/${name}.key`,
  ];
  for (const ca of ["ca", "otherca"]) {
    await run("openssl", [
      "req",
      "-x509",
      ...key(ca),
      "-out",
      `${dir}/${ca}.crt`,
      "-days",
      "1",
      "-subj",
      `/CN=${ca}`,
    ]);
  }
  const signed = async (name: string, ca: string, ext: string) => {
    await run("openssl", ["req", ...key(name), "-out", `${dir}/${name}.csr`, "-subj", `/CN=${name}`]);
    await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      `${dir}/${name}.csr`,
      "-CA",
      `${dir}/${ca}.crt`,
      "-CAkey",
      `${dir}/${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${dir}/${name}.crt`,
      "-days",
      "1",
      "-extfile",
      `${dir}/${name}.ext`,
    ]);
  };
  await signed("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
  await signed("client", "ca", "extendedKeyUsage=clientAuth\n");
  await signed("rogue", "otherca", "extendedKeyUsage=clientAuth\n");
}

/** Starts `argv` in `ns` (killed after `ms`); `done` has its exit code and output. */
function start(ns: string, argv: string[], ms: number) {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", ns, ...argv],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let log = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) log += t;
  };
  const kill = (sig: Deno.Signal) => {
    try {
      child.kill(sig);
    } catch { /* exited */ }
  };
  const timer = setTimeout(() => kill("SIGKILL"), ms);
  const done = Promise.all([child.status, drain(child.stdout), drain(child.stderr)]).then(([st]) => {
    clearTimeout(timer);
    return { code: st.code, log };
  });
  return { done, stop: () => kill("SIGTERM") };
}

/** curl (inside `ns`) to the etcd member at `path` over TLS with the test CA's client certificate. */
function curlEtcd(ns: string, dir: string, path: string, ...extra: string[]): Promise<string> {
  return sh([
    "ip",
    "netns",
    "exec",
    ns,
    "curl",
    "-s",
    "--cacert",
    `${dir}/ca.crt`,
    "--cert",
    `${dir}/client.crt`,
    "--key",
    `${dir}/client.key`,
    `https://127.0.0.1:2379${path}`,
    ...extra,
  ]);
}

Deno.test({
  name:
    "control on etcd over TLS: client certificates given → starts and allocates; none or foreign → refused",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-etcd-tls-" });
    let etcd: Deno.ChildProcess | undefined;
    try {
      await makePki(dir);
      const ns = await createNs("etls");
      etcd = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          ns,
          "etcd",
          "--name",
          "t0",
          "--data-dir",
          `${dir}/etcd`,
          "--listen-client-urls",
          "https://127.0.0.1:2379",
          "--advertise-client-urls",
          "https://127.0.0.1:2379",
          "--listen-peer-urls",
          "http://127.0.0.1:2380",
          "--initial-advertise-peer-urls",
          "http://127.0.0.1:2380",
          "--initial-cluster",
          "t0=http://127.0.0.1:2380",
          "--cert-file",
          `${dir}/server.crt`,
          "--key-file",
          `${dir}/server.key`,
          "--trusted-ca-file",
          `${dir}/ca.crt`,
          "--client-cert-auth",
        ],
        stdout: "null",
        stderr: "null",
      }).spawn();
      // healthy, through TLS with the client certificate
      const end = Date.now() + 30000;
      for (;;) {
        const ok = await curlEtcd(ns, dir, "/health").catch(() => "");
        if (ok.includes('"true"')) break;
        if (Date.now() > end) throw new Error("etcd over TLS never became healthy");
        await new Promise((r) => setTimeout(r, 200));
      }
      const replica = (name: string, tls: string[]) =>
        replicaArgv({
          stateDir: `${dir}/${name}`,
          endpoints: "https://127.0.0.1:2379",
          cluster: "tls",
          mqttPort: 10003,
          httpPort: 10100,
          extra: tls,
        });
      const ca = ["--etcd-cacert", `${dir}/ca.crt`];
      // With the client certificate: starts, and an allocation is written to etcd.
      const probe = [
        "bash",
        "-c",
        `until [ -s ${dir}/ok/api-token ] && curl -sf -o /dev/null -H "authorization: Bearer $(cat ${dir}/ok/api-token)" ` +
        `127.0.0.1:10100/api/net/nodes; do sleep 0.2; done; ` +
        `curl -s -H "authorization: Bearer $(cat ${dir}/ok/api-token)" -H 'content-type: application/json' ` +
        `-d '{"_id":"j1","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"s","microservice_namespace":"x"}}' ` +
        `127.0.0.1:10100/api/net/service/deploy`,
      ];
      const started = start(
        ns,
        replica("ok", [...ca, "--etcd-cert", `${dir}/client.crt`, "--etcd-key", `${dir}/client.key`]),
        40000,
      );
      const answer = await sh(["ip", "netns", "exec", ns, "timeout", "30", ...probe]);
      assertMatch(answer, /"RR_ip":"10\.30\./);
      const raw = await curlEtcd(
        ns,
        dir,
        "/v3/kv/range",
        "-d",
        JSON.stringify({ key: btoa("/netmanager/tls/rows/job/j1") }),
      );
      assertEquals((JSON.parse(raw) as { kvs?: unknown[] }).kvs?.length, 1, raw);
      started.stop();
      const first = await started.done;
      assertMatch(first.log, /control plane started/);
      // Without a client certificate, and with one of another CA: etcd refuses, the replica stops.
      for (
        const [name, tls] of [["nocert", ca], ["rogue", [
          ...ca,
          "--etcd-cert",
          `${dir}/rogue.crt`,
          "--etcd-key",
          `${dir}/rogue.key`,
        ]]] as const
      ) {
        const r = await start(ns, replica(name, [...tls]), 40000).done;
        assertEquals(r.code, 1, `${name}: ${r.log}`);
        assertMatch(r.log, /cannot use etcd: etcd unavailable \(https:\/\/127\.0\.0\.1:2379/, name);
      }
    } finally {
      try {
        etcd?.kill("SIGKILL");
      } catch { /* exited */ }
      await etcd?.status;
      await cleanupAll();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
