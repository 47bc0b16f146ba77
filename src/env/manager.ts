/**
 * The environment manager: a node's bridge, sysctls and iptables chains, and each instance's
 * veth, addresses, routes and port mappings. Its public methods are also the library API for
 * embedding (named after Kudo's network crate): `setupNode`, `setupIptables`, `cleanNode`,
 * `setupInstance`, `cleanInstance`, plus {@link getNamespaceName}.
 *
 * Guarantees:
 * - deploy is atomic: on any failure every step already done is undone and the address returns to
 *   the pool; the error says what failed;
 * - every created resource is recorded in the state file before the call returns, so a restart
 *   (even after SIGKILL) reconciles: instances whose veth still exists are adopted, leftovers of
 *   vanished instances are removed, missing node rules are re-applied;
 * - no process per step: links through rtnetlink, rules as one `iptables-restore` batch (merged
 *   across concurrent deploys).
 *
 * @example
 * ```ts
 * const env = new EnvironmentManager({ cfg, store: new StateStore(cfg.net.StateDir) });
 * await env.setupNode(parseNodeSubnet("10.18.0.64/26"));
 * const { ipv4 } = await env.setupInstance({ kind: "container", pid, job: "a.b.c.d", instance: 0, portMappings: "" });
 * ```
 */
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
import { emptyState, type InstanceRecord, type NodeState, type StateStore } from "./state.ts";

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
}

/** Name of a unikernel's named network namespace (Oakestra: `<job>.instance.<n>`), with the configured prefix. */
export function getNamespaceName(prefix: string, job: string, instance: number): string {
  return `${prefix}${job}.instance.${instance}`;
}

/** Key of an instance in the state (kinds never collide). */
function instanceKey(kind: InstanceKind, job: string, instance: number): string {
  return kind === "container" ? `${job}.${instance}` : `${job}.instance.${instance}`;
}

/** The environment manager of one node. */
export class EnvironmentManager {
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
  readonly #locks = new Map<string, Promise<unknown>>();

  /** Loads the state file (throws StateError when it is corrupt). */
  constructor(opts: EnvOptions) {
    this.#cfg = opts.cfg;
    this.#store = opts.store;
    this.#state = opts.store.load() ?? emptyState();
    for (const r of this.#state.instances) this.#byKey.set(r.key, r);
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

  #linksOpen(): Links {
    this.#links ??= new Links();
    return this.#links;
  }

  #save(): void {
    this.#state.instances = [...this.#byKey.values(), ...[...this.#removing.values()].map((r) => r.rec)];
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
      for (const r of [...this.#byKey.values()]) await this.#removeResources(r, true);
      this.#byKey.clear();
      this.#state.allocator = undefined;
    }
    const br = this.#cfg.net.BridgeName;
    for (const key of ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]) writeSysctl(key, "1");
    for (const k of ["all", "default"]) writeSysctl(`net/ipv4/conf/${k}/rp_filter`, "0");
    const { index, created } = links.ensureBridge(br, this.#cfg.bridgeMtu, [
      { family: 4, addr: ipv4Bytes(subnet.gateway4), prefixLen: subnet.v4.len },
      { family: 6, addr: subnet.gateway6, prefixLen: subnet.v6.len },
    ]);
    writeSysctl(`net/ipv4/conf/${br}/rp_filter`, "0");
    this.#bridgeIndex = index;
    this.#subnet = subnet;
    this.#alloc = new OffsetAllocator(2, subnet.lastOffset);
    this.#state.subnet = text;
    this.#state.bridge = br;
    this.#state.natChain = this.#names.nat;
    log.info(created ? "bridge created" : "bridge kept", { bridge: br, subnet: text });

