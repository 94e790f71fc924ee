"use strict";
// The playground: builds requests for the service's own public API, draws what comes back.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// --- modes: which route, which input, which hyperparameters --------------------------------

const MODES = {
  conv2d: {
    rank: 2, operation: "forward", forward: "/forward", backward: "/backward", size: 49,
    hyper: ["stride", "padding", "dilation", "groups", "padding_mode", "rounding"],
    defaults: { stride: "1", padding: "same", dilation: "1", groups: "1" },
    filters: ["sobel x", "sobel y", "gaussian"],
    hint: "Stride, dilation: an int, or height,width (e.g. 2,1). Padding: the same, or per side " +
      "[[top,bottom],[left,right]], or same (output ceil(H/stride)), same_lower, valid. " +
      "Groups must divide the channels and the filters (RGB with 3 filters and groups 3: one filter per colour).",
  },
  transposed: {
    rank: 2, operation: "conv_transpose", forward: "/conv_transpose/forward", backward: "/conv_transpose/backward", size: 17,
    hyper: ["stride", "padding", "output_padding", "dilation", "groups"],
    defaults: { stride: "2", padding: "1", output_padding: "1", dilation: "1", groups: "1" },
    filters: ["tent", "sobel x"],
    hint: "Each input pixel stamps the kernel, times its value, onto the output, stride pixels " +
      "apart; padding crops the output's border, output padding adds rows and columns at the end " +
      "(smaller than the stride). Stride 2, kernel 3, padding 1, output padding 1 doubles the size; " +
      "the tent kernel then upsamples bilinearly.",
  },
  conv1d: {
    rank: 1, operation: "forward", forward: "/forward", backward: "/backward", size: 64,
    hyper: ["stride", "padding", "dilation", "groups", "padding_mode", "rounding"],
    defaults: { stride: "1", padding: "same", dilation: "1", groups: "1" },
    filters: ["gaussian", "difference", "second difference"],
    hint: "Stride, dilation, padding: an int; padding also [left,right], same, same_lower or valid.",
  },
};
const mode = () => MODES[$("mode").value];

// --- kernels: each preset makes a k x k grid (2-D) or a 1 x k row (1-D) ---------------------

const centre = (k) => (k - 1) / 2;
const tent = (k, i) => Math.max(0, 1 - Math.abs(i - centre(k)) / ((k + 1) / 2));
const gauss = (k, i) => Math.exp(-((i - centre(k)) ** 2) / (2 * Math.max(k / 4, 0.5) ** 2));
const normalised = (g) => { const s = g.flat().reduce((a, b) => a + b, 0); return g.map((r) => r.map((v) => v / s)); };
const grid = (rows, k, f) => Array.from({ length: rows }, (_, i) => Array.from({ length: k }, (_, j) => f(i, j)));
const random = () => Math.round((Math.random() * 2 - 1) * 100) / 100;

const PRESETS = {
  2: {
    identity: { make: (k) => grid(k, k, (i, j) => (i === k >> 1 && j === k >> 1 ? 1 : 0)) },
    "box blur": { make: (k) => grid(k, k, () => 1 / (k * k)) },
    gaussian: { make: (k) => normalised(grid(k, k, (i, j) => gauss(k, i) * gauss(k, j))) },
    tent: { make: (k) => grid(k, k, (i, j) => tent(k, i) * tent(k, j)) },
    sharpen: { make: (k) => grid(k, k, (i, j) => (i === k >> 1 && j === k >> 1 ? k * k : -1)) },
    "sobel x": { size: 3, make: () => [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] },
    "sobel y": { size: 3, make: () => [[-1, -2, -1], [0, 0, 0], [1, 2, 1]] },
    laplacian: { size: 3, make: () => [[0, 1, 0], [1, -4, 1], [0, 1, 0]] },
    random: { make: (k) => grid(k, k, random) },
  },
  1: {
    identity: { make: (k) => grid(1, k, (_, j) => (j === k >> 1 ? 1 : 0)) },
    "box blur": { make: (k) => grid(1, k, () => 1 / k) },
    gaussian: { make: (k) => normalised(grid(1, k, (_, j) => gauss(k, j))) },
    tent: { make: (k) => grid(1, k, (_, j) => tent(k, j)) },
    sharpen: { make: (k) => grid(1, k, (_, j) => (j === k >> 1 ? k : -1)) },
    difference: { size: 3, make: () => [[-1, 0, 1]] },
    "second difference": { size: 3, make: () => [[1, -2, 1]] },
    random: { make: (k) => grid(1, k, random) },
  },
};

/** A preset exists for this rank and kernel size. */
function available(preset, rank, k) {
  const p = PRESETS[rank][preset];
  return Boolean(p) && (!p.size || p.size === k);
}

// --- inputs: samples drawn in code, so no image files need licensing -----------------------

const SAMPLES = {
  shapes: (ctx) => {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 49, 49);
    ctx.fillStyle = "#fff"; ctx.fillRect(6, 6, 16, 16);
    ctx.beginPath(); ctx.arc(32, 32, 10, 0, 2 * Math.PI); ctx.fill();
  },
  checkerboard: (ctx) => {
    for (let i = 0; i < 49; i += 8) for (let j = 0; j < 49; j += 8) {
      ctx.fillStyle = ((i + j) / 8) % 2 ? "#fff" : "#000"; ctx.fillRect(j, i, 8, 8);
    }
  },
  letter: (ctx) => {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, 49, 49);
    ctx.fillStyle = "#000"; ctx.font = "bold 40px sans-serif"; ctx.textAlign = "center";
    ctx.textBaseline = "middle"; ctx.fillText("A", 24.5, 26.5);
  },
  "colour blobs": (ctx) => {
    ctx.fillStyle = "#102040"; ctx.fillRect(0, 0, 49, 49);
    [["#e33", 14, 14], ["#3c3", 34, 18], ["#36f", 22, 34]].forEach(([c, x, y]) => {
      ctx.fillStyle = c; ctx.beginPath(); ctx.arc(x, y, 11, 0, 2 * Math.PI); ctx.fill();
    });
  },
  "one pixel": (ctx, n) => {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, n, n);
    ctx.fillStyle = "#fff"; ctx.fillRect(n >> 1, n >> 1, 1, 1);
  },
};

