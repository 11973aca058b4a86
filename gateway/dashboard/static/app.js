// Trackside dashboard: fleet, train pages, alerts and the device inventory (devices.js), kept
// live by Server-Sent Events.
// Plain JS, no build step. Everything from Kafka is untrusted text: built with DOM nodes,
// never with innerHTML.
"use strict";

const state = {
  trains: new Map(), // train_id -> summary
  alerts: new Map(), // alert key -> latest active event
  pending: new Set(), // alert keys / train ids with an action sent, result not back yet
  detail: null, // the full train shown on a train page
  rules: null, // GET /api/rules: levels per channel, units, whether windows are available
  windows: new Map(), // train_id -> its maintenance window (an Alertmanager silence)
  windowsError: null, // why the windows cannot be shown (Alertmanager away)
  allAlerts: false, // on a phone: every alert shown, not only the first few
};

// ---- small helpers -------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const SEVERITY_RANK = { info: 0, warning: 1, critical: 2 };
const PHONE = window.matchMedia("(max-width: 600px)");
const PHONE_ALERTS = 2; // alerts shown on a phone before "show all": the fleet on the first screen

function pad(n) {
  return String(n).padStart(2, "0");
}

// "30 Nov 19:00:37" in the browser's time zone (with the year when it is not this one).
function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const year = d.getFullYear() !== new Date().getFullYear() ? ` ${d.getFullYear()}` : "";
  return `${d.getDate()} ${MONTHS[d.getMonth()]}${year} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// 42 -> "42 s", 3700 -> "1 h 1 min", 90000 -> "1 d 1 h".
function span(seconds) {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

// "3 min ago"; a time ahead of this browser's clock (a window's end, a device clock ahead) is
// "in 8 h 2 min", not "0 s ago".
function ago(ms) {
  if (!ms) return "never";
  const seconds = Math.round((Date.now() - ms) / 1000);
  if (seconds < -1) return `in ${span(-seconds)}`;
  return seconds <= 1 ? "just now" : `${span(seconds)} ago`;
}

function iso(ms) {
  return ms ? new Date(ms).toISOString() : "";
}

// A relative age, kept right by the timer at the end of this file.
function timeAgo(ms) {
  return h("time", { "data-ms": ms || 0, datetime: iso(ms), title: when(ms) }, ago(ms));
}

// A date with its time: "30 Nov 19:00:37".
function stamp(ms) {
  return h("time", { class: "stamp", datetime: iso(ms) }, when(ms));
}

function fmt(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function withUnit(value, unit) {
  return typeof value === "number" ? `${fmt(value)}${unit ? ` ${unit}` : ""}` : "";
}

function unitOf(channel) {
  return (state.rules && state.rules.units[channel]) || "";
}

// Most severe first, then the newest (the server sorts /api/alerts the same way).
function alertOrder(a, b) {
  return (SEVERITY_RANK[b.severity] ?? -1) - (SEVERITY_RANK[a.severity] ?? -1)
    || (b.since_ms || 0) - (a.since_ms || 0) || a.key.localeCompare(b.key);
}

// ---- updating the page in place ----------------------------------------------
// A live update builds the view again with h() and copies only the differences into the page:
// elements keep their identity (a button being clicked, an input being typed in, a chart), so
// nothing the operator does is lost to an update. Elements are matched by id, data-key,
// data-train or data-act; `data-keep` marks one whose inside is managed elsewhere (charts).

function keyOf(node) {
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  return node.id || node.dataset.key || node.dataset.train || node.dataset.act || null;
}

function morph(from, to) {
  if (from.nodeName !== to.nodeName || keyOf(from) !== keyOf(to)) {
    from.replaceWith(to);
    return;
  }
  if (from.nodeType !== Node.ELEMENT_NODE) {
    if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
    return;
  }
  for (const attr of [...from.attributes]) if (!to.hasAttribute(attr.name)) from.removeAttribute(attr.name);
  for (const attr of [...to.attributes]) {
    if (from.getAttribute(attr.name) !== attr.value) from.setAttribute(attr.name, attr.value);
  }
  if (!from.hasAttribute("data-keep")) morphChildren(from, [...to.childNodes]);
}

function morphChildren(parent, wanted) {
  const keyed = new Map();
  for (const child of parent.childNodes) {
    const key = keyOf(child);
    if (key) keyed.set(key, child);
  }
  wanted.forEach((node, i) => {
    const current = parent.childNodes[i] || null;
    const key = keyOf(node);
    const match = key ? keyed.get(key) : current && !keyOf(current) ? current : null;
    if (!match) {
      parent.insertBefore(node, current);
      return;
    }
    if (match !== current) parent.insertBefore(match, current);
    morph(match, node);
  });
  while (parent.childNodes.length > wanted.length) parent.lastChild.remove();
}

function toast(text) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

// ---- sign-in and actions -------------------------------------------------
// The session is an HttpOnly cookie this script never sees; GET /api/me says who is signed in.

const auth = { me: null, login: "token", readsNeedLogin: false };

function canAct() {
  // Signed in: operators only. Not signed in with the token mode: the button asks for it.
  return auth.me ? auth.me.role === "operator" : auth.login === "token";
}

function post(url, body, method = "POST") {
  // X-Trackside: the server refuses changes without it (another site's page cannot send it).
  return fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-Trackside": "1" },
    body: JSON.stringify(body || {}),
  });
}

async function whoAmI() {
  let response;
  try {
    response = await fetch("/api/me");
  } catch (err) {
    return;
  }
  if (response.ok) {
    auth.me = await response.json();
  } else if (response.status === 401) {
    const body = await response.json();
    auth.me = null;
    auth.login = body.login;
    auth.readsNeedLogin = body.reads_need_login;
  }
  showWho();
}

function showWho() {
  const who = document.getElementById("who");
  const me = auth.me;
  who.textContent = me ? `${me.name} · ${me.role}${me.via === "header" ? "" : " (sign out)"}` : "Sign in";
  who.disabled = me ? me.via === "header" : auth.login === "proxy";
}

function askLogin() {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  const name = document.getElementById("login-name");
  const password = document.getElementById("login-password");
  const error = document.getElementById("login-error");
  const cancel = document.getElementById("login-cancel");
  const byToken = auth.login === "token";
  document.getElementById("login-name-row").hidden = byToken;
  name.required = !byToken;
  document.getElementById("login-what").textContent = byToken ? "Dashboard token" : "Password";
  cancel.hidden = auth.readsNeedLogin;
  password.value = "";
  error.textContent = "";
  return new Promise((resolve) => {
    const done = (ok) => {
      form.onsubmit = null;
      cancel.onclick = null;
      dialog.close();
      resolve(ok);
    };
    form.onsubmit = async (event) => {
      event.preventDefault();
      let response = null;
      try {
        response = await post("/api/login", { name: name.value.trim(), password: password.value });
      } catch (err) {
        response = null;
      }
      if (response && response.ok) {
        auth.me = await response.json();
        showWho();
        render();
        done(true);
      } else {
        error.textContent = response ? await response.text() : "The dashboard is unreachable.";
      }
    };
    cancel.onclick = () => done(false);
    dialog.showModal();
  });
}

async function act(url, pendingKey, body, method) {
  if (!auth.me && !(await askLogin())) return;
  if (!canAct()) return;
  state.pending.add(pendingKey);
  render();
  let response;
  try {
    response = await post(url, body, method);
  } catch (err) {
    response = null;
  }
  if (response && response.status === 202) {
    toast("Sent; waiting for the alert service to confirm");
    return;
  }
  state.pending.delete(pendingKey);
  if (response && response.status === 401) auth.me = null;
  showWho();
  render();
  if (response && response.status === 401) toast("Your session ended: sign in again");
  else toast(`Not sent: ${response ? await response.text() : "the dashboard is unreachable"}`);
}

function ackButton(alert) {
  if (alert.state !== "firing" || !canAct()) return null;
  const sent = state.pending.has(alert.key);
  return h("button", {
    class: "act", type: "button", disabled: sent, "data-act": "ack",
    onclick: () => act(`/api/alerts/${encodeURIComponent(alert.key)}/ack`, alert.key),
  }, sent ? "Ack sent…" : "Acknowledge");
}

function clearButton(train) {
  if (!train.flagged || !canAct()) return null;
  const sent = state.pending.has(train.train_id);
  return h("button", {
    class: "act", type: "button", disabled: sent, "data-act": "clear",
    onclick: () => act(`/api/trains/${encodeURIComponent(train.train_id)}/clear`, train.train_id),
  }, sent ? "Clear sent…" : "Clear flag");
}

// ---- views ---------------------------------------------------------------

function channelsOf(alert) {
  return String(alert.sensor || "").split("-");
}

function alertItem(alert, withTrain) {
  const acked = alert.state === "acknowledged"
    ? h("span", { class: "acked" }, `acknowledged by ${alert.acked_by} at ${when(alert.acked_at_ms)}`)
    : null;
  return h("li", { class: `alert sev-${alert.severity} st-${alert.state}`, "data-key": alert.key },
    h("div", { class: "alert-head" },
      h("span", { class: "sev" }, alert.severity, alert.escalated ? " · escalated" : ""),
      withTrain ? h("a", { class: "train-link", href: `#/train/${encodeURIComponent(alert.train_id)}` }, alert.train_id) : null,
      h("span", { class: "in-alarm" }, alert.sensor),
      h("span", { class: "reading" }, withUnit(alert.value, alert.unit)),
      h("span", { class: "state" }, alert.state)),
    h("div", { class: "alert-line" }, alert.headline || alert.message || ""),
    alert.description ? h("div", { class: "alert-desc" }, alert.description) : null,
    h("div", { class: "alert-msg" }, `${alert.rule} · device ${alert.device_id} · ${alert.message || ""}`),
    h("div", { class: "alert-foot" },
      h("span", {}, "since ", stamp(alert.since_ms), " · ", timeAgo(alert.since_ms)), acked, ackButton(alert)));
}

