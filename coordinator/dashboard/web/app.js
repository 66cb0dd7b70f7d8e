"use strict";
// The owners' page. Every value from the API goes into the page as text (textContent,
// createElement), never as markup.

const REFRESH_MS = 10000;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// Micro-credits as credits with six decimals, exact.
function credits(micros) {
  const m = Math.trunc(Number(micros) || 0);
  return Math.floor(m / 1e6) + "." + String(m % 1e6).padStart(6, "0");
}

function day(n) {
  return new Date(n * 86400000).toISOString().slice(0, 10);
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "never";
}

function table(headers, rows, numeric) {
  const head = el("tr", {}, ...headers.map((h, i) => el("th", numeric.includes(i) ? { class: "num" } : {}, h)));
  const body = rows.map(r => el("tr", {}, ...r.map((c, i) => {
    const cell = c instanceof Node ? c : String(c === null || c === undefined ? "" : c);
    const cls = numeric.includes(i) ? "num" : (typeof r.reasonCol === "number" && r.reasonCol === i ? "reason" : "");
    return el("td", cls ? { class: cls } : {}, cell);
  })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (r.status === 401) { showLogin(); throw new Error("logged out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showLogin() {
  if (timer) { clearInterval(timer); timer = null; }
  document.getElementById("board").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login").hidden = false;
}

function renderTotals(t) {
  const box = document.getElementById("totals");
  const item = (label, value, id) => el("div", {}, label, el("b", { id }, value));
  box.replaceChildren(
    item("Credited", credits(t.credited_micros), "total-credited"),
    item("Pending", credits(t.pending_micros), "total-pending"),
    item("Payable", credits(t.payable_micros), "total-payable"),
    item("Paid", credits(t.paid_micros), "total-paid"),
    item("Rejected receipts", t.rejected, "total-rejected"),
  );
}

function renderChart(days) {
  const box = document.getElementById("chart");
  if (days.length === 0) { box.replaceChildren(el("p", {}, "No earnings yet.")); return; }
  const shown = days.slice(-90);
  const max = Math.max(1, ...shown.map(d => d.credited_micros + d.pending_micros));
  const w = 600, h = 160, bw = Math.min(w / shown.length, 40);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h + 16}`, width: "100%", role: "img", "aria-label": "Earnings per day" });
  shown.forEach((d, i) => {
    const ch = h * d.credited_micros / max, ph = h * d.pending_micros / max;
    const c = svg("rect", { class: "credited", x: i * bw + 1, y: h - ch, width: Math.max(1, bw - 2), height: ch });
    const p = svg("rect", { class: "pending", x: i * bw + 1, y: h - ch - ph, width: Math.max(1, bw - 2), height: ph });
    const title = svg("title", {});
    title.textContent = `${day(d.day)}: ${credits(d.credited_micros)} credited, ${credits(d.pending_micros)} pending`;
    c.append(title);
    chart.append(c, p);
  });
  const first = svg("text", { x: 0, y: h + 13 }); first.textContent = day(shown[0].day);
  chart.append(first);
  if (shown.length > 1) {
    const last = svg("text", { x: shown.length * bw, y: h + 13, "text-anchor": "end" });
    last.textContent = day(shown[shown.length - 1].day);
    chart.append(last);
  }
  box.replaceChildren(chart);
}

function renderRigs(rigs) {
  const rows = [];
  for (const r of rigs) {
    const status = el("span", { class: r.online ? "online" : "offline" }, r.online ? "online" : "offline");
    if (r.cards.length === 0) rows.push([r.rig, status, r.state || "-", when(r.last_seen_ms), "-", "", "", "", "", ""]);
    for (const c of r.cards) {
      rows.push([r.rig, status.cloneNode(true), r.state || "-", when(r.last_seen_ms),
        c.index === null ? c.uuid : `#${c.index} ${c.name || ""}`,
        c.state || "-", c.core_c === null ? "-" : c.core_c.toFixed(1), c.mem_c === null ? "-" : c.mem_c.toFixed(1),
        c.power_w === null ? "-" : `${c.power_w} / ${c.power_limit_w} W`, c.governor_level === null ? "-" : c.governor_level]);
    }
  }
  document.getElementById("rigs").replaceChildren(rigs.length === 0 ? el("p", {}, "No rigs yet.") :
    table(["Rig", "", "State", "Last seen", "Card", "Card state", "Core °C", "Mem °C", "Power", "Governor"], rows, [6, 7, 8, 9]));
}

