/**
 * `netmanager control`: runs the control plane of a standalone cluster (embedded MQTT broker or an
 * external one, HTTP API, state that survives restarts), and its client subcommands
 * (`service add|rm|ls`, `instance add|rm`, `node add|revoke|ls|rm`, `web-url`) that call the HTTP API with the
 * bearer token of the state dir (or `--token-file`, or `NETMANAGER_CONTROL_TOKEN`).
 *
 * @example
 * ```sh
 * netmanager control --state-dir /var/lib/netmanager/control &
 * netmanager control node add worker1 --out worker1-mqtt-credential.json
 * netmanager control service add shop.prod.web.v1 --rr-ip 10.30.5.5
 * netmanager control instance add shop.prod.web.v1 0
 * netmanager control service ls
 * ```
 */
import { startControlMetrics } from "../cluster/metrics.ts";
import { Command } from "@commander-js/extra-typings";
import {
  API_TOKEN_FILE_NAME,
  ControlClient,
  DEFAULT_API_URL,
  DEFAULT_HTTP_PORT,
  DEFAULT_MQTT_PORT,
  DEFAULT_STATE_DIR,
  isDeployed,
  migrateToEtcd,
  readApiToken,
  readEmbeddedState,
  startControl,
  webUrl,
  writeAtomic,
} from "../cluster/mod.ts";
import { type LogLevel, setLogFormat, setLogLevel } from "../log.ts";
import { fail, UsageError } from "./common.ts";
import { columns } from "./inspect.ts";
import { REFLECTOR_PORT } from "../path/reflect.ts";
import { tryParseIPv4 } from "../addr/mod.ts";

function portOf(name: string, text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535) {
    throw new Error(`${name} "${text}" is not a port (0..65535)`);
  }
  return Number(text);
}

function instanceNumberOf(text: string, allowAll = false): number {
  if (!/^-?[0-9]{1,10}$/.test(text)) throw new Error(`instance number "${text}" is not an integer`);
  const n = Number(text);
  if (n < (allowAll ? -1 : 0) || n > 0x7fffffff) {
    throw new Error(`instance number ${n} out of range ${allowAll ? "-1 (all)" : "0"}..2147483647`);
  }
  return n;
}

/** `--relay` options: the address nodes dial (given, or --mqtt-host when an IPv4 address) and the rate. */
function relayOf(
  opts: { relayAddress?: string; mqttHost: string; relayMbit?: string },
): { address: string; mbitPerNode: number } {
  const address = opts.relayAddress ?? opts.mqttHost;
  if (tryParseIPv4(address) === undefined || address === "0.0.0.0") {
    throw new UsageError(
      `--relay needs --relay-address IP (the IPv4 address nodes reach this host at); got "${address}"`,
    );
  }
  const mbit = Number(opts.relayMbit ?? "1000");
  if (!Number.isFinite(mbit) || mbit < 1 || mbit > 100_000) {
    throw new UsageError(`--relay-mbit "${opts.relayMbit}" is not a rate 1..100000`);
  }
  return { address, mbitPerNode: mbit };
}

function pair(a: string | undefined, b: string | undefined, names: string): [string, string] | undefined {
  if ((a === undefined) !== (b === undefined)) throw new Error(`give both ${names}`);
  return a !== undefined && b !== undefined ? [a, b] : undefined;
}

