// Trackside dashboard: fleet, train pages and alerts, kept live by Server-Sent Events.
// Plain JS, no build step. Everything from Kafka is untrusted text: built with DOM nodes,
// never with innerHTML.
"use strict";

const state = {
  trains: new Map(), // train_id -> summary
  alerts: new Map(), // alert key -> latest active event
  pending: new Set(), // alert keys / train ids with an action sent, result not back yet
  detail: null, // the full train shown on a train page
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

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function timeAgo(ms) {
  return h("time", { "data-ms": ms || 0, title: ms ? new Date(ms).toISOString() : "" }, ago(ms));
}

function fmt(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(1);
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
    class: "act", type: "button", disabled: sent,
    onclick: () => act(`/api/alerts/${encodeURIComponent(alert.key)}/ack`, alert.key),
  }, sent ? "Ack sent…" : "Acknowledge");
}

function clearButton(train) {
  if (!train.flagged || !canAct()) return null;
  const sent = state.pending.has(train.train_id);
  return h("button", {
    class: "act", type: "button", disabled: sent,
    onclick: () => act(`/api/trains/${encodeURIComponent(train.train_id)}/clear`, train.train_id),
  }, sent ? "Clear sent…" : "Clear flag");
}

// ---- views ---------------------------------------------------------------

function alertItem(alert, withTrain) {
  const acked = alert.state === "acknowledged"
    ? h("span", { class: "acked" }, `acknowledged by ${alert.acked_by} at ${clock(alert.acked_at_ms)}`)
    : null;
  return h("li", { class: `alert sev-${alert.severity} st-${alert.state}`, "data-key": alert.key },
    h("div", { class: "alert-head" },
      h("span", { class: "sev" }, alert.severity),
      withTrain ? h("a", { class: "train-link", href: `#/train/${encodeURIComponent(alert.train_id)}` }, alert.train_id) : null,
      h("span", { class: "rule" }, `${alert.rule} · ${alert.sensor} · device ${alert.device_id}`),
      h("span", { class: "state" }, alert.state)),
    h("div", { class: "alert-msg" }, alert.message || ""),
    h("div", { class: "alert-foot" },
      h("span", {}, "since ", timeAgo(alert.since_ms)), acked, ackButton(alert)));
}

function trainRow(train) {
  return h("li", { class: `train st-${train.status}${train.flagged ? " flagged" : ""}`, "data-train": train.train_id },
    h("a", { class: "train-id", href: `#/train/${encodeURIComponent(train.train_id)}` }, train.train_id),
    h("span", { class: `badge status ${train.status}` }, train.status),
    h("span", { class: "seen" }, "seen ", timeAgo(train.last_seen_ms)),
    train.active_alerts
      ? h("span", { class: `badge alerts sev-${train.worst_severity}` }, `${train.active_alerts} alert${train.active_alerts > 1 ? "s" : ""}`)
      : h("span", { class: "badge none" }, "no alerts"),
    train.flagged
      ? h("span", { class: "flag" }, h("span", { class: "badge maint" }, "maintenance"), clearButton(train))
      : h("span", { class: "flag" }));
}

function fleetView() {
  const alerts = [...state.alerts.values()].sort((a, b) => (b.since_ms || 0) - (a.since_ms || 0));
  const trains = [...state.trains.values()].sort((a, b) => a.train_id.localeCompare(b.train_id));
  const flagged = trains.filter((t) => t.flagged).length;
  return [
    h("section", { class: "panel", id: "alerts" },
      h("h2", {}, `Active alerts (${alerts.length})`),
      alerts.length ? h("ul", { class: "alerts" }, alerts.map((a) => alertItem(a, true)))
        : h("p", { class: "empty" }, "No active alerts.")),
    h("section", { class: "panel", id: "fleet" },
      h("h2", {}, `Fleet (${trains.length} trains, ${flagged} flagged)`),
      trains.length ? h("ul", { class: "fleet" }, trains.map(trainRow))
        : h("p", { class: "empty" }, "No train has reported yet.")),
  ];
}

