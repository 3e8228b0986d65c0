// The jobstream dashboard: a hash-routed page over the JSON API (/v1/…). Every value from the server is set as
// text (textContent, attributes), never parsed as HTML, so a payload holding markup shows as that markup.

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let config = { read_only: true, trace_url_template: null, group: "workers", token_required: false };
let refreshTimer = null;

// ---- small DOM helpers -------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}
function show(...nodes) {
  main.replaceChildren(...nodes.filter((node) => node !== null && node !== undefined && node !== false));
}
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function fmtAge(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function fmtNum(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}
function fmtRate(r) {
  return r === null || r === undefined ? "—" : `${r.toFixed(2)}/s`;
}
function stateBadge(state) {
  return el("span", { class: `badge state-${state}`, "data-field": "state" }, state);
}
function traceLink(traceId, spanId, label) {
  if (!traceId || !/^[0-9a-f]{32}$/.test(traceId)) return el("span", { class: "muted" }, "—");
  const text = label || traceId;
  if (!config.trace_url_template) return el("span", { class: "mono", "data-trace-id": traceId }, text);
  const url = config.trace_url_template.replaceAll("{trace_id}", traceId).replaceAll("{span_id}", spanId || "");
  return el("a", { href: url, class: "mono", target: "_blank", rel: "noopener noreferrer", "data-trace-link": traceId }, text);
}
function enc(s) {
  return encodeURIComponent(s);
}

// ---- talking to the API -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}
async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the dashboard's server cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
  return data;
}
function setBanner(message, kind = "error") {
  if (!message) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  banner.className = kind === "info" ? "info" : "";
  banner.textContent = message;
  banner.hidden = false;
}
// Runs a view's load; on 401 shows the login form, on other errors the banner (the page keeps what it had).
async function guarded(load) {
  try {
    await load();
    setBanner(null);
  } catch (e) {
    if (e.status === 401) return showLogin();
    setBanner(e.message);
  }
}

// ---- login ----------------------------------------------------------------------------------------------------
function showLogin(message) {
  stopRefresh();
  const input = el("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", { class: "card login", "data-view": "login" },
    el("h1", {}, "Log in"),
    el("label", { for: "token" }, "API token"),
    input,
    message ? el("p", { role: "alert", class: "state-dead" }, message) : null,
    el("button", { type: "submit", class: "primary" }, "Log in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/ui/login", { token: input.value });
      await loadConfig();
      show(el("p", { class: "muted" }, "Loading…"));
      route();
    } catch (e) {
      showLogin(e.status === 401 ? "Wrong token." : e.message);
    }
  });
  show(form);
  input.focus();
}

async function loadConfig() {
  config = await api("GET", "/ui/config.json");
  document.getElementById("logout").hidden = !config.token_required;
}

