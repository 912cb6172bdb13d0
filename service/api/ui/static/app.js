// The lelastic dashboard: a single page over the public /v1 API, with no library and no build step.
// Routes (location hash): #/jobs, #/new, #/jobs/<id>, #/datasets.
"use strict";

const KEY_STORAGE = "lelastic.apiKey";
const STAGES = ["load", "train", "similarity", "cluster", "write"];
const FINAL = new Set(["succeeded", "failed", "canceled"]);
// The builtin datasets' classes (the job spec's schema names the builtins; their labels are fixed).
const BUILTIN_CLASSES = { digits: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] };
const SYNTHETIC_CLASSES = [0, 1];
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const SHAPES = ["circle", "square", "triangle", "diamond", "cross"];

// The paper's experiments. The torus runs are the simulation of benchmarks/elasticity_figures.py: 200
// points, class 1 primary and class 0 auxiliary, 500 full-batch epochs (batch = n), relative similarity in
// the small-step limit, no clustering; ReLU at lr 1e-4, the linear net at 1e-5.
const PRESETS = {
  "Digits 3 vs 5 (aux 8, 9), ReLU net": {
    dataset: { builtin: "digits" }, primary: { labels: [3, 5] }, auxiliary: { labels: [8, 9] },
    model: { arch: "mlp", width: 4096, depth: 2, activation: "relu" }, loss: "mse",
    weights: { source: "trained", epochs: 200, lr: 0.003, batch_size: 50 },
    similarity: { kind: "kernelized", step: 0 }, clustering: { k: 2, method: "kernel_kmeans" },
    baselines: ["kmeans_raw", "pca_kmeans", "spectral_rbf"], seed: 0,
  },
  "Torus, two-layer ReLU net": {
    dataset: { builtin: "torus", n: 200, seed: 0 }, primary: { labels: [1] }, auxiliary: { labels: [0] },
    model: { arch: "mlp", width: 2048, depth: 2, activation: "relu" }, loss: "mse",
    weights: { source: "trained", epochs: 500, lr: 0.0001, batch_size: 200 },
    similarity: { kind: "relative", step: 0, symmetrize: false }, clustering: null, baselines: [], seed: 0,
  },
  "Torus, two-layer linear net": {
    dataset: { builtin: "torus", n: 200, seed: 0 }, primary: { labels: [1] }, auxiliary: { labels: [0] },
    model: { arch: "linear", width: 2048, depth: 2 }, loss: "mse",
    weights: { source: "trained", epochs: 500, lr: 0.00001, batch_size: 200 },
    similarity: { kind: "relative", step: 0, symmetrize: false }, clustering: null, baselines: [], seed: 0,
  },
};

const state = { config: null, openapi: null, streams: [], route: "" };

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(svgNS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function duration(job) {
  if (!job.started_at) return "–";
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  const seconds = (end - new Date(job.started_at)) / 1000;
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function notice(message, kind = "error") {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !message;
}

function errorText(body, status) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("\n");
  }
  return `HTTP ${status}`;
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    askForKey("That key was not accepted: enter a valid one.");
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, errorText(body, response.status));
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

async function apiBlob(path) {
  return (await api(path)).blob();
}

// A .npy file (little-endian float32/float64/int64/int32, C order) as {shape, data}.
async function loadNpy(path) {
  const buffer = await (await api(path)).arrayBuffer();
  const bytes = new Uint8Array(buffer);
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = (major === 1 ? 10 : 12) + headerLength;
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, offset));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const body = buffer.slice(offset);
  let data;
  if (descr === "<f4") data = new Float32Array(body);
  else if (descr === "<f8") data = new Float64Array(body);
  else if (descr === "<i8") data = Float64Array.from(new BigInt64Array(body), Number);
  else if (descr === "<i4") data = new Int32Array(body);
  else throw new Error(`unsupported .npy dtype ${descr}`);
  return { shape, data };
}

// Server-Sent Events over fetch(), so the Authorization header goes along (EventSource cannot send it).
async function followEvents(jobId, onEvent) {
  const controller = new AbortController();
  state.streams.push(controller);
  try {
    const response = await api(`/v1/jobs/${jobId}/events`, {
      headers: { Accept: "text/event-stream" }, signal: controller.signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  } catch (error) {
    if (error.name !== "AbortError" && !(error instanceof ApiError)) notice(`event stream: ${error.message}`);
  } finally {
    state.streams = state.streams.filter((c) => c !== controller);
  }
}

function stopStreams() {
  for (const controller of state.streams) controller.abort();
  state.streams = [];
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// A download link that fetches with the key (a plain link could not send the Authorization header).
function downloadLink(url, name) {
  return el("a", {
    href: url, download: name,
    onclick: async (event) => {
      event.preventDefault();
      try { saveBlob(await apiBlob(url), name); } catch (error) { notice(error.message); }
    },
  }, name);
}

async function authImage(url, alt) {
  const image = el("img", { alt, class: "plot" });
  image.src = URL.createObjectURL(await apiBlob(url));
  return image;
}

// ---------------------------------------------------------------- key, routing

function askForKey(message) {
  stopStreams();
  const main = document.getElementById("main");
  main.replaceChildren(document.getElementById("key-template").content.cloneNode(true));
  if (message) notice(message);
  const input = document.getElementById("key-input");
  input.focus();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    notice("");
    route();
  });
}

async function route() {
  stopStreams();
  hideTooltip();
  const hash = location.hash || "#/jobs";
  const [, page, id] = hash.split("/");
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    const current = link.dataset.page === (page === "jobs" && id ? "" : page);
    link.classList.toggle("current", current);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  if (state.config.auth && !sessionStorage.getItem(KEY_STORAGE)) {
    askForKey("");
    return;
  }
  const main = document.getElementById("main");
  main.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  state.route = hash;
  try {
    if (page === "new") await newJobPage(main);
    else if (page === "datasets") await datasetsPage(main);
    else if (page === "jobs" && id) await jobPage(main, id);
    else await jobsPage(main);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) notice(error.message);
  }
}

// ---------------------------------------------------------------- the spec in words

function datasetName(spec, datasets) {
  if (typeof spec.dataset === "string") {
    const found = (datasets || []).find((d) => d.id === spec.dataset);
    return found ? found.name : spec.dataset.slice(0, 8);
  }
  const builtin = spec.dataset.builtin;
  return builtin === "digits" ? "digits" : `${builtin} (n=${spec.dataset.n})`;
}

function modelWords(model) {
  const parts = [`${model.arch}`];
  if (model.depth) parts.push(`depth ${model.depth}`);
  if (model.width) parts.push(`width ${model.width}`);
  if (model.activation) parts.push(model.activation);
  return parts.join(", ");
}

