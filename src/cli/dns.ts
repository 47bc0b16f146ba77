/**
 * `netmanager dns lookup NAME [--type T]`: resolves a name through the running daemon's resolver and
 * prints the records and where they came from (table, control plane, upstream, cache).
 *
 * @example
 * ```ts
 * await dnsCmd().parseAsync(["lookup", "web.default.shop.prod.local"], { from: "user" });
 * ```
 */
import { Command } from "@commander-js/extra-typings";
import { ApiClient } from "../api/client.ts";
import { DEFAULT_SOCKET, fail } from "./common.ts";

interface LookupOut {
  name: string;
  type: string;
  rcode: string;
  source: string;
  answers: { name: string; type: string; ttl: number; data: unknown }[];
}

/** The `dns` command group. */
export function dnsCmd() {
  const lookup = new Command("lookup")
    .description("resolve NAME as the node's DNS server does; shows where the answer came from")
    .argument("<name>", "a name (service.servicens.app.appns.<suffix>, a reverse name, any other name)")
    .option("--type <type>", "record type (A, AAAA, PTR, ANY, …)", "A")
    .option("--socket <path>", "unix socket of the API", DEFAULT_SOCKET)
    .option("--json", "print JSON")
    .action(async (name, opts) => {
      const c = new ApiClient(opts.socket);
      try {
        const q = new URLSearchParams({ name, type: opts.type });
        const r = await c.getJson(`/dns/lookup?${q}`) as LookupOut;
        if (opts.json) {
          console.log(JSON.stringify(r, null, 2));
          return;
        }
        console.log(`${r.name} ${r.type}: ${r.rcode} (from ${r.source})`);
        for (const a of r.answers) {
          console.log(
            `  ${a.name}\t${a.ttl}\t${a.type}\t${
              typeof a.data === "string" ? a.data : JSON.stringify(a.data)
            }`,
          );
        }
      } catch (e) {
        fail(e);
      } finally {
        c.close();
      }
    });
  return new Command("dns").description("service names (node-local DNS)").addCommand(lookup);
}