async function runService(opts: {
  stateDir: string;
  mqttHost: string;
  mqttPort: string;
  mqttAllowAnonymous?: true;
  mqttTlsCert?: string;
  mqttTlsKey?: string;
  mqttClientCa?: string;
  broker?: string;
  brokerUsername?: string;
  brokerPasswordFile?: string;
  brokerCa?: string;
  httpHost: string;
  httpPort: string;
  reflectorPort?: string;
  relay?: true;
  relayAddress?: string;
  relayMbit?: string;
  httpTlsCert?: string;
  httpTlsKey?: string;
  logLevel: string;
  metricsAddr?: string;
  logFormat: string;
  stateSync: string;
  etcd?: string;
  etcdPrefix?: string;
  etcdCacert?: string;
  etcdCert?: string;
  etcdKey?: string;
  clusterName: string;
}): Promise<void> {
  if (opts.logFormat !== "text" && opts.logFormat !== "json") {
    throw new UsageError(`invalid --log-format "${opts.logFormat}" (text | json)`);
  }
  setLogFormat(opts.logFormat);
  if (!["debug", "info", "warn", "error"].includes(opts.logLevel)) {
    throw new Error(`invalid --log-level "${opts.logLevel}"`);
  }
  setLogLevel(opts.logLevel as LogLevel);
  if (opts.stateSync !== "full" && opts.stateSync !== "normal") {
    throw new UsageError(`invalid --state-sync "${opts.stateSync}" (full | normal)`);
  }
  const mqttTls = pair(opts.mqttTlsCert, opts.mqttTlsKey, "--mqtt-tls-cert and --mqtt-tls-key");
  if (opts.mqttClientCa !== undefined && !mqttTls) {
    throw new Error("--mqtt-client-ca needs --mqtt-tls-cert and --mqtt-tls-key");
  }
  const httpTls = pair(opts.httpTlsCert, opts.httpTlsKey, "--http-tls-cert and --http-tls-key");
  let brokerPassword = Deno.env.get("NETMANAGER_BROKER_PASSWORD");
  if (opts.brokerPasswordFile !== undefined) {
    brokerPassword = (await Deno.readTextFile(opts.brokerPasswordFile).catch((e) => {
      throw new Error(`cannot read --broker-password-file ${opts.brokerPasswordFile}: ${e.message}`);
    })).trim();
  }
  if (opts.brokerUsername !== undefined && brokerPassword === undefined) {
    throw new Error("--broker-username needs --broker-password-file or NETMANAGER_BROKER_PASSWORD");
  }
  const c = await startControl({
    stateDir: opts.stateDir,
    stateSync: opts.stateSync,
    ...(opts.etcd !== undefined ? { etcd: etcdOf(opts.etcd, opts.clusterName, opts.etcdPrefix, opts) } : {}),
    mqttHost: opts.mqttHost,
    mqttPort: portOf("--mqtt-port", opts.mqttPort),
    allowAnonymous: opts.mqttAllowAnonymous === true,
    ...(mqttTls
      ? {
        mqttTls: {
          cert: mqttTls[0],
          key: mqttTls[1],
          ...(opts.mqttClientCa !== undefined ? { clientCa: opts.mqttClientCa } : {}),
        },
      }
      : {}),
    ...(opts.broker !== undefined ? { broker: opts.broker } : {}),
    ...(opts.brokerUsername !== undefined && brokerPassword !== undefined
      ? { brokerCredentials: { username: opts.brokerUsername, password: brokerPassword } }
      : {}),
    ...(opts.brokerCa !== undefined ? { brokerCa: opts.brokerCa } : {}),
    httpHost: opts.httpHost,
    httpPort: portOf("--http-port", opts.httpPort),
    // Not given: the default port, optional (another control plane on this host may hold it).
    ...(opts.reflectorPort === undefined
      ? { reflectorPort: REFLECTOR_PORT, reflectorOptional: true }
      : opts.reflectorPort !== "0"
      ? { reflectorPort: portOf("--reflector-port", opts.reflectorPort) }
      : {}),
    ...(httpTls ? { httpTls: { cert: httpTls[0], key: httpTls[1] } } : {}),
    ...(opts.relay ? { relay: relayOf(opts) } : {}),
  });
  let metrics;
  try {
    metrics = opts.metricsAddr ? await startControlMetrics(c, opts.metricsAddr) : undefined;
  } catch (e) {
    await c.stop();
    throw e;
  }
  await new Promise<void>((resolve) => {
    const stop = () => {
      Deno.removeSignalListener("SIGTERM", stop);
      Deno.removeSignalListener("SIGINT", stop);
      resolve();
    };
    Deno.addSignalListener("SIGTERM", stop);
    Deno.addSignalListener("SIGINT", stop);
  });
  await metrics?.close();
  await c.stop();
}

function etcdOf(
  urls: string,
  cluster: string,
  prefix: string | undefined,
  tls: { etcdCacert?: string; etcdCert?: string; etcdKey?: string },
) {
  const endpoints = urls.split(",").map((u) => u.trim()).filter((u) => u !== "");
  if (endpoints.length === 0) throw new UsageError(`--etcd "${urls}" names no endpoint`);
  if ((tls.etcdCert === undefined) !== (tls.etcdKey === undefined)) {
    throw new UsageError("--etcd-cert and --etcd-key go together");
  }
  const t = {
    ...(tls.etcdCacert !== undefined ? { ca: tls.etcdCacert } : {}),
    ...(tls.etcdCert !== undefined ? { cert: tls.etcdCert } : {}),
    ...(tls.etcdKey !== undefined ? { key: tls.etcdKey } : {}),
  };
  return {
    endpoints,
    cluster,
    ...(prefix !== undefined ? { prefix } : {}),
    ...(Object.keys(t).length ? { tls: t } : {}),
  };
}

