// The console's page: sign-in, then the ongoing conversations table (live from the stream,
// wait and handle times ticking on the server's clock), filters remembered per user, the
// agents and queues panels, and the conversation view.
import { h, fill, announce, duration } from "./dom.js";
import * as auth from "./auth.js";
import { call, walk } from "./api.js";
import { LiveStream } from "./stream.js";
import { ConversationTable, sortKey } from "./table.js";
import { ConversationView } from "./detail.js";

const STATES = ["open", "active", "waiting", "wrap-up"];
const CHANNELS = ["web", "sms", "whatsapp", "messaging", "voice"];
const ONGOING = new Set(STATES);

const page = {
  settings: null,
  me: null,
  /** id → {row, at}: the row as last received and the server time it was true at. */
  rows: new Map(),
  clockOffset: 0,
  filters: { q: "", states: [], channels: [], queues: [], mine: false },
  sort: { key: "created", descending: true },
  stream: null,
  table: null,
  view: null,
  drawPending: false,
  queues: [],
};

/** For the browser benchmark: when each conversation's event reached the screen. */
window.switchboardConsole = { painted: [] };

function serverNow() {
  return Date.now() + page.clockOffset;
}

function times(row) {
  const entry = page.rows.get(row.id);
  const elapsed = entry ? Math.max(0, (serverNow() - entry.at) / 1000) : 0;
  const waiting = !row.accepted_at;
  const handling = row.accepted_at && (row.state === "active" || row.state === "waiting");
  return {
    wait: row.wait_seconds + (waiting ? elapsed : 0),
    handle: row.handle_seconds + (handling ? elapsed : 0),
  };
}

function attention(row, t) {
  const reasons = [];
  if (!row.accepted_at && t.wait >= page.settings.attention_wait_seconds) reasons.push(`waiting ${duration(t.wait)}`);
  if (row.sentiment?.score !== null && row.sentiment?.score !== undefined && row.sentiment.score <= page.settings.attention_sentiment) {
    reasons.push("negative sentiment");
  }
  return reasons;
}

function filtersKey() {
  return `switchboard.console.filters.${page.me.id}`;
}

function loadFilters() {
  try {
    const saved = JSON.parse(localStorage.getItem(filtersKey()) || "null");
    if (saved) {
      page.filters = { ...page.filters, ...saved.filters };
      page.sort = saved.sort || page.sort;
    }
  } catch {
    // Unreadable: the defaults.
  }
}

function saveFilters() {
  localStorage.setItem(filtersKey(), JSON.stringify({ filters: page.filters, sort: page.sort }));
}

function matches(row) {
  const f = page.filters;
  if (f.states.length && !f.states.includes(row.state)) return false;
  if (f.channels.length && !f.channels.includes(row.channel)) return false;
  if (f.queues.length && !f.queues.includes(row.queue)) return false;
  if (f.mine && !(row.supervisors || []).some((seat) => seat.id === page.me.id)) return false;
  if (f.q) {
    const q = f.q.toLowerCase();
    const fields = [row.subject, row.customer?.name, row.customer?.id];
    if (!fields.some((field) => field && field.toLowerCase().includes(q))) return false;
  }
  return true;
}

function compare(a, b) {
  const key = page.sort.key;
  let order;
  if (key === "created") order = a.created_at.localeCompare(b.created_at);
  else if (key === "wait" || key === "handle") order = times(a)[key] - times(b)[key];
  else if (key === "sentiment") {
    const x = a.sentiment?.score ?? Infinity;
    const y = b.sentiment?.score ?? Infinity;
    order = x === y ? 0 : x < y ? -1 : 1;
  } else {
    const text = (row) =>
      key === "customer" ? row.customer?.name || row.customer?.id || "" : key === "supervisors" ? (row.supervisors || []).map((s) => s.id).join(",") : String(row[`${key}_name`] || row[key] || "");
    order = text(a).localeCompare(text(b));
  }
  if (page.sort.descending) order = -order;
  return order || a.id.localeCompare(b.id);
}