function windowBadge(trainId) {
  const window = state.windows.get(trainId);
  return window
    ? h("span", { class: "badge window", title: window.comment || "" }, `in depot until ${when(window.ends_at_ms)}`)
    : null;
}

function trainRow(train) {
  const badges = [train.flagged ? h("span", { class: "badge maint" }, "maintenance") : null,
    train.flagged ? clearButton(train) : null, windowBadge(train.train_id)].filter(Boolean);
  return h("li", { class: `train st-${train.status}${train.flagged ? " flagged" : ""}`, "data-train": train.train_id },
    h("a", { class: "train-id", href: `#/train/${encodeURIComponent(train.train_id)}` }, train.train_id),
    h("span", { class: `badge status ${train.status}` }, train.status),
    h("span", { class: "seen" }, "seen ", timeAgo(train.last_seen_ms)),
    train.active_alerts
      ? h("span", { class: `badge alerts sev-${train.worst_severity}` }, `${train.active_alerts} alert${train.active_alerts > 1 ? "s" : ""}`)
      : h("span", { class: "badge none" }, "no alerts"),
    h("span", { class: "flag" }, badges));
}

function jumpTo(id) {
  return () => document.getElementById(id).scrollIntoView({ block: "start" });
}

function windowsError() {
  return state.windowsError
    ? h("p", { class: "error", id: "windows-error" }, `Maintenance windows unavailable: ${state.windowsError}`)
    : null;
}

