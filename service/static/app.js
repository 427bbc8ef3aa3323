// latentserve demo: every action is one call to the public /v1 API (see api.js).
import { ApiError, call, onBusyChange } from "./api.js";
import { initAtlas, showAtlas } from "./atlas.js";

const $ = (id) => document.getElementById(id);
let model = null;      // the description from GET /v1/models
let frames = [];       // interpolation frames (data URLs)
let playing = null;

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err}`;
  box.hidden = false;
}
function clearError() { $("error").hidden = true; }
async function run(action) {
  clearError();
  try { await action(); } catch (err) { showError(err); }
}
// a call that takes long says why: the first call of an operation on a model prepares
// (traces) it on the server; searches (a GAN's encode) and large batches are slow anyway
const used = new Set();
let slow = null;
const operationOf = ({ method, path }) => (method === "POST" ? path.split("?")[0].replace(/^\/v1\/models\//, "") : null);
onBusyChange((busy, started) => {
  $("busy").hidden = !busy;
  document.body.setAttribute("aria-busy", String(busy));
  const op = operationOf(started);
  if (!busy) {
    clearTimeout(slow);
    $("busy-reason").hidden = true;
  }
  if (op && started.ended) used.add(op);
  if (!busy || !op || started.ended) return;
  clearTimeout(slow);
  const [name, ...rest] = op.split("/");
  slow = setTimeout(() => {
    $("busy-reason").textContent = used.has(op)
      ? "still working: searches (a GAN's encode) and large batches take a while"
      : `first ${rest.join(" ")} call to ${name}: the server is preparing it (tracing the call), a second or two; later calls are fast`;
    $("busy-reason").hidden = false;
  }, 500);
});

// --- drawing canvas: the single source of "your image" ---
const canvas = $("draw");
const ctx = canvas.getContext("2d");
function clearCanvas() { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
clearCanvas();
let drawing = false;
function point(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
canvas.addEventListener("pointerdown", (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...point(e)); });
canvas.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.lineTo(...point(e)); ctx.stroke();
});
window.addEventListener("pointerup", () => { drawing = false; });
$("clear").addEventListener("click", clearCanvas);
$("upload").addEventListener("change", () => run(async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const bitmap = await createImageBitmap(file).catch(() => { throw new ApiError(`${file.name} is not an image this browser can read.`); });
  clearCanvas();
  const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
  const w = bitmap.width * scale, h = bitmap.height * scale;
  ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}));
function canvasBlob() { return new Promise((resolve) => canvas.toBlob(resolve, "image/png")); }
async function imageForm(extra = {}) {
  const form = new FormData();
  form.append("image", await canvasBlob(), "drawing.png");
  form.append("invert", $("invert").checked ? "true" : "false");
  for (const [k, v] of Object.entries(extra)) form.append(k, v);
  return form;
}

// --- model picker: only the operations the model supports are shown ---
function applyModel() {
  model = JSON.parse($("model").selectedOptions[0].dataset.model);
  const code = model.latent_dim ? `latent ${model.latent_dim}` : "no latent code";
  const density = model.density ? ` · likelihood: ${model.density.kind}` : "";
  $("model-info").textContent = `${model.family} · ${model.image_shape.join("×")} · ${code}${density}`;
  $("density-result").replaceChildren();
  const ops = new Set(model.operations);
  document.querySelectorAll("[data-ops]").forEach((el) => {
    el.hidden = !el.dataset.ops.split(" ").some((op) => ops.has(op));
  });
  document.querySelectorAll("[data-op]").forEach((el) => { el.hidden = !ops.has(el.dataset.op); });
  // sliders explore a code whose every unit is N(0, 1): the model says so (latent_prior)
  const sliders = model.latent_prior === "normal" && ops.has("decode");
  $("latent-section").hidden = !sliders;
  // only the ends this model can interpolate between, and only that choice's inputs
  $("ends-images").disabled = !ops.has("encode");
  $("ends-seeds").disabled = !ops.has("generate");
  $("ends-images-label").hidden = !ops.has("encode");
  $("ends-seeds-label").hidden = !ops.has("generate");
  $(ops.has("generate") ? "ends-seeds" : "ends-images").checked = true;
  updateEnds();
  if (sliders) buildSliders();
  // class-conditional models (cvae, cgan) list their classes: "eight sneakers" is one click
  const classes = model.conditional ? model.class_names : [];
  $("class-label").hidden = !classes.length;
  $("class").replaceChildren(new Option("any", ""), ...classes.map((c) => new Option(c, c)));
  // a model with several samplers (a dae: its fitted latent density, its GSN chain) offers them
  const samplers = model.samplers || [];
  $("sampler-label").hidden = samplers.length < 2;
  $("sampler").replaceChildren(...samplers.map((s) => new Option(s, s)));
  updateSampler();
  run(() => showAtlas(model));
}
function updateEnds() {
  const images = $("ends-images").checked;
  $("upload-b-label").hidden = !images;
  document.querySelectorAll(".seed-end").forEach((el) => { el.hidden = images; });
}
// a chain sampler runs for a number of steps and can be watched as an animated GIF
function updateSampler() {
  const chain = (model.chain_samplers || []).includes($("sampler").value);
  document.querySelectorAll(".chain-only").forEach((el) => { el.hidden = !chain; });
}
$("sampler").addEventListener("change", updateSampler);
$("ends-images").addEventListener("change", updateEnds);
$("ends-seeds").addEventListener("change", updateEnds);
$("model").addEventListener("change", () => run(async () => applyModel()));

async function loadModels() {
  const { models } = await call("/v1/models");
  const select = $("model");
  select.replaceChildren(...models.filter((m) => m.operations.length).map((m) => {
    const option = new Option(`${m.name} (${m.family})`, m.name);
    option.dataset.model = JSON.stringify(m);
    return option;
  }));
  if (!select.options.length) throw new ApiError("The server has no models loaded yet; reload the page in a moment.");
  applyModel();
}

// --- reconstruct, denoise, classify ---
$("noise-level").addEventListener("input", () => { $("noise-level-out").textContent = $("noise-level").value; });
$("reconstruct").addEventListener("click", () => run(async () => {
  const reply = await call(`/v1/models/${model.name}/reconstruct`, { form: await imageForm() });
  $("original").src = canvas.toDataURL("image/png");
  $("noisy").removeAttribute("src");
  $("output").src = reply.image;
}));
$("denoise").addEventListener("click", () => run(async () => {
  const kind = $("noise-kind").value;
  const extra = kind ? { noise_kind: kind, noise_level: $("noise-level").value, noise_seed: "7" } : {};
  const reply = await call(`/v1/models/${model.name}/denoise`, { form: await imageForm(extra) });
  $("original").src = canvas.toDataURL("image/png");
  $("noisy").src = reply.input;
  $("output").src = reply.image;
}));

// --- likelihood and anomaly ---
function showFacts(facts) {
  $("density-result").replaceChildren(...Object.entries(facts).flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}
$("likelihood").addEventListener("click", () => run(async () => {
  const r = await call(`/v1/models/${model.name}/likelihood`, { form: await imageForm() });
  showFacts({
    "log-likelihood": `${r.log_likelihood_nats.toFixed(1)} nats`, "bits/dim": r.bits_per_dim.toFixed(3),
    kind: r.kind, convention: r.convention,
  });
}));
$("anomaly").addEventListener("click", () => run(async () => {
  const r = await call(`/v1/models/${model.name}/anomaly`, { form: await imageForm() });
  // a combined score (Fisher's method over its parts) has no unit; its parts are shown too
  const units = {
    input_complexity: (v) => `${v.toFixed(3)} bits/dim`, feature_distance: (v) => v.toFixed(1),
    orientation: (v) => `${v.toFixed(3)} bits/dim`,
  };
  const parts = Object.fromEntries(Object.entries(r.parts || {}).map(
    ([name, v]) => [name.replace("_", " "), (units[name] || ((u) => u.toFixed(3)))(v)]));
  showFacts({
    verdict: r.anomalous ? "anomalous" : "looks like the training data",
    score: r.parts ? r.score.toFixed(2) : `${r.score.toFixed(3)} bits/dim`,
    percentile: `${r.percentile.toFixed(1)} (anomalous above ${r.threshold_percentile})`,
    ...parts, "bits/dim": r.likelihood.bits_per_dim.toFixed(3), method: r.method,
  });
}));

// --- generate ---
$("generate").addEventListener("click", () => run(async () => {
  const sampler = $("sampler").value;  // "" for a model that samples one way
  const chain = (model.chain_samplers || []).includes(sampler);
  const json = {
    n: Number($("n").value), seed: Number($("seed").value), temperature: Number($("temperature").value),
    ...($("class").value ? { class: $("class").value } : {}),
    ...(sampler ? { sampler } : {}),
    ...(chain ? { steps: Number($("chain-steps").value) } : {}),
  };
  if (chain && $("animate").checked) {  // the chain's run, drawn by the server as a GIF
    $("grid").src = await call(`/v1/models/${model.name}/generate?format=gif`, { json, accept: "image/gif" });
    return;
  }
  const reply = await call(`/v1/models/${model.name}/generate`, { json });
  $("grid").src = await gridFrom(reply.images);
}));
async function gridFrom(urls) {
  const images = await Promise.all(urls.map((u) => new Promise((ok) => { const i = new Image(); i.onload = () => ok(i); i.src = u; })));
  const cols = Math.ceil(Math.sqrt(images.length)), w = images[0].width, h = images[0].height;
  const out = document.createElement("canvas");
  out.width = cols * (w + 2) + 2; out.height = Math.ceil(images.length / cols) * (h + 2) + 2;
  const g = out.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, out.width, out.height);
  images.forEach((img, i) => g.drawImage(img, 2 + (i % cols) * (w + 2), 2 + Math.floor(i / cols) * (h + 2)));
  return out.toDataURL("image/png");
}

// --- interpolate: an animation with a frame slider ---
function showFrame(i) {
  $("frame").src = frames[i];
  $("frame-slider").value = i;
  $("frame-out").textContent = `${i + 1}/${frames.length}`;
}
$("frame-slider").addEventListener("input", () => showFrame(Number($("frame-slider").value)));
$("interpolate").addEventListener("click", () => run(async () => {
  const steps = $("steps").value, method = $("method").value;
  let reply;
  if ($("ends-images").checked) {
    const second = $("upload-b").files[0];
    if (!second) throw new ApiError("Choose a second image to interpolate towards.");
    const form = await imageForm({ steps, method });
    form.append("image_b", second);
    reply = await call(`/v1/models/${model.name}/interpolate`, { form });
  } else {
    reply = await call(`/v1/models/${model.name}/interpolate`, {
      json: { seed_a: Number($("seed-a").value), seed_b: Number($("seed-b").value), steps: Number(steps), method },
    });
  }
  frames = reply.frames;
  $("frame-slider").max = frames.length - 1;
  $("frame-slider").disabled = false;
  $("play").disabled = false;
  showFrame(0);
}));
$("play").addEventListener("click", () => {
  if (playing) { clearInterval(playing); playing = null; $("play").textContent = "Play"; return; }
  let i = Number($("frame-slider").value), dir = 1;
  $("play").textContent = "Pause";
  playing = setInterval(() => {
    if (i + dir < 0 || i + dir >= frames.length) dir = -dir;
    i += dir; showFrame(i);
  }, 90);
});

// --- VAE latent sliders, decoded live (one request in flight, the latest values win) ---
let pending = false, dirty = false;
function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  for (let k = 0; k < Math.min(model.latent_dim, 32); k++) {
    const label = document.createElement("label");
    label.textContent = `z${k} `;
    const slider = Object.assign(document.createElement("input"), { type: "range", min: -3, max: 3, step: 0.05, value: 0 });
    slider.addEventListener("input", decodeSliders);
    label.append(slider);
    box.append(label);
  }
  decodeSliders();
}
async function decodeSliders() {
  if (pending) { dirty = true; return; }
  pending = true;
  const latent = Array.from({ length: model.latent_dim }, (_, k) => Number(($("sliders").children[k]?.querySelector("input") || { value: 0 }).value));
  await run(async () => {
    const reply = await call(`/v1/models/${model.name}/decode`, { json: { latent } });
    $("latent-image").src = reply.images[0];
  });
  pending = false;
  if (dirty) { dirty = false; decodeSliders(); }
}

initAtlas({ run, imageForm });
run(loadModels);
