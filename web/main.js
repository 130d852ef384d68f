// The page: no bundler, the wasm-bindgen `--target web` module from pkg/.
import init, { classify, models } from "./pkg/sret_tome_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let image = null; // { bytes: Uint8Array, name }
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

async function run() {
  $("error").textContent = "";
  $("stats").textContent = "running…";
  const model = $("model").value, schedule = $("schedule").value;
  try {
    const r = JSON.parse(await classify(model, schedule, image.bytes));
    $("stats").innerHTML =
      `<span>forward <b>${r.forward_ms.toFixed(1)} ms</b> (${r.forward_clock}` +
      // Headless Chromium's virtual time (screenshots) stops the page's clock: no wall figures.
      (r.wall_ms > 0 ? `; first forward ${r.first_forward_ms.toFixed(0)} ms, build ${r.build_ms.toFixed(0)} ms, wall clock` : "") +
      `)</span>` +
      `<span>tokens merged <b>${r.tokens_removed}</b></span>` +
      `<span>${r.synthetic ? "synthetic weights" : "weights loaded"}</span>`;
    $("top5").innerHTML = "<tr><th>#</th><th>class</th><th>p</th><th></th></tr>" + r.top5.map((t, i) =>
      `<tr><td>${i + 1}</td><td>${t.name} (${t.class})</td><td>${(100 * t.p).toFixed(2)}%</td>` +
      `<td><span class="bar" style="width:${Math.max(1, 200 * t.p)}px"></span></td></tr>`).join("");
    $("adapter").textContent = `${r.model}, ${r.schedule}, on ${r.adapter}`;
    // One line a test reads off the browser's console.
    console.log("SRET_RESULT " + JSON.stringify({ image: image.name, ...r }));
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
  await init();
  for (const m of models()) $("model").add(new Option(m, m, m === "sret_t_distill", m === "sret_t_distill"));
  if (params.get("model")) $("model").value = params.get("model");
  if (params.get("schedule")) {
    const s = params.get("schedule");
    if (![...$("schedule").options].some((o) => o.value === s)) $("schedule").add(new Option(s, s));
    $("schedule").value = s;
  }
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
