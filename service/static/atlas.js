// The latent-space atlas: a scatter plot of a sample of test images' codes (GET .../atlas),
// hover for the image, click to decode a point, drag to play the path between two points,
// and your own image dropped onto the map. Keyboard: arrows move a cross, Enter decodes it,
// Space marks a start, P plays from the mark to the cross.
import { API, call } from "./api.js";

const $ = (id) => document.getElementById(id);
// Tableau's ten categorical colours: distinct for the ten Fashion-MNIST classes
const COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const PAD = 14;          // canvas pixels around the points
const HOVER_PX = 9;      // how near the pointer must be to a point to show its image
const DRAG_PX = 6;       // a press that moves further than this is a drag, not a click

const canvas = $("atlas");
const g = canvas.getContext("2d");
const base = document.createElement("canvas");  // the points, drawn once per map
let state = null;        // { model, map, px: Float32Array, hidden: Set, sprite }
let cross = null, mark = null, located = null, path = null;
let press = null, playing = null;
let generation = 0;      // the latest map asked for: a slower earlier reply is dropped

const colour = (label) => (label >= 0 ? COLOURS[label % COLOURS.length] : "#888");
const className = (label) => state.map.class_names[label] ?? (label >= 0 ? `class ${label}` : "unlabelled");
const fmt = (p) => `(${p[0].toFixed(2)}, ${p[1].toFixed(2)})`;

function toPixel([x, y]) {
  const { x: [x0, x1], y: [y0, y1] } = state.map.bounds;
  const w = canvas.width - 2 * PAD, h = canvas.height - 2 * PAD;
  return [PAD + (x - x0) / (x1 - x0 || 1) * w, PAD + (1 - (y - y0) / (y1 - y0 || 1)) * h];
}
function toData([px, py]) {
  const { x: [x0, x1], y: [y0, y1] } = state.map.bounds;
  const w = canvas.width - 2 * PAD, h = canvas.height - 2 * PAD;
  return [x0 + (px - PAD) / w * (x1 - x0), y0 + (1 - (py - PAD) / h) * (y1 - y0)];
}
function eventPixel(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}

function drawBase() {
  base.width = canvas.width; base.height = canvas.height;
  const b = base.getContext("2d");
  b.fillStyle = "#fff"; b.fillRect(0, 0, base.width, base.height);
  const { px, hidden } = state, labels = state.map.labels;
  b.globalAlpha = 0.75;
  for (let i = 0; i < labels.length; i++) {
    if (hidden.has(labels[i])) continue;
    b.fillStyle = colour(labels[i]);
    b.beginPath(); b.arc(px[2 * i], px[2 * i + 1], 2.4, 0, 2 * Math.PI); b.fill();
  }
  b.globalAlpha = 1;
}
function marker(p, style, radius = 7) {
  const [x, y] = toPixel(p);
  g.strokeStyle = style; g.lineWidth = 2.5;
  g.beginPath(); g.arc(x, y, radius, 0, 2 * Math.PI); g.stroke();
}
function redraw() {
  g.drawImage(base, 0, 0);
  if (path) {
    const [a, b] = [toPixel(path[0]), toPixel(path[1])];
    g.strokeStyle = "#1d2330"; g.lineWidth = 2; g.setLineDash([5, 4]);
    g.beginPath(); g.moveTo(...a); g.lineTo(...b); g.stroke(); g.setLineDash([]);
  }
  if (mark) marker(mark, "#1d2330", 5);
  if (located) {
    marker(located.point, located.anomalous ? "#d00" : "#111", 9);
    marker(located.point, "#fff", 6);
  }
  if (cross) {
    const [x, y] = toPixel(cross);
    g.strokeStyle = "#111"; g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(x - 8, y); g.lineTo(x + 8, y); g.moveTo(x, y - 8); g.lineTo(x, y + 8); g.stroke();
  }
}

function nearest([px, py]) {
  let best = -1, bestD = HOVER_PX * HOVER_PX;
  const { labels } = state.map;
  for (let i = 0; i < labels.length; i++) {
    if (state.hidden.has(labels[i])) continue;
    const dx = state.px[2 * i] - px, dy = state.px[2 * i + 1] - py, d = dx * dx + dy * dy;
    if (d < bestD) { best = i; bestD = d; }
  }
  return best;
}
function showThumb(i, [px, py]) {
  const tip = $("atlas-tooltip");
  const t = state.map.thumbnails;
  if (i < 0 || !t || !state.sprite?.complete) { tip.hidden = true; return; }
  const [h, w] = t.tile, thumb = $("atlas-thumb"), tg = thumb.getContext("2d");
  tg.imageSmoothingEnabled = false;
  tg.drawImage(state.sprite, (i % t.columns) * w, Math.floor(i / t.columns) * h, w, h, 0, 0, thumb.width, thumb.height);
  $("atlas-thumb-label").textContent = `${className(state.map.labels[i])} · test image #${i + 1} of the sample`;
  const r = canvas.getBoundingClientRect();
  tip.style.left = `${canvas.offsetLeft + px * r.width / canvas.width + 12}px`;
  tip.style.top = `${canvas.offsetTop + py * r.height / canvas.height + 12}px`;
  tip.hidden = false;
}

