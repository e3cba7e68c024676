// The moonq dashboard: plain JavaScript over the JSON API (docs/http.md).
// Every value from the server reaches the page as text (textContent and
// text nodes, never HTML), so job data, queue names and errors cannot
// inject markup. The token, when the server has one, is asked once, kept
// in sessionStorage and sent as a Bearer header.
"use strict";

const STATES = ["waiting", "active", "delayed", "paused", "completed", "failed", "cancelled"];
const RUN_STATUSES = ["running", "completed", "failed", "cancelled"];
const PAGE = 50;           // jobs and runs per page
const EVENTS_SHOWN = 200;  // live events kept on the page
const REFRESH_MS = 3000;   // queues and groups refresh this often

// ---- DOM -------------------------------------------------------------------

// h("a", {href: "#/", class: "x", onclick: fn}, "text", child, [more]):
// strings and numbers become text nodes.
function h(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  append(e, kids);
  return e;
}

function append(e, kids) {
  for (const k of kids) {
    if (k === undefined || k === null || k === false) continue;
    if (Array.isArray(k)) append(e, k);
    else if (k instanceof Node) e.appendChild(k);
    else e.appendChild(document.createTextNode(String(k)));
  }
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function table(head, rows, numeric) {
  numeric = numeric || [];
  return h("div", {class: "scroll"}, h("table", {},
    h("thead", {}, h("tr", {}, head.map((t, i) => h("th", {class: numeric.includes(i) ? "num" : null}, t)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c, i) =>
      c instanceof Node && c.tagName === "TD" ? c : h("td", {class: numeric.includes(i) ? "num" : null}, c))))
      : h("tr", {}, h("td", {class: "muted", colspan: head.length}, "none")))));
}

function kv(pairs) {
  return h("div", {class: "scroll"}, h("table", {class: "kv"}, h("tbody", {},
    pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
      .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {class: "wrap"}, v))))));
}

function stateTag(s) { return h("span", {class: "state state-" + s}, s); }

function json(v) { return h("pre", {}, v === undefined ? "(none)" : JSON.stringify(v, null, 2)); }

// "2026-11-29T16:35:12.153+00:00" -> "2026-11-29 16:35:12"
function time(s) {
  if (!s) return "";
  const m = String(s).match(/^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)/);
  return m ? m[1] + " " + m[2] : String(s);
}

function button(label, onclick, cls) {
  return h("button", {type: "button", class: cls, onclick: async (ev) => {
    const b = ev.currentTarget;
    b.disabled = true;
    try { await onclick(); } catch (e) { notice(e.message); } finally { b.disabled = false; }
  }}, label);
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// ---- the API -----------------------------------------------------------------

const TOKEN_KEY = "moonq.token";

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) headers.Authorization = "Bearer " + t;
  return headers;
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const init = {method, headers: authHeaders(body === undefined ? {} : {"Content-Type": "application/json"})};
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (res.status === 401) {
    askToken();
    throw new Unauthorized("the token is missing or wrong");
  }
  const text = await res.text();
  let value = null;
  try { value = JSON.parse(text); } catch (e) { value = null; }
  if (!res.ok) throw new Error((value && value.error) || res.status + " " + res.statusText);
  return value;
}

function askToken() {
  stopTimers();
  $("main").replaceChildren();
  $("login").hidden = false;
  $("token").focus();
}

// ---- pages -----------------------------------------------------------------

let generation = 0;   // a render started later makes earlier ones stale
let timer = null;     // the page's refresh timer
let stream = null;    // the events page's AbortController

function stopTimers() {
  if (timer) clearTimeout(timer);
  timer = null;
  if (stream) stream.abort();
  stream = null;
}

