// The local dev dashboard: polls /_local/api/state every second and renders it; the trace
// panel polls /_local/api/trace/{id} (or one invocation) while it is open. Every text from the
// server goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const api = (path) => "/_local/api/" + path;

// What the trace panel shows: {kind: "trace"|"invocation", id} or null. Kept in the URL hash.
let selection = null;
// Functions whose card the user opened or closed by hand: their choice stands.
const toggled = new Map();
// Last rendered JSON per part, to leave the DOM alone when nothing changed.
const rendered = new Map();
let queueIds = new Map(); // physical queue name -> logical id

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function changed(key, value) {
  const json = JSON.stringify(value);
  if (rendered.get(key) === json) return false;
  rendered.set(key, json);
  return true;
}

function pad(n, width) {
  return String(n).padStart(width, "0");
}

function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return ms.toFixed(2) + " ms";
  return (ms / 1000).toFixed(2) + " s";
}

function age(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
}

function badge(kind, text) {
  return el("span", { class: "badge " + kind, text: text || kind });
}

function triggerLabel(t) {
  switch (t.kind) {
    case "route": return t.route;
    case "queue": {
      const id = queueIds.get(t.queue) || t.queue;
      return `queue ${id} (${t.messages} ${t.messages === 1 ? "msg" : "msgs"})`;
    }
    case "schedule": return "schedule " + t.rule;
    default: return "direct";
  }
}

function correlationLinks(ids) {
  return ids.map((id) =>
    el("a", {
      class: "link mono correlation-link",
      text: id,
      title: "trace " + id,
      onclick: (e) => { e.stopPropagation(); openTrace(id); },
    }));
}

// ---- routes -------------------------------------------------------------------------------

function renderRoutes(routes) {
  if (!changed("routes", routes)) return;
  document.getElementById("routes-count").textContent = routes.length;
  const body = document.querySelector("#routes tbody");
  body.replaceChildren(...routes.map((r) =>
    el("tr", { dataset: { method: r.method, path: r.path } },
      el("td", {}, el("span", { class: "method " + r.method, text: r.method })),
      el("td", { class: "mono path", text: r.path }),
      el("td", { class: "auth muted", text: r.auth }),
      el("td", {}, el("a", { class: "link function-link", text: r.function, onclick: () => showFunction(r.function) })))));
  if (routes.length === 0) body.append(el("tr", {}, el("td", { colspan: 4, class: "empty", text: "No HttpApi routes." })));
}

// ---- queues -------------------------------------------------------------------------------

function queueRole(q) {
  const parts = [];
  if (q.deadLettersOf.length) {
    // Several origins (a DLQ shared by the bus's rule targets): counted, named on hover.
    const of = q.deadLettersOf.length > 2
      ? `${q.deadLettersOf.length} origins`
      : q.deadLettersOf.join(", ");
    const role = badge("role", "DLQ of " + of);
    role.title = q.deadLettersOf.join("\n");
    parts.push(role);
  }
  if (q.consumers.length) parts.push(badge("role", "→ " + q.consumers.join(", ")));
  if (q.dlq) parts.push(el("span", { class: "muted", text: " DLQ " + q.dlq }));
  return parts;
}

function renderQueues(queues) {
  queueIds = new Map(queues.map((q) => [q.name, q.id]));
  if (!changed("queues", queues)) return;
  document.getElementById("queues-count").textContent = queues.length;
  const body = document.querySelector("#queues tbody");
  body.replaceChildren(...queues.map((q) => {
    const button = q.deadLettersOf.length
      ? el("button", {
          class: "redrive",
          disabled: !q.redriveTo || !q.visible,
          title: q.redriveTo ? "move its messages back to " + q.redriveTo : "the DLQ of several origins: no single place to redrive to",
          text: q.redriveTo ? "Redrive → " + q.redriveTo : "Redrive",
          onclick: () => redrive(q),
        })
      : null;
    return el("tr", { dataset: { queue: q.id } },
      el("td", {}, el("div", { class: "queue-id", text: q.id }), el("div", { class: "mono muted", text: q.name })),
      el("td", {}, queueRole(q)),
      el("td", { class: "num visible", text: q.error ? "?" : q.visible, title: q.error || undefined }),
      el("td", { class: "num in-flight", text: q.error ? "?" : q.inFlight }),
      el("td", { class: "num" }, button));
  }));
  if (queues.length === 0) body.append(el("tr", {}, el("td", { colspan: 5, class: "empty", text: "No queues." })));
}

