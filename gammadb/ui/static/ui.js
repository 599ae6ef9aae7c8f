// gammadb ui: draws the charts (Vega-Lite specs from /api/.../charts, rendered by the vega-embed
// that /static/vega.js serves) and keeps an open page live by polling a small JSON endpoint: run
// counts, steps done and heartbeats. Charts are fetched again only when a run behind them changed.
"use strict";

const body = document.body;
const POLL_MS = Number(body.dataset.pollMs || 3000);

function fmtPct(x) { return (100 * x).toFixed(0) + "%"; }
function esc(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function embed(el, spec) {
  if (typeof vegaEmbed !== "function") { el.textContent = "the Vega bundle did not load"; return Promise.resolve(); }
  el.textContent = "";
  return vegaEmbed(el, spec, {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}})
    .catch(err => { el.classList.add("failed"); el.textContent = "chart failed to render: " + err; });
}

// ---------------------------------------------------------------- charts
async function loadChart(el) {
  const cap = document.querySelector('[data-caption-for="' + el.id + '"]');
  try {
    const doc = await getJSON(el.dataset.chartSrc);
    if (cap) cap.textContent = doc.caption || "";
    if (doc.spec) { el.classList.remove("empty"); await embed(el, doc.spec); }
    else { el.classList.add("empty"); el.textContent = ""; }
  } catch (err) { el.classList.add("failed"); el.textContent = "could not load the chart: " + err.message; }
  el.dataset.loaded = "1";
}

async function loadRunCharts(box) {
  try {
    const doc = await getJSON(box.dataset.chartsSrc);
    box.dataset.steps = doc.steps_done;
    box.textContent = "";
    for (const c of doc.charts) {
      const fig = document.createElement("figure");
      fig.className = "chart";
      fig.innerHTML = "<h3>" + esc(c.title) + "</h3><div class='vis'></div><figcaption class='caption'>" + esc(c.caption || "") + "</figcaption>";
      box.appendChild(fig);
      if (c.spec) await embed(fig.querySelector(".vis"), c.spec);
    }
    if (!doc.charts.length) box.textContent = "no per-step values yet";
  } catch (err) { box.textContent = "could not load the charts: " + err.message; }
  box.dataset.loaded = "1";
}

async function loadFragment(el) {
  try {
    const r = await fetch(el.dataset.fragmentSrc, {cache: "no-store"});
    el.innerHTML = await r.text();
  } catch (err) { el.textContent = "could not load: " + err.message; }
}

function loadAll() {
  document.querySelectorAll("[data-chart-src]").forEach(loadChart);
  document.querySelectorAll("[data-charts-src]").forEach(loadRunCharts);
  document.querySelectorAll("[data-fragment-src]").forEach(loadFragment);
}

// ---------------------------------------------------------------- live updates
function setProgress(s) {
  const box = document.querySelector('[data-progress="' + CSS.escape(s.name) + '"]');
  if (!box) return;
  box.querySelector(".fill").style.width = (100 * s.progress).toFixed(1) + "%";
  box.querySelector(".bar").title = s.steps_done + " of " + s.steps_planned + " planned steps";
  box.querySelector(".pct").textContent = fmtPct(s.progress);
  for (const [st, n] of Object.entries(s.counts)) {
    const c = box.querySelector('[data-count="' + st + '"]');
    if (c) c.textContent = n + " " + st;
  }
  const ul = document.querySelector('[data-workers="' + CSS.escape(s.name) + '"]');
  if (ul) {
    ul.innerHTML = s.workers.length ? s.workers.map(w =>
      "<li class='" + (w.stale ? "stale" : "") + "'>" + esc(w.worker) + ": runs " + w.runs.join(", ") +
      "; last heartbeat " + esc(w.last_heartbeat || "never") + (w.age_s !== null ? " (" + w.age_s.toFixed(0) + " s ago)" : "") +
      (w.stale ? " <b>stale</b>" : "") + "</li>").join("") : "<li class='none'>no worker holds a run</li>";
  }
  const stale = document.querySelector('[data-stale="' + CSS.escape(s.name) + '"]');
  if (stale) stale.textContent = s.stale.length ? "stale runs: " + s.stale.join(", ") : "";
  const runs = document.querySelector('[data-sweep="' + CSS.escape(s.name) + '"] [data-field="runs"]');
  if (runs) runs.textContent = s.runs;
}

function updateSweeps(doc) { doc.sweeps.forEach(setProgress); }

function updateSweep(doc) {
  setProgress(doc);
  for (const [id, status, steps] of doc.run_steps) {
    const tr = document.querySelector('tr[data-run="' + id + '"]');
    if (!tr) continue;
    const s = tr.querySelector('[data-field="status"]'), d = tr.querySelector('[data-field="steps_done"]');
    if (s && s.textContent !== status) { s.textContent = status; s.className = "st-" + status; }
    if (d && d.textContent !== String(steps)) { d.textContent = steps; }
  }
  // A run finished: the analyses (eta*, phases, claims) and the curves have something new to show.
  if (String(doc.finished) !== body.dataset.finished) {
    body.dataset.finished = doc.finished;
    document.getElementById("refresh-note").textContent =
      doc.finished + " runs finished: charts refreshed at " + new Date().toLocaleTimeString();
    loadAll();
  }
}

function updateRun(doc) {
  const st = document.getElementById("run-status");
  document.getElementById("run-steps").textContent = doc.steps_done;
  document.getElementById("run-worker").textContent = doc.worker || "-";
  document.getElementById("run-beat").textContent = doc.last_heartbeat || "never";
  document.getElementById("run-stale").textContent = doc.stale ? "stale" : "";
  const box = document.getElementById("run-charts");
  const drawn = Number(box.dataset.steps || 0);
  // Log-step axes: redraw when the run ends or has doubled its steps since the last drawing.
  if (doc.status !== body.dataset.status || (box.dataset.loaded && doc.steps_done >= 2 * Math.max(drawn, 1))) {
    body.dataset.status = doc.status;
    st.textContent = doc.status; st.className = "st-" + doc.status;
    document.getElementById("refresh-note").textContent = "charts redrawn at step " + doc.steps_done;
    loadRunCharts(box);
  }
}

const UPDATERS = {sweeps: updateSweeps, sweep: updateSweep, run: updateRun};

async function poll() {
  const live = document.getElementById("live");
  try {
    const doc = await getJSON(body.dataset.poll);
    UPDATERS[body.dataset.page](doc);
    live.classList.remove("down");
    live.textContent = "live, updated " + new Date().toLocaleTimeString();
  } catch (err) {
    live.classList.add("down");
    live.textContent = "not updating: " + err.message;
  }
  setTimeout(poll, POLL_MS);
}

loadAll();
if (body.dataset.poll && UPDATERS[body.dataset.page]) setTimeout(poll, POLL_MS);