// Runs fill(main) for the current page. With refreshMs it runs again
// refreshMs after each draw ends, or five times as long as the draw took
// when that is longer: a slow database is not asked more often than it
// can answer.
async function show(fill, refreshMs) {
  const my = ++generation;
  const draw = async () => {
    const began = Date.now();
    const box = h("div", {});
    try {
      await fill(box);
      if (my !== generation) return;
      notice("");
      $("main").replaceChildren(box);
    } catch (e) {
      if (e instanceof Unauthorized) return;
      if (my === generation) notice(e.message);
    }
    if (refreshMs && my === generation)
      timer = setTimeout(draw, Math.max(refreshMs, 5 * (Date.now() - began)));
  };
  await draw();
}

// Jobs finished (completed, failed, cancelled) per queue, sampled at each
// refresh of the queues page since the dashboard was opened: the
// throughput sparklines (jobs per second between samples).
const finished = new Map();
const SPARK_POINTS = 40;

function sparkline(queue, counts) {
  const done = counts.completed + counts.failed + counts.cancelled;
  const seen = finished.get(queue) || [];
  seen.push({t: Date.now(), done});
  if (seen.length > SPARK_POINTS + 1) seen.shift();
  finished.set(queue, seen);
  // Finished jobs leave with their retention, so a drop counts as 0.
  const rates = seen.slice(1).map((v, i) =>
    Math.max(0, v.done - seen[i].done) / Math.max(0.001, (v.t - seen[i].t) / 1000));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 " + SPARK_POINTS + " 10");
  svg.setAttribute("preserveAspectRatio", "none");
  const title = document.createElementNS(ns, "title");
  title.textContent = (rates.length ? rates[rates.length - 1].toFixed(1) : "0") + " jobs/s finished";
  svg.appendChild(title);
  if (rates.length > 1) {
    const top = Math.max(1, ...rates);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", rates.map((r, i) =>
      (SPARK_POINTS - rates.length + 1 + i) + "," + (10 - (r / top) * 9.5).toFixed(2)).join(" "));
    svg.appendChild(line);
  }
  return svg;
}

async function queuesPage(box) {
  const {queues} = await api("GET", "/api/queues");
  box.append(h("h1", {}, "Queues"));
  box.append(table(["Queue"].concat(STATES, ["Throughput", ""]), queues.map((q) => [
    h("a", {href: "#/queue/" + enc(q.name), class: "queue-name"}, q.name),
    ...STATES.map((s) => h("a", {href: "#/queue/" + enc(q.name) + "/" + s, "data-state": s}, q.counts[s])),
    sparkline(q.name, q.counts),
    q.paused ? button("Resume", () => control(q.name, "resume"), "primary")
             : button("Pause", () => control(q.name, "pause")),
  ]), STATES.map((_, i) => i + 1)));
}

async function control(queue, what) {
  await api("POST", "/api/queues/" + enc(queue) + "/" + what);
  route();
}

async function jobsPage(box, queue, state, after, order) {
  order = order || "newest";
  const args = "queue=" + enc(queue) + (state ? "&state=" + state : "") + "&limit=" + PAGE + "&order=" + order +
    (after ? "&after=" + enc(after) : "");
  const [counts, page, queues] = await Promise.all([
    api("GET", "/api/queues/" + enc(queue) + "/counts"),
    api("GET", "/api/jobs?" + args),
    api("GET", "/api/queues"),
  ]);
  const q = queues.queues.find((x) => x.name === queue);
  const base = "#/queue/" + enc(queue);
  box.append(h("h1", {}, "Queue ", h("span", {class: "queue-name"}, queue), q && q.paused ? " (paused)" : ""));
  box.append(h("div", {class: "bar"},
    q && q.paused ? button("Resume", () => control(queue, "resume"), "primary") : button("Pause", () => control(queue, "pause")),
    h("select", {"aria-label": "order", onchange: (e) => { location.hash = base + "/" + (state || "all") + "/" + e.target.value; }},
      ["newest", "oldest"].map((o) => h("option", {value: o, selected: o === order}, o + " first")))));
  box.append(h("div", {class: "tabs"},
    h("a", {href: base, class: state ? null : "on"}, "all"),
    STATES.map((s) => h("a", {href: base + "/" + s, class: s === state ? "on" : null}, s + " " + counts[s]))));
  box.append(table(["Id", "Job", "State", "Attempt", "Priority", "Created", "Started", "Finished"],
    page.jobs.map((j) => [h("a", {href: "#/job/" + j.id}, j.id), j.name, stateTag(j.state), j.attempt, j.priority,
      time(j.created_at), time(j.started_at), time(j.completed_at)]), [0, 3, 4]));
  const nav = h("div", {class: "bar"});
  if (after) nav.append(h("a", {href: base + "/" + (state || "all") + "/" + order}, "First page"));
  if (page.next) nav.append(h("a", {href: base + "/" + (state || "all") + "/" + order + "/" + page.next, class: "next"}, "Next page"));
  box.append(nav);
}

