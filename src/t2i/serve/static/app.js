// t2i serve: the page's three views over the JSON API of t2i/serve/app.py. Plain JavaScript, no build step and
// nothing fetched from outside the server.
"use strict";

const $ = (id) => document.getElementById(id);
let catalog = { models: [], embeds: [], aligners: [], clips: [], limits: {} };
let runTimer = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, body) {
  const init = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// ---- views and routing: #generate, #runs, #runs/<run path>, #compare ----------------------------------------
function route() {
  const hash = decodeURIComponent(location.hash.slice(1)) || "generate";
  const [view, ...rest] = hash.split("/");
  const name = ["generate", "runs", "compare"].includes(view) ? view : "generate";
  for (const v of ["generate", "runs", "compare"]) {
    $(`view-${v}`).hidden = v !== name;
    $(`tab-${v}`).classList.toggle("active", v === name);
  }
  clearInterval(runTimer);
  if (name === "runs") loadRuns(rest.join("/"));
}

// ---- generate --------------------------------------------------------------------------------------------------
function currentModel() { return catalog.models.find((m) => m.id === $("model").value); }

function fillSelect(select, items, label, keep) {
  const old = keep ? select.value : null;
  select.replaceChildren(...items.map((it) => el("option", { value: it.id, text: label(it) })));
  if (old && items.some((it) => it.id === old)) select.value = old;
}

function renderOptions() {
  const model = currentModel();
  const box = $("options");
  box.replaceChildren(el("legend", { text: "Sampling options" }));
  if (!model) return;
  if (!model.options.length) {
    box.append(el("div", { class: "muted", text: `${model.family}: no sampling options (the seed decides)` }));
  }
  for (const o of model.options) {
    const id = `opt-${o.name}`;
    box.append(el("label", { for: id, title: o.help, text: `${o.name}` }));
    let input;
    if (o.kind === "choice") {
      input = el("select", { id });
      for (const c of o.choices) input.append(el("option", { value: c, text: c }));
    } else {
      input = el("input", { id, type: "number", min: o.min, max: o.max, step: o.kind === "int" ? 1 : "any" });
    }
    input.value = o.default;
    input.dataset.option = o.name;
    input.title = o.help;
    box.append(input);
  }
  const family = model.family;
  const embeds = catalog.embeds.filter((e) => e.family === family);
  fillSelect($("embeds"), embeds, (e) => `${e.placeholder}  (${e.id})`);
  const aligners = catalog.aligners.filter((a) => a.family === family);
  fillSelect($("aligner"), [{ id: "", lang: "none" }, ...aligners], (a) => a.id ? `${a.id} (${a.lang})` : "none");
  fillSelect($("rerank"), [{ id: "" }, ...catalog.clips], (c) => c.id || "none");
  $("rerank").disabled = family !== "dalle";
  $("korean-note").textContent = model.korean ? "Korean prompts: read by the model's own text encoder" :
    (aligners.length ? "Korean prompts: pick an aligner below" : "");
}

function chosenOptions() {
  const options = {};
  for (const input of $("options").querySelectorAll("[data-option]")) options[input.dataset.option] = input.value;
  return options;
}

async function runJob(body, onUpdate) {
  const { id } = await api("/api/generate", body);
  for (;;) {
    const job = await api(`/api/jobs/${id}`);
    onUpdate(job);
    if (job.state === "done") return job;
    if (job.state === "failed") throw new Error(job.error);
    await new Promise((r) => setTimeout(r, 150));
  }
}

function figure(image) {
  const verdict = image.verdict === null ? "" : image.verdict;
  const cls = image.verdict === null ? "" : (image.verdict === "right" ? "verdict-right" : "verdict-wrong");
  return el("figure", { "data-seed": image.seed },
    el("img", { src: image.url, alt: `${image.prompt} (seed ${image.seed})`, title: image.prompt }),
    el("figcaption", {},
      el("a", { href: image.url, download: `t2i-seed${image.seed}.png`, text: `seed ${image.seed}` }),
      verdict ? el("div", { class: `verdict ${cls}`, text: `oracle: ${verdict}` }) : ""));
}

async function generate() {
  showError("");
  const button = $("generate");
  button.disabled = true;
  $("results").replaceChildren();
  $("downloads").replaceChildren();
  $("warnings").textContent = "";
  const rows = {};
  const body = {
    prompts: $("prompts").value, models: [$("model").value], seed: Number($("seed").value), n: Number($("n").value),
    options: chosenOptions(), embeds: [...$("embeds").selectedOptions].map((o) => o.value),
    aligner: $("aligner").value || null, rerank_clip: $("rerank").disabled ? null : ($("rerank").value || null),
  };
  let shown = 0;
  try {
    const job = await runJob(body, (job) => {
      $("progress").max = job.total;
      $("progress").value = job.done;
      $("status").textContent = waiting(job);
      $("warnings").textContent = job.warnings.join("\n");
      for (const image of job.images.slice(shown)) {
        if (!rows[image.prompt]) {
          rows[image.prompt] = el("div", { class: "images" });
          $("results").append(el("div", { class: "prompt-row" }, el("h4", { text: image.prompt }), rows[image.prompt]));
        }
        rows[image.prompt].append(figure(image));
      }
      shown = job.images.length;
    });
    const grid = `/api/jobs/${job.id}/grid.png?model=${encodeURIComponent(body.models[0])}`;
    $("downloads").append(el("a", { id: "grid-link", href: grid, download: `t2i-grid-${job.id}.png`,
                                    text: "download the grid" }));
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    button.disabled = false;
  }
}

// ---- runs --------------------------------------------------------------------------------------------------------
function fmt(v) {
  if (typeof v !== "number") return String(v);
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(+v.toFixed(1)) : v.toPrecision(3);
}

function waiting(job) { return job.state === "queued" ? `waiting: ${job.position} request(s) ahead` : job.status; }

async function loadRuns(path) {
  showError("");
  try {
    const { runs } = await api("/api/runs");
    const body = $("runs-table").querySelector("tbody");
    body.replaceChildren(...runs.map((r) => {
      const metrics = Object.entries(r.metrics).slice(0, 4).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
      const row = el("tr", { "data-path": r.path },
        el("td", { text: r.path }), el("td", { text: r.family }), el("td", { text: r.data }),
        el("td", { text: `${fmt(r.kimg)}${r.target_kimg ? " / " + fmt(r.target_kimg) : ""}` }),
        el("td", { class: `state-${r.state}`, text: r.state, title: r.detail }), el("td", { text: metrics }));
      row.addEventListener("click", () => { location.hash = `runs/${r.path}`; });
      return row;
    }));
    if (!runs.length) body.append(el("tr", {}, el("td", { colspan: 6, text: "no runs below --runs" })));
  } catch (e) { showError(e.message); }
  $("run-detail").hidden = !path;
  if (path) await loadRun(path, true);
}

let runGrids = {};
function showGrid() {
  const list = runGrids[$("grid-kind").value] || [];
  const i = Math.min(Number($("grid-slider").value), list.length - 1);
  if (i < 0) { $("grid-img").removeAttribute("src"); $("grid-label").textContent = "no grid yet"; return; }
  $("grid-img").src = `/api/file?path=${encodeURIComponent(list[i].path)}`;
  $("grid-label").textContent = `${fmt(list[i].kimg)} kimg (${i + 1} of ${list.length})`;
}

function chart(name, points, width = 300, height = 150) {
  const pad = 30;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (width - pad - 8);
  const sy = (y) => height - pad + 10 - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (height - pad - 10);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height); svg.setAttribute("class", "curve");
  svg.setAttribute("data-name", name);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
  };
  add("text", { x: pad, y: 12 }, name);
  add("text", { x: 2, y: sy(y1) + 3 }, fmt(y1));
  add("text", { x: 2, y: sy(y0) + 3 }, fmt(y0));
  add("text", { x: pad, y: height - 4 }, `${fmt(x0)} kimg`);
  add("text", { x: width - 60, y: height - 4 }, `${fmt(x1)} kimg`);
  add("polyline", { fill: "none", stroke: "#00796b", "stroke-width": 1.5,
    points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") });
  return svg;
}

async function loadRun(path, first) {
  let run;
  try { run = await api(`/api/run?path=${encodeURIComponent(path)}`); } catch (e) { showError(e.message); return; }
  $("run-name").textContent = `${run.path} (${run.family})`;
  $("run-state").textContent = `${run.state}: ${run.detail}`;
  $("run-state").className = `state-${run.state}`;
  const kinds = Object.keys(run.grids);
  const atEnd = Number($("grid-slider").value) >= Number($("grid-slider").max);
  runGrids = run.grids;
  if (first) fillSelect($("grid-kind"), kinds.map((k) => ({ id: k })), (k) => k.id);
  const list = runGrids[$("grid-kind").value] || [];
  $("grid-slider").max = Math.max(0, list.length - 1);
  if (first || atEnd) $("grid-slider").value = $("grid-slider").max;
  showGrid();
  const curves = { ...run.curves, ...run.metric_curves };
  $("curves").replaceChildren(...Object.entries(curves).filter(([, p]) => p.length).map(([k, p]) => chart(k, p)));
  $("run-log").textContent = run.log.join("\n");
  clearInterval(runTimer);
  if (run.state === "running") runTimer = setInterval(() => loadRun(path, false), 5000);
}

// ---- compare ---------------------------------------------------------------------------------------------------
async function compare() {
  showError("");
  const models = [...$("compare-models").querySelectorAll("input:checked")].map((c) => c.value);
  if (models.length < 2) { showError("pick two or more models to compare"); return; }
  const button = $("compare-go");
  button.disabled = true;
  const table = $("compare-table");
  table.replaceChildren(el("tr", {}, el("th", { text: "prompt, seed" }), ...models.map((m) => el("th", { text: m }))));
  const cells = {};
  let shown = 0;
  try {
    await runJob({ prompts: $("compare-prompts").value, models, seed: Number($("compare-seed").value),
                   n: Number($("compare-n").value), options: {} }, (job) => {
      $("compare-progress").max = job.total;
      $("compare-progress").value = job.done;
      $("compare-status").textContent = waiting(job);
      if (!Object.keys(cells).length) {
        for (const p of job.prompts) for (let k = 0; k < job.n; k++) {
          const key = `${p}\u0000${Number($("compare-seed").value) + k}`;
          const row = el("tr", {}, el("td", { text: `${p} (seed ${Number($("compare-seed").value) + k})` }));
          cells[key] = models.map(() => { const td = el("td"); row.append(td); return td; });
          table.append(row);
        }
      }
      for (const image of job.images.slice(shown)) {
        cells[`${image.prompt}\u0000${image.seed}`][models.indexOf(image.model)].append(figure(image));
      }
      shown = job.images.length;
    });
  } catch (e) { showError(e.message); } finally { button.disabled = false; }
}

// ---- start -----------------------------------------------------------------------------------------------------
async function start() {
  for (const v of ["generate", "runs", "compare"]) {
    $(`tab-${v}`).addEventListener("click", () => { location.hash = v; });
  }
  window.addEventListener("hashchange", route);
  $("model").addEventListener("change", renderOptions);
  $("generate").addEventListener("click", generate);
  $("compare-go").addEventListener("click", compare);
  $("grid-slider").addEventListener("input", showGrid);
  $("grid-kind").addEventListener("change", () => {   // another kind of grid: start at its latest
    const list = runGrids[$("grid-kind").value] || [];
    $("grid-slider").max = Math.max(0, list.length - 1);
    $("grid-slider").value = $("grid-slider").max;
    showGrid();
  });
  try {
    catalog = await api("/api/models");
  } catch (e) { showError(`cannot list the models: ${e.message}`); }
  fillSelect($("model"), catalog.models, (m) => `${m.label} [${m.family}]`);
  $("server-note").textContent =
    `${catalog.models.length} model(s); at most ${catalog.limits.max_images} images per request`;
  $("compare-models").replaceChildren(...catalog.models.map((m) => el("label", {},
    el("input", { type: "checkbox", value: m.id }), ` ${m.label} [${m.family}]`)));
  renderOptions();
  route();
  document.body.dataset.ready = "1";
}
start();