const step = (i) => (i < 16 ? 0 : i < 40 ? 1 : 0.4);
const SIGNALS = {
  steps: step,
  "sine and a spike": (i) => 0.8 * Math.sin((2 * Math.PI * i) / 32) + (i === 45 ? 1.5 : 0),
  chirp: (i) => Math.sin((Math.PI * i * i) / 160),
  "noisy steps": (i) => step(i) + 0.15 * Math.sin(i * 12.9898) * Math.cos(i * 78.233),
  "one spike": (i) => (i === 32 ? 1 : 0),
};

const state = {
  rgba: null, width: 49, height: 49, signal: null, filters: [], uploaded: false,
  lastInput: null, lastForward: null, lastBackward: null, pixel: null, source: null, playing: null,
};

function loadSample(name) {
  const n = mode().size;
  if (mode().rank === 1) {
    state.signal = Float32Array.from({ length: n }, (_, i) => SIGNALS[name](i)); return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = n; canvas.height = n;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.scale(n / 49, n / 49);
  SAMPLES[name](ctx, n);
  setImage(ctx.getImageData(0, 0, n, n));
  state.uploaded = false;
}

function setImage(imageData) {
  state.rgba = imageData.data; state.width = imageData.width; state.height = imageData.height;
}

function loadUpload(file) {
  const img = new Image();
  img.onload = () => {
    const scale = Math.min(1, (mode().size * 2) / Math.max(img.width, img.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.width * scale));
    canvas.height = Math.max(1, Math.round(img.height * scale));
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    setImage(ctx.getImageData(0, 0, canvas.width, canvas.height));
    state.uploaded = true;
    URL.revokeObjectURL(img.src);
    forward();
  };
  img.src = URL.createObjectURL(file);
}

/** The input as x: Float32Array (1, C, H, W) in [0, 1], or (1, 1, L) for a signal. */
function inputTensor() {
  if (mode().rank === 1) return { shape: [1, 1, state.signal.length], data: Float32Array.from(state.signal) };
  const c = Number($("channels").value), { width: w, height: h, rgba } = state;
  const data = new Float32Array(c * h * w);
  for (let p = 0; p < h * w; p++) {
    const [r, g, b] = [rgba[4 * p], rgba[4 * p + 1], rgba[4 * p + 2]];
    if (c === 1) data[p] = (0.299 * r + 0.587 * g + 0.114 * b) / 255;
    else { data[p] = r / 255; data[h * w + p] = g / 255; data[2 * h * w + p] = b / 255; }
  }
  return { shape: [1, c, h, w], data };
}

// --- filters -------------------------------------------------------------------------------

function kernelSize() { return Number($("ksize").value); }

/** Each filter keeps the preset chosen for it; where that preset does not exist (Sobel at
 *  kernel size 5, or in 1-D) it holds the identity until the preset exists again. */
function fitFilter(filter) {
  const k = kernelSize(), rank = mode().rank, rows = rank === 2 ? k : 1;
  const fits = filter.values && filter.values.length === rows && filter.values[0].length === k;
  if (filter.preset === "custom") {
    if (!fits) filter.values = grid(rows, k, (i, j) => recentred(filter.values, rows, k, i, j));
  } else if (!available(filter.preset, rank, k)) {
    filter.values = PRESETS[rank].identity.make(k);
  } else if (!fits || filter.preset !== filter.shown) {
    filter.values = PRESETS[rank][filter.preset].make(k);
  }
  filter.shown = available(filter.preset, rank, k) || filter.preset === "custom" ? filter.preset : "identity";
}

/** Typed values kept centred when the kernel grows or shrinks. */
function recentred(values, rows, k, i, j) {
  if (!values || !values.length) return 0;
  const oi = i - ((rows - values.length) >> 1), oj = j - ((k - values[0].length) >> 1);
  return values[oi] && values[oi][oj] !== undefined ? values[oi][oj] : 0;
}

function addFilter(preset) {
  state.filters.push({ preset }); renderFilters();
}

function renderFilters() {
  const box = $("filters"); box.textContent = "";
  const k = kernelSize(), rank = mode().rank;
  state.filters.forEach((filter, f) => {
    fitFilter(filter);
    const div = document.createElement("div"); div.className = "filter";
    const select = document.createElement("select");
    select.id = `preset-${f}`;
    Object.entries(PRESETS[rank]).forEach(([name, p]) => {
      const text = p.size && p.size !== k ? `${name} (size ${p.size} only)` : name;
      select.add(new Option(text, name, false, name === filter.shown));
    });
    if (filter.preset === "custom") select.add(new Option("custom (typed)", "custom", false, true));
    select.onchange = () => {
      filter.preset = select.value; filter.shown = null;
      const size = PRESETS[rank][select.value].size;
      if (size) $("ksize").value = String(size);
      renderFilters();
    };
    const remove = document.createElement("button"); remove.type = "button"; remove.textContent = "remove";
    remove.setAttribute("aria-label", `remove filter ${f}`);
    remove.disabled = state.filters.length === 1;
    remove.onclick = () => { state.filters.splice(f, 1); renderFilters(); invalidate(); writeUrl(); };
    const label = document.createElement("label"); label.append(`filter ${f} `, select);
    const head = document.createElement("div"); head.className = "filter-head"; head.append(label, remove);
    div.append(head);
    if (filter.shown !== filter.preset) {
      const note = document.createElement("p"); note.className = "hint"; note.id = `preset-note-${f}`;
      const own = PRESETS[rank][filter.preset];
      note.textContent = own
        ? `${filter.preset} needs kernel size ${own.size}: identity until then`
        : `${filter.preset} is a ${3 - rank}-D kernel: identity here`;
      div.append(note);
    }
    div.append(kernelGrid(filter, f));
    box.append(div);
  });
}

function kernelGrid(filter, f) {
  const g = document.createElement("div"); g.className = "grid";
  g.style.gridTemplateColumns = `repeat(${filter.values[0].length}, minmax(0, 3.4rem))`;
  filter.values.forEach((row, i) => row.forEach((v, j) => {
    const input = document.createElement("input");
    input.value = String(Math.round(v * 1000) / 1000); input.id = `k-${f}-${i}-${j}`;
    input.inputMode = "decimal";
    input.setAttribute("aria-label", filter.values.length === 1 ? `filter ${f} tap ${j}` : `filter ${f} row ${i} column ${j}`);
    input.onchange = () => {
      filter.values[i][j] = Number(input.value) || 0;
      filter.preset = "custom"; filter.shown = "custom";
      const select = $(`preset-${f}`);
      if (![...select.options].some((o) => o.value === "custom")) select.add(new Option("custom (typed)", "custom"));
      select.value = "custom";
    };
    g.append(input);
  }));
  return g;
}

/** The filters as w: conv (F, C/groups, *kernel), transposed (C, F/groups, *kernel); each
 *  filter's kernel repeated over the channels of its group. */
function weightTensor(channels) {
  const groups = Math.max(1, Number($("groups").value) || 1), f = state.filters.length;
  const kernel = state.filters[0].values.length === 1 ? [kernelSize()] : [kernelSize(), kernelSize()];
  const taps = kernel.reduce((a, b) => a * b, 1);
  const transposed = $("mode").value === "transposed";
  const shape = transposed
    ? [channels, Math.max(1, Math.floor(f / groups)), ...kernel]
    : [f, Math.max(1, Math.floor(channels / groups)), ...kernel];
  const data = new Float32Array(shape[0] * shape[1] * taps);
  for (let a = 0; a < shape[0]; a++) for (let b = 0; b < shape[1]; b++) {
    const group = transposed ? Math.floor(a / Math.max(1, channels / groups)) : 0;
    const filter = state.filters[transposed ? group * shape[1] + b : a];
    if (filter) data.set(filter.values.flat(), (a * shape[1] + b) * taps);
  }
  return { shape, data };
}

// --- the wire: typed tensors with base64 float32 data --------------------------------------

function b64(floats) {
  const bytes = new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function unb64(tensor) {
  const text = atob(tensor.b64), bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return { shape: tensor.shape, data: new Float32Array(bytes.buffer) };
}

const wire = (t) => ({ shape: t.shape, dtype: "float32", b64: b64(t.data) });
/** The page holds one image or signal: it is sent as one sample, without its batch axis
 *  ((C, H, W), as PyTorch's modules take a single image), and out and dx come back so. */
const asSample = (t) => ({ shape: t.shape.slice(1), data: t.data });
const asBatch = (t) => ({ shape: [1, ...t.shape], data: t.data });

/** "2" -> 2, "2,1" -> [2, 1], "[[1,0],[1,0]]" -> nested list, "same" -> "same"; anything
 *  else is sent as typed, for the service to judge. */
function hyper(id) {
  const text = $(id).value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  if (/^\d+\s*,\s*\d+$/.test(text)) return text.split(",").map((s) => Number(s));
  if (text.startsWith("[")) { try { return JSON.parse(text); } catch (e) { return text; } }
  return text;
}

/** The hyperparameters this mode's route takes, and only those. */
function hyperparameters() {
  return Object.fromEntries(mode().hyper.map((id) => [id, hyper(id)]));
}

/** Forget every result: results on screen always match the controls that produced them.
 *  They are hidden in place (see playground.css), so nothing moves under the pointer. */
function invalidate() {
  state.lastForward = null;
  $("results").classList.add("stale-forward");
  invalidateBackward();
}

function invalidateBackward() {
  state.lastBackward = null;
  $("results").classList.add("stale-backward");
}

/** The API key typed in the page, if any, as the service reads it; kept for this tab only. */
function keyHeaders() {
  const key = $("authorization").value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function post(path, body) {
  clearErrors();
  const headers = { "content-type": "application/json", ...keyHeaders() };
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) { showErrors(answer.detail || [{ loc: [], msg: JSON.stringify(answer) }]); return null; }
  return answer;
}

function clearErrors() {
  document.querySelectorAll(".error").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
}

/** Each refusal beside the field its loc names. */
function showErrors(detail) {
  detail.forEach(({ loc, msg }) => {
    const field = (loc || []).find((part) => typeof part === "string" && $(`error-${part}`) && part !== "body");
    const box = $(`error-${field}`) || $("error-general");
    box.textContent = box.textContent ? `${box.textContent} ${msg}` : msg;
    if (field && $(field)) $(field).classList.add("invalid");
  });
}

// --- numbers and colours -------------------------------------------------------------------

const RED = [178, 24, 43], BLUE = [33, 102, 172];

/** Three significant digits, no trailing zeros: 0.1234 -> "0.123", -2 -> "-2". */
function fmt(v) { return String(Number(v.toPrecision(3))); }

/** How a plane's values map to colours: grey from min to max for data of one sign, or
 *  diverging (blue, white at zero, red) for signed data and for gradients. */
function scaleOf(plane, signed) {
  let lo = Infinity, hi = -Infinity;
  for (const v of plane) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const diverging = signed || (lo < 0 && hi > 0);
  return { lo, hi, diverging, m: Math.max(Math.abs(lo), Math.abs(hi)) };
}

function colourOf(v, scale) {
  if (scale.diverging) {
    const t = scale.m > 0 ? v / scale.m : 0, end = t >= 0 ? RED : BLUE, a = Math.min(1, Math.abs(t));
    return end.map((c) => Math.round(255 + (c - 255) * a));
  }
  const g = scale.hi > scale.lo ? Math.round(((v - scale.lo) / (scale.hi - scale.lo)) * 255) : 128;
  return [g, g, g];
}

function paint(canvas, h, w, colourAt) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true }), img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) img.data.set([...colourAt(p), 255], 4 * p);
  ctx.putImageData(img, 0, 0);
}

