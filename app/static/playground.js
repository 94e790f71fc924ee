"use strict";
// The playground: builds requests for the service's own public API, draws what comes back.

const SIZE = 49; // sample images are SIZE x SIZE: odd, so stride 2 fits odd kernels
const $ = (id) => document.getElementById(id);

const PRESETS = {
  identity: (k) => grid(k, (i, j) => (i === (k >> 1) && j === (k >> 1) ? 1 : 0)),
  "box blur": (k) => grid(k, () => 1 / (k * k)),
  gaussian: (k) => {
    const s = Math.max(k / 4, 0.5), c = (k - 1) / 2;
    const g = grid(k, (i, j) => Math.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * s * s)));
    const total = g.flat().reduce((a, b) => a + b, 0);
    return g.map((row) => row.map((v) => v / total));
  },
  sharpen: (k) => grid(k, (i, j) => (i === (k >> 1) && j === (k >> 1) ? k * k : -1)),
  "sobel x": () => [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
  "sobel y": () => [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
  laplacian: () => [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
  random: (k) => grid(k, () => Math.round((Math.random() * 2 - 1) * 100) / 100),
};
const FIXED_3x3 = new Set(["sobel x", "sobel y", "laplacian"]);

function grid(k, f) {
  return Array.from({ length: k }, (_, i) => Array.from({ length: k }, (_, j) => f(i, j)));
}

// --- sample images: drawn on a canvas, so no image files need licensing ---------------------

const SAMPLES = {
  shapes: (ctx) => {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, SIZE, SIZE);
    ctx.fillStyle = "#fff"; ctx.fillRect(6, 6, 16, 16);
    ctx.beginPath(); ctx.arc(32, 32, 10, 0, 2 * Math.PI); ctx.fill();
  },
  checkerboard: (ctx) => {
    for (let i = 0; i < SIZE; i += 8) for (let j = 0; j < SIZE; j += 8) {
      ctx.fillStyle = ((i + j) / 8) % 2 ? "#fff" : "#000"; ctx.fillRect(j, i, 8, 8);
    }
  },
  letter: (ctx) => {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, SIZE, SIZE);
    ctx.fillStyle = "#000"; ctx.font = "bold 40px sans-serif"; ctx.textAlign = "center";
    ctx.textBaseline = "middle"; ctx.fillText("A", SIZE / 2, SIZE / 2 + 2);
  },
  "colour blobs": (ctx) => {
    ctx.fillStyle = "#102040"; ctx.fillRect(0, 0, SIZE, SIZE);
    [["#e33", 14, 14], ["#3c3", 34, 18], ["#36f", 22, 34]].forEach(([c, x, y]) => {
      ctx.fillStyle = c; ctx.beginPath(); ctx.arc(x, y, 11, 0, 2 * Math.PI); ctx.fill();
    });
  },
};

const state = { rgba: null, width: SIZE, height: SIZE, filters: [], lastInput: null, lastForward: null, lastBackward: null, pixel: null };

function loadSample(name) {
  const canvas = document.createElement("canvas");
  canvas.width = SIZE; canvas.height = SIZE;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  SAMPLES[name](ctx);
  setImage(ctx.getImageData(0, 0, SIZE, SIZE));
}

function setImage(imageData) {
  state.rgba = imageData.data; state.width = imageData.width; state.height = imageData.height;
}

function loadUpload(file) {
  const img = new Image();
  img.onload = () => {
    const scale = Math.min(1, 96 / Math.max(img.width, img.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.width * scale));
    canvas.height = Math.max(1, Math.round(img.height * scale));
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    setImage(ctx.getImageData(0, 0, canvas.width, canvas.height));
    URL.revokeObjectURL(img.src);
    forward();
  };
  img.src = URL.createObjectURL(file);
}

