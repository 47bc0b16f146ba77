/**
 * NAT routers for the tests and benchmarks of issue 12: a router namespace on the World's underlay at
 * `pub` with a LAN `${lan}.0/24`, iptables MASQUERADE (endpoint-independent, or `--random-fully` for
 * a symmetric NAT), a home router's firewall (no unsolicited input to the router itself), and
 * optionally no UDP from the internet except from one address (the control plane's host).
 */
import type { World } from "../../src/demo/world.ts";
import { mustRun } from "../../src/sys/command.ts";

/** `eim`: endpoint-independent MASQUERADE; `symmetric`: `--random-fully`; `block`: eim, and no UDP from the internet except from `allowed`. */
export type NatMode = "eim" | "symmetric" | "block";

/** A NAT router at `pub` on the underlay with LAN `${lan}.1/24`; returns how to wire a host behind it. */
export async function natRouter(
  w: World,
  tag: string,
  mode: NatMode,
  pub: string,
  lan: string,
  allowed: string,
): Promise<(ns: string) => Promise<void>> {
  const r = await w.namespace(`nat${tag}`);
  await w.attach(r, `nw${tag}`, pub);
  const wan = `${w.prefix}nw${tag}`;
  const ipt = (...a: string[]) => mustRun("ip", ["netns", "exec", r, "iptables", ...a]);
  await mustRun("ip", ["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
  // Symmetric: a new random port per destination (--random-fully).
  await ipt(
    ...["-t", "nat", "-A", "POSTROUTING", "-s", `${lan}.0/24`, "-o", wan, "-j", "MASQUERADE"],
    ...(mode === "symmetric" ? ["--random-fully"] : []),
  );
  // A home router's firewall: unsolicited packets to the router itself are dropped.
  await ipt("-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP");
  // UDP blocked: nothing UDP comes in from the internet except from the control plane's host.
  if (mode === "block") await ipt("-A", "FORWARD", "-i", wan, "-p", "udp", "!", "-s", allowed, "-j", "DROP");
  return async (ns: string) => {
    const [a, b] = [`${w.prefix}la${tag}`, `${w.prefix}lb${tag}`];
    await mustRun("ip", ["link", "add", a, "netns", r, "type", "veth", "peer", "name", b, "netns", ns]);
    await mustRun("ip", ["-n", r, "addr", "add", `${lan}.1/24`, "dev", a]);
    await mustRun("ip", ["-n", r, "link", "set", a, "up"]);
    await mustRun("ip", ["-n", ns, "addr", "add", `${lan}.2/24`, "dev", b]);
    await mustRun("ip", ["-n", ns, "link", "set", b, "up"]);
    await mustRun("ip", ["-n", ns, "route", "add", "default", "via", `${lan}.1`]);
  };
}
