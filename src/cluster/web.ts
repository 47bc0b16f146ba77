/**
 * The cluster web page of `netmanager control`: three static files served by the control plane
 * itself (no build step, nothing from elsewhere) at `/ui/`, `/ui/app.js`, `/ui/style.css`.
 *
 * The files hold no data and need no token. The page reads the API token from the URL fragment
 * (`/ui/#token=…`, printed by `netmanager control web-url`; a fragment is never sent to the server
 * nor logged by it), keeps it in the tab's sessionStorage, removes it from the address bar, and sends
 * it as `Authorization: Bearer …` when it polls `GET /api/net/cluster` (every 2 s). Every value is
 * rendered with `textContent` (names come from the network); the Content-Security-Policy allows
 * scripts, styles and requests from the control plane only.
 *
 * @example
 * ```ts
 * const res = webAsset("/ui/");
 * res?.headers.get("content-type"); // "text/html; charset=utf-8"
 * ```
 */

/** Path of the page. */
export const WEB_PATH = "/ui/";

const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>netmanager cluster</title>
<link rel="stylesheet" href="/ui/style.css">
<script src="/ui/app.js" defer></script>
</head>
<body data-state="loading">
<header><h1>netmanager cluster</h1><span id="status">loading…</span></header>
<main>
<section><h2>Nodes</h2><div id="nodes"></div></section>
<section><h2>RTT and traffic between nodes</h2>
<p class="hint">row = measuring node, column = peer; RTT of the in-band probes, packets sent ↑ and received ↓</p>
<div id="matrix"></div><div id="others"></div></section>
<section><h2>Services</h2><div id="services"></div></section>
</main>
</body>
</html>
`;

const CSS = `body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:1em;align-items:baseline;padding:.6em 1em;background:#1d2330;color:#fff}
header h1{font-size:1.2em;margin:0}
#status{font-size:.9em;opacity:.85}
body[data-state=error] #status,body[data-state=no-token] #status{color:#ffb4b4;opacity:1}
main{padding:0 1em 2em}
h2{font-size:1.05em;margin:1.2em 0 .4em}
h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;background:#fff;margin-bottom:.6em}
th,td{border:1px solid #d5d9e0;padding:.25em .6em;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#eceff3;font-weight:600}
td.num{text-align:right}
.yes{color:#176b2c;font-weight:600}.no{color:#a61b1b;font-weight:600}
.none{color:#8a93a3;font-style:italic}
.hint{color:#5b6474;font-size:.9em;margin:.2em 0 .5em}
.cell small{display:block;color:#5b6474}
`;

const JS = `"use strict";
// netmanager cluster page: polls /api/net/cluster with the bearer token from the URL fragment.
// Everything is rendered with textContent: names come from the network.
(function () {
  var KEY = "netmanager-token";
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  var token = sessionStorage.getItem(KEY);
  window.nmRefreshes = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function table(head, rows) {
    var t = el("table"), tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", "", h)); });
    t.appendChild(tr);
    rows.forEach(function (r) { t.appendChild(r); });
    return t;
  }
  function row(cells, attrs) {
    var tr = el("tr");
    Object.keys(attrs || {}).forEach(function (k) { tr.setAttribute(k, attrs[k]); });
    cells.forEach(function (c) { tr.appendChild(c instanceof Node ? c : el("td", "", c === null || c === undefined ? "-" : c)); });
    return tr;
  }
  function td(text, cls) { return el("td", cls || "", text); }
  function age(s) { return s === null || s === undefined ? null : (s < 1 ? "just now" : s + " s ago"); }
  function rtt(ms) { return ms === null || ms === undefined ? "-" : (ms < 10 ? ms.toFixed(2) : Math.round(ms)) + " ms"; }
  function bytes(n) { return n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(1) + " MiB"; }
  function traffic(t) { return t ? "↑" + t.tx_packets + " pkts " + bytes(t.tx_bytes) + " · ↓" + t.rx_packets + " pkts " + bytes(t.rx_bytes) : "-"; }
  function replace(id, child) { var n = document.getElementById(id); n.replaceChildren(child); }
  function status(state, text) { document.body.setAttribute("data-state", state); document.getElementById("status").textContent = text; }

  function render(v) {
    replace("nodes", table(
      ["node", "address", "observed (MQTT)", "version", "connected", "last report", "instances", "subnet"],
      v.nodes.map(function (n) {
        return row([
          n.worker_id, n.endpoint, n.observed, n.version,
          td(n.connected ? "yes" : "no", n.connected ? "yes" : "no"),
          n.last_seen_s === null ? td("no report", "none") : age(n.last_seen_s),
          n.instances, n.subnet + " " + n.subnet_v6,
        ], { "data-node": n.worker_id });
      })));
    var ids = v.nodes.map(function (n) { return n.worker_id; });
    var reported = {};
    v.nodes.forEach(function (n) { reported[n.worker_id] = n.last_seen_s !== null; });
    var link = {};
    v.links.forEach(function (l) { if (l.known) link[l.from + "\\u0000" + l.to] = l; });
    replace("matrix", table([""].concat(ids), ids.map(function (from) {
      var cells = [el("th", "", from)];
      ids.forEach(function (to) {
        if (from === to) { cells.push(td("—", "none")); return; }
        if (!reported[from]) { cells.push(td("no report", "none")); return; }
        var l = link[from + "\\u0000" + to];
        if (!l) { cells.push(td("·", "none")); return; }
        var c = el("td", "cell");
        c.setAttribute("data-link", from + " " + to);
        c.appendChild(el("span", "", rtt(l.rtt_ms)));
        c.appendChild(el("small", "", "↑" + l.tx_packets + " ↓" + l.rx_packets + " pkts · " + l.mode));
        cells.push(c);
      });
      return row(cells);
    })));
    var others = v.links.filter(function (l) { return !l.known; });
    replace("others", others.length ? table(["node", "peer (no registered node)", "wire", "RTT", "↑ pkts", "↓ pkts"],
      others.map(function (l) { return row([l.from, l.endpoint, l.mode, rtt(l.rtt_ms), l.tx_packets, l.rx_packets]); }))
      : el("span"));
    var box = el("div");
    if (!v.services.length) box.appendChild(el("p", "none", "no services"));
    v.services.forEach(function (s) {
      var h = el("h3", "", s.job_name);
      h.setAttribute("data-service", s.job_name);
      box.appendChild(h);
      box.appendChild(el("p", "hint", "ServiceIP (round robin) " + s.rr_ip + "  " + s.rr_ip_v6 + " · id " + s._id));
      if (s.closest_ip) box.appendChild(el("p", "hint", "ServiceIP (closest) " + s.closest_ip + "  " + s.closest_ip_v6));
      var tp = el("p", "hint", "traffic with its addresses (↑ sent to them, ↓ received from them, by instances on all nodes) " + traffic(s.traffic));
      tp.setAttribute("data-traffic", s.job_name);
      box.appendChild(tp);
      box.appendChild(table(["#", "instance IP", "instance IPv6", "namespace IP", "node", "host", "status", "InstanceIP traffic"],
        s.instances.map(function (i) {
          return row([i.instance_number, i.instance_ip, i.instance_ip_v6, i.namespace_ip, i.worker_id, i.host, i.status,
            traffic(i.traffic)],
            { "data-instance": s.job_name + "#" + i.instance_number });
        })));
    });
    replace("services", box);
  }

  function poll() {
    fetch("/api/net/cluster", { headers: { Authorization: "Bearer " + token }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) throw new Error("the token was refused (401): open the URL from 'netmanager control web-url' again");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (v) {
        render(v);
        window.nmRefreshes++;
        status("ok", "updated " + new Date(v.generated_at).toLocaleTimeString() + " · " + v.nodes.length + " nodes, " + v.services.length + " services");
      })
      .catch(function (e) { status("error", String(e.message || e)); })
      .then(function () { setTimeout(poll, 2000); });
  }

  if (!token) {
    status("no-token", "no token: open the URL printed by 'netmanager control web-url' (the token travels in the # part)");
  } else {
    poll();
  }
})();
`;

const ASSETS: Record<string, { type: string; body: string }> = {
  "/ui": { type: "text/html; charset=utf-8", body: HTML },
  "/ui/": { type: "text/html; charset=utf-8", body: HTML },
  "/ui/index.html": { type: "text/html; charset=utf-8", body: HTML },
  "/ui/app.js": { type: "text/javascript; charset=utf-8", body: JS },
  "/ui/style.css": { type: "text/css; charset=utf-8", body: CSS },
};

/** The static file at `path` (no data in it: served without a token), or undefined. */
export function webAsset(path: string): Response | undefined {
  const a = ASSETS[path];
  if (!a) return undefined;
  return new Response(a.body, {
    headers: {
      "content-type": a.type,
      "content-security-policy": CSP,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-cache",
    },
  });
}

/**
 * The page URL with the token in its fragment (what `netmanager control web-url` prints).
 *
 * @example
 * ```ts
 * webUrl("http://127.0.0.1:10100", "abc"); // "http://127.0.0.1:10100/ui/#token=abc"
 * ```
 */
export function webUrl(apiBase: string, token: string): string {
  return `${apiBase.replace(/\/+$/, "")}${WEB_PATH}#token=${encodeURIComponent(token)}`;
}