/** Reads the PEM files of etcd TLS options (migrate's client; the service reads its own). */
async function etcdTlsPem(t: { ca?: string; cert?: string; key?: string } | undefined) {
  if (!t) return undefined;
  const read = (what: string, path: string) =>
    Deno.readTextFile(path).catch((e) => {
      throw new Error(`cannot read ${what} ${path}: ${e.message}`);
    });
  return {
    ...(t.ca !== undefined ? { ca: await read("--etcd-cacert", t.ca) } : {}),
    ...(t.cert !== undefined ? { cert: await read("--etcd-cert", t.cert) } : {}),
    ...(t.key !== undefined ? { key: await read("--etcd-key", t.key) } : {}),
  };
}

const ETCD_TLS_HELP = {
  cacert: "CA file of the etcd members' certificates (https:// endpoints; default: the system's CAs)",
  cert: "client certificate file for etcd members started with --client-cert-auth",
  key: "key file of --etcd-cert",
};

function migrateCmd() {
  return new Command("migrate")
    .description(
      "copy an embedded control state (state dir) into etcd for replicas; running it again changes nothing",
    )
    .requiredOption("--from <state-dir>", "embedded state directory (control-state.db or control-state.json)")
    .requiredOption("--to <urls>", "etcd endpoints, comma-separated (http://host:2379,…)")
    .option("--etcd-prefix <prefix>", "key prefix (default /netmanager/<cluster-name>/)")
    .option("--cluster-name <name>", "the cluster's name, recorded under the prefix", "default")
    .option("--etcd-cacert <file>", ETCD_TLS_HELP.cacert)
    .option("--etcd-cert <file>", ETCD_TLS_HELP.cert)
    .option("--etcd-key <file>", ETCD_TLS_HELP.key)
    .action(async (opts) => {
      try {
        const file = await readEmbeddedState(opts.from);
        const target = etcdOf(opts.to, opts.clusterName, opts.etcdPrefix, opts);
        const tls = await etcdTlsPem(target.tls);
        const r = await migrateToEtcd(file, { ...target, ...(tls ? { tls } : {}) });
        console.log(
          `migrated: ${file.jobs.length} service(s), ${file.nodes.length} node(s): ${r.written} row(s) written, ` +
            `${r.present} already there`,
        );
      } catch (e) {
        fail(e);
      }
    });
}

const apiOption = ["--api <url>", "control API URL", DEFAULT_API_URL] as const;
const stateDirOption = [
  "--state-dir <dir>",
  `control state dir whose ${API_TOKEN_FILE_NAME} file holds the API token`,
  DEFAULT_STATE_DIR,
] as const;
const tokenFileOption = [
  "--token-file <file>",
  "file with the API token (default: NETMANAGER_CONTROL_TOKEN, else <state-dir>/api-token)",
] as const;
const apiCaOption = ["--api-ca <file>", "CA certificate (PEM) of an https API"] as const;

/** A `control` subcommand that talks to the API: `--api`, `--state-dir`, `--token-file`, `--api-ca`. */
function apiCommand(name: string) {
  return new Command(name)
    .option(...apiOption)
    .option(...stateDirOption)
    .option(...tokenFileOption)
    .option(...apiCaOption);
}

/** The API token: from --token-file, the environment or the state dir. */
async function tokenOf(opts: { stateDir: string; tokenFile?: string }): Promise<string> {
  const env = Deno.env.get("NETMANAGER_CONTROL_TOKEN");
  return opts.tokenFile !== undefined
    ? await readApiToken(opts.tokenFile)
    : env !== undefined && env !== ""
    ? env
    : await readApiToken(`${opts.stateDir.replace(/\/+$/, "")}/${API_TOKEN_FILE_NAME}`);
}

