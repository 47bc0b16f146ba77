/**
 * Builds the table-query result a node receives on `nodes/<id>/net/tablequery/result` (reference
 * §2.3), pure.
 *
 * Choice: only **deployed** instances (namespace IP and host known) are listed. The reference echoes
 * scheduled-but-not-deployed instances without `namespace_ip`/`host_ip`, which every node drops
 * anyway; leaving them out spares nodes a warning per query and changes nothing on the data path.
 *
 * @example
 * ```ts
 * import type { MqttClient } from "mqtt";
 * import type { ClusterState } from "./state.ts";
 * declare const state: ClusterState, client: MqttClient, worker: string;
 * const r = tableQueryResult("10.30.0.0", state.resolve("10.30.0.0"));
 * client.publish(`nodes/${worker}/net/tablequery/result`, JSON.stringify(r), { qos: 1 });
 * ```
 */
import { isDeployed } from "./state.ts";
import type { JobRecord } from "./schemas.ts";

/** A `service_ip[]` element as sent. */
export interface ServiceIpOut {
  IpType: string;
  Address: string;
  Address_v6: string;
}

/** One element of `instance_list` as sent (Oakestra's keys; `host_port` a JSON number). */
export interface InstanceOut {
  instance_number: number;
  instance_ip: string;
  instance_ip_v6: string;
  namespace_ip: string;
  namespace_ip_v6: string;
  host_ip: string;
  host_port: number;
  worker_id: string;
  cluster_id?: string;
  service_ip: ServiceIpOut[];
  /**
   * netmanager addition: the node is behind NAT, so `host_ip`/`host_port` carry the endpoint the
   * reflector observed (what every peer, an Oakestra Go node too, must dial) and these the one the
   * node announced. Absent otherwise.
   */
  announced_host_ip?: string;
  announced_host_port?: number;
}

/** The whole result. */
export interface TableQueryResult {
  app_name: string;
  query_key: string;
  instance_list: InstanceOut[];
}

/**
 * The result for `queryKey` (echoed as asked, so the node can match its pending query) and the
 * resolved job; an unresolved key gives `app_name: ""` and an empty list. Each instance's
 * `service_ip` is the job's service IP list (RR first) plus its own `instance_ip` entry.
 */
export function tableQueryResult(
  queryKey: string,
  job: JobRecord | undefined,
  observedOf?: (worker: string) => { ip: string; port: number } | undefined,
): TableQueryResult {
  if (!job) return { app_name: "", query_key: queryKey, instance_list: [] };
  const instance_list: InstanceOut[] = [];
  for (const i of job.instance_list) {
    if (!isDeployed(i)) continue;
    // Behind NAT (the reflector saw another endpoint than the node announced): peers dial the observed one.
    const seen = i.worker_id ? observedOf?.(i.worker_id) : undefined;
    const nat = seen !== undefined && (seen.ip !== i.host_ip || seen.port !== i.host_port);
    instance_list.push({
      instance_number: i.instance_number,
      instance_ip: i.instance_ip,
      instance_ip_v6: i.instance_ip_v6,
      namespace_ip: i.namespace_ip!,
      namespace_ip_v6: i.namespace_ip_v6 ?? "",
      host_ip: nat ? seen.ip : i.host_ip!,
      host_port: nat ? seen.port : i.host_port!,
      worker_id: i.worker_id ?? "",
      ...(i.cluster_id ? { cluster_id: i.cluster_id } : {}),
      service_ip: [
        ...job.service_ip_list.map((s) => ({
          IpType: s.IpType,
          Address: s.Address,
          Address_v6: s.Address_v6,
        })),
        { IpType: "instance_ip", Address: i.instance_ip, Address_v6: i.instance_ip_v6 },
      ],
      ...(nat ? { announced_host_ip: i.host_ip!, announced_host_port: i.host_port! } : {}),
    });
  }
  return { app_name: job.job_name, query_key: queryKey, instance_list };
}
