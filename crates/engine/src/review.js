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

// What kind of value a field holds: how the page shows it, and how it reads
// what the reviewer types for it.
function kindOf(value) {
  if (value === undefined || value === null) return "null";
  if (value instanceof Exact) return "number";
  if (typeof value === "string") return "text";
  if (typeof value === "boolean") return "boolean";
  return "document";
}

// Blanks a reviewer would not see: at either end of a line, two spaces or
// more, and every other kind of blank (tabs, line breaks, no-break and
// zero-width spaces).
const BLANKS = / {2,}|^ | $|[^\S ]|[\u200b-\u200d\u2060]/gm;

// `text` with each blank wrapped in a mark of its own (a tinted box; tabs,
// line breaks and carriage returns with a sign before them), the
// characters themselves unchanged.
function markBlanks(text) {
  const out = document.createDocumentFragment();
  let at = 0;
  for (const m of text.matchAll(BLANKS)) {
    if (m.index > at) out.append(text.slice(at, m.index));
    const sign = { "\n": " nl", "\t": " tab", "\r": " cr" }[m[0]] || "";
    out.append(el("span", m[0], { class: "blank" + sign }));
    at = m.index + m[0].length;
  }
  if (at < text.length) out.append(text.slice(at));
  return out;
}

// A system's value as the page shows it, isolated (`<bdi>`: a right-to-left
// override inside cannot reorder the text around it). NULL and empty text
// are markers that no text can look like; blanks are marked; a document is
// JSON with a tag. With `limit`, a longer value is cut there, saying so.
function valueView(value, limit) {
  const kind = kindOf(value);
  const view = el("bdi", null, { class: `value ${kind}` });
  const marker = (text, title) => el("span", text, { class: "marker", title });
  if (kind === "null") {
    view.append(marker("NULL", "no value (SQL NULL)"));
    return view;
  }
  let text = kind === "document" ? JSON.stringify(value, null, limit ? undefined : 2) : show(value);
  if (text === "") {
    view.append(marker("empty text", "text of no characters (not NULL)"));
    return view;
  }
  if (kind === "document") view.append(marker("JSON", "a JSON document"), " ");
  let cut = null;
  if (limit) {
    const chars = [...text];
    if (chars.length > limit) {
      text = chars.slice(0, limit).join("");
      cut = marker(`… shortened: ${chars.length.toLocaleString("en")} characters in all`,
        "the whole value is in the conflict above, and in the API");
    }
  }
  view.append(kind === "text" ? markBlanks(text) : text);
  if (cut) view.append(cut);
  return view;
}

// Any text a system gave (a record id, a user id), isolated as values are.
function isolated(text) {
  return el("bdi", text, { class: "value text" });
}