/** Redraws the table once per frame, however many events arrived. */
function draw(touched = []) {
  for (const id of touched) page.touched.add(id);
  if (page.drawPending) return;
  page.drawPending = true;
  requestAnimationFrame(() => {
    page.drawPending = false;
    const rows = [...page.rows.values()].map((entry) => entry.row).filter(matches).sort(compare);
    page.table.setSort(page.sort);
    page.table.setRows(rows);
    fill(document.getElementById("count"), `${rows.length} of ${page.rows.size} conversations`);
    const now = Date.now();
    for (const id of page.touched) page.touchedLog(id, now);
    page.touched.clear();
  });
}
page.touched = new Set();
page.touchedLog = (id, at) => {
  const painted = window.switchboardConsole.painted;
  painted.push([id, at]);
  if (painted.length > 20000) painted.splice(0, painted.length - 10000);
};

function onEvent(kind, data) {
  if (kind === "conversation") {
    if (!ONGOING.has(data.state)) page.rows.delete(data.id);
    else page.rows.set(data.id, { row: data, at: serverNow() });
    draw([data.id]);
    if (page.view.id === data.id) page.view.refresh();
  } else if (kind === "timeline") {
    page.view.append(data);
  }
}

async function loadReport() {
  const { rows, first } = await walk("/v1/conversations", "conversations");
  page.clockOffset = Date.parse(first.server_time) - Date.now();
  const at = Date.parse(first.server_time);
  page.rows = new Map(rows.map((row) => [row.id, { row, at }]));
  draw();
  return first.stream_id;
}

async function loadPanels() {
  try {
    const [{ rows: queues }, { rows: agents }] = await Promise.all([walk("/v1/queues", "queues"), walk("/v1/agents", "agents")]);
    page.queues = queues;
    fill(
      document.getElementById("queues-body"),
      queues.map((q) =>
        h("tr", {}, h("th", { scope: "row" }, q.name), h("td", {}, String(q.waiting)), h("td", {}, duration(q.longest_wait_seconds)), h("td", {}, duration(q.average_wait_seconds)), h("td", {}, String(q.agents_available))),
      ),
    );
    fill(
      document.getElementById("agents-body"),
      agents.map((a) =>
        h("tr", {}, h("th", { scope: "row" }, a.name), h("td", {}, a.presence), h("td", {}, `${a.capacity_used} / ${a.capacity_total}`)),
      ),
    );
    renderQueueFilter();
  } catch (error) {
    announce(error.message, "error");
  }
}

function checkboxes(name, values, selected, onchange) {
  return h(
    "fieldset",
    { class: `filter ${name}` },
    h("legend", {}, name[0].toUpperCase() + name.slice(1)),
    values.map(([value, label]) =>
      h("label", {}, h("input", { type: "checkbox", name, value, checked: selected.includes(value), onchange }), ` ${label}`),
    ),
  );
}

function renderQueueFilter() {
  const holder = document.getElementById("queue-filter");
  if (!holder) return;
  fill(
    holder,
    checkboxes("queue", page.queues.map((q) => [q.id, q.name]), page.filters.queues, (event) => {
      toggle(page.filters.queues, event.target.value, event.target.checked);
    }),
  );
}

function toggle(list, value, on) {
  const index = list.indexOf(value);
  if (on && index < 0) list.push(value);
  if (!on && index >= 0) list.splice(index, 1);
  saveFilters();
  draw();
}

function showSignIn(error) {
  const main = document.getElementById("main");
  const s = page.settings;
  const options = [];
  if (s.oidc_issuer) {
    options.push(h("button", { type: "button", id: "sign-in", onclick: () => auth.signIn().catch((e) => announce(e.message, "error")) }, "Sign in"));
  }
  if (s.development_sign_in) {
    const token = h("textarea", { id: "dev-token", rows: "4", spellcheck: "false", autocomplete: "off" });
    const form = h(
      "form",
      { class: "dev-sign-in" },
      h("label", { for: "dev-token" }, "Development sign-in: a token from ", h("code", {}, "switchboard token")),
      token,
      h("button", { type: "submit" }, "Sign in with this token"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        auth.signInWithToken(token.value.trim());
        location.reload();
      } catch (e) {
        announce(e.message, "error");
      }
    });
    options.push(form);
  }
  if (!options.length) options.push(h("p", {}, "No sign-in is configured: set console.oidc_issuer (or auth.hs256_secret for development)."));
  fill(main, h("section", { class: "sign-in", "aria-labelledby": "sign-in-title" }, h("h2", { id: "sign-in-title" }, "Sign in"), options));
  if (error) announce(error, "error");
}

