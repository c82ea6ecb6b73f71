// Mutirão's web dashboard: the orchestrator's own API (/v1/...), signed in through
// /v1/login, kept live by /v1/events. No build step, no framework; every value shown is
// set as text, never as HTML.
"use strict";

const PAGE = 50;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["pending", "waiting", "scheduled", "assigned", "running",
                "succeeded", "failed", "cancelled"];
let token = sessionStorage.getItem("mutirao-token") || "";
let me = JSON.parse(sessionStorage.getItem("mutirao-me") || "null");  // {user, role, admin}
let lsn = -1;             // the journal position the views show
let pages = [];           // the "after" of each page shown before this one (Older/Newer)
let refreshing = false;
let refreshAgain = false;

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

async function api(method, path, body) {
  const headers = {"Authorization": `Bearer ${token}`};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {method, headers,
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    signOut();
    throw new Error(data.message || "signed out");
  }
  if (!resp.ok) throw new Error(`${data.message || resp.statusText} (HTTP ${resp.status})`);
  return data;
}

// -- signing in ----------------------------------------------------------------------------

function signOut() {
  token = "";
  me = null;
  sessionStorage.removeItem("mutirao-token");
  sessionStorage.removeItem("mutirao-me");
  show("login");
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const resp = await fetch("/v1/login", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: $("username").value, password: $("password").value})});
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    $("login-error").textContent = data.message || `HTTP ${resp.status}`;
    return;
  }
  token = data.token;
  me = {user: data.user, role: data.role, admin: data.admin};
  sessionStorage.setItem("mutirao-token", token);
  sessionStorage.setItem("mutirao-me", JSON.stringify(me));
  start();
});

// -- views ---------------------------------------------------------------------------------

function show(section) {
  for (const id of ["login", "tasks", "task", "workers"]) $(id).hidden = id !== section;
}

function route() {
  const [path, query] = location.hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  if (!token) return show("login");
  if (parts[0] === "task" && parts[1]) return showTask(decodeURIComponent(parts[1]));
  if (parts[0] === "workers") return showWorkers();
  return showTasks(new URLSearchParams(query || ""));
}

async function showTasks(params) {
  show("tasks");
  for (const name of ["state", "type", "owner", "q"]) {
    $(`filter-${name}`).value = params.get(name) || "";
  }
  const query = new URLSearchParams({limit: PAGE});
  for (const [k, v] of params) if (v) query.set(k, v);
  const page = await api("GET", `/v1/tasks?${query}`);
  const body = $("task-table").tBodies[0];
  body.replaceChildren(...page.tasks.map((t) => {
    const row = el("tr", undefined, {"data-id": t.id, "class": `state-${t.state}`});
    const link = el("a", t.id, {href: `#/task/${encodeURIComponent(t.id)}`});
    const first = el("td");
    first.append(link);
    row.append(first, el("td", t.type), el("td", t.state, {"class": "state"}),
      el("td", t.owner), el("td", t.attempts.length), el("td", when(t.created_at)),
      el("td", t.pending_reason || ""));
    return row;
  }));
  $("task-count").textContent =
    `${page.tasks.length} of ${page.total} task(s)${params.get("after") ? ", older ones" : ""}`;
  $("older").disabled = page.next === null;
  $("older").onclick = () => {
    pages.push(params.get("after") || "");
    params.set("after", page.next);
    location.hash = `#/tasks?${params}`;
  };
  $("newer").disabled = !params.get("after");
  $("newer").onclick = () => {
    const previous = pages.pop() || "";
    if (previous) params.set("after", previous); else params.delete("after");
    location.hash = `#/tasks?${params}`;
  };
}

