/**
 * Worker entry of the relay's forwarding loop (see relay_fwd.ts; started by relay.ts). An error it
 * cannot handle is thrown out of the Worker (relay.ts then starts a new one with the allocations).
 * @module
 */
/// <reference lib="deno.worker" />
import { RelayForwarder, type RelayFwdCommand, type RelayFwdEvent } from "./relay_fwd.ts";

const fwd = new RelayForwarder((e: RelayFwdEvent) => self.postMessage(e));
let running = false;
self.onmessage = (ev: MessageEvent<RelayFwdCommand>) => {
  if (ev.data.type === "crash") throw new Error("relay forwarding worker: crash requested (test hook)");
  try {
    fwd.command(ev.data);
  } catch (e) {
    self.postMessage({ type: "error", message: String(e) } satisfies RelayFwdEvent);
    return;
  }
  if (ev.data.type === "init" && !running) {
    running = true;
    // The loop failing is fatal: thrown uncaught, so the main isolate sees the Worker fail.
    fwd.run().catch((e) =>
      setTimeout(() => {
        throw e;
      })
    );
  }
  if (ev.data.type === "stop") self.close();
};