/** The colour bar under a map, with its numbers: min, middle, max (or -m, 0, m). */
function scaleBar(scale) {
  const box = document.createElement("div"); box.className = "scale";
  const bar = document.createElement("canvas"); bar.className = "bar"; bar.setAttribute("aria-hidden", "true");
  const from = scale.diverging ? -scale.m : scale.lo, to = scale.diverging ? scale.m : scale.hi;
  paint(bar, 1, 64, (p) => colourOf(from + ((to - from) * p) / 63, scale));
  const labels = document.createElement("div"); labels.className = "ticks";
  const mid = scale.diverging ? 0 : (from + to) / 2;
  [["lo", from], ["mid", mid], ["hi", to]].forEach(([cls, v]) => {
    const s = document.createElement("span"); s.className = cls; s.textContent = Number.isFinite(v) ? fmt(v) : "";
    labels.append(s);
  });
  box.append(bar, labels);
  return box;
}

// --- 2-D figures: a map, its outline layer, its scale, its value under the pointer ----------

/** A figure for a (H, W) plane: canvas, an SVG layer in pixel coordinates for outlines, a
 *  colour scale with numbers, and a readout of the value under the pointer. */
function mapFigure(figure, { plane, h, w, scale, colours, caption, name, valueAt, width }) {
  figure.textContent = "";
  const stage = document.createElement("div"); stage.className = "stage";
  const canvas = document.createElement("canvas");
  canvas.setAttribute("role", "img"); canvas.setAttribute("aria-label", `${name}: ${h} by ${w}`);
  paint(canvas, h, w, colours || ((p) => colourOf(plane[p], scale)));
  canvas.style.width = `${width}px`;
  const layer = document.createElementNS(SVG, "svg");
  layer.setAttribute("class", "overlay"); layer.setAttribute("aria-hidden", "true");
  layer.setAttribute("viewBox", `0 0 ${w} ${h}`); layer.setAttribute("preserveAspectRatio", "none");
  stage.append(canvas, layer);
  const readout = document.createElement("output"); readout.className = "readout";
  readout.textContent = "hover for values";
  canvas.addEventListener("mousemove", (event) => {
    const [i, j] = pixelAt(canvas, event, h, w); readout.textContent = valueAt(i, j);
  });
  canvas.addEventListener("mouseleave", () => { readout.textContent = "hover for values"; });
  const cap = document.createElement("figcaption"); cap.textContent = caption;
  figure.append(stage, scaleBar(scale), readout, cap);
  return { canvas, layer, readout, valueAt };
}