$("filters").addEventListener("change", () => {
  const params = new URLSearchParams();
  for (const name of ["state", "type", "owner", "q"]) {
    const value = $(`filter-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  pages = [];
  location.hash = `#/tasks?${params}`;
});

async function showTask(id) {
  show("task");
  const t = await api("GET", `/v1/tasks/${encodeURIComponent(id)}`);
  $("task-id").textContent = t.id;
  $("task-state").textContent = t.state;
  $("task-state").className = `state state-${t.state}`;
  const fields = [["type", t.type], ["owner", t.owner], ["priority", t.priority],
    ["queue", t.queue], ["resources", JSON.stringify(t.resources)],
    ["max attempts", t.max_attempts], ["timeout", `${t.timeout} s`], ["key", t.key || ""],
    ["created", when(t.created_at)], ["finished", when(t.finished_at)],
    ["why waiting", t.pending_reason || ""]];
  $("task-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("task-payload").textContent = JSON.stringify(t.payload, null, 2);
  $("outcome-title").textContent = t.error ? "Error" : "Result";
  $("task-outcome").textContent = t.error || (FINISHED.has(t.state) ? JSON.stringify(t.result, null, 2) : "");
  $("attempt-table").tBodies[0].replaceChildren(...t.attempts.map((a) => {
    const row = el("tr", undefined, {"class": `outcome-${a.outcome || "running"}`});
    row.append(el("td", a.attempt), el("td", a.worker), el("td", when(a.assigned_at)),
      el("td", when(a.started_at)), el("td", when(a.ended_at)),
      el("td", a.outcome || "in progress"), el("td", a.error || ""));
    return row;
  }));
  $("task-after").replaceChildren(...t.after.map((dep) => {
    const item = el("li");
    item.append(el("a", dep, {href: `#/task/${encodeURIComponent(dep)}`}));
    return item;
  }));
  const mayAct = me && me.role !== "viewer";
  $("cancel").hidden = !mayAct || FINISHED.has(t.state);
  $("retry").hidden = !mayAct || !["failed", "cancelled"].includes(t.state);
  $("cancel").onclick = () => act(`/v1/tasks/${encodeURIComponent(t.id)}/cancel`, t.id);
  $("retry").onclick = () => act(`/v1/tasks/${encodeURIComponent(t.id)}/retry`, null);
}

async function act(path, stay) {
  $("action-result").textContent = "";
  try {
    const t = await api("POST", path, {});
    $("action-result").textContent = stay ? `now ${t.state}` : `submitted again as ${t.id}`;
    if (stay) await showTask(stay); else location.hash = `#/task/${encodeURIComponent(t.id)}`;
  } catch (error) {
    $("action-result").textContent = error.message;
  }
}

async function showWorkers() {
  show("workers");
  const body = $("worker-table").tBodies[0];
  if (!me || !me.admin) {
    body.replaceChildren(el("tr", "The workers are for admins."));
    return;
  }
  const {workers} = await api("GET", "/v1/workers");
  body.replaceChildren(...workers.map((w) => {
    const row = el("tr", undefined, {"data-id": w.id, "class": `worker-${w.state}`});
    row.append(el("td", w.id), el("td", w.state), el("td", `${w.running}/${w.slots}`),
      el("td", w.load.toFixed(2)), el("td", `${w.heartbeat_age.toFixed(1)} s`),
      el("td", (w.queues || []).join(", ")), el("td", JSON.stringify(w.resources || {})));
    return row;
  }));
}

// -- live updates --------------------------------------------------------------------------

function showCluster(event) {
  const parts = [`leader ${event.leader || "?"}`, `epoch ${event.epoch}`];
  if (event.tasks) {
    parts.push(`${event.tasks.pending || 0} pending`, `${event.tasks.running || 0} running`);
  }
  for (const s of event.standbys || []) {
    parts.push(`standby ${s.node} ${s.synced ? "in sync" : "catching up"}, lag ${s.lag}`);
  }
  $("cluster").textContent = parts.join(" · ");
}

// One refresh at a time; one asked for meanwhile (a new hash, a new event) runs after it,
// or a page opened during a refresh would be painted over by the page it replaced.
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    do {
      refreshAgain = false;
      try { await route(); } catch (error) { console.warn(error); }
    } while (refreshAgain);
  } finally {
    refreshing = false;
  }
}

// Server-sent events read through fetch (EventSource cannot send the bearer token).
async function follow() {
  while (token) {
    try {
      const resp = await fetch("/v1/events", {headers: {"Authorization": `Bearer ${token}`}});
      if (resp.status === 401) return signOut();
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5)).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          showCluster(event);
          if (event.lsn !== lsn) {
            lsn = event.lsn;
            refresh();
          }
        }
      }
    } catch (error) {
      console.warn("event stream:", error);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));  // then reconnect
  }
}

async function start() {
  if (!me) return signOut();
  $("who").textContent = `${me.user} (${me.role})`;
  await refresh();
  follow();
}

const stateFilter = $("filter-state");
for (const state of STATES) stateFilter.append(el("option", state, {value: state}));
window.addEventListener("hashchange", refresh);
if (token) start(); else show("login");
