/**
 * Worker entry of the relay's forwarding loop (see relay_fwd.ts; started by relay.ts).
 * @module
 */
/// <reference lib="deno.worker" />
import { RelayForwarder, type RelayFwdCommand, type RelayFwdEvent } from "./relay_fwd.ts";

const fwd = new RelayForwarder((e: RelayFwdEvent) => self.postMessage(e));
let running = false;
self.onmessage = (ev: MessageEvent<RelayFwdCommand>) => {
  try {
    fwd.command(ev.data);
  } catch (e) {
    self.postMessage({ type: "error", message: String(e) } satisfies RelayFwdEvent);
    return;
  }
  if (ev.data.type === "init" && !running) {
    running = true;
    fwd.run().catch((e) => self.postMessage({ type: "error", message: String(e) } satisfies RelayFwdEvent));
  }
  if (ev.data.type === "stop") self.close();
};