function sparkline(points) {
  const width = 120, height = 32;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  if (points.length < 2) return svg;
  const ts = points.map((p) => p[0]), vs = points.map((p) => p[1]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts), v0 = Math.min(...vs), v1 = Math.max(...vs);
  const x = (t) => (t1 > t0 ? ((t - t0) / (t1 - t0)) * width : width);
  const y = (v) => (v1 > v0 ? height - 2 - ((v - v0) / (v1 - v0)) * (height - 4) : height / 2);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  return svg;
}

function trainView(trainId) {
  const train = state.detail && state.detail.train_id === trainId ? state.detail : null;
  const summary = state.trains.get(trainId);
  if (!train || !summary) {
    return [h("p", { class: "empty" }, summary ? "Loading…" : `No train ${trainId} has reported.`)];
  }
  const channels = Object.entries(train.channels);
  const active = [...state.alerts.values()].filter((a) => a.train_id === trainId);
  const maint = summary.maintenance;
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Fleet")),
    h("section", { class: "panel", id: "train" },
      h("h2", {}, `Train ${trainId} `, h("span", { class: `badge status ${summary.status}` }, summary.status)),
      h("p", {}, "Last seen ", timeAgo(summary.last_seen_ms), " · devices: ",
        Object.entries(summary.devices).map(([d, s]) => `${d} ${s}`).join(", ") || "none")),
    h("section", { class: `panel${summary.flagged ? " flagged" : ""}`, id: "maintenance" },
      h("h2", {}, "Maintenance"),
      summary.flagged
        ? h("p", {}, h("span", { class: "badge maint" }, "flagged"),
          ` since ${clock(maint.since_ms)} by ${maint.by}: ${maint.reason}`,
          maint.disabled ? " (devices disabled)" : "", " ", clearButton(summary))
        : h("p", { class: "empty" }, maint ? `Cleared by ${maint.by} at ${clock(maint.since_ms)}.` : "Not flagged.")),
    h("section", { class: "panel", id: "values" },
      h("h2", {}, "Live values"),
      channels.length
        ? h("ul", { class: "channels" }, channels.map(([name, points]) =>
          h("li", { class: "channel", "data-channel": name },
            h("span", { class: "name" }, name),
            h("span", { class: "value" }, fmt(summary.values[name] ?? points[points.length - 1][1])),
            sparkline(points))))
        : h("p", { class: "empty" }, "No readings yet.")),
    h("section", { class: "panel", id: "active" },
      h("h2", {}, `Active alerts (${active.length})`),
      active.length ? h("ul", { class: "alerts" }, active.map((a) => alertItem(a, false)))
        : h("p", { class: "empty" }, "No active alerts.")),
    h("section", { class: "panel", id: "history" },
      h("h2", {}, "Alert history"),
      train.alert_history.length
        ? h("ol", { class: "history" }, train.alert_history.map((e) =>
          h("li", { class: `st-${e.state}` },
            h("time", {}, clock(e.ts_ms)), " ", h("b", {}, e.state), ` ${e.rule} · ${e.sensor} · device ${e.device_id}: ${e.message || ""}`,
            e.acked_by ? ` (by ${e.acked_by})` : "")))
        : h("p", { class: "empty" }, "No alerts so far.")),
  ];
}

function route() {
  const match = location.hash.match(/^#\/train\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function render() {
  const trainId = route();
  document.getElementById("view").replaceChildren(...(trainId ? trainView(trainId) : fleetView()));
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
    render();
    loadDetail();
  });
  events.addEventListener("changes", (event) => {
    const data = JSON.parse(event.data);
    data.trains.forEach(mergeTrain);
    data.alerts.forEach(mergeAlert);
    const trainId = route();
    if (trainId && data.trains.some((t) => t.train_id === trainId)) loadDetail();
    else render();
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
window.addEventListener("hashchange", () => { state.detail = null; render(); loadDetail(); });
setInterval(() => {
  for (const el of document.querySelectorAll("time[data-ms]")) el.textContent = ago(Number(el.dataset.ms));
}, 5000);
async function signIn() {
  // With accounts nothing is shown before signing in; the token mode reads without.
  await whoAmI();
  if (!auth.me && auth.login === "proxy") toast("Open the dashboard through the sign-on proxy");
  while (!auth.me && auth.readsNeedLogin && auth.login !== "proxy") await askLogin();
}

signIn().then(() => { render(); connect(); });
