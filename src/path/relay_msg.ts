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