function selectionWords(selection, fallback) {
  if (!selection) return fallback;
  if (selection.labels) return `classes ${selection.labels.join(", ")}`;
  return `${selection.indices.length} chosen rows`;
}

function specInWords(spec, datasets) {
  const s = spec.similarity;
  const w = spec.weights;
  const step = s.step === 0 ? "in the small-step limit" : `with SGD step η = ${s.step}`;
  const weights = w.source === "trained"
    ? `trained ${w.epochs} epochs of SGD (lr ${w.lr}, batch ${w.batch_size}, ${spec.loss.toUpperCase()} loss)`
    : w.source === "init" ? "at its initial weights" : `at uploaded weights ${w.weights}`;
  const clustering = spec.clustering
    ? `then clustered into k = ${spec.clustering.k} groups (${spec.clustering.method})`
    : "without clustering";
  const baselines = spec.baselines.length ? `, compared with ${spec.baselines.join(", ")}` : "";
  return `The ${s.kind} similarity ${step} of a ${modelWords(spec.model)} network ${weights}, between the ` +
    `primary examples (${selectionWords(spec.primary, "every example")}) of ${datasetName(spec, datasets)}` +
    `, auxiliary ${selectionWords(spec.auxiliary, "none")}; ${clustering}${baselines}.`;
}

function bestBaseline(result) {
  let best = null;
  for (const [name, metrics] of Object.entries(result.baselines || {})) {
    if (metrics && typeof metrics.accuracy === "number" && (!best || metrics.accuracy > best.accuracy)) {
      best = { name, accuracy: metrics.accuracy };
    }
  }
  return best;
}

// ---------------------------------------------------------------- jobs

function progressBar(fraction, label) {
  const percent = Math.round(100 * (fraction || 0));
  return el("div", {
    class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(percent),
    "aria-label": label || "progress",
  }, el("div", { style: `width:${percent}%` }), el("span", {}, `${percent} %`));
}

function setProgress(bar, fraction) {
  const percent = Math.round(100 * fraction);
  bar.setAttribute("aria-valuenow", String(percent));
  bar.firstChild.style.width = `${percent}%`;
  bar.lastChild.textContent = `${percent} %`;
}

async function jobsPage(main) {
  const statuses = state.openapi.components.schemas.JobOut.properties.status.enum
    || ["queued", "running", "succeeded", "failed", "canceled"];
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filter = params.get("status") || "";
  const select = el("select", {
    id: "status-filter", "aria-label": "Filter by status",
    onchange: () => { location.hash = select.value ? `#/jobs?status=${select.value}` : "#/jobs"; },
  }, el("option", { value: "" }, "all statuses"), statuses.map((s) => el("option", { value: s, selected: s === filter }, s)));
  const query = filter ? `?status=${filter}&limit=100` : "?limit=100";
  const [jobs, datasets] = await Promise.all([apiJson(`/v1/jobs${query}`), apiJson("/v1/datasets")]);
  const tbody = el("tbody");
  const table = el("table", { id: "jobs-table" },
    el("thead", {}, el("tr", {}, ["Status", "Progress", "Dataset", "Model", "Similarity", "Accuracy (best baseline)",
      "Created", "Duration", ""].map((h, i) => el("th", { class: i === 5 ? "num" : null, scope: "col" }, h)))),
    tbody);
  main.replaceChildren(
    el("div", { class: "row" }, el("h1", {}, "Jobs"), el("span", { class: "muted" }, `${jobs.data.length} shown`)),
    el("section", { class: "card" }, el("div", { class: "row" }, el("label", {}, "Status", select),
      el("a", { class: "button", href: "#/new" }, "New job")), el("div", { class: "scroll" }, table)),
  );
  if (!jobs.data.length) tbody.append(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "No jobs yet.")));
  for (const job of jobs.data) tbody.append(jobRow(job, datasets.data));
}

function jobRow(job, datasets) {
  const status = el("span", { class: `status status-${job.status}` }, job.status);
  const bar = progressBar(job.status === "succeeded" ? 1 : job.progress.fraction, `progress of job ${job.id}`);
  const accuracy = el("td", { class: "num" }, "–");
  const actions = el("td");
  const row = el("tr", { "data-job": job.id },
    el("td", {}, status), el("td", {}, bar),
    el("td", {}, datasetName(job.spec, datasets)), el("td", {}, modelWords(job.spec.model)),
    el("td", {}, job.spec.similarity.kind), accuracy,
    el("td", {}, when(job.created_at)), el("td", { class: "duration" }, duration(job)), actions);
  const link = el("a", { href: `#/jobs/${job.id}`, title: job.id }, "open");
  const renderActions = (current) => {
    actions.replaceChildren(link, " ");
    if (!FINAL.has(current.status)) {
      actions.append(el("button", {
        class: "danger", type: "button", onclick: async () => {
          try { await api(`/v1/jobs/${job.id}`, { method: "DELETE" }); } catch (error) { notice(error.message); }
        },
      }, "Cancel"));
    } else {
      actions.append(el("button", {
        class: "secondary", type: "button", onclick: async () => {
          try {
            await api(`/v1/jobs/${job.id}?purge=true`, { method: "DELETE" });
            row.remove();
          } catch (error) { notice(error.message); }
        },
      }, "Purge"));
    }
  };
  const showAccuracy = async () => {
    try {
      const result = await apiJson(`/v1/jobs/${job.id}/result`);
      const best = bestBaseline(result);
      const ours = result.metrics && result.metrics.accuracy;
      accuracy.textContent = typeof ours === "number"
        ? `${fmt(ours)}${best ? ` (${fmt(best.accuracy)})` : ""}` : "–";
      if (best) accuracy.title = `best baseline: ${best.name}`;
    } catch (error) { /* shown as "–" */ }
  };
  renderActions(job);
  if (job.status === "succeeded") showAccuracy();
  if (!FINAL.has(job.status)) {
    followEvents(job.id, async (name, data) => {
      if (name === "progress") setProgress(bar, data.fraction);
      if (name === "status") {
        status.textContent = data.status;
        status.className = `status status-${data.status}`;
        if (FINAL.has(data.status)) {
          const current = await apiJson(`/v1/jobs/${job.id}`);
          row.querySelector(".duration").textContent = duration(current);
          renderActions(current);
          if (current.status === "succeeded") { setProgress(bar, 1); showAccuracy(); }
        }
      }
    });
  }
  return row;
}

// ---------------------------------------------------------------- new job: a form from the JSON schema

function resolveRef(schema) {
  let current = schema;
  while (current && current.$ref) current = state.openapi.components.schemas[current.$ref.split("/").pop()];
  return current;
}

