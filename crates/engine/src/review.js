"use strict";
const $ = (id) => document.getElementById(id);
// The token lives as long as the tab: a shared machine keeps no token.
$("token").value = sessionStorage.getItem("syncd.token") || "";
$("reviewer").value = localStorage.getItem("syncd.reviewer") || "";
// Who decides: the token's holder when it names one (then the text box is
// hidden), else the user id typed once.
let holder = null;

async function api(path, options = {}) {
  const token = $("token").value.trim();
  sessionStorage.setItem("syncd.token", token);
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
  });
  const text = await response.text();
  let body;
  try { body = parseExact(text); } catch (_) { body = { error: text || response.statusText }; }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// A JSON number exactly as the server wrote it: a double would round
// `12345678901234567890.123456789` (money in a numeric column) for the
// reviewer to see, and write the rounded value back.
class Exact {
  constructor(text) { this.text = text; }
  toJSON() { return JSON.rawJSON(this.text); }
}

function parseExact(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" ? new Exact(context.source) : value);
}

function show(value) {
  if (value === undefined || value === null) return "—";
  if (value instanceof Exact) return value.text;
  return typeof value === "string" ? value : JSON.stringify(value);
}

// A time as the reviewer reads it: UTC, to the second.
function when(text) {
  if (!text) return "—";
  const t = new Date(text);
  return isNaN(t) ? String(text) : t.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// What an edited input means: text for a text field; otherwise empty is
// null and anything else is read as JSON (a number exactly as typed,
// true/false), or as text when it is not JSON.
function valueOf(input) {
  const v = input.value;
  if (input.dataset.kind === "string") return v;
  if (v.trim() === "") return null;
  try { return parseExact(v.trim()); } catch (_) { return v; }
}

// An element with text (never markup: values come from the systems).
function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// A run's id, as a link that shows the run here (its API address needs the
// token, which a plain link would not send).
function runLink(id) {
  const a = el("a", id, { href: `/api/runs/${id}`, "aria-expanded": "false" });
  a.addEventListener("click", async (event) => {
    event.preventDefault();
    const open = a.nextElementSibling && a.nextElementSibling.classList.contains("run-detail");
    if (open) {
      a.nextElementSibling.remove();
      a.setAttribute("aria-expanded", "false");
      return;
    }
    const detail = el("div", "loading…", { class: "run-detail", role: "region", "aria-label": `run ${id}` });
    a.after(detail);
    a.setAttribute("aria-expanded", "true");
    try {
      const { run, steps, pending_conflicts } = await api(`/api/runs/${id}`);
      // (Numbers arrive as exact text: `show` writes them.)
      const lines = [el("div", `${run.state} · trigger ${run.trigger} · pending conflicts ${show(pending_conflicts)}` +
        (run.error ? ` · ${run.error}` : ""))];
      for (const st of steps) {
        const c = st.counters || {};
        const n = (k) => show(c[k] === undefined ? 0 : c[k]);
        lines.push(el("div", `${st.entity_type} ${st.direction}: ${st.state}, read ${n("read")}, ` +
          `created ${n("created")}, updated ${n("updated")}, failed ${n("failed")}`));
      }
      detail.replaceChildren(...lines);
    } catch (e) {
      detail.textContent = e.message;
      detail.className = "run-detail error";
    }
  });
  return a;
}

function render(c) {
  const names = c.systems || { source: "source", target: "target" };
  const sourceName = names.source === "source" ? "source" : `${names.source} (source)`;
  const targetName = names.target === "target" ? "target" : `${names.target} (target)`;
  const box = el("section", null, { class: "conflict", "aria-labelledby": `c-${c.id}` });
  box.dataset.id = c.id;
  box.appendChild(el("h2", `${c.entity_type} ${c.source_record.id} ↔ ${c.target_record.id}`, { id: `c-${c.id}` }));
  box.appendChild(el("p", `conflicting: ${c.conflicting_fields.join(", ")}`, { class: "meta" }));

  const context = el("dl", null, { class: "context" });
  const item = (key, label, value) => {
    const div = el("div");
    div.appendChild(el("dt", label));
    const dd = el("dd", null, { "data-context": key });
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    div.appendChild(dd);
    context.appendChild(div);
  };
  item("tenant", "tenant", c.tenant_id);
  item("integration", "integration", c.integration_id);
  item("entity", "entity", c.entity_type);
  item("strategy", "parked by strategy", c.strategy_applied);
  item("run", "run", c.run_id ? runLink(c.run_id) : "—");
  item("parked", "parked at", when(c.created_at));
  item("source", sourceName, `${c.source_record.id}, changed ${when(c.source_record.modified_at)}`);
  item("target", targetName, `${c.target_record.id}, changed ${when(c.target_record.modified_at)}`);
  box.appendChild(context);

  const scroll = el("div", null, { class: "scroll" });
  const table = el("table");
  const head = el("tr");
  for (const h of ["field", "base", sourceName, targetName, "decision"]) head.appendChild(el("th", h, { scope: "col" }));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  const fields = [...new Set([...Object.keys(c.source_record.fields), ...Object.keys(c.target_record.fields)])].sort();
  for (const f of fields) {
    const row = el("tr");
    const conflicting = c.conflicting_fields.includes(f);
    if (conflicting) row.className = "conflicting";
    row.appendChild(el("td", f, { class: "field" }));
    for (const v of [(c.base || {})[f], c.source_record.fields[f], c.target_record.fields[f]]) {
      row.appendChild(el("td", show(v)));
    }
    const decision = el("td");
    if (conflicting) {
      const input = el("input", null, { name: f, "aria-label": `value of ${f} to write to both systems` });
      // Edited as text; sent back as the type the field has in the source
      // (a text field stays text even when it reads "123").
      const original = c.source_record.fields[f];
      input.dataset.kind = original === null || original === undefined ? "null"
        : original instanceof Exact ? "number" : typeof original;
      input.value = original === null || original === undefined ? "" : show(original);
      input.placeholder = "(empty)";
      decision.appendChild(input);
    }
    row.appendChild(decision);
    body.appendChild(row);
  }
  scroll.appendChild(table);
  box.appendChild(scroll);

  const actions = el("div", null, { class: "actions" });
  actions.appendChild(el("button", `Take ${sourceName}`, { "data-take": "source", type: "button" }));
  actions.appendChild(el("button", `Take ${targetName}`, { "data-take": "target", type: "button" }));
  actions.appendChild(el("button", "Resolve with the values above", { "data-take": "values", type: "button" }));
  const result = el("span", null, { class: "result", role: "status" });
  actions.appendChild(result);
  box.appendChild(actions);

  actions.addEventListener("click", async (event) => {
    const take = event.target.dataset && event.target.dataset.take;
    if (!take) return;
    const request = {};
    if (!holder) {
      request.by = $("reviewer").value.trim();
      localStorage.setItem("syncd.reviewer", request.by);
    }
    if (take === "values") {
      request.values = {};
      for (const input of box.querySelectorAll("input[name]")) {
        request.values[input.name] = valueOf(input);
      }
    } else {
      request.take = take;
    }
    try {
      await api(`/api/conflicts/${c.id}/resolve`, { method: "POST", body: JSON.stringify(request) });
      result.textContent = "resolved ✓";
      result.className = "result resolved";
      box.querySelectorAll("button, input").forEach((b) => b.disabled = true);
      loadDecided();
      if (c.run_id) afterDecision(c.run_id);
    } catch (e) {
      result.textContent = e.message;
      result.className = "result error";
    }
  });
  return box;
}

// Once the last conflict of a run is decided, follow the run: a worker
// resumes it; say how it ends.
async function afterDecision(runId) {
  const { conflicts } = await api(`/api/conflicts?run=${runId}`);
  if (conflicts.length > 0) return;
  const status = $("run-status");
  const say = (text, state) => {
    status.replaceChildren("Run ", runLink(runId), `: ${text}`);
    status.className = state ? `state-${state}` : "";
  };
  say("every conflict is decided; waiting for a worker to resume it…");
  const started = Date.now();
  while (Date.now() - started < 120000) {
    let run;
    try { ({ run } = await api(`/api/runs/${runId}`)); } catch (e) { say(e.message, "error"); return; }
    if (["succeeded", "failed", "cancelled"].includes(run.state)) {
      say(run.state + (run.error ? ` (${run.error})` : ""), run.state);
      return;
    }
    say(run.state === "running" ? "resumed, running…" : `${run.state}…`, run.state);
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function loadDecided() {
  try {
    const { conflicts } = await api("/api/conflicts?status=resolved&limit=20");
    const items = conflicts
      .sort((a, b) => String(b.resolved_at).localeCompare(String(a.resolved_at)))
      .map((c) => {
        const values = Object.entries(c.resolution || {}).map(([k, v]) => `${k} = ${show(v)}`).join(", ");
        return el("li", `${c.entity_type} ${c.source_record.id}: ${values} — by ${c.resolved_by} at ${when(c.resolved_at)}`);
      });
    $("decided-list").replaceChildren(...items);
    $("decided").hidden = items.length === 0;
  } catch (_) {
    // The pending list shows the error already.
  }
}

async function load() {
  $("status").textContent = "loading…";
  try {
    const me = await api("/api/me");
    holder = me.holder || null;
    $("reviewer-field").hidden = holder !== null;
    $("whoami").textContent = `${holder ? `deciding as ${holder}` : "deciding as the user id below"}` +
      ` · ${me.admin ? "every tenant" : `tenant ${me.tenant}`}`;
    const { conflicts } = await api("/api/conflicts?status=pending");
    $("list").replaceChildren(...conflicts.map(render));
    $("status").textContent = `${conflicts.length} pending`;
    $("status").className = "";
    loadDecided();
  } catch (e) {
    $("status").textContent = e.message;
    $("status").className = "error";
  }
}
$("load").addEventListener("click", load);
if ($("token").value) load();
