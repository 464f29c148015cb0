// generalad serve: the page's only script (no framework, no CDN; the server's CSP forbids anything else).
// The decision shown is always `score > threshold` on the RAW score; the slider changes the threshold used
// on this page only.
"use strict";

const state = { card: null, threshold: null, current: null, rows: [], sortKey: "score", sortDesc: true };
const $ = (id) => document.getElementById(id);

function fmt(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(4) : x.toPrecision(6);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

// ---------------------------------------------------------------- threshold slider
function setupSlider(card) {
  const thr = card.threshold;
  const stats = (card.calibration && card.calibration.stats) || {};
  const lo = Math.min(Number.isFinite(stats.min) ? stats.min : thr, thr);
  const span = Math.max(thr - lo, Math.abs(thr) * 0.05, 1e-6);
  setSliderRange(lo - span, thr + 3 * span);
  state.threshold = thr;
  $("threshold").value = thr;
  $("calibrated").textContent = fmt(thr);
  redecide();
}

function setSliderRange(min, max) {
  const slider = $("threshold");
  slider.min = min;
  slider.max = max;
  slider.step = (max - min) / 1000;
}

function widenSliderFor(score) {  // a score off the range: keep it reachable from both sides
  const slider = $("threshold");
  const min = Number(slider.min), max = Number(slider.max), pad = 0.05 * (max - min);
  if (score <= min || score >= max) {
    const value = Number(slider.value);
    setSliderRange(Math.min(min, score - pad), Math.max(max, score + pad));
    slider.value = value;
  }
}

function redecide() {
  const thr = state.threshold;
  $("threshold-value").textContent = fmt(thr);
  if (state.current) {
    const anomalous = state.current.score > thr;
    const badge = $("decision");
    badge.textContent = anomalous ? "ANOMALOUS" : "normal";
    badge.className = "badge " + (anomalous ? "anomalous" : "normal");
    badge.title = `score ${fmt(state.current.score)} ${anomalous ? ">" : "≤"} threshold ${fmt(thr)}`;
  }
  renderRows();
}

// ---------------------------------------------------------------- one prediction
function showPrediction(record, originalUrl) {
  state.current = record;
  widenSliderFor(record.score);
  $("result").hidden = false;
  $("score").textContent = fmt(record.score);
  $("name").textContent = record.path;
  $("original").src = originalUrl;
  $("overlay").src = "data:image/png;base64," + record.overlay_png;
  const n = (record.regions || []).length;
  $("regions").textContent = `${n} predicted region${n === 1 ? "" : "s"}`;
  $("latency").textContent = `${Math.round(record.latency_ms)} ms on the server`;
  redecide();
}

async function predictFile(file) {
  showError("");
  const limit = state.card ? state.card.max_upload_bytes : Infinity;
  if (file.size > limit) {  // the server would answer 413 too, but a browser may only see the connection close
    showError(`413: upload too large: ${file.size} bytes, the limit is ${limit} bytes (generalad serve --max-upload-mb)`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  $("score").textContent = "…";
  try {
    const record = await getJSON("/api/predict", { method: "POST", body: form });
    showPrediction(record, URL.createObjectURL(file));
  } catch (err) {
    showError(err.message);
  }
}

async function predictFolderImage(path) {
  showError("");
  try {
    const q = encodeURIComponent(path);
    const record = await getJSON(`/api/images/predict?path=${q}`);
    showPrediction(record, `/api/images/file?path=${q}`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------- folder table
function sortedRows() {
  const key = state.sortKey, sign = state.sortDesc ? -1 : 1, thr = state.threshold;
  const value = (r) => key === "path" ? r.path : key === "decision" ? (r.score === null ? -1 : Number(r.score > thr)) : r.score;
  return [...state.rows].sort((a, b) => {
    const va = value(a), vb = value(b);
    if (va === null || va === undefined) return 1;   // unscored / failed rows last, whatever the order
    if (vb === null || vb === undefined) return -1;
    return (va < vb ? -1 : va > vb ? 1 : 0) * sign;
  });
}

function renderRows() {
  const body = document.querySelector("#folder-table tbody");
  if (!body || !state.rows.length) return;
  const thr = state.threshold;
  body.replaceChildren(...sortedRows().map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.path = r.path;
    const thumb = document.createElement("td");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = r.path;
    img.src = `/api/images/thumb?path=${encodeURIComponent(r.path)}`;
    thumb.append(img);
    const path = document.createElement("td");
    path.textContent = r.path;
    const score = document.createElement("td");
    score.className = "num";
    score.textContent = r.error ? "error" : fmt(r.score);
    if (r.error) score.title = r.error;
    const decision = document.createElement("td");
    if (r.score !== null && r.score !== undefined) {
      const anomalous = r.score > thr;
      decision.textContent = anomalous ? "ANOMALOUS" : "normal";
      decision.className = anomalous ? "anomalous" : "normal";
    }
    tr.append(thumb, path, score, decision);
    tr.addEventListener("click", () => predictFolderImage(r.path));
    return tr;
  }));
  document.querySelectorAll("#folder-table th.sortable").forEach((th) => {
    const arrow = th.dataset.key === state.sortKey ? (state.sortDesc ? " ▼" : " ▲") : "";
    th.textContent = th.dataset.key + arrow;
  });
}

async function pollFolder() {
  try {
    const status = await getJSON("/api/images");
    state.rows = status.images;
    $("folder-root").textContent = status.root;
    const done = status.n_scored === status.n_images;
    $("folder-progress").textContent = done ? `${status.n_images} images scored` : `scoring… ${status.n_scored} / ${status.n_images}`;
    renderRows();
    if (!done) setTimeout(pollFolder, 1000);
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------- model card
function renderCard(card) {
  const body = document.querySelector("#card-table tbody");
  const cal = card.calibration || {};
  const rows = [
    ["method", card.method], ["kind", card.kind], ["run", card.run], ["backbone", card.backbone],
    ["weights sha256", card.weights_sha256], ["working size", card.image_size], ["precision / device", `${card.precision} / ${card.device}`],
    ["runtime", card.runtime], ["image threshold", fmt(card.threshold)], ["rule", cal.applied],
    ["calibration source", card.calibration_source], ["pixel threshold", fmt(card.pixel_threshold)],
    ["model selection", card.selection], ["upload limit", `${(card.max_upload_bytes / 1048576).toFixed(1)} MiB, ${card.max_pixels} pixels`],
  ];
  body.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"), b = document.createElement("td");
    a.textContent = k;
    b.textContent = v === null || v === undefined ? "–" : String(v);
    if (k === "weights sha256" || k === "run") b.className = "mono";
    tr.append(a, b);
    return tr;
  }));
  $("card-line").textContent = `${card.method} · ${card.backbone} · ${card.kind} · threshold ${fmt(card.threshold)} (${card.calibration_source || "?"})`;
}

// ---------------------------------------------------------------- wiring
function wire() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => { if (e.target.files.length) predictFile(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predictFile(e.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", (e) => { state.threshold = Number(e.target.value); redecide(); });
  $("reset").addEventListener("click", () => {
    state.threshold = state.card.threshold;
    $("threshold").value = state.threshold;
    redecide();
  });
  document.querySelectorAll("#folder-table th.sortable").forEach((th) => th.addEventListener("click", () => {
    state.sortDesc = th.dataset.key === state.sortKey ? !state.sortDesc : th.dataset.key !== "path";
    state.sortKey = th.dataset.key;
    renderRows();
  }));
}

async function start() {
  wire();
  try {
    state.card = await getJSON("/api/model");
  } catch (err) {
    showError(err.message);
    return;
  }
  renderCard(state.card);
  setupSlider(state.card);
  if (state.card.images_folder) {
    $("folder").hidden = false;
    pollFolder();
  }
  document.body.dataset.ready = "1";  // tests wait for this
}

start();