function fleetView() {
  const alerts = [...state.alerts.values()].sort(alertOrder);
  const trains = [...state.trains.values()].sort((a, b) => a.train_id.localeCompare(b.train_id));
  const flagged = trains.filter((t) => t.flagged).length;
  const folded = PHONE.matches && !state.allAlerts && alerts.length > PHONE_ALERTS;
  const shown = folded ? alerts.slice(0, PHONE_ALERTS) : alerts;
  return [
    h("nav", { class: "jump", id: "jump" },
      h("button", { type: "button", id: "to-alerts", onclick: jumpTo("alerts") }, `Alerts (${alerts.length})`),
      h("button", { type: "button", id: "to-fleet", onclick: jumpTo("fleet") }, `Fleet (${trains.length})`),
      h("a", { href: "/api/maintenance.csv", download: "", id: "export-csv" }, "Export CSV"),
      h("a", { href: "/api/maintenance.json", id: "export-json" }, "JSON")),
    windowsError(),
    h("section", { class: "panel", id: "alerts" },
      h("h2", {}, `Active alerts (${alerts.length})`),
      alerts.length ? h("ul", { class: "alerts", id: "alert-list" }, shown.map((a) => alertItem(a, true)))
        : h("p", { class: "empty" }, "No active alerts."),
      folded ? h("button", { type: "button", id: "all-alerts", onclick: () => { state.allAlerts = true; render(); } },
        `Show all ${alerts.length} alerts`) : null),
    h("section", { class: "panel", id: "fleet" },
      h("h2", {}, `Fleet (${trains.length} trains, ${flagged} flagged)`),
      trains.length ? h("ul", { class: "fleet", id: "train-list" }, trains.map(trainRow))
        : h("p", { class: "empty" }, "No train has reported yet.")),
  ];
}