/** The image as x: Float32Array (1, C, H, W) in [0, 1]. */
function inputTensor() {
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

function addFilter(preset) {
  state.filters.push({ preset, values: PRESETS[preset](kernelSize()) });
  renderFilters();
}

function renderFilters() {
  const box = $("filters"); box.textContent = "";
  state.filters.forEach((filter, f) => {
    const div = document.createElement("div"); div.className = "filter";
    const select = document.createElement("select");
    select.setAttribute("aria-label", `preset of filter ${f}`);
    select.id = `preset-${f}`;
    Object.keys(PRESETS).forEach((name) => select.add(new Option(name, name, false, name === filter.preset)));
    select.onchange = () => {
      filter.preset = select.value;
      if (FIXED_3x3.has(select.value)) $("ksize").value = "3";
      resizeAll(); filter.values = PRESETS[select.value](kernelSize()); renderFilters();
    };
    const remove = document.createElement("button"); remove.type = "button"; remove.textContent = "remove";
    remove.disabled = state.filters.length === 1;
    remove.onclick = () => { state.filters.splice(f, 1); renderFilters(); };
    const label = document.createElement("label"); label.append(`filter ${f} `, select, " ", remove);
    const g = document.createElement("div"); g.className = "grid";
    g.style.gridTemplateColumns = `repeat(${filter.values.length}, auto)`;
    filter.values.forEach((row, i) => row.forEach((v, j) => {
      const input = document.createElement("input");
      input.value = String(Math.round(v * 1000) / 1000); input.id = `k-${f}-${i}-${j}`;
      input.setAttribute("aria-label", `filter ${f} row ${i} column ${j}`);
      input.onchange = () => { filter.values[i][j] = Number(input.value) || 0; };
      g.append(input);
    }));
    div.append(label, g); box.append(div);
  });
}

function resizeAll() {
  const k = kernelSize();
  state.filters.forEach((f) => {
    f.values = FIXED_3x3.has(f.preset) && k === 3 ? PRESETS[f.preset](3) : PRESETS[FIXED_3x3.has(f.preset) ? "identity" : f.preset](k);
    if (FIXED_3x3.has(f.preset) && k !== 3) f.preset = "identity";
  });
}

/** w: (F, C, K, K), each filter's kernel repeated over the input channels. */
function weightTensor(channels) {
  const k = kernelSize(), f = state.filters.length;
  const data = new Float32Array(f * channels * k * k);
  state.filters.forEach((filter, fi) => {
    for (let c = 0; c < channels; c++) filter.values.flat().forEach((v, p) => {
      data[((fi * channels + c) * k * k) + p] = v;
    });
  });
  return { shape: [f, channels, k, k], data };
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

/** "2" -> 2, "2,1" -> [2, 1], "[[1,0],[1,0]]" -> nested list, "same" -> "same"; anything
 *  else is sent as typed, for the service to judge. */
function hyper(id) {
  const text = $(id).value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  if (/^\d+\s*,\s*\d+$/.test(text)) return text.split(",").map((s) => Number(s));
  if (text.startsWith("[")) { try { return JSON.parse(text); } catch (e) { return text; } }
  return text;
}

function hyperparameters() {
  return {
    stride: hyper("stride"), padding: hyper("padding"), dilation: hyper("dilation"),
    padding_mode: $("padding_mode").value, rounding: $("rounding").value,
  };
}

/** Forget every result: results on screen always match the controls that produced them.
 *  They are hidden in place (see playground.css), so nothing moves under the pointer. */
function invalidate() {
  state.lastForward = null; state.pixel = null; $("loss-pixel").textContent = "";
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
  document.querySelectorAll("input.invalid").forEach((e) => e.classList.remove("invalid"));
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

// --- forward ---------------------------------------------------------------------------------

async function forward() {
  const x = inputTensor(), w = weightTensor(x.shape[1]), hp = hyperparameters();
  const answer = await post("/forward", { x: wire(x), w: wire(w), ...hp });
  if (!answer) { invalidate(); return; }
  state.lastInput = x; state.lastWeights = w; state.lastHyper = hp;
  state.lastForward = unb64(answer.out);
  state.pixel = null;
  $("results").classList.remove("stale-forward");
  invalidateBackward(); // the gradients shown were of the last forward pass
  drawInput(x); drawOutputs(state.lastForward); writeArithmetic(x, w, hp, state.lastForward.shape);
  const select = $("loss-map"); select.textContent = "";
  state.filters.forEach((_, f) => select.add(new Option(`map ${f}`, String(f))));
  $("loss-pixel").textContent = "";
}

function pairOf(v) { return Array.isArray(v) ? v : [v, v]; }

/** [before, after] per axis, as the service resolves padding (TensorFlow's rule for "same"). */
function sides(hp, size, k) {
  const stride = pairOf(hp.stride), dil = pairOf(hp.dilation);
  if (hp.padding === "valid") return [[0, 0], [0, 0]];
  if (hp.padding === "same" || hp.padding === "same_lower") {
    return [0, 1].map((a) => {
      const out = Math.ceil(size[a] / stride[a]);
      const total = Math.max((out - 1) * stride[a] + dil[a] * (k - 1) + 1 - size[a], 0);
      const small = total >> 1, large = total - small;
      return hp.padding === "same" ? [small, large] : [large, small];
    });
  }
  if (Array.isArray(hp.padding) && Array.isArray(hp.padding[0])) return hp.padding;
  return pairOf(hp.padding).map((p) => [p, p]);
}

function writeArithmetic(x, w, hp, outShape) {
  const [, c, h, wd] = x.shape, [f, , k] = w.shape;
  const stride = pairOf(hp.stride), dil = pairOf(hp.dilation), pads = sides(hp, [h, wd], k);
  const lines = [`x (N, C, H, W) = (1, ${c}, ${h}, ${wd});  w (F, C, KH, KW) = (${f}, ${c}, ${k}, ${k})`];
  ["height", "width"].forEach((axis, a) => {
    const size = a ? wd : h, out = outShape[2 + a], [before, after] = pads[a];
    const pad = before === after ? `2*${before}` : `${before}+${after}`;
    const ratio = `(${size} + ${pad} - ${dil[a]}*(${k}-1) - 1)/${stride[a]}`;
    lines.push(`output ${axis} = ${hp.rounding === "floor" ? `floor(${ratio})` : ratio} + 1 = ${out}`);
  });
  if (hp.padding_mode !== "zeros") lines.push(`padding holds the input, ${hp.padding_mode}`);
  lines.push(`out (N, F, H_out, W_out) = (${outShape.join(", ")})`);
  $("arithmetic").textContent = lines.join("\n");
}

/** A (H, W) plane as grey levels, min -> black, max -> white. */
function drawGrey(canvas, plane, h, w) {
  canvas.width = w; canvas.height = h;
  let lo = Infinity, hi = -Infinity;
  for (const v of plane) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const ctx = canvas.getContext("2d", { willReadFrequently: true }), img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    const g = hi > lo ? Math.round(((plane[p] - lo) / (hi - lo)) * 255) : 128;
    img.data.set([g, g, g, 255], 4 * p);
  }
  ctx.putImageData(img, 0, 0);
}

/** A (H, W) plane as a diverging heat map: white at zero, red positive, blue negative. */
function drawHeat(canvas, plane, h, w) {
  canvas.width = w; canvas.height = h;
  let m = 0;
  for (const v of plane) m = Math.max(m, Math.abs(v));
  const ctx = canvas.getContext("2d", { willReadFrequently: true }), img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    const t = m > 0 ? plane[p] / m : 0, fade = Math.round(255 * (1 - Math.abs(t)));
    img.data.set(t >= 0 ? [255, fade, fade, 255] : [fade, fade, 255, 255], 4 * p);
  }
  ctx.putImageData(img, 0, 0);
}

function drawInput(x) {
  const [, c, h, w] = x.shape, canvas = $("input-canvas");
  if (c === 1) { drawGrey(canvas, x.data, h, w); return; }
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true }), img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) img.data.set([x.data[p] * 255, x.data[h * w + p] * 255, x.data[2 * h * w + p] * 255, 255], 4 * p);
  ctx.putImageData(img, 0, 0);
}

