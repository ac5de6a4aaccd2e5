// The admin dashboard: polls the admin API every second with the token
// given in the address (#token=...) or typed in, and shows the fleet, the
// routes with their rates and p99 charted over the last five minutes,
// upstream targets by health, and plugins with their failures. Charts are
// SVG drawn here: no library, nothing fetched from elsewhere.
"use strict";

const every = 1000;
const kept = 300; // points per chart: five minutes
const window_ = 10; // seconds of histogram a p99 is taken over
const svgNs = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem("sluice-token");
let polls = []; // each poll's time, route counters and latency buckets, oldest first
const series = new Map(); // route → [{requests, errors, p99}] per poll

const fromAddress = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromAddress) {
  token = fromAddress;
  sessionStorage.setItem("sluice-token", token);
  history.replaceState(null, "", location.pathname); // keep it out of the history
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("sluice-token", token);
  poll();
});

async function fetchAs(path, read) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${token}` } });
  if (response.status === 401) throw new Error("unauthorized");
  if (response.status === 404 && path === "/fleet") return null; // not in a fleet
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return read(response);
}

// Prometheus text: [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || line.startsWith("#")) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

// Each route's latency buckets (cumulative counts by upper bound), and each plugin's failures.
function digest(samples) {
  const buckets = {};
  const failures = {};
  for (const s of samples) {
    if (s.name === "sluice_request_duration_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      (buckets[s.labels.route] ??= []).push([le, s.value]);
    } else if (s.name === "sluice_filter_failures_total") {
      failures[s.labels.plugin] = (failures[s.labels.plugin] || 0) + s.value;
    }
  }
  for (const b of Object.values(buckets)) b.sort((x, y) => x[0] - y[0]);
  return { buckets, failures };
}

// The 0.99 quantile of the requests between two bucket sets, interpolated
// within its bucket as Prometheus' histogram_quantile does; null without requests.
function p99(now, before) {
  if (!now) return null;
  const counts = now.map(([le, n], i) => [le, n - (before?.[i]?.[1] ?? 0)]);
  const total = counts.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const rank = 0.99 * total;
  let lower = 0;
  let below = 0;
  for (const [le, n] of counts) {
    if (n >= rank) {
      if (le === Infinity) return lower * 1000;
      return (lower + (le - lower) * ((rank - below) / Math.max(n - below, 1))) * 1000;
    }
    [lower, below] = [le, n];
  }
  return null;
}

// A table row of cells; a cell is text, or [text, class].
function row(cells, key) {
  const tr = document.createElement("tr");
  if (key) tr.dataset.key = key;
  for (const cell of cells) {
    const td = document.createElement("td");
    const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
    if (cls.includes("chip")) {
      const span = document.createElement("span");
      span.textContent = text;
      td.appendChild(span);
    } else {
      td.textContent = text;
    }
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(...rows);
}

function fixed(value) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(1);
}

// A line chart of `lines` ([values, class]) in an SVG of its own; its
// data-max is the largest value drawn.
function chart(cls, lines) {
  const [width, height] = [kept, 60];
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + 12);
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 12}`);
  const max = Math.max(1e-9, ...lines.flatMap(([values]) => values.filter((v) => v !== null)));
  svg.dataset.max = lines.some(([v]) => v.some((x) => x > 0)) ? max : 0;
  const axis = document.createElementNS(svgNs, "line");
  for (const [k, v] of [["x1", 0], ["y1", height], ["x2", width], ["y2", height], ["stroke", "#d0d5da"]]) {
    axis.setAttribute(k, v);
  }
  svg.appendChild(axis);
  for (const [values, lineCls, colour] of lines) {
    const start = width - values.length;
    const points = values
      .map((v, i) => (v === null ? null : `${start + i},${(height - (v / max) * (height - 2)).toFixed(1)}`))
      .filter(Boolean)
      .join(" ");
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("class", lineCls);
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
  }
  const label = document.createElementNS(svgNs, "text");
  label.setAttribute("x", 2);
  label.setAttribute("y", height + 11);
  label.setAttribute("font-size", "10");
  label.setAttribute("fill", "#56606b");
  label.textContent = `max ${max < 1e-6 ? 0 : max.toFixed(1)}`;
  svg.appendChild(label);
  return svg;
}

