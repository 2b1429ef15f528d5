// taskherd's dashboard: one page, no framework. Every view reads the manager's API with the token
// kept in this tab's sessionStorage (sent as a header, never in a URL) and re-reads it every POLL_MS
// while the tab is visible, one poll at a time, so a page costs at most a few requests per second.
"use strict";

const POLL_MS = 2000;
const PAGE = 50;
const TOKEN_KEY = "taskherd.token";
const LIVE = ["pending", "running", "retry", "analyzing", "scheduled"];
const FINAL = ["succeeded", "failed", "cancelled"];
const $ = (sel) => document.querySelector(sel);

const state = { scopes: null, who: null, view: null, timer: null, rates: {} };

// --- the API -------------------------------------------------------------------------------------
class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (r.status === 401) throw new Unauthorized(message(data, "a token is required"));
  if (!r.ok) { const e = new Error(message(data, r.status + " " + r.statusText)); e.status = r.status; throw e; }
  return data;
}
const message = (data, fallback) => (data && data.errors ? data.errors.map((e) => e.message).join("; ") : fallback);
const enc = encodeURIComponent;

// --- small helpers -------------------------------------------------------------------------------
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (n) => (n ?? 0).toLocaleString("en-US");
const time = (ms) => (ms ? new Date(ms).toLocaleString("sv-SE") : "—");
const json = (v) => esc(JSON.stringify(v, null, 2));
function ago(s) {
  if (s == null) return "—";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function duration(s) {
  if (s == null || !isFinite(s)) return "—";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function toast(text) {
  const t = $("#toast"); t.textContent = text; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}
const can = (scope) => !state.scopes || state.scopes.includes(scope);
function button(label, action, scope, attrs = "") {
  const allowed = can(scope);
  const why = allowed ? "" : ` title="token ${esc(state.who)} lacks the ${scope} scope"`;
  return `<button data-action="${esc(action)}" data-scope="${scope}"${allowed ? "" : " disabled"}${why} ${attrs}>${esc(label)}</button>`;
}
function bar(counts, total) {
  const t = Math.max(total, 1);
  return `<div class="bar" title="${esc(FINAL.concat(["running", "scheduled"]).map((s) => `${s} ${counts[s] || 0}`).join(", "))}">` +
    ["succeeded", "failed", "cancelled", "running", "scheduled"].map((s) => `<span class="${s}" style="width:${(100 * (counts[s] || 0)) / t}%"></span>`).join("") +
    "</div>";
}
const finished = (c) => FINAL.reduce((n, s) => n + (c[s] || 0), 0);

// Rate and ETA from this page's own polls: tasks finished per second over the last minute; an ETA only
// once the job's total has stopped growing for three polls (an open-ended job has none before).
function pace(job) {
  const now = Date.now(), done = finished(job.counts), seen = (state.rates[job.job] ||= []);
  seen.push({ now, done, total: job.total });
  while (seen.length > 2 && now - seen[0].now > 60000) seen.shift();
  const first = seen[0];
  const rate = seen.length > 1 && now > first.now ? ((done - first.done) * 1000) / (now - first.now) : null;
  const steady = seen.length >= 3 && seen.slice(-3).every((p) => p.total === job.total);
  const eta = job.done ? 0 : steady && rate > 0 ? (job.total - done) / rate : null;
  return { rate, eta };
}

// --- views ---------------------------------------------------------------------------------------
const views = {
  async jobs() {
    const [open, done] = await Promise.all([api("GET", "/jobs?state=open&limit=200"), api("GET", "/ui/recent?limit=20")]);
    const rows = (jobs) => jobs.map((j) => {
      const c = j.counts, p = pace(j);
      return `<tr data-job="${esc(j.job)}"><td><a href="#/job/${enc(j.job)}">${esc(j.job)}</a></td>
        <td>${bar(c, j.total)}<span class="muted">${num(finished(c))} / ${num(j.total)}${j.done ? " done" : " known so far"}</span></td>
        <td class="num">${num(c.failed)}</td><td class="num">${num(c.running)}</td><td class="num">${num((c.pending || 0) + (c.retry || 0) + (c.analyzing || 0))}</td>
        <td class="num">${num(c.scheduled)}</td><td class="num">${j.done ? "—" : (p.rate == null ? "—" : p.rate.toFixed(1) + "/s")}</td><td>${j.done ? "done" : p.eta == null ? "—" : duration(p.eta)}</td>
        <td>${time(j.created_ms)}</td><td>${time(j.finished_ms)}</td>
        <td>${button("Cancel", "cancel-job", "submit", j.done ? "disabled" : "")} ${button("Retry failed", "retry-job", "submit", c.failed ? "" : "disabled")}
            ${button("Teardown", "teardown-job", "admin", 'class="danger"')}</td></tr>`;
    }).join("");
    const head = `<tr><th>job</th><th>progress (done / known)</th><th class="num">failed</th><th class="num">running</th><th class="num">waiting</th>
      <th class="num">scheduled</th><th class="num">rate</th><th>ETA</th><th>started</th><th>finished</th><th></th></tr>`;
    return `<h1>Jobs</h1><h2>Open (${open.jobs.length})</h2><table id="open-jobs">${head}${rows(open.jobs) || '<tr><td colspan="11" class="muted">no open job</td></tr>'}</table>
      <h2>Recently done <span class="muted">(newest first; <a href="#/done">every done job, by name</a>)</span></h2>
      <table id="done-jobs">${head}${rows(done.jobs) || '<tr><td colspan="11" class="muted">none</td></tr>'}</table>`;
  },

  async done(_, params) {
    const cursor = params.get("cursor") || "";
    const page = await api("GET", `/jobs?state=done&limit=${PAGE}&cursor=${enc(cursor)}`);
    return `<h1>Done jobs <span class="muted">(their summaries in MySQL, by name)</span></h1>
      <table id="archived-jobs"><tr><th>job</th><th class="num">total</th><th class="num">succeeded</th><th class="num">failed</th>
        <th class="num">cancelled</th><th>started</th><th>finished</th></tr>
      ${page.jobs.map((j) => `<tr><td><a href="#/job/${enc(j.job)}">${esc(j.job)}</a></td><td class="num">${num(j.total)}</td>
        <td class="num">${num(j.counts.succeeded)}</td><td class="num">${num(j.counts.failed)}</td><td class="num">${num(j.counts.cancelled)}</td>
        <td>${time(j.created_ms)}</td><td>${time(j.finished_ms)}</td></tr>`).join("") || '<tr><td colspan="7" class="muted">none</td></tr>'}</table>
      <div class="row">${cursor ? '<a href="#/done">← first page</a>' : ""}
        ${page.next_cursor ? `<a href="#/done?cursor=${enc(page.next_cursor)}">next page →</a>` : ""}</div>`;
  },

  async job(name, params) {
    const st = await api("GET", `/jobs/${enc(name)}`);
    const c = st.counts;
    const shown = params.get("state") || [...LIVE, ...FINAL].find((s) => c[s]) || "pending";
    const cursor = params.get("cursor") || "";
    const page = await api("GET", `/jobs/${enc(name)}/tasks?state=${shown}&limit=${PAGE}&cursor=${enc(cursor)}`);
    // the running set holds the tasks a busy slot leased ahead too (counted apart as `leased`)
    const tab = (s) => `<a class="${s === shown ? "on" : ""}" href="#/job/${enc(name)}?state=${s}">${s} ${num(s === "running" ? (c.running || 0) + (c.leased || 0) : c[s])}</a>`;
    const p = pace(st);
    return `<h1>Job ${esc(name)}</h1>
      <div class="row">${bar(c, st.total)}<b>${num(finished(c))} / ${num(st.total)}</b><span class="muted">${st.done ? "done" : "open"} ·
        rate ${st.done ? "—" : (p.rate == null ? "—" : p.rate.toFixed(1) + "/s")} · ETA ${st.done ? "done" : p.eta == null ? "—" : duration(p.eta)} ·
        started ${time(st.created_ms)} · finished ${time(st.finished_ms)}</span></div>
      <div class="row" data-job="${esc(name)}">${button("Cancel job", "cancel-job", "submit", st.done ? "disabled" : "")}
        ${button("Retry failed", "retry-job", "submit", c.failed ? "" : "disabled")} ${button("Teardown", "teardown-job", "admin", 'class="danger"')}
        <form id="search" class="row"><input id="search-id" placeholder="task id" autocomplete="off"><button>Find</button></form></div>
      <div class="tabs">${[...LIVE, ...FINAL].map(tab).join("")}</div>
      <table id="task-page"><tr><th>${esc(shown)} task ids <span class="muted">(a page of ${PAGE})</span></th></tr>
      ${page.ids.map((id) => `<tr><td><a href="#/task/${enc(id)}">${esc(id)}</a></td></tr>`).join("") || '<tr><td class="muted">none</td></tr>'}</table>
      <div class="row">${cursor ? `<a href="#/job/${enc(name)}?state=${shown}">← first page</a>` : ""}
        ${page.next_cursor ? `<a id="next-page" href="#/job/${enc(name)}?state=${shown}&cursor=${enc(page.next_cursor)}">next page →</a>` : ""}</div>`;
  },

  async task(id) {
    const t = await api("GET", `/tasks/${enc(id)}`);
    const live = LIVE.includes(t.state), dead = ["failed", "cancelled"].includes(t.state);
    const prog = t.progress ? `<div class="row"><div class="bar"><span class="progress" style="width:${100 * (t.progress.fraction || 0)}%"></span></div>
      ${Math.round(100 * (t.progress.fraction || 0))}% ${esc(t.progress.message)}</div>` : "—";
    // The ids its analysis submitted (archived with it): the first CHILDREN_SHOWN, then how many more
    const ids = t.children || [], CHILDREN_SHOWN = 50;
    const kids = ids.length ? ids.slice(0, CHILDREN_SHOWN).map((c) => `<a href="#/task/${enc(c)}">${esc(c)}</a>`).join(", ")
      + (ids.length > CHILDREN_SHOWN ? ` and ${ids.length - CHILDREN_SHOWN} more` : "")
      : (LIVE.includes(t.state) ? "— (an analysis submits them)" : "none");
    const execs = (t.executions || []).map((e) => `<tr><td class="num">${e.round ?? ""}</td><td><code>${esc(e.exec)}</code></td><td>${esc(e.worker)}</td>
      <td>${time(e.started)}</td><td class="num">${e.duration_s != null ? duration(e.duration_s) : e.deadline ? "deadline " + time(e.deadline) : "—"}</td>
      <td><span class="state ${e.status === "ok" ? "succeeded" : esc(e.status)}">${esc(e.status)}</span></td><td class="error">${esc(e.error)}</td></tr>`).join("");
    return `<h1>Task ${esc(t.id)}</h1>
      <div class="row" data-task="${esc(t.id)}"><span class="state ${esc(t.state)}" id="task-state">${esc(t.state)}</span>
        ${button("Cancel", "cancel-task", "submit", live ? "" : "disabled")} ${button("Retry", "retry-task", "submit", dead ? "" : "disabled")}</div>
      <dl><dt>job</dt><dd><a href="#/job/${enc(t.job)}">${esc(t.job)}</a></dd><dt>type</dt><dd>${esc(t.type)}</dd>
        <dt>attempts</dt><dd>${t.attempts} (retry round ${t.round ?? 0})</dd>
        <dt>parent</dt><dd>${t.parent ? `<a href="#/task/${enc(t.parent)}">${esc(t.parent)}</a>` : "—"}</dd>
        <dt>children</dt><dd id="children">${kids}</dd>
        <dt>created</dt><dd>${time(t.created_ms)}</dd><dt>run at</dt><dd>${time(t.run_at_ms)}</dd><dt>finished</dt><dd>${time(t.finished_ms)}</dd>
        <dt>progress</dt><dd>${prog}</dd><dt>error</dt><dd class="error">${esc(t.error) || "—"}</dd></dl>
      <h2>Executions (${(t.executions || []).length})</h2>
      <table><tr><th class="num">round</th><th>execution</th><th>worker</th><th>started</th><th class="num">ran</th><th>outcome</th><th>error</th></tr>
        ${execs || '<tr><td colspan="7" class="muted">none yet</td></tr>'}</table>
      <div class="grid2"><div><h2>Payload</h2><pre>${json(t.payload)}</pre></div><div><h2>Result</h2><pre id="result">${json(t.result)}</pre></div></div>
      <h2>Record</h2><pre>${json(t.record)}</pre>`;
  },

  async dead(_, params) {
    const shown = params.get("state") || "failed", cursor = params.get("cursor") || "";
    const page = await api("GET", `/ui/dead?state=${shown}&limit=${PAGE}&cursor=${enc(cursor)}`);
    return `<h1>Dead letters</h1><p class="muted">Archived tasks that ended ${shown}: retry one (a new retry round, earlier executions kept),
      or all failed tasks of its job.</p>
      <div class="tabs">${["failed", "cancelled"].map((s) => `<a class="${s === shown ? "on" : ""}" href="#/dead?state=${s}">${s}</a>`).join("")}</div>
      <table id="dead"><tr><th>task</th><th>job</th><th>type</th><th>last error</th><th></th></tr>
      ${page.tasks.map((t) => `<tr data-task="${esc(t.id)}" data-job="${esc(t.job)}"><td><a href="#/task/${enc(t.id)}">${esc(t.id)}</a></td>
        <td><a href="#/job/${enc(t.job)}">${esc(t.job)}</a></td><td>${esc(t.type)}</td><td class="error">${esc(t.error)}</td>
        <td>${button("Retry", "retry-task", "submit")} ${button("Retry job's failed", "retry-job", "submit")}</td></tr>`).join("") || '<tr><td colspan="5" class="muted">none</td></tr>'}</table>
      <div class="row">${cursor ? `<a href="#/dead?state=${shown}">← first page</a>` : ""}
        ${page.next_cursor ? `<a href="#/dead?state=${shown}&cursor=${enc(page.next_cursor)}">next page →</a>` : ""}</div>`;
  },

  async pods() {
    const p = await api("GET", "/ui/pods");
    return `<h1>Pods</h1><p class="muted">Live registrations (a pod that stops heartbeating drops out within its TTL). Active timeout watcher:
      <b id="watcher">${esc(p.watcher || "none")}</b></p>
      <table id="pods"><tr><th>pod</th><th>role</th><th>host</th><th class="num">pid</th><th>slots busy / idle</th><th class="num">heartbeat</th>
        <th>started</th><th>version</th><th>metrics</th></tr>
      ${p.nodes.map((n) => `<tr><td>${esc(n.id)}${n.id === p.watcher ? ' <span class="state running">watcher</span>' : ""}</td><td>${esc(n.role)}</td>
        <td>${esc(n.host)}</td><td class="num">${esc(n.pid)}</td>
        <td>${n.slots ? `<div class="row"><div class="bar" style="min-width:80px"><span class="running" style="width:${(100 * n.busy) / n.slots}%"></span></div>${n.busy} / ${n.idle}</div>` : "—"}</td>
        <td class="num">${ago(n.heartbeat_age_s)} ago</td><td>${time(n.started * 1000)}</td><td>${esc(n.version)}</td>
        <td>${n.metrics_url ? `<a href="${esc(n.metrics_url)}" rel="noreferrer">metrics</a>` : "—"}</td></tr>`).join("")}</table>`;
  },

  async schedules() {
    const s = await api("GET", "/schedules");
    const now = Date.now();
    return `<h1>Schedules</h1><table id="schedules"><tr><th>name</th><th>when</th><th>task</th><th>next fire</th><th>last firing</th><th></th></tr>
      ${s.schedules.map((x) => `<tr data-schedule="${esc(x.name)}"><td>${esc(x.name)}</td>
        <td><code>${esc(x.cron || (x.every_s != null ? "every " + x.every_s + " s" : ""))}</code> <span class="muted">${esc(x.timezone)}</span></td>
        <td>${esc(x.task?.type)} → <a href="#/job/${enc(x.task?.job || "")}">${esc(x.task?.job)}</a></td>
        <td>${esc(x.next_fire_at || "—")} <span class="muted">${x.next_fire_ms ? "in " + ago(Math.max(0, (x.next_fire_ms - now) / 1000)) : ""}</span></td>
        <td>${x.last_task_id ? `<a href="#/task/${enc(x.last_task_id)}">${esc(x.last_fired_at)}</a> ${esc(x.last_status)}` : "—"}
          <span class="error">${esc(x.last_error)}</span></td>
        <td>${button("Delete", "delete-schedule", "admin", 'class="danger"')}</td></tr>`).join("") || '<tr><td colspan="6" class="muted">no schedule</td></tr>'}</table>`;
  },

  async charts(_, params) {
    const windowS = Number(params.get("window") || 300);
    const s = await api("GET", `/ui/series?window_s=${windowS}`);
    const pick = (k) => s.points.map((p) => p[k]);
    return `<h1>Charts</h1><p class="muted">The last ${windowS / 60} minutes in ${s.step_s}-second steps (the manager keeps ${s.retention_s / 60} minutes in Redis).
      Executions are counted when their task is archived, at the seconds they started and ended.</p>
      <div class="tabs">${[300, 900].map((w) => `<a class="${w === windowS ? "on" : ""}" href="#/charts?window=${w}">${w / 60} min</a>`).join("")}</div>
      <div class="grid2">
        ${chart("Executions per second", s, [["started", pick("started"), "#1c7ed6"], ["finished", pick("finished"), "#2f9e44"]], (v) => v.toFixed(1))}
        ${chart("Archived per second", s, [["succeeded", pick("succeeded"), "#2f9e44"], ["failed", pick("failed"), "#d9480f"], ["cancelled", pick("cancelled"), "#868e96"]], (v) => v.toFixed(1))}
        ${chart("Run time percentiles", s, [["p50", pick("p50"), "#1c7ed6"], ["p95", pick("p95"), "#f08c00"], ["p99", pick("p99"), "#d9480f"]], duration)}
      </div>`;
  },
};

// An SVG line chart of our own: one polyline per series, gaps where a step has no value.
function chart(title, s, lines, fmt) {
  const W = 600, H = 170, n = s.points.length, all = lines.flatMap(([, v]) => v).filter((v) => v != null);
  const max = Math.max(...all, 0) || 1;
  const x = (i) => (W * i) / Math.max(n - 1, 1), y = (v) => H - 4 - ((H - 14) * v) / max;
  const paths = lines.map(([, vals, color]) => {
    let d = "", pen = false;
    vals.forEach((v, i) => { if (v == null) { pen = false; return; } d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1); pen = true; });
    return `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"/>`;
  }).join("");
  const last = (vals) => [...vals].reverse().find((v) => v != null);
  return `<div class="chart"><b>${esc(title)}</b> <span class="muted">max ${fmt(max)}</span>
    <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none"><line x1="0" y1="${H - 4}" x2="${W}" y2="${H - 4}" stroke="#ccc"/>${paths}</svg>
    <div class="legend">${lines.map(([name, vals, color]) => `<span><i style="background:${color}"></i>${name} ${last(vals) != null ? fmt(last(vals)) : "—"}</span>`).join("")}</div></div>`;
}

// --- buttons -------------------------------------------------------------------------------------
const actions = {
  "cancel-job": (el) => post(`/jobs/${enc(attr(el, "job"))}/cancel`, (r) => `cancelled ${r.cancelled.length ?? r.cancelled} task(s)`),
  "retry-job": (el) => post(`/jobs/${enc(attr(el, "job"))}/retry`, (r) => `requeued ${r.requeued} failed task(s)`),
  "teardown-job": (el) => confirm(`Tear down job ${attr(el, "job")}? Open tasks are cancelled first; its archived rows stay.`) &&
    post(`/jobs/${enc(attr(el, "job"))}/teardown?cancel=true`, () => "torn down"),
  "cancel-task": (el) => post(`/tasks/${enc(attr(el, "task"))}/cancel`, (r) => (r.cancelled ? "cancelled" : `nothing to cancel: it was ${r.was}`)),
  "retry-task": (el) => post(`/tasks/${enc(attr(el, "task"))}/retry`, (r) => `retry: ${r.status}`),
  "delete-schedule": (el) => confirm(`Delete schedule ${attr(el, "schedule")}?`) &&
    post(`/schedules/${enc(attr(el, "schedule"))}`, () => "deleted", "DELETE"),
};
const attr = (el, name) => el.closest(`[data-${name}]`).dataset[name];

async function post(path, said, method = "POST") {
  try { toast(said(await api(method, path))); } catch (e) { if (!(e instanceof Unauthorized)) toast("refused: " + e.message); else signIn(e.message); }
  refresh();
}

document.addEventListener("click", (ev) => {
  const el = ev.target.closest("button[data-action]");
  if (el && !el.disabled) { ev.preventDefault(); actions[el.dataset.action](el); }
});
document.addEventListener("submit", async (ev) => {
  if (ev.target.id === "search") {
    ev.preventDefault();
    const id = $("#search-id").value.trim();
    if (!id) return;
    try { await api("GET", `/tasks/${enc(id)}`); location.hash = `#/task/${enc(id)}`; } catch (e) { toast(e.status === 404 ? `no task with id ${id}` : e.message); }
  } else if (ev.target.id === "login") {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    state.scopes = null;
    start();
  }
});

// --- routing, polling, sign-in -------------------------------------------------------------------
function route() {
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const [, name, ...rest] = path.split("/");
  return { name: views[name] ? name : "jobs", arg: decodeURIComponent(rest.join("/")), params: new URLSearchParams(query || "") };
}

async function refresh() {
  clearTimeout(state.timer);
  const r = route(), key = location.hash;
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("on", a.dataset.nav === (r.name === "done" ? "jobs" : r.name)));
  try {
    if (state.scopes === null) await whoami();
    const html = await views[r.name](r.arg, r.params);
    if (key !== location.hash) return; // navigated meanwhile: that view's own refresh draws
    const typing = document.activeElement?.id === "search-id" ? document.activeElement.value : null;
    $("#view").innerHTML = html;
    if (typing !== null) { const box = $("#search-id"); box.value = typing; box.focus(); }
    $("#view").dataset.ready = r.name;
    if (window.__thReady === undefined) window.__thReady = performance.now();
    $("#live").textContent = "live · " + new Date().toLocaleTimeString("sv-SE");
  } catch (e) {
    if (e instanceof Unauthorized) return signIn(e.message);
    $("#view").innerHTML = `<p class="error">${esc(e.message)}</p>`;
    $("#view").dataset.ready = "error";
  }
  state.timer = setTimeout(poll, POLL_MS);
}
function poll() { if (document.hidden) state.timer = setTimeout(poll, POLL_MS); else refresh(); }

async function whoami() {
  const w = await api("GET", "/ui/whoami");
  state.scopes = w.scopes;
  state.who = w.token;
  $("#who").innerHTML = w.auth === "on" ? `token <b>${esc(w.token)}</b> (${esc(w.scopes.join(", "))}) <button id="sign-out">sign out</button>` : "auth off";
  const out = $("#sign-out");
  if (out) out.onclick = () => { sessionStorage.removeItem(TOKEN_KEY); state.scopes = null; signIn(""); };
}

function signIn(why) {
  clearTimeout(state.timer);
  const had = sessionStorage.getItem(TOKEN_KEY);
  $("#view").innerHTML = "";
  $("#login").hidden = false;
  $("#login-error").textContent = had ? why : "";
  $("#token").focus();
}

function start() {
  $("#login").hidden = true;
  refresh();
}

window.addEventListener("hashchange", refresh);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
start();