function drawOutputs(out) {
  const [, f, h, w] = out.shape, box = $("outputs");
  box.textContent = "";
  for (let fi = 0; fi < f; fi++) {
    const fig = document.createElement("figure"), canvas = document.createElement("canvas");
    canvas.className = "feature-map"; canvas.dataset.filter = String(fi);
    drawGrey(canvas, out.data.subarray(fi * h * w, (fi + 1) * h * w), h, w);
    canvas.onclick = (event) => {
      // offsetX/Y and clientWidth/Height both leave the border out.
      const j = Math.min(w - 1, Math.floor((event.offsetX / canvas.clientWidth) * w));
      const i = Math.min(h - 1, Math.floor((event.offsetY / canvas.clientHeight) * h));
      state.pixel = { f: fi, i, j }; $("loss").value = "pixel"; $("loss-map").value = String(fi);
      $("loss-pixel").textContent = `pixel (${i}, ${j}) of map ${fi}`;
    };
    const caption = document.createElement("figcaption");
    caption.textContent = `out[0, ${fi}] (${state.filters[fi] ? state.filters[fi].preset : ""})`;
    fig.append(canvas, caption); box.append(fig);
  }
}

// --- backward --------------------------------------------------------------------------------

function lossGradient() {
  const out = state.lastForward, [, f, h, w] = out.shape, dout = new Float32Array(out.data.length);
  const map = Number($("loss-map").value || 0);
  if ($("loss").value === "pixel") {
    const pixel = state.pixel || { f: map, i: h >> 1, j: w >> 1 };
    dout[(pixel.f * h + pixel.i) * w + pixel.j] = 1; // d(out[f, i, j]) / d(out) is one-hot
    $("loss-pixel").textContent = `pixel (${pixel.i}, ${pixel.j}) of map ${pixel.f}`;
  } else {
    for (let p = 0; p < h * w; p++) dout[map * h * w + p] = 2 * out.data[map * h * w + p]; // d(sum out^2)
  }
  return { shape: out.shape, data: dout };
}