async function jobPage(box, id) {
  const job = await api("GET", "/api/jobs/" + enc(id));
  box.append(h("h1", {}, "Job " + job.id + " ", stateTag(job.state)));
  const canRetry = job.state === "failed" || job.state === "cancelled";
  const canCancel = ["waiting", "active", "delayed", "paused"].includes(job.state);
  box.append(h("div", {class: "bar"},
    button("Retry", async () => { await api("POST", "/api/jobs/" + job.id + "/retry"); route(); }, canRetry ? "primary" : null),
    button("Cancel", async () => { await api("POST", "/api/jobs/" + job.id + "/cancel"); route(); }, "danger"),
    button("Refresh", async () => route())));
  box.querySelectorAll("button")[0].disabled = !canRetry;
  box.querySelectorAll("button")[1].disabled = !canCancel;
  box.append(kv([
    ["Job", job.name],
    ["Queue", h("a", {href: "#/queue/" + enc(job.queue)}, job.queue)],
    ["State", stateTag(job.state)],
    ["Attempt", job.attempt + " of " + (job.retry_limit + 1)],
    ["Priority", job.priority],
    ["Created", time(job.created_at)],
    ["Start after", time(job.start_after)],
    ["Started", time(job.started_at)],
    ["Finished", time(job.completed_at)],
    ["Run", job.run_id && h("a", {href: "#/run/" + enc(job.run_id)}, job.run_id)],
    ["Singleton key", job.singleton_key],
    ["Process", job.process_id],
  ]));
  box.append(h("h2", {}, "Data"), job.data_error ? h("pre", {}, job.data_error + "\n" + job.data_text) : json(job.data));
  if (job.output !== undefined) box.append(h("h2", {}, "Output"), json(job.output));
  if (job.error) {
    const {message, traceback, ...rest} = job.error;
    box.append(h("h2", {}, "Error"), h("pre", {class: "error-message"}, message || ""));
    if (traceback) box.append(h("h2", {}, "Traceback"), h("pre", {}, traceback));
    if (Object.keys(rest).length) box.append(h("h2", {}, "Error fields"), json(rest));
  }
  try {
    const stream = "job:" + job.name + ":" + job.id;
    const {events} = await api("GET", "/api/events?stream=" + enc(stream) + "&limit=200");
    box.append(h("h2", {}, "Attempts and events"), events.length
      ? table(["Event", "Type", "Time", "Attempt", "Data"], events.map((e) => [e.id, e.type, time(e.ts),
        e.data && e.data.attempt, h("td", {class: "wrap"}, JSON.stringify(e.data))]), [0, 3])
      : h("p", {class: "muted"}, "No event in stream " + stream + " (each attempt's events are stored with " +
        "events.job_events on; what the handler emits is stored there too)."));
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    // The event store may be disabled; the job is shown without its events.
  }
}

