// Trackside dashboard: the device inventory page (#/devices). Loaded before app.js, whose h(),
// timeAgo() and span() build its DOM (text nodes and attributes only: injection-proof) and
// whose render() shows it; its rows come with the snapshot and the changes events.
"use strict";

const inventory = {
  devices: new Map(), // "train/device" -> row of GET /api/devices
  sort: "key", // column key the table is sorted by
  descending: false,
  filter: "", // shown: rows whose train, device, board, app or firmware contains it
};

// [column key, header, cell]: the key names the row field sorted by.
const DEVICE_COLUMNS = [
  ["train_id", "Train", (d) => d.train_id],
  ["device_id", "Device", (d) => String(d.device_id)],
  ["state", "State", (d) => h("span", { class: `badge status ${d.state || "unknown"}` }, d.state || "unknown")],
  ["board", "Board", (d) => d.board || "-"],
  ["app", "App", (d) => d.app || d.fw || "-"],
  ["slot", "Slot", (d) => d.slot || "-"],
  ["boot_id", "Boot id", (d) => numberOrDash(d.boot_id)],
  ["uptime_s", "Uptime", (d) => (typeof d.uptime_s === "number" ? span(d.uptime_s) : "-")],
  ["outbox", "Outbox", (d) => numberOrDash(d.outbox)],
  ["dropped", "Dropped", (d) => numberOrDash(d.dropped)],
  ["heap", "Free heap", (d) => (typeof d.heap === "number" ? `${(d.heap / 1024).toFixed(1)} KB` : "-")],
  ["rssi", "RSSI", (d) => (typeof d.rssi === "number" ? `${d.rssi} dBm` : "-")],
  ["last_seen_ms", "Last seen", (d) => timeAgo(d.last_seen_ms)],
  ["config_drift", "Config", configCell],
  ["ota", "Update", (d) => (d.ota ? `${d.ota.state} (${d.ota.rollout}, wave ${d.ota.wave})` : "-")],
];

function numberOrDash(value) {
  return typeof value === "number" ? String(value) : "-";
}

// "v3" when the device runs the desired version; "v1 → v3" with a drift badge when not.
function configCell(d) {
  const reported = typeof d.cfg === "number" ? `v${d.cfg}` : "?";
  if (d.config_desired === null || d.config_desired === undefined) return reported === "v0" ? "-" : reported;
  if (!d.config_drift) return `v${d.config_desired}`;
  return [h("span", { class: "badge drift", title: "reported version differs from the desired one" }, "drift"),
    ` ${reported} → v${d.config_desired}`];
}

function sortValue(d, key) {
  if (key === "key") return [d.train_id, d.device_id];
  if (key === "ota") return d.ota ? d.ota.state : "";
  if (key === "app") return d.app || d.fw || "";
  return d[key];
}

function compareDevices(a, b) {
  const x = sortValue(a, inventory.sort), y = sortValue(b, inventory.sort);
  let order;
  if (Array.isArray(x)) order = x[0].localeCompare(y[0]) || x[1] - y[1];
  else if (x === null || x === undefined) order = y === null || y === undefined ? 0 : 1; // empty last
  else if (y === null || y === undefined) order = -1;
  else if (typeof x === "number" || typeof x === "boolean") order = Number(x) - Number(y);
  else order = String(x).localeCompare(String(y));
  if (inventory.descending && !(x === null || x === undefined || y === null || y === undefined)) order = -order;
  return order || a.train_id.localeCompare(b.train_id) || a.device_id - b.device_id;
}

function deviceMatches(d, text) {
  if (!text) return true;
  return [d.train_id, String(d.device_id), d.board, d.app, d.fw, d.state]
    .some((field) => typeof field === "string" && field.toLowerCase().includes(text));
}

function sortBy(key) {
  if (inventory.sort === key) inventory.descending = !inventory.descending;
  else { inventory.sort = key; inventory.descending = false; }
  render();
}

function devicesView() {
  const all = [...inventory.devices.values()];
  const text = inventory.filter.trim().toLowerCase();
  const shown = all.filter((d) => deviceMatches(d, text)).sort(compareDevices);
  const drifting = all.filter((d) => d.config_drift).length;
  const arrow = (key) => (inventory.sort === key ? (inventory.descending ? " ▼" : " ▲") : "");
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Fleet")),
    h("section", { class: "panel", id: "devices" },
      h("h2", {}, `Devices (${all.length}, ${drifting} with config drift)`),
      h("label", { class: "filter" }, "Filter ",
        h("input", { id: "device-filter", type: "search", value: inventory.filter, placeholder: "train, app version, board…",
          oninput: (event) => { inventory.filter = event.target.value; render(); } })),
      shown.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "devices", id: "device-table" },
          h("thead", {}, h("tr", {}, DEVICE_COLUMNS.map(([key, label]) =>
            h("th", { scope: "col", "aria-sort": inventory.sort === key ? (inventory.descending ? "descending" : "ascending") : null },
              h("button", { type: "button", class: "sort", "data-act": `sort-${key}`, onclick: () => sortBy(key) },
                label, arrow(key)))))),
          h("tbody", { id: "device-rows" }, shown.map((d) =>
            h("tr", { "data-key": `device-${d.key}`, class: d.config_drift ? "drifting" : null },
              DEVICE_COLUMNS.map(([key, , cell]) => h("td", { "data-col": key }, cell(d))))))))
        : h("p", { class: "empty" }, all.length ? "No device matches the filter." : "No device has reported yet.")),
  ];
}

function mergeDevices(rows, replace) {
  if (replace) inventory.devices.clear();
  for (const row of rows || []) inventory.devices.set(row.key, row);
}