function showCharts(routes) {
  const figures = routes.map((r) => {
    const points = series.get(r.name) || [];
    const figure = document.createElement("figure");
    figure.dataset.key = r.name;
    const caption = document.createElement("figcaption");
    caption.textContent = r.name;
    figure.appendChild(caption);
    figure.appendChild(chart("rates", [
      [points.map((p) => p.requests), "requests", "#1f5fbf"],
      [points.map((p) => p.errors), "errors", "#c3362b"],
    ]));
    figure.appendChild(chart("latency", [[points.map((p) => p.p99), "p99", "#7a3db8"]]));
    return figure;
  });
  document.getElementById("charts").replaceChildren(...figures);
}

function showFleet(fleet) {
  const section = document.getElementById("fleet-view");
  section.hidden = !fleet;
  if (!fleet) return;
  const note = document.getElementById("fleet-revision");
  if (fleet.error) {
    // etcd away: the last view stays, marked stale.
    note.textContent = `not updated (${fleet.error}); instances keep serving what they have`;
    return;
  }
  note.textContent = `the fleet's configuration: revision ${fleet.revision}`;
  const instances = [...fleet.instances].sort((a, b) => a.id.localeCompare(b.id));
  fill("fleet", instances.map((i) => {
    const [state, cls] = i.refused
      ? [`refused revision ${i.refused.revision}: ${i.refused.error}`, "refused"]
      : !i.ready ? ["not ready", "waiting"]
      : i.revision === fleet.revision ? ["up to date", "ok"] : ["behind", "behind"];
    return row([
      i.id, [String(i.revision), "n revision"], [state, `state ${cls}`], i.admin || "–",
      new Date(i.started * 1000).toLocaleString(),
    ], i.id);
  }));
}

function show(routes, upstreams, plugins, metrics, fleet) {
  const at = Date.now();
  const { buckets, failures } = digest(parseMetrics(metrics));
  const previous = polls.at(-1);
  const seconds = previous ? (at - previous.at) / 1000 : 0;
  // The poll about `window_` seconds ago, for p99 over that window.
  const back = polls.findLast((p) => at - p.at >= window_ * 1000) ?? polls[0];
  const counts = Object.fromEntries(routes.map((r) => [r.name, [r.requests, r.errors]]));
  polls.push({ at, counts, buckets });
  if (polls.length > window_ * 2 + 5) polls.shift();
  for (const r of routes) {
    const before = previous?.counts[r.name];
    const rates = before && seconds > 0
      ? { requests: (r.requests - before[0]) / seconds, errors: (r.errors - before[1]) / seconds }
      : { requests: null, errors: null };
    const point = { ...rates, p99: p99(buckets[r.name], back?.buckets[r.name]) };
    const points = series.get(r.name) || [];
    points.push(point);
    if (points.length > kept) points.shift();
    series.set(r.name, points);
  }
  fill("routes", routes.map((r) => {
    const last = series.get(r.name).at(-1);
    return row([
      r.name, r.upstream, r.filters.join(" → ") || "–",
      [String(r.requests), "n requests"], [String(r.errors), r.errors ? "n errors bad" : "n errors"],
      [fixed(last.requests), "n"], [fixed(last.errors), "n"], [fixed(last.p99), "n p99"],
    ], r.name);
  }));
  showCharts(routes);
  fill("upstreams", upstreams.flatMap((u) => u.targets.map((t) => row([
    u.name, t.address, [t.state, `chip ${t.state}`], [String(t.in_flight), "n"],
  ], `${u.name} ${t.address}`))));
  fill("plugins", plugins.plugins.map((p) => {
    const failed = failures[p.name] || 0;
    return row([
      p.name, [String(p.version), "n"], p.kind, [p.sha256.slice(0, 12), "digest"],
      p.signed_by || "–", p.routes.join(", ") || "–",
      [String(failed), failed ? "n failures bad" : "n failures"],
    ], p.name);
  }));
  showFleet(fleet);
}

async function poll() {
  if (!token) {
    document.getElementById("login").hidden = false;
    document.getElementById("status").textContent = "needs the admin token";
    return;
  }
  try {
    const json = (r) => r.json();
    const [routes, upstreams, plugins, metrics, fleet] = await Promise.all([
      fetchAs("/routes", json), fetchAs("/upstreams", json), fetchAs("/plugins", json),
      fetchAs("/metrics", (r) => r.text()), fetchAs("/fleet", json).catch((e) => ({ error: e.message })),
    ]);
    show(routes, upstreams, plugins, metrics, fleet);
    document.getElementById("login").hidden = true;
    document.getElementById("view").hidden = false;
    document.getElementById("status").textContent =
      `plugins generation ${plugins.generation}, updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("status").textContent = `not updated: ${error.message}`;
    if (error.message === "unauthorized") {
      token = null;
      sessionStorage.removeItem("sluice-token");
    }
  }
}

poll();
setInterval(() => token && poll(), every);