async function redrive(q) {
  const out = document.getElementById("redrive-result");
  out.hidden = false;
  out.textContent = `Redriving ${q.id}…`;
  try {
    const response = await fetch(api(`queues/${encodeURIComponent(q.id)}/redrive`), {
      method: "POST",
      headers: { "x-local-dashboard": "1" },
    });
    const body = await response.json();
    out.textContent = response.ok
      ? `${q.id}: moved ${body.moved} message${body.moved === 1 ? "" : "s"} back to ${q.redriveTo}` +
        (body.failed ? `, ${body.failed} failed (left in the DLQ)` : "")
      : `${q.id}: ${body.message}`;
  } catch (e) {
    out.textContent = `${q.id}: ${e}`;
  }
  poll();
}

// ---- functions ----------------------------------------------------------------------------

function showFunction(id) {
  const card = document.querySelector(`.function[data-function="${CSS.escape(id)}"]`);
  if (!card) return;
  card.open = true;
  toggled.set(id, true);
  card.scrollIntoView({ behavior: "smooth", block: "start" });
}

function functionCard(f) {
  const card = el("details", { class: "function", dataset: { function: f.id } });
  const summary = el("summary", {
    onclick: () => toggled.set(f.id, !card.open),
  });
  card.append(summary, el("div", { class: "body" }));
  return card;
}

function instanceChip(i) {
  const state = !i.alive ? "exited" : i.busy ? "busy" : "idle";
  return el("span", { class: "instance" + (i.alive ? "" : " dead"), dataset: { instance: i.id, state } },
    badge(state),
    el("span", { class: "mono", text: i.pid ? "pid " + i.pid : "#" + i.id }),
    el("span", { class: "muted", text: i.alive ? age(i.ageMs) : i.exitStatus }),
    el("span", { class: "muted", text: `${i.invocations} inv` }));
}

function invocationRow(v) {
  const init = v.initDurationMs !== null && v.initDurationMs !== undefined;
  return el("tr", {
    class: "invocation",
    dataset: { requestId: v.requestId, outcome: v.outcome },
    title: v.error || "open its trace",
    onclick: () => v.correlationIds.length ? openTrace(v.correlationIds[0]) : openInvocation(v.requestId),
  },
    el("td", { class: "mono time", text: clock(v.startedAtMs) }),
    el("td", { class: "mono request-id", text: v.requestId.slice(0, 8), title: v.requestId }),
    el("td", { class: "trigger mono", text: triggerLabel(v.trigger) }),
    el("td", { class: "correlation" }, correlationLinks(v.correlationIds)),
    el("td", { class: "num duration", text: v.outcome === "running" ? "…" : duration(v.durationMs) }),
    el("td", { class: "num init" }, init ? badge("cold", duration(v.initDurationMs)) : ""),
    el("td", { class: "num memory", text: v.maxMemoryUsedMb ? `${v.maxMemoryUsedMb} / ${v.memorySizeMb} MB` : "" }),
    el("td", { class: "outcome" }, badge(v.outcome)));
}