/** The API client for a subcommand: token from --token-file, the environment or the state dir. */
async function apiOf(opts: { api: string; stateDir: string; tokenFile?: string; apiCa?: string }) {
  const token = await tokenOf(opts);
  let caCert: string | undefined;
  if (opts.apiCa !== undefined) {
    caCert = await Deno.readTextFile(opts.apiCa).catch((e) => {
      throw new Error(`cannot read --api-ca ${opts.apiCa}: ${e.message}`);
    });
  }
  return new ControlClient(opts.api, { token, ...(caCert !== undefined ? { caCert } : {}) });
}

function serviceCmd() {
  const add = apiCommand("add")
    .description("register a service (job) and give it RR IPs and Closest ServiceIPs")
    .argument("<job>", "job name app.appns.service.servicens")
    .option("--rr-ip <ip>", "RR IPv4 (10.30.x.y) instead of the next free one")
    .option("--rr-ip6 <ip>", "RR IPv6 (fdff:2000::/21) instead of the next free one")
    .option("--closest-ip <ip>", "Closest IPv4 (10.30.x.y) instead of the next free one")
    .option("--closest-ip6 <ip>", "Closest IPv6 (fdff:1000::/21) instead of the next free one")
    .option("--no-closest", "no Closest ServiceIP (an existing one is released)")
    .option("--id <id>", "job id (default: generated, 24 hex digits)")
    .action(async (job, opts) => {
      try {
        const j = await (await apiOf(opts)).addService(job, {
          ...(opts.id !== undefined ? { id: opts.id } : {}),
          ...(opts.rrIp !== undefined ? { rrIp: opts.rrIp } : {}),
          ...(opts.rrIp6 !== undefined ? { rrIp6: opts.rrIp6 } : {}),
          ...(opts.closestIp !== undefined ? { closestIp: opts.closestIp } : {}),
          ...(opts.closestIp6 !== undefined ? { closestIp6: opts.closestIp6 } : {}),
          ...(opts.closest === false ? { closest: false } : {}),
        });
        const closest = j.Closest_ip ? `Closest ${j.Closest_ip} ${j.Closest_ip_v6}` : "no Closest";
        console.log(
          `${
            j.created ? "added" : "exists"
          }: ${j.job_name} id ${j._id} RR ${j.RR_ip} ${j.RR_ip_v6} ${closest}`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const rm = apiCommand("rm")
    .description("remove a service (refused while it has instances, unless --force)")
    .argument("<ref>", "job id or job name")
    .option("--force", "also remove its instances")
    .action(async (ref, opts) => {
      try {
        const j = await (await apiOf(opts)).removeService(ref, opts.force === true);
        console.log(`removed: ${j.job_name} id ${j._id}`);
      } catch (e) {
        fail(e);
      }
    });
  const ls = apiCommand("ls")
    .description("list services with their RR and Closest IPs and instances")
    .option("--json", "print JSON")
    .action(async (opts) => {
      try {
        const jobs = await (await apiOf(opts)).services();
        if (opts.json) {
          console.log(JSON.stringify(jobs, null, 2));
          return;
        }
        const rows = jobs.map((j) => [
          j._id,
          j.job_name,
          j.RR_ip,
          j.RR_ip_v6,
          j.Closest_ip || "-",
          j.Closest_ip_v6 || "-",
          `${j.instance_list.filter(isDeployed).length}/${j.instance_list.length}`,
          j.interested_nodes.join(",") || "-",
        ]);
        console.log(
          columns(["ID", "JOB", "RR", "RR6", "CLOSEST", "CLOSEST6", "DEPLOYED", "INTERESTED"], rows),
        );
        for (const j of jobs) {
          for (const i of j.instance_list) {
            const where = isDeployed(i)
              ? `${i.namespace_ip} on ${i.worker_id} (${i.host_ip}:${i.host_port})`
              : "not deployed";
            console.log(
              `  ${j.job_name}#${i.instance_number}  ${i.instance_ip}  ${i.instance_ip_v6}  ${where}`,
            );
          }
        }
      } catch (e) {
        fail(e);
      }
    });
  return new Command("service").description("manage services (jobs)").addCommand(add).addCommand(rm)
    .addCommand(ls);
}

function instanceCmd() {
  const add = apiCommand("add")
    .description("add instance <n> of a service and give it Instance IPs")
    .argument("<ref>", "job id or job name")
    .argument("<n>", "instance number")
    .option("--cluster-id <id>", "cluster id to record")
    .action(async (ref, n, opts) => {
      try {
        const i = await (await apiOf(opts)).addInstance(ref, instanceNumberOf(n), opts.clusterId);
        console.log(
          `${
            i.created ? "added" : "exists"
          }: ${i.job_name}#${i.instance_number} ${i.instance_ip} ${i.instance_ip_v6}`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const rm = apiCommand("rm")
    .description("remove instance <n> of a service (-1: all) and release its IPs")
    .argument("<ref>", "job id or job name")
    .argument("<n>", "instance number, -1 for all")
    .action(async (ref, n, opts) => {
      try {
        const r = await (await apiOf(opts)).removeInstance(ref, instanceNumberOf(n, true));
        console.log(
          `removed: ${r.job_name} instance(s) ${r.removed.map((i) => i.instance_number).join(",") || "none"}`,
        );
      } catch (e) {
        fail(e);
      }
    });
  return new Command("instance").description("manage instances").addCommand(add).addCommand(rm);
}

function nodeCmd() {
  const ls = apiCommand("ls")
    .description("list registered nodes and their subnets")
    .option("--json", "print JSON")
    .action(async (opts) => {
      try {
        const api = await apiOf(opts);
        const [nodes, jobs] = await Promise.all([api.nodes(), api.services()]);
        if (opts.json) {
          console.log(JSON.stringify(nodes, null, 2));
          return;
        }
        const rows = nodes.map((n) => [
          n.worker_id,
          `${n.subnet}/26`,
          `${n.subnet_v6}/120`,
          String(
            jobs.reduce((k, j) => k + j.instance_list.filter((i) => i.worker_id === n.worker_id).length, 0),
          ),
          // The tunnel endpoint the reflector saw (src/path/reflector.ts), "-" before the first request.
          (n as { tunnel_observed?: string }).tunnel_observed ?? "-",
        ]);
        console.log(columns(["WORKER", "SUBNET", "SUBNET6", "INSTANCES", "OBSERVED"], rows));
      } catch (e) {
        fail(e);
      }
    });
  const rm = apiCommand("rm")
    .description("deregister a node: release its subnet, mark its instances undeployed")
    .argument("<worker>", "worker id")
    .action(async (worker, opts) => {
      try {
        const r = await (await apiOf(opts)).removeNode(worker);
        console.log(
          `removed: ${r.worker_id} ${r.subnet}/26 ${r.subnet_v6}/120; ${r.cleared.length} instance(s) marked undeployed`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const add = apiCommand("add")
    .description(
      "create (or replace) the MQTT credential of a node; prints it once as JSON, or writes it (0600) " +
        "with --out: install it as <StateDir>/mqtt-credential.json on the node",
    )
    .argument("<worker>", "worker id (the node's MQTT client id)")
    .option("--out <file>", "write the credential to this file (mode 0600) instead of stdout")
    .action(async (worker, opts) => {
      try {
        const c = await (await apiOf(opts)).issueCredential(worker);
        const text = JSON.stringify({ username: c.username, password: c.password }) + "\n";
        if (opts.out === undefined) {
          Deno.stdout.writeSync(new TextEncoder().encode(text));
          return;
        }
        await writeAtomic(opts.out, text);
        console.log(
          `${
            c.replaced ? "replaced" : "created"
          }: MQTT credential of ${c.worker_id} written to ${opts.out} (0600)`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const revoke = apiCommand("revoke")
    .description("delete the MQTT credential of a node and close its connections")
    .argument("<worker>", "worker id")
    .action(async (worker, opts) => {
      try {
        const r = await (await apiOf(opts)).revokeCredential(worker);
        console.log(`revoked: MQTT credential of ${r.worker_id}`);
      } catch (e) {
        fail(e);
      }
    });
  return new Command("node").description("manage nodes and their MQTT credentials").addCommand(add)
    .addCommand(revoke).addCommand(ls).addCommand(rm);
}

/** `control web-url`: the cluster page's URL with the API token in its fragment (never sent to the server). */
function webUrlCmd() {
  return new Command("web-url")
    .description("print the URL of the cluster web page, with the API token in its # part (keep it secret)")
    .option(...apiOption)
    .option(...stateDirOption)
    .option(...tokenFileOption)
    .action(async (opts) => {
      try {
        console.log(webUrl(opts.api, await tokenOf(opts)));
      } catch (e) {
        fail(e);
      }
    });
}

/**
 * `netmanager control`: without a subcommand, runs the control service until SIGTERM/SIGINT.
 *
 * @example
 * ```ts
 * import { Command } from "@commander-js/extra-typings";
 * const program = new Command("netmanager").enablePositionalOptions().addCommand(controlCmd());
 * await program.parseAsync(["control", "--help"], { from: "user" });
 * ```
 */
export function controlCmd() {
  return new Command("control")
    // `control node ls --state-dir X` must reach the subcommand, not the service's own --state-dir
    .enablePositionalOptions()
    .description("run the cluster control plane (MQTT broker, allocation, table queries, HTTP API)")
    .option("--state-dir <dir>", "state directory", DEFAULT_STATE_DIR)
    .option(
      "--etcd <urls>",
      "replicated mode: keep the state in etcd (comma-separated http://host:2379 endpoints); any number of replicas",
    )
    .option("--etcd-prefix <prefix>", "etcd key prefix of this cluster (default /netmanager/<cluster-name>/)")
    .option("--etcd-cacert <file>", ETCD_TLS_HELP.cacert)
    .option("--etcd-cert <file>", ETCD_TLS_HELP.cert)
    .option("--etcd-key <file>", ETCD_TLS_HELP.key)
    .option(
      "--cluster-name <name>",
      "replicated mode: the cluster's name; a prefix of another cluster is refused",
      "default",
    )
    .option(
      "--state-sync <mode>",
      "full: every change is on disk before it is answered | normal: faster, may lose the last changes on power loss",
      "full",
    )
    .option("--mqtt-host <host>", "embedded broker bind address", "0.0.0.0")
    .option("--mqtt-port <port>", "embedded broker port", String(DEFAULT_MQTT_PORT))
    .option(
      "--mqtt-allow-anonymous",
      "LABS ONLY: the embedded broker accepts anyone and applies no ACL (any client can redirect traffic)",
    )
    .option("--mqtt-tls-cert <file>", "embedded broker: TLS certificate (PEM); the listener speaks TLS only")
    .option("--mqtt-tls-key <file>", "embedded broker: TLS private key (PEM)")
    .option(
      "--mqtt-client-ca <file>",
      "embedded broker: CA of node client certificates; a verified certificate's CN is the worker id",
    )
    .option("--broker <url>", "use this external MQTT broker (mqtt://host:port) instead of the embedded one")
    .option("--broker-username <name>", "external broker: the control plane's username")
    .option(
      "--broker-password-file <file>",
      "external broker: file with the control plane's password (or NETMANAGER_BROKER_PASSWORD)",
    )
    .option("--broker-ca <file>", "external broker: CA of its certificate (mqtts://)")
    .option("--http-host <host>", "HTTP API bind address (not loopback: needs --http-tls-*)", "127.0.0.1")
    .option("--http-port <port>", "HTTP API port", String(DEFAULT_HTTP_PORT))
    .option("--http-tls-cert <file>", "HTTP API: TLS certificate (PEM)")
    .option("--http-tls-key <file>", "HTTP API: TLS private key (PEM)")
    .option(
      "--reflector-port <port>",
      `UDP port of the endpoint reflector nodes learn their public ip:port from (default ${REFLECTOR_PORT}, ` +
        "where a port in use only warns; 0 = off)",
    )
    .option("--relay", "relay traffic between nodes whose hole punching failed (needs --relay-address)")
    .option(
      "--relay-address <ip>",
      "the relay's address as nodes reach it (default: --mqtt-host when an IPv4 address)",
    )
    .option("--relay-mbit <n>", "relay: per-node rate limit in Mbit/s", "1000")
    .option("--log-level <level>", "debug | info | warn | error", "info")
    .option("--metrics-addr <host:port>", "serve /metrics and /healthz over TCP (e.g. 127.0.0.1:9465)")
    .option("--log-format <format>", "text | json (one object per line, for log shippers)", "text")
    .action(async (opts) => {
      try {
        await runService(opts);
        Deno.exit(0);
      } catch (e) {
        fail(e);
      }
    })
    .addCommand(webUrlCmd())
    .addCommand(serviceCmd())
    .addCommand(instanceCmd())
    .addCommand(nodeCmd())
    .addCommand(migrateCmd());
}
