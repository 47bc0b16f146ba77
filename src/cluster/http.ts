/**
 * The HTTP API of the control plane (JSON in, JSON out), compatible with the Oakestra root service
 * manager's network endpoints (reference §7.2) plus listings:
 *
 * | method + path | body / query | reply |
 * |---|---|---|
 * | `POST /api/net/service/deploy` | `{_id?, deployment_descriptor:{app_name, app_ns, microservice_name, microservice_namespace, RR_ip?, RR_ip_v6?, Closest_ip?, Closest_ip_v6?, closest?}}` | the job + `RR_ip`, `RR_ip_v6`, `Closest_ip`, `Closest_ip_v6` ("" when `closest: false`), `created` |
 * | `POST /api/net/instance/deploy` | `{_id, instance_number, cluster_id?}` | the instance + `_id`, `job_name`, `created` |
 * | `DELETE /api/net/service/<ref>` | `?force=1` removes remaining instances too | the removed job |
 * | `DELETE /api/net/<ref>/<n>` | `n = -1`: all instances | `{_id, job_name, removed:[…]}` |
 * | `DELETE /api/net/node/<worker>` | – | the node + `cleared:[…]` |
 * | `POST /api/net/node/<worker>/credential` | – | `{worker_id, username, password, replaced}`: the node's new MQTT credential (shown once) |
 * | `DELETE /api/net/node/<worker>/credential` | – | `{worker_id, revoked: true}`; its connections are closed |
 * | `GET /api/net/services`, `GET /api/net/service/<ref>` | – | jobs / one job |
 * | `GET /api/net/nodes`, `GET /api/net/node/<worker>` | – | nodes / one node |
 * | `GET /api/net/cluster` | – | the web page's picture: nodes (reports, connections), services, RTT links |
 * | `GET /ui/`, `/ui/app.js`, `/ui/style.css` | – | the web page's static files (no data; no token needed) |
 *
 * Every request but the page's static files needs `Authorization: Bearer <token>` (the `api-token` file of the state dir);
 * without it, or with a wrong one: 401 and nothing is done.
 *
 * `<ref>` (and `_id` of an instance deploy) is a job id or a job name (`app.appns.svc.svcns`); ids
 * never contain dots, so this is never ambiguous. Errors are `{"error": "<reason>"}` with 400 (bad
 * input; nothing changed), 404 (unknown id/name/node), 409 (name or address used by another job),
 * 503 (pool exhausted, or the replicated store has no quorum: nothing changed), 500 (state could not
 * be saved).
 *
 * @example
 * ```ts
 * import type { ControlCore } from "./mqtt.ts";
 * import type { CredentialStore } from "./auth.ts";
 * declare const core: ControlCore, credentials: CredentialStore;
 * const token = (await Deno.readTextFile("/var/lib/netmanager/api-token")).trim();
 * Deno.serve({ hostname: "127.0.0.1", port: 10100 }, createHttpHandler(core, { token, credentials }));
 * ```
 */
import { z } from "zod";
import {
  InstanceDeployBodySchema,
  type JobRecord,
  ServiceDeployBodySchema,
  WORKER_ID,
  zodProblems,
} from "./schemas.ts";
import { closestAddresses, ClusterError, type ClusterErrorKind, rrAddresses } from "./state.ts";
import { type CredentialStore, secretEquals } from "./auth.ts";
import type { ControlCore } from "./mqtt.ts";
import { StoreUnavailableError } from "./store.ts";
import { logger } from "../log.ts";
import type { ClusterView } from "./view.ts";
import { webAsset } from "./web.ts";

const log = logger("control");

/** Largest accepted request body. */
export const MAX_BODY = 64 * 1024;

