/**
 * What the API needs from the node: a small interface, so the HTTP layer knows nothing of the
 * environment manager's or the table's internals.
 */
import type { InstanceAddresses, InstanceKind } from "../env/mod.ts";

/** Outcome of `/register`. */
export type RegisterResult = { ok: true } | { ok: false; status: 400 | 500 | 503; error: string };

/** The node as the API sees it. Methods throw errors with a numeric `status` for HTTP mapping. */
export interface NodeService {
  register(clientId: string, clusterAddress: string): Promise<RegisterResult>;
  deploy(
    kind: InstanceKind,
    req: { pid: number; job: string; instance: number; portMappings: string },
  ): Promise<InstanceAddresses>;
  undeploy(kind: InstanceKind, job: string, instance: number): Promise<void>;
  status(): Record<string, unknown>;
  table(): unknown[];
  flows?(): Promise<unknown[]>;
  instances(): unknown[];
  /** Prometheus exposition text and its content type. */
  metrics?(): Promise<{ body: string; contentType: string }>;
  /**
   * Rekeys the secure sessions with `peer` (`ip:port`) or with every peer now and resolves with each
   * handshake's time (`POST /secure/rekey`); throws with `status` 404 (no such session) or 409 (no
   * tunnel security).
   */
  secureRekey?(peer?: string): Promise<unknown[]>;
  /** Resolves a name as the node's DNS server would, saying where the answer came from. */
  dnsLookup?(name: string, type: string): Promise<unknown>;
}
