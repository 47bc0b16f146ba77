/**
 * A client for the node's unix-socket API (used by the CLI subcommands and by tests).
 *
 * @example
 * ```ts
 * const api = new ApiClient("/etc/netmanager/netmanager.sock");
 * const status = await api.getJson("/status");
 * api.close();
 * ```
 */

/** The daemon is not running or not reachable on the socket. */
export class ApiUnreachableError extends Error {
  constructor(path: string, cause: unknown) {
    super(
      `cannot reach netmanager at ${path}: ${
        cause instanceof Error ? cause.message : cause
      } (is the daemon running?)`,
    );
    this.name = "ApiUnreachableError";
  }
}

/** An HTTP response from the API. */
export interface ApiResponse {
  status: number;
  body: string;
  /** The parsed body, when it is JSON. */
  json?: unknown;
}

/** HTTP over the daemon's unix socket. */
export class ApiClient {
  readonly path: string;
  readonly #client: Deno.HttpClient;

  constructor(path: string) {
    this.path = path;
    this.#client = Deno.createHttpClient({ proxy: { transport: "unix", path } });
  }

  /** Sends a request; `body` is JSON-encoded unless it is already a string. */
  async request(method: string, route: string, body?: unknown): Promise<ApiResponse> {
    let res: Response;
    try {
      res = await fetch(`http://localhost${route}`, {
        method,
        client: this.#client,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiUnreachableError(this.path, e);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, body: text, json };
  }

  /** GET a JSON route; throws when the status is not 200. */
  async getJson(route: string): Promise<unknown> {
    const r = await this.request("GET", route);
    if (r.status !== 200) throw new Error(`GET ${route}: HTTP ${r.status} ${r.body}`);
    return r.json;
  }

  /** POST a JSON body. */
  post(route: string, body: unknown): Promise<ApiResponse> {
    return this.request("POST", route, body);
  }

  /** Releases the connection pool. */
  close(): void {
    this.#client.close();
  }
}
