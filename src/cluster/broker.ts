/**
 * The embedded MQTT broker (npm `aedes` on `node:net`, or `node:tls` with a server certificate),
 * with TCP_NODELAY on every accepted socket: without it, QoS 1 round trips take ~40 ms (Nagle +
 * delayed ACK, deno-notes §7).
 *
 * Access: a node authenticates with its own credential (username = worker id) or, on a TLS
 * listener with a client CA, with a client certificate whose CN is its worker id (mosquitto's
 * `use_identity_as_username`); its client id must equal that id, and the ACL of `auth.ts` applies.
 * The control plane's own client is connected in-process ({@link EmbeddedBroker.connectInternal})
 * and is the only one allowed everything. `allowAnonymous` (labs) turns all checks off.
 *
 * @example
 * ```ts
 * const b = await startBroker({ host: "127.0.0.1", port: 0, auth: { allowAnonymous: true, verify: () => false } });
 * console.log(b.port); // the port chosen by the kernel
 * await b.stop();
 * ```
 */
import { Aedes, type Client } from "aedes";
import net from "node:net";
import tls from "node:tls";
import { X509Certificate } from "node:crypto";
import { duplexPair } from "node:stream";
import type { Duplex } from "node:stream";
import { mayPublish, maySubscribe } from "./auth.ts";
import { WORKER_ID } from "./schemas.ts";
import { logger, RateLimitedLog } from "../log.ts";

const log = logger("broker");

/** Raised when the broker cannot listen or its TLS material is unusable. */
export class BrokerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BrokerError";
  }
}

/** Who may connect. */
export interface BrokerAuth {
  /** Accept every client and apply no ACL (labs only; the pre-authentication behaviour). */
  allowAnonymous: boolean;
  /** Checks a node's username (worker id) and password. */
  verify(username: string, password: Uint8Array): boolean;
}

/** TLS of the listener (PEM texts). */
export interface BrokerTls {
  cert: string;
  key: string;
  /** CA of client certificates: a verified certificate's CN is the node's identity. */
  clientCa?: string;
}

/** A running embedded broker. */
export interface EmbeddedBroker {
  /** Address it listens on. */
  readonly host: string;
  /** Port it listens on (the real one when 0 was asked). */
  readonly port: number;
  /** True when the listener speaks TLS. */
  readonly tls: boolean;
  /** A new in-process connection with full rights (for the control plane's own client). */
  connectInternal(): Duplex;
  /** Closes the connections of node `worker` (after its credential was revoked). */
  disconnect(worker: string): void;
  /** Where node `worker` is connected from (`ip:port` as the listener sees it), undefined when not connected. */
  connection(worker: string): { remote: string } | undefined;
  /** Disconnects every client and stops listening. */
  stop(): Promise<void>;
}

type Identity = { kind: "control" } | { kind: "anonymous" } | { kind: "node"; id: string };

/** An aedes authentication error with its CONNACK return code. */
function refused(code: 4 | 5 | 2, message: string) {
  return Object.assign(new Error(message), { returnCode: code });
}

/**
 * The worker id of a TLS client: the CN of a certificate issued and signed by `ca`, in its validity
 * period. The TLS handshake already proved the client holds the certificate's key; the chain is
 * checked here with node:crypto because Deno's node:tls server does not apply `ca` to client
 * certificates (authorizationError UNABLE_TO_VERIFY_LEAF_SIGNATURE). One CA, no intermediates.
 */
function certIdentity(conn: unknown, ca: X509Certificate | undefined): string | undefined {
  if (!ca || !(conn instanceof tls.TLSSocket)) return undefined;
  const peer = conn.getPeerCertificate();
  if (!peer?.raw) return undefined;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(peer.raw);
  } catch {
    return undefined;
  }
  if (!conn.authorized) {
    const now = Date.now();
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return undefined;
    if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) return undefined;
  }
  const cn = peer.subject?.CN;
  return typeof cn === "string" && WORKER_ID.test(cn) ? cn : undefined;
}

