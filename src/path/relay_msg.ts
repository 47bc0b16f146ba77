/**
 * The relay's MQTT messages (issue 12, netmanager additions; schemas for both ends):
 *
 * - node → cluster `nodes/<id>/net/relay/request`: `{"endpoint":"ip:port","direct":false}` — no answer
 *   from that peer endpoint within 3 s of dialling it (punch failed): relay us; `"direct":true` — a
 *   relayed peer now answers at its own endpoint: free the relay; `"silent":true` (with `direct`
 *   false) — a peer that answered before sends nothing back for 2 s although we send: has it moved?
 *   (the control plane has it re-check its observed endpoint; no relay).
 * - cluster → node `nodes/<id>/net/relay`: `{"peer":"ip:port","via":"ip:port"}` — the node at `peer`
 *   is now reached at `via` on the relay (HELLO it to open the NAT mapping and lock the relay's
 *   side); `"via":""` — relay freed, back to `peer`.
 * - cluster → node `nodes/<id>/net/reflect`: `{}` — a peer finds this node silent at its observed
 *   endpoint: ask the reflector again now (its NAT may have moved: roaming), not after 25 s.
 *
 * @example
 * ```ts
 * import { parseRelayNotice, relayNoticeTopic } from "./relay_msg.ts";
 * relayNoticeTopic("w1"); // "nodes/w1/net/relay"
 * parseRelayNotice({ peer: "203.0.113.7:40000", via: "198.51.100.1:41000" })?.via?.port; // 41000
 * ```
 * @module
 */