function defaultsOf(schema) {
  schema = resolveRef(schema);
  const out = {};
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    if ("const" in prop) out[name] = prop.const;
    else if ("default" in prop) out[name] = structuredClone(prop.default);
    else if (prop.enum && prop.enum.length === 1) out[name] = prop.enum[0];
  }
  return out;
}

function variants(schema) {
  const union = schema.oneOf || schema.anyOf || [];
  const mapping = (schema.discriminator && schema.discriminator.mapping) || {};
  const property = schema.discriminator && schema.discriminator.propertyName;
  return { property, options: Object.entries(mapping).map(([value, ref]) => ({ value, schema: resolveRef({ $ref: ref }) })), union };
}

function numberInput(prop, value, onInput, label) {
  const attrs = { type: "number", value: value ?? "", "aria-label": label, required: true };
  if (prop.type === "integer") attrs.step = "1";
  else attrs.step = "any";
  if ("minimum" in prop) attrs.min = prop.minimum;
  if ("exclusiveMinimum" in prop) attrs.min = prop.exclusiveMinimum;
  if ("maximum" in prop) attrs.max = prop.maximum;
  const input = el("input", attrs);
  input.addEventListener("input", () => {
    if (input.value === "") return;
    onInput(prop.type === "integer" ? parseInt(input.value, 10) : parseFloat(input.value));
  });
  return input;
}

// The choices of a scalar property: an enum, a const, a boolean, or an anyOf of those; null otherwise.
function choicesOf(prop) {
  if (prop.enum) return prop.enum;
  if ("const" in prop) return [prop.const];
  if (prop.type === "boolean") return null;
  if (prop.anyOf) {
    const out = [];
    for (const part of prop.anyOf) {
      if (part.enum) out.push(...part.enum);
      else if ("const" in part) out.push(part.const);
      else if (part.type === "boolean") out.push(true, false);
      else return null;
    }
    return out;
  }
  return null;
}

// One input for a scalar property of the schema: choices → select, number → bounded input (blank = null
// when the schema allows null), boolean → checkbox, otherwise text.
function scalarField(name, prop, value, onInput) {
  prop = resolveRef(prop);
  const label = name;
  let input;
  const choices = choicesOf(prop);
  const numeric = prop.type === "integer" || prop.type === "number" ? prop
    : (prop.anyOf || []).find((p) => p.type === "integer" || p.type === "number");
  const nullable = (prop.anyOf || []).some((p) => p.type === "null");
  if (choices) {
    input = el("select", { "aria-label": label, name },
      choices.map((c) => el("option", { value: JSON.stringify(c), selected: c === value }, String(c))));
    input.addEventListener("change", () => onInput(JSON.parse(input.value)));
  } else if (numeric) {
    input = numberInput(numeric, value, onInput, label);
    if (nullable) {
      input.required = false;
      input.placeholder = "auto";
      input.addEventListener("input", () => { if (input.value === "") onInput(null); });
    }
  } else if (prop.type === "boolean") {
    input = el("input", { type: "checkbox", checked: !!value, "aria-label": label, name });
    input.addEventListener("change", () => onInput(input.checked));
  } else {
    input = el("input", { type: "text", value: value ?? "", "aria-label": label, name });
    input.addEventListener("input", () => onInput(input.value));
  }
  input.name = name;
  return el("label", { class: "field", title: prop.description || "" }, el("span", {}, label), input);
}

function isObjectSchema(prop) {
  const target = resolveRef(prop);
  return !!(target && target.properties);
}

function nullableRef(prop) {
  const parts = prop.anyOf || [];
  if (parts.length !== 2 || !parts.some((p) => p.type === "null")) return null;
  const ref = parts.find((p) => p.$ref);
  return ref && isObjectSchema(ref) ? ref : null;
}

// A fieldset for an object schema's properties (nested objects get their own fieldsets).
function objectFields(schema, value, onChange) {
  schema = resolveRef(schema);
  const box = el("div", { class: "fields" });
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    if ("const" in prop || (prop.enum && prop.enum.length === 1)) continue;
    box.append(scalarField(name, prop, value[name], (v) => {
      if (v === null) delete value[name]; else value[name] = v;
      onChange();
    }));
  }
  return box;
}

function unionFieldset(title, schema, spec, key, onChange) {
  const { property, options } = variants(schema);
  const box = el("fieldset", { "data-field": key }, el("legend", {}, title));
  const body = el("div");
  const select = el("select", { "aria-label": `${key}.${property}`, name: `${key}.${property}` },
    options.map((o) => el("option", { value: o.value, selected: o.value === spec[key][property] }, o.value)));
  const renderBody = () => {
    const option = options.find((o) => o.value === spec[key][property]) || options[0];
    body.replaceChildren(
      option.schema.description ? el("p", { class: "muted" }, option.schema.description) : "",
      objectFields(option.schema, spec[key], onChange));
  };
  select.addEventListener("change", () => {
    const option = options.find((o) => o.value === select.value);
    spec[key] = defaultsOf(option.schema);
    renderBody();
    onChange();
  });
  box.append(el("label", { class: "field" }, el("span", {}, property), select), body);
  renderBody();
  return box;
}

function classPicker(key, description, classes, spec, onChange) {
  const chosen = new Set((spec[key] && spec[key].labels) || []);
  const box = el("fieldset", { "data-field": key },
    el("legend", {}, `${key[0].toUpperCase()}${key.slice(1)} classes`),
    el("p", { class: "muted" }, `${description || ""} Tick none for the default.`));
  const checks = el("div", { class: "checks" });
  for (const c of classes) {
    const input = el("input", { type: "checkbox", name: `${key}-class`, value: String(c), checked: chosen.has(c),
      "aria-label": `${key} class ${c}` });
    input.addEventListener("change", () => {
      if (input.checked) chosen.add(c); else chosen.delete(c);
      spec[key] = chosen.size ? { labels: [...chosen].sort((a, b) => a - b) } : null;
      onChange();
    });
    checks.append(el("label", {}, input, String(c)));
  }
  box.append(checks);
  return box;
}

function isSelection(prop) {
  const ref = nullableRef(prop);
  return !!ref && ref.$ref.endsWith("/Selection");
}

// The spec's starting value, from the schema's defaults.
function initialSpec(jobSchema) {
  const spec = {};
  for (const [name, prop] of Object.entries(jobSchema.properties)) {
    if ("default" in prop) spec[name] = structuredClone(prop.default);
    else if (prop.discriminator) {
      const { property, options } = variants(prop);
      const chosen = options.find((o) => "default" in (o.schema.properties[property] || {})) || options[0];
      spec[name] = defaultsOf(chosen.schema);
    } else if (isSelection(prop)) spec[name] = null;
    else if (nullableRef(prop)) spec[name] = defaultsOf(nullableRef(prop));
    else if (isObjectSchema(prop)) spec[name] = defaultsOf(prop);
    else if (prop.type === "array" && prop.items && resolveRef(prop.items).enum) spec[name] = [...resolveRef(prop.items).enum];
  }
  return spec;
}

