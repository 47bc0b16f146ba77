/**
 * The control plane for clusters without an Oakestra orchestrator (`netmanager control`): address
 * allocation with release and reuse, table-query resolution, interests and update pushes over MQTT,
 * an HTTP API in the style of Oakestra's root service manager, state that survives restarts, and an
 * embedded MQTT broker (or an external one).
 *
 * @example
 * ```ts
 * import { startControl } from "./mod.ts";
 * const c = await startControl({ stateDir: "/var/lib/netmanager/control" });
 * // … nodes connect to mqtt://<host>:10003, the API is on http://127.0.0.1:10100
 * await c.stop();
 * ```
 */
export * from "./alloc.ts";
export * from "./state.ts";
export * from "./schemas.ts";
export * from "./result.ts";
export * from "./store.ts";
export * from "./rows.ts";
export * from "./etcd_store.ts";
export * from "./mqtt.ts";
export * from "./http.ts";
export * from "./broker.ts";
export * from "./client.ts";
export * from "./auth.ts";
export * from "./service.ts";
export * from "./report.ts";
export * from "./view.ts";
export * from "./web.ts";
