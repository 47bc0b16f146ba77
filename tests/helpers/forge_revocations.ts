/**
 * Publishes a forged revocation list (the PKI test): signed by a CA of its own but claiming the
 * cluster CA's key id, with a high sequence, revoking `victim`; retained, as the control plane's.
 *
 *   deno run -A forge_revocations.ts mqtt://10.0.0.1:10003 <cluster CA key id> <victim node id> [user pass]
 *
 * Prints `published` (or the broker's refusal) and exits.
 */
import mqtt from "mqtt";
import { generateCa } from "../../src/secure/cert.ts";
import { REVOCATION_TOPIC, signRevocationList } from "../../src/secure/revocation.ts";

const [url, issuer, victim, username, password] = Deno.args;
const list = {
  ...signRevocationList(generateCa("forger"), {
    sequence: 1_000_000,
    issuedAt: 1,
    serials: [],
    nodeIds: [victim],
  }),
  issuer,
};
const client = await mqtt.connectAsync(url, {
  protocolVersion: 4,
  clean: true,
  reconnectPeriod: 0,
  ...(username ? { username, password, clientId: username } : {}),
});
try {
  await client.publishAsync(REVOCATION_TOPIC, JSON.stringify(list), { qos: 1, retain: true });
  console.log("published");
} catch (e) {
  console.log(`refused: ${(e as Error).message}`);
}
await client.endAsync();