// ---- overview -------------------------------------------------------------------------------------------------
function sparkline(history) {
  const w = 160, h = 36;
  const box = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  const points = history || [];
  const max = Math.max(1, ...points.flatMap((p) => [p.enqueued, p.acknowledged, p.dead]));
  const title = svg("title");
  const total = (k) => points.reduce((sum, p) => sum + p[k], 0);
  title.textContent = `last hour: ${total("enqueued")} enqueued, ${total("acknowledged")} acknowledged, ${total("dead")} dead`;
  box.append(title);
  if (points.length < 2) return box;
  for (const key of ["enqueued", "acknowledged", "dead"]) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${((i / (points.length - 1)) * (w - 2) + 1).toFixed(1)},${(h - 2 - (p[key] / max) * (h - 4)).toFixed(1)}`).join(" ");
    box.append(svg("path", { d, fill: "none", "stroke-width": 1.5, class: { enqueued: "enq", acknowledged: "ack", dead: "dead" }[key] }));
  }
  return box;
}

async function overview() {
  const data = await api("GET", "/v1/queues");
  const rows = data.queues.map((q) =>
    el("tr", { "data-queue": q.queue },
      el("td", {}, el("a", { href: `#/queue/${enc(q.queue)}` }, q.queue), q.paused ? el("span", { class: "badge paused", "data-field": "paused" }, " paused") : null),
      el("td", { class: "num", "data-field": "length" }, fmtNum(q.length)),
      el("td", { class: "num", "data-field": "lag" }, fmtNum(q.lag)),
      el("td", { class: "num", "data-field": "pending" }, fmtNum(q.pending)),
      el("td", { class: "num hide-narrow", "data-field": "oldest" }, fmtAge(q.oldest_pending_age_ms)),
      el("td", { class: "num", "data-field": "delayed" }, fmtNum(q.delayed)),
      el("td", { class: "num", "data-field": "dead" }, fmtNum(q.dead)),
      el("td", { class: "num hide-narrow", "data-field": "consumers" }, fmtNum(q.consumers)),
      el("td", { class: "num hide-narrow" }, fmtRate(q.rates.enqueued_per_s)),
      el("td", { class: "hide-narrow" }, sparkline(q.history))));
  const table = rows.length
    ? el("div", { class: "table-wrap" }, el("table", { "data-view": "overview" },
        el("thead", {}, el("tr", {},
          el("th", {}, "Queue"), el("th", { class: "num" }, "Length"), el("th", { class: "num", title: "entries not yet delivered to the group" }, "Lag"),
          el("th", { class: "num" }, "Pending"), el("th", { class: "num hide-narrow" }, "Oldest pending"), el("th", { class: "num" }, "Delayed"),
          el("th", { class: "num" }, "Dead"), el("th", { class: "num hide-narrow" }, "Consumers"), el("th", { class: "num hide-narrow" }, "Enqueued"),
          el("th", { class: "hide-narrow" }, "Last hour"))),
        el("tbody", {}, rows)))
    : el("div", { class: "card empty", "data-view": "overview" }, `No queue yet under the prefix ${config.prefix}: enqueue a job and it shows here.`);
  show(el("h1", {}, "Queues"), table,
    el("p", { class: "legend muted" }, el("span", { class: "enq" }, "— enqueued"), el("span", { class: "ack" }, "— acknowledged"),
      el("span", { class: "dead" }, "— dead"), ` per minute; group ${data.group}; refreshed every 5 s.`));
}

// ---- queue page -------------------------------------------------------------------------------------------------
const queueView = { name: null, tab: "waiting", kind: "", text: "", starts: [null], selected: new Set() };

async function act(method, path, body, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return null;
  try {
    const out = await api(method, path, body);
    setBanner(null);
    return out;
  } catch (e) {
    if (e.status === 401) showLogin();
    else setBanner(e.message);
    return null;
  }
}