function windowSection(trainId) {
  if (!state.rules || !state.rules.maintenance_windows) return null;
  const window = state.windows.get(trainId);
  const sent = state.pending.has(`window:${trainId}`);
  let body;
  if (state.windowsError) {
    body = h("p", { class: "error" }, state.windowsError);
  } else if (window) {
    body = h("p", {}, h("span", { class: "badge window" }, "in the depot"), " until ", stamp(window.ends_at_ms),
      " (", timeAgo(window.ends_at_ms), ")", window.created_by ? `, set by ${window.created_by}` : "",
      window.comment ? `: ${window.comment}` : "", " ",
      h("button", { class: "act", type: "button", "data-act": "window-end", disabled: sent, onclick: () => endWindow(trainId) },
        sent ? "Ending…" : "End window"));
  } else {
    body = h("form", { class: "window-form", "data-act": "window-set", onsubmit: (event) => setWindow(event, trainId) },
      h("label", {}, "In the depot until ", h("input", { type: "datetime-local", name: "until", required: true, id: "window-until" })),
      h("label", {}, "Comment ", h("input", { name: "comment", maxlength: 500, id: "window-comment", placeholder: "e.g. wheelset change" })),
      h("button", { class: "act", type: "submit", id: "window-set", disabled: sent }, sent ? "Setting…" : "Set window"));
  }
  return h("section", { class: "panel", id: "window" },
    h("h2", {}, "Maintenance window"), body,
    h("p", { class: "hint" }, "While it lasts, Alertmanager sends no notification for this train; its alerts still show here."));
}

function historyItem(event) {
  const refire = typeof event.after_clear_ms === "number"
    ? ` · fired again ${span(Math.round(event.after_clear_ms / 1000))} after the flag was cleared` : "";
  return h("li", { class: `st-${event.state}` },
    stamp(event.ts_ms), " ", h("b", {}, event.state), ` ${event.headline || event.message || ""}`,
    h("span", { class: "muted" }, ` · ${event.rule} · device ${event.device_id}`),
    event.acked_by ? ` · acknowledged by ${event.acked_by}` : "",
    event.cleared_by ? ` · cleared by ${event.cleared_by} at ${when(event.cleared_at_ms)}` : "", refire);
}

