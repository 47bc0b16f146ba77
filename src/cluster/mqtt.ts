/**
 * The node-facing MQTT side of the control plane (reference §2.2): topic parsing and payload
 * validation ({@link parseNodeMessage}, pure) and the handlers ({@link handleNodeMessage}) that
 * apply a message to the state, persist it and publish the replies.
 *
 * Subscribed: `nodes/+/net/#` (QoS 1). Handled suffixes: `subnet`, `tablequery/request`,
 * `service/deployed`, `service/address-changed`, `interest/remove` (`service/undeployed` is a no-op,
 * as in the reference). Everything else below `nodes/+/net/` — including our own
 * `subnetwork/result` and `tablequery/result` publications — is ignored. A malformed payload is
 * logged and ignored; it never changes state and never stops the service.
 *
 * @example
 * ```ts
 * const m = parseNodeMessage("nodes/w1/net/subnet", '{"METHOD":"GET"}'); // { kind: "subnet", worker: "w1" }
 * declare const core: ControlCore;
 * await handleNodeMessage(core, m);
 * ```
 */
import {
  type AddressChanged,
  AddressChangedSchema,
  type DeployedNotice,
  DeployedNoticeSchema,
  InterestRemoveSchema,
  SubnetRequestSchema,
  TableQueryRequestSchema,
  WORKER_ID,
  zodProblems,
} from "./schemas.ts";
import { ClusterError, type ClusterState } from "./state.ts";
import type { ControlStore } from "./store.ts";
import { tableQueryResult } from "./result.ts";
import { logger } from "../log.ts";

const log = logger("control");

/** The topic filter the control plane subscribes to. */
export const NODE_TOPIC_FILTER = "nodes/+/net/#";

/** Topic of the subnet reply to a worker. */
export function subnetResultTopic(worker: string): string {
  return `nodes/${worker}/net/subnetwork/result`;
}

/** Topic of the table-query reply to a worker. */
export function tableQueryResultTopic(worker: string): string {
  return `nodes/${worker}/net/tablequery/result`;
}

/** Topic of the update notice of a job. */
/** How long a table result waits after the punch requests it caused (see the tablequery case). */
export const PUNCH_LEAD_MS = 150;

/** `nodes/<worker>/net/punch`: the control plane asks a node behind NAT to HELLO an endpoint (netmanager addition). */
export function punchTopic(worker: string): string {
  return `nodes/${worker}/net/punch`;
}

