/**
 * The NodeEngine's port-mapping grammar (reference §4.5): entries separated by `;`, each
 * `HOST[:CONTAINER][/tcp|/udp]`; protocol defaults to TCP; container port defaults to the host port.
 *
 * Stricter than Oakestra where Oakestra silently misbehaves: extra `:` parts, port 0 and the tunnel
 * port are refused with a clear message.
 *
 * @example
 * ```ts
 * parsePortMappings("80:80/udp;90:100/udp", 50103);
 * // [{ proto: "udp", hostPort: 80, containerPort: 80 }, { proto: "udp", hostPort: 90, containerPort: 100 }]
 * ```
 */

/** One host-port → instance-port mapping. */
export interface PortMapping {
  proto: "tcp" | "udp";
  hostPort: number;
  containerPort: number;
}

/** A port-mapping string that cannot be used. */
export class PortMappingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PortMappingError";
  }
}

function port(text: string, entry: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) {
    throw new PortMappingError(`invalid port mapping "${entry}": "${text}" is not a port`);
  }
  const n = Number(text);
  if (n < 1 || n > 65535) {
    throw new PortMappingError(`invalid port mapping "${entry}": port ${n} is out of 1..65535`);
  }
  return n;
}

/** Parses the grammar; throws PortMappingError naming the bad entry. `tunnelPort` may not be mapped. */
export function parsePortMappings(text: string, tunnelPort?: number): PortMapping[] {
  if (text === "") return [];
  const out: PortMapping[] = [];
  const seen = new Set<string>();
  for (const entry of text.split(";")) {
    let body = entry;
    let proto: "tcp" | "udp" = "tcp";
    if (body.includes("/udp")) {
      proto = "udp";
      body = body.replaceAll("/udp", "");
    } else {
      body = body.replaceAll("/tcp", "");
    }
    const parts = body.split(":");
    if (parts.length > 2) {
      throw new PortMappingError(`invalid port mapping "${entry}": expected HOST[:CONTAINER][/tcp|/udp]`);
    }
    const hostPort = port(parts[0], entry);
    const containerPort = parts.length === 2 ? port(parts[1], entry) : hostPort;
    if (tunnelPort !== undefined && hostPort === tunnelPort) {
      throw new PortMappingError(
        `invalid port mapping "${entry}": port ${tunnelPort} is reserved for the tunnel`,
      );
    }
    const key = `${proto}/${hostPort}`;
    if (seen.has(key)) throw new PortMappingError(`invalid port mapping "${entry}": ${key} is mapped twice`);
    seen.add(key);
    out.push({ proto, hostPort, containerPort });
  }
  return out;
}

/** Formats mappings back into the grammar (canonical form). */
export function formatPortMappings(ms: readonly PortMapping[]): string {
  return ms.map((m) => `${m.hostPort}:${m.containerPort}/${m.proto}`).join(";");
}