async function queuePage(name, keep) {
  if (!keep || queueView.name !== name) Object.assign(queueView, { name, tab: "waiting", kind: "", text: "", starts: [null], selected: new Set() });
  const q = await api("GET", `/v1/queues/${enc(name)}`);
  const stats = q.queue;
  const start = queueView.starts[queueView.starts.length - 1];
  const params = new URLSearchParams({ state: queueView.tab, count: "50" });
  if (start) params.set("start", start);
  if (queueView.kind) params.set("kind", queueView.kind);
  if (queueView.text) params.set("text", queueView.text);
  const page = await api("GET", `/v1/queues/${enc(name)}/jobs?${params}`);

  const actions = config.read_only ? [] : [
    stats.paused
      ? el("button", { type: "button", class: "primary", "data-action": "resume", onclick: async () => { if (await act("POST", `/v1/queues/${enc(name)}/resume`)) refresh(); } }, "Resume queue")
      : el("button", { type: "button", "data-action": "pause", onclick: async () => { if (await act("POST", `/v1/queues/${enc(name)}/pause`, undefined, `Pause queue ${name}? Its consumers start nothing new until it is resumed.`)) refresh(); } }, "Pause queue"),
  ];
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "State"), el("dd", { "data-field": "paused" }, stats.paused ? el("span", { class: "paused" }, "paused") : "running"),
    el("dt", {}, "Length"), el("dd", { "data-field": "length" }, fmtNum(stats.length)),
    el("dt", {}, "Lag / pending"), el("dd", {}, `${fmtNum(stats.lag)} / ${fmtNum(stats.pending)}`),
    el("dt", {}, "Oldest pending"), el("dd", {}, fmtAge(stats.oldest_pending_age_ms)),
    el("dt", {}, "Delayed / dead"), el("dd", {}, `${fmtNum(stats.delayed)} / ${fmtNum(stats.dead)}`),
    el("dt", {}, "Rates (1 min)"), el("dd", {}, `enqueued ${fmtRate(stats.rates.enqueued_per_s)}, dead ${fmtRate(stats.rates.dead_per_s)}`),
    el("dt", {}, "Last hour"), el("dd", {}, sparkline(stats.history)));

  const group = stats.groups.find((g) => g.name === config.group) || { consumer_list: [] };
  const consumers = group.consumer_list.length
    ? el("div", { class: "table-wrap" }, el("table", { "data-view": "consumers" },
        el("thead", {}, el("tr", {}, el("th", {}, "Consumer"), el("th", { class: "num" }, "Pending"), el("th", { class: "num" }, "Idle"))),
        el("tbody", {}, group.consumer_list.map((c) => el("tr", { "data-consumer": c.name },
          el("td", { class: "mono" }, c.name), el("td", { class: "num" }, fmtNum(c.pending)), el("td", { class: "num" }, fmtAge(c.idle_ms)))))))
    : el("div", { class: "card empty" }, "No consumer in the group yet.");

  const tabs = el("div", { class: "tabs", role: "tablist" }, ["waiting", "running", "delayed", "dead"].map((tab) =>
    el("button", { type: "button", role: "tab", "aria-selected": String(queueView.tab === tab), "data-tab": tab,
      onclick: () => { Object.assign(queueView, { tab, starts: [null], selected: new Set() }); refresh(); } }, tab)));

  const kind = el("input", { placeholder: "kind", value: queueView.kind, "aria-label": "Filter by kind", "data-filter": "kind" });
  const text = el("input", { placeholder: "text in id, payload, error", value: queueView.text, "aria-label": "Filter by text", "data-filter": "text" });
  const filter = el("form", { class: "toolbar" }, kind, text, el("button", { type: "submit" }, "Filter"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(queueView, { kind: kind.value.trim(), text: text.value.trim(), starts: [null] });
    refresh();
  });

  const dead = queueView.tab === "dead";
  const bulk = dead && !config.read_only ? el("div", { class: "toolbar" },
    el("button", { type: "button", "data-action": "replay-selected", onclick: async () => {
      const ids = [...queueView.selected];
      if (!ids.length) return setBanner("Select dead letters first.", "info");
      if (await act("POST", `/v1/queues/${enc(name)}/dead/replay`, { ids }, `Replay ${ids.length} dead letter(s)?`)) { queueView.selected.clear(); refresh(); }
    } }, "Replay selected"),
    el("button", { type: "button", "data-action": "purge-selected", class: "danger", onclick: async () => {
      const ids = [...queueView.selected];
      if (!ids.length) return setBanner("Select dead letters first.", "info");
      if (await act("POST", `/v1/queues/${enc(name)}/dead/purge`, { ids }, `Delete ${ids.length} dead letter(s) for good?`)) { queueView.selected.clear(); refresh(); }
    } }, "Purge selected"),
    el("button", { type: "button", "data-action": "replay-all", onclick: async () => {
      if (await act("POST", `/v1/queues/${enc(name)}/dead/replay`, { all: true }, `Replay every dead letter of ${name}?`)) refresh();
    } }, "Replay all"),
    el("button", { type: "button", "data-action": "purge-all", class: "danger", onclick: async () => {
      if (await act("POST", `/v1/queues/${enc(name)}/dead/purge`, { all: true }, `Delete every dead letter of ${name} for good?`)) refresh();
    } }, "Purge all")) : null;

  const head = [dead && !config.read_only ? el("th", {}, el("span", { class: "visually-hidden" }, "Select")) : null,
    el("th", {}, "Job"), el("th", {}, "Kind"), el("th", { class: "num" }, "Attempt"),
    el("th", {}, { waiting: "Enqueued", running: "Consumer", delayed: "Due", dead: "Reason" }[queueView.tab]),
    el("th", { class: "hide-narrow" }, dead ? "Error" : "Payload"), el("th", { class: "hide-narrow" }, "Trace")];
  const rows = page.jobs.map((job) => {
    const link = el("a", { href: `#/job/${enc(job.id)}?queue=${enc(name)}`, class: "mono" }, job.id || "(no id)");
    const box = dead && !config.read_only ? el("td", {}, el("input", { type: "checkbox", "aria-label": `select ${job.entry}`, checked: queueView.selected.has(job.entry),
      onchange: (event) => { if (event.target.checked) queueView.selected.add(job.entry); else queueView.selected.delete(job.entry); } })) : null;
    const detail = { waiting: fmtTime(job.enqueued_at), running: `${job.consumer} (idle ${fmtAge(job.idle_ms)})`, delayed: fmtTime(job.run_at), dead: job.reason }[queueView.tab];
    return el("tr", { "data-job": job.id, "data-dead-id": dead ? job.entry : null }, box,
      el("td", {}, link), el("td", {}, job.kind), el("td", { class: "num" }, job.attempt ?? "—"), el("td", {}, detail ?? "—"),
      el("td", { class: "mono hide-narrow" }, dead ? job.error ?? "" : job.payload), el("td", { class: "hide-narrow" }, traceLink(job.trace_id, null, "trace")));
  });
  const list = rows.length
    ? el("div", { class: "table-wrap" }, el("table", { "data-view": `jobs-${queueView.tab}` }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows)))
    : el("div", { class: "card empty", "data-view": `jobs-${queueView.tab}` }, `No ${queueView.tab} job${queueView.kind || queueView.text ? " matches the filter" : ""}.`);
  const pager = el("div", { class: "toolbar" },
    el("button", { type: "button", disabled: queueView.starts.length < 2, onclick: () => { queueView.starts = [null]; refresh(); } }, "First page"),
    el("button", { type: "button", disabled: !page.next, "data-action": "next-page", onclick: () => { queueView.starts.push(page.next); refresh(); } }, "Next page"),
    el("span", { class: "muted" }, `${page.jobs.length} shown, ${page.scanned} looked at`));

  const schedules = q.schedules.length
    ? el("div", { class: "table-wrap" }, el("table", { "data-view": "schedules" },
        el("thead", {}, el("tr", {}, el("th", {}, "Schedule"), el("th", {}, "Cadence"), el("th", {}, "Kind"), el("th", {}, "State"), el("th", {}, "Last tick"), el("th", {}, "Next tick"))),
        el("tbody", {}, q.schedules.map((s) => el("tr", {}, el("td", {}, s.name), el("td", { class: "mono" }, s.cadence), el("td", {}, s.kind),
          el("td", {}, s.paused ? "paused" : "running"), el("td", {}, fmtTime(s.last_tick_ms)), el("td", {}, fmtTime(s.next_tick_ms)))))))
    : el("div", { class: "card empty" }, "No periodic schedule (producer cron add).");

  show(el("p", {}, el("a", { href: "#/" }, "← Queues")),
    el("h1", {}, `Queue ${name}`), el("div", { class: "toolbar" }, actions),
    el("div", { class: "grid2" }, el("div", { class: "card" }, facts), el("div", {}, el("h2", {}, "Consumers"), consumers)),
    el("h2", {}, "Jobs"), tabs, filter, bulk, list, pager,
    el("h2", {}, "Periodic schedules"), schedules);
}