/** The pixel under the pointer. offsetX/Y and clientWidth/Height both leave the border out. */
function pixelAt(canvas, event, h, w) {
  const j = Math.min(w - 1, Math.max(0, Math.floor((event.offsetX / canvas.clientWidth) * w)));
  const i = Math.min(h - 1, Math.max(0, Math.floor((event.offsetY / canvas.clientHeight) * h)));
  return [i, j];
}

/** Outlines on a map's SVG layer: boxes {top, left, bottom, right, cls} (inclusive pixels). */
function outline(layer, boxes) {
  layer.textContent = "";
  boxes.forEach(({ top, left, bottom, right, cls }) => {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", left); r.setAttribute("y", top);
    r.setAttribute("width", right - left + 1); r.setAttribute("height", bottom - top + 1);
    r.setAttribute("class", cls); r.setAttribute("vector-effect", "non-scaling-stroke");
    layer.append(r);
  });
}

const pairOf = (v, rank) => (Array.isArray(v) ? v : Array(rank).fill(v));

/** [before, after] per axis, as the service resolves padding (TensorFlow's rule for "same"). */
function sides(hp, size, k) {
  const rank = size.length, stride = pairOf(hp.stride, rank), dil = pairOf(hp.dilation, rank);
  if (hp.padding === "valid") return size.map(() => [0, 0]);
  if (hp.padding === "same" || hp.padding === "same_lower") {
    return size.map((n, a) => {
      const out = Math.ceil(n / stride[a]);
      const total = Math.max((out - 1) * stride[a] + dil[a] * (k - 1) + 1 - n, 0);
      const small = total >> 1, large = total - small;
      return hp.padding === "same" ? [small, large] : [large, small];
    });
  }
  if (rank === 1 && Array.isArray(hp.padding) && hp.padding.length === 2 && !Array.isArray(hp.padding[0])) return [hp.padding];
  if (Array.isArray(hp.padding) && Array.isArray(hp.padding[0])) return hp.padding;
  return pairOf(hp.padding, rank).map((p) => [p, p]);
}

/** Per axis, the input positions the kernel's taps read for output position o (conv), or the
 *  output positions input position o writes to (transposed): start + dilation * t. */
function taps(o, axis) {
  const { hp, x } = state.last, k = kernelSize(), rank = mode().rank;
  const pads = sides(hp, x.shape.slice(2), k), s = pairOf(hp.stride, rank)[axis], d = pairOf(hp.dilation, rank)[axis];
  const start = o * s - pads[axis][0];
  return Array.from({ length: k }, (_, t) => start + d * t);
}

// --- forward ---------------------------------------------------------------------------------

/** Convolve with the controls as they are; a backward pass started meanwhile waits for it. */
function forward() {
  state.inflight = forwardPass();
  return state.inflight;
}

async function forwardPass() {
  stopPlaying();
  const x = inputTensor(), w = weightTensor(x.shape[1]), hp = hyperparameters(), m = $("mode").value;
  writeUrl();
  // The service's dry run first: the output's size and the cost, from shapes alone, refused
  // exactly as the real request would be (without sending the arrays).
  // Only the latest pass draws: an answer to an older one, arriving late, is dropped.
  const generation = (state.generation = (state.generation || 0) + 1);
  const plan = await post("/explain", { operation: mode().operation, x: { shape: asSample(x).shape, dtype: "float32" }, w: { shape: w.shape }, ...hp });
  if (generation !== state.generation) return;
  if (!plan) { invalidate(); return; }
  const answer = await post(mode().forward, { x: wire(asSample(x)), w: wire(w), ...hp });
  if (generation !== state.generation) return;
  if (!answer) { invalidate(); return; }
  state.lastInput = x; state.lastWeights = w; state.lastHyper = hp;
  state.last = { x, w, hp, mode: m };
  state.lastForward = asBatch(unb64(answer.out));
  $("results").classList.remove("stale-forward");
  invalidateBackward(); // the gradients shown were of the last forward pass
  state.lastPlan = plan;
  writeArithmetic(x, w, hp, plan);
  const f = state.lastForward.shape[1], select = $("loss-map"), keep = select.value;
  select.textContent = "";
  for (let fi = 0; fi < f; fi++) select.add(new Option(`map ${fi}`, String(fi)));
  if (Number(keep) < f) select.value = keep;
  if (mode().rank === 1) drawSignals(); else drawMaps();
  // The picked pixel stays while the maps keep their size; on new sizes it starts at the centre.
  const sameSize = state.pickedOn === state.lastForward.shape.join(",");
  placePixel(state.pending || (sameSize && state.pixel) || { f: state.pixel && state.pixel.f });
  state.pending = null; state.pickedOn = state.lastForward.shape.join(",");
  if (m === "transposed") placeSource(state.pendingSource || state.source || {});
  state.pendingSource = null;
  writeUrl();
}

/** Output map f's input channels: its group's, [first, last]. */
function groupChannels(f) {
  const groups = Number(state.last.hp.groups) || 1, c = state.last.x.shape[1], fo = state.lastForward.shape[1];
  const g = Math.floor(f / (fo / groups)), per = c / groups;
  return [g * per, (g + 1) * per - 1];
}