// A preset filled in with the schema's defaults (the variant it names, for a discriminated union).
function withDefaults(jobSchema, preset) {
  const spec = { dataset: preset.dataset, ...initialSpec(jobSchema) };
  for (const [name, value] of Object.entries(structuredClone(preset))) {
    const prop = jobSchema.properties[name] || {};
    if (value && typeof value === "object" && !Array.isArray(value) && prop.discriminator) {
      const { property, options } = variants(prop);
      const option = options.find((o) => o.value === value[property]);
      spec[name] = { ...(option ? defaultsOf(option.schema) : {}), ...value };
    } else if (value && typeof value === "object" && !Array.isArray(value) && spec[name] && typeof spec[name] === "object") {
      spec[name] = { ...spec[name], ...value };
    } else {
      spec[name] = value;
    }
  }
  return spec;
}

async function newJobPage(main) {
  const schemas = state.openapi.components.schemas;
  const jobSchema = schemas.JobSpec;
  const props = jobSchema.properties;
  const datasets = (await apiJson("/v1/datasets")).data.filter((d) => d.kind === "dataset");
  const builtinSchema = schemas.BuiltinDataset;
  const builtins = builtinSchema.properties.builtin.enum;
  const spec = { dataset: { builtin: builtins[0] }, ...initialSpec(jobSchema) };
  const form = el("form", { id: "job-form", novalidate: true });
  const preview = el("pre", { id: "spec-json" });
  const curl = el("pre", { id: "spec-curl" });
  const refresh = () => {
    preview.textContent = JSON.stringify(spec, null, 2);
    const auth = state.config.auth ? " -H \"Authorization: Bearer $LELASTIC_API_KEY\"" : "";
    curl.textContent = `curl -sS -X POST ${location.origin}/v1/jobs${auth} -H 'Content-Type: application/json' ` +
      `--data-binary @- <<'EOF'\n${JSON.stringify(spec)}\nEOF`;
  };

  const datasetFieldset = () => {
    const box = el("fieldset", { "data-field": "dataset" }, el("legend", {}, "Dataset"));
    const current = typeof spec.dataset === "string" ? `upload:${spec.dataset}` : `builtin:${spec.dataset.builtin}`;
    const picker = el("select", { id: "dataset-picker", "aria-label": "Dataset" },
      el("optgroup", { label: "Builtin" }, builtins.map((b) => el("option", { value: `builtin:${b}`, selected: current === `builtin:${b}` }, b))),
      datasets.length ? el("optgroup", { label: "Uploaded" }, datasets.map((d) =>
        el("option", { value: `upload:${d.id}`, selected: current === `upload:${d.id}` }, `${d.name} (n=${d.n})`))) : "");
    picker.addEventListener("change", () => {
      const [kind, id] = picker.value.split(":");
      spec.dataset = kind === "builtin" ? { builtin: id } : id;
      for (const [name, prop] of Object.entries(props)) if (isSelection(prop)) spec[name] = null;
      render();
    });
    box.append(el("label", { class: "field" }, el("span", {}, "dataset"), picker));
    if (typeof spec.dataset !== "string" && spec.dataset.builtin !== "digits") {
      const extra = {};
      for (const [name, prop] of Object.entries(builtinSchema.properties)) {
        if (name === "builtin") continue;
        extra[name] = prop;
        if (!(name in spec.dataset)) spec.dataset[name] = prop.default;
      }
      box.append(objectFields({ properties: extra }, spec.dataset, refresh));
    }
    box.append(uploadBox(async (record) => {
      if (record.kind !== "dataset") return;
      datasets.unshift(record);
      spec.dataset = record.id;
      render();
    }));
    return box;
  };

  const classesOfDataset = () => {
    if (typeof spec.dataset === "string") {
      const record = datasets.find((d) => d.id === spec.dataset);
      return (record && record.classes) || [];
    }
    return BUILTIN_CLASSES[spec.dataset.builtin] || SYNTHETIC_CLASSES;
  };

  const render = () => {
    form.replaceChildren();
    const scalars = el("div", { class: "fields" });
    const pickers = el("div", { class: "grid" });
    for (const [name, prop] of Object.entries(props)) {
      if (name === "dataset") {
        form.append(datasetFieldset(), pickers);
      } else if (isSelection(prop)) {
        const classes = classesOfDataset();
        if (classes.length) pickers.append(classPicker(name, prop.description, classes, spec, refresh));
      } else if (prop.discriminator) {
        form.append(unionFieldset(prop.title || name, prop, spec, name, refresh));
      } else if (nullableRef(prop)) {
        const ref = nullableRef(prop);
        const box = el("fieldset", { "data-field": name }, el("legend", {}, name));
        const on = el("input", { type: "checkbox", checked: !!spec[name], name: `${name}-on` });
        on.addEventListener("change", () => {
          spec[name] = on.checked ? defaultsOf(ref) : null;
          render();
        });
        box.append(el("label", {}, on, `use ${name}`));
        if (spec[name]) box.append(objectFields(ref, spec[name], refresh));
        form.append(box);
      } else if (isObjectSchema(prop)) {
        const target = resolveRef(prop);
        form.append(el("fieldset", { "data-field": name }, el("legend", {}, name),
          target.description ? el("p", { class: "muted" }, target.description) : "",
          objectFields(target, spec[name], refresh)));
      } else if (prop.type === "array" && prop.items && resolveRef(prop.items).enum) {
        const choices = resolveRef(prop.items).enum;
        const checks = el("div", { class: "checks" });
        for (const choice of choices) {
          const input = el("input", { type: "checkbox", name, value: choice, checked: spec[name].includes(choice) });
          input.addEventListener("change", () => {
            spec[name] = choices.filter((c) => (c === choice ? input.checked : spec[name].includes(c)));
            refresh();
          });
          checks.append(el("label", {}, input, choice));
        }
        form.append(el("fieldset", { "data-field": name }, el("legend", {}, name), checks));
      } else {
        scalars.append(scalarField(name, prop, spec[name], (v) => {
          if (v === null) delete spec[name]; else spec[name] = v;
          refresh();
        }));
      }
    }
    form.append(el("fieldset", {}, el("legend", {}, "Other"), scalars));
    form.append(el("div", { class: "row" }, el("button", { type: "submit", id: "submit-job" }, "Submit job")));
    refresh();
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("submit-job");
    button.disabled = true;
    try {
      const job = await apiJson("/v1/jobs", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(spec),
      });
      notice("");
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) notice(`The job was refused:\n${error.message}`);
      button.disabled = false;
    }
  });

  const presets = el("div", { class: "row" }, el("span", { class: "muted" }, "Presets from the paper:"),
    Object.entries(PRESETS).map(([name, preset]) => el("button", {
      type: "button", class: "secondary", onclick: () => {
        for (const key of Object.keys(spec)) delete spec[key];
        Object.assign(spec, withDefaults(jobSchema, preset));
        render();
      },
    }, name)));
  const copy = el("button", {
    type: "button", class: "secondary", id: "copy-curl", onclick: async () => {
      try {
        await navigator.clipboard.writeText(curl.textContent);
        copy.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(curl);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    },
  }, "Copy as curl");
  main.replaceChildren(el("h1", {}, "New job"),
    el("div", { class: "grid" },
      el("section", { class: "card" }, presets, form),
      el("section", { class: "card" }, el("h2", {}, "The JSON it sends"), preview,
        el("div", { class: "row" }, el("h2", {}, "As curl"), copy), curl)));
  render();
}