// ---- job page ---------------------------------------------------------------------------------------------------
const PAYLOAD_CAP = 64 * 1024;
function pretty(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  return text.length > PAYLOAD_CAP ? `${text.slice(0, PAYLOAD_CAP)}\n… (${text.length} characters, first ${PAYLOAD_CAP} shown)` : text;
}

async function jobPage(id, queue) {
  const path = `/v1/jobs/${enc(id)}${queue ? `?queue=${enc(queue)}` : ""}`;
  let job;
  try {
    job = await api("GET", path);
  } catch (e) {
    if (e.status === 404 || e.status === 400) {
      stopRefresh();
      show(el("p", {}, el("a", { href: "#/" }, "← Queues")), el("div", { class: "card empty", "data-view": "job-missing" }, e.message));
      return;
    }
    throw e;
  }
  const final = ["done", "dead", "cancelled", "expired"].includes(job.state);
  const facts = [["Queue", job.queue], ["Kind", job.kind], ["Enqueued", fmtTime(job.enqueued_at)], ["Attempt", job.attempt],
    ["Consumer", job.consumer], ["Deliveries", job.deliveries], ["Due", job.run_at && fmtTime(job.run_at)], ["Entry", job.message_id],
    ["Reason", job.reason], ["Error", job.error], ["Dead entry", job.dead_id], ["Cancel requested", job.cancel_requested_at && fmtTime(job.cancel_requested_at)],
    ["Finished", job.finished_at && fmtTime(job.finished_at)]].filter(([, v]) => v !== undefined && v !== null && v !== "");
  const cancel = !config.read_only && !final
    ? el("button", { type: "button", class: "danger", "data-action": "cancel", onclick: async () => {
        if (await act("DELETE", `/v1/jobs/${enc(id)}?queue=${enc(job.queue)}`, undefined, `Cancel job ${id}?`)) refresh();
      } }, "Cancel job")
    : null;
  const attempts = job.attempts.length
    ? el("div", { class: "table-wrap" }, el("table", { "data-view": "attempts" },
        el("thead", {}, el("tr", {}, el("th", { class: "num" }, "#"), el("th", {}, "Outcome"), el("th", {}, "Consumer"), el("th", {}, "Started"),
          el("th", { class: "num" }, "Duration"), el("th", {}, "Error"), el("th", {}, "Trace"))),
        el("tbody", {}, job.attempts.map((a) => el("tr", { "data-attempt": a.n },
          el("td", { class: "num" }, a.n), el("td", {}, el("span", { class: `badge state-${a.outcome === "done" ? "done" : "dead"}` }, a.outcome)),
          el("td", { class: "mono" }, a.consumer), el("td", {}, fmtTime(a.started_at)), el("td", { class: "num" }, fmtAge(a.ended_at - a.started_at)),
          el("td", { class: "mono" }, a.error ?? ""), el("td", {}, traceLink(a.trace_id, a.span_id, `${a.trace_id.slice(0, 8)}… span ${a.span_id}`)))))))
    : el("div", { class: "card empty" }, "No attempt finished yet.");
  show(el("p", {}, el("a", { href: `#/queue/${enc(job.queue)}` }, `← Queue ${job.queue}`)),
    el("h1", {}, "Job ", el("span", { class: "mono" }, job.id), " ", stateBadge(job.state)),
    el("div", { class: "toolbar" }, el("span", {}, "Trace: ", traceLink(job.trace_id, null)), cancel),
    el("div", { class: "grid2" },
      el("div", { class: "card" }, el("dl", { class: "facts", "data-view": "job" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]))),
      el("div", {},
        job.progress !== undefined ? [el("h2", {}, "Progress"), el("pre", { "data-field": "progress" }, pretty(job.progress))] : null,
        job.result !== undefined ? [el("h2", {}, "Result"), el("pre", { "data-field": "result" }, pretty(job.result))] : null)),
    el("h2", {}, "Attempts"), attempts,
    el("h2", {}, "Payload"), job.payload !== undefined ? el("pre", { "data-field": "payload" }, pretty(job.payload)) : el("div", { class: "card empty" }, "The entry is no longer readable (trimmed or moved)."));
}

// ---- routing ------------------------------------------------------------------------------------------------------
function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}
function current() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
}
function refresh() {
  const { parts, query } = current();
  if (parts[0] === "queue" && parts[1]) return guarded(() => queuePage(parts[1], true));
  if (parts[0] === "job" && parts[1]) return guarded(() => jobPage(parts[1], query.get("queue")));
  return guarded(overview);
}
function route() {
  stopRefresh();
  refresh();
  const { parts } = current();
  // Lists refresh themselves; a job page only on demand (it may be read closely).
  if (parts[0] !== "job") refreshTimer = setInterval(() => { if (!document.hidden && !main.contains(document.activeElement)) refresh(); }, 5000);
  main.focus({ preventScroll: true });
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("search-id").value.trim();
  if (id) location.hash = `#/job/${enc(id)}`;
});
document.getElementById("logout").addEventListener("click", async () => {
  await act("POST", "/ui/logout");
  showLogin();
});
window.addEventListener("hashchange", route);

(async () => {
  try {
    await loadConfig();
  } catch (e) {
    if (e.status === 401) return showLogin();
    setBanner(e.message);
    return;
  }
  route();
})();
