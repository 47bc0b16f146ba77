/**
 * The unix-socket HTTP API (`Deno.serve({ path })`): Oakestra-compatible routes and status codes
 * (reference §1.2) plus inspection routes. Every body is validated with zod before anything
 * happens; a bad body gets 400 with `{"error": …, "field": …}` and changes nothing. The public
 * socket is served by the gate (`gate.ts`: body cap, request and idle timeouts, connection cap),
 * which relays to `Deno.serve` on a private socket next to it (`<path>.inner`, mode 0600).
 *
 * @example
 * ```ts
 * import type { NodeService } from "./service.ts";
 * declare const node: NodeService;
 * const api = await startApi({ path: "/etc/netmanager/netmanager.sock", node });
 * await api.close();
 * ```
 */
import { z } from "zod";
import { logger } from "../log.ts";
import { type GateLimits, startGate } from "./gate.ts";
import { DeployBody, normalizeKeys, RegisterBody, RekeyBody, UndeployBody } from "./schemas.ts";
import type { NodeService } from "./service.ts";

const log = logger("api");

/** A running API server. */
export interface ApiServer {
  path: string;
  close(): Promise<void>;
}

/** Options for {@link startApi}. */
export interface ApiOptions {
  path: string;
  node: NodeService;
  /** Gate limits; by default {@link limitsFromEnv}. */
  limits?: Partial<GateLimits>;
}

/**
 * Gate limits from the environment (`NETMANAGER_API_MAX_BODY`, `NETMANAGER_API_REQUEST_TIMEOUT_MS`,
 * `NETMANAGER_API_IDLE_TIMEOUT_MS`, `NETMANAGER_API_MAX_CONNECTIONS`); unset or invalid values keep
 * the defaults.
 */
export function limitsFromEnv(): Partial<GateLimits> {
  const out: Partial<GateLimits> = {};
  const num = (name: string) => {
    const v = Number(Deno.env.get(name));
    return Number.isInteger(v) && v > 0 ? v : undefined;
  };
  const set = (k: keyof GateLimits, name: string) => {
    const v = num(name);
    if (v !== undefined) out[k] = v;
  };
  set("maxBodyBytes", "NETMANAGER_API_MAX_BODY");
  set("requestTimeoutMs", "NETMANAGER_API_REQUEST_TIMEOUT_MS");
  set("idleTimeoutMs", "NETMANAGER_API_IDLE_TIMEOUT_MS");
  set("maxConnections", "NETMANAGER_API_MAX_CONNECTIONS");
  return out;
}

/** Thrown when the socket path is held by a live server. */
export class SocketInUseError extends Error {
  constructor(path: string) {
    super(`${path} is in use by a running process (another netmanager?)`);
    this.name = "SocketInUseError";
  }
}

const JSON_HEADERS = { "content-type": "application/json" };

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: JSON_HEADERS });
}

function errorBody(status: number, error: string, field?: string): Response {
  return json(status, field ? { error, field } : { error });
}

async function parseBody<S extends z.ZodObject>(req: Request, schema: S): Promise<z.output<S> | Response> {
  let raw: unknown;
  try {
    const text = await req.text();
    raw = JSON.parse(text);
  } catch {
    return errorBody(400, "malformed JSON body");
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    return errorBody(400, "body must be a JSON object");
  }
  const normalized = normalizeKeys(raw, Object.keys(schema.shape)) as Record<string, unknown>;
  const r = schema.safeParse(normalized);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue.path.map(String).join(".");
    const missing = issue.code === "invalid_type" && issue.path.length === 1 && !(field in normalized);
    const msg = missing ? `${field} is required` : issue.message;
    return errorBody(400, msg, field || undefined);
  }
  return r.data;
}

function statusOf(e: unknown): number {
  const s = (e as { status?: unknown })?.status;
  return typeof s === "number" && s >= 400 && s < 600 ? s : 500;
}

type Handler = (req: Request, node: NodeService) => Promise<Response>;

const deployHandler = (kind: "container" | "unikernel"): Handler => async (req, node) => {
  const body = await parseBody(req, DeployBody);
  if (body instanceof Response) return body;
  try {
    const addrs = await node.deploy(kind, {
      pid: body.pid,
      job: body.serviceName,
      instance: body.instanceNumber,
      portMappings: body.portMappings,
    });
    return json(200, { serviceName: body.serviceName, nsAddress: addrs.ipv4, nsAddressv6: addrs.ipv6 });
  } catch (e) {
    const status = statusOf(e);
    log.warn("deploy failed", {
      kind,
      job: body.serviceName,
      instance: body.instanceNumber,
      error: String(e),
    });
    return errorBody(status, e instanceof Error ? e.message : String(e));
  }
};

const undeployHandler = (kind: "container" | "unikernel"): Handler => async (req, node) => {
  const body = await parseBody(req, UndeployBody);
  if (body instanceof Response) return body;
  try {
    await node.undeploy(kind, body.serviceName, body.instanceNumber);
    return new Response(null, { status: 200 });
  } catch (e) {
    return errorBody(statusOf(e), e instanceof Error ? e.message : String(e));
  }
};

