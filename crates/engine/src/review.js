"use strict";
const $ = (id) => document.getElementById(id);
// The token lives as long as the tab: a shared machine keeps no token.
$("token").value = sessionStorage.getItem("syncd.token") || "";
$("reviewer").value = localStorage.getItem("syncd.reviewer") || "";

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

// What an edited input means: text for a text field; otherwise empty is
// null and anything else is read as JSON (a number exactly as typed,
// true/false), or as text when it is not JSON.
function valueOf(input) {
  const v = input.value;
  if (input.dataset.kind === "string") return v;
  if (v.trim() === "") return null;
  try { return parseExact(v.trim()); } catch (_) { return v; }
}

function render(c) {
  const box = document.createElement("section");
  box.className = "conflict";
  box.dataset.id = c.id;
  const fields = [...new Set([...Object.keys(c.source_record.fields), ...Object.keys(c.target_record.fields)])].sort();
  box.innerHTML = `<div class="meta"></div><table><thead><tr><th>field</th><th>base</th>
    <th>source</th><th>target</th><th>decision</th></tr></thead><tbody></tbody></table>
    <button data-take="source">Take source</button><button data-take="target">Take target</button>
    <button data-take="values">Resolve with the values above</button> <span class="result"></span>`;
  box.querySelector(".meta").textContent =
    `${c.entity_type} · source ${c.source_record.id} · target ${c.target_record.id} · ` +
    `conflicting: ${c.conflicting_fields.join(", ")}`;
  const body = box.querySelector("tbody");
  for (const f of fields) {
    const row = document.createElement("tr");
    const conflicting = c.conflicting_fields.includes(f);
    if (conflicting) row.className = "conflicting";
    for (const [cls, v] of [["field", f], ["", show((c.base || {})[f])],
                            ["", show(c.source_record.fields[f])], ["", show(c.target_record.fields[f])]]) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = v;
      row.appendChild(td);
    }
    const decision = document.createElement("td");
    if (conflicting) {
      const input = document.createElement("input");
      input.name = f;
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
  box.addEventListener("click", async (event) => {
    const take = event.target.dataset && event.target.dataset.take;
    if (!take) return;
    const by = $("reviewer").value.trim();
    localStorage.setItem("syncd.reviewer", by);
    const request = { by };
    if (take === "values") {
      request.values = {};
      for (const input of box.querySelectorAll("input[name]")) {
        request.values[input.name] = valueOf(input);
      }
    } else {
      request.take = take;
    }
    const result = box.querySelector(".result");
    try {
      await api(`/api/conflicts/${c.id}/resolve`, { method: "POST", body: JSON.stringify(request) });
      result.textContent = "resolved ✓";
      result.className = "result resolved";
      box.querySelectorAll("button").forEach((b) => b.disabled = true);
    } catch (e) {
      result.textContent = e.message;
      result.className = "result error";
    }
  });
  return box;
}

async function load() {
  $("status").textContent = "loading…";
  try {
    const { conflicts } = await api("/api/conflicts?status=pending");
    $("list").replaceChildren(...conflicts.map(render));
    $("status").textContent = `${conflicts.length} pending`;
    $("status").className = "";
  } catch (e) {
    $("status").textContent = e.message;
    $("status").className = "error";
  }
}
$("load").addEventListener("click", load);
if ($("token").value) load();