// ---------------------------------------------------------------- uploads

function uploadBox(onUploaded) {
  const input = el("input", { type: "file", accept: ".npz,.npy,.csv,.safetensors", id: "upload-input",
    "aria-label": "Choose a file to upload" });
  const labelColumn = el("input", { type: "text", placeholder: "label column (CSV)", "aria-label": "CSV label column", size: "16" });
  const status = el("span", { class: "muted" });
  const send = async (file) => {
    const body = new FormData();
    body.append("file", file);
    if (labelColumn.value) body.append("label_column", labelColumn.value);
    status.textContent = `uploading ${file.name}…`;
    try {
      const record = await apiJson("/v1/datasets", { method: "POST", body });
      status.textContent = `uploaded ${record.name}`;
      await onUploaded(record);
    } catch (error) {
      status.textContent = "";
      if (!(error instanceof ApiError && error.status === 401)) notice(`Upload refused:\n${error.message}`);
    }
  };
  input.addEventListener("change", () => { if (input.files[0]) send(input.files[0]); });
  const drop = el("div", { class: "drop" }, "Drop a .npz, .npy, .csv or .safetensors file here, or ",
    el("div", { class: "row", style: "justify-content:center" }, input, labelColumn), status);
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) send(event.dataTransfer.files[0]);
  });
  return drop;
}

// ---------------------------------------------------------------- thumbnails

function isSquare(d) {
  const side = Math.round(Math.sqrt(d));
  return side > 1 && side * side === d ? side : 0;
}

function thumbnail(values, side, range, size = 36) {
  const canvas = el("canvas", { width: String(side), height: String(side), style: `width:${size}px;height:${size}px` });
  const context = canvas.getContext("2d");
  const image = context.createImageData(side, side);
  const [low, high] = range;
  for (let p = 0; p < side * side; p++) {
    const v = 255 - Math.round(255 * Math.min(1, Math.max(0, (values[p] - low) / (high - low || 1))));
    image.data.set([v, v, v, 255], 4 * p);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function rangeOf(data) {
  let low = Infinity, high = -Infinity;
  for (const v of data) { if (v < low) low = v; if (v > high) high = v; }
  return [low, high];
}

// ---------------------------------------------------------------- datasets

async function datasetsPage(main) {
  const list = await apiJson("/v1/datasets");
  const tbody = el("tbody");
  const preview = el("section", { class: "card", id: "dataset-preview" }, el("h2", {}, "Preview"),
    el("p", { class: "muted" }, "Pick a dataset to see some of its rows."));
  for (const record of list.data) {
    const counts = record.class_counts ? Object.entries(record.class_counts).map(([c, n]) => `${c}: ${n}`).join(", ") : "–";
    tbody.append(el("tr", { "data-dataset": record.id },
      el("td", {}, record.name), el("td", {}, record.kind),
      el("td", { class: "num" }, record.n ?? "–"), el("td", {}, record.shape ? record.shape.join("×") : "–"),
      el("td", {}, counts), el("td", { class: "hide-narrow" }, when(record.created_at)),
      el("td", {},
        record.kind === "dataset" ? el("button", { type: "button", class: "secondary", onclick: () => showRows(preview, record) }, "Preview") : "",
        " ",
        el("button", {
          type: "button", class: "danger", onclick: async () => {
            try { await api(`/v1/datasets/${record.id}`, { method: "DELETE" }); route(); } catch (error) { notice(error.message); }
          },
        }, "Delete"))));
  }
  if (!list.data.length) tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "No uploads yet.")));
  const builtins = state.openapi.components.schemas.BuiltinDataset.properties.builtin.enum;
  main.replaceChildren(el("h1", {}, "Datasets"),
    el("section", { class: "card" }, el("h2", {}, "Upload"), uploadBox(() => route())),
    el("section", { class: "card" }, el("h2", {}, "Uploads"), el("div", { class: "scroll" }, el("table", { id: "datasets-table" },
      el("thead", {}, el("tr", {}, ["Name", "Kind", "n", "Shape", "Class counts", "Created", ""].map((h, i) =>
        el("th", { scope: "col", class: [i === 2 ? "num" : "", i === 5 ? "hide-narrow" : ""].join(" ").trim() || null }, h)))),
      tbody))),
    preview,
    el("section", { class: "card" }, el("h2", {}, "Builtins"),
      el("ul", {}, builtins.map((b) => el("li", {}, el("strong", {}, b), b === "digits"
        ? ": scikit-learn's 8×8 digits, 1797 examples, classes 0–9"
        : ": one of the paper's synthetic two-class manifolds (classes 0 and 1), n chosen per job")))));
}

async function showRows(preview, record) {
  const rows = await apiJson(`/v1/datasets/${record.id}/rows?limit=40`);
  const d = rows.X.length ? rows.X[0].length : 0;
  const side = isSquare(d);
  const body = [el("h2", {}, `Preview: ${record.name}`), el("p", { class: "muted" }, `rows 0–${rows.X.length - 1} of ${rows.n}`)];
  if (side) {
    const range = rangeOf(rows.X.flat());
    body.push(el("div", { class: "thumbs" }, rows.X.map((x, i) => el("figure", { class: "thumb" },
      thumbnail(x, side, range), el("figcaption", {}, rows.y ? `y=${rows.y[i]}` : `#${i}`)))));
  } else {
    const shown = Math.min(d, 8);
    body.push(el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "row"), rows.y ? el("th", {}, "y") : "",
        Array.from({ length: shown }, (_, j) => el("th", { class: "num" }, `x${j}`)), d > shown ? el("th", {}, "…") : "")),
      el("tbody", {}, rows.X.slice(0, 12).map((x, i) => el("tr", {}, el("td", {}, i), rows.y ? el("td", {}, rows.y[i]) : "",
        x.slice(0, shown).map((v) => el("td", { class: "num" }, fmt(v))), d > shown ? el("td", {}, "…") : ""))))));
  }
  preview.replaceChildren(...body);
}