async function groupsPage(box) {
  const {groups} = await api("GET", "/api/groups");
  box.append(h("h1", {}, "Consumer groups"));
  box.append(table(["Group", "Pattern", "Partitions", "Members", "Handled", "Lag", "Parked", "Last event"],
    groups.map((g) => [g.group, g.pattern, g.partitions,
      h("td", {class: "wrap"}, g.members.map((m) => m.consumer + " (" + (m.partitions || []).length + ")").join(", ")),
      g.handled, h("span", {class: "lag"}, g.lag), g.parked, g.last_id]), [2, 4, 5, 6, 7]));
}

async function flowsPage(box, flow, status, before) {
  const {flows} = await api("GET", "/api/flows");
  box.append(h("h1", {}, "Flows"));
  box.append(h("div", {class: "tabs"}, flows.map((f) =>
    h("a", {href: "#/flows/" + enc(f.flow), class: f.flow === flow ? "on" : null}, f.flow))));
  if (!flows.length) box.append(h("p", {class: "muted"}, "No flow is stored yet: a process with flow handlers stores them."));
  if (!flow) return;
  const f = flows.find((x) => x.flow === flow);
  if (f) box.append(h("h2", {}, "Steps"), table(["Step", "Job", "Queue", "Entry"],
    f.steps.map((s) => [s.step, s.job, h("a", {href: "#/queue/" + enc(s.queue)}, s.queue), s.entry ? "yes" : ""])));
  const base = "#/flows/" + enc(flow);
  box.append(h("h2", {}, "Runs"), h("div", {class: "tabs"},
    h("a", {href: base, class: status ? null : "on"}, "all"),
    RUN_STATUSES.map((s) => h("a", {href: base + "/" + s, class: s === status ? "on" : null}, s))));
  const page = await api("GET", "/api/runs?flow=" + enc(flow) + "&limit=" + PAGE +
    (status ? "&status=" + status : "") + (before ? "&before=" + enc(before) : ""));
  box.append(table(["Run", "Status", "Started", "Finished", "Failed step"], page.runs.map((r) => [
    h("a", {href: "#/run/" + enc(r.run_id)}, r.run_id), stateTag(r.status), time(r.started_at), time(r.completed_at),
    r.failed_step || ""])));
  if (page.next) box.append(h("div", {class: "bar"},
    h("a", {href: base + "/" + (status || "all") + "/" + enc(page.next)}, "Next page")));
}

async function runPage(box, runId) {
  const run = await api("GET", "/api/runs/" + enc(runId));
  box.append(h("h1", {}, "Run " + run.run_id + " ", stateTag(run.status)));
  box.append(kv([["Flow", h("a", {href: "#/flows/" + enc(run.flow)}, run.flow)], ["Started", time(run.started_at)],
    ["Finished", time(run.completed_at)], ["Failed step", run.failed_step]]));
  box.append(h("h2", {}, "Steps"), table(["Job", "Step", "Name", "State", "Attempt", "Started", "Finished"],
    run.steps.map((s) => [h("a", {href: "#/job/" + s.id}, s.id), s.step || "", s.name, stateTag(s.state), s.attempt,
      time(s.started_at), time(s.completed_at)]), [0, 4]));
  box.append(h("h2", {}, "Data"), json(run.data));
  if (run.error) box.append(h("h2", {}, "Error"), json(run.error));
}

async function schedulesPage(box) {
  const {schedules} = await api("GET", "/api/schedules");
  box.append(h("h1", {}, "Schedules"));
  box.append(table(["Schedule", "Cron", "Time zone", "Job", "Next", "Last", "Data"], schedules.map((s) => [
    s.name, s.cron, s.tz || "", s.job || s.name, time(s.next), time(s.last),
    h("td", {class: "wrap"}, JSON.stringify(s.data === undefined ? {} : s.data))])));
}

