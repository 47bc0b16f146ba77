/**
 * A single etcd member on loopback for the tests of the replicated control plane. The member runs on free ports with its data in a directory the test owns.
 *
 * @example
 * ```ts
 * import { hasEtcd, startEtcd } from "./etcd.ts";
 * if (hasEtcd()) {
 *   const dir = await Deno.makeTempDir();
 *   const etcd = await startEtcd(dir);
 *   console.log(etcd.url); // http://127.0.0.1:<port>
 *   await etcd.stop();
 * }
 * ```
 */
import { freePort } from "./netns.ts";

/** True when an `etcd` binary runs (`etcd --version`). */
export function hasEtcd(): boolean {
  try {
    return new Deno.Command("etcd", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

/** Starts one etcd member on loopback (free ports, data in `dir`/etcd); resolves once it is healthy. */
export async function startEtcd(
  dir: string,
  ms = 20000,
): Promise<{ url: string; stop: () => Promise<void> }> {
  const [client, peer] = [freePort(), freePort()];
  const url = `http://127.0.0.1:${client}`;
  const child = new Deno.Command("etcd", {
    args: [
      "--name=t",
      `--data-dir=${dir}/etcd`,
      `--listen-client-urls=${url}`,
      `--advertise-client-urls=${url}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=t=http://127.0.0.1:${peer}`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      Deno.kill(child.pid, "SIGTERM");
    } catch { /* already gone */ }
    await child.status;
  };
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await fetch(`${url}/health`).then((r) => r.json(), () => ({})).catch(() => ({}));
    if ((ok as { health?: string }).health === "true") return { url, stop };
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error("etcd did not start");
}

const ROOT = new URL("../../", import.meta.url).pathname;

/**
 * The command line of a control-plane replica on etcd: `netmanager control` with its state in
 * `stateDir`, the etcd `endpoints`, `cluster` name, MQTT on 127.0.0.1:`mqttPort` (anonymous clients
 * allowed unless `anonymous` is false), the API on `httpPort`, then `extra`.
 */
export function replicaArgv(o: {
  stateDir: string;
  endpoints: string;
  cluster: string;
  mqttPort: number;
  httpPort: number;
  anonymous?: boolean;
  extra?: string[];
}): string[] {
  return [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    `${ROOT}deno.json`,
    `${ROOT}main.ts`,
    "control",
    "--state-dir",
    o.stateDir,
    "--etcd",
    o.endpoints,
    "--cluster-name",
    o.cluster,
    "--mqtt-host",
    "127.0.0.1",
    "--mqtt-port",
    String(o.mqttPort),
    ...(o.anonymous === false ? [] : ["--mqtt-allow-anonymous"]),
    "--http-port",
    String(o.httpPort),
    ...(o.extra ?? []),
  ];
}
