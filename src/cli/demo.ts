/**
 * `netmanager demo` (the README's main job) and the tiny helpers it runs inside instances:
 * `demo-serve` (HTTP server answering with its name) and `demo-get` (HTTP client).
 */
import { Command } from "@commander-js/extra-typings";
import { runDemo } from "../demo/demo.ts";
import { fail } from "./common.ts";

/** `netmanager demo`. */
export function demoCmd() {
  return new Command("demo")
    .description("run the demo on simulated nodes (network namespaces); needs root")
    .action(async () => {
      try {
        const ok = await runDemo();
        Deno.exit(ok ? 0 : 1);
      } catch (e) {
        fail(e);
      }
    });
}

/** `netmanager demo-serve` (hidden): answers every HTTP request with `--name`. */
export function demoServeCmd() {
  return new Command("demo-serve")
    .description("(demo) HTTP server answering with its name")
    .requiredOption("--port <n>", "port", "80")
    .requiredOption("--name <name>", "name to answer with")
    .action((opts) => {
      Deno.serve({ hostname: "::", port: Number(opts.port), onListen() {} }, () => new Response(opts.name));
    });
}

/** `netmanager demo-get URL` (hidden): prints the body of a GET, fails after 3 s. */
export function demoGetCmd() {
  return new Command("demo-get")
    .description("(demo) HTTP GET")
    .argument("<url>")
    .action(async (url) => {
      try {
        const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
        console.log(await r.text());
        Deno.exit(r.ok ? 0 : 1);
      } catch (e) {
        fail(e);
      }
    });
}
