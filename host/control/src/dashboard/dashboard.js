// The admin dashboard: polls the admin API's JSON endpoints every second
// with the token given in the address (#token=...) or typed in, and shows
// routes with live rates, upstream targets' health and loaded plugins.
"use strict";

const every = 1000;
let token = sessionStorage.getItem("sluice-token");
let last = null; // the previous poll's route counts, for rates

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

async function fetchJson(path) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${token}` } });
  if (response.status === 401) throw new Error("unauthorized");
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// A table row of cells; a cell is text, or [text, class].
function row(cells, key) {
  const tr = document.createElement("tr");
  if (key) tr.dataset.key = key;
  for (const cell of cells) {
    const td = document.createElement("td");
    const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(...rows);
}

function rate(now, before, seconds) {
  return before === undefined ? "–" : ((now - before) / seconds).toFixed(1);
}

function show(routes, upstreams, plugins) {
  const at = Date.now();
  const seconds = last ? (at - last.at) / 1000 : 0;
  fill("routes", routes.map((r) => row([
    r.name, r.upstream, r.filters.join(" → ") || "–",
    [String(r.requests), "n requests"], [String(r.errors), r.errors ? "n errors bad" : "n errors"],
    [rate(r.requests, last?.requests[r.name], seconds), "n"],
    [rate(r.errors, last?.errors[r.name], seconds), "n"],
  ], r.name)));
  last = {
    at,
    requests: Object.fromEntries(routes.map((r) => [r.name, r.requests])),
    errors: Object.fromEntries(routes.map((r) => [r.name, r.errors])),
  };
  fill("upstreams", upstreams.flatMap((u) => u.targets.map((t) => row([
    u.name, t.address, [t.state, t.state], [String(t.in_flight), "n"],
  ], `${u.name} ${t.address}`))));
  fill("plugins", plugins.plugins.map((p) => row([
    p.name, [String(p.version), "n"], p.kind, [p.sha256.slice(0, 12), "digest"],
    p.signed_by || "–", p.routes.join(", ") || "–",
  ], p.name)));
}

async function poll() {
  if (!token) {
    document.getElementById("login").hidden = false;
    document.getElementById("status").textContent = "needs the admin token";
    return;
  }
  try {
    const [routes, upstreams, plugins] = await Promise.all(
      ["/routes", "/upstreams", "/plugins"].map(fetchJson));
    show(routes, upstreams, plugins);
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