// ---------------------------------------------------------------- one job

async function jobPage(main, id) {
  const [job, datasets] = await Promise.all([apiJson(`/v1/jobs/${id}`), apiJson("/v1/datasets")]);
  const status = el("span", { class: `status status-${job.status}`, id: "job-status" }, job.status);
  const bar = progressBar(job.status === "succeeded" ? 1 : job.progress.fraction, "job progress");
  bar.id = "job-progress";
  const stageList = el("ol", { class: "stages", "aria-label": "Stages" }, STAGES.map((s) => el("li", { "data-stage": s }, s)));
  const message = el("span", { class: "muted", id: "progress-message" }, job.progress.message || "");
  const results = el("div", { id: "results" });
  const markStage = (stage, done) => {
    let passed = !done;
    for (const item of stageList.children) {
      const isCurrent = item.dataset.stage === stage;
      if (isCurrent) passed = false;
      item.className = done || (passed && !isCurrent) ? "done" : isCurrent ? "current" : "";
      if (passed && !isCurrent) item.className = "done";
    }
    if (done) for (const item of stageList.children) item.className = "done";
  };
  const finish = async (current) => {
    status.textContent = current.status;
    status.className = `status status-${current.status}`;
    if (current.status === "succeeded") {
      setProgress(bar, 1);
      markStage("", true);
      await showResult(results, id, current);
    } else if (current.status === "failed") {
      results.replaceChildren(el("section", { class: "card" }, el("h2", {}, "Failed"), el("pre", {}, current.error || "")));
    }
  };
  main.replaceChildren(
    el("div", { class: "row" }, el("h1", {}, `Job ${id.slice(0, 8)}`), status),
    el("section", { class: "card" }, el("h2", {}, "What it computes"), el("p", { id: "spec-words" }, specInWords(job.spec, datasets.data)),
      el("details", {}, el("summary", {}, "The spec as JSON"), el("pre", {}, JSON.stringify(job.spec, null, 2)))),
    el("section", { class: "card" }, el("h2", {}, "Progress"), bar, stageList, message),
    results);
  markStage(job.progress.stage, job.status === "succeeded");
  if (FINAL.has(job.status)) {
    await finish(job);
    return;
  }
  followEvents(id, async (name, data) => {
    if (name === "progress") {
      setProgress(bar, data.fraction);
      markStage(data.stage, false);
      message.textContent = data.message || "";
    } else if (name === "status") {
      status.textContent = data.status;
      status.className = `status status-${data.status}`;
      if (FINAL.has(data.status)) await finish(await apiJson(`/v1/jobs/${id}`));
    }
  });
}

async function showResult(results, id, job) {
  const result = await apiJson(`/v1/jobs/${id}/result`);
  const artifacts = result.artifacts || {};
  const need = (name) => (artifacts[name] ? loadNpy(artifacts[name]) : Promise.resolve(null));
  const [S, examples, labels, clustersNpy, primaryIndex] = await Promise.all([
    need("similarity.npy"), need("examples.npy"), need("labels.npy"), need("clusters.npy"), need("primary_index.npy")]);
  const n = S ? S.shape[0] : result.n;
  const data = {
    n, S: S && S.data, X: examples && examples.data, d: examples ? examples.shape[1] : 0,
    labels: labels && labels.data, clusters: clustersNpy && clustersNpy.data, rows: primaryIndex && primaryIndex.data,
  };
  data.range = data.X ? rangeOf(data.X) : [0, 1];
  data.side = isSquare(data.d);
  const sections = [metricsCard(result)];
  if (data.S && n <= 2500) data.embedding = embed(data.S, n);
  if (data.S) sections.push(heatmapCard(data));
  if (data.embedding) sections.push(embeddingCard(data));
  if (result.analysis) sections.push(await elasticityCard(result));
  if (data.S && data.side) sections.push(neighboursCard(data));
  sections.push(el("section", { class: "card", id: "artifacts" }, el("h2", {}, "Downloads"),
    el("ul", {}, Object.entries(artifacts).map(([name, url]) => el("li", {}, downloadLink(url, name))))));
  results.replaceChildren(el("div", { class: "grid" }, sections));
}

function metricsCard(result) {
  const columns = ["accuracy", "ari", "nmi"];
  const rows = [];
  if (result.metrics && typeof result.metrics.accuracy === "number") rows.push(["LE clustering", result.metrics]);
  for (const [name, metrics] of Object.entries(result.baselines || {})) rows.push([name, metrics]);
  const best = {};
  for (const c of columns) best[c] = Math.max(...rows.map(([, m]) => (m && typeof m[c] === "number" ? m[c] : -Infinity)));
  const table = el("table", { id: "metrics-table" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "method"), columns.map((c) => el("th", { class: "num", scope: "col" }, c)))),
    el("tbody", {}, rows.map(([name, m]) => el("tr", {}, el("th", { scope: "row" }, name),
      columns.map((c) => el("td", { class: `num${m && m[c] === best[c] ? " best" : ""}` }, fmt(m && m[c])))))));
  const extra = [];
  if (result.metrics && typeof result.metrics.within_between_ratio === "number") {
    extra.push(el("p", {}, `Within/between similarity ratio: ${fmt(result.metrics.within_between_ratio)}`));
  }
  if (result.training && result.training.final_loss !== undefined) {
    extra.push(el("p", { class: "muted" }, `Training loss ${fmt(result.training.final_loss, 4)}`));
  }
  if (result.timings) extra.push(el("p", { class: "muted" }, `Total ${fmt(result.timings.total_seconds, 2)} s on ${result.device || "?"}`));
  return el("section", { class: "card" }, el("h2", {}, "Metrics"), rows.length ? el("div", { class: "scroll" }, table)
    : el("p", { class: "muted" }, result.metrics_note || "This job did not cluster: no clustering metrics."), extra);
}