function renderCards(cards) {
  const rows = cards.map(c => [c.rig, c.card, credits(c.credited_micros), credits(c.pending_micros), c.credited, c.pending, c.rejected]);
  document.getElementById("cards").replaceChildren(cards.length === 0 ? el("p", {}, "No receipts yet.") :
    table(["Rig", "Card", "Credited", "Pending", "Receipts credited", "pending", "rejected"], rows, [2, 3, 4, 5, 6]));
}

function renderDisputes(d) {
  const rows = [];
  for (const r of d.rejected) {
    const row = [r.rig, `receipt ${r.seq}`, `${r.job} unit ${r.unit}`, when(r.changed_ms), r.reason || r.state, r.explanation || ""];
    row.reasonCol = 5;
    rows.push(row);
  }
  for (const r of d.refused) {
    const row = [r.rig, `receipts ${r.first_seq}-${r.last_seq}`, "", when(r.at_ms), r.reason, r.explanation];
    row.reasonCol = 5;
    rows.push(row);
  }
  document.getElementById("disputes").replaceChildren(rows.length === 0 ? el("p", {}, "No disputes.") :
    table(["Rig", "Receipts", "Unit", "When", "Reason", "What it means"], rows, []));
}

function renderAlerts(a) {
  const box = document.getElementById("alerts");
  const rows = a.incidents.map(i => [
    el("span", { class: i.closed_ms ? "" : "bad" }, i.closed_ms ? "ended" : "open"),
    i.kind.replace("_", " "), i.rig, i.card || "", when(i.opened_ms), i.closed_ms ? when(i.closed_ms) : "",
  ]);
  const note = a.settings
    ? el("p", {}, `Posted to ${a.settings.url} after ${a.settings.offline_after_ms / 1000} s offline.`)
    : el("p", {}, "No webhook set (PUT /api/alerts); incidents are watched once one is.");
  box.replaceChildren(note, rows.length === 0 ? el("p", {}, "No incidents.") :
    table(["", "What", "Rig", "Card", "Since", "Ended"], rows, []));
}

async function refresh() {
  try {
    const [me, rigs, earnings, disputes, alerts] = await Promise.all([
      api("/api/me"), api("/api/rigs"), api("/api/earnings"), api("/api/disputes"), api("/api/alerts")]);
    document.getElementById("who").textContent = `${me.owner} · payout ${me.payout}`;
    renderTotals(earnings.total);
    renderChart(earnings.days);
    renderRigs(rigs.rigs);
    renderCards(earnings.cards);
    renderDisputes(disputes);
    renderAlerts(alerts);
    document.getElementById("updated").textContent = when(me.now_ms);
    document.getElementById("login").hidden = true;
    document.getElementById("board").hidden = false;
    document.getElementById("logout").hidden = false;
    document.body.dataset.loaded = String(me.now_ms);
  } catch (e) {
    if (e.message !== "logged out") document.getElementById("updated").textContent = `failed: ${e.message}`;
  }
}

function start() {
  refresh();
  if (!timer) timer = setInterval(refresh, REFRESH_MS);
}

document.getElementById("login").addEventListener("submit", async ev => {
  ev.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    const r = await fetch("/api/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: document.getElementById("name").value, password: document.getElementById("password").value }),
    });
    const body = await r.json();
    if (!r.ok) { error.textContent = body.error || r.statusText; return; }
    document.getElementById("password").value = "";
    start();
  } catch (e) {
    error.textContent = e.message;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
  showLogin();
});

start();
