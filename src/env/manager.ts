/**
 * The environment manager: a node's bridge, sysctls and iptables chains, and each instance's
 * veth, addresses, routes and port mappings. Its public methods are also the library API for
 * embedding (named after Kudo's network crate): `setupNode`, `setupIptables`, `cleanNode`,
 * `setupInstance`, `cleanInstance`, plus {@link getNamespaceName}.
 *
 * Guarantees:
 * - deploy is atomic: on any failure every step already done is undone and the address returns to
 *   the pool; the error says what failed; everything is validated before anything changes, and a
 *   rejected redeploy leaves the running instance as it was;
 * - intent is recorded first: a deploy writes a "pending" record (address, veth names, ports) to
 *   the state file before its first kernel change, so a restart (even after SIGKILL) knows every
 *   resource that may exist; veth names carry a random part, so a leftover never collides;
 * - start-up reconciles from the kernel's truth: a record is adopted only when its veth is on the
 *   bridge and its address is on the peer inside its namespace; every other veth on the bridge (or
 *   of ours inside a known container) is removed, so no address has two holders;
 * - one operation per instance at a time; a second deploy of an instance while one runs gets 409;
 * - no process per step: links through rtnetlink, rules as one `iptables-restore` batch (merged
 *   across concurrent deploys).
 *
 * @example
 * ```ts
 * import { loadNodeConfig, parseNodeSubnet } from "../config/mod.ts";
 * import { StateStore } from "./state.ts";
 * declare const pid: number; // a container's process
 * const cfg = await loadNodeConfig();
 * const env = new EnvironmentManager({ cfg, store: new StateStore(cfg.net.StateDir) });
 * await env.setupNode(parseNodeSubnet("10.18.0.64/26"));
 * const { ipv4 } = await env.setupInstance({ kind: "container", pid, job: "a.b.c.d", instance: 0, portMappings: "" });
 * ```
 */
import { removeNetnsResolvConf, writeNetnsResolvConf } from "../dns/netns_resolv.ts";
import {
  ExhaustedError,
  formatIPv4,
  formatIPv6,
  ipv4Bytes,
  OffsetAllocator,
  parseIPv4,
  parseIPv6,
} from "../addr/mod.ts";
import {
  formatNodeSubnet,
  instanceAddr4,
  instanceAddr6,
  type NodeConfig,
  type NodeSubnet,
  parseNodeSubnet,
} from "../config/mod.ts";
import { logger } from "../log.ts";
import { type Family, iptablesSave, RestoreQueue } from "../sys/iptables.ts";
import {
  addNamedNetns,
  closeNetns,
  Links,
  namedNetnsExists,
  netnsByName,
  netnsOfPid,
  removeNamedNetns,
  setupUnikernelDevices,
} from "../sys/links.ts";
import { writeSysctl } from "../sys/sysctl.ts";
import { runTool } from "../sys/command.ts";
import type { CidrBytes } from "../sys/links.ts";
import { jumboTsoSegs } from "../proxy/jumbo.ts";
import { parsePortMappings, type PortMapping, PortMappingError } from "./ports.ts";
import {
  add,
  type ChainNames,
  chainNames,
  del,
  dnatRules,
  instanceForwardRules,
  missingJumps,
  nodeForwardRules,
  nodeMasqueradeRules,
  restoreScript,
  teardownScript,
} from "./rules.ts";
import { emptyState, type InstanceRecord, type NodeState, StateError, type StateStore } from "./state.ts";

const log = logger("env");

/** Job names are exactly four alphanumeric parts of 1..30 characters (reference §3.3). */
export const JOB_NAME = /^[A-Za-z0-9]{1,30}\.[A-Za-z0-9]{1,30}\.[A-Za-z0-9]{1,30}\.[A-Za-z0-9]{1,30}$/;

/** Why a deploy or undeploy failed; `status` is the HTTP status the API answers with. */
export class EnvError extends Error {
  readonly status: 400 | 409 | 500;
  constructor(status: 400 | 409 | 500, message: string) {
    super(message);
    this.name = "EnvError";
    this.status = status;
  }
}

/** The kinds of instances. */
export type InstanceKind = "container" | "unikernel";

/** What `setupInstance` needs. */
export interface InstanceSpec {
  kind: InstanceKind;
  /** PID whose network namespace the container uses (containers only). */
  pid?: number;
  job: string;
  instance: number;
  /** The NodeEngine's port-mapping string (§4.5). */
  portMappings: string;
}

/** Addresses given to an instance. */
export interface InstanceAddresses {
  ipv4: string;
  ipv6: string;
}

/** What `cleanNode` removed. */
export interface CleanReport {
  instances: number;
  links: string[];
  netns: string[];
  rules: boolean;
  stateFile: boolean;
}

/** Construction options. */
export interface EnvOptions {
  cfg: NodeConfig;
  store: StateStore;
  /** Start from an empty state when the state file is unusable (`netmanager clean`). */
  ignoreBadState?: boolean;
}

/**
 * The bridge's fixed MAC: locally administered unicast, derived from the bridge name and the node
 * subnet (unique per node in a cluster), so it is the same after every restart.
 *
 * @example
 * ```ts
 * const mac = await bridgeMac("goProxyBridge", "10.18.0.64/26,fc00::a:1200:4000/120");
 * (mac[0] & 3) === 2; // true
 * ```
 */
