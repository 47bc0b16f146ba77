/**
 * The node's control plane over MQTT (reference §2): {@link NodeControl} and the payload contract.
 *
 * @example
 * ```ts
 * import { type ControlOptions, NodeControl } from "./mod.ts";
 * declare const opts: ControlOptions;
 * const control = await NodeControl.connect(opts);
 * const subnet = await control.requestSubnet(); // { v4: "10.18.0.64", v6: "fc00::" }
 * ```
 */
export * from "./payloads.ts";
export * from "./client.ts";
