/**
 * A one-shot mDNS query from an ordinary port (RFC 6762 §6.7), built with dns-packet: sends NAME/TYPE
 * to GROUP (224.0.0.251 or ff02::fb%IFACE) port 5353 and prints the first answer as JSON
 * `{ from, id, questions, answers }`, or `null` after 2 s. With `qu` the question's QU bit is set and
 * the query is sent from port 5353 (a QU question, answered by unicast).
 *
 * deno run -A tests/helpers/mdns_query.ts GROUP NAME TYPE [qu]
 */
import dgram from "node:dgram";
import dnsPacket from "dns-packet";

const [group, name, type, qu] = Deno.args;
const v6 = group.includes(":");
const id = 4242;
const query = dnsPacket.encode({ type: "query", id, questions: [{ name, type: type as "A", class: "IN" }] });
// dns-packet cannot encode the QU bit: set the class's top bit (the question's last 2 bytes).
if (qu === "qu") query[query.length - 2] |= 0x80;
const sock = dgram.createSocket(v6 ? "udp6" : "udp4");
const timer = setTimeout(() => {
  console.log("null");
  sock.close();
}, 2000);
sock.on("message", (msg, rinfo) => {
  clearTimeout(timer);
  const p = dnsPacket.decode(msg);
  console.log(JSON.stringify({
    from: `${rinfo.address}:${rinfo.port}`,
    id: p.id,
    questions: (p.questions ?? []).map((q) => q.name),
    answers: (p.answers ?? []).map((a) => ({
      name: a.name,
      type: a.type,
      ttl: "ttl" in a ? a.ttl : 0,
      data: "data" in a ? a.data : null,
    })),
  }));
  sock.close();
});
// A QU question is what a full responder-side querier sends from port 5353 itself.
sock.bind(qu === "qu" ? 5353 : 0, () => sock.send(query, 5353, group));
