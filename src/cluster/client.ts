/**
 * A small client of the control plane's HTTP API (used by `netmanager control service|instance|node`).
 *
 * @example
 * ```ts
 * const api = new ControlClient("http://127.0.0.1:10100", { token: "…" });
 * const job = await api.addService("app.ns.svc.ns");
 * await api.addInstance(job._id, 0);
 * ```
 */
import type { InstanceRecord, JobRecord, NodeRecord } from "./schemas.ts";

/** Default API URL. */
export const DEFAULT_API_URL = "http://127.0.0.1:10100";

/** A failed call: unreachable API or a non-2xx reply (the message carries the server's reason). */
export class ControlApiError extends Error {
  /** HTTP status, or 0 when the API could not be reached. */
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "ControlApiError";
    this.status = status;
  }
}

/** A job as the API returns it. */
export type JobView = JobRecord & {
  RR_ip: string;
  RR_ip_v6: string;
  /** "" when the service has no Closest ServiceIP. */
  Closest_ip: string;
  Closest_ip_v6: string;
  created?: boolean;
};
/** An instance as `POST /api/net/instance/deploy` returns it. */
export type InstanceView = InstanceRecord & { _id: string; job_name: string; created: boolean };

/** Splits `app.appns.svc.svcns` into the deployment descriptor's four names; throws on a bad name. */
export function descriptorOf(jobName: string): {
  app_name: string;
  app_ns: string;
  microservice_name: string;
  microservice_namespace: string;
} {
  const p = jobName.split(".");
  if (p.length !== 4 || p.some((x) => !/^[A-Za-z0-9]{1,30}$/.test(x))) {
    throw new ControlApiError(
      0,
      `"${jobName}" is not a job name app.appns.service.servicens (1..30 letters/digits each)`,
    );
  }
  return { app_name: p[0], app_ns: p[1], microservice_name: p[2], microservice_namespace: p[3] };
}

/** Options of {@link ControlClient}. */
export interface ControlClientOptions {
  /** The API's bearer token (the `api-token` file of the control state dir). */
  token?: string;
  /** PEM text of a CA that signs the API's certificate (https with a private CA). */
  caCert?: string;
}

/** HTTP client of the control API. */
export class ControlClient {
  readonly base: string;
  readonly #token: string | undefined;
  readonly #http: Deno.HttpClient | undefined;

  constructor(base: string = DEFAULT_API_URL, opts: ControlClientOptions = {}) {
    this.base = base.replace(/\/+$/, "");
    this.#token = opts.token;
    this.#http = opts.caCert ? Deno.createHttpClient({ caCerts: [opts.caCert] }) : undefined;
  }

  /** Releases the HTTP client made for `caCert`. */
  close(): void {
    this.#http?.close();
  }

  async #call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      const headers: Record<string, string> = {};
      if (this.#token !== undefined) headers["authorization"] = `Bearer ${this.#token}`;
      if (body !== undefined) headers["content-type"] = "application/json";
      res = await fetch(this.base + path, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(this.#http ? { client: this.#http } : {}),
      });
    } catch (e) {
      const cause = (e as Error & { cause?: Error }).cause?.message ?? (e as Error).message;
      throw new ControlApiError(0, `cannot reach the control API at ${this.base}: ${cause}`);
    }
    const text = await res.text();
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined;
    }
    if (!res.ok) {
      const reason = (value as { error?: string } | undefined)?.error ?? text.trim() ?? res.statusText;
      throw new ControlApiError(res.status, `${method} ${path}: ${res.status} ${reason}`);
    }
    return value as T;
  }

  /** `POST /api/net/service/deploy`. */
  addService(
    jobName: string,
    opts: {
      id?: string;
      rrIp?: string;
      rrIp6?: string;
      closestIp?: string;
      closestIp6?: string;
      /** false: no Closest ServiceIP. */
      closest?: boolean;
    } = {},
  ): Promise<JobView> {
    return this.#call("POST", "/api/net/service/deploy", {
      ...(opts.id !== undefined ? { _id: opts.id } : {}),
      deployment_descriptor: {
        ...descriptorOf(jobName),
        ...(opts.rrIp !== undefined ? { RR_ip: opts.rrIp } : {}),
        ...(opts.rrIp6 !== undefined ? { RR_ip_v6: opts.rrIp6 } : {}),
        ...(opts.closestIp !== undefined ? { Closest_ip: opts.closestIp } : {}),
        ...(opts.closestIp6 !== undefined ? { Closest_ip_v6: opts.closestIp6 } : {}),
        ...(opts.closest !== undefined ? { closest: opts.closest } : {}),
      },
    });
  }

  /** `DELETE /api/net/service/<ref>` (`force`: remove remaining instances too). */
  removeService(ref: string, force = false): Promise<JobView> {
    return this.#call("DELETE", `/api/net/service/${encodeURIComponent(ref)}${force ? "?force=1" : ""}`);
  }

  /** `GET /api/net/services`. */
  services(): Promise<JobView[]> {
    return this.#call("GET", "/api/net/services");
  }

  /** `GET /api/net/service/<ref>`. */
  service(ref: string): Promise<JobView> {
    return this.#call("GET", `/api/net/service/${encodeURIComponent(ref)}`);
  }

  /** `POST /api/net/instance/deploy`. */
  addInstance(ref: string, n: number, clusterId?: string): Promise<InstanceView> {
    return this.#call("POST", "/api/net/instance/deploy", {
      _id: ref,
      instance_number: n,
      ...(clusterId !== undefined ? { cluster_id: clusterId } : {}),
    });
  }

  /** `DELETE /api/net/<ref>/<n>` (`-1`: all instances). */
  removeInstance(
    ref: string,
    n: number,
  ): Promise<{ _id: string; job_name: string; removed: InstanceRecord[] }> {
    return this.#call("DELETE", `/api/net/${encodeURIComponent(ref)}/${n}`);
  }

  /** `GET /api/net/nodes`. */
  nodes(): Promise<NodeRecord[]> {
    return this.#call("GET", "/api/net/nodes");
  }

  /** `POST /api/net/node/<worker>/credential`: a new MQTT credential for the node (shown once). */
  issueCredential(
    worker: string,
  ): Promise<{ worker_id: string; username: string; password: string; replaced: boolean }> {
    return this.#call("POST", `/api/net/node/${encodeURIComponent(worker)}/credential`);
  }

  /** `DELETE /api/net/node/<worker>/credential`: the node can no longer connect. */
  revokeCredential(worker: string): Promise<{ worker_id: string; revoked: true }> {
    return this.#call("DELETE", `/api/net/node/${encodeURIComponent(worker)}/credential`);
  }

  /** `DELETE /api/net/node/<worker>`. */
  removeNode(worker: string): Promise<NodeRecord & { cleared: { job: string; instance_number: number }[] }> {
    return this.#call("DELETE", `/api/net/node/${encodeURIComponent(worker)}`);
  }
}