const STATUS: Record<ClusterErrorKind, number> = {
  invalid: 400,
  not_found: 404,
  conflict: 409,
  exhausted: 503,
};

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** What the handler needs to authenticate requests and manage node credentials. */
export interface HttpAuth {
  /** The bearer token every request must carry. */
  token: string;
  /** The node credentials of the embedded broker. */
  credentials: CredentialStore;
  /** Called after a credential was revoked (closes the node's connections). */
  onRevoke?: (worker: string) => void;
  /** Called after `DELETE /api/net/node/<worker>` removed the node (revokes its tunnel certificates). */
  onNodeRemoved?: (worker: string) => Promise<void>;
  /** Called after a node credential was issued (`control node add`: lifts a tunnel revocation of the id). */
  onCredentialIssued?: (worker: string) => Promise<void>;
  /** The picture of the cluster for `GET /api/net/cluster` (404 without). */
  view?: () => ClusterView;
  /** A node's tunnel endpoint as the reflector saw it (src/path/reflector.ts), for the node listings. */
  tunnelObserved?: (worker: string) => { ip: string; port: number } | undefined;
}

function bearerOf(req: Request): string | undefined {
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(req.headers.get("authorization") ?? "");
  return m ? m[1] : undefined;
}

/**
 * The job as the API shows it: the stored document plus its RR and Closest addresses ("" when
 * none). A shallow copy that shares the live record's lists: serialize it at once, never mutate
 * it (a deep copy per reply was garbage the store's tail latency paid for, issue 14).
 */
export function jobView(
  job: JobRecord,
): JobRecord & { RR_ip: string; RR_ip_v6: string; Closest_ip: string; Closest_ip_v6: string } {
  const rr = rrAddresses(job);
  const c = closestAddresses(job);
  return {
    ...job,
    RR_ip: rr.rr_ip,
    RR_ip_v6: rr.rr_ip_v6,
    Closest_ip: c.closest_ip,
    Closest_ip_v6: c.closest_ip_v6,
  };
}