function endpointOf(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function updatesTopic(job: string): string {
  return `jobs/${job}/updates_available`;
}

/** A message from a node, validated. */
export type NodeMessage =
  | { kind: "subnet"; worker: string }
  | { kind: "tablequery"; worker: string; key: string }
  | { kind: "deployed"; worker: string; notice: DeployedNotice }
  | { kind: "address-changed"; worker: string; notice: AddressChanged }
  | { kind: "interest-remove"; worker: string; key: string }
  /** Not for us (our own results, unknown suffixes, `service/undeployed`). */
  | { kind: "ignored"; topic: string }
  /** For us, but malformed; `problem` says why. */
  | { kind: "invalid"; topic: string; problem: string };

const TOPIC =
  /^nodes\/([^/]+)\/net\/(subnet|tablequery\/request|service\/deployed|service\/address-changed|interest\/remove)$/;
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses a topic and payload into a {@link NodeMessage} (pure; never throws).
 *
 * @example
 * ```ts
 * parseNodeMessage("nodes/w1/net/tablequery/request", '{"sname":"","sip":"10.30.0.1"}');
 * // { kind: "tablequery", worker: "w1", key: "10.30.0.1" }
 * ```
 */
export function parseNodeMessage(topic: string, payload: Uint8Array | string): NodeMessage {
  const m = TOPIC.exec(topic);
  if (!m) return { kind: "ignored", topic };
  const [, worker, suffix] = m;
  const invalid = (problem: string): NodeMessage => ({ kind: "invalid", topic, problem });
  if (!WORKER_ID.test(worker)) return invalid(`bad worker id "${worker}"`);
  let value: unknown;
  try {
    value = JSON.parse(typeof payload === "string" ? payload : decoder.decode(payload));
  } catch (e) {
    return invalid(`payload is not JSON: ${(e as Error).message}`);
  }
  switch (suffix) {
    case "subnet": {
      const r = SubnetRequestSchema.safeParse(value);
      return r.success ? { kind: "subnet", worker } : invalid(zodProblems(r.error));
    }
    case "tablequery/request": {
      const r = TableQueryRequestSchema.safeParse(value);
      if (!r.success) return invalid(zodProblems(r.error));
      return { kind: "tablequery", worker, key: r.data.sip !== "" ? r.data.sip : r.data.sname };
    }
    case "service/deployed": {
      const r = DeployedNoticeSchema.safeParse(value);
      return r.success ? { kind: "deployed", worker, notice: r.data } : invalid(zodProblems(r.error));
    }
    case "service/address-changed": {
      const r = AddressChangedSchema.safeParse(value);
      return r.success ? { kind: "address-changed", worker, notice: r.data } : invalid(zodProblems(r.error));
    }
    default: {
      const r = InterestRemoveSchema.safeParse(value);
      return r.success
        ? { kind: "interest-remove", worker, key: r.data.appname }
        : invalid(zodProblems(r.error));
    }
  }
}

/** What the handlers need: the state to read, the store's way to change it, a way to publish. */
export interface ControlCore {
  /** The live state (read only: change it through {@link change}). */
  readonly state: ClusterState;
  /** Runs a change and stores it; its update notices are published once stored. */
  change: ControlStore["change"];
  /** Publishes a JSON payload with QoS 1 (errors are logged, never thrown). */
  publish(topic: string, payload: unknown): void;
  /** A node's tunnel endpoint as the reflector saw it (src/path/reflector.ts), for table results. */
  tunnelObserved?: (worker: string) => { ip: string; port: number } | undefined;
  /** The relay endpoint `asker` dials to reach `target` when the pair is relayed (src/path/relay.ts). */
  relayVia?: (asker: string, target: string) => { ip: string; port: number } | undefined;
  /**
   * Records (`on`) or drops a node's interest in a job outside the job's row (etcd mode: on the
   * replica's lease). Without it, interests are changes of the job row.
   */
  interest?: (jobId: string, worker: string, on: boolean) => Promise<void>;
}

/**
 * Applies one node message: allocates or returns the subnet, answers table queries (registering the
 * node's interest in the resolved job), records deployments and address changes, removes interests.
 * Never throws: problems are logged.
 */
export async function handleNodeMessage(core: ControlCore, msg: NodeMessage): Promise<void> {
  try {
    switch (msg.kind) {
      case "ignored":
        return;
      case "invalid":
        log.warn("ignoring malformed message", { topic: msg.topic, problem: msg.problem });
        return;
      case "subnet": {
        const { node, created } = await core.change((s) => s.nodeSubnet(msg.worker));
        log.info(created ? "node registered" : "node re-registered", {
          worker: msg.worker,
          subnet: node.subnet,
          subnet_v6: node.subnet_v6,
        });
        core.publish(subnetResultTopic(msg.worker), { address: node.subnet, addressv6: node.subnet_v6 });
        return;
      }
      case "tablequery": {
        const job = core.state.resolve(msg.key);
        // A relayed pair: the asker dials the target's relay port instead (the relay forwards).
        const endpointFor = (w: string) => core.relayVia?.(msg.worker, w) ?? core.tunnelObserved?.(w);
        const result = tableQueryResult(msg.key, job, endpointFor);
        // Hole punching: a node behind NAT answers only endpoints it has sent to, so it is told to
        // HELLO the asker's observed endpoint (the asker dials its observed one: both directions open). Before the
        // result, so the NAT'd side's packets leave first and the asker's find the mapping open: an
        // asker's packet arriving first would leave a conntrack entry that makes the NAT map the
        // punch to another port (measured: Linux MASQUERADE picks a random one on that clash).
        const asker = core.tunnelObserved?.(msg.worker);
        const told = new Set<string>();
        if (asker !== undefined) {
          for (const i of result.instance_list) {
            if (i.announced_host_ip === undefined || i.worker_id === msg.worker || told.has(i.worker_id)) {
              continue;
            }
            told.add(i.worker_id);
            const via = core.relayVia?.(i.worker_id, msg.worker) ?? asker;
            core.publish(punchTopic(i.worker_id), { endpoint: endpointOf(via.ip, via.port) });
          }
        }
        if (told.size > 0) await new Promise((r) => setTimeout(r, PUNCH_LEAD_MS));
        core.publish(tableQueryResultTopic(msg.worker), result);
        log.debug("table query", { worker: msg.worker, key: msg.key, job: result.app_name });
        if (job && !job.interested_nodes.includes(msg.worker)) {
          const name = job.job_name;
          if (core.interest) await core.interest(job._id, msg.worker, true);
          else await core.change((s) => s.addInterestIn(name, msg.worker));
        }
        return;
      }
      case "deployed": {
        const { instance } = await core.change(
          (s) => s.markDeployed(msg.worker, msg.notice),
          (r) => r.updates,
        );
        log.info("instance deployed", {
          job: msg.notice.appname,
          instance: instance.instance_number,
          worker: msg.worker,
          nsip: instance.namespace_ip,
          host: `${instance.host_ip}:${instance.host_port}`,
        });
        return;
      }
      case "address-changed": {
        await core.change((s) => s.addressChanged(msg.worker, msg.notice), (r) => r.updates);
        log.info("node address changed", {
          worker: msg.worker,
          host: `${msg.notice.host_ip}:${msg.notice.host_port}`,
        });
        return;
      }
      case "interest-remove": {
        const job = core.state.job(msg.key);
        if (job && job.job_name === msg.key && job.interested_nodes.includes(msg.worker)) {
          if (core.interest) await core.interest(job._id, msg.worker, false);
          else await core.change((s) => s.removeInterest(msg.key, msg.worker));
        }
        return;
      }
    }
  } catch (e) {
    if (e instanceof ClusterError) {
      log.warn("node message refused", {
        kind: msg.kind,
        worker: "worker" in msg ? msg.worker : "",
        reason: e.message,
      });
    } else {
      log.error("node message failed", { kind: msg.kind, error: (e as Error).message });
    }
  }
}