/** Which input channels a map reads: said when there is more than one channel to choose from. */
function channelText(f) {
  if (state.last.x.shape[1] === 1) return "";
  const [a, b] = groupChannels(f), names = state.last.x.shape[1] === 3 ? ["R", "G", "B"] : null;
  const one = (c) => (names ? `${c} (${names[c]})` : String(c));
  return a === b ? `, reads x channel ${one(a)}` : `, reads x channels ${one(a)} to ${one(b)}`;
}

function drawMaps() {
  const x = state.last.x, [, c, h, w] = x.shape, out = state.lastForward, [, f, ho, wo] = out.shape;
  const px = Math.min(8, 192 / Math.max(h, w));
  state.px = px;
  const colours = c === 3 ? (p) => [0, 1, 2].map((ch) => Math.round(x.data[ch * h * w + p] * 255)) : null;
  const inputScale = c === 3 ? { lo: 0, hi: 1, diverging: false, m: 1 } : scaleOf(x.data, false);
  state.inputFigure = mapFigure($("input-figure"), {
    plane: x.data, h, w, scale: inputScale, colours, width: w * px, name: "input x",
    caption: c === 3 ? "input x (RGB; each channel 0 to 1)" : "input x",
    valueAt: (i, j) => (c === 3
      ? `x[0, :, ${i}, ${j}] = (${[0, 1, 2].map((ch) => fmt(x.data[ch * h * w + i * w + j])).join(", ")})`
      : `x[0, 0, ${i}, ${j}] = ${fmt(x.data[i * w + j])}`),
  });
  state.inputFigure.canvas.id = "input-canvas";
  if (state.last.mode === "transposed") {
    state.inputFigure.canvas.classList.add("pickable");
    state.inputFigure.canvas.addEventListener("click", (event) => {
      const [i, j] = pixelAt(state.inputFigure.canvas, event, h, w); placeSource({ i, j });
    });
  }
  const box = $("outputs"); box.textContent = ""; state.outputFigures = [];
  for (let fi = 0; fi < f; fi++) {
    const plane = out.data.subarray(fi * ho * wo, (fi + 1) * ho * wo), figure = document.createElement("figure");
    const preset = state.filters[fi] ? state.filters[fi].shown : "";
    const fig = mapFigure(figure, {
      plane, h: ho, w: wo, scale: scaleOf(plane, false), width: wo * px, name: `output map ${fi}`,
      caption: `out[0, ${fi}] (${preset}${channelText(fi)})`,
      valueAt: (i, j) => `out[0, ${fi}, ${i}, ${j}] = ${fmt(plane[i * wo + j])}`,
    });
    fig.canvas.className = "feature-map"; fig.canvas.dataset.filter = String(fi);
    fig.canvas.addEventListener("click", (event) => {
      const [i, j] = pixelAt(fig.canvas, event, ho, wo);
      $("loss").value = "pixel"; placePixel({ f: fi, i, j }); invalidateBackward(); writeUrl();
    });
    state.outputFigures.push(fig); box.append(figure);
  }
}

/** Select output pixel (f, i, j), clamped to the map (the centre when not given); outline it,
 *  and in a convolution the input pixels its window reads. */
function placePixel({ f, i, j }) {
  const [, fo, ...size] = state.lastForward.shape, rank = size.length;
  const ho = rank === 2 ? size[0] : 1, wo = size[rank - 1];
  const clamp = (v, n, d) => (Number.isInteger(v) ? Math.min(n - 1, Math.max(0, v)) : d);
  const pixel = { f: clamp(f, fo, Number($("loss-map").value) || 0), i: clamp(i, ho, ho >> 1), j: clamp(j, wo, wo >> 1) };
  state.pixel = pixel;
  $("loss-map").value = String(pixel.f);
  $("pixel-row").value = pixel.i; $("pixel-row").max = ho - 1;
  $("pixel-col").value = pixel.j; $("pixel-col").max = wo - 1;
  $("position").max = wo - 1; $("position").value = pixel.j;
  $("loss-pixel").textContent = rank === 2 ? `pixel (${pixel.i}, ${pixel.j}) of map ${pixel.f}` : `position ${pixel.j} of map ${pixel.f}`;
  // The picked value in its map's readout: what a pointer would show, for the keyboard too.
  state.outputFigures.forEach((fig) => { fig.readout.textContent = "hover for values"; });
  const picked = state.outputFigures[pixel.f];
  picked.readout.textContent = rank === 2 ? picked.valueAt(pixel.i, pixel.j) : picked.valueAt(pixel.j);
  if (rank === 1) { drawWindow(); return; }
  state.outputFigures.forEach((fig, fi) => {
    const boxes = fi === pixel.f ? [{ top: pixel.i, left: pixel.j, bottom: pixel.i, right: pixel.j, cls: "picked" }] : [];
    if (state.last.mode === "transposed" && state.source) boxes.push(...spreadBoxes());
    outline(fig.layer, boxes);
  });
  if (state.last.mode === "conv2d") outline(state.inputFigure.layer, fieldBoxes(pixel));
  writeProbeHint();
}

/** The receptive field of output pixel (i, j): its span, and each tap, on the input. */
function fieldBoxes({ i, j }) {
  const rows = taps(i, 0), cols = taps(j, 1), boxes = [];
  rows.forEach((r) => cols.forEach((c) => boxes.push({ top: r, left: c, bottom: r, right: c, cls: "tap" })));
  boxes.push({ top: rows[0], left: cols[0], bottom: rows[rows.length - 1], right: cols[cols.length - 1], cls: "field" });
  return boxes;
}

/** Transposed: where input pixel (i, j) spreads to, on every output map. */
function spreadBoxes() {
  return fieldBoxes(state.source).map((b) => ({ ...b, cls: b.cls === "field" ? "spread" : "tap" }));
}

function placeSource({ i, j }) {
  const [, , h, w] = state.last.x.shape;
  const clamp = (v, n) => (Number.isInteger(v) ? Math.min(n - 1, Math.max(0, v)) : n >> 1);
  state.source = { i: clamp(i, h), j: clamp(j, w) };
  $("source-row").value = state.source.i; $("source-row").max = h - 1;
  $("source-col").value = state.source.j; $("source-col").max = w - 1;
  const s = state.source;
  outline(state.inputFigure.layer, [{ top: s.i, left: s.j, bottom: s.i, right: s.j, cls: "picked" }]);
  placePixel(state.pixel || {});
  writeUrl();
}