async function decodePoints(points) {
  const started = performance.now();
  const reply = await call(`/v1/models/${state.model.name}/atlas/decode`, {
    json: { points, projection: state.map.projection },
  });
  return { images: reply.images, ms: performance.now() - started };
}
function status(text) { $("atlas-status").textContent = text; }

async function decodeAt(p) {
  cross = p; path = null; stopPlaying(); redraw();
  const { images, ms } = await decodePoints([p]);
  $("atlas-image").src = images[0];
  $("atlas-image").alt = `the image decoded at ${fmt(p)}`;
  canvas.dataset.decodeMs = ms.toFixed(1);
  status(`Decoded ${fmt(p)} in ${ms.toFixed(0)} ms.`);
}
function stopPlaying() { if (playing) { clearInterval(playing); playing = null; } }
async function playPath(a, b) {
  const steps = Math.max(2, Math.min(64, Number($("atlas-steps").value) || 16));
  const points = Array.from({ length: steps }, (_, k) => [a[0] + (b[0] - a[0]) * k / (steps - 1), a[1] + (b[1] - a[1]) * k / (steps - 1)]);
  path = [a, b]; cross = b; stopPlaying(); redraw();
  const { images, ms } = await decodePoints(points);
  let k = 0;
  const img = $("atlas-image");
  img.alt = `the path from ${fmt(a)} to ${fmt(b)}, ${steps} frames`;
  img.src = images[0];
  playing = setInterval(() => {
    k += 1;
    if (k >= images.length) { stopPlaying(); return; }
    img.src = images[k];
    canvas.dataset.frame = String(k + 1);
  }, 90);
  canvas.dataset.frames = String(images.length);
  status(`Playing ${steps} frames from ${fmt(a)} to ${fmt(b)} (decoded in ${ms.toFixed(0)} ms).`);
}

function buildLegend() {
  const counts = new Map();
  state.map.labels.forEach((l) => counts.set(l, (counts.get(l) || 0) + 1));
  const sums = new Map();
  state.map.points.forEach(([x, y], i) => {
    const l = state.map.labels[i], s = sums.get(l) || [0, 0];
    sums.set(l, [s[0] + x, s[1] + y]);
  });
  const labels = [...counts.keys()].sort((a, b) => a - b);
  $("atlas-legend").replaceChildren(...labels.map((l) => {
    const li = document.createElement("li");
    const button = Object.assign(document.createElement("button"), { type: "button", className: "legend-item" });
    button.setAttribute("aria-pressed", "true");
    button.title = "show or hide this class";
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = colour(l);
    button.append(swatch, `${className(l)} (${counts.get(l)})`);
    button.addEventListener("click", () => {
      const hide = !state.hidden.has(l);
      if (hide) state.hidden.add(l); else state.hidden.delete(l);
      button.setAttribute("aria-pressed", String(!hide));
      drawBase(); redraw();
    });
    li.append(button);
    return li;
  }));
  // the text alternative: what the plot shows, class by class
  $("atlas-table").replaceChildren(...labels.map((l) => {
    const tr = document.createElement("tr");
    const [sx, sy] = sums.get(l), n = counts.get(l);
    for (const text of [className(l), String(n), fmt([sx / n, sy / n])]) {
      const td = document.createElement("td"); td.textContent = text; tr.append(td);
    }
    return tr;
  }));
}

