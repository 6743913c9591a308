// campaignq console: renders the shared snapshot (server-sent events) into the page.
// Every value goes through textContent, never innerHTML: data is always text.
"use strict";

const ROLE = document.querySelector('meta[name="campaignq-role"]')?.content || "";
const CSRF = document.querySelector('meta[name="campaignq-csrf"]')?.content || "";
const CAN_ACT = ROLE === "admin";
const PAGE = document.body.dataset.page;
const SVG = "http://www.w3.org/2000/svg";
let latest = null;

// --- building blocks --------------------------------------------------------------------
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(id, ...nodes) {
  const target = document.getElementById(id);
  if (!target) return;
  // never replace an input the operator is typing in; the next snapshot catches up
  const active = document.activeElement;
  if (active && active.tagName === "INPUT" && target.contains(active)) return;
  target.replaceChildren(...nodes.flat().filter((node) => node !== null && node !== undefined));
}

function table(columns, rows, emptyText) {
  if (!rows.length) return h("p", { class: "empty" }, emptyText || "nothing yet");
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)));
  const body = rows.map((row) =>
    h("tr", { "data-id": row.__id }, columns.map((c) => {
      const value = c.value(row);
      return h("td", { class: c.cls || (c.num ? "num" : "") }, value instanceof Node ? value : fmt(value));
    })));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

function fmt(value) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toLocaleString("en-US", { maximumFractionDigits: Math.abs(value) < 10 ? 2 : 1 });
  }
  return String(value);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Number(seconds);
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function when(iso) {
  return iso ? String(iso).slice(0, 19).replace("T", " ") : "–";
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${(Number(value) * 100).toFixed(0)}%`;
}

function bar(fraction) {
  const width = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
  const fillNode = h("span");
  fillNode.style.width = `${width}%`; // CSSOM, not a style attribute: the CSP forbids those
  return h("div", { class: "bar", title: `${width.toFixed(0)}%` }, fillNode);
}

function showError(id, message) {
  const node = document.getElementById(id);
  if (!node) return;
  node.hidden = !message;
  node.textContent = message || "";
}

async function api(method, url, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (CSRF) headers["X-CSRF-Token"] = CSRF;
  const response = await fetch(url, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let document_ = null;
  try { document_ = await response.json(); } catch (_) { document_ = null; }
  if (!response.ok) {
    const message = (document_ && document_.error) || `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return document_;
}

function actionButton(label, id, run, extra) {
  return h("button", {
    type: "button", id, class: extra || "", disabled: !CAN_ACT,
    title: CAN_ACT ? "" : "needs the admin token",
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      showError("action-error", "");
      try { await run(); await refresh(); } catch (error) { showError("action-error", error.message); }
      finally { button.disabled = !CAN_ACT; }
    },
  }, label);
}

// --- the live feed ---------------------------------------------------------------------------
function setLive(state, text) {
  const node = document.getElementById("live");
  if (!node) return;
  node.dataset.state = state;
  node.textContent = text;
}

function connect() {
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    const snapshot = JSON.parse(event.data);
    if (!snapshot.ok) {
      setLive("error", "database unavailable");
      showError("banner", snapshot.error || "database unavailable");
      return;
    }
    showError("banner", "");
    setLive("live", `live · ${when(snapshot.stats.generated_at).slice(11)}`);
    render(snapshot);
  };
  source.onerror = () => setLive("error", "reconnecting…");
}

async function refresh() {
  try { render(await api("GET", "/api/snapshot")); } catch (error) { showError("banner", error.message); }
}

function render(snapshot) {
  latest = snapshot;
  const renderers = {
    overview: renderOverview, runs: renderRuns, "dead-letters": renderDeadLetters,
    inboxes: renderInboxes, workspaces: renderWorkspaces, audit: () => {},
  };
  (renderers[PAGE] || (() => {}))(snapshot);
  renderAudit(snapshot.audit || []);
}