export async function bridgeMac(bridge: string, subnet: string): Promise<Uint8Array> {
  const h = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`netmanager-bridge|${bridge}|${subnet}`)),
  );
  const mac = h.slice(0, 6);
  mac[0] = (mac[0] & 0xfc) | 0x02; // locally administered, unicast
  return mac;
}

function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

function samePorts(a: readonly PortMapping[], b: readonly PortMapping[]): boolean {
  const k = (p: PortMapping) => `${p.proto}/${p.hostPort}/${p.containerPort}`;
  const sa = new Set(a.map(k));
  return a.length === b.length && b.every((p) => sa.has(k(p)));
}

function portsMinus(a: readonly PortMapping[], b: readonly PortMapping[]): PortMapping[] {
  return a.filter((p) =>
    !b.some((q) => q.proto === p.proto && q.hostPort === p.hostPort && q.containerPort === p.containerPort)
  );
}

/** Name of a unikernel's named network namespace (Oakestra: `<job>.instance.<n>`), with the configured prefix. */
export function getNamespaceName(prefix: string, job: string, instance: number): string {
  return `${prefix}${job}.instance.${instance}`;
}

/**
 * Named namespaces under /run/netns shaped like our unikernels' (`<prefix><job of four labels>
 * .instance.<n>`, {@link getNamespaceName}) that hold the unikernel bridge `virbr0` and no veth any
 * more: their node side is gone.
 */
async function orphanUnikernelNetns(prefix: string): Promise<string[]> {
  const esc = prefix.replace(/[.]/g, "\\.");
  const shape = new RegExp(`^${esc}[^./]+\\.[^./]+\\.[^./]+\\.[^./]+\\.instance\\.\\d+$`);
  let names: string[];
  try {
    names = [...Deno.readDirSync("/run/netns")].map((e) => e.name).filter((n) => shape.test(n));
  } catch {
    return []; // no named namespaces at all
  }
  const orphans: string[] = [];
  for (const n of names) {
    const bridge = await runTool("ip", ["-n", n, "-o", "link", "show", "dev", "virbr0"]);
    const veths = await runTool("ip", ["-n", n, "-o", "link", "show", "type", "veth"]);
    if (bridge.code === 0 && veths.code === 0 && veths.stdout.trim() === "") orphans.push(n);
  }
  return orphans;
}

/** True when `r` is another instance than `key` and maps one of `ports`' host ports. */
function portsClash(key: string, ports: readonly PortMapping[], r: InstanceRecord): boolean {
  return r.key !== key &&
    ports.some((p) => r.ports.some((q) => q.proto === p.proto && q.hostPort === p.hostPort));
}

/** Key of an instance in the state (kinds never collide). */
function instanceKey(kind: InstanceKind, job: string, instance: number): string {
  return kind === "container" ? `${job}.${instance}` : `${job}.instance.${instance}`;
}

/** The environment manager of one node. */
export class EnvironmentManager {
  /** The state file could not be read (`ignoreBadState`): clean sweeps by name instead. */
  #stateWasUnusable = false;
  readonly #cfg: NodeConfig;
  readonly #store: StateStore;
  #state: NodeState;
  #links: Links | undefined;
  #subnet: NodeSubnet | undefined;
  #alloc: OffsetAllocator | undefined;
  #bridgeIndex = 0;
  readonly #rules = new RestoreQueue();
  readonly #names: ChainNames;
  readonly #byKey = new Map<string, InstanceRecord>();
  /** Undeployed instances whose resources are still being removed, by host veth. */
  readonly #removing = new Map<string, { rec: InstanceRecord; done: Promise<void> }>();
  /** Deploys in progress: reserved and recorded, not yet complete. */
  readonly #pending = new Map<string, InstanceRecord>();
  /** Keys with a deploy queued or running (a second deploy of one of them gets 409). */
  readonly #deploying = new Set<string>();
  /** Pending and removing records of a previous run, removed by `setupNode`'s reconcile. */
  #leftovers: InstanceRecord[] = [];
  readonly #locks = new Map<string, Promise<unknown>>();

