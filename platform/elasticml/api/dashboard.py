"""The API server's web dashboard: one page, everything it needs inside it (no CDN, nothing fetched
but the API), refreshed every few seconds without a reload.

The page asks for the caller's credential once and keeps it in the tab's sessionStorage (never a
cookie, a URL or the server's logs); every number on it comes from the same authenticated API
calls the CLI makes, so a tenant sees its own workloads, costs and audit records and an admin
everything. What it shows: who you are; workloads with their market, pool, workers and the
reason for where they are; each workload's placements over time (a bar a market per interval);
cost over time with the saving against all on-demand; the pools with their prices and
availability; the newest audit records.
"""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>elasticml</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:16px;align-items:center}
 header h1{font-size:17px;margin:0} #who{opacity:.8}
 main{padding:14px 18px;display:grid;gap:14px;grid-template-columns:1fr 1fr}
 section{background:#fff;border-radius:6px;padding:10px 14px;box-shadow:0 1px 2px #0002}
 section.wide{grid-column:1 / span 2} h2{font-size:14px;margin:2px 0 8px}
 table{border-collapse:collapse;width:100%} td,th{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
 th{font-weight:600;color:#555} .spot{color:#0a7d32} .on-demand{color:#b35c00} .reserved{color:#2453a6}
 .kpi{display:flex;gap:26px}.kpi div{font-size:22px}.kpi span{display:block;font-size:12px;color:#666}
 #login{max-width:520px;margin:60px auto;background:#fff;padding:20px;border-radius:6px}
 #login input{width:100%;padding:6px;font:13px monospace;box-sizing:border-box} .err{color:#b00020}
 small{color:#777}
</style></head><body>
<header><h1>elasticml</h1><span id="who"></span><span id="updated"></span></header>
<div id="login" hidden><h2>Sign in</h2><p>Paste your credential (the contents of the file
<code>elasticml scheduler credential add</code> wrote). It stays in this tab only.</p>
<input id="cred" type="password" autocomplete="off" placeholder="eml1.NAME.SECRET">
<p><button id="go">Sign in</button> <span id="loginerr" class="err"></span></p></div>
<main id="app" hidden>
 <section class="wide"><h2>Cost</h2><div class="kpi" id="kpi"></div><svg id="costchart" width="100%" height="150"></svg></section>
 <section class="wide"><h2>Workloads</h2><table id="workloads"></table></section>
 <section class="wide"><h2>Where each workload ran</h2><svg id="timeline" width="100%" height="40"></svg></section>
 <section><h2>Pools</h2><table id="pools"></table></section>
 <section><h2>Audit trail</h2><table id="audit"></table></section>
</main>
<script>
"use strict";
const KEY = "eml_credential", REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
async function api(route, body) {
  const r = await fetch("/v1/" + route, {method: "POST", headers: {"Content-Type": "application/json",
    "Authorization": "Bearer " + sessionStorage.getItem(KEY)}, body: JSON.stringify(body || {})});
  const data = await r.json();
  if (!r.ok) { const e = new Error(data.message || r.statusText); e.status = r.status; throw e; }
  return data.answer;
}
function table(el, head, rows) {
  el.innerHTML = "<tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr>" +
    rows.map((r) => "<tr>" + r.map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
const COLORS = {"spot": "#0a7d32", "on-demand": "#b35c00", "reserved": "#2453a6"};
function costChart(intervals, now) {
  const svg = $("costchart"), W = svg.clientWidth || 800, H = 150, pad = 30;
  if (!intervals.length) { svg.innerHTML = '<text x="10" y="20">no cost yet</text>'; return; }
  const t0 = Math.min(...intervals.map((i) => i.start)), t1 = Math.max(now, t0 + 1), steps = 60, pts = [], od = [];
  for (let k = 0; k <= steps; k++) {
    const t = t0 + (t1 - t0) * k / steps; let c = 0, o = 0;
    for (const i of intervals) { const e = Math.min(i.end ?? t, t); if (e > i.start) { c += i.hourly_cost * (e - i.start) / 3600; o += i.on_demand_hourly_cost * (e - i.start) / 3600; } }
    pts.push([t, c]); od.push([t, o]);
  }
  const top = Math.max(...od.map((p) => p[1]), 1e-9);
  const path = (ps) => ps.map((p, k) => (k ? "L" : "M") + (pad + (W - 2 * pad) * (p[0] - t0) / (t1 - t0)).toFixed(1) + "," + (H - pad - (H - 2 * pad) * p[1] / top).toFixed(1)).join(" ");
  svg.innerHTML = '<path d="' + path(od) + '" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>' +
    '<path d="' + path(pts) + '" fill="none" stroke="#1d2330" stroke-width="2"/>' +
    '<text x="' + pad + '" y="14" font-size="11">$' + top.toFixed(4) + ' all on-demand (dashed) vs spent (solid)</text>';
}
function timeline(byWorkload, now) {
  const svg = $("timeline"), names = Object.keys(byWorkload), W = svg.clientWidth || 800, rowH = 18, left = 160;
  const all = names.flatMap((n) => byWorkload[n]); svg.setAttribute("height", Math.max(40, names.length * rowH + 20));
  if (!all.length) { svg.innerHTML = '<text x="10" y="20">nothing has run yet</text>'; return; }
  const t0 = Math.min(...all.map((i) => i.start)), t1 = Math.max(now, t0 + 1);
  let out = "";
  names.forEach((n, k) => {
    out += '<text x="4" y="' + (k * rowH + 14) + '" font-size="11">' + esc(n) + "</text>";
    for (const i of byWorkload[n]) {
      const x = left + (W - left - 10) * (i.start - t0) / (t1 - t0), x2 = left + (W - left - 10) * ((i.end ?? now) - t0) / (t1 - t0);
      out += '<rect x="' + x.toFixed(1) + '" y="' + (k * rowH + 3) + '" width="' + Math.max(2, x2 - x).toFixed(1) + '" height="' + (rowH - 6) +
        '" fill="' + (COLORS[i.market] || "#888") + '"><title>' + esc(i.market + " " + i.node_type + " x" + i.workers) + "</title></rect>";
    }
  });
  svg.innerHTML = out;
}
async function refresh() {
  const me = await api("whoami");
  $("who").textContent = me.role + " " + me.name;
  const [status, costs, audit] = await Promise.all([api("status"), api("cost_report"), api("audit_records", {limit: 30})]);
  const names = [...new Set([...Object.keys(status.running), ...status.queued, ...status.paused,
                             ...costs.workload.map((w) => w.key)])].sort();
  const explained = {}, intervals = {};
  await Promise.all(names.map(async (n) => {
    try { explained[n] = await api("explain", {name: n}); intervals[n] = await api("intervals", {name: n}); }
    catch (e) { explained[n] = []; intervals[n] = []; }
  }));
  const now = Date.now() / 1000, t = costs.total;
  $("kpi").innerHTML = "<div>$" + t.cost.toFixed(4) + "<span>spent</span></div><div>$" + t.on_demand_cost.toFixed(4) +
    "<span>all on-demand</span></div><div>" + t.savings_pct.toFixed(1) + "%<span>saved</span></div>";
  costChart(Object.values(intervals).flat(), now);
  table($("workloads"), ["workload", "state", "where", "moves", "why"], names.map((n) => {
    const allocs = status.running[n] || [], why = (explained[n] || []).filter((r) => r.reason).slice(-1)[0];
    const state = allocs.length ? "placed" : status.queued.includes(n) ? "queued" : status.paused.includes(n) ? "paused" : "done";
    const where = allocs.map((a) => '<span class="' + esc(a.market) + '">' + esc(a.workers + "x " + a.node_type + " (" + a.market + ")") + "</span>").join(", ");
    const moves = (explained[n] || []).filter((r) => r.action === "move" || r.action === "preempt").length;
    return [esc(n), esc(state), where || "-", String(moves), esc(why ? why.reason : "")];
  }));
  timeline(intervals, now);
  table($("pools"), ["pool", "market", "$/node-h", "used", "available"], status.pools.map((p) => [
    esc(p.node_type), '<span class="' + esc(p.market) + '">' + esc(p.market) + "</span>", esc(p.hourly_price.toFixed(4)),
    esc(p.used_nodes + "/" + p.max_nodes), p.interrupted || p.unfillable ? "no" : "yes"]));
  table($("audit"), ["when", "who", "what", "outcome"], audit.slice().reverse().map((r) => [
    esc(new Date(r.at * 1000).toISOString().slice(11, 19)), esc(r.who), esc(r.action + " " + (r.target || "")), esc(r.outcome)]));
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.ready = "1";
}
async function loop() {
  try { await refresh(); $("app").hidden = false; $("login").hidden = true; }
  catch (e) { if (e.status === 401 || e.status === 403) { sessionStorage.removeItem(KEY); show(); return; } }
  setTimeout(loop, REFRESH_MS);
}
function show() { $("login").hidden = false; $("app").hidden = true; }
$("go").onclick = () => { sessionStorage.setItem(KEY, $("cred").value.trim()); $("loginerr").textContent = ""; loop(); };
if (sessionStorage.getItem(KEY)) loop(); else show();
</script></body></html>
"""