function trainView(trainId) {
  const train = state.detail && state.detail.train_id === trainId ? state.detail : null;
  const summary = state.trains.get(trainId);
  if (!train || !summary) {
    return [h("p", { class: "empty" }, summary ? "Loading…" : `No train ${trainId} has reported.`)];
  }
  const channels = Object.keys(train.channels);
  const active = [...state.alerts.values()].filter((a) => a.train_id === trainId).sort(alertOrder);
  const inAlarm = new Set(active.flatMap(channelsOf));
  const maint = summary.maintenance;
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Fleet")),
    h("section", { class: "panel", id: "train" },
      h("h2", {}, `Train ${trainId} `, h("span", { class: `badge status ${summary.status}` }, summary.status), " ", windowBadge(trainId)),
      h("p", {}, "Last seen ", stamp(summary.last_seen_ms), " (", timeAgo(summary.last_seen_ms), ") · devices: ",
        Object.entries(summary.devices).map(([d, s]) => `${d} ${s}`).join(", ") || "none")),
    h("section", { class: `panel${summary.flagged ? " flagged" : ""}`, id: "maintenance" },
      h("h2", {}, "Maintenance"),
      summary.flagged
        ? h("p", {}, h("span", { class: "badge maint" }, "flagged"),
          " since ", stamp(maint.since_ms), ` by ${maint.by}: ${maint.reason}`,
          maint.disabled ? " (devices disabled)" : "", " ", clearButton(summary))
        : h("p", { class: "empty" }, maint ? ["Cleared by ", maint.by, " at ", stamp(maint.since_ms), "."] : "Not flagged.")),
    windowSection(trainId),
    h("section", { class: "panel", id: "active" },
      h("h2", {}, `Active alerts (${active.length})`),
      active.length ? h("ul", { class: "alerts" }, active.map((a) => alertItem(a, false)))
        : h("p", { class: "empty" }, "No active alerts.")),
    h("section", { class: "panel", id: "values" },
      h("h2", {}, "Values ",
        Object.entries(RANGES).map(([label, seconds]) => h("button", {
          type: "button", class: `range${chartRange === seconds ? " on" : ""}`, "data-act": `range-${seconds}`,
          onclick: () => { setChartRange(seconds); render(); },
        }, label))),
      channels.length
        ? h("ul", { class: "channels" }, channels.map((name) =>
          h("li", { class: `channel${inAlarm.has(name) ? " alarm" : ""}`, "data-key": `channel-${name}`, "data-channel": name },
            h("span", { class: "name" }, name, inAlarm.has(name) ? h("span", { class: "badge sev-critical" }, "in alarm") : null),
            h("span", { class: "value" }, withUnit(summary.values[name] ?? train.channels[name].at(-1)[1], unitOf(name))),
            h("div", { class: "chart", "data-channel": name, "data-keep": "" }))))
        : h("p", { class: "empty" }, "No readings yet.")),
    h("section", { class: "panel", id: "history" },
      h("h2", {}, "Alert history"),
      train.alert_history.length
        ? h("ol", { class: "history" }, train.alert_history.map(historyItem))
        : h("p", { class: "empty" }, "No alerts so far.")),
  ];
}