/** Starts aedes on `host:port` (port 0: any free port). */
export async function startBroker(
  opts: { host: string; port: number; auth: BrokerAuth; tls?: BrokerTls },
): Promise<EmbeddedBroker> {
  let clientCa: X509Certificate | undefined;
  try {
    clientCa = opts.tls?.clientCa ? new X509Certificate(opts.tls.clientCa) : undefined;
  } catch (e) {
    throw new BrokerError(`unusable MQTT client CA certificate: ${(e as Error).message}`);
  }
  const identities = new WeakMap<Client, Identity>();
  const internal = new WeakSet<object>();
  // A refusal is logged at most once per 10 s per reason (an attacker cannot flood the log).
  const refusals = new RateLimitedLog((msg, fields) => log.warn(msg, fields));
  const warn = (reason: string, fields: Record<string, unknown>) => refusals.note(reason, reason, fields);
  const broker = await Aedes.createBroker({
    authenticate(client, username, password, done) {
      const remote = (client.conn as net.Socket).remoteAddress ?? "in-process";
      if (internal.has(client.conn)) {
        identities.set(client, { kind: "control" });
        return done(null, true);
      }
      if (opts.auth.allowAnonymous) {
        identities.set(client, { kind: "anonymous" });
        return done(null, true);
      }
      const fromCert = certIdentity(client.conn, clientCa);
      let id: string;
      if (fromCert !== undefined && (username === undefined || username === fromCert)) {
        id = fromCert;
      } else if (username !== undefined && password !== undefined) {
        if (!opts.auth.verify(username, password)) {
          warn("mqtt connection refused: bad username or password", { username, remote });
          return done(refused(4, "bad username or password"), null);
        }
        id = username;
      } else {
        warn("mqtt connection refused: no credentials", { client: client.id, remote });
        return done(refused(5, "not authorized"), null);
      }
      if (client.id !== id) {
        warn("mqtt connection refused: client id differs from the node id", {
          client: client.id,
          id,
          remote,
        });
        return done(refused(2, "client id must equal the node id"), null);
      }
      identities.set(client, { kind: "node", id });
      done(null, true);
    },
    authorizePublish(client, packet, done) {
      // null: a will left by a client of another (dead) broker instance; we have none to honour
      const who = client ? identities.get(client) : undefined;
      if (!who || who.kind === "node" && !mayPublish(who.id, packet.topic)) {
        warn("mqtt publish refused", { client: client?.id, topic: packet.topic });
        return done(new Error(`not authorized to publish on ${packet.topic}`));
      }
      done(null);
    },
    authorizeSubscribe(client, sub, done) {
      const who = identities.get(client);
      if (!who || who.kind === "node" && !maySubscribe(who.id, sub.topic)) {
        warn("mqtt subscribe refused", { client: client.id, topic: sub.topic });
        return done(null, null); // SUBACK 0x80, the connection stays
      }
      done(null, sub);
    },
  });
  const sockets = new Set<net.Socket>();
  const onSocket = (socket: net.Socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    broker.handle(socket);
  };
  let server: net.Server;
  try {
    server = opts.tls
      ? tls.createServer({
        cert: opts.tls.cert,
        key: opts.tls.key,
        noDelay: true,
        ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: false } : {}),
      }, onSocket)
      : net.createServer({ noDelay: true }, onSocket);
  } catch (e) {
    await new Promise<void>((r) => broker.close(() => r()));
    throw new BrokerError(`unusable MQTT TLS certificate or key: ${(e as Error).message}`);
  }
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (e) {
    await new Promise<void>((r) => broker.close(() => r()));
    throw new BrokerError(`cannot listen for MQTT on ${opts.host}:${opts.port}: ${(e as Error).message}`);
  }
  server.on("error", (e) => log.error("listener error", { error: e.message }));
  server.on("tlsClientError", (e: Error) => log.debug("TLS handshake failed", { error: e.message }));
  broker.on("clientError", (client, e) => log.debug("client error", { client: client.id, error: e.message }));
  const port = (server.address() as net.AddressInfo).port;
  log.info("embedded broker listening", {
    host: opts.host,
    port,
    tls: opts.tls ? (opts.tls.clientCa ? "client certificates accepted" : "server only") : "off",
    auth: opts.auth.allowAnonymous ? "ANONYMOUS ALLOWED (no authentication, no ACL)" : "required",
  });
  const streams = new Set<Duplex>();
  let stopped: Promise<void> | undefined;
  return {
    host: opts.host,
    port,
    tls: opts.tls !== undefined,
    connectInternal() {
      const [ours, theirs] = duplexPair();
      // aedes reads with read(null) and expects every buffered byte (as from a socket); Deno's
      // duplexPair returns one chunk only, and the rest would wait for a 'readable' that never comes.
      const read = theirs.read.bind(theirs);
      theirs.read = (n?: number | null) =>
        n === undefined || n === null ? read(theirs.readableLength || undefined) : read(n);
      internal.add(theirs);
      streams.add(theirs);
      // A pair does not pass a close on: either side closing closes both (as a socket would).
      theirs.on("close", () => {
        streams.delete(theirs);
        ours.destroy();
      });
      ours.on("close", () => theirs.destroy());
      broker.handle(theirs);
      return ours;
    },
    disconnect(worker: string) {
      const c = (broker as unknown as { clients: Record<string, Client | undefined> }).clients[worker];
      if (c && identities.get(c)?.kind === "node") c.close();
    },
    connection(worker: string) {
      const c = (broker as unknown as { clients: Record<string, Client | undefined> }).clients[worker];
      if (!c || internal.has(c.conn) || identities.get(c)?.kind === "control") return undefined;
      const sock = c.conn as Partial<net.Socket>;
      const ip = sock.remoteAddress;
      if (!ip) return { remote: "unknown" };
      const host = ip.includes(":") ? `[${ip.replace(/^::ffff:/, "")}]` : ip;
      return { remote: `${/^\[[0-9.]+\]$/.test(host) ? host.slice(1, -1) : host}:${sock.remotePort ?? ""}` };
    },
    stop() {
      stopped ??= (async () => {
        const closed = new Promise<void>((r) => server.close(() => r()));
        await new Promise<void>((r) => broker.close(() => r()));
        for (const s of sockets) s.destroy();
        for (const s of streams) s.destroy();
        await closed;
      })();
      return stopped;
    },
  };
}