// --- overview --------------------------------------------------------------------------------
function renderOverview(s) {
  const main = s.stats.queues.find((q) => q.role === "main") || {};
  const cards = [
    ["depth", "Queue depth", fmt(main.depth)],
    ["visible", "Visible", fmt(main.visible)],
    ["in-flight", "In flight", fmt(main.in_flight)],
    ["delayed", "Delayed (backoff)", fmt(main.delayed)],
    ["oldest", "Oldest message", age(main.oldest_age_s)],
    ["dead-letters", "Dead letters", fmt(main.dead_letters)],
    ["sent-hour", "Sent, last hour", fmt(s.throughput.reduce((a, m) => a + m.sent, 0))],
    ["sent-minute", "Sent, last minute", fmt(s.throughput.length ? s.throughput[s.throughput.length - 1].sent : 0)],
  ];
  fill("cards", cards.map(([key, label, value]) =>
    h("div", { class: "card", "data-metric": key }, h("div", { class: "label" }, label),
      h("div", { class: "value", id: `metric-${key}` }, value))));
  fill("chart", chart(s.throughput));
  renderErrors(s);
  renderBudgets(s);
  fill("dead-by-reason", table([
    { label: "reason", value: (d) => d.reason },
    { label: "error class", value: (d) => d.error_class },
    { label: "dead letters", num: true, value: (d) => d.dead_letters },
    { label: "runs", num: true, value: (d) => d.runs },
    { label: "oldest", value: (d) => when(d.oldest_at) },
    { label: "newest", value: (d) => when(d.newest_at) },
  ], s.stats.dead_letters, "no dead letters"));
}

function chart(series) {
  const width = 1200, height = 200, left = 36, bottom = 18, top = 8;
  const max = Math.max(1, ...series.map((m) => m.sent + m.failed));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "messages finished per minute over the last hour");
  const plotH = height - bottom - top;
  const step = (width - left) / Math.max(1, series.length);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    add("line", { x1: left, x2: width, y1: y, y2: y });
    add("text", { x: 2, y: y + 3 }, fmt(Math.round(max * f)));
  }
  series.forEach((m, i) => {
    const x = left + i * step + 1;
    const sentH = (m.sent / max) * plotH, failedH = (m.failed / max) * plotH;
    const sentBar = add("rect", { class: "sent", x, width: Math.max(1, step - 2), y: top + plotH - sentH, height: sentH });
    sentBar.append(Object.assign(document.createElementNS(SVG, "title"), { textContent: `${when(m.minute).slice(11, 16)}: ${m.sent} sent, ${m.failed} failed` }));
    if (failedH > 0) add("rect", { class: "failed", x, width: Math.max(1, step - 2), y: top + plotH - sentH - failedH, height: failedH });
  });
  if (series.length) {
    add("text", { x: left, y: height - 4 }, when(series[0].minute).slice(11, 16));
    add("text", { x: width - 32, y: height - 4 }, when(series[series.length - 1].minute).slice(11, 16));
  }
  return svg;
}

function renderErrors(s) {
  const byClass = new Map();
  for (const d of s.stats.dead_letters) byClass.set(d.error_class, (byClass.get(d.error_class) || 0) + d.dead_letters);
  const hour = s.stats.workspaces.filter((w) => w.period === "1h");
  const sum = (key) => hour.reduce((a, w) => a + (w[key] || 0), 0);
  fill("errors",
    table([
      { label: "error class (dead letters)", value: (r) => r[0] },
      { label: "count", num: true, value: (r) => r[1] },
    ], [...byClass.entries()].sort((a, b) => b[1] - a[1]), "no dead letters"),
    table([
      { label: "last hour", value: (r) => r[0] },
      { label: "count", num: true, value: (r) => r[1] },
    ], [["failed", sum("failed")], ["retries", sum("retries")], ["timeouts", sum("timeouts")],
        ["rate limited (429)", sum("rate_limited")]]));
}

function renderBudgets(s) {
  const rows = s.rate_limits.map((r) => ({ ...r, kind: `${r.name} requests/min (shared)` }));
  const nodes = [table([
    { label: "budget", value: (r) => r.kind },
    { label: "limit", num: true, value: (r) => r.requests_per_minute },
    { label: "used, last minute", num: true, value: (r) => r.used_last_minute },
    { label: "", value: (r) => bar(r.used_last_minute / r.requests_per_minute) },
  ], rows, "no shared AI budget: each consumer keeps its own (set one on Workspaces)")];
  const paced = s.inboxes.filter((i) => i.max_sends_per_minute || i.daily_send_cap);
  if (paced.length) {
    nodes.push(table([
      { label: "inbox pace", value: (i) => i.name },
      { label: "sent/min", num: true, value: (i) => `${fmt(i.sent_last_minute)} / ${fmt(i.max_sends_per_minute)}` },
      { label: "today", num: true, value: (i) => `${fmt(i.sent_today)} / ${fmt(i.daily_send_cap)}` },
    ], paced));
  }
  const costs = s.stats.workspaces;
  nodes.push(table([
    { label: "spend", value: (w) => `workspace ${shortId(w.workspace_id)} · ${w.period}` },
    { label: "tokens", num: true, value: (w) => w.tokens },
    { label: "cost $", num: true, value: (w) => Number(w.cost_usd || 0).toFixed(4) },
  ], costs, "no spend in the last day"));
  fill("budgets", nodes);
}