function showConsole() {
  fill(document.getElementById("user"), `${page.me.name} `, h("button", { type: "button", id: "sign-out", onclick: () => auth.signOut() }, "Sign out"));
  loadFilters();
  const search = h("input", { type: "search", id: "search", value: page.filters.q, placeholder: "Customer or subject" });
  search.addEventListener("input", () => {
    page.filters.q = search.value.trim();
    saveFilters();
    draw();
  });
  const mine = h("input", { type: "checkbox", id: "mine", checked: page.filters.mine });
  mine.addEventListener("change", () => {
    page.filters.mine = mine.checked;
    saveFilters();
    draw();
  });
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Filters", onsubmit: (event) => event.preventDefault() },
    h("label", { for: "search" }, "Search"),
    search,
    checkboxes("state", STATES.map((s) => [s, s]), page.filters.states, (event) => toggle(page.filters.states, event.target.value, event.target.checked)),
    checkboxes("channel", CHANNELS.map((c) => [c, c]), page.filters.channels, (event) => toggle(page.filters.channels, event.target.value, event.target.checked)),
    h("div", { id: "queue-filter" }),
    h("label", { class: "mine" }, mine, " Supervised by me"),
  );
  const tableHolder = h("section", { class: "table-holder", "aria-labelledby": "conversations-title" }, h("h2", { id: "conversations-title" }, "Ongoing conversations ", h("span", { id: "count", class: "count" })));
  const detail = h("section", { id: "detail", class: "detail", hidden: true, "aria-label": "Conversation" });
  const panels = h(
    "aside",
    { class: "panels" },
    h("section", { "aria-labelledby": "queues-title" }, h("h2", { id: "queues-title" }, "Queues"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Queue"), h("th", { scope: "col" }, "Waiting"), h("th", { scope: "col" }, "Longest"), h("th", { scope: "col" }, h("abbr", { title: "Average wait" }, "Avg")), h("th", { scope: "col" }, h("abbr", { title: "Agents available" }, "Free")))), h("tbody", { id: "queues-body" }))),
    h("section", { "aria-labelledby": "agents-title" }, h("h2", { id: "agents-title" }, "Agents"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Agent"), h("th", { scope: "col" }, "Presence"), h("th", { scope: "col" }, "Capacity"))), h("tbody", { id: "agents-body" }))),
  );
  fill(document.getElementById("main"), filters, tableHolder, detail, panels);
  page.table = new ConversationTable(tableHolder, {
    onOpen: (id) => page.view.open(id),
    onSort: (column) => {
      const key = sortKey(column);
      page.sort = { key, descending: page.sort.key === key ? !page.sort.descending : key === "wait" || key === "handle" };
      saveFilters();
      draw();
    },
    times,
    attention,
  });
  page.view = new ConversationView(detail, {
    onOpen: () => document.getElementById("main").classList.add("detail-open"),
    onClose: () => document.getElementById("main").classList.remove("detail-open"),
    onChanged: () => loadPanels(),
  });
  page.view.me = page.me.id;
  start().catch((error) => announce(error.message, "error"));
}

async function start() {
  const after = await loadReport();
  await loadPanels();
  page.stream = new LiveStream(after, onEvent, {
    onGap: async () => {
      announce("Some events were missed; reloading the report.");
      page.stream.restartFrom(await loadReport());
    },
    onState: (state) => {
      document.body.dataset.stream = state;
      fill(document.getElementById("connection"), state === "live" ? "Live" : "Reconnecting…");
    },
  }).start();
  setInterval(() => page.table.tick(), 1000);
  setInterval(() => loadPanels(), 5000);
  document.body.dataset.ready = "true";
}

async function main() {
  page.settings = await (await fetch("/console/config.json")).json();
  let error = null;
  try {
    await auth.start(page.settings);
  } catch (e) {
    error = e.message;
  }
  page.me = auth.user();
  auth.onSession((session) => {
    if (!session) location.assign("/console/");
  });
  if (!page.me) showSignIn(error);
  else showConsole();
}

main();