async function readJson<T extends z.ZodType>(req: Request, schema: T): Promise<z.infer<T>> {
  const length = Number(req.headers.get("content-length") ?? "0");
  if (length > MAX_BODY) throw new HttpError(413, `body larger than ${MAX_BODY} bytes`);
  const text = await req.text();
  if (text.length > MAX_BODY) throw new HttpError(413, `body larger than ${MAX_BODY} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `body is not JSON: ${(e as Error).message}`);
  }
  const r = schema.safeParse(value);
  if (!r.success) throw new HttpError(400, zodProblems(r.error));
  return r.data;
}

function param(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new HttpError(400, `bad path segment "${s}"`);
  }
}

function flag(url: URL, name: string): boolean {
  const v = url.searchParams.get(name);
  return v !== null && ["", "1", "true", "yes"].includes(v.toLowerCase());
}

/**
 * Builds the request handler over a {@link ControlCore}. Every state change is persisted before the
 * reply; update notices are published after.
 */
export function createHttpHandler(core: ControlCore, auth: HttpAuth): (req: Request) => Promise<Response> {
  /** A change through the store: refusals pass through (4xx), a failed write is a 500. */
  const change: ControlCore["change"] = async (fn, updates) => {
    try {
      return await core.change(fn, updates);
    } catch (e) {
      if (e instanceof ClusterError || e instanceof HttpError) throw e;
      if (e instanceof StoreUnavailableError) throw new HttpError(503, e.message);
      throw new HttpError(500, `state not saved: ${(e as Error).message}`);
    }
  };

  /** Adds `tunnel_observed` ("ip:port", when the reflector saw the node) to a node record. */
  const withObserved = <T extends { worker_id: string }>(n: T): T & { tunnel_observed?: string } => {
    const o = auth.tunnelObserved?.(n.worker_id);
    if (o === undefined) return n;
    return { ...n, tunnel_observed: o.ip.includes(":") ? `[${o.ip}]:${o.port}` : `${o.ip}:${o.port}` };
  };

  const routes: Array<
    { method: string; path: RegExp; run: (m: string[], req: Request, url: URL) => Promise<Response> }
  > = [
    {
      method: "POST",
      path: /^\/api\/net\/service\/deploy$/,
      run: async (_m, req) => {
        const body = await readJson(req, ServiceDeployBodySchema);
        const d = body.deployment_descriptor;
        const a = d.addresses;
        const pick = (x: string | undefined, y: string | undefined, name: string) => {
          if (x !== undefined && y !== undefined && x !== y) {
            throw new HttpError(400, `deployment_descriptor: ${name} given twice with different values`);
          }
          return x ?? y;
        };
        const rrIp = pick(d.RR_ip, a?.rr_ip, "RR_ip");
        const rrIp6 = pick(d.RR_ip_v6, a?.rr_ip_v6, "RR_ip_v6");
        const cIp = pick(d.Closest_ip, a?.closest_ip, "Closest_ip");
        const cIp6 = pick(d.Closest_ip_v6, a?.closest_ip_v6, "Closest_ip_v6");
        const { job, created } = await change((s) =>
          s.deployService({
            ...(body._id !== undefined ? { _id: body._id } : {}),
            app_name: d.app_name,
            app_ns: d.app_ns,
            microservice_name: d.microservice_name,
            microservice_namespace: d.microservice_namespace,
            ...(rrIp !== undefined ? { rr_ip: rrIp } : {}),
            ...(rrIp6 !== undefined ? { rr_ip_v6: rrIp6 } : {}),
            ...(cIp !== undefined ? { closest_ip: cIp } : {}),
            ...(cIp6 !== undefined ? { closest_ip_v6: cIp6 } : {}),
            ...(d.closest !== undefined ? { closest: d.closest } : {}),
          }), (r) => r.updates);
        log.info(created ? "service added" : "service deployed again", { id: job._id, job: job.job_name });
        return json(200, { ...jobView(job), created });
      },
    },
    {
      method: "POST",
      path: /^\/api\/net\/instance\/deploy$/,
      run: async (_m, req) => {
        const body = await readJson(req, InstanceDeployBodySchema);
        const { job, instance, created } = await change((s) =>
          s.deployInstance(body._id, body.instance_number, body.cluster_id ?? undefined)
        );
        if (created) log.info("instance added", { job: job.job_name, instance: instance.instance_number });
        return json(200, { _id: job._id, job_name: job.job_name, ...instance, created });
      },
    },
    {
      method: "GET",
      path: /^\/api\/net\/services$/,
      run: () => Promise.resolve(json(200, core.state.jobs().map(jobView))),
    },
    {
      method: "GET",
      path: /^\/api\/net\/service\/([^/]+)$/,
      run: (m) => Promise.resolve(json(200, jobView(core.state.findJob(param(m[1]))))),
    },
    {
      method: "DELETE",
      path: /^\/api\/net\/service\/([^/]+)$/,
      run: async (m, _req, url) => {
        const ref = param(m[1]);
        const { job } = await change((s) => s.removeService(ref, flag(url, "force")), (r) => r.updates);
        log.info("service removed", { id: job._id, job: job.job_name });
        return json(200, { ...jobView(job), removed: true });
      },
    },
    {
      method: "GET",
      path: /^\/api\/net\/cluster$/,
      run: () => {
        if (!auth.view) throw new HttpError(404, "no cluster view");
        return Promise.resolve(json(200, auth.view(), { "cache-control": "no-store" }));
      },
    },
    {
      method: "GET",
      path: /^\/api\/net\/nodes$/,
      run: () => Promise.resolve(json(200, core.state.nodes().map((n) => withObserved(structuredClone(n))))),
    },
    {
      method: "GET",
      path: /^\/api\/net\/node\/([^/]+)$/,
      run: (m) => {
        const n = core.state.node(param(m[1]));
        if (!n) throw new HttpError(404, `no node with worker id "${param(m[1])}"`);
        return Promise.resolve(json(200, withObserved(structuredClone(n))));
      },
    },
    {
      method: "DELETE",
      path: /^\/api\/net\/node\/([^/]+)$/,
      run: async (m) => {
        const worker = param(m[1]);
        const { node, cleared } = await change((s) => s.removeNode(worker), (r) => r.updates);
        log.info("node removed", { worker: node.worker_id, subnet: node.subnet, cleared: cleared.length });
        await auth.onNodeRemoved?.(worker);
        return json(200, { ...structuredClone(node), cleared });
      },
    },
    {
      method: "POST",
      path: /^\/api\/net\/node\/([^/]+)\/credential$/,
      run: async (m) => {
        const worker = param(m[1]);
        if (!WORKER_ID.test(worker)) {
          throw new HttpError(400, `bad worker id "${worker}" (no / + # or spaces)`);
        }
        let c;
        try {
          c = await auth.credentials.issue(worker);
        } catch (e) {
          throw new HttpError(500, `credential not saved: ${(e as Error).message}`);
        }
        if (c.replaced) auth.onRevoke?.(worker); // the old password is void: drop its sessions
        await auth.onCredentialIssued?.(worker);
        log.info(c.replaced ? "node credential replaced" : "node credential issued", { worker });
        return json(200, {
          worker_id: worker,
          username: c.username,
          password: c.password,
          replaced: c.replaced,
        }, {
          "cache-control": "no-store",
        });
      },
    },
    {
      method: "DELETE",
      path: /^\/api\/net\/node\/([^/]+)\/credential$/,
      run: async (m) => {
        const worker = param(m[1]);
        let removed: boolean;
        try {
          removed = await auth.credentials.revoke(worker);
        } catch (e) {
          throw new HttpError(500, `credential file not saved: ${(e as Error).message}`);
        }
        if (!removed) throw new HttpError(404, `node "${worker}" has no credential`);
        auth.onRevoke?.(worker);
        log.info("node credential revoked", { worker });
        return json(200, { worker_id: worker, revoked: true });
      },
    },
    {
      method: "DELETE",
      path: /^\/api\/net\/([^/]+)\/(-?[0-9]{1,10})$/,
      run: async (m) => {
        const ref = param(m[1]);
        const { job, removed } = await change((s) => s.removeInstance(ref, Number(m[2])), (r) => r.updates);
        log.info("instance removed", { job: job.job_name, instances: removed.map((i) => i.instance_number) });
        return json(200, { _id: job._id, job_name: job.job_name, removed: structuredClone(removed) });
      },
    },
  ];

  return async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    // The page's static files carry no data: a browser loads them before it has the token.
    const asset = req.method === "GET" || req.method === "HEAD" ? webAsset(url.pathname) : undefined;
    if (asset) return asset;
    const given = bearerOf(req);
    if (given === undefined || !secretEquals(given, auth.token)) {
      return json(401, {
        error: given === undefined
          ? "missing bearer token (Authorization: Bearer <token>; the token is in the api-token file of the state directory)"
          : "wrong bearer token",
      }, { "www-authenticate": 'Bearer realm="netmanager-control"' });
    }
    try {
      let pathMatched = false;
      for (const r of routes) {
        const m = r.path.exec(url.pathname);
        if (!m) continue;
        pathMatched = true;
        if (r.method !== req.method) continue;
        return await r.run(m, req, url);
      }
      if (pathMatched) return json(405, { error: `method ${req.method} not allowed on ${url.pathname}` });
      return json(404, { error: `no such endpoint: ${req.method} ${url.pathname}` });
    } catch (e) {
      if (e instanceof HttpError) return json(e.status, { error: e.message });
      if (e instanceof ClusterError) return json(STATUS[e.kind], { error: e.message });
      log.error("request failed", { path: url.pathname, error: (e as Error).message });
      return json(500, { error: (e as Error).message });
    }
  };
}