// --- runs ------------------------------------------------------------------------------------
function eta(r) {
  const waiting = r.pending + r.queued + r.in_progress;
  if (!waiting) return r.run_status === "completed" ? "done" : "–";
  const rate = r.sent_last_minute || r.sent_per_minute;
  if (r.run_status !== "running" || !rate) return "–";
  return age((waiting / rate) * 60);
}

function renderRuns(s) {
  const runs = s.stats.runs.map((r) => ({ ...r, __id: r.run_id }));
  fill("runs", table([
    { label: "run", cls: "mono", value: (r) => h("span", { title: r.run_id }, shortId(r.run_id)) },
    { label: "campaign", cls: "wrap", value: (r) => r.campaign },
    { label: "status", value: (r) => h("span", { class: `status-${r.run_status}`, "data-field": "status" }, r.run_status) },
    { label: "progress", value: (r) => h("div", {}, bar(r.done_pct / 100), `${fmt(r.done_pct)}%`) },
    { label: "sent", num: true, value: (r) => r.sent },
    { label: "failed", num: true, value: (r) => r.failed },
    { label: "skipped", num: true, value: (r) => r.skipped },
    { label: "waiting", num: true, value: (r) => h("span", { "data-field": "waiting" }, fmt(r.pending + r.queued + r.in_progress)) },
    { label: "AI ms p50/p95", num: true, value: (r) => `${fmt(r.ai_ms_p50)} / ${fmt(r.ai_ms_p95)}` },
    { label: "split ms p50/p95", num: true, value: (r) => `${fmt(r.split_ms_p50)} / ${fmt(r.split_ms_p95)}` },
    { label: "send ms p50/p95", num: true, value: (r) => `${fmt(r.send_ms_p50)} / ${fmt(r.send_ms_p95)}` },
    { label: "tokens", num: true, value: (r) => r.tokens },
    { label: "cost $", num: true, value: (r) => Number(r.cost_usd || 0).toFixed(4) + (r.unpriced_messages ? ` (+${r.unpriced_messages} unpriced)` : "") },
    { label: "sent/min", num: true, value: (r) => r.sent_last_minute },
    { label: "ETA", num: true, value: (r) => eta(r) },
    { label: "", value: (r) => runActions(r) },
  ], runs, "no active runs, and none finished in the last day"));
}

function runActions(r) {
  const act = (action) => () => api("POST", `/api/runs/${r.run_id}/${action}`);
  const buttons = [];
  if (r.run_status === "running" || r.run_status === "scheduled") buttons.push(actionButton("Pause", `pause-${r.run_id}`, act("pause")));
  if (r.run_status === "paused") buttons.push(actionButton("Resume", `resume-${r.run_id}`, act("resume")));
  if (["scheduled", "running", "paused"].includes(r.run_status)) buttons.push(actionButton("Cancel", `cancel-${r.run_id}`, act("cancel"), "danger"));
  return h("span", {}, buttons);
}

// --- dead letters ------------------------------------------------------------------------------
let lettersKey = null;
let filterTimer = null;

function currentFilter() {
  const form = document.getElementById("filter");
  const values = {};
  for (const [key, value] of new FormData(form).entries()) if (String(value).trim()) values[key] = String(value).trim();
  return values;
}

function setupDeadLetters() {
  const form = document.getElementById("filter");
  const params = new URLSearchParams(location.search);
  for (const input of form.elements) if (input.name && params.get(input.name)) input.value = params.get(input.name);
  form.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => loadLetters(true), 250);
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); loadLetters(true); });
  for (const id of ["preview", "replay"]) {
    const button = document.getElementById(id);
    button.disabled = !CAN_ACT;
    if (!CAN_ACT) button.title = "needs the admin token";
    button.addEventListener("click", () => replay(id === "preview"));
  }
  loadLetters(true);
}

