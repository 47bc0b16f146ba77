/**
 * The node's control plane over MQTT (reference §2): {@link NodeControl} and the payload contract.
 *
 * @example
 * ```ts
 * import { NodeControl } from "./src/control/mod.ts";
 * const control = await NodeControl.connect(opts);
 * await control.requestSubnet();
 * ```
 */
export * from "./payloads.ts";
export * from "./client.ts";