// The live event tail: a fetch of the event stream read as it comes (an
// EventSource cannot send the Authorization header); after a break it
// reconnects with Last-Event-ID, so no event is missed or shown twice.
function eventsPage(pattern, from) {
  ++generation;
  const list = h("ul", {class: "events", id: "event-list"});
  const status = h("span", {class: "status muted", id: "stream-status"}, "connecting");
  const input = h("input", {id: "stream-filter", placeholder: "stream or pattern, e.g. job:*", value: pattern || "",
    "aria-label": "stream filter"});
  const fromSel = h("select", {"aria-label": "from"},
    [["end", "new events"], ["start", "from the start"]].map(([v, t]) => h("option", {value: v, selected: v === from}, t)));
  const form = h("form", {class: "bar", onsubmit: (e) => {
    e.preventDefault();
    location.hash = "#/events/" + fromSel.value + "/" + enc(input.value);
  }}, input, fromSel, h("button", {type: "submit", class: "primary"}, "Follow"), status);
  $("main").replaceChildren(h("div", {}, h("h1", {}, "Events"), form, list));

  const ctl = new AbortController();
  stream = ctl;
  let last = null;
  const url = () => "/api/events/stream?" + (pattern ? "stream=" + enc(pattern) + "&" : "") +
    (last ? "" : "from=" + (from || "end"));
  const show = (ev) => {
    let e;
    try { e = JSON.parse(ev.data); } catch (x) { return; }
    list.prepend(h("li", {class: "event"},
      h("div", {class: "meta"}, h("strong", {class: "event-type"}, e.type), h("span", {class: "event-stream"}, e.stream),
        h("span", {class: "muted"}, "#" + e.id + " " + time(e.ts))),
      h("pre", {}, JSON.stringify(e.data))));
    while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  };
  const run = async () => {
    while (!ctl.signal.aborted) {
      try {
        const res = await fetch(url(), {headers: authHeaders(last ? {"Last-Event-ID": last} : {}), signal: ctl.signal});
        if (res.status === 401) { askToken(); return; }
        if (!res.ok) {
          const body = await res.json().catch(() => ({}));
          status.textContent = body.error || res.status + " " + res.statusText;
          return;
        }
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = "", ev = {data: ""};
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += dec.decode(value, {stream: true});
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, "");
            buf = buf.slice(nl + 1);
            if (line === "") {
              if (ev.event === "moonq.overflow") {
                // The server cut this page off (it fell behind): say so;
                // the loop reconnects from the last event shown.
                status.textContent = "fell behind, reconnecting";
              } else if (ev.data) { show(ev); if (ev.id) last = ev.id; }
              ev = {data: ""};
            } else if (line === ": subscribed") {
              status.textContent = "live";
            } else if (!line.startsWith(":")) {
              const i = line.indexOf(":");
              const k = i < 0 ? line : line.slice(0, i);
              const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
              if (k === "data") ev.data += (ev.data ? "\n" : "") + v;
              else if (k === "id") ev.id = v;
              else if (k === "event") ev.event = v;
            }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      status.textContent = "reconnecting";
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  run();
}

// ---- routing ---------------------------------------------------------------

function route() {
  stopTimers();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try { return decodeURIComponent(p); } catch (e) { return p; }
  });
  const page = parts[0] || "queues";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("on", a.dataset.page === page ||
    (a.dataset.page === "queues" && (page === "queue" || page === "job")) || (a.dataset.page === "flows" && page === "run"));
  const all = (s) => (s && s !== "all" ? s : null);
  switch (page) {
    case "queue": return show((b) => jobsPage(b, parts[1], all(parts[2]), parts[4], parts[3]));
    case "job": return show((b) => jobPage(b, parts[1]));
    case "events": return eventsPage(parts.slice(2).join("/"), parts[1] || "end");
    case "groups": return show(groupsPage, REFRESH_MS);
    case "flows": return show((b) => flowsPage(b, parts[1], all(parts[2]), parts[3]));
    case "run": return show((b) => runPage(b, parts.slice(1).join("/")));
    case "schedules": return show(schedulesPage);
    default: return show(queuesPage, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("login").hidden = true;
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
