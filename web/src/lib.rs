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
    static ENGINES: RefCell<HashMap<(String, String), Rc<Engine>>> = RefCell::new(HashMap::new());
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

fn model(name: &str) -> Result<Arc<Model>, JsValue> {
    if let Some(m) = MODELS.with(|m| m.borrow().get(name).cloned()) {
        return Ok(m);
    }
    let m = Arc::new(Model::synthetic(name).map_err(js_err)?);
    MODELS.with(|ms| ms.borrow_mut().insert(name.to_string(), m.clone()));
    Ok(m)
}

async fn engine(model_name: &str, schedule: &str) -> Result<Rc<Engine>, JsValue> {
    let key = (model_name.to_string(), schedule.to_string());
    if let Some(e) = ENGINES.with(|e| e.borrow().get(&key).cloned()) {
        return Ok(e);
    }
    let d = device().await?;
    let schedule: Schedule = schedule.parse().map_err(js_err)?;
    let engine = EngineBuilder::new()
        .with_model(model(model_name)?)
        .schedule(schedule)
        .device(&d.device, &d.queue)
        .autotune(Autotune::Off)
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
/// files) with `model` and `schedule` (`none`, `exp:0.25,0`, ...). Resolves to a JSON string:
/// `{model, schedule, adapter, synthetic, tokens_removed, forward_ms, first_forward_ms,
/// build_ms, top5: [{class, name, p}], logits}`.
#[wasm_bindgen]
pub async fn classify(model: String, schedule: String, image: Vec<u8>) -> Result<JsValue, JsValue> {
    let img = sret_tome::io::decode_rgb8_bytes(&image, std::path::Path::new("image"))
        .map_err(js_err)?;
    run(&model, &schedule, &img).await
}

/// [`classify`] of RGBA8 pixels (`width * height * 4` bytes, e.g. a canvas' `getImageData`);
/// alpha is dropped.
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
    run(&model, &schedule, &img).await
}

async fn run(
    model: &str,
    schedule: &str,
    img: &sret_tome::image::RgbImage,
) -> Result<JsValue, JsValue> {
    let t0 = now_ms();
    let engine = engine(model, schedule).await?;
    let build_ms = now_ms() - t0;
    let input = preprocess_rgb8_with(img, &EvalTransform::for_model(engine.planned().config()));
    // The first forward of an engine pays for the browser's lazy pipeline compilation; the
    // second is the steady-state figure.
    let t1 = now_ms();
    let logits = engine.run_async(&input).await.map_err(js_err)?;
    let first_ms = now_ms() - t1;
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

/// A one-shot slot a wgpu callback fills and a future awaits (the browser's event loop runs the
/// callback).
struct Slot<T>(Rc<RefCell<(Option<T>, Option<std::task::Waker>)>>);

impl<T> Slot<T> {
    fn new() -> Self {
        Slot(Rc::new(RefCell::new((None, None))))
    }
    fn filler(&self) -> impl FnOnce(T) + 'static
    where
        T: 'static,
    {
        let cell = self.0.clone();
        move |v| {
            let waker = {
                let mut c = cell.borrow_mut();
                c.0 = Some(v);
                c.1.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> std::future::Future for Slot<T> {
    type Output = T;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let mut c = self.0.borrow_mut();
        match c.0.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                c.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
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
        let slot = Slot::new();
        let fill = slot.filler();
        enc.map_buffer_on_submit(read, wgpu::MapMode::Read, .., fill);
        slot
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