async function loadLetters(force) {
  const filter = currentFilter();
  const query = new URLSearchParams(filter).toString();
  const dlq = latest ? latest.stats.queues.find((q) => q.role === "dead_letter") : null;
  const key = `${query}|${dlq ? dlq.depth : ""}`;
  if (!force && key === lettersKey) return;
  lettersKey = key;
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  try {
    const result = await api("GET", `/api/dead-letters?${query}`);
    showError("filter-error", "");
    document.getElementById("matching").textContent = fmt(result.matching);
    document.getElementById("shown").textContent = result.matching > result.shown ? `(first ${result.shown})` : "";
    fill("letters", table([
      { label: "dlq id", cls: "mono", value: (d) => d.dlq_msg_id },
      { label: "run", cls: "mono", value: (d) => h("span", { title: d.run_id || "" }, shortId(d.run_id)) },
      { label: "lead", cls: "wrap", value: (d) => d.lead_name },
      { label: "phone", cls: "mono", value: (d) => d.lead_phone },
      { label: "reason", value: (d) => d.reason },
      { label: "error class", value: (d) => d.error_class },
      { label: "error", cls: "wrap", value: (d) => d.error },
      { label: "attempts", num: true, value: (d) => d.attempts },
      { label: "dead since", value: (d) => when(d.dead_lettered_at) },
    ], result.letters.map((d) => ({ ...d, __id: d.dlq_msg_id })), "no dead letters match"));
  } catch (error) {
    showError("filter-error", error.message);
    lettersKey = null;
  }
}

async function replay(dryRun) {
  const filter = currentFilter();
  showError("filter-error", "");
  const buttons = ["preview", "replay"].map((id) => document.getElementById(id));
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const report = await api("POST", "/api/replay", { ...filter, dry_run: dryRun });
    showOutcome(report);
    await refresh();
    await loadLetters(true);
  } catch (error) {
    showError("filter-error", error.message);
  } finally {
    buttons.forEach((b) => { b.disabled = !CAN_ACT; });
  }
}

function showOutcome(report) {
  document.getElementById("outcome-section").hidden = false;
  document.getElementById("outcome-title").textContent =
    `${report.dry_run ? "Preview (nothing changed)" : "Replayed"}: ${fmt(report.examined)} letter(s) examined in ${report.duration_s} s`;
  fill("outcome-summary", table([
    { label: "outcome", value: (r) => r[0] },
    { label: "letters", num: true, value: (r) => r[1] },
  ], Object.entries(report.by_action), "no dead letters matched"));
  const limit = 500;
  fill("outcome", table([
    { label: "dlq id", cls: "mono", value: (l) => l.dlq_msg_id },
    { label: "message", cls: "mono", value: (l) => shortId(l.campaign_message_id) },
    { label: "run", cls: "mono", value: (l) => shortId(l.run_id) },
    { label: "reason", value: (l) => l.reason },
    { label: "row was", value: (l) => l.previous_status },
    { label: "outcome", value: (l) => l.action },
  ], report.letters.slice(0, limit)), report.letters.length > limit
    ? h("p", { class: "hint" }, `… and ${fmt(report.letters.length - limit)} more (the API response lists every letter)`) : null);
}

function renderDeadLetters(s) {
  const options = (id, values) => fill(id, [...new Set(values)].filter(Boolean).map((v) => h("option", { value: v })));
  options("runs-list", s.stats.dead_letters_by_run.map((d) => d.run_id));
  options("reasons-list", s.stats.dead_letters.map((d) => d.reason));
  options("classes-list", s.stats.dead_letters.map((d) => d.error_class));
  loadLetters(false);
}

// --- inboxes ----------------------------------------------------------------------------------------
function renderInboxes(s) {
  fill("inboxes", table([
    { label: "inbox", cls: "wrap", value: (i) => i.name },
    { label: "instance", cls: "mono", value: (i) => i.instance },
    { label: "workspace", cls: "mono", value: (i) => shortId(i.workspace_id) },
    { label: "connection", value: (i) => i.connection_state ? `${i.connection_state} (since ${when(i.connection_state_at)})` : "not reported" },
    { label: "breaker", value: () => "per consumer" },
    { label: "sent/min (pace)", num: true, value: (i) => `${fmt(i.sent_last_minute)} / ${i.max_sends_per_minute ? fmt(i.max_sends_per_minute) : "unpaced"}` },
    { label: "today (cap)", num: true, value: (i) => `${fmt(i.sent_today)} / ${i.daily_send_cap ? fmt(i.daily_send_cap) : "no cap"}` },
    { label: "", value: (i) => i.max_sends_per_minute ? bar(i.sent_last_minute / i.max_sends_per_minute) : "" },
    { label: "paused", cls: "wrap", value: (i) => h("span", { "data-field": "paused" }, i.paused_at ? `since ${when(i.paused_at)}: ${i.pause_reason || ""}` : "no") },
    { label: "", value: (i) => inboxActions(i) },
  ], s.inboxes.map((i) => ({ ...i, __id: i.inbox_id })), "no inboxes"));
}