// A time as the reviewer reads it: UTC, to the second.
function when(text) {
  if (!text) return "—";
  const t = new Date(text);
  return isNaN(t) ? String(text) : t.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

// What the reviewer typed for field `name` of `kind`, as that kind: text
// exactly as typed, a number exactly as typed, true or false, a JSON
// document. Throws, saying what to type, when it is not one.
function typedValue(typed, kind, name) {
  switch (kind) {
    case "text":
      return typed;
    case "number":
      if (JSON_NUMBER.test(typed.trim())) return new Exact(typed.trim());
      throw new Error(`${name}: “${typed}” is not a number; type one (12.50), or choose NULL`);
    case "boolean":
      if (["true", "false"].includes(typed.trim())) return typed.trim() === "true";
      throw new Error(`${name}: type true or false, or choose NULL`);
    default:
      try { return parseExact(typed); } catch (e) {
        throw new Error(`${name}: not a JSON document (${e.message}); or choose NULL`);
      }
  }
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

// The controls that decide field `f` of conflict `c`: a choice of the
// value in the box, NULL, or (for text) the empty text, and the box, which
// starts with the source's value and keeps any text exactly, line breaks
// included. `read` answers the decided value, or throws saying what is
// wrong with it.
function decisionOf(c, f) {
  const source = c.source_record.fields[f];
  const target = c.target_record.fields[f];
  // The kind of whichever side holds a value: a field NULL in the source
  // still takes text where the target holds text (`1.50` stays `1.50`).
  const model = kindOf(source) !== "null" ? source : target;
  const kind = kindOf(model) === "null" ? "text" : kindOf(model);
  const controls = el("div", null, { class: "decide" });
  const choices = el("div", null, { class: "choices", role: "radiogroup", "aria-label": `what to write for ${f}` });
  const choice = (value, label) => {
    const radio = el("input", null, { type: "radio", name: `decide-${c.id}-${f}`, value });
    const wrap = el("label");
    wrap.append(radio, label);
    choices.appendChild(wrap);
    return radio;
  };
  const typed = choice("value", kind === "text" ? "this text:" : `this ${kind === "document" ? "JSON" : kind}:`);
  const none = choice("null", "NULL");
  const empty = kind === "text" ? choice("empty", "empty text") : null;
  const area = el("textarea", null, {
    name: f,
    rows: "2",
    spellcheck: "false",
    "aria-label": `value of ${f} to write to both systems (${kind})`,
  });
  const shown = source === undefined || source === null ? ""
    : kind === "document" ? JSON.stringify(source, null, 2) : show(source);
  area.value = shown;
  // A textarea reads CRLF back as LF: the value as the box holds it, to
  // tell a box left as it was from an edited one.
  const untouched = area.value;
  area.rows = String(Math.min(8, Math.max(2, untouched.split("\n").length)));
  (kindOf(source) === "null" ? none : source === "" && empty ? empty : typed).checked = true;
  area.addEventListener("input", () => { typed.checked = true; });
  controls.append(choices, area);
  // Line breaks as the field had them: CRLF text edited stays CRLF.
  const crlf = typeof model === "string" && /\r\n/.test(model) && !/(^|[^\r])\n/.test(model);
  const read = () => {
    if (none.checked) return null;
    if (empty && empty.checked) return "";
    // Left as it was: exactly the source's value, whatever a box keeps.
    if (area.value === untouched && kindOf(source) === kind) return source;
    const text = crlf ? area.value.replace(/\n/g, "\r\n") : area.value;
    return typedValue(text, kind, f);
  };
  return { controls, read };
}

// The base cell of a conflict that has none (two records linked for the
// first time): not a NULL either side held.
const NO_BASE = Symbol("no base");

function render(c) {
  const names = c.systems || { source: "source", target: "target" };
  const sourceName = names.source === "source" ? "source" : `${names.source} (source)`;
  const targetName = names.target === "target" ? "target" : `${names.target} (target)`;
  const box = el("section", null, { class: "conflict", "aria-labelledby": `c-${c.id}` });
  box.dataset.id = c.id;
  const heading = el("h2", `${c.entity_type} `, { id: `c-${c.id}` });
  heading.append(isolated(c.source_record.id), " ↔ ", isolated(c.target_record.id));
  box.appendChild(heading);
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
  const side = (record) => {
    const span = el("span");
    span.append(isolated(record.id), `, changed ${when(record.modified_at)}`);
    return span;
  };
  item("source", sourceName, side(c.source_record));
  item("target", targetName, side(c.target_record));
  box.appendChild(context);

  const scroll = el("div", null, { class: "scroll" });
  const table = el("table");
  const head = el("tr");
  for (const [h, col] of [["field", "field"], ["base", "value"], [sourceName, "value"], [targetName, "value"], ["decision", "decision"]]) {
    head.appendChild(el("th", h, { scope: "col", class: `col-${col}` }));
  }
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  const fields = [...new Set([...Object.keys(c.source_record.fields), ...Object.keys(c.target_record.fields)])].sort();
  // Each conflicting field's name and how to read the decision on it.
  const decisions = [];
  for (const f of fields) {
    const row = el("tr");
    row.dataset.field = f;
    const conflicting = c.conflicting_fields.includes(f);
    if (conflicting) row.className = "conflicting";
    row.appendChild(el("td", f, { class: "field" }));
    for (const v of [c.base ? c.base[f] : NO_BASE, c.source_record.fields[f], c.target_record.fields[f]]) {
      // A cell that scrolls: a value of a page or more leaves the table whole.
      const cell = el("div", null, { class: "cell" });
      cell.appendChild(v === NO_BASE
        ? el("span", "no base", { class: "marker", title: "the records were linked without a value both held" })
        : valueView(v));
      row.appendChild(el("td")).appendChild(cell);
    }
    const decision = el("td", null, { class: "decision" });
    if (conflicting) {
      const { controls, read } = decisionOf(c, f);
      decision.appendChild(controls);
      decisions.push([f, read]);
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
      try {
        for (const [f, read] of decisions) request.values[f] = read();
      } catch (e) {
        result.textContent = e.message;
        result.className = "result error";
        return;
      }
    } else {
      request.take = take;
    }
    try {
      await api(`/api/conflicts/${c.id}/resolve`, { method: "POST", body: JSON.stringify(request) });
      result.textContent = "decided: waiting for a run to apply it…";
      result.className = "result";
      box.querySelectorAll("button, input, textarea").forEach((b) => b.disabled = true);
      loadDecided();
      if (c.run_id) afterDecision(c.run_id);
      followOutcome(c.id, result);
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

// A decision is recorded at once but written by a run: follow the
// conflict until a run says what became of it (applied, or why not).
async function followOutcome(id, result) {
  const started = Date.now();
  while (Date.now() - started < 120000) {
    let conflict;
    try { ({ conflict } = await api(`/api/conflicts/${id}`)); } catch (e) {
      result.textContent = e.message;
      result.className = "result error";
      return;
    }
    if (conflict.outcome) {
      const applied = conflict.outcome === "applied";
      result.textContent = applied ? "applied ✓" : conflict.outcome;
      result.className = applied ? "result resolved" : "result error";
      loadDecided();
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// What the Decided list says of a decision's outcome.
function outcomeOf(c) {
  if (c.resolved_by === "system") return "";
  if (!c.outcome) return " · waiting for a run to apply it";
  return c.outcome === "applied" ? " · applied" : ` · ${c.outcome}`;
}

// How many characters of a value the Decided list shows.
const DECIDED_LIMIT = 120;

async function loadDecided() {
  try {
    const { conflicts } = await api("/api/conflicts?status=resolved&limit=20");
    const items = conflicts
      .sort((a, b) => String(b.resolved_at).localeCompare(String(a.resolved_at)))
      .map((c) => {
        const li = el("li", `${c.entity_type} `);
        li.append(isolated(c.source_record.id), ": ");
        Object.entries(c.resolution || {}).forEach(([k, v], i) => {
          li.append(i ? ", " : "", `${k} = `, valueView(v, DECIDED_LIMIT));
        });
        li.append(" — by ", isolated(c.resolved_by), ` at ${when(c.resolved_at)}`, outcomeOf(c));
        return li;
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