function route() {
  const match = location.hash.match(/^#\/train\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

let shownRoute = null;

function render() {
  const trainId = route();
  const view = document.getElementById("view");
  const devices = !trainId && location.hash === "#/devices"; // the inventory (devices.js)
  const wanted = (trainId ? trainView(trainId) : devices ? devicesView() : fleetView()).filter(Boolean);
  const routeKey = trainId ? `train:${trainId}` : devices ? "devices" : "fleet";
  // Another page: built afresh (its buttons act on another train); the same page: patched.
  if (routeKey !== shownRoute) view.replaceChildren(...wanted);
  else morphChildren(view, wanted);
  shownRoute = routeKey;
  updateCharts(trainId && state.detail ? state.detail : { channels: {}, alert_history: [] }, state.rules);
}

// ---- maintenance windows ---------------------------------------------------

function setWindow(event, trainId) {
  event.preventDefault();
  const form = event.target;
  const until = new Date(form.elements.until.value).getTime(); // the browser's time zone
  if (!Number.isFinite(until)) return;
  act(`/api/trains/${encodeURIComponent(trainId)}/maintenance-window`, `window:${trainId}`,
    { until, comment: form.elements.comment.value.trim() });
}

function endWindow(trainId) {
  act(`/api/trains/${encodeURIComponent(trainId)}/maintenance-window`, `window:${trainId}`, {}, "DELETE");
}

// ---- data ----------------------------------------------------------------

let detailLoading = false;
let detailAgain = false;

async function loadDetail() {
  const trainId = route();
  if (!trainId) return;
  if (detailLoading) { detailAgain = true; return; }
  detailLoading = true;
  try {
    const response = await fetch(`/api/trains/${encodeURIComponent(trainId)}`);
    state.detail = response.ok ? await response.json() : null;
    render();
  } finally {
    detailLoading = false;
    if (detailAgain) { detailAgain = false; setTimeout(loadDetail, 500); }
  }
}

async function loadRules() {
  const response = await fetch("/api/rules");
  if (response.ok) {
    state.rules = await response.json();
    render();
  }
}

function mergeWindows(data) {
  const windows = new Map(Object.entries(data.windows || {}));
  for (const key of [...state.pending]) {
    if (!key.startsWith("window:")) continue;
    const trainId = key.slice("window:".length);
    const before = state.windows.get(trainId), after = windows.get(trainId);
    if ((before && before.id) !== (after && after.id)) state.pending.delete(key);
  }
  state.windows = windows;
  state.windowsError = data.error || null;
}

function mergeAlert(alert) {
  if (alert.state === "resolved") state.alerts.delete(alert.key);
  else state.alerts.set(alert.key, alert);
  if (alert.state !== "firing") state.pending.delete(alert.key);
}

function mergeTrain(train) {
  const before = state.trains.get(train.train_id);
  if (before && before.flagged && !train.flagged) state.pending.delete(train.train_id);
  state.trains.set(train.train_id, train);
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => { live.dataset.state = "live"; live.textContent = "live"; });
  events.addEventListener("error", () => {
    live.dataset.state = "offline";
    live.textContent = "reconnecting";
    // A refusal (the session ended) makes EventSource give up: sign in again, then reconnect.
    if (events.readyState === EventSource.CLOSED) setTimeout(() => signIn().then(connect), 2000);
  });
  events.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    state.trains.clear();
    state.alerts.clear();
    data.trains.forEach(mergeTrain);
    data.alerts.forEach(mergeAlert);
    mergeDevices(data.devices, true);
    mergeWindows(data);
    render();
    loadDetail();
  });
  events.addEventListener("changes", (event) => {
    const data = JSON.parse(event.data);
    data.trains.forEach(mergeTrain);
    data.alerts.forEach(mergeAlert);
    mergeDevices(data.devices, false);
    const trainId = route();
    if (trainId && data.trains.some((t) => t.train_id === trainId)) loadDetail();
    else render();
  });
  events.addEventListener("windows", (event) => {
    mergeWindows(JSON.parse(event.data));
    render();
  });
}

document.getElementById("who").addEventListener("click", async () => {
  if (!auth.me) {
    askLogin();
    return;
  }
  await post("/api/logout");
  auth.me = null;
  showWho();
  render();
  if (auth.readsNeedLogin) location.reload(); // nothing to show until someone signs in
});
window.addEventListener("hashchange", () => { state.detail = null; state.allAlerts = false; render(); loadDetail(); });
PHONE.addEventListener("change", render);
setInterval(() => {
  for (const el of document.querySelectorAll("time[data-ms]")) el.textContent = ago(Number(el.dataset.ms));
}, 1000);
async function signIn() {
  // With accounts nothing is shown before signing in; the token mode reads without.
  await whoAmI();
  if (!auth.me && auth.login === "proxy") toast("Open the dashboard through the sign-on proxy");
  while (!auth.me && auth.readsNeedLogin && auth.login !== "proxy") await askLogin();
}

signIn().then(() => { render(); loadRules(); connect(); });