function writeProbeHint() {
  const m = state.last.mode, p = state.pixel, text = {
    conv2d: `Click a feature map, or type a row and column: the outline on the input is the window ` +
      `that output pixel (${p.i}, ${p.j}) reads, each small square one tap of the kernel (dilation spreads them).`,
    transposed: state.source ? `Click the input, or type a row and column: input pixel (${state.source.i}, ${state.source.j}) ` +
      `stamps the kernel onto the outlined block of every output map, one small square per tap.` : "",
    conv1d: `Move the slider, or press "Slide the kernel": the shaded band on the input is the window ` +
      `output position ${p.j} reads, a dot per tap.`,
  }[m];
  $("probe-hint").textContent = text;
}

/** The size arithmetic spelled out per axis, each result as the service's dry run answered it. */
function writeArithmetic(x, w, hp, plan) {
  const outShape = [1, ...plan.outputs.out.shape], m = $("mode").value, rank = x.shape.length - 2, size = x.shape.slice(2), k = w.shape[2];
  const stride = pairOf(hp.stride, rank), dil = pairOf(hp.dilation, rank), pads = sides(hp, size, k);
  const axes = rank === 2 ? ["height", "width"] : ["length"];
  const lines = [{
    conv2d: `x (N, C, H, W) = (${x.shape.join(", ")});  w (F, C/groups, KH, KW) = (${w.shape.join(", ")})`,
    transposed: `x (N, C_in, H, W) = (${x.shape.join(", ")});  w (C_in, C_out/groups, KH, KW) = (${w.shape.join(", ")})`,
    conv1d: `x (N, C, L) = (${x.shape.join(", ")});  w (F, C/groups, K) = (${w.shape.join(", ")})`,
  }[m], `sent as one sample, without the batch axis: x (${x.shape.slice(1).join(", ")}), out (${plan.outputs.out.shape.join(", ")})`];
  axes.forEach((axis, a) => {
    const out = outShape[2 + a], [before, after] = pads[a];
    if (m === "transposed") {
      const op = pairOf(hp.output_padding, rank)[a];
      lines.push(`output ${axis} = (${size[a]}-1)*${stride[a]} - ${before} - ${after} + ${dil[a]}*(${k}-1) + ${op} + 1 = ${out}`);
      return;
    }
    const pad = before === after ? `2*${before}` : `${before}+${after}`;
    const ratio = `(${size[a]} + ${pad} - ${dil[a]}*(${k}-1) - 1)/${stride[a]}`;
    lines.push(`output ${axis} = ${hp.rounding === "floor" ? `floor(${ratio})` : ratio} + 1 = ${out}`);
  });
  if (hp.padding_mode && hp.padding_mode !== "zeros") lines.push(`padding holds the input, ${hp.padding_mode}`);
  if (Number(hp.groups) > 1) {
    lines.push(`groups = ${hp.groups}: each output map reads ${x.shape[1] / hp.groups} of the ${x.shape[1]} input channels`);
  }
  const names = { conv2d: "out (N, F, H_out, W_out)", transposed: "out (N, C_out, H_out, W_out)", conv1d: "out (N, F, L_out)" }[m];
  lines.push(`${names} = (${outShape.join(", ")})`);
  lines.push(`${plan.flops.toLocaleString("en")} flops, ${(plan.memory_bytes / 1024).toFixed(1)} KiB at most (POST /explain)`);
  $("arithmetic").textContent = lines.join("\n");
}

// --- 1-D: plots --------------------------------------------------------------------------

const PLOT = { w: 360, h: 150, left: 46, right: 8, top: 10, bottom: 22 };

