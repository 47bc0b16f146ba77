/**
 * Kernel fast path, tc mode, pure part: the two map entries that carry one pinned flow (a TUN flow the
 * workers already decided, src/kfast/move.ts) in the kernel, on this node — whichever side of the
 * flow this node is. Egress: the flow as the local instance sends it (namespace IP → dialled ServiceIP
 * or InstanceIP) is translated to (own InstanceIP → chosen instance's namespace IP) and sent to the
 * chosen instance's node. Ingress: the answers as they arrive (chosen's InstanceIP → our namespace IP)
 * get the dialled address back as their source. The peer node installs the mirror image from its own
 * view of the same flow (its replies dial our InstanceIP), so each side moves independently; until it
 * has, its packets keep crossing its TUN and arrive as raw mode (which our ingress entry also matches).
 *
 * @example
 * ```ts
 * import { tcEntriesOf } from "./tc_flows.ts";
 * import { parseIPv4 } from "../addr/mod.ts";
 * const pin = { proto: 6, src: parseIPv4("10.19.1.2"), sport: 40000, dst: parseIPv4("10.30.0.1"), dport: 80,
 *   chosen: parseIPv4("10.19.2.2") };
 * const e = tcEntriesOf(pin, {
 *   snat: new Map([[parseIPv4("10.19.1.2"), parseIPv4("10.30.0.11")]]),
 *   instances: new Map([[parseIPv4("10.19.2.2"), parseIPv4("10.30.0.12")]]),
 *   remote: new Map([[parseIPv4("10.19.2.2"), "192.168.1.2"]]),
 * }, { localIp: "192.168.1.1", localPort: 50103, peerPort: () => 50103, ifindexTo: () => 2 });
 * e?.ingress.flow.saddr; // "10.30.0.12"
 * ```
 */
import { formatIPv4 } from "../addr/mod.ts";
import type { Pin } from "./move.ts";
import type { TcEgress, TcFlow, TcIngress } from "./tc_maps.ts";

/** The parts of a plan (src/kfast/plan.ts) the entries need. */
export interface TcPlanView {
  /** Local namespace IP → its InstanceIP. */
  snat: ReadonlyMap<number, number>;
  /** Candidate namespace IP → its InstanceIP. */
  instances: ReadonlyMap<number, number>;
  /** Remote candidate namespace IP → its node (underlay IPv4). */
  remote: ReadonlyMap<number, string>;
}

/** This node's side: its tunnel endpoint, the peers' ports, the device towards a peer. */
export interface TcNodeView {
  localIp: string;
  localPort: number;
  /** The tunnel port of a peer (undefined: unknown, not carried). */
  peerPort: (ip: string) => number | undefined;
  /** The underlay device (ifindex) towards a peer (undefined: no route). */
  ifindexTo: (ip: string) => number | undefined;
}

/** The entries of one flow. */
export interface TcFlowEntries {
  egress: { flow: TcFlow; value: TcEgress };
  ingress: { flow: TcFlow; value: TcIngress };
  /** The chosen instance's node. */
  peer: string;
}

/**
 * The entries that carry `pin` in the kernel, or undefined when the flow cannot be (not TCP/UDP, the
 * sender not a local instance, the chosen instance not on a known peer).
 */
export function tcEntriesOf(pin: Pin, plan: TcPlanView, node: TcNodeView): TcFlowEntries | undefined {
  if (pin.proto !== 6 && pin.proto !== 17) return undefined;
  const own = plan.snat.get(pin.src);
  const peer = plan.remote.get(pin.chosen);
  const theirs = plan.instances.get(pin.chosen);
  if (own === undefined || peer === undefined || theirs === undefined) return undefined;
  const peerPort = node.peerPort(peer);
  const ifindex = node.ifindexTo(peer);
  if (peerPort === undefined || ifindex === undefined) return undefined;
  const proto = pin.proto;
  return {
    peer,
    egress: {
      flow: {
        proto,
        saddr: formatIPv4(pin.src),
        sport: pin.sport,
        daddr: formatIPv4(pin.dst),
        dport: pin.dport,
      },
      value: {
        newSaddr: formatIPv4(own),
        newDaddr: formatIPv4(pin.chosen),
        localIp: node.localIp,
        localPort: node.localPort,
        peerIp: peer,
        peerPort,
        ifindex,
        replySaddr: formatIPv4(theirs),
      },
    },
    ingress: {
      flow: {
        proto,
        saddr: formatIPv4(theirs),
        sport: pin.dport,
        daddr: formatIPv4(pin.src),
        dport: pin.sport,
      },
      value: theirs === pin.dst ? {} : { newSaddr: formatIPv4(pin.dst) },
    },
  };
}
