// The page: no bundler, the wasm-bindgen `--target web` module from pkg/.
import init, { classify, models } from "./pkg/sret_tome_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let image = null; // { bytes: Uint8Array, name }
let weights = null; // { bytes: Uint8Array, name }, or null: synthetic
let adapterName = "";
const hold = new AbortController();
if (params.has("auto")) fetch("hold?" + Date.now(), { signal: hold.signal }).catch(() => {});

async function show(bytes) {
  const bitmap = await createImageBitmap(new Blob([bytes]));
  const c = $("view");
  const s = Math.min(c.width / bitmap.width, c.height / bitmap.height);
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(bitmap, (c.width - bitmap.width * s) / 2, (c.height - bitmap.height * s) / 2,
    bitmap.width * s, bitmap.height * s);
}

async function setImage(bytes, name) {
  image = { bytes: new Uint8Array(bytes), name };
  await show(image.bytes);
}

// The model's view of the image (shorter side resized, centre crop of `crop` of it), as RGBA.
function modelView(bitmap, crop, size) {
  const side = Math.min(bitmap.width, bitmap.height) * crop;
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const ctx = c.getContext("2d");
  ctx.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size);
  return ctx.getImageData(0, 0, size, size).data;
}

// One panel per stage: every patch filled with the mean colour of all the pixels of its merged
// token, thin dark lines between neighbouring patches of different tokens.
async function drawMerges(r) {
  const P = 224, gap = 8, maps = r.stage_maps;
  const px = modelView(await createImageBitmap(new Blob([image.bytes])), r.crop_fraction, P);
  const c = $("merges");
  c.width = maps.length * (P + gap) - gap;
  c.height = P;
  const ctx = c.getContext("2d");
  maps.forEach((m, k) => {
    const x0 = k * (P + gap), cell = P / m.side;
    const sums = new Map();
    const patch = (i) => [Math.floor((i % m.side) * cell), Math.floor(Math.floor(i / m.side) * cell)];
    m.slots.forEach((t, i) => {
      const [px0, py0] = patch(i);
      const s = sums.get(t) || [0, 0, 0, 0];
      for (let y = py0; y < Math.floor(py0 + cell); y++)
        for (let x = px0; x < Math.floor(px0 + cell); x++) {
          const o = 4 * (y * P + x);
          s[0] += px[o]; s[1] += px[o + 1]; s[2] += px[o + 2]; s[3]++;
        }
      sums.set(t, s);
    });
    m.slots.forEach((t, i) => {
      const [px0, py0] = patch(i), s = sums.get(t);
      ctx.fillStyle = `rgb(${s[0] / s[3]},${s[1] / s[3]},${s[2] / s[3]})`;
      ctx.fillRect(x0 + px0, py0, Math.ceil(cell), Math.ceil(cell));
    });
    ctx.fillStyle = "rgba(20,20,20,0.8)";
    m.slots.forEach((t, i) => {
      const [px0, py0] = patch(i), col = i % m.side;
      if (col + 1 < m.side && m.slots[i + 1] !== t) ctx.fillRect(x0 + px0 + cell - 0.5, py0, 1, cell);
      if (i + m.side < m.slots.length && m.slots[i + m.side] !== t) ctx.fillRect(x0 + px0, py0 + cell - 0.5, cell, 1);
    });
  });
  $("mergestats").innerHTML = maps.map((m) =>
    `<span>stage ${m.stage + 1}: ${m.side * m.side} patches in <b>${m.tokens_out}</b> tokens</span>`).join("");
}

async function run() {
  $("error").textContent = "";
  $("stats").textContent = "running…";
  const model = $("model").value, schedule = $("schedule").value;
  try {
    const r = JSON.parse(await classify(model, schedule, image.bytes, weights?.bytes, weights?.name));
    $("warn").style.display = r.synthetic ? "" : "none";
    if (adapterName) r.adapter = `${adapterName} (WebGPU)`;
    $("stats").innerHTML =
      `<span>forward <b>${r.forward_ms.toFixed(1)} ms</b> (${r.forward_clock}` +
      // Headless Chromium's virtual time (screenshots) stops the page's clock: no wall figures.
      (r.wall_ms > 0 ? `; first forward ${r.first_forward_ms.toFixed(0)} ms, build ${r.build_ms.toFixed(0)} ms, wall clock` : "") +
      `)</span>` +
      `<span>tokens merged <b>${r.tokens_removed}</b></span>` +
      `<span>${r.synthetic ? "synthetic weights" : "weights " + r.weights}</span>`;
    $("top5").innerHTML = "<tr><th>#</th><th>class</th><th>p</th><th></th></tr>" + r.top5.map((t, i) =>
      `<tr><td>${i + 1}</td><td>${t.name} (${t.class})</td><td>${(100 * t.p).toFixed(2)}%</td>` +
      `<td><span class="bar" style="width:${Math.max(1, 200 * t.p)}px"></span></td></tr>`).join("");
    $("adapter").textContent = `${r.model}, ${r.schedule}, on ${r.adapter}`;
    // One line a test reads off the browser's console.
    console.log("SRET_RESULT " + JSON.stringify({ image: image.name, ...r }));
    await drawMerges(r);
    return r;
  } catch (e) {
    $("stats").textContent = "";
    $("error").textContent = String(e);
    console.log("SRET_ERROR " + String(e));
  }
}

async function main() {
  if (!navigator.gpu) {
    $("error").textContent = "This browser has no WebGPU (navigator.gpu).";
    console.log("SRET_ERROR no navigator.gpu");
    return;
  }
  // wgpu's WebGPU backend reports no adapter name: ask the browser for what it tells.
  const info = (await navigator.gpu.requestAdapter())?.info;
  adapterName = info ? [info.vendor, info.architecture, info.description].filter((x) => x).join(" ") : "";
  await init();
  for (const m of models()) $("model").add(new Option(m, m, m === "sret_t_distill", m === "sret_t_distill"));
  if (params.get("model")) $("model").value = params.get("model");
  if (params.get("schedule")) {
    const s = params.get("schedule");
    if (![...$("schedule").options].some((o) => o.value === s)) $("schedule").add(new Option(s, s));
    $("schedule").value = s;
  }
  if (params.get("weights")) {
    const url = params.get("weights");
    const w = await fetch(url);
    if (!w.ok) throw new Error(`weights ${url}: HTTP ${w.status}`);
    weights = { bytes: new Uint8Array(await w.arrayBuffer()), name: url.split("/").pop() };
  }
  $("weights").onchange = async (e) => {
    const f = e.target.files[0];
    if (f) { weights = { bytes: new Uint8Array(await f.arrayBuffer()), name: f.name }; await run(); }
  };
  const res = await fetch("sample.jpg");
  await setImage(await res.arrayBuffer(), "sample.jpg");
  $("go").onclick = run;
  $("file").onchange = async (e) => {
    const f = e.target.files[0];
    if (f) { await setImage(await f.arrayBuffer(), f.name); await run(); }
  };
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = async (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) { await setImage(await f.arrayBuffer(), f.name); await run(); }
  };
  // ?auto=1: classify the sample at once (the headless test's mode). A fetch of /hold stays
  // open meanwhile (serve.py answers it late), which holds headless Chromium's virtual time,
  // so `--screenshot --virtual-time-budget` waits for the result.
  if (params.has("auto")) {
    try { await run(); } finally { hold.abort(); }
  }
}

main().catch((e) => { $("error").textContent = String(e); console.log("SRET_ERROR " + String(e)); hold.abort(); });