/** A line plot of values with its axis numbers, a layer for the kernel's window, and a readout. */
function plotFigure(figure, { values, caption, name, valueAt, small }) {
  figure.textContent = "";
  const P = small ? { ...PLOT, w: 200, h: 110 } : PLOT;
  const n = values.length, scale = scaleOf(values, false);
  const lo = Math.min(0, scale.lo), hi = Math.max(0, scale.hi) > lo ? Math.max(0, scale.hi) : lo + 1;
  const x = (i) => P.left + ((i + 0.5) * (P.w - P.left - P.right)) / n;
  const y = (v) => P.top + ((hi - v) * (P.h - P.top - P.bottom)) / (hi - lo);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${P.w} ${P.h}`); svg.setAttribute("class", "plot");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", `${name}: ${n} values from ${fmt(scale.lo)} to ${fmt(scale.hi)}`);
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    Object.entries(attrs).forEach(([a, v]) => e.setAttribute(a, v));
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const layer = el("g", { class: "window" });
  el("line", { x1: P.left, x2: P.w - P.right, y1: y(0), y2: y(0), class: "axis" });
  el("line", { x1: P.left, x2: P.left, y1: P.top, y2: P.h - P.bottom, class: "axis" });
  // Zero is marked unless it is an end already, or so near one that the numbers would overlap.
  [hi, 0, lo].filter((v) => v !== 0 || (Math.abs(y(0) - y(lo)) > 12 && Math.abs(y(0) - y(hi)) > 12) || lo === 0 || hi === 0)
    .filter((v, i, all) => all.indexOf(v) === i).forEach((v) => {
    el("text", { x: P.left - 4, y: y(v) + 3, class: "tick y" }, fmt(v));
  });
  el("text", { x: x(0), y: P.h - 6, class: "tick x" }, "0");
  el("text", { x: x(n - 1), y: P.h - 6, class: "tick x" }, String(n - 1));
  el("polyline", { points: Array.from(values, (v, i) => `${x(i).toFixed(2)},${y(v).toFixed(2)}`).join(" "), class: "line" });
  Array.from(values).forEach((v, i) => el("circle", { cx: x(i), cy: y(v), r: n > 40 ? 1.6 : 2.4, class: "point" }));
  const readout = document.createElement("output"); readout.className = "readout";
  readout.textContent = "hover for values";
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect(), u = ((event.clientX - box.left) / box.width) * P.w;
    const i = Math.min(n - 1, Math.max(0, Math.floor(((u - P.left) / (P.w - P.left - P.right)) * n)));
    readout.textContent = valueAt(i);
  });
  svg.addEventListener("mouseleave", () => { readout.textContent = "hover for values"; });
  const cap = document.createElement("figcaption"); cap.textContent = caption;
  figure.append(svg, readout, cap);
  return { svg, layer, x, y, values, readout, valueAt };
}

function drawSignals() {
  const x = state.last.x, out = state.lastForward, [, f, lo] = out.shape;
  state.inputFigure = plotFigure($("input-figure"), {
    values: x.data, name: "input signal x", caption: "input x",
    valueAt: (i) => `x[0, 0, ${i}] = ${fmt(x.data[i])}`,
  });
  const box = $("outputs"); box.textContent = ""; state.outputFigures = [];
  for (let fi = 0; fi < f; fi++) {
    const values = out.data.subarray(fi * lo, (fi + 1) * lo), figure = document.createElement("figure");
    const preset = state.filters[fi] ? state.filters[fi].shown : "";
    const fig = plotFigure(figure, {
      values, name: `output signal ${fi}`, caption: `out[0, ${fi}] (${preset})`,
      valueAt: (i) => `out[0, ${fi}, ${i}] = ${fmt(values[i])}`,
    });
    fig.svg.dataset.filter = String(fi); fig.svg.classList.add("feature-plot");
    state.outputFigures.push(fig); box.append(figure);
  }
}

/** The kernel at output position j: a band over the input span it reads, a dot per tap
 *  (dilation spaces them), and the output point it makes. */
function drawWindow() {
  const { j, f } = state.pixel, t = taps(j, 0), input = state.inputFigure;
  const mark = (fig, tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    Object.entries(attrs).forEach(([a, v]) => e.setAttribute(a, v)); fig.layer.append(e);
  };
  input.layer.textContent = "";
  const half = (input.x(1) - input.x(0)) / 2;
  mark(input, "rect", { x: input.x(t[0]) - half, width: input.x(t[t.length - 1]) - input.x(t[0]) + 2 * half, y: PLOT.top, height: PLOT.h - PLOT.top - PLOT.bottom, class: "band" });
  const n = input.values.length;
  t.forEach((p) => mark(input, "circle", { cx: input.x(p), cy: input.y(p >= 0 && p < n ? input.values[p] : 0), r: 4, class: p >= 0 && p < n ? "tap" : "tap padded" }));
  state.outputFigures.forEach((fig, fi) => {
    fig.layer.textContent = "";
    if (fi === f) mark(fig, "circle", { cx: fig.x(j), cy: fig.y(fig.values[j]), r: 5, class: "picked" });
  });
  writeProbeHint();
}

function stopPlaying() {
  if (state.playing) clearInterval(state.playing);
  state.playing = null; $("play").setAttribute("aria-pressed", "false");
}

function togglePlaying() {
  if (state.playing) { stopPlaying(); return; }
  if (!state.lastForward) return;
  $("play").setAttribute("aria-pressed", "true");
  state.playing = setInterval(() => {
    const n = state.lastForward ? state.lastForward.shape[2] : 0;
    if (!n) { stopPlaying(); return; }
    placePixel({ ...state.pixel, j: (state.pixel.j + 1) % n }); invalidateBackward();
  }, 180);
}

// --- backward --------------------------------------------------------------------------------

function lossGradient() {
  const out = state.lastForward, [, f, ...size] = out.shape, per = size.reduce((a, b) => a * b, 1);
  const dout = new Float32Array(out.data.length), map = Number($("loss-map").value || 0);
  if ($("loss").value === "pixel") {
    const { f: pf, i, j } = state.pixel, w = size[size.length - 1];
    dout[pf * per + (size.length === 2 ? i * w : 0) + j] = 1; // d(out[f, i, j]) / d(out) is one-hot
  } else {
    for (let p = 0; p < per; p++) dout[map * per + p] = 2 * out.data[map * per + p]; // d(sum out^2)
  }
  return { shape: out.shape, data: dout, f };
}

async function backward() {
  stopPlaying();
  await state.inflight; // the maps on screen are about to change: differentiate those
  if (!state.lastForward) await forward();
  if (!state.lastForward) return;
  const dout = lossGradient(), x = state.lastInput, w = state.lastWeights;
  const answer = await post(mode().backward, { x: wire(asSample(x)), w: wire(w), dout: wire(asSample(dout)), ...state.lastHyper });
  if (!answer) { invalidateBackward(); return; }
  const dx = asBatch(unb64(answer.dx)), dw = unb64(answer.dw);
  state.lastBackward = { dout, dx, dw, db: unb64(answer.db) };
  const [, c, ...size] = dx.shape, per = size.reduce((a, b) => a * b, 1), summed = new Float32Array(per);
  for (let ch = 0; ch < c; ch++) for (let p = 0; p < per; p++) summed[p] += dx.data[ch * per + p];
  state.lastBackward.dxSummed = summed;
  $("results").classList.remove("stale-backward");
  if (size.length === 1) drawGradients1d(summed, filterPlanes(dw)); else drawGradients2d(summed, size, filterPlanes(dw));
}

/** dw per filter, summed over the channels it reads: conv dw (F, C/g, *K); transposed
 *  dw (C, F/g, *K), where filter f is column f % (F/g) of its group's rows. */
function filterPlanes(dw) {
  const [a, b, ...kernel] = dw.shape, taps = kernel.reduce((p, q) => p * q, 1);
  const transposed = state.last.mode === "transposed", f = state.filters.length, planes = [];
  for (let fi = 0; fi < f; fi++) {
    const plane = new Float32Array(taps);
    const rows = transposed ? groupChannels(fi) : [fi, fi];
    for (let r = rows[0]; r <= rows[1] && r < a; r++) {
      const cols = transposed ? [fi % b] : Array.from({ length: b }, (_, q) => q);
      cols.forEach((col) => { for (let p = 0; p < taps; p++) plane[p] += dw.data[(r * b + col) * taps + p]; });
    }
    planes.push(plane);
  }
  return { planes, kernel };
}

function drawGradients2d(summed, [h, w], { planes, kernel: [k] }) {
  const px = state.px || 192 / Math.max(h, w);
  const dx = mapFigure($("dx-figure"), {
    plane: summed, h, w, scale: scaleOf(summed, true), width: w * px, name: "dx summed over channels",
    caption: "dx, summed over channels: red > 0, blue < 0",
    valueAt: (i, j) => `Σc dx[0, c, ${i}, ${j}] = ${fmt(summed[i * w + j])}`,
  });
  dx.canvas.id = "dx-canvas";
  const box = $("dw"); box.textContent = "";
  planes.forEach((plane, fi) => {
    const figure = document.createElement("figure");
    const fig = mapFigure(figure, {
      plane, h: k, w: k, scale: scaleOf(plane, true), width: 96, name: `dw of filter ${fi}`,
      caption: `dw[${fi}], summed over channels`,
      valueAt: (i, j) => `Σc dw[${fi}, c, ${i}, ${j}] = ${fmt(plane[i * k + j])}`,
    });
    fig.canvas.classList.add("small");
    box.append(figure);
  });
}

function drawGradients1d(summed, { planes }) {
  plotFigure($("dx-figure"), {
    values: summed, name: "dx", caption: "dx",
    valueAt: (i) => `dx[0, 0, ${i}] = ${fmt(summed[i])}`,
  }).svg.id = "dx-plot";
  const box = $("dw"); box.textContent = "";
  planes.forEach((plane, fi) => {
    const figure = document.createElement("figure");
    plotFigure(figure, { values: plane, name: `dw of filter ${fi}`, caption: `dw[${fi}]`, small: true, valueAt: (i) => `dw[${fi}, 0, ${i}] = ${fmt(plane[i])}` })
      .svg.classList.add("small");
    box.append(figure);
  });
}

// --- the page's state in its URL: a view can be shared and reloaded ------------------------

const URL_FIELDS = ["mode", "sample", "channels", "ksize", "stride", "padding", "output_padding",
  "padding_mode", "dilation", "groups", "rounding", "loss"];

/** A filter as text: its preset's name, or its numbers (typed or random ones) row by row. */
function filterText(filter) {
  return filter.preset === "custom" || filter.preset === "random"
    ? filter.values.flat().map(String).join(",") : filter.preset; // exact: a shared view computes the same
}

function writeUrl() {
  const q = new URLSearchParams();
  URL_FIELDS.forEach((id) => q.set(id, $(id).value));
  q.set("filters", state.filters.map(filterText).join(";"));
  if (state.pixel) q.set("pixel", [state.pixel.f, state.pixel.i, state.pixel.j].join(","));
  if (state.source && $("mode").value === "transposed") q.set("source", [state.source.i, state.source.j].join(","));
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function readUrl() {
  const q = new URLSearchParams(location.search);
  if (q.has("mode") && MODES[q.get("mode")]) setMode(q.get("mode"), false);
  URL_FIELDS.slice(1).forEach((id) => {
    const v = q.get(id);
    if (v === null) return;
    if ($(id).matches("select") && ![...$(id).options].some((o) => o.value === v)) return;
    $(id).value = v;
  });
  if (q.get("filters")) {
    const rank = mode().rank;
    state.filters = q.get("filters").split(";").map((text) => {
      if (PRESETS[rank][text] || PRESETS[3 - rank][text]) return { preset: text };
      const numbers = text.split(",").map(Number), k = kernelSize();
      const rows = rank === 2 ? k : 1;
      return numbers.length === rows * k && numbers.every(Number.isFinite)
        ? { preset: "custom", values: grid(rows, k, (i, j) => numbers[i * k + j]) }
        : { preset: "identity" };
    });
  }
  const ints = (name) => (q.get(name) || "").split(",").map(Number);
  if (q.get("pixel")) { const [f, i, j] = ints("pixel"); state.pending = { f, i, j }; }
  if (q.get("source")) { const [i, j] = ints("source"); state.pendingSource = { i, j }; }
}

// --- wiring ----------------------------------------------------------------------------------

/** Show the controls and labels that apply to this mode and loss; hide the rest. */
function showApplicable() {
  const m = $("mode").value;
  document.querySelectorAll("[data-modes]").forEach((e) => { e.hidden = !e.dataset.modes.split(" ").includes(m); });
  $("loss-pixel").hidden = $("loss").value !== "pixel";
  $("geometry-hint").textContent = mode().hint;
}

/** Switch mode: its samples, and (unless the URL set them) its usual hyperparameters. */
function setMode(m, withDefaults) {
  stopPlaying();
  $("mode").value = m;
  const names = Object.keys(mode().rank === 1 ? SIGNALS : SAMPLES), keep = $("sample").value;
  $("sample").textContent = "";
  names.forEach((name) => $("sample").add(new Option(name, name)));
  if (names.includes(keep)) $("sample").value = keep;
  if (withDefaults) {
    Object.entries(mode().defaults).forEach(([id, v]) => { $(id).value = v; });
    $("ksize").value = "3";
    state.filters = mode().filters.map((preset) => ({ preset }));
  }
  state.source = null; // a transposed view starts at the input's middle pixel
  showApplicable();
}

function init() {
  // A changed control makes every result on screen stale: forget them until the next answer.
  // (The controls' own handlers run first: a forward they start draws after this clears.)
  // The API key changes who may compute, not what: it leaves the results alone.
  $("controls").addEventListener("change", (event) => {
    if (event.target.id !== "authorization") { invalidate(); writeUrl(); }
  });
  $("mode").onchange = () => {
    setMode($("mode").value, true); state.pixel = null; renderFilters(); loadSample($("sample").value); forward();
  };
  $("sample").onchange = () => { loadSample($("sample").value); forward(); };
  $("upload").onchange = (event) => { if (event.target.files[0]) loadUpload(event.target.files[0]); };
  $("channels").onchange = forward;
  $("ksize").onchange = renderFilters;
  $("add-filter").onclick = () => { addFilter("random"); invalidate(); writeUrl(); };
  $("run-forward").onclick = forward;
  $("authorization").value = sessionStorage.getItem("convengine-api-key") || "";
  $("authorization").onchange = () => {
    const key = $("authorization").value.trim();
    if (key === (sessionStorage.getItem("convengine-api-key") || "")) return; // nothing new to try
    sessionStorage.setItem("convengine-api-key", key); forward();
  };
  $("run-backward").onclick = backward;
  $("loss").onchange = () => { showApplicable(); invalidateBackward(); writeUrl(); };
  const repick = () => { if (state.lastForward) { placePixel({ f: Number($("loss-map").value), i: Number($("pixel-row").value), j: Number($("pixel-col").value) }); invalidateBackward(); writeUrl(); } };
  ["loss-map", "pixel-row", "pixel-col"].forEach((id) => $(id).addEventListener("change", repick));
  $("position").addEventListener("input", () => {
    if (state.lastForward) { placePixel({ ...state.pixel, j: Number($("position").value) }); invalidateBackward(); writeUrl(); }
  });
  ["source-row", "source-col"].forEach((id) => $(id).addEventListener("change", () => {
    if (state.lastForward) placeSource({ i: Number($("source-row").value), j: Number($("source-col").value) });
  }));
  $("play").onclick = togglePlaying;
  setMode("conv2d", true);
  readUrl();
  showApplicable();
  renderFilters();
  loadSample($("sample").value);
  state.ready = forward();
}

window.playground = { state, forward, backward, addFilter, PRESETS };
init();