async function backward() {
  if (!state.lastForward) await forward();
  if (!state.lastForward) return;
  const dout = lossGradient(), x = state.lastInput, w = state.lastWeights;
  const answer = await post("/backward", { x: wire(x), w: wire(w), dout: wire(dout), ...state.lastHyper });
  if (!answer) { invalidateBackward(); return; }
  const dx = unb64(answer.dx), dw = unb64(answer.dw);
  state.lastBackward = { dout, dx, dw, db: unb64(answer.db) };
  const [, c, h, wd] = dx.shape, summed = new Float32Array(h * wd);
  for (let ch = 0; ch < c; ch++) for (let p = 0; p < h * wd; p++) summed[p] += dx.data[ch * h * wd + p];
  state.lastBackward.dxSummed = summed;
  $("results").classList.remove("stale-backward");
  drawHeat($("dx-canvas"), summed, h, wd);
  const [f, cw, k] = dw.shape, box = $("dw");
  box.textContent = "";
  for (let fi = 0; fi < f; fi++) {
    const plane = new Float32Array(k * k);
    for (let ch = 0; ch < cw; ch++) for (let p = 0; p < k * k; p++) plane[p] += dw.data[(fi * cw + ch) * k * k + p];
    const fig = document.createElement("figure"), canvas = document.createElement("canvas");
    canvas.className = "small"; drawHeat(canvas, plane, k, k);
    const caption = document.createElement("figcaption"); caption.textContent = `dw[${fi}]`;
    fig.append(canvas, caption); box.append(fig);
  }
}

// --- wiring ----------------------------------------------------------------------------------

function init() {
  Object.keys(SAMPLES).forEach((name) => $("sample").add(new Option(name, name)));
  // A changed control makes every result on screen stale: forget them until the next answer.
  // (The controls' own handlers run first: a forward they start draws after this clears.)
  // The API key changes who may compute, not what: it leaves the results alone.
  $("controls").addEventListener("change", (event) => { if (event.target.id !== "authorization") invalidate(); });
  $("sample").onchange = () => { loadSample($("sample").value); forward(); };
  $("upload").onchange = (event) => { if (event.target.files[0]) loadUpload(event.target.files[0]); };
  $("channels").onchange = forward;
  $("ksize").onchange = () => { resizeAll(); renderFilters(); };
  $("add-filter").onclick = () => addFilter("random");
  $("run-forward").onclick = forward;
  $("authorization").value = sessionStorage.getItem("convengine-api-key") || "";
  $("authorization").onchange = () => { sessionStorage.setItem("convengine-api-key", $("authorization").value.trim()); forward(); };
  $("run-backward").onclick = backward;
  ["sobel x", "sobel y", "gaussian"].forEach((p) => state.filters.push({ preset: p, values: PRESETS[p](3) }));
  renderFilters();
  loadSample("shapes");
  state.ready = forward();
}

window.playground = { state, forward, backward, addFilter, PRESETS };
init();