function renderFunction(card, f) {
  const live = f.instances.filter((i) => i.alive);
  const busy = live.filter((i) => i.busy).length;
  const errors = f.invocations.filter((v) => !["success", "running"].includes(v.outcome)).length;
  const active = f.invocations.length > 0 || live.length > 0;
  if (!toggled.has(f.id) && active && !card.open) card.open = true;
  card.querySelector("summary").replaceChildren(
    el("span", { class: "name", text: f.id }),
    el("span", { class: "meta mono", text: f.name }),
    el("span", { class: "meta", text: `${f.memoryMb} MB · ${f.timeoutSecs} s` }),
    el("span", { class: "summary-right" },
      el("span", { class: "meta", text: `${live.length} instance${live.length === 1 ? "" : "s"}` + (busy ? ` (${busy} busy)` : "") }),
      el("span", { class: "meta", text: `${f.invocations.length} recent` }),
      errors ? badge("error", `${errors} failed`) : null));
  const body = card.querySelector(".body");
  const instances = f.instances.length
    ? el("div", { class: "instances" }, f.instances.map(instanceChip))
    : el("div", { class: "empty", text: "No instance yet: one starts on the first invocation." });
  const table = el("table", { class: "invocations" },
    el("thead", {}, el("tr", {},
      ["Start", "Request", "Trigger", "Correlation", "Duration", "Init", "Memory", "Outcome"].map((h, n) =>
        el("th", { class: n >= 4 && n <= 6 ? "num" : undefined, text: h })))),
    el("tbody", {}, f.invocations.map(invocationRow)));
  const wrap = card.querySelector(".invocations-wrap");
  const scroll = wrap ? wrap.scrollTop : 0;
  const newWrap = el("div", { class: "invocations-wrap" }, f.invocations.length ? table : el("div", { class: "empty", text: "No invocation yet." }));
  body.replaceChildren(instances, newWrap);
  newWrap.scrollTop = scroll;
}

function renderFunctions(functions) {
  document.getElementById("functions-count").textContent = functions.length;
  const container = document.getElementById("functions");
  const wanted = new Set(functions.map((f) => f.id));
  for (const card of [...container.children]) {
    if (!wanted.has(card.dataset.function)) card.remove();
  }
  functions.forEach((f, index) => {
    let card = container.querySelector(`.function[data-function="${CSS.escape(f.id)}"]`);
    if (!card) card = functionCard(f);
    if (container.children[index] !== card) container.insertBefore(card, container.children[index] || null);
    // Ages move every second; render when anything else changed, or every few seconds.
    const key = "fn:" + f.id;
    const stable = { ...f, instances: f.instances.map((i) => ({ ...i, ageMs: Math.floor(i.ageMs / 5000) })) };
    if (changed(key, stable)) renderFunction(card, f);
  });
}

// ---- trace --------------------------------------------------------------------------------

function openTrace(id) {
  id = id.trim();
  if (!id) return;
  document.getElementById("trace-input").value = id;
  select({ kind: "trace", id });
}

function openInvocation(requestId) {
  select({ kind: "invocation", id: requestId });
}

function select(s) {
  selection = s;
  rendered.delete("trace");
  history.replaceState(null, "", "#" + s.kind + "=" + encodeURIComponent(s.id));
  refreshTrace();
  if (window.innerWidth <= 1000) document.getElementById("trace-panel").scrollIntoView({ behavior: "smooth" });
}

async function refreshTrace() {
  if (!selection) return;
  const s = selection;
  const path = s.kind === "trace" ? "trace/" + encodeURIComponent(s.id) : "invocations/" + encodeURIComponent(s.id);
  try {
    const response = await fetch(api(path), { cache: "no-store" });
    const body = await response.json();
    if (selection !== s) return;
    const invocations = s.kind === "trace" ? body.invocations : response.ok ? [body] : [];
    renderTrace(s, invocations);
  } catch (e) {
    // The state poll reports the connection.
  }
}

