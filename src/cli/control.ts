/**
 * `netmanager control`: runs the control plane of a standalone cluster (embedded MQTT broker or an
 * external one, HTTP API, state that survives restarts), and its client subcommands
 * (`service add|rm|ls`, `instance add|rm`, `node ls|rm`) that call the HTTP API.
 *
 * @example
 * ```sh
 * netmanager control --state-dir /var/lib/netmanager/control &
 * netmanager control service add shop.prod.web.v1 --rr-ip 10.30.5.5
 * netmanager control instance add shop.prod.web.v1 0
 * netmanager control service ls
 * ```
 */
import { startControlMetrics } from "../cluster/metrics.ts";
import { Command } from "@commander-js/extra-typings";
import {
  ControlClient,
  DEFAULT_API_URL,
  DEFAULT_HTTP_PORT,
  DEFAULT_MQTT_PORT,
  DEFAULT_STATE_DIR,
  isDeployed,
  startControl,
} from "../cluster/mod.ts";
import { type LogLevel, setLogFormat, setLogLevel } from "../log.ts";
import { fail, UsageError } from "./common.ts";
import { columns } from "./inspect.ts";

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

async function runService(opts: {
  stateDir: string;
  mqttHost: string;
  mqttPort: string;
  broker?: string;
  httpHost: string;
  httpPort: string;
  logLevel: string;
  metricsAddr?: string;
  logFormat: string;
}): Promise<void> {
  if (opts.logFormat !== "text" && opts.logFormat !== "json") {
    throw new UsageError(`invalid --log-format "${opts.logFormat}" (text | json)`);
  }
  setLogFormat(opts.logFormat);
  if (!["debug", "info", "warn", "error"].includes(opts.logLevel)) {
    throw new Error(`invalid --log-level "${opts.logLevel}"`);
  }
  setLogLevel(opts.logLevel as LogLevel);
  const c = await startControl({
    stateDir: opts.stateDir,
    mqttHost: opts.mqttHost,
    mqttPort: portOf("--mqtt-port", opts.mqttPort),
    ...(opts.broker !== undefined ? { broker: opts.broker } : {}),
    httpHost: opts.httpHost,
    httpPort: portOf("--http-port", opts.httpPort),
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

const apiOption = ["--api <url>", "control API URL", DEFAULT_API_URL] as const;

function serviceCmd() {
  const add = new Command("add")
    .description("register a service (job) and give it RR IPs")
    .argument("<job>", "job name app.appns.service.servicens")
    .option("--rr-ip <ip>", "RR IPv4 (10.30.x.y) instead of the next free one")
    .option("--rr-ip6 <ip>", "RR IPv6 (fdff:2000::/21) instead of the next free one")
    .option("--id <id>", "job id (default: generated, 24 hex digits)")
    .option(...apiOption)
    .action(async (job, opts) => {
      try {
        const j = await new ControlClient(opts.api).addService(job, {
          ...(opts.id !== undefined ? { id: opts.id } : {}),
          ...(opts.rrIp !== undefined ? { rrIp: opts.rrIp } : {}),
          ...(opts.rrIp6 !== undefined ? { rrIp6: opts.rrIp6 } : {}),
        });
        console.log(
          `${j.created ? "added" : "exists"}: ${j.job_name} id ${j._id} RR ${j.RR_ip} ${j.RR_ip_v6}`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const rm = new Command("rm")
    .description("remove a service (refused while it has instances, unless --force)")
    .argument("<ref>", "job id or job name")
    .option("--force", "also remove its instances")
    .option(...apiOption)
    .action(async (ref, opts) => {
      try {
        const j = await new ControlClient(opts.api).removeService(ref, opts.force === true);
        console.log(`removed: ${j.job_name} id ${j._id}`);
      } catch (e) {
        fail(e);
      }
    });
  const ls = new Command("ls")
    .description("list services with their RR IPs and instances")
    .option("--json", "print JSON")
    .option(...apiOption)
    .action(async (opts) => {
      try {
        const jobs = await new ControlClient(opts.api).services();
        if (opts.json) {
          console.log(JSON.stringify(jobs, null, 2));
          return;
        }
        const rows = jobs.map((j) => [
          j._id,
          j.job_name,
          j.RR_ip,
          j.RR_ip_v6,
          `${j.instance_list.filter(isDeployed).length}/${j.instance_list.length}`,
          j.interested_nodes.join(",") || "-",
        ]);
        console.log(columns(["ID", "JOB", "RR", "RR6", "DEPLOYED", "INTERESTED"], rows));
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
  const add = new Command("add")
    .description("add instance <n> of a service and give it Instance IPs")
    .argument("<ref>", "job id or job name")
    .argument("<n>", "instance number")
    .option("--cluster-id <id>", "cluster id to record")
    .option(...apiOption)
    .action(async (ref, n, opts) => {
      try {
        const i = await new ControlClient(opts.api).addInstance(ref, instanceNumberOf(n), opts.clusterId);
        console.log(
          `${
            i.created ? "added" : "exists"
          }: ${i.job_name}#${i.instance_number} ${i.instance_ip} ${i.instance_ip_v6}`,
        );
      } catch (e) {
        fail(e);
      }
    });
  const rm = new Command("rm")
    .description("remove instance <n> of a service (-1: all) and release its IPs")
    .argument("<ref>", "job id or job name")
    .argument("<n>", "instance number, -1 for all")
    .option(...apiOption)
    .action(async (ref, n, opts) => {
      try {
        const r = await new ControlClient(opts.api).removeInstance(ref, instanceNumberOf(n, true));
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
  const ls = new Command("ls")
    .description("list registered nodes and their subnets")
    .option("--json", "print JSON")
    .option(...apiOption)
    .action(async (opts) => {
      try {
        const api = new ControlClient(opts.api);
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
        ]);
        console.log(columns(["WORKER", "SUBNET", "SUBNET6", "INSTANCES"], rows));
      } catch (e) {
        fail(e);
      }
    });
  const rm = new Command("rm")
    .description("deregister a node: release its subnet, mark its instances undeployed")
    .argument("<worker>", "worker id")
    .option(...apiOption)
    .action(async (worker, opts) => {
      try {
        const r = await new ControlClient(opts.api).removeNode(worker);
        console.log(
          `removed: ${r.worker_id} ${r.subnet}/26 ${r.subnet_v6}/120; ${r.cleared.length} instance(s) marked undeployed`,
        );
      } catch (e) {
        fail(e);
      }
    });
  return new Command("node").description("manage nodes").addCommand(ls).addCommand(rm);
}

/**
 * `netmanager control`: without a subcommand, runs the control service until SIGTERM/SIGINT.
 *
 * @example
 * ```ts
 * program.addCommand(controlCmd());
 * ```
 */
export function controlCmd() {
  return new Command("control")
    .description("run the cluster control plane (MQTT broker, allocation, table queries, HTTP API)")
    .option("--state-dir <dir>", "state directory", DEFAULT_STATE_DIR)
    .option("--mqtt-host <host>", "embedded broker bind address", "0.0.0.0")
    .option("--mqtt-port <port>", "embedded broker port", String(DEFAULT_MQTT_PORT))
    .option("--broker <url>", "use this external MQTT broker (mqtt://host:port) instead of the embedded one")
    .option("--http-host <host>", "HTTP API bind address", "127.0.0.1")
    .option("--http-port <port>", "HTTP API port", String(DEFAULT_HTTP_PORT))
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
    .addCommand(serviceCmd())
    .addCommand(instanceCmd())
    .addCommand(nodeCmd());
}
