// Trackside dashboard: the train page's charts, drawn with uPlot (static/vendor/uplot, MIT).
// One chart per channel, made once and then only given new data, so a live update redraws a
// canvas and touches no other part of the page. Each chart draws the rule levels of its
// channel (GET /api/rules) and marks when an alert of the channel started, was acknowledged
// and cleared.
"use strict";

const charts = new Map(); // channel -> {plot, marks, levels, element, resize}
const CHART_HEIGHT = 180;
const RANGES = { "10 min": 600, "1 h": 3600 }; // seconds of the time axis; 1 h is the default
let chartRange = 3600;

const SEVERITY_COLOURS = { critical: "#b91c1c", warning: "#b45309", info: "#1d4ed8" };
const MARK_COLOURS = { firing: "#b91c1c", acknowledged: "#1d4ed8", resolved: "#15803d" };

// The levels drawn on `channel`: one series per rule level and one per clear level.
function chartLevels(channel, rules) {
  const levels = [];
  for (const rule of (rules && rules.channels[channel]) || []) {
    const over = rule.relative_to ? ` over ${rule.relative_to}` : "";
    levels.push({ rule, value: rule.level, label: `${rule.rule} ${rule.side} ${rule.level}${over}`, dash: [] });
    if (rule.clear !== null && rule.clear !== undefined) {
      levels.push({ rule, value: rule.clear, label: `${rule.rule} clears at ${rule.clear}${over}`, dash: [6, 4] });
    }
  }
  return levels;
}

// uPlot's data: [times (s), values, one array per level]. A level relative to another channel
// (ambient) follows that channel's value at the same reading; without it, it is not drawn.
// A fixed level gets a point at each end of the time axis too (the reading there is null), so
// its line crosses the whole chart, not only the span of the kept readings.
function chartData(channel, train, levels) {
  const points = train.channels[channel] || [];
  const now = Date.now() / 1000;
  const first = points.length ? points[0][0] / 1000 : now;
  const last = points.length ? points.at(-1)[0] / 1000 : now;
  const times = [Math.min(now - chartRange, first) - 1, ...points.map((p) => p[0] / 1000), Math.max(now, last) + 1];
  const rows = [times, [null, ...points.map((p) => p[1]), null]];
  for (const level of levels) {
    const base = level.rule.relative_to;
    if (!base) {
      rows.push(times.map(() => level.value));
      continue;
    }
    const byTime = new Map(train.channels[base] || []);
    rows.push([null, ...points.map((p) => (byTime.has(p[0]) ? byTime.get(p[0]) + level.value : null)), null]);
  }
  return rows;
}

// Alert start / acknowledge / clear times of this channel's alerts, from the train's history.
function chartMarks(channel, train) {
  const marks = [];
  for (const event of train.alert_history) {
    if (!String(event.sensor || "").split("-").includes(channel)) continue;
    const at = event.state === "acknowledged" ? event.acked_at_ms || event.ts_ms
      : event.state === "resolved" ? event.cleared_at_ms || event.ts_ms : event.ts_ms;
    const what = event.state === "firing" ? "start" : event.state === "acknowledged" ? "ack" : "clear";
    marks.push({ t: at / 1000, state: event.state, label: `${event.rule} ${what}` });
  }
  return marks;
}

function drawMarks(record) {
  return (u) => {
    const { ctx, bbox } = u;
    ctx.save();
    ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
    ctx.lineWidth = devicePixelRatio;
    for (const mark of record.marks) {
      const x = Math.round(u.valToPos(mark.t, "x", true));
      if (x < bbox.left || x > bbox.left + bbox.width) continue;
      ctx.strokeStyle = ctx.fillStyle = MARK_COLOURS[mark.state] || "#6b7280";
      ctx.setLineDash([3 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      ctx.fillText(mark.label, x + 3 * devicePixelRatio, bbox.top + 12 * devicePixelRatio);
    }
    ctx.restore();
  };
}

function makeChart(element, channel, unit, levels, data, marks) {
  const record = { marks, levels, element };
  const width = Math.max(200, element.clientWidth);
  const options = {
    width, height: CHART_HEIGHT,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - chartRange, now]; } } },
    axes: [{ space: 60 }, { label: unit, size: 50 }],
    series: [
      {},
      { label: channel, stroke: "#1d4ed8", width: 1.5, spanGaps: false },
      ...levels.map((level) => ({
        label: level.label, stroke: SEVERITY_COLOURS[level.rule.severity] || "#6b7280",
        width: 1, dash: level.dash, points: { show: false },
      })),
    ],
    hooks: { draw: [drawMarks(record)] },
  };
  record.plot = new uPlot(options, data, element);
  record.resize = new ResizeObserver(() => {
    const next = Math.max(200, element.clientWidth);
    if (next !== record.plot.width) record.plot.setSize({ width: next, height: CHART_HEIGHT });
  });
  record.resize.observe(element);
  return record;
}

// Make or update the chart of every `.chart[data-channel]` on the page; forget the others.
function updateCharts(train, rules) {
  const seen = new Set();
  for (const element of document.querySelectorAll(".chart[data-channel]")) {
    const channel = element.dataset.channel;
    seen.add(channel);
    const unit = (rules && rules.units[channel]) || "";
    let record = charts.get(channel);
    if (record && record.element !== element) { dropChart(channel); record = null; }
    const levels = record ? record.levels : chartLevels(channel, rules);
    const data = chartData(channel, train, levels);
    const marks = chartMarks(channel, train);
    if (record) {
      record.marks = marks;
      record.plot.setData(data);
    } else {
      charts.set(channel, makeChart(element, channel, unit, levels, data, marks));
    }
  }
  for (const channel of [...charts.keys()]) if (!seen.has(channel)) dropChart(channel);
}

function dropChart(channel) {
  const record = charts.get(channel);
  if (!record) return;
  record.resize.disconnect();
  record.plot.destroy();
  charts.delete(channel);
}

function setChartRange(seconds) {
  chartRange = seconds;
  for (const record of charts.values()) record.plot.setData(record.plot.data);
}