import { z } from "zod";
import { tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";

/** `nodes/<worker>/net/relay/request` (node → cluster). */
export function relayRequestTopic(worker: string): string {
  return `nodes/${worker}/net/relay/request`;
}

/** `nodes/<worker>/net/relay` (cluster → node). */
export function relayNoticeTopic(worker: string): string {
  return `nodes/${worker}/net/relay`;
}

/** `nodes/<worker>/net/reflect` (cluster → node): re-check the observed endpoint now. */
export function reflectNowTopic(worker: string): string {
  return `nodes/${worker}/net/reflect`;
}

/** Matches a relay request topic; group 1 is the worker id. */
export const RELAY_REQUEST_TOPIC = /^nodes\/([^/+#]+)\/net\/relay\/request$/;

/** An endpoint `ip:port` (IPv6 as `[ip]:port`). */
export interface RelayEndpoint {
  readonly ip: string;
  readonly port: number;
}

/** Parses `ip:port` / `[ip6]:port`; undefined when malformed. */
export function parseEndpointText(s: string): RelayEndpoint | undefined {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([0-9.]+):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  const ok = s.startsWith("[") ? tryParseIPv6(m[1]) !== undefined : tryParseIPv4(m[1]) !== undefined;
  return ok ? { ip: m[1], port } : undefined;
}

/** Formats an endpoint as a node key. */
export function endpointText(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

const RequestSchema = z.object({
  endpoint: z.string().max(64),
  direct: z.boolean(),
  silent: z.boolean().optional(),
});
const NoticeSchema = z.object({ peer: z.string().max(64), via: z.string().max(64) });

/** A validated relay request. */
export interface RelayRequest {
  readonly endpoint: RelayEndpoint;
  readonly direct: boolean;
  /** A peer that answered before fell silent (roaming check only, no relay). */
  readonly silent: boolean;
}

/** A validated relay notice (`via` undefined: relay freed). */
export interface RelayNotice {
  readonly peer: RelayEndpoint;
  readonly via: RelayEndpoint | undefined;
}

/** Validates a request body; undefined when malformed. */
export function parseRelayRequest(body: unknown): RelayRequest | undefined {
  const r = RequestSchema.safeParse(body);
  if (!r.success) return undefined;
  const endpoint = parseEndpointText(r.data.endpoint);
  return endpoint ? { endpoint, direct: r.data.direct, silent: r.data.silent === true } : undefined;
}

/** Validates a notice body; undefined when malformed. */
export function parseRelayNotice(body: unknown): RelayNotice | undefined {
  const r = NoticeSchema.safeParse(body);
  if (!r.success) return undefined;
  const peer = parseEndpointText(r.data.peer);
  if (!peer) return undefined;
  if (r.data.via === "") return { peer, via: undefined };
  const via = parseEndpointText(r.data.via);
  return via ? { peer, via } : undefined;
}

// ---------------------------------------------------------------- relays on ordinary nodes

/**
 * `nodes/<worker>/net/relay/offer` (node → cluster, every {@link RELAY_OFFER_EVERY_MS} while
 * `RelayCandidate` is on): `{"on":true,"address":"ip","id":"…"}` — this node relays pairs of other
 * nodes at `address` (its public address; `id` is new each time its relay starts); `{"on":false}` —
 * no more (it stops).
 */
export function relayOfferTopic(worker: string): string {
  return `nodes/${worker}/net/relay/offer`;
}

/**
 * `nodes/<worker>/net/relay/serve` (cluster → relay node): `{"op":"pair","a":…,"b":…,"observed":{…}}`
 * — open an allocation between nodes `a` and `b` (their public addresses as the reflector saw them);
 * `{"op":"drop","a":…,"b":…}` — free it; `{"op":"observed","observed":{…}}` — those nodes moved.
 */
export function relayServeTopic(worker: string): string {
  return `nodes/${worker}/net/relay/serve`;
}

/**
 * `nodes/<worker>/net/relay/served` (relay node → cluster): `{"a":…,"b":…,"ports":[pa,pb]}` — the
 * allocation (`a` dials `pa`); `{"a":…,"b":…,"error":"…"}` — none; `{"a":…,"b":…,"freed":true}` —
 * freed by the relay node itself (idle).
 */
export function relayServedTopic(worker: string): string {
  return `nodes/${worker}/net/relay/served`;
}

/** A relay node offers itself again this often (ms); an offer older than 3× this is stale. */
export const RELAY_OFFER_EVERY_MS = 10_000;

/** Matches an offer topic; group 1 is the worker id. */
export const RELAY_OFFER_TOPIC = /^nodes\/([^/+#]+)\/net\/relay\/offer$/;
/** Matches a served topic; group 1 is the worker id. */
export const RELAY_SERVED_TOPIC = /^nodes\/([^/+#]+)\/net\/relay\/served$/;

const WorkerId = z.string().min(1).max(128).regex(/^[^/+#\s]+$/);
const ObservedMap = z.record(WorkerId, z.string().max(45)).refine((m) => Object.keys(m).length <= 4096);

const OfferSchema = z.union([
  z.object({ on: z.literal(true), address: z.string().max(45), id: z.string().min(1).max(64) }),
  z.object({ on: z.literal(false) }),
]);

/** A validated relay offer (`address` undefined: withdrawn). */
export interface RelayOffer {
  readonly on: boolean;
  readonly address?: string;
  /** Names the relay process: a new one (the node restarted) has none of the old allocations. */
  readonly id?: string;
}

/** Validates an offer body (the address must be an IPv4 literal); undefined when malformed. */
export function parseRelayOffer(body: unknown): RelayOffer | undefined {
  const r = OfferSchema.safeParse(body);
  if (!r.success) return undefined;
  if (!r.data.on) return { on: false };
  const { address, id } = r.data;
  return tryParseIPv4(address) === undefined ? undefined : { on: true, address, id };
}

const ServeSchema = z.discriminatedUnion("op", [
  z.object({ op: z.literal("pair"), a: WorkerId, b: WorkerId, observed: ObservedMap }),
  z.object({ op: z.literal("drop"), a: WorkerId, b: WorkerId }),
  z.object({ op: z.literal("observed"), observed: ObservedMap }),
]);

/** A validated command to a relay node. */
export type RelayServe = z.output<typeof ServeSchema>;

/** Validates a serve command; undefined when malformed. */
export function parseRelayServe(body: unknown): RelayServe | undefined {
  const r = ServeSchema.safeParse(body);
  return r.success && (!("a" in r.data) || r.data.a !== r.data.b) ? r.data : undefined;
}

const Port = z.number().int().min(1).max(65535);
const ServedSchema = z.union([
  z.object({ a: WorkerId, b: WorkerId, ports: z.tuple([Port, Port]) }),
  z.object({ a: WorkerId, b: WorkerId, error: z.string().max(512) }),
  z.object({ a: WorkerId, b: WorkerId, freed: z.literal(true) }),
]);

/** A validated answer of a relay node. */
export type RelayServed = z.output<typeof ServedSchema>;

/** Validates a served answer; undefined when malformed. */
export function parseRelayServed(body: unknown): RelayServed | undefined {
  const r = ServedSchema.safeParse(body);
  return r.success ? r.data : undefined;
}

/**
 * Parses a port range `lo-hi` (netcfg `RelayPorts`; at least two ports, one allocation takes two);
 * "" is no range (undefined). Throws a RangeError naming what is wrong.
 */
export function parsePortRange(s: string): [number, number] | undefined {
  if (s === "") return undefined;
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(s.trim());
  if (!m) throw new RangeError(`expected lo-hi, e.g. 40000-40999; got "${s}"`);
  const lo = Number(m[1]), hi = Number(m[2]);
  if (lo < 1 || hi > 65535 || hi - lo < 1) {
    throw new RangeError(`"${s}" is not a range of at least 2 ports in 1..65535`);
  }
  return [lo, hi];
}