function color(index) {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

function hexToRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function heatmapCard(data) {
  const { n, S } = data;
  const order = Array.from({ length: n }, (_, i) => i);
  const key = data.clusters || data.labels;
  // By cluster (then label); within a group, along the embedding's angle, which brings out a manifold's order.
  const angle = data.embedding ? data.embedding[0].map((x, i) => Math.atan2(data.embedding[1][i], x)) : null;
  order.sort((a, b) => (key ? key[a] - key[b] : 0) || (data.labels ? data.labels[a] - data.labels[b] : 0)
    || (angle ? angle[a] - angle[b] : 0) || a - b);
  let low = Infinity, high = -Infinity;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) {
    const v = S[i * n + j]; if (v < low) low = v; if (v > high) high = v;
  }
  if (!isFinite(low)) { low = 0; high = 1; }
  const canvas = el("canvas", { class: "heatmap", width: String(n), height: String(n), tabindex: "0",
    "aria-label": "Similarity heatmap, rows and columns ordered by cluster" });
  const context = canvas.getContext("2d");
  const image = context.createImageData(n, n);
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
    const t = Math.min(1, Math.max(0, (S[order[r] * n + order[c]] - low) / (high - low || 1)));
    // white → dark blue
    image.data.set([Math.round(255 - 230 * t), Math.round(255 - 190 * t), Math.round(255 - 100 * t), 255], 4 * (r * n + c));
  }
  context.putImageData(image, 0, 0);
  const strip = (values, label) => {
    const canvasStrip = el("canvas", { class: "strip", width: String(n), height: "1", "aria-label": label });
    const ctx = canvasStrip.getContext("2d");
    const img = ctx.createImageData(n, 1);
    for (let c = 0; c < n; c++) img.data.set([...hexToRgb(color(values[order[c]])), 255], 4 * c);
    ctx.putImageData(img, 0, 0);
    return el("div", {}, el("span", { class: "muted", style: "font-size:.75rem" }, label), canvasStrip);
  };
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor(((event.clientX - box.left) / box.width) * n);
    const r = Math.floor(((event.clientY - box.top) / box.height) * n);
    if (r < 0 || c < 0 || r >= n || c >= n) return;
    const i = order[r], j = order[c];
    showTooltip(event, [`S[${i}, ${j}] = ${fmt(S[i * n + j], 4)}`,
      data.labels ? `labels ${data.labels[i]}, ${data.labels[j]}` : "",
      data.clusters ? `clusters ${data.clusters[i]}, ${data.clusters[j]}` : ""].filter(Boolean).join("\n"));
  });
  canvas.addEventListener("mouseleave", hideTooltip);
  const title = data.clusters ? "Similarity, ordered by cluster" : "Similarity, ordered by label and embedding angle";
  return el("section", { class: "card", id: "heatmap" }, el("h2", {}, title),
    data.labels ? strip(data.labels, "true labels") : "", data.clusters ? strip(data.clusters, "clusters") : "", canvas,
    el("p", { class: "muted" }, `n = ${n}; colour from ${fmt(low, 3)} (white) to ${fmt(high, 3)} (blue), off-diagonal.`));
}

// The top two eigenvectors of the double-centred similarity (kernel PCA), by subspace iteration.
function embed(S, n) {
  const rowMean = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let j = 0; j < n; j++) sum += (S[i * n + j] + S[j * n + i]) / 2;
    rowMean[i] = sum / n;
    total += sum;
  }
  total /= n * n;
  const K = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    K[i * n + j] = (S[i * n + j] + S[j * n + i]) / 2 - rowMean[i] - rowMean[j] + total;
  }
  let random = 12345;
  const next = () => { random = (random * 1103515245 + 12345) % 2147483648; return random / 2147483648 - 0.5; };
  let V = [Float64Array.from({ length: n }, next), Float64Array.from({ length: n }, next)];
  const values = [0, 0];
  for (let iteration = 0; iteration < 200; iteration++) {
    const W = V.map((v) => {
      const w = new Float64Array(n);
      for (let i = 0; i < n; i++) { let s = 0; const row = i * n; for (let j = 0; j < n; j++) s += K[row + j] * v[j]; w[i] = s; }
      return w;
    });
    // Gram-Schmidt
    const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
    const norm0 = Math.sqrt(dot(W[0], W[0])) || 1;
    W[0] = W[0].map((x) => x / norm0);
    const projection = dot(W[1], W[0]);
    W[1] = W[1].map((x, i) => x - projection * W[0][i]);
    const norm1 = Math.sqrt(dot(W[1], W[1])) || 1;
    W[1] = W[1].map((x) => x / norm1);
    values[0] = norm0; values[1] = norm1;
    V = W;
  }
  return V.map((v, k) => v.map((x) => x * Math.sqrt(Math.max(values[k], 0))));
}

function marker(shape, x, y, r, fill) {
  const common = { fill, stroke: "#1d232b", "stroke-width": "0.6" };
  if (shape === "square") return svg("rect", { ...common, x: x - r, y: y - r, width: 2 * r, height: 2 * r });
  if (shape === "triangle") return svg("polygon", { ...common, points: `${x},${y - r * 1.2} ${x - r * 1.1},${y + r * 0.8} ${x + r * 1.1},${y + r * 0.8}` });
  if (shape === "diamond") return svg("polygon", { ...common, points: `${x},${y - r * 1.3} ${x + r * 1.3},${y} ${x},${y + r * 1.3} ${x - r * 1.3},${y}` });
  if (shape === "cross") return svg("path", { ...common, d: `M${x - r},${y - r}L${x + r},${y + r}M${x - r},${y + r}L${x + r},${y - r}`, stroke: fill, "stroke-width": "2" });
  return svg("circle", { ...common, cx: x, cy: y, r });
}

function embeddingCard(data) {
  const { n } = data;
  const [u, v] = data.embedding;
  const width = 600, height = 420, pad = 24;
  const [ulo, uhi] = rangeOf(u), [vlo, vhi] = rangeOf(v);
  const sx = (x) => pad + ((x - ulo) / (uhi - ulo || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - vlo) / (vhi - vlo || 1)) * (height - 2 * pad);
  const labelValues = data.labels ? [...new Set(data.labels)].sort((a, b) => a - b) : [];
  const points = svg("g");
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", id: "embedding-plot",
    "aria-label": "2-D kernel PCA embedding of the similarity, coloured by cluster, marked by true label" },
  svg("rect", { x: 0, y: 0, width, height, fill: "#fff" }), points);
  for (let i = 0; i < n; i++) {
    const shape = data.labels ? SHAPES[labelValues.indexOf(data.labels[i]) % SHAPES.length] : "circle";
    const fill = color(data.clusters ? data.clusters[i] : 0);
    const point = marker(shape, sx(u[i]), sy(v[i]), 4, fill);
    point.setAttribute("data-index", String(i));
    point.setAttribute("class", "point");
    point.addEventListener("mouseenter", (event) => showExampleTooltip(event, data, i));
    point.addEventListener("mouseleave", hideTooltip);
    point.addEventListener("click", () => selectExample(i));
    points.append(point);
  }
  // Zoom with the wheel (about the pointer), pan by dragging, reset by double-click.
  let view = [0, 0, width, height];
  const setView = () => plot.setAttribute("viewBox", view.join(" "));
  plot.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = plot.getBoundingClientRect();
    const fx = (event.clientX - box.left) / box.width, fy = (event.clientY - box.top) / box.height;
    const factor = event.deltaY < 0 ? 0.8 : 1.25;
    const w = Math.min(width, view[2] * factor), h = Math.min(height, view[3] * factor);
    view = [view[0] + (view[2] - w) * fx, view[1] + (view[3] - h) * fy, w, h];
    setView();
  }, { passive: false });
  let drag = null;
  plot.addEventListener("mousedown", (event) => { drag = [event.clientX, event.clientY, view[0], view[1]]; });
  window.addEventListener("mouseup", () => { drag = null; });
  plot.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const box = plot.getBoundingClientRect();
    view[0] = drag[2] - ((event.clientX - drag[0]) / box.width) * view[2];
    view[1] = drag[3] - ((event.clientY - drag[1]) / box.height) * view[3];
    setView();
  });
  plot.addEventListener("dblclick", () => { view = [0, 0, width, height]; setView(); });
  const clusterValues = data.clusters ? [...new Set(data.clusters)].sort((a, b) => a - b) : [];
  const legend = el("div", { class: "legend" },
    clusterValues.map((c) => el("span", {}, el("span", { class: "swatch", style: `background:${color(c)}` }), `cluster ${c}`)),
    labelValues.map((l, k) => el("span", {}, `${SHAPES[k % SHAPES.length]}: label ${l}`)));
  return el("section", { class: "card", id: "embedding" }, el("h2", {}, "Embedding of the similarity"),
    el("div", { class: "plot-frame" }, plot), legend,
    el("p", { class: "muted" }, "Kernel PCA of the similarity matrix (top two components). Hover for the example, " +
      "click to see its neighbours, wheel to zoom, drag to pan, double-click to reset."));
}