const ROUTES: Record<string, { method: "GET" | "POST"; handler: Handler }> = {
  "/register": {
    method: "POST",
    handler: async (req, node) => {
      const body = await parseBody(req, RegisterBody);
      if (body instanceof Response) return body;
      const r = await node.register(body.client_id, body.cluster_address);
      return r.ok ? new Response(null, { status: 200 }) : errorBody(r.status, r.error);
    },
  },
  "/container/deploy": { method: "POST", handler: deployHandler("container") },
  "/container/undeploy": { method: "POST", handler: undeployHandler("container") },
  "/docker/undeploy": { method: "POST", handler: undeployHandler("container") },
  "/unikernel/deploy": { method: "POST", handler: deployHandler("unikernel") },
  "/unikernel/undeploy": { method: "POST", handler: undeployHandler("unikernel") },
  "/status": { method: "GET", handler: (_r, node) => Promise.resolve(json(200, node.status())) },
  "/table": {
    method: "GET",
    handler: async (req, node) => {
      if (new URL(req.url).searchParams.has("flows")) {
        return json(200, { flows: (await node.flows?.()) ?? [] });
      }
      return json(200, node.table());
    },
  },
  "/instances": { method: "GET", handler: (_r, node) => Promise.resolve(json(200, node.instances())) },
  "/dns/lookup": {
    method: "GET",
    handler: async (req, node) => {
      const u = new URL(req.url).searchParams;
      const name = u.get("name") ?? "";
      const type = (u.get("type") ?? "A").toUpperCase();
      if (!/^[A-Za-z0-9._-]{1,253}\.?$/.test(name)) return errorBody(400, "name: must be a domain name");
      if (!/^(A|AAAA|PTR|ANY|TXT|MX|SRV|CNAME|NS|SOA)$/.test(type)) {
        return errorBody(400, `type: unsupported ${type}`);
      }
      if (!node.dnsLookup) return errorBody(404, "no DNS on this node");
      return json(200, await node.dnsLookup(name, type));
    },
  },
  "/secure/rekey": {
    method: "POST",
    handler: async (req, node) => {
      const body = await parseBody(req, RekeyBody);
      if (body instanceof Response) return body;
      if (!node.secureRekey) return errorBody(409, "no tunnel security on this node");
      try {
        return json(200, { rekeys: await node.secureRekey(body.peer) });
      } catch (e) {
        return errorBody(statusOf(e), e instanceof Error ? e.message : String(e));
      }
    },
  },
  "/metrics": {
    method: "GET",
    handler: async (_r, node) => {
      const m = await node.metrics?.();
      return new Response(m?.body ?? "", {
        status: 200,
        headers: { "content-type": m?.contentType ?? "text/plain; version=0.0.4" },
      });
    },
  },
};

/** Routes a request; exported for tests of the pure mapping. */
export async function handle(req: Request, node: NodeService): Promise<Response> {
  const path = new URL(req.url).pathname.replace(/\/+$/, "") || "/";
  const route = ROUTES[path];
  if (!route) return errorBody(404, `no route ${path}`);
  if (req.method !== route.method) {
    return new Response(JSON.stringify({ error: `method ${req.method} not allowed on ${path}` }), {
      status: 405,
      headers: { ...JSON_HEADERS, allow: route.method },
    });
  }
  try {
    return await route.handler(req, node);
  } catch (e) {
    log.error("handler crashed", { path, error: String(e) });
    return errorBody(500, e instanceof Error ? e.message : String(e));
  }
}

async function socketIsLive(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** Starts serving on a unix socket (mode 0600). A stale socket file is replaced; a live one is an error. */
export async function startApi(opts: ApiOptions): Promise<ApiServer> {
  const { path } = opts;
  try {
    const st = Deno.lstatSync(path);
    if (!st.isSocket) throw new Error(`${path} exists and is not a socket`);
    if (await socketIsLive(path)) throw new SocketInUseError(path);
    Deno.removeSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const dir = path.slice(0, path.lastIndexOf("/"));
  if (dir) Deno.mkdirSync(dir, { recursive: true });
  const inner = `${path}.inner`;
  try {
    Deno.removeSync(inner); // left by a killed daemon (the public socket was not live)
  } catch {
    // none
  }
  const ready = Promise.withResolvers<void>();
  const server = Deno.serve({
    path: inner,
    onListen: () => ready.resolve(),
    onError: (e) => {
      log.error("request failed", { error: String(e) });
      return errorBody(500, "internal error");
    },
  }, (req) => handle(req, opts.node));
  await ready.promise;
  Deno.chmodSync(inner, 0o600);
  let gate;
  try {
    gate = startGate({ path, upstream: inner, limits: opts.limits ?? limitsFromEnv() });
    Deno.chmodSync(path, 0o600);
  } catch (e) {
    await server.shutdown();
    throw e;
  }
  log.info("API listening", { socket: path });
  return {
    path,
    close: async () => {
      await gate.close();
      await server.shutdown();
      for (const p of [path, inner]) {
        try {
          Deno.removeSync(p);
        } catch {
          // already removed
        }
      }
    },
  };
}