    // Reconcile: adopt instances whose veth survived, clean up the rest.
    for (const r of [...this.#byKey.values()]) {
      const alive = !r.removing && links.index(r.hostVeth) !== undefined &&
        (r.kind === "container" || (r.netns !== undefined && namedNetnsExists(r.netns)));
      if (alive && this.#alloc.reserve(r.offset)) {
        log.info("adopted instance", { key: r.key, ipv4: r.ipv4 });
        continue;
      }
      log.info("removing leftovers of a vanished instance", { key: r.key });
      this.#byKey.delete(r.key);
      await this.#removeResources(r, false);
    }
    if (this.#state.allocator) this.#alloc.restore(this.#state.allocator);
    await this.setupIptables();
    this.#save();
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
   * Deploying the same container again with the same PID returns its addresses; with another PID
   * (the container was recreated) the old network is replaced.
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
    return this.#serial(key, () => this.#deploy(key, spec));
  }

  async #deploy(key: string, spec: InstanceSpec): Promise<InstanceAddresses> {
    const subnet = this.#requireSubnet();
    let ports: PortMapping[];
    try {
      ports = parsePortMappings(spec.portMappings, this.#cfg.tun.TunnelPort);
    } catch (e) {
      throw new EnvError(400, (e as PortMappingError).message);
    }
    const existing = this.#byKey.get(key);
    if (existing) {
      if (spec.kind === "unikernel" || existing.pid === spec.pid) {
        return { ipv4: existing.ipv4, ipv6: existing.ipv6 };
      }
      log.info("instance redeployed with a new PID: replacing its network", {
        key,
        old: existing.pid,
        pid: spec.pid,
      });
      this.#undeploy(existing);
    }
    const clashes = (r: InstanceRecord) =>
      ports.some((p) => r.ports.some((q) => q.proto === p.proto && q.hostPort === p.hostPort));
    await Promise.all([...this.#removing.values()].filter((r) => clashes(r.rec)).map((r) => r.done));
    for (const r of this.#byKey.values()) {
      for (const p of ports) {
        if (r.ports.some((q) => q.proto === p.proto && q.hostPort === p.hostPort)) {
          throw new EnvError(409, `host port ${p.hostPort}/${p.proto} is already mapped to ${r.key}`);
        }
      }
    }
    const links = this.#linksOpen();
    const alloc = this.#alloc!;
    const undo: Array<() => void | Promise<void>> = [];
    const rollback = async () => {
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (e) {
          log.error("rollback step failed", { key, error: String(e) });
        }
      }
    };
    let nsFd = -1;
    try {
      let netns: string | undefined;
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
      } else {
        netns = getNamespaceName(this.#cfg.net.NetnsPrefix, spec.job, spec.instance);
        if (namedNetnsExists(netns)) removeNamedNetns(netns); // leftover of an unrecorded deploy
        addNamedNetns(netns);
        const ns = netns;
        undo.push(() => void removeNamedNetns(ns));
        nsFd = netnsByName(netns);
      }
      let offset: number;
      try {
        offset = alloc.allocate();
      } catch (e) {
        if (e instanceof ExhaustedError) {
          throw new EnvError(500, `${e.message} (node subnet ${formatNodeSubnet(subnet)})`);
        }
        throw e;
      }
      undo.push(() => alloc.release(offset));
      const v4 = instanceAddr4(subnet, offset);
      const v6 = instanceAddr6(subnet, offset);
      const id = (this.#state.vethCounter++).toString(36);
      const p = this.#cfg.net.VethPrefix;
      const rec: InstanceRecord = {
        key,
        job: spec.job,
        instance: spec.instance,
        kind: spec.kind,
        pid: spec.kind === "container" ? spec.pid : undefined,
        netns,
        hostVeth: `${p}h${id}`,
        peerVeth: `${p}c${id}`,
        offset,
        ipv4: formatIPv4(v4),
        ipv6: formatIPv6(v6),
        ports,
        createdAt: new Date().toISOString(),
      };
      links.setupInstance({
        hostVeth: rec.hostVeth,
        peerVeth: rec.peerVeth,
        mtu: this.#cfg.bridgeMtu,
        bridgeIndex: this.#bridgeIndex,
        nsFd,
        v4: { family: 4, addr: ipv4Bytes(v4), prefixLen: subnet.v4.len },
        v6: { family: 6, addr: v6, prefixLen: subnet.v6.len },
        gw4: ipv4Bytes(subnet.gateway4),
        gw6: subnet.gateway6,
      });
      undo.push(() => void links.deleteByName(rec.hostVeth));
      if (rec.kind === "unikernel") await this.#setupUnikernelInside(rec);
      await this.#applyInstanceRules(rec, "add");
      undo.push(() => this.#applyInstanceRules(rec, "del"));
      this.#byKey.set(key, rec);
      undo.push(() => void this.#byKey.delete(key));
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
      await rollback();
      if (e instanceof EnvError) throw e;
      throw new EnvError(500, `deploy of ${key} failed: ${e instanceof Error ? e.message : e}`);
    } finally {
      if (nsFd >= 0) closeNetns(nsFd);
    }
  }

  async #setupUnikernelInside(rec: InstanceRecord): Promise<void> {
    const ns = rec.netns!;
    await setupUnikernelDevices(ns, this.#cfg.bridgeMtu);
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
      try {
        removeNamedNetns(rec.netns);
      } catch (e) {
        log.warn("cannot remove named netns", { netns: rec.netns, error: String(e) });
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
    for (const rec of [...this.#byKey.values()]) {
      if (links.deleteByName(rec.hostVeth)) report.links.push(rec.hostVeth);
      if (rec.netns && removeNamedNetns(rec.netns)) report.netns.push(rec.netns);
      report.instances++;
    }
    this.#byKey.clear();
    const brIndex = links.index(this.#cfg.net.BridgeName);
    if (brIndex !== undefined) {
      for (const l of links.list()) {
        if (l.master === brIndex && l.kind === "veth" && links.deleteByName(l.name)) {
          report.links.push(l.name);
        }
      }
    }
    const { rules, bridge } = await this.#teardownNode();
    report.rules = rules;
    if (bridge) report.links.push(this.#cfg.net.BridgeName);
    if (links.deleteByName(this.#cfg.tun.HostTunnelDeviceName)) {
      report.links.push(this.#cfg.tun.HostTunnelDeviceName);
    }
    try {
      Deno.statSync(this.#store.path);
      report.stateFile = true;
    } catch {
      // no state file
    }
    this.#store.remove();
    this.#state = emptyState();
    links.close();
    this.#links = undefined;
    return report;
  }
}
