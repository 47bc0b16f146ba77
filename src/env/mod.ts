/**
 * The environment manager and its library API for embedding (Kudo-style): construct an
 * {@link EnvironmentManager} and call `setupNode`, `setupIptables`, `setupInstance`,
 * `cleanInstance`, `cleanNode`; {@link getNamespaceName} names a unikernel's namespace.
 *
 * @example
 * ```ts
 * import { EnvironmentManager, getNamespaceName, StateStore } from "./mod.ts";
 * import { loadNodeConfig, parseNodeSubnet } from "../config/mod.ts";
 * const cfg = await loadNodeConfig();
 * const env = new EnvironmentManager({ cfg, store: new StateStore("/var/lib/netmanager") });
 * await env.setupNode(parseNodeSubnet("10.18.0.64/26"));
 * await env.setupInstance({ kind: "unikernel", job: "a.b.c.d", instance: 0, portMappings: "8080:80" });
 * getNamespaceName("", "a.b.c.d", 0); // "a.b.c.d.instance.0"
 * ```
 */
export {
  type CleanReport,
  EnvError,
  EnvironmentManager,
  getNamespaceName,
  type InstanceAddresses,
  type InstanceKind,
  type InstanceSpec,
  JOB_NAME,
} from "./manager.ts";
export { type InstanceRecord, type NodeState, StateError, StateStore } from "./state.ts";
export { formatPortMappings, parsePortMappings, type PortMapping, PortMappingError } from "./ports.ts";
