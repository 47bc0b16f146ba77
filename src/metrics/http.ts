/**
 * The metrics listener over TCP (`MetricsAddress` / `--metrics-addr`): `GET /metrics` (Prometheus
 * exposition) and `GET /healthz` (200 `ok`, or 503 with the reason as the body). Read-only; every
 * other path is 404, every other method 405.
 *
 * @example
 * ```ts
 * import { Registry } from "prom-client";
 * const reg = new Registry();
 * const s = await startMetricsServer({
 *   address: "127.0.0.1:9464",
 *   registry: reg,
 *   health: () => ({ ok: true }),
 * });
 * await s.close();
 * ```
 * @module
 */
import type { Registry } from "prom-client";
import { logger } from "../log.ts";

const log = logger("metrics");

/** Readiness: ok, or not with a reason an operator can act on. */
export type Health = { ok: true } | { ok: false; reason: string };

/** A metrics address that cannot be used. */
export class MetricsAddressError extends Error {
  /** Creates the error with `message` (what is wrong). */
  constructor(message: string) {
    super(message);
    this.name = "MetricsAddressError";
  }
}

/**
 * Parses `host:port` or `[v6]:port` (port 0 = any free port).
 *
 * @example
 * ```ts
 * parseListenAddress("127.0.0.1:9464"); // { hostname: "127.0.0.1", port: 9464 }
 * parseListenAddress("[::1]:9464"); // { hostname: "::1", port: 9464 }
 * ```
 */
export function parseListenAddress(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new MetricsAddressError(`metrics address "${text}": expected host:port, e.g. 127.0.0.1:9464`);
  }
  return { hostname: m[1] ?? m[2], port };
}

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  /** `host:port` to listen on. */
  address: string;
  /** What `/metrics` serves. */
  registry: Registry;
  /** What `/healthz` reports. */
  health: () => Health;
}

/** A running metrics listener. */
export interface MetricsServer {
  /** The bound port (useful with port 0). */
  readonly port: number;
  /** Stops listening. */
  close(): Promise<void>;
}

/** Routes one request (pure apart from reading the registry). */
export async function handleMetricsRequest(
  req: Request,
  registry: Registry,
  health: () => Health,
): Promise<Response> {
  const path = new URL(req.url).pathname;
  if (path !== "/metrics" && path !== "/healthz") return new Response("not found\n", { status: 404 });
  if (req.method !== "GET" && req.method !== "HEAD") {
    return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  if (path === "/healthz") {
    const h = health();
    return h.ok
      ? new Response("ok\n", { status: 200 })
      : new Response(`not ready: ${h.reason}\n`, { status: 503 });
  }
  const body = await registry.metrics();
  return new Response(body, { status: 200, headers: { "content-type": registry.contentType } });
}

/** Starts the listener; throws {@link MetricsAddressError} for a bad or unbindable address. */
export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const { hostname, port } = parseListenAddress(opts.address);
  const ready = Promise.withResolvers<void>();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname, port, onListen: () => ready.resolve() }, async (req) => {
      try {
        return await handleMetricsRequest(req, opts.registry, opts.health);
      } catch (e) {
        log.warn("metrics request failed", { error: String(e) });
        return new Response("internal error\n", { status: 500 });
      }
    });
  } catch (e) {
    throw new MetricsAddressError(
      `cannot listen for metrics on ${opts.address}: ${e instanceof Error ? e.message : e}`,
    );
  }
  await ready.promise;
  log.info("metrics listening", { address: `${hostname}:${server.addr.port}` });
  return {
    port: server.addr.port,
    close: () => server.shutdown(),
  };
}
