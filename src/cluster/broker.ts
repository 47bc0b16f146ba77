/**
 * The embedded MQTT broker (npm `aedes` on `node:net`), with TCP_NODELAY on every accepted socket:
 * without it, QoS 1 round trips take ~40 ms (Nagle + delayed ACK, deno-notes §7).
 *
 * @example
 * ```ts
 * const b = await startBroker({ host: "127.0.0.1", port: 0 });
 * console.log(b.port); // the port chosen by the kernel
 * await b.stop();
 * ```
 */
import { Aedes } from "aedes";
import net from "node:net";
import { logger } from "../log.ts";

const log = logger("broker");

/** Raised when the broker cannot listen. */
export class BrokerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BrokerError";
  }
}

/** A running embedded broker. */
export interface EmbeddedBroker {
  /** Address it listens on. */
  readonly host: string;
  /** Port it listens on (the real one when 0 was asked). */
  readonly port: number;
  /** Disconnects every client and stops listening. */
  stop(): Promise<void>;
}

/** Starts aedes on `host:port` (port 0: any free port). */
export async function startBroker(opts: { host: string; port: number }): Promise<EmbeddedBroker> {
  const broker = await Aedes.createBroker();
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    broker.handle(socket);
  });
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
  broker.on("clientError", (client, e) => log.debug("client error", { client: client.id, error: e.message }));
  const port = (server.address() as net.AddressInfo).port;
  log.info("embedded broker listening", { host: opts.host, port });
  let stopped: Promise<void> | undefined;
  return {
    host: opts.host,
    port,
    stop() {
      stopped ??= (async () => {
        const closed = new Promise<void>((r) => server.close(() => r()));
        await new Promise<void>((r) => broker.close(() => r()));
        for (const s of sockets) s.destroy();
        await closed;
      })();
      return stopped;
    },
  };
}