async function loadMap(model, projection) {
  const started = performance.now();
  const mine = ++generation;
  const map = await call(`/v1/models/${model.name}/atlas?projection=${projection}`);
  if (mine !== generation) return;
  const px = new Float32Array(2 * map.points.length);
  state = { model, map, px, hidden: new Set(), sprite: null };
  map.points.forEach((p, i) => { const [x, y] = toPixel(p); px[2 * i] = x; px[2 * i + 1] = y; });
  cross = null; mark = null; located = null; path = null; stopPlaying();
  drawBase(); redraw(); buildLegend();
  canvas.dataset.points = String(map.points.length);
  canvas.dataset.projection = projection;
  canvas.dataset.loadMs = (performance.now() - started).toFixed(1);
  const explained = map.explained_variance ? `; the plane holds ${(100 * (map.explained_variance[0] + map.explained_variance[1])).toFixed(0)}% of the codes' variance` : "";
  $("atlas-summary").textContent = `${map.source[0].toUpperCase()}${map.source.slice(1)}, placed by ${map.description}${explained}. A point decodes by: ${map.inverse}.`;
  canvas.setAttribute("aria-label", `scatter plot of ${map.count} test images' codes by ${projection}, coloured by class; the table below lists each class's centre`);
  if (map.thumbnails) {
    const sprite = new Image();
    sprite.src = API + map.thumbnails.url;
    state.sprite = sprite;
  }
  status("Hover a point to see its image; click to decode a point; drag to play a path.");
}

export async function showAtlas(model) {
  const section = $("atlas-section");
  section.hidden = !model.atlas;
  if (!model.atlas) { state = null; generation++; return; }
  const select = $("atlas-projection");
  select.replaceChildren(...model.atlas.projections.map((p) => new Option(p === "tsne" ? "t-SNE" : "PCA", p)));
  select.value = model.atlas.projections.includes("tsne") ? "tsne" : "pca";
  $("atlas-image").removeAttribute("src");
  await loadMap(model, select.value);
}

export function initAtlas({ run, imageForm }) {
  $("atlas-projection").addEventListener("change", () => run(() => loadMap(state.model, $("atlas-projection").value)));
  canvas.addEventListener("pointerdown", (e) => {
    if (!state) return;
    press = { start: eventPixel(e), dragging: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!state) return;
    const p = eventPixel(e);
    if (press) {
      const [sx, sy] = press.start;
      if (Math.hypot(p[0] - sx, p[1] - sy) > DRAG_PX) press.dragging = true;
      if (press.dragging) { path = [toData(press.start), toData(p)]; redraw(); }
    }
    showThumb(press?.dragging ? -1 : nearest(p), p);
  });
  canvas.addEventListener("pointerleave", () => { $("atlas-tooltip").hidden = true; });
  canvas.addEventListener("pointerup", (e) => {
    if (!state || !press) return;
    const { start, dragging } = press;
    press = null;
    const end = eventPixel(e);
    run(() => (dragging ? playPath(toData(start), toData(end)) : decodeAt(toData(end))));
  });
  canvas.addEventListener("keydown", (e) => {
    if (!state) return;
    const { x: [x0, x1], y: [y0, y1] } = state.map.bounds;
    const step = e.shiftKey ? 0.05 : 0.01;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
    if (moves[e.key]) {
      const c = cross || [(x0 + x1) / 2, (y0 + y1) / 2];
      cross = [Math.min(x1, Math.max(x0, c[0] + moves[e.key][0] * step * (x1 - x0))),
               Math.min(y1, Math.max(y0, c[1] + moves[e.key][1] * step * (y1 - y0)))];
      redraw();
      const i = nearest(toPixel(cross));
      status(`Cross at ${fmt(cross)}${i >= 0 ? `, on a ${className(state.map.labels[i])}` : ""}. Enter decodes it.`);
      e.preventDefault();
    } else if (e.key === "Enter" && cross) {
      run(() => decodeAt(cross)); e.preventDefault();
    } else if (e.key === " " && cross) {
      mark = cross; redraw(); status(`Start marked at ${fmt(mark)}; move the cross and press P to play the path.`); e.preventDefault();
    } else if ((e.key === "p" || e.key === "P") && mark && cross) {
      run(() => playPath(mark, cross)); e.preventDefault();
    }
  });
  $("atlas-locate").addEventListener("click", () => run(async () => {
    if (!state) return;
    const name = state.model.name;
    const reply = await call(`/v1/models/${name}/atlas/locate`, { form: await imageForm({ projection: state.map.projection }) });
    located = { point: reply.point, anomalous: false };
    const among = Object.entries(reply.neighbour_classes).map(([c, n]) => `${n} ${c}`).join(", ");
    let verdict = "";
    if (state.model.operations.includes("anomaly")) {
      const a = await call(`/v1/models/${name}/anomaly`, { form: await imageForm() });
      located.anomalous = a.anomalous;
      verdict = ` Anomaly check: ${a.anomalous ? "anomalous" : "looks like the training data"} (percentile ${a.percentile.toFixed(1)}).`;
    }
    canvas.dataset.located = fmt(reply.point);
    redraw();
    status(`Your image lands at ${fmt(reply.point)}; its nearest sample images: ${among}.${verdict}`);
  }));
}