function showExampleTooltip(event, data, i) {
  const lines = [`example ${i}${data.rows ? ` (dataset row ${data.rows[i]})` : ""}`];
  if (data.labels) lines.push(`label ${data.labels[i]}`);
  if (data.clusters) lines.push(`cluster ${data.clusters[i]}`);
  const extra = [];
  if (data.X) {
    const x = data.X.subarray(i * data.d, (i + 1) * data.d);
    if (data.side) extra.push(thumbnail(x, data.side, data.range, 56));
    else lines.push(`x = [${Array.from(x.slice(0, 8), (v) => fmt(v, 2)).join(", ")}${data.d > 8 ? ", …" : ""}]`);
  }
  showTooltip(event, lines.join("\n"), extra);
}

function showTooltip(event, text, extra = []) {
  const tip = document.getElementById("tooltip");
  tip.replaceChildren(el("div", { style: "white-space:pre" }, text), ...extra);
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(event.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

function hideTooltip() {
  document.getElementById("tooltip").hidden = true;
}

async function elasticityCard(result) {
  const a = result.analysis;
  const body = [el("h2", {}, "Similarity against geodesic distance"),
    el("table", { id: "analysis-table" }, el("tbody", {},
      el("tr", {}, el("th", { scope: "row" }, "Pearson"), el("td", { class: "num" }, fmt(a.pearson))),
      el("tr", {}, el("th", { scope: "row" }, "Spearman"), el("td", { class: "num" }, fmt(a.spearman))),
      el("tr", {}, el("th", { scope: "row" }, "pairs"), el("td", { class: "num" }, fmt(a.pairs)))))];
  if (result.artifacts["elasticity.png"]) {
    body.push(await authImage(result.artifacts["elasticity.png"], "Similarity against geodesic distance, per pair of same-class examples"));
  }
  body.push(el("p", { class: "muted" }, "Local elasticity: similarity falls as the points lie further apart along their class's manifold (a strongly negative correlation)."));
  return el("section", { class: "card", id: "elasticity" }, body);
}

let selectExample = () => {};

function neighboursCard(data) {
  const { n, S, X, d, side, range } = data;
  const gallery = el("div", { class: "thumbs", id: "gallery", role: "list" });
  const shown = Math.min(n, 60);
  const step = n / shown;
  const picks = Array.from({ length: shown }, (_, k) => Math.floor(k * step));
  const similar = el("div", { class: "thumbs", id: "similar" });
  const nearest = el("div", { class: "thumbs", id: "nearest" });
  const caption = el("div", { class: "selection muted", id: "neighbours-caption" }, "Click an example (here or in the embedding).");
  const figure = (i, note) => el("figure", { class: "thumb" }, thumbnail(X.subarray(i * d, (i + 1) * d), side, range),
    el("figcaption", {}, note));
  selectExample = (i) => {
    for (const button of gallery.children) button.classList.toggle("selected", Number(button.dataset.index) === i);
    const others = Array.from({ length: n }, (_, j) => j).filter((j) => j !== i);
    const bySimilarity = others.slice().sort((a, b) => S[i * n + b] - S[i * n + a]).slice(0, 10);
    const dist = (j) => { let s = 0; for (let k = 0; k < d; k++) { const t = X[i * d + k] - X[j * d + k]; s += t * t; } return s; };
    const distances = new Map(others.map((j) => [j, dist(j)]));
    const byDistance = others.slice().sort((a, b) => distances.get(a) - distances.get(b)).slice(0, 10);
    const label = (j) => (data.labels ? `y=${data.labels[j]}` : `#${j}`);
    similar.replaceChildren(...bySimilarity.map((j) => figure(j, label(j))));
    nearest.replaceChildren(...byDistance.map((j) => figure(j, label(j))));
    const agree = (list) => (data.labels ? list.filter((j) => data.labels[j] === data.labels[i]).length : null);
    caption.replaceChildren(figure(i, label(i)), el("div", {},
      el("div", {}, `Example ${i}${data.labels ? `, label ${data.labels[i]}` : ""}.`),
      data.labels ? el("div", {}, `Same label: ${agree(bySimilarity)}/10 by similarity, ${agree(byDistance)}/10 by distance.`) : ""));
  };
  for (const i of picks) {
    gallery.append(el("button", {
      type: "button", class: "thumb", "data-index": String(i), role: "listitem",
      "aria-label": `example ${i}${data.labels ? `, label ${data.labels[i]}` : ""}`, onclick: () => selectExample(i),
    }, thumbnail(X.subarray(i * d, (i + 1) * d), side, range)));
  }
  return el("section", { class: "card", id: "neighbours" }, el("h2", {}, "Neighbours"), gallery, caption,
    el("h2", {}, "10 most similar by the network"), similar,
    el("h2", {}, "10 nearest by Euclidean distance"), nearest);
}

// ---------------------------------------------------------------- start

async function start() {
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    route();
  });
  window.addEventListener("hashchange", route);
  try {
    [state.config, state.openapi] = await Promise.all([
      fetch("/ui/config.json").then((r) => r.json()), fetch("/openapi.json").then((r) => r.json())]);
  } catch (error) {
    notice(`The API did not answer: ${error.message}`);
    return;
  }
  await route();
}

start();
