//! sret-tome in the browser: [`classify`] runs SReT (with token merging) on the page's WebGPU
//! device and returns the logits, the top-5 and the forward time as JSON.
//!
//! Everything awaits (the device, the engine's error scopes, the readback); nothing blocks.
//! Weights are the crate's deterministic synthetic ones (the page says so): the numbers are the
//! native engine's, the classes are meaningless.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use sret_tome::api::Autotune;
use sret_tome::gpu::context::OneShot;
use sret_tome::preprocess::{preprocess_rgb8_with, EvalTransform};
use sret_tome::{Engine, EngineBuilder, Model, Schedule};
use wasm_bindgen::prelude::*;

struct Device {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
}

thread_local! {
    static DEVICE: RefCell<Option<Rc<Device>>> = const { RefCell::new(None) };
    static MODELS: RefCell<HashMap<String, Arc<Model>>> = RefCell::new(HashMap::new());
    static ENGINES: RefCell<HashMap<(usize, String), Rc<Engine>>> = RefCell::new(HashMap::new());
}

struct ConsoleLog;

impl log::Log for ConsoleLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("[{}] {}", r.level(), r.args());
            if r.level() <= log::Level::Warn {
                web_sys::console::warn_1(&line.into());
            } else {
                web_sys::console::log_1(&line.into());
            }
        }
    }
    fn flush(&self) {}
}

/// Panics and the library's `log` lines go to the browser console.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("sret-tome panicked: {info}").into());
    }));
    static LOGGER: ConsoleLog = ConsoleLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

async fn device() -> Result<Rc<Device>, JsValue> {
    if let Some(d) = DEVICE.with(|d| d.borrow().clone()) {
        return Ok(d);
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(format!("no WebGPU adapter: {e}")))?;
    let info = adapter.get_info();
    // What the engine can use of what the browser's adapter has (no shader-f16: f32).
    let (device, queue) = sret_tome::api::request_device(&adapter)
        .await
        .map_err(|e| js_err(format!("requesting the WebGPU device: {e}")))?;
    let d = Rc::new(Device {
        device,
        queue,
        info,
    });
    DEVICE.with(|slot| *slot.borrow_mut() = Some(d.clone()));
    Ok(d)
}

/// Model `name` with synthetic weights, or with the safetensors `weights` the page was given
/// (`name` may then be `auto`: the configuration is read off the tensors). Kept per name and
/// weights, so engines are reused.
fn model(name: &str, weights: Option<&Weights>) -> Result<Arc<Model>, JsValue> {
    let key = match weights {
        Some(w) => format!("{name}#{}#{}", w.name, w.bytes.len()),
        None => name.to_string(),
    };
    if let Some(m) = MODELS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(m);
    }
    let m = match weights {
        Some(w) => sret_tome::io::load_model_safetensors_bytes(
            name,
            &w.bytes,
            std::path::Path::new(&w.name),
        )
        .map_err(js_err)?,
        None => Model::synthetic(name).map_err(js_err)?,
    };
    let m = Arc::new(m);
    MODELS.with(|ms| ms.borrow_mut().insert(key, m.clone()));
    Ok(m)
}

/// A weight file the page was given: its name (messages, cache key) and bytes.
struct Weights {
    name: String,
    bytes: Vec<u8>,
}

async fn engine(model: Arc<Model>, schedule: &str) -> Result<Rc<Engine>, JsValue> {
    // Models are kept per name and weights, so their address tells them apart.
    let key = (Arc::as_ptr(&model) as usize, schedule.to_string());
    if let Some(e) = ENGINES.with(|e| e.borrow().get(&key).cloned()) {
        return Ok(e);
    }
    let d = device().await?;
    let schedule: Schedule = schedule.parse().map_err(js_err)?;
    // Traced: the page draws which merged token every patch ended in.
    let engine = EngineBuilder::new()
        .with_model(model)
        .schedule(schedule)
        .device(&d.device, &d.queue)
        .autotune(Autotune::Off)
        .trace(true)
        .build_async()
        .await
        .map_err(js_err)?;
    let engine = Rc::new(engine);
    ENGINES.with(|e| e.borrow_mut().insert(key, engine.clone()));
    Ok(engine)
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(f64::NAN)
}