function inboxActions(i) {
  if (i.paused_at) return actionButton("Resume", `resume-${i.inbox_id}`, () => api("POST", `/api/inboxes/${i.inbox_id}/resume`));
  const reason = h("input", { id: `reason-${i.inbox_id}`, placeholder: "reason", size: 14, disabled: !CAN_ACT });
  return h("span", {}, reason, " ", actionButton("Pause", `pause-${i.inbox_id}`,
    () => api("POST", `/api/inboxes/${i.inbox_id}/pause`, { reason: reason.value || "paused by operator" })));
}

// --- workspaces -------------------------------------------------------------------------------------
function renderWorkspaces(s) {
  const ai = s.rate_limits.find((r) => r.name === "ai");
  const rpm = h("input", { id: "ai-rpm", type: "number", min: 1, value: ai ? ai.requests_per_minute : "", placeholder: "per process", disabled: !CAN_ACT });
  fill("budget", h("p", {},
    "AI requests per minute: ", rpm, " ",
    actionButton("Save", "ai-save", () => api("POST", "/api/rate-limits/ai", { requests_per_minute: Number(rpm.value) })),
    " ",
    actionButton("Remove (per-process budgets)", "ai-remove", () => api("POST", "/api/rate-limits/ai", { requests_per_minute: null })),
    ai ? h("span", { class: "hint" }, ` · used in the last minute: ${fmt(ai.used_last_minute)} (updated ${when(ai.updated_at)})`) : h("span", { class: "hint" }, " · not set")));
  const costs = new Map(s.stats.workspaces.filter((w) => w.period === "1h").map((w) => [w.workspace_id, w]));
  fill("workspaces", table([
    { label: "workspace", cls: "mono", value: (w) => w.workspace_id },
    { label: "weight", value: (w) => weightEditor(w) },
    { label: "share (configured)", num: true, value: (w) => pct(w.configured_share) },
    { label: "share (sent, 5 min)", num: true, value: (w) => pct(w.recent_share) },
    { label: "running runs", num: true, value: (w) => w.running_runs },
    { label: "paused runs", num: true, value: (w) => w.paused_runs },
    { label: "sent, 5 min", num: true, value: (w) => w.sent_5m },
    { label: "cost $, 1 h", num: true, value: (w) => costs.has(w.workspace_id) ? Number(costs.get(w.workspace_id).cost_usd || 0).toFixed(4) : "–" },
  ], s.workspaces.map((w) => ({ ...w, __id: w.workspace_id })), "no workspace has a run or a weight"));
}

function weightEditor(w) {
  const input = h("input", { id: `weight-${w.workspace_id}`, type: "number", min: 1, max: 1000, value: w.weight, size: 5, disabled: !CAN_ACT });
  return h("span", {}, input, " ", actionButton("Save", `save-weight-${w.workspace_id}`,
    () => api("POST", `/api/workspaces/${w.workspace_id}/weight`, { weight: Number(input.value) })),
  w.weight_set ? "" : h("span", { class: "hint" }, " (default)"));
}

// --- audit ---------------------------------------------------------------------------------------------
function renderAudit(rows) {
  const node = document.getElementById("audit");
  if (!node) return;
  const shown = node.dataset.full ? rows : rows.slice(0, 8);
  fill("audit", table([
    { label: "when", value: (a) => when(a.at) },
    { label: "who", value: (a) => a.actor },
    { label: "what", value: (a) => a.action },
    { label: "target", cls: "mono", value: (a) => a.target },
    { label: "filter", cls: "mono wrap", value: (a) => Object.keys(a.filter || {}).length ? JSON.stringify(a.filter) : "" },
    { label: "result", cls: "mono wrap", value: (a) => JSON.stringify(a.result) },
  ], shown.map((a) => ({ ...a, __id: a.id })), "no actions yet"));
}

// --- start ---------------------------------------------------------------------------------------------
if (PAGE === "dead-letters") setupDeadLetters();
refresh();
connect();