  /** Loads the state file (throws StateError when it is corrupt or not a regular file). */
  constructor(opts: EnvOptions) {
    this.#cfg = opts.cfg;
    this.#store = opts.store;
    try {
      this.#state = opts.store.load() ?? emptyState();
    } catch (e) {
      if (!(e instanceof StateError) || !opts.ignoreBadState) throw e;
      log.warn("unusable state file ignored", { error: e.message });
      this.#state = emptyState();
      this.#stateWasUnusable = true;
    }
    for (const r of this.#state.instances) {
      if (r.removing || r.phase === "pending") this.#leftovers.push(r);
      else this.#byKey.set(r.key, r);
    }
    this.#names = chainNames(
      opts.cfg.net.NatChain,
      opts.cfg.net.BridgeName,
      opts.cfg.tun.HostTunnelDeviceName,
    );
  }

  /** The node subnet once `setupNode` ran. */
  get subnet(): NodeSubnet | undefined {
    return this.#subnet;
  }

  /** The subnet recorded by a previous run, if any. */
  get recordedSubnet(): NodeSubnet | undefined {
    return this.#state.subnet ? parseNodeSubnet(this.#state.subnet) : undefined;
  }

  /** Registration recorded by a previous run. */
  get registration(): { workerId?: string; clusterAddress?: string } {
    return { workerId: this.#state.workerId, clusterAddress: this.#state.clusterAddress };
  }

  /** Records the registration (worker id) so a restarted daemon stays registered. */
  recordRegistration(workerId: string, clusterAddress?: string): void {
    this.#state.workerId = workerId;
    this.#state.clusterAddress = clusterAddress;
    this.#save();
  }

  /** Records of the deployed instances. */
  instances(): InstanceRecord[] {
    return [...this.#byKey.values()];
  }

  /**
   * Instances whose host-side veth is gone: their namespace went away (the process died), which
   * destroys the veth pair. One netlink link dump; records being removed are left out.
   *
   * @example
   * ```ts
   * import type { EnvironmentManager } from "./manager.ts";
   * declare const env: EnvironmentManager;
   * const dead = env.goneInstances().map((r) => r.ipv4);
   * ```
   */
  goneInstances(): InstanceRecord[] {
    if (this.#byKey.size === 0) return [];
    const names = new Set(this.#linksOpen().list().map((l) => l.name));
    return [...this.#byKey.values()].filter((r) => !names.has(r.hostVeth) && !this.#removing.has(r.hostVeth));
  }

  #linksOpen(): Links {
    this.#links ??= new Links();
    return this.#links;
  }

  #save(): void {
    this.#state.instances = [
      ...this.#byKey.values(),
      ...this.#pending.values(),
      ...[...this.#removing.values()].map((r) => r.rec),
      ...this.#leftovers,
    ];
    if (this.#alloc) this.#state.allocator = this.#alloc.snapshot();
    this.#store.save(this.#state);
  }

  /**
   * Sets the node up (idempotent): sysctls, bridge with subnet+1 (v4 and v6), our iptables chains
   * and their hooks, then reconciles recorded instances (adopt live ones, remove leftovers).
   */
  async setupNode(subnet: NodeSubnet): Promise<void> {
    const links = this.#linksOpen();
    const text = formatNodeSubnet(subnet);
    if (this.#state.subnet && this.#state.subnet !== text) {
      log.warn("node subnet changed: removing instances of the old subnet", {
        old: this.#state.subnet,
        new: text,
      });
      for (const r of [...this.#byKey.values(), ...this.#leftovers]) await this.#removeResources(r, true);
      this.#byKey.clear();
      this.#leftovers = [];
      this.#state.allocator = undefined;
    }
    const br = this.#cfg.net.BridgeName;
    for (const key of ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]) writeSysctl(key, "1");
    for (const k of ["all", "default"]) writeSysctl(`net/ipv4/conf/${k}/rp_filter`, "0");
    const mac = await bridgeMac(br, text);
    const { index, created } = links.ensureBridge(br, this.#cfg.bridgeMtu, [
      { family: 4, addr: ipv4Bytes(subnet.gateway4), prefixLen: subnet.v4.len },
      { family: 6, addr: subnet.gateway6, prefixLen: subnet.v6.len },
    ], mac);
    writeSysctl(`net/ipv4/conf/${br}/rp_filter`, "0");
    this.#bridgeIndex = index;
    this.#subnet = subnet;
    this.#alloc = new OffsetAllocator(2, subnet.lastOffset);
    this.#state.subnet = text;
    this.#state.bridge = br;
    this.#state.natChain = this.#names.nat;
    log.info(created ? "bridge created" : "bridge kept", { bridge: br, subnet: text, mac: formatMac(mac) });
    await this.#reconcile();
    if (this.#state.allocator) this.#alloc.restore(this.#state.allocator);
    await this.setupIptables();
    this.#save();
  }

  /**
   * Makes records and kernel agree after a restart. Pending and removing records are removed (a
   * pending deploy never answered 200). A ready record is adopted only when its host veth is on
   * the bridge and its peer inside the instance's namespace holds its address, and no adopted
   * record has the same address; otherwise its resources are removed. Then every veth named like
   * our host ends (on the bridge or not) that no adopted record owns is deleted (a veth on the
   * bridge with another name is someone else's, e.g. on a bridge we adopted: logged, left alone), and so is every
   * veth of ours in a known container's namespace that is not an adopted peer: deleting either
   * end of a pair removes the other with its address, so afterwards every address of the subnet
   * has exactly one holder, recorded. Rules are rebuilt from the records by `setupIptables`.
   */
  async #reconcile(): Promise<void> {
    const links = this.#linksOpen();
    const alloc = this.#alloc!;
    const pids = new Set<number>();
    for (const r of [...this.#leftovers, ...this.#byKey.values()]) if (r.pid) pids.add(r.pid);
    for (const r of this.#leftovers) {
      log.info("removing an unfinished deploy or undeploy of the previous run", {
        key: r.key,
        veth: r.hostVeth,
        phase: r.removing ? "removing" : "pending",
      });
      await this.#removeResources(r, false);
    }
    this.#leftovers = [];
    const adopted = new Set<string>();
    for (const r of [...this.#byKey.values()]) {
      const problem = this.#verify(r) ?? (alloc.reserve(r.offset) ? undefined : "address taken twice");
      if (problem === undefined) {
        adopted.add(r.hostVeth).add(r.peerVeth);
        log.info("adopted instance", { key: r.key, ipv4: r.ipv4 });
        continue;
      }
      log.info("removing an instance that is not intact", { key: r.key, reason: problem });
      this.#byKey.delete(r.key);
      await this.#removeResources(r, false);
    }
    const p = this.#cfg.net.VethPrefix;
    const hostName = new RegExp(`^${p}h[0-9a-z]+$`);
    const peerName = new RegExp(`^${p}c[0-9a-z]+$`);
    for (const l of links.list()) {
      if (l.kind !== "veth" || adopted.has(l.name)) continue;
      if (hostName.test(l.name)) {
        log.warn("removing a veth no record owns", { veth: l.name });
        await links.deleteInBackground(l.name);
      } else if (l.master === this.#bridgeIndex) {
        // Not named by us: someone else's port on a bridge we adopted (e.g. a test harness). Never ours to delete.
        log.warn("a veth not named by netmanager is on the bridge: left alone", { veth: l.name });
      }
    }
    for (const pid of pids) {
      let fd: number;
      try {
        fd = netnsOfPid(pid);
      } catch {
        continue; // the process is gone, and with it its namespace
      }
      try {
        for (const l of links.inspectNamespace(fd)) {
          if (l.kind === "veth" && peerName.test(l.name) && !adopted.has(l.name)) {
            log.warn("removing a veth no record owns from a container", { pid, veth: l.name });
            links.deleteIn(fd, l.name);
          }
        }
      } finally {
        closeNetns(fd);
      }
    }
  }

  /** Why a record does not match the kernel, or undefined when it does. */
  #verify(r: InstanceRecord): string | undefined {
    const links = this.#linksOpen();
    const host = links.link(r.hostVeth);
    if (!host) return "its veth is gone";
    if (host.master !== this.#bridgeIndex) return "its veth is not on the bridge";
    let fd: number;
    try {
      if (r.kind === "container") fd = netnsOfPid(r.pid ?? 0);
      else if (r.netns && namedNetnsExists(r.netns)) fd = netnsByName(r.netns);
      else return "its namespace is gone";
    } catch {
      return "its process is gone";
    }
    try {
      const peer = links.inspectNamespace(fd).find((l) => l.name === r.peerVeth);
      if (!peer) return "its peer veth is not in the namespace";
      if (!peer.addrs.some((a) => a.family === 4 && a.addr.join(".") === r.ipv4)) {
        return "its address is not on the peer";
      }
    } finally {
      closeNetns(fd);
    }
    return undefined;
  }

  /**
   * Configures the data plane's TUN (created by the proxy, which owns its fd): MTU, the TunnelIP
   * with the platform prefix (/12: its connected route carries 10.16.0.0/12, ServiceIPs included)
   * and the IPv6 TUN address with /7 (fc00::/7), rp_filter off, no router solicitations.
   */
  setupTun(name: string): void {
    const t = this.#cfg.tun;
    writeSysctl(`net/ipv4/conf/${name}/rp_filter`, "0");
    writeSysctl(`net/ipv6/conf/${name}/accept_ra`, "0");
    writeSysctl(`net/ipv6/conf/${name}/router_solicitations`, "0");
    this.#linksOpen().configureTun(name, t.MTUsize, [
      { family: 4, addr: ipv4Bytes(parseIPv4(t.TunnelIP)), prefixLen: 12 },
      { family: 6, addr: parseIPv6(t.TunNetIPv6), prefixLen: 7 },
    ], t.TxQueueLen);
  }

  /**
   * (Re)applies every rule this node needs, from the records: node rules, per-instance forward and
   * port-mapping rules, and the hooks into the built-in chains (only those missing). Idempotent;
   * use it after a reboot or after someone flushed the tables.
   */
  async setupIptables(): Promise<void> {
    const subnet = this.#requireSubnet();
    const n = this.#names;
    const recs = [...this.#byKey.values()];
    for (const family of [4, 6] as const) {
      const saved = (await iptablesSave(family, "filter")) + (await iptablesSave(family, "nat"));
      const jumps = missingJumps(n, saved);
      const fwd = [
        ...nodeForwardRules(n),
        ...(family === 4 ? recs.flatMap((r) => instanceForwardRules(n, r.hostVeth)) : []),
      ];
      const dnat = recs.flatMap((r) => dnatRules(family, r.ports, family === 4 ? r.ipv4 : r.ipv6));
      const sub = family === 4
        ? formatNodeSubnet(subnet).split(",")[0]
        : formatNodeSubnet(subnet).split(",")[1];
      const script = restoreScript([
        {
          table: "filter",
          declare: [n.fwd],
          lines: [...fwd.map(add(n.fwd)), ...jumps.filter((j) => j.table === "filter").map((j) => j.line)],
        },
        {
          table: "nat",
          declare: [n.nat, n.post],
          lines: [
            ...dnat.map(add(n.nat)),
            ...nodeMasqueradeRules(family, sub).map(add(n.post)),
            ...jumps.filter((j) => j.table === "nat").map((j) => j.line),
          ],
        },
      ]);
      await this.#rules.apply(family, script);
    }
  }

  #requireSubnet(): NodeSubnet {
    if (!this.#subnet || !this.#alloc) throw new EnvError(400, "node is not set up yet (not registered)");
    return this.#subnet;
  }

  /** Runs `fn` after any other operation on the same key has finished. */
  async #serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(key) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this.#locks.set(key, next);
    try {
      return await next;
    } finally {
      if (this.#locks.get(key) === next) this.#locks.delete(key);
    }
  }

  /**
   * Gives an instance its network: container by PID (veth peer into the PID's namespace) or
   * unikernel (a named namespace `getNamespaceName(...)` with `virbr0`/`tap0`). Atomic.
   * Deploying the same instance again with the same PID returns its addresses and applies changed
   * port mappings; with another PID it is refused (409) while the old instance's network is intact
   * (undeploy first, as the NodeEngine does on a restart) and replaced once the old one is gone.
   * A second deploy of an instance while one is in progress gets 409.
   */
  setupInstance(spec: InstanceSpec): Promise<InstanceAddresses> {
    if (!JOB_NAME.test(spec.job)) {
      return Promise.reject(
        new EnvError(
          400,
          `invalid job name "${spec.job}": expected app.appns.service.servicens (alphanumeric, 1..30 each)`,
        ),
      );
    }
    const key = instanceKey(spec.kind, spec.job, spec.instance);
    if (this.#deploying.has(key)) {
      return Promise.reject(
        new EnvError(409, `a deploy of ${key} is already in progress; retry once it has finished`),
      );
    }
    this.#deploying.add(key);
    return this.#serial(key, () => this.#deploy(key, spec)).finally(() => this.#deploying.delete(key));
  }

  /**
   * One deploy, run while no other operation on `key` runs. Everything the request says is checked
   * before anything changes (job, port mappings, the PID's namespace, host-port clashes), so a
   * rejected request leaves a running instance as it was.
   */
  async #deploy(key: string, spec: InstanceSpec): Promise<InstanceAddresses> {
    this.#requireSubnet();
    let ports: PortMapping[];
    try {
      ports = parsePortMappings(spec.portMappings, this.#cfg.tun.TunnelPort);
    } catch (e) {
      throw new EnvError(400, (e as PortMappingError).message);
    }
    let nsFd = -1;
    if (spec.kind === "container") {
      if (spec.pid === undefined || !Number.isInteger(spec.pid) || spec.pid <= 0) {
        throw new EnvError(
          400,
          `invalid pid ${spec.pid}: a container deploy needs the PID of the container's task`,
        );
      }
      try {
        nsFd = netnsOfPid(spec.pid);
      } catch (e) {
        throw new EnvError(
          400,
          `cannot open the network namespace of pid ${spec.pid}: ${(e as Error).message}`,
        );
      }
    }
    try {
      const existing = this.#byKey.get(key);
      if (existing && existing.kind !== spec.kind) {
        throw new EnvError(409, `instance ${key} is deployed as a ${existing.kind}; undeploy it first`);
      }
      if (existing && (spec.kind === "unikernel" || existing.pid === spec.pid)) {
        return await this.#updatePorts(existing, ports);
      }
      if (existing) {
        const problem = this.#verify(existing);
        if (problem === undefined) {
          throw new EnvError(
            409,
            `instance ${key} is running (pid ${existing.pid}, ${existing.ipv4}); undeploy it before ` +
              `deploying it with pid ${spec.pid}`,
          );
        }
        log.info("instance redeployed with a new PID, the old one is gone: replacing its network", {
          key,
          old: existing.pid,
          pid: spec.pid,
          reason: problem,
        });
        this.#undeploy(existing);
      }
      await this.#portsReleased(key, ports);
      return await this.#create(key, spec, ports, nsFd);
    } finally {
      if (nsFd >= 0) closeNetns(nsFd);
    }
  }

  /** Waits until instances being removed that map one of these host ports are gone. */
  async #portsReleased(key: string, ports: PortMapping[]): Promise<void> {
    await Promise.all(
      [...this.#removing.values()].filter((r) => portsClash(key, ports, r.rec)).map((r) => r.done),
    );
  }

  /**
   * Throws 409 when another instance (deployed or being deployed) maps one of these host ports.
   * Synchronous, so that the caller claims the ports (a pending record, `rec.ports`) before any
   * other deploy can run its own check.
   */
  #assertPortsFree(key: string, ports: PortMapping[]): void {
    const clashes = (r: InstanceRecord) => portsClash(key, ports, r);
    for (const r of [...this.#byKey.values(), ...this.#pending.values()]) {
      if (!clashes(r)) continue;
      const p = ports.find((p) => r.ports.some((q) => q.proto === p.proto && q.hostPort === p.hostPort))!;
      throw new EnvError(409, `host port ${p.hostPort}/${p.proto} is already mapped to ${r.key}`);
    }
  }

  /**
   * Same instance deployed again: new port mappings replace the old ones (make before break: the
   * new DNAT rules go in before the old ones come out); the same mappings change nothing.
   */
  async #updatePorts(rec: InstanceRecord, ports: PortMapping[]): Promise<InstanceAddresses> {
    const addrs = { ipv4: rec.ipv4, ipv6: rec.ipv6 };
    if (samePorts(rec.ports, ports)) return addrs;
    await this.#portsReleased(rec.key, ports);
    this.#assertPortsFree(rec.key, ports);
    const added = portsMinus(ports, rec.ports);
    const removed = portsMinus(rec.ports, ports);
    // Claim the new host ports before awaiting, so a concurrent deploy's clash check sees them; the
    // old ones stay claimed until their rules are gone.
    const old = rec.ports;
    rec.ports = [...old, ...added];
    try {
      await this.#applyPortRules(rec, added, "add");
    } catch (e) {
      rec.ports = old;
      await this.#applyPortRules(rec, added, "del").catch(() => {});
      throw new EnvError(500, `changing the port mappings of ${rec.key} failed: ${(e as Error).message}`);
    }
    rec.ports = ports;
    this.#save();
    await this.#applyPortRules(rec, removed, "del").catch((e) =>
      log.warn("removing old port mappings failed", { key: rec.key, error: String(e) })
    );
    log.info("port mappings changed", { key: rec.key, added: added.length, removed: removed.length });
    return addrs;
  }

  /** Adds or deletes the DNAT rules of `ports` for `rec`'s addresses (both families). */
  async #applyPortRules(rec: InstanceRecord, ports: PortMapping[], op: "add" | "del"): Promise<void> {
    if (ports.length === 0) return;
    const f = op === "add" ? add : del;
    await Promise.all(([4, 6] as const).map(async (family) => {
      const lines = dnatRules(family, ports, family === 4 ? rec.ipv4 : rec.ipv6).map(f(this.#names.nat));
      if (op === "add") return this.#rules.apply(family, restoreScript([{ table: "nat", lines }]));
      for (const line of lines) {
        await this.#rules.apply(family, `*nat\n${line}\nCOMMIT\n`).catch(() => {});
      }
    }));
  }

  /** A veth name suffix: a counter and random characters, together as long as IFNAMSIZ allows. */
  #vethId(): string {
    const room = 15 - this.#cfg.net.VethPrefix.length - 1; // ≥ 8 (the prefix has at most 6)
    const n = (this.#state.vethCounter++).toString(36).slice(-(room - 4));
    let r = "";
    for (const b of crypto.getRandomValues(new Uint8Array(room - n.length))) r += (b % 36).toString(36);
    return n + r;
  }

  /** A new instance: reserve and record, then create (veth, addresses, routes, rules), then mark ready. */
  async #create(
    key: string,
    spec: InstanceSpec,
    ports: PortMapping[],
    containerNsFd: number,
  ): Promise<InstanceAddresses> {
    // From this check to the pending record below nothing awaits: the ports are claimed atomically.
    this.#assertPortsFree(key, ports);
    const subnet = this.#requireSubnet();
    const links = this.#linksOpen();
    const alloc = this.#alloc!;
    let offset: number;
    try {
      offset = alloc.allocate();
    } catch (e) {
      if (e instanceof ExhaustedError) {
        throw new EnvError(500, `${e.message} (node subnet ${formatNodeSubnet(subnet)})`);
      }
      throw e;
    }
    const v4 = instanceAddr4(subnet, offset);
    const v6 = instanceAddr6(subnet, offset);
    const p = this.#cfg.net.VethPrefix;
    const id = this.#vethId();
    const rec: InstanceRecord = {
      key,
      job: spec.job,
      instance: spec.instance,
      kind: spec.kind,
      pid: spec.kind === "container" ? spec.pid : undefined,
      netns: spec.kind === "unikernel"
        ? getNamespaceName(this.#cfg.net.NetnsPrefix, spec.job, spec.instance)
        : undefined,
      hostVeth: `${p}h${id}`,
      peerVeth: `${p}c${id}`,
      offset,
      ipv4: formatIPv4(v4),
      ipv6: formatIPv6(v6),
      ports,
      createdAt: new Date().toISOString(),
      phase: "pending",
    };
    // Intent first: a crash from here on leaves a record of everything that may exist.
    this.#pending.set(key, rec);
    this.#save();
    const undo: Array<() => void | Promise<void>> = [];
    let nsFd = containerNsFd;
    try {
      if (rec.netns) {
        const ns = rec.netns;
        if (namedNetnsExists(ns)) removeNamedNetns(ns); // leftover of an unrecorded deploy
        addNamedNetns(ns);
        undo.push(() => void removeNamedNetns(ns));
        undo.push(() => void removeNetnsResolvConf(ns));
        nsFd = netnsByName(ns);
      }
      const addr4: CidrBytes = { family: 4, addr: ipv4Bytes(v4), prefixLen: subnet.v4.len };
      const addr6: CidrBytes = { family: 6, addr: v6, prefixLen: subnet.v6.len };
      // A previous holder of the address may have left its MAC in the node's neighbour table.
      links.forgetNeighbours(this.#bridgeIndex, [addr4, addr6]);
      const { announceError } = links.setupInstance({
        hostVeth: rec.hostVeth,
        peerVeth: rec.peerVeth,
        mtu: this.#cfg.bridgeMtu,
        bridgeIndex: this.#bridgeIndex,
        nsFd,
        v4: addr4,
        v6: addr6,
        gw4: ipv4Bytes(subnet.gateway4),
        gw6: subnet.gateway6,
        // Chunks of the TUN's MTU; sealed ones (TunnelSecurity not off) longer in their sends.
        gsoMaxSegs: jumboTsoSegs(this.#cfg.bridgeMtu, {
          tunMtu: this.#cfg.tun.MTUsize,
          secure: this.#cfg.net.TunnelSecurity !== "off",
        }),
      });
      if (announceError) log.warn("announcing the new address failed", { key, error: announceError });
      undo.push(() => void links.deleteByName(rec.hostVeth));
      if (rec.kind === "unikernel") await this.#setupUnikernelInside(rec);
      await this.#applyInstanceRules(rec, "add");
      undo.push(() => this.#applyInstanceRules(rec, "del"));
      rec.phase = "ready";
      this.#pending.delete(key);
      this.#byKey.set(key, rec);
      this.#save();
      log.info("instance deployed", {
        key,
        ipv4: rec.ipv4,
        ipv6: rec.ipv6,
        veth: rec.hostVeth,
        ports: ports.length,
      });
      return { ipv4: rec.ipv4, ipv6: rec.ipv6 };
    } catch (e) {
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (err) {
          log.error("rollback step failed", { key, error: String(err) });
        }
      }
      this.#pending.delete(key);
      this.#byKey.delete(key);
      alloc.release(offset);
      this.#save();
      if (e instanceof EnvError) throw e;
      throw new EnvError(500, `deploy of ${key} failed: ${e instanceof Error ? e.message : e}`);
    } finally {
      if (nsFd >= 0 && nsFd !== containerNsFd) closeNetns(nsFd);
    }
  }

  async #setupUnikernelInside(rec: InstanceRecord): Promise<void> {
    const ns = rec.netns!;
    await setupUnikernelDevices(ns, this.#cfg.bridgeMtu);
    if (this.#cfg.net.Dns && this.#subnet) {
      // Named namespaces resolve through the node's DNS server (removed with the namespace).
      const s = this.#subnet;
      writeNetnsResolvConf(ns, [formatIPv4(s.gateway4), formatIPv6(s.gateway6)], this.#cfg.net.DnsSuffix);
    }
    const script = restoreScript([{
      table: "nat",
      lines: [
        `-A POSTROUTING -o ${rec.peerVeth} -j SNAT --to-source ${rec.ipv4}`,
        `-A PREROUTING -i ${rec.peerVeth} -j DNAT --to-destination 192.168.1.2`,
      ],
    }]);
    await new RestoreQueue(ns).apply(4, script);
  }

  /** The rules of one instance per family. */
  #instanceRules(rec: InstanceRecord, family: Family, op: "add" | "del"): string {
    const n = this.#names;
    const f = op === "add" ? add : del;
    const fwd = family === 4 ? instanceForwardRules(n, rec.hostVeth).map(f(n.fwd)) : [];
    const dnat = dnatRules(family, rec.ports, family === 4 ? rec.ipv4 : rec.ipv6).map(f(n.nat));
    return restoreScript([{ table: "filter", lines: fwd }, { table: "nat", lines: dnat }]);
  }

  async #applyInstanceRules(rec: InstanceRecord, op: "add" | "del"): Promise<void> {
    const jobs = ([4, 6] as const).map(async (family) => {
      const script = this.#instanceRules(rec, family, op);
      if (op === "add") return this.#rules.apply(family, script);
      try {
        await this.#rules.apply(family, script);
      } catch {
        // Some rule is already gone (someone flushed a chain): delete the others one by one.
        for (const line of script.split("\n").filter((l) => l.startsWith("-D "))) {
          const table = line.includes(`-D ${this.#names.fwd} `) ? "filter" : "nat";
          await this.#rules.apply(family, `*${table}\n${line}\nCOMMIT\n`).catch(() => {});
        }
      }
    });
    await Promise.all(jobs);
  }

  /**
   * Removes an instance's network: rules, veth pair, named namespace (unikernels), address.
   * Resolves once the instance is detached; the kernel-side removal completes in the background
   * (see {@link whenSettled}). Returns false when the instance is unknown (the API answers 200
   * then, as Oakestra does).
   */
  cleanInstance(kind: InstanceKind, job: string, instance: number): Promise<boolean> {
    const key = instanceKey(kind, job, instance);
    return this.#serial(key, () => {
      const rec = this.#byKey.get(key);
      if (!rec) return Promise.resolve(false);
      this.#undeploy(rec);
      return Promise.resolve(true);
    });
  }

  /**
   * Detaches an instance at once (record marked as removing, address and ports still reserved)
   * and removes its resources in the background: deleting a veth waits for an RCU grace period
   * and an iptables delete rescans the chain, ~15 ms each, which the NodeEngine need not wait for.
   * The address returns to the pool when the removal is complete; a deploy that needs one of the
   * host ports waits for it; a crash in between is reconciled from the state file.
   */
  #undeploy(rec: InstanceRecord): void {
    this.#byKey.delete(rec.key);
    rec.removing = true;
    const alloc = this.#alloc;
    const done = (async () => {
      try {
        await this.#removeResources(rec, true);
      } catch (e) {
        log.error("removing instance resources failed", { key: rec.key, error: String(e) });
      } finally {
        this.#removing.delete(rec.hostVeth);
        if (alloc === this.#alloc) alloc?.release(rec.offset);
        if (this.#subnet) this.#save();
        log.info("instance removed", { key: rec.key, ipv4: rec.ipv4 });
      }
    })();
    this.#removing.set(rec.hostVeth, { rec, done });
    this.#save();
  }

  /** How many undeployed instances are still being removed. */
  get pendingRemovals(): number {
    return this.#removing.size;
  }

  /** Resolves when every background removal has finished (tests, shutdown, embedding callers). */
  async whenSettled(): Promise<void> {
    while (this.#removing.size > 0) await Promise.all([...this.#removing.values()].map((r) => r.done));
  }

  async #removeResources(rec: InstanceRecord, rules: boolean): Promise<void> {
    if (rules) await this.#applyInstanceRules(rec, "del");
    await this.#linksOpen().deleteInBackground(rec.hostVeth);
    if (rec.kind === "unikernel" && rec.netns) {
      removeNetnsResolvConf(rec.netns);
      try {
        removeNamedNetns(rec.netns);
      } catch (e) {
        log.warn("cannot remove named netns", { netns: rec.netns, error: String(e) });
      }
    }
    // The node must not keep sending to the old MAC when the address is handed out again.
    if (this.#bridgeIndex > 0 && this.#subnet) {
      try {
        this.#linksOpen().forgetNeighbours(this.#bridgeIndex, [
          { family: 4, addr: ipv4Bytes(parseIPv4(rec.ipv4)) },
          { family: 6, addr: parseIPv6(rec.ipv6) },
        ]);
      } catch (e) {
        log.warn("cannot flush neighbour entries", { key: rec.key, error: String(e) });
      }
    }
  }

  /**
   * Daemon shutdown: instances keep their networking (their containers still run) and the state
   * stays for the next start. A node without instances is torn down completely.
   */
  async shutdown(): Promise<void> {
    await this.whenSettled();
    if (this.#subnet && this.#byKey.size === 0) await this.#teardownNode();
    else if (this.#subnet) this.#save();
    this.#links?.close();
    this.#links = undefined;
  }

  async #teardownNode(): Promise<{ rules: boolean; bridge: boolean }> {
    let rules = false;
    for (const family of [4, 6] as const) {
      const saved = (await iptablesSave(family, "filter")) + (await iptablesSave(family, "nat"));
      const script = teardownScript(this.#names, saved);
      if (script) {
        await this.#rules.apply(family, script);
        rules = true;
      }
    }
    const bridge = this.#linksOpen().deleteByName(this.#cfg.net.BridgeName);
    this.#subnet = undefined;
    this.#alloc = undefined;
    return { rules, bridge };
  }

  /**
   * Removes everything this node created: every recorded instance's veth, named namespace and
   * rules, veths still attached to the bridge, the bridge, the TUN, our chains and hooks, and the
   * state file (Kudo's `clean_node`).
   */
  async cleanNode(): Promise<CleanReport> {
    await this.whenSettled();
    const links = this.#linksOpen();
    const report: CleanReport = { instances: 0, links: [], netns: [], rules: false, stateFile: false };
    for (const rec of [...this.#byKey.values(), ...this.#pending.values(), ...this.#leftovers]) {
      if (links.deleteByName(rec.hostVeth)) report.links.push(rec.hostVeth);
      if (rec.netns) removeNetnsResolvConf(rec.netns);
      if (rec.netns && removeNamedNetns(rec.netns)) report.netns.push(rec.netns);
      report.instances++;
    }
    this.#byKey.clear();
    this.#pending.clear();
    this.#leftovers = [];
    const brIndex = links.index(this.#cfg.net.BridgeName);
    if (brIndex !== undefined) {
      for (const l of links.list()) {
        if (l.master === brIndex && l.kind === "veth" && links.deleteByName(l.name)) {
          report.links.push(l.name);
        }
      }
    }
    // Without usable records, our unikernel namespaces are known by their name's shape and by
    // having lost their veth with the bridge ports above (another node's still has its own).
    if (this.#stateWasUnusable) {
      for (const name of await orphanUnikernelNetns(this.#cfg.net.NetnsPrefix)) {
        removeNetnsResolvConf(name);
        if (removeNamedNetns(name)) report.netns.push(name);
      }
    }
    const { rules, bridge } = await this.#teardownNode();
    report.rules = rules;
    if (bridge) report.links.push(this.#cfg.net.BridgeName);
    if (links.deleteByName(this.#cfg.tun.HostTunnelDeviceName)) {
      report.links.push(this.#cfg.tun.HostTunnelDeviceName);
    }
    report.stateFile = this.#store.remove();
    this.#state = emptyState();
    links.close();
    this.#links = undefined;
    return report;
  }
}