/// The model names the page offers.
#[wasm_bindgen]
pub fn models() -> Vec<String> {
    sret_tome::model::MODEL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Classify an encoded image (JPEG or PNG bytes, decoded exactly as the native engine decodes
/// files) with `model` and `schedule` (`none`, `exp:0.25,0`, ...), with synthetic weights or
/// the safetensors file `weights` (named `weights_name`; `model` may then be `auto`). Resolves
/// to a JSON string: `{model, schedule, adapter, synthetic, weights, tokens_removed,
/// forward_ms, forward_clock, first_forward_ms, build_ms, wall_ms, top5: [{class, name, p}],
/// logits, crop_fraction, merges: [{stage, exec, n_in, n_out, slots}], stage_maps: [{stage,
/// side, tokens_out, slots}]}`: every merge's slot map and, per stage, the merged token each
/// original patch ended in (row-major over the stage's `side x side` grid).
#[wasm_bindgen]
pub async fn classify(
    model: String,
    schedule: String,
    image: Vec<u8>,
    weights: Option<Vec<u8>>,
    weights_name: Option<String>,
) -> Result<JsValue, JsValue> {
    let img =
        sret_tome::io::decode_rgb8_bytes(&image, std::path::Path::new("image")).map_err(js_err)?;
    let weights = weights.map(|bytes| Weights {
        name: weights_name.unwrap_or_else(|| "weights.safetensors".into()),
        bytes,
    });
    run(&model, &schedule, &img, weights.as_ref()).await
}

/// [`classify`] of RGBA8 pixels (`width * height * 4` bytes, e.g. a canvas' `getImageData`),
/// with synthetic weights; alpha is dropped.
#[wasm_bindgen]
pub async fn classify_rgba(
    model: String,
    schedule: String,
    rgba: Vec<u8>,
    width: u32,
    height: u32,
) -> Result<JsValue, JsValue> {
    if rgba.len() != width as usize * height as usize * 4 {
        return Err(js_err(format!(
            "{} bytes are not {width}x{height} RGBA8",
            rgba.len()
        )));
    }
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let img = sret_tome::image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| js_err("bad image size"))?;
    run(&model, &schedule, &img, None).await
}

async fn run(
    model_name: &str,
    schedule: &str,
    img: &sret_tome::image::RgbImage,
    weights: Option<&Weights>,
) -> Result<JsValue, JsValue> {
    let t0 = now_ms();
    let engine = engine(model(model_name, weights)?, schedule).await?;
    let build_ms = now_ms() - t0;
    let cfg = engine.planned().config();
    let transform = EvalTransform::for_model(cfg);
    let input = preprocess_rgb8_with(img, &transform);
    // The first forward of an engine pays for the browser's lazy pipeline compilation; the
    // second is the steady-state figure.
    let t1 = now_ms();
    let first = engine
        .forward_traced_async(input.as_slice())
        .await
        .map_err(js_err)?;
    let first_ms = now_ms() - t1;
    let logits = sret_tome::Logits::new(first.logits, 1, engine.classes());
    let trace = first.trace.unwrap_or_default();
    let merges: Vec<_> = trace
        .merges
        .iter()
        .map(|m| {
            serde_json::json!({
                "stage": m.stage, "exec": m.exec, "n_in": m.n_in, "n_out": m.n_out,
                "slots": m.slots,
            })
        })
        .collect();
    let mut stage_maps = Vec::new();
    for s in 0..cfg.stages.len() {
        let side = cfg.grid_side(s);
        let (slots, tokens_out) = match trace.stage_maps.iter().find(|m| m.0 == s) {
            Some((_, map, n)) => {
                let map = &map[..*n];
                let distinct: std::collections::HashSet<_> = map.iter().collect();
                (map.to_vec(), distinct.len())
            }
            None => ((0..(side * side) as u32).collect(), side * side),
        };
        stage_maps.push(serde_json::json!({
            "stage": s, "side": side, "tokens_out": tokens_out, "slots": slots,
        }));
    }
    let d = device().await?;
    let t2 = now_ms();
    let (again, gpu_ms) = timed_forward(&engine, &d, &input).await?;
    let wall_ms = now_ms() - t2;
    if again != logits {
        log::warn!("two forwards of one image differ");
    }
    // GPU timestamps where the browser has them (they also hold under headless Chromium's
    // virtual time, which stops the page's clock), wall clock otherwise.
    let (forward_ms, clock) = match gpu_ms {
        Some(ms) => (ms, "GPU timestamps"),
        None => (wall_ms, "wall clock"),
    };
    let top5: Vec<_> = logits
        .top_k(0, 5)
        .into_iter()
        .map(|(c, p)| {
            serde_json::json!({
                "class": c,
                "name": sret_tome::imagenet_class(c).unwrap_or("?"),
                "p": p,
            })
        })
        .collect();
    let out = serde_json::json!({
        "model": engine.model_name(),
        "schedule": schedule,
        "adapter": format!("{} ({:?})", d.info.name, d.info.backend),
        "synthetic": engine.weights_are_synthetic(),
        "weights": weights.map(|w| w.name.as_str()),
        "crop_fraction": transform.crop as f64 / transform.resize as f64,
        "merges": merges,
        "stage_maps": stage_maps,
        "tokens_removed": engine.tokens_removed(),
        "build_ms": build_ms,
        "first_forward_ms": first_ms,
        "forward_ms": forward_ms,
        "forward_clock": clock,
        "wall_ms": wall_ms,
        "top5": top5,
        "logits": logits.image(0),
    });
    Ok(JsValue::from_str(&out.to_string()))
}

/// A forward between two timestamp writes (empty compute passes before and after it, as
/// WebGPU allows timestamps only at pass boundaries): its logits and, where the device has
/// `timestamp-query`, its GPU time in milliseconds.
async fn timed_forward(
    engine: &Engine,
    d: &Device,
    input: &[f32],
) -> Result<(sret_tome::Logits, Option<f64>), JsValue> {
    let device = &d.device;
    let stamps = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("timed forward"),
    });
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let timer = stamps.then(|| {
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("forward time"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (set, resolve, read)
    });
    let mark = |enc: &mut wgpu::CommandEncoder, index: u32| {
        if let Some((set, ..)) = &timer {
            drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timestamp"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(index),
                    end_of_pass_write_index: None,
                }),
            }));
        }
    };
    mark(&mut enc, 0);
    let recorded = engine.encode_forward(&mut enc, input);
    mark(&mut enc, 1);
    let pending_stamps = timer.as_ref().map(|(set, resolve, read)| {
        enc.resolve_query_set(set, 0..2, resolve, 0);
        enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        let (mapped, fill) = OneShot::new();
        enc.map_buffer_on_submit(read, wgpu::MapMode::Read, .., fill);
        mapped
    });
    let pending = engine.encode_readback(&mut enc);
    let error = validation.pop().await;
    recorded.map_err(js_err)?;
    if let Some(e) = error {
        return Err(js_err(format!("recording the timed forward: {e}")));
    }
    d.queue.submit([enc.finish()]);
    let logits = pending.await.map_err(js_err)?;
    let ms = match (pending_stamps, &timer) {
        (Some(slot), Some((_, _, read))) => match slot.await {
            Ok(()) => {
                let t: Vec<u64> = {
                    let view = read.get_mapped_range(..).map_err(js_err)?;
                    view.chunks_exact(8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                        .collect()
                };
                read.unmap();
                let ticks = t[1].saturating_sub(t[0]) as f64;
                Some(ticks * d.queue.get_timestamp_period() as f64 / 1e6)
            }
            Err(e) => {
                log::warn!("timestamps not read: {e}");
                None
            }
        },
        _ => None,
    };
    Ok((logits, ms))
}