function renderTrace(s, invocations) {
  if (!changed("trace", [s, invocations])) return;
  const results = document.getElementById("trace-results");
  document.getElementById("trace-hint").hidden = true;
  if (invocations.length === 0) {
    results.replaceChildren(el("div", { class: "empty", text: s.kind === "trace"
      ? `No invocation in the journal carried ${s.id} (yet).`
      : `Invocation ${s.id} is no longer in the journal.` }));
    return;
  }
  const t0 = Math.min(...invocations.map((v) => v.startedAtMs));
  const t1 = Math.max(...invocations.map((v) => v.startedAtMs + (v.durationMs || 0) + (v.initDurationMs || 0)));
  const span = Math.max(t1 - t0, 1);
  const functions = new Set(invocations.map((v) => v.function));
  results.replaceChildren(
    el("div", { class: "trace-head" }, s.kind === "trace"
      ? [el("span", { class: "mono", text: s.id }), ` · ${invocations.length} invocation${invocations.length === 1 ? "" : "s"} across ${functions.size} function${functions.size === 1 ? "" : "s"} · ${duration(t1 - t0)}`]
      : [el("span", { class: "mono", text: s.id })]),
    ...invocations.map((v) => {
      const left = ((v.startedAtMs - t0) / span) * 100;
      const width = (((v.durationMs || 0) + (v.initDurationMs || 0)) / span) * 100;
      const figures = [
        v.outcome === "running" ? "running" : "duration " + duration(v.durationMs),
        v.initDurationMs !== null && v.initDurationMs !== undefined ? "init " + duration(v.initDurationMs) : null,
        v.maxMemoryUsedMb ? `max memory ${v.maxMemoryUsedMb} / ${v.memorySizeMb} MB` : null,
        "request " + v.requestId,
      ].filter(Boolean).join(" · ");
      const lines = v.lines.map((l) =>
        el("div", { class: "log-line " + l.stream },
          el("span", { class: "t", text: "+" + Math.max(0, l.atMs - v.startedAtMs) + " ms" }), l.text));
      if (v.error) lines.push(el("div", { class: "log-line stderr", text: v.error }));
      if (v.linesDropped) lines.push(el("div", { class: "none", text: `(${v.linesDropped} more lines not kept)` }));
      if (lines.length === 0) lines.push(el("div", { class: "none", text: "(no output)" }));
      return el("div", { class: "trace-invocation", dataset: { requestId: v.requestId, function: v.function } },
        el("div", { class: "head" },
          el("span", { class: "mono muted", text: "+" + (v.startedAtMs - t0) + " ms" }),
          el("a", { class: "fn link", text: v.function, onclick: () => showFunction(v.function) }),
          el("span", { class: "mono muted trigger", text: triggerLabel(v.trigger) }),
          badge(v.outcome)),
        el("div", { class: "figures", text: figures }),
        el("div", { class: "bar" }, el("span", { style: `left:${left}%;width:${width}%` })),
        el("div", { class: "logs" }, lines));
    }));
}

// ---- polling ------------------------------------------------------------------------------

let timer = null;
// Each poll's number: only the latest schedules the next one, so an extra poll (after a
// redrive) never starts a second loop.
let polls = 0;

async function poll() {
  clearTimeout(timer);
  const mine = ++polls;
  const status = document.getElementById("status");
  try {
    const response = await fetch(api("state"), { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const state = await response.json();
    renderQueues(state.queues);
    renderRoutes(state.routes);
    renderFunctions(state.functions);
    status.className = "status live";
    status.textContent = `live · up ${age(state.now - state.startedAt)} · updated ${clock(state.now).slice(0, 8)}`;
    await refreshTrace();
  } catch (e) {
    status.className = "status down";
    status.textContent = "disconnected: is local dev running? retrying…";
  }
  if (mine === polls) timer = setTimeout(poll, POLL_MS);
}

document.getElementById("trace-form").addEventListener("submit", (e) => {
  e.preventDefault();
  openTrace(document.getElementById("trace-input").value);
});

const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("trace")) openTrace(hash.get("trace"));
else if (hash.get("invocation")) openInvocation(hash.get("invocation"));
poll();
