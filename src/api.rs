//! The library's front door: an [`Engine`] built by an [`EngineBuilder`], fed an [`Input`]
//! (host slice, GPU buffer or textures preprocessed on the GPU), leaving [`Logits`] in a GPU
//! buffer or reading them back asynchronously ([`PendingLogits`]).
//!
//! An engine is a forward planned once for a model, a merging schedule and a batch size: its
//! pipelines, buffers and bind groups are made at [`EngineBuilder::build`]; a forward records a
//! few copies and compute passes and allocates nothing but the optional readback.
//!
//! # Living inside a wgpu application
//!
//! * **Shared device.** [`EngineBuilder::device`] takes the application's `Device` and `Queue`;
//!   the engine creates no `Instance`, adapter or device then, and uses only the features and
//!   limits the device was created with (a batch whose tensors would pass the device's
//!   storage-binding limit runs as several micro-batches). Several engines (models, schedules,
//!   batch sizes) live on one device side by side; give them one [`PipelineCache`] to compile
//!   each kernel once. There is no global state.
//! * **Own command stream.** [`Engine::encode_forward`] records the forward into the
//!   application's `CommandEncoder`, next to its own passes. In that mode the engine never
//!   submits and never writes through the queue: host data is staged in a mappable buffer
//!   from a small pool (the submission that uses it maps it again for the next forward, so
//!   steady-state forwards allocate nothing), preprocessing tables are made once per image
//!   size. Recording is ordered like any other command, so
//!   several forwards (of one engine or several) may go into one encoder, each followed by what
//!   consumes its logits.
//! * **GPU-resident data.** An input can be a `wgpu::Buffer` of normalised f32 or textures
//!   (RGBA8/BGRA8, linear or sRGB, any size) that a WGSL kernel resizes, crops and normalises
//!   exactly like the CPU path ([`crate::preprocess`]). The logits stay in
//!   [`Engine::logits_buffer`] (`STORAGE | COPY_SRC`) for the application's own kernels, or are
//!   copied out with [`Engine::encode_readback`] and delivered by `map_async` to a callback or a
//!   future; the library never blocks except in the helpers that say so ([`Engine::run`],
//!   [`PendingLogits::wait`]).
//!
//! wgpu delivers mapping callbacks from `Device::poll` (and `Queue::submit`): an application
//! that submits every frame or polls its device with `PollType::Poll` pumps them. Awaiting a
//! [`PendingLogits`] (`pollster::block_on(pending)`) while nothing polls the device waits
//! forever; [`PendingLogits::wait`] polls it itself.
//!
//! # What is checked, and what cannot be
//!
//! Every limit the planned forward needs is compared with `device.limits()` before anything is
//! made ([`crate::Error::DeviceLimit`] names the limit, the value needed and the value there);
//! a feature a mode needs and the device lacks is [`crate::Error::MissingFeature`], worded for
//! the adapter or for the application's device; a destroyed or lost device makes the next
//! forward return [`crate::Error::DeviceLost`]. A texture of another device of the same
//! `wgpu::Instance` is refused when its bind group is made. wgpu gives no way to ask which
//! device an encoder or a buffer belongs to, so an encoder or an input buffer of another device
//! is only reported by wgpu when the encoder is finished (through the device's
//! uncaptured-error handler, which panics unless the application installed one), and a
//! texture of another `Instance` makes wgpu itself panic.
//!
//! # Weights
//!
//! The published SReT checkpoints (`SReT_T_distill.pth` and its siblings) are released by the
//! SReT authors with their code (the `szq0214/SReT` repository on GitHub); DeiT's come with
//! DeiT and timm, PiT's with NAVER's PiT. [`EngineBuilder::weights`] reads them as published.
//! Without weights the engine runs deterministic synthetic ones (said with `log::warn!`): the
//! numbers are exact and merging behaves, but the classes are meaningless.
//!
//! # Merge decisions and kernel variants
//!
//! Which kernel variant runs is chosen per adapter (subgroup width, features). The variants
//! compute the same function in a different order, so their f32 results differ by rounding
//! (about 1e-7 relative). Where two candidate merges score equally up to that rounding (a
//! near-tie, < 1e-5 apart), variants may take different decisions, and the merged logits then
//! differ by more (2e-3 to 9e-3 relative in our tests, same top-1). Unmerged forwards are not
//! affected. For bit-reproducible merged runs, run on the same adapter and driver with the same
//! variant choice.
//!
//! `Engine`, `EngineBuilder`, [`Preprocessor`] and [`PendingLogits`] are `Send + Sync` on native
//! targets (as wgpu's handles are; on the web wgpu's handles are not `Send`).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::{AdapterChoice, Gpu};
use crate::kernels::preprocess::Preprocessor;
use crate::kernels::{PipelineCache, Variants};
use crate::model::Model;
use crate::model::Precision;
use crate::model::DEFAULT_MODEL;
use crate::runtime::ForwardSpec;
use crate::runtime::{PlannedForward, Source};

mod host;
// On wasm32 nothing measures (its measurements block): the measuring half is unused there.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
mod tune;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
pub use host::{EngineStats, ForwardOutput, MergeTrace, Profile, Timer, Timing, Trace};
pub use tune::{shape_tag, Autotune, ChoiceSource, KernelChoice, Measurements, TuneCache};

/// Optional device features the engine uses when the device it is given has them enabled:
/// `SUBGROUP` (the subgroup kernels: several times faster on CPU adapters), `TIMESTAMP_QUERY`
/// (+ `_INSIDE_PASSES`, for timing) and `SHADER_F16`. None is required. An application creating
/// its device can request `adapter.features() & sret_tome::api::useful_features()`, or let
/// [`request_device`] do it.
pub fn useful_features() -> wgpu::Features {
    crate::gpu::context::wanted_features()
}

pub use crate::gpu::context::request_device;

#[derive(Clone)]
enum Weights {
    /// Nothing said: synthetic, with a warning.
    Unset,
    Synthetic,
    File(PathBuf),
    Loaded(Arc<Model>),
}

#[derive(Clone)]
enum DeviceChoice {
    Own(AdapterChoice),
    Shared(Box<Gpu>),
}

/// Chooses the model, weights, schedule, batch size, precision and device of an [`Engine`].
///
/// Defaults: model `sret_t_distill` with deterministic synthetic weights, no merging
/// (`Schedule::None`), permutation seed 0, batch 1, f32, and a device of the engine's own on the
/// highest-performance adapter.
///
/// ```
/// use sret_tome::{EngineBuilder, Schedule};
///
/// # fn main() -> sret_tome::Result<()> {
/// let engine = EngineBuilder::new()
///     .model("sret_t")                      // or .weights("SReT_T.pth") / .with_model(model)
///     .schedule("exp:0.10,0.6".parse::<Schedule>()?)
///     .batch(2)
///     .build()?;
/// assert_eq!((engine.batch(), engine.classes()), (2, 1000));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EngineBuilder {
    model: String,
    weights: Weights,
    schedule: Schedule,
    seed: u64,
    batch: usize,
    precision: Precision,
    trace: bool,
    device: DeviceChoice,
    cache: Option<PipelineCache>,
    autotune: Autotune,
    /// Directory of the autotune cache; `None`: [`TuneCache::default_dir`].
    tune_dir: Option<PathBuf>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = match &self.weights {
            Weights::Unset | Weights::Synthetic => "synthetic".to_string(),
            Weights::File(p) => p.display().to_string(),
            Weights::Loaded(m) => format!("loaded {}", m.cfg.name),
        };
        f.debug_struct("EngineBuilder")
            .field("model", &self.model)
            .field("weights", &weights)
            .field("schedule", &self.schedule)
            .field("seed", &self.seed)
            .field("batch", &self.batch)
            .field("precision", &self.precision)
            .field(
                "shared_device",
                &matches!(self.device, DeviceChoice::Shared(_)),
            )
            .finish()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            model: DEFAULT_MODEL.to_string(),
            weights: Weights::Unset,
            schedule: Schedule::None,
            seed: DEFAULT_SEED,
            batch: 1,
            precision: Precision::F32,
            trace: false,
            device: DeviceChoice::Own(AdapterChoice::default()),
            cache: None,
            autotune: Autotune::from_env(),
            tune_dir: None,
        }
    }
}

impl EngineBuilder {
    /// A builder with the defaults (see [`Engine::builder`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The architecture: `sret_t`, `sret_lt`, `sret_s` or their `_distill` twins, or the
    /// baselines `deit_tiny[_distill]`, `pit_ti[_distill]` ([`crate::model::MODEL_NAMES`]).
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = name.into();
        self
    }

    /// Load weights from a safetensors file or a `torch.save` checkpoint (`.pth`) with the
    /// reference's `state_dict()` names.
    pub fn weights(mut self, path: impl Into<PathBuf>) -> Self {
        self.weights = Weights::File(path.into());
        self
    }

    /// Deterministic synthetic weights (the default, with a `log::warn!` unless asked for
    /// here): for tests, benchmarks and merge pictures; the classes they predict are
    /// meaningless.
    pub fn synthetic_weights(mut self) -> Self {
        self.weights = Weights::Synthetic;
        self
    }

    /// A model already loaded (with [`crate::io::load_model`] or [`Model::synthetic`]): several engines can share one load.
    /// Sets the architecture too.
    pub fn with_model(mut self, model: impl Into<Arc<Model>>) -> Self {
        let model = model.into();
        self.model = model.cfg.name.to_string();
        self.weights = Weights::Loaded(model);
        self
    }

    /// The token-merging schedule (`"constant:10".parse()?`, `Schedule::None`, ...).
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Seed of the recursive passes' token permutations.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Images per forward.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Schedule, seed, batch, trace and precision of `spec` at once (its model is the
    /// builder's).
    pub fn spec(mut self, spec: &ForwardSpec) -> Self {
        self.schedule = spec.schedule.clone();
        self.seed = spec.seed;
        self.batch = spec.batch;
        self.trace = spec.trace;
        self.precision = spec.precision;
        self
    }

    /// Keep every merge's slot map and masses and every stage's unmerge map of each forward
    /// for [`Engine::forward`] to read back (what `infer --trace` and `visualize` show).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Storage precision ([`Precision::F16`] needs `SHADER_F16` on the device).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Run on the application's device: no `Instance`, adapter or device is created. The
    /// engine keeps clones of the two handles.
    pub fn device(mut self, device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        self.device = DeviceChoice::Shared(Box::new(Gpu::from_device(
            device,
            queue,
            device.adapter_info(),
        )));
        self
    }

    /// Run on an existing [`Gpu`] context (as the command line does).
    pub fn gpu(mut self, gpu: &Gpu) -> Self {
        self.device = DeviceChoice::Shared(Box::new(gpu.clone()));
        self
    }

    /// Create a device of the engine's own on the adapter `choice` picks (the default).
    pub fn adapter(mut self, choice: AdapterChoice) -> Self {
        self.device = DeviceChoice::Own(choice);
        self
    }

    /// Take compiled pipelines from (and add new ones to) `cache`, e.g.
    /// [`Engine::pipeline_cache`] of another engine on the same device.
    pub fn pipeline_cache(mut self, cache: &PipelineCache) -> Self {
        self.cache = Some(cache.clone());
        self
    }

    /// How kernel variants are chosen (default: [`Autotune::from_env`], which is
    /// [`Autotune::Measure`] unless `SRET_TOME_AUTOTUNE` says otherwise). Measuring costs one
    /// engine build and three forwards per round (up to three rounds) the first time a plan
    /// meets an adapter; the choice is cached on disk for the next build.
    pub fn autotune(mut self, autotune: Autotune) -> Self {
        self.autotune = autotune;
        self
    }

    /// Keep the autotune cache in `dir` instead of [`TuneCache::default_dir`].
    pub fn autotune_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tune_dir = Some(dir.into());
        self
    }

    /// Load the model, plan the forward and make it on the device. Validation errors of the
    /// device (e.g. a kernel it cannot run) are returned, not left to the device's uncaptured
    /// error handler.
    ///
    /// Blocks on wgpu's futures (and measures kernel variants with blocking forwards under
    /// [`Autotune::Measure`]): in a browser use [`EngineBuilder::build_async`].
    pub fn build(self) -> Result<Engine> {
        pollster::block_on(self.build_async())
    }

    /// [`EngineBuilder::build`] awaiting the device's error scopes (and, for an own device,
    /// the adapter and device requests) instead of blocking on them: the build for wasm32 in a
    /// browser. There [`Autotune::Measure`] is not available (its measurements block) and runs
    /// as [`Autotune::Off`]; the portable defaults are chosen.
    pub async fn build_async(self) -> Result<Engine> {
        let model = match self.weights {
            Weights::Loaded(m) => m,
            Weights::Unset => {
                log::warn!(
                    "no weights given: {} runs with deterministic synthetic weights, so its \
                     classes are meaningless; pass the published checkpoint with \
                     EngineBuilder::weights (see the crate docs)",
                    self.model
                );
                Arc::new(Model::synthetic(&self.model)?)
            }
            Weights::Synthetic => Arc::new(Model::synthetic(&self.model)?),
            Weights::File(p) => Arc::new(crate::io::load_model(&self.model, &p)?),
        };
        self.schedule.validate()?;
        let gpu = match self.device {
            DeviceChoice::Own(choice) => Gpu::new_async(&choice).await?,
            DeviceChoice::Shared(gpu) => *gpu,
        };
        let missing = useful_features() - gpu.features;
        if gpu.is_borrowed() && !missing.is_empty() {
            log::info!(
                "the application's device does not enable {missing:?}: without SUBGROUP the \
                 portable kernels run (several times slower on CPU adapters), without \
                 TIMESTAMP_QUERY there is no per-kernel profile, without SHADER_F16 no f16; \
                 request adapter.features() & sret_tome::api::useful_features() to use them"
            );
        }
        let cache = self.cache.unwrap_or_default();
        let plan = ForwardSpec::new(&model.cfg, &self.schedule, self.seed)?;
        let spec = plan
            .clone()
            .with_batch(self.batch)
            .with_trace(self.trace)
            .with_precision(self.precision);
        let (preferred, source, measurements) = match &self.autotune {
            Autotune::Off => (Variants::default(), ChoiceSource::Default, Vec::new()),
            Autotune::Pin(v) => (*v, ChoiceSource::Pinned, Vec::new()),
            #[cfg(target_arch = "wasm32")]
            Autotune::Measure => {
                log::info!("autotune: measuring blocks, which a browser cannot; default kernels");
                (Variants::default(), ChoiceSource::Default, Vec::new())
            }
            #[cfg(not(target_arch = "wasm32"))]
            Autotune::Measure => {
                let base = EngineBuilder {
                    model: self.model.clone(),
                    weights: Weights::Loaded(model.clone()),
                    schedule: self.schedule.clone(),
                    seed: self.seed,
                    batch: self.batch,
                    precision: self.precision,
                    trace: self.trace,
                    device: DeviceChoice::Shared(Box::new(gpu.clone())),
                    cache: Some(cache.clone()),
                    autotune: Autotune::Off,
                    tune_dir: None,
                };
                let dir = self.tune_dir.clone().or_else(TuneCache::default_dir);
                tune::measure(base, &gpu, &cache, &model.cfg, &spec, dir.as_deref())?
            }
        };
        let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let f16 = self.precision == Precision::F16;
        let built =
            PlannedForward::new(&gpu, &cache, &model, &spec.clone().with_kernels(preferred));
        let preprocessor = Preprocessor::with_precision(&gpu.device, &cache, f16);
        let errors = [oom.pop().await, validation.pop().await];
        let inner = built?;
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Gpu {
                during: "building the engine".into(),
                why: crate::gpu::context::error_text(&e),
            });
        }
        let kernels = KernelChoice {
            preferred,
            source,
            used: tune::used(inner.dispatch_names().map(|(_, name)| name)),
            measurements,
        };
        for &(kind, v) in &kernels.used {
            if v != preferred.get(kind) {
                log::info!(
                    "{}: {} preferred, {} runs on this device (its limits, features or the \
                     model's shapes rule the preference out)",
                    kind.name(),
                    preferred.get(kind).name(),
                    v.name()
                );
            }
        }
        Ok(Engine {
            kernels,
            timer: Timer::new(inner.gpu()),
            inner,
            cache,
            preprocessor,
            readback_pool: Arc::new(Mutex::new(Vec::new())),
            upload_pool: Arc::new(Mutex::new(Vec::new())),
            trace_lock: Mutex::new(()),
            trace_awaited: std::sync::atomic::AtomicBool::new(false),
            submissions: Default::default(),
            readbacks: Default::default(),
            model_name: model.cfg.name,
            synthetic: model.synthetic,
            schedule: self.schedule,
            seed: self.seed,
            tokens_removed: plan.trajectory.removed_total(),
        })
    }
}

/// A batch of images for one forward.
///
/// `From` conversions let the forward methods take `&Vec<f32>`, `&[f32]`, `&wgpu::Buffer`,
/// `&wgpu::Texture` or `&[&wgpu::Texture]` directly.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Normalised images on the host, `[batch, 3, S, S]` f32 with `S` the model's
    /// [`Engine::image_size`] (e.g. from [`crate::io::load_image_with`]).
    Host(&'a [f32]),
    /// Normalised images in a GPU buffer, `[batch, 3, S, S]` f32 from byte `offset` (a
    /// multiple of 4). The buffer needs `BufferUsages::COPY_SRC`; it is copied when the forward
    /// runs, so it may be rewritten as soon as the forward's commands are submitted.
    Buffer {
        /// The buffer holding the images.
        buffer: &'a wgpu::Buffer,
        /// Byte offset of the first image, a multiple of 4.
        offset: wgpu::BufferAddress,
    },
    /// One texture (batch 1), preprocessed on the GPU. See [`Preprocessor`] for the formats.
    Texture(&'a wgpu::Texture),
    /// One texture per image of the batch, preprocessed on the GPU; sizes may differ.
    Textures(&'a [&'a wgpu::Texture]),
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(v: &'a [f32]) -> Self {
        Input::Host(v)
    }
}
impl<'a> From<&'a Vec<f32>> for Input<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        Input::Host(v)
    }
}
impl<'a> From<&'a wgpu::Buffer> for Input<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Input::Buffer { buffer, offset: 0 }
    }
}
impl<'a> From<&'a wgpu::Texture> for Input<'a> {
    fn from(t: &'a wgpu::Texture) -> Self {
        Input::Texture(t)
    }
}
impl<'a> From<&'a [&'a wgpu::Texture]> for Input<'a> {
    fn from(t: &'a [&'a wgpu::Texture]) -> Self {
        Input::Textures(t)
    }
}
impl<'a> From<&'a Vec<&'a wgpu::Texture>> for Input<'a> {
    fn from(t: &'a Vec<&'a wgpu::Texture>) -> Self {
        Input::Textures(t)
    }
}

/// The logits of one forward, `[batch, classes]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    values: Vec<f32>,
    batch: usize,
    classes: usize,
}

impl Logits {
    /// Logits from row-major `values` of `[batch, classes]`. Panics when the length is not
    /// `batch * classes`.
    pub fn new(values: Vec<f32>, batch: usize, classes: usize) -> Logits {
        assert_eq!(
            values.len(),
            batch * classes,
            "logits of [{batch}, {classes}]"
        );
        Logits {
            values,
            batch,
            classes,
        }
    }
    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Logits per image (1000 for ImageNet-1k).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// All logits, row-major `[batch, classes]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }
    /// All logits, row-major `[batch, classes]`, without copying.
    pub fn into_vec(self) -> Vec<f32> {
        self.values
    }
    /// The logits of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }
    /// The highest-scoring class of image `i` (the first one on ties).
    pub fn argmax(&self, i: usize) -> usize {
        self.top_k(i, 1)[0].0
    }
    /// The `k` highest-scoring classes of image `i` with their softmax probabilities, best
    /// first (ties: lower class first).
    pub fn top_k(&self, i: usize, k: usize) -> Vec<(usize, f32)> {
        let row = self.image(i);
        let p = self.probabilities(i);
        let mut order: Vec<usize> = (0..self.classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.into_iter().take(k).map(|c| (c, p[c])).collect()
    }
    /// Softmax of image `i`'s logits.
    pub fn probabilities(&self, i: usize) -> Vec<f32> {
        let row = self.image(i);
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| (x / s) as f32).collect()
    }
}

type Callback = Box<dyn FnOnce(Result<Logits>) + Send + 'static>;

enum State {
    Waiting {
        waker: Option<Waker>,
        callback: Option<Callback>,
    },
    Ready(Result<Logits>),
    Taken,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the state becomes `Ready`.
    arrived: std::sync::Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete(&self, result: Result<Logits>) {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Waiting {
                callback: Some(f), ..
            } => {
                drop(st);
                f(result);
            }
            State::Waiting { waker, .. } => {
                *st = State::Ready(result);
                drop(st);
                self.arrived.notify_all();
                if let Some(w) = waker {
                    w.wake();
                }
            }
            other => *st = other,
        }
    }
}

/// Logits on their way back from the GPU: copied into a mappable buffer by the commands of a
/// forward, mapped with `map_async` once those commands are submitted.
///
/// Take them as a future (`.await`), with a callback ([`PendingLogits::on_ready`]), by polling
/// ([`PendingLogits::try_take`]), or by blocking ([`PendingLogits::wait`]). Nothing here
/// blocks except `wait`. As for any `map_async`, the mapping completes during a later
/// `Device::poll` or `Queue::submit` on the device; an application that submits every frame or
/// polls its device with `PollType::Poll` drives it.
///
/// ```no_run
/// # async fn frame(engine: &sret_tome::Engine, frame: &wgpu::Texture) -> sret_tome::Result<()> {
/// let mut encoder = engine.device().create_command_encoder(&Default::default());
/// engine.encode_forward(&mut encoder, frame)?;
/// let pending = engine.encode_readback(&mut encoder);
/// engine.queue().submit([encoder.finish()]);
/// // The event loop keeps polling the device (`device.poll(wgpu::PollType::Poll)`) meanwhile.
/// let logits = pending.await?;
/// println!("class {}", logits.argmax(0));
///
/// // Or with a callback, run by the thread that polls:
/// let pending = engine.forward_async(frame)?;
/// pending.on_ready(|logits| {
///     if let Ok(logits) = logits {
///         println!("class {}", logits.argmax(0));
///     }
/// });
/// # Ok(())
/// # }
/// ```
pub struct PendingLogits {
    shared: Arc<Shared>,
    device: wgpu::Device,
}

impl fmt::Debug for PendingLogits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogits")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl PendingLogits {
    /// Whether the logits have arrived (and were not taken yet).
    pub fn is_ready(&self) -> bool {
        matches!(*self.shared.lock(), State::Ready(_))
    }

    /// The logits if they have arrived, without waiting (each result is returned once).
    pub fn try_take(&mut self) -> Option<Result<Logits>> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }

    /// Call `f` with the logits when they arrive: on the thread whose `Device::poll` or
    /// `Queue::submit` completes the mapping (keep it short), or right now if they already have.
    pub fn on_ready(self, f: impl FnOnce(Result<Logits>) + Send + 'static) {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => {
                drop(st);
                f(r);
            }
            State::Waiting { waker, .. } => {
                *st = State::Waiting {
                    waker,
                    callback: Some(Box::new(f)),
                }
            }
            State::Taken => {
                drop(st);
                f(Err(taken()));
            }
        }
    }

    /// Block until the logits arrive, polling the device. Returns an error if the commands that
    /// copy them were never submitted.
    pub fn wait(mut self) -> Result<Logits> {
        // Another thread's poll may have collected the mapping callback and be running it just
        // as our own poll returns; the queue being idle is then not yet the logits being here.
        const GRACE: Duration = Duration::from_secs(2);
        let start = std::time::Instant::now();
        loop {
            if let Some(r) = self.try_take() {
                return r;
            }
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu {
                    during: "waiting for the logits".into(),
                    why: e.to_string(),
                })?;
            let st = self.shared.lock();
            drop(
                self.shared
                    .arrived
                    .wait_timeout_while(st, Duration::from_millis(20), |s| {
                        matches!(s, State::Waiting { .. })
                    })
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if let Some(r) = self.try_take() {
                return r;
            }
            if start.elapsed() > GRACE {
                return Err(Error::Gpu {
                    during: "waiting for the logits".into(),
                    why: "the device is idle and the logits never arrived: submit the encoder the readback was recorded in first".into(),
                });
            }
        }
    }
}

fn taken() -> Error {
    Error::Gpu {
        during: "readback".into(),
        why: "these logits were already taken".into(),
    }
}

impl Future for PendingLogits {
    type Output = Result<Logits>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => Poll::Ready(r),
            State::Waiting { callback, .. } => {
                *st = State::Waiting {
                    waker: Some(cx.waker().clone()),
                    callback,
                };
                Poll::Pending
            }
            State::Taken => Poll::Ready(Err(taken())),
        }
    }
}

/// Readback buffers kept for reuse per engine.
const MAX_POOLED_READBACKS: usize = 8;

/// A planned forward of one model, schedule and batch size on one device.
///
/// ```
/// # fn main() -> sret_tome::Result<()> {
/// use sret_tome::Engine;
///
/// let engine = Engine::builder().build()?;          // synthetic weights, own device
/// let images = vec![0.0f32; engine.input_len()];    // [1, 3, 224, 224], normalised
/// let logits = engine.run(&images)?;                // blocking helper
/// let (class, p) = logits.top_k(0, 1)[0];
/// println!("{} ({:.1}%)", sret_tome::imagenet_class(class).unwrap(), 100.0 * p);
/// # Ok(())
/// # }
/// ```
pub struct Engine {
    inner: PlannedForward,
    /// The kernel variants of the plan and how they were chosen.
    kernels: KernelChoice,
    cache: PipelineCache,
    preprocessor: Preprocessor,
    readback_pool: Arc<Mutex<Vec<wgpu::Buffer>>>,
    /// Host-input staging buffers, each mapped for writing while in the pool.
    upload_pool: Arc<Mutex<Vec<wgpu::Buffer>>>,
    /// Timestamp queries of [`Engine::time_forward`] (where the device has them).
    timer: Option<Timer>,
    /// Serialises traced forwards (their trace buffers are one per engine).
    trace_lock: Mutex<()>,
    /// An awaited traced forward is in flight (set and checked under `trace_lock`, which the
    /// awaited forward never holds across an await).
    trace_awaited: std::sync::atomic::AtomicBool,
    /// Submissions and buffer mappings so far ([`Engine::stats`]).
    submissions: std::sync::atomic::AtomicU64,
    readbacks: std::sync::atomic::AtomicU64,
    model_name: &'static str,
    synthetic: bool,
    schedule: Schedule,
    seed: u64,
    tokens_removed: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model_name)
            .field("synthetic_weights", &self.synthetic)
            .field("schedule", &self.schedule)
            .field("batch", &self.batch())
            .field("micro_batches", &self.micro_batches())
            .field("adapter", &self.inner.gpu().info.name)
            .finish()
    }
}

impl Engine {
    /// A builder with defaults: `sret_t_distill` with synthetic weights, no merging, batch 1,
    /// f32, on a device of its own.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// The wgpu device the engine runs on (its own, or the application's).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.gpu().device
    }
    /// The queue the engine submits to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.gpu().queue
    }
    /// The device with what the planner knew about it.
    pub fn gpu(&self) -> &Gpu {
        self.inner.gpu()
    }
    /// Compiled pipelines; hand to [`EngineBuilder::pipeline_cache`] of another engine on the
    /// same device to share them.
    pub fn pipeline_cache(&self) -> &PipelineCache {
        &self.cache
    }
    /// The texture preprocessing this engine uses, for recording it on its own.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }
    /// The planned forward underneath (timing, profiling, the program).
    pub fn planned(&self) -> &PlannedForward {
        &self.inner
    }

    /// The model's canonical name, e.g. `"sret_t_distill"`.
    pub fn model_name(&self) -> &'static str {
        self.model_name
    }
    /// Whether the weights are synthetic (no weight file was given).
    pub fn weights_are_synthetic(&self) -> bool {
        self.synthetic
    }
    /// The token-merging schedule the forward was planned with.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// Seed of the recursive passes' token permutations.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Storage precision of the forward.
    pub fn precision(&self) -> Precision {
        if self.inner.is_f16() {
            Precision::F16
        } else {
            Precision::F32
        }
    }
    /// The kernel variant each kernel kind runs, and how it was chosen ([`Autotune`]).
    pub fn kernels(&self) -> &KernelChoice {
        &self.kernels
    }
    /// Tokens the schedule removes over the whole forward (per image).
    pub fn tokens_removed(&self) -> usize {
        self.tokens_removed
    }
    /// Images per forward.
    pub fn batch(&self) -> usize {
        self.inner.batch()
    }
    /// Micro-batches a forward runs as (more than one where a tensor of the whole batch would
    /// pass the device's storage-binding limit).
    pub fn micro_batches(&self) -> usize {
        self.inner.micro_batches()
    }
    /// Logits per image.
    pub fn classes(&self) -> usize {
        self.inner.config().num_classes
    }
    /// Side of the (square) input images.
    pub fn image_size(&self) -> usize {
        self.inner.config().image_size
    }
    /// Values of a host input, `batch * 3 * image_size^2`.
    pub fn input_len(&self) -> usize {
        self.batch() * 3 * self.image_size() * self.image_size()
    }
    /// Bytes of the logits, `batch * classes * 4` (`* 2` in f16).
    pub fn logits_bytes(&self) -> u64 {
        let size = if self.inner.is_f16() { 2 } else { 4 };
        (self.batch() * self.classes() * size) as u64
    }
    /// Peak activation memory of a forward (the planned arena).
    pub fn activation_bytes(&self) -> u64 {
        self.inner.activation_bytes()
    }

    /// The logits of the last forward recorded, `[batch, classes]` f32 (f16 for an
    /// [`Precision::F16`] engine) from byte 0
    /// (`BufferUsages::STORAGE | COPY_SRC`), for the application's own kernels or copies. The
    /// next forward of this engine overwrites them (commands run in recording order, so
    /// whatever is recorded in between reads this forward's).
    pub fn logits_buffer(&self) -> &wgpu::Buffer {
        self.inner.logits_buffer()
    }

    /// Record a forward of `input` into the application's `encoder`: preprocessing (for
    /// textures), the forward's passes, logits left in [`Engine::logits_buffer`]. Nothing is
    /// submitted and nothing goes through the queue. Errors (a batch of the wrong size, a
    /// texture the kernel cannot read, a buffer too small) are found before anything is
    /// recorded.
    ///
    /// ```
    /// # fn main() -> sret_tome::Result<()> {
    /// # let engine = sret_tome::Engine::builder().build()?;
    /// # let (device, queue) = (engine.device().clone(), engine.queue().clone());
    /// // A frame the application rendered (here: just created), any size, RGBA8 or BGRA8.
    /// let frame = device.create_texture(&wgpu::TextureDescriptor {
    ///     label: Some("frame"),
    ///     size: wgpu::Extent3d { width: 320, height: 240, depth_or_array_layers: 1 },
    ///     mip_level_count: 1,
    ///     sample_count: 1,
    ///     dimension: wgpu::TextureDimension::D2,
    ///     format: wgpu::TextureFormat::Bgra8UnormSrgb,
    ///     usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
    ///     view_formats: &[],
    /// });
    /// let mut encoder = device.create_command_encoder(&Default::default());
    /// // ... the application's render passes into `frame` ...
    /// engine.encode_forward(&mut encoder, &frame)?;
    /// let pending = engine.encode_readback(&mut encoder);
    /// queue.submit([encoder.finish()]);
    /// let logits = pending.wait()?; // or .await, .on_ready(..), .try_take()
    /// assert_eq!(logits.image(0).len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn encode_forward<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: impl Into<Input<'a>>,
    ) -> Result<()> {
        // What checks cannot see (say, a texture of another device) is a validation error of
        // the device: returned here rather than left to its uncaptured-error handler.
        //
        // On wasm32 a scope can only be awaited: there errors reach the caller's scopes (those
        // of [`Engine::run_async`]) or the device's uncaptured-error handler.
        #[cfg(target_arch = "wasm32")]
        {
            self.record(encoder, input.into())
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self
                .device()
                .push_error_scope(wgpu::ErrorFilter::Validation);
            let recorded = self.record(encoder, input.into());
            let error = pollster::block_on(scope.pop());
            recorded?;
            match error {
                Some(e) => Err(Error::Gpu {
                    during: "recording the forward".into(),
                    why: crate::gpu::context::error_text(&e),
                }),
                None => Ok(()),
            }
        }
    }

    fn record(&self, encoder: &mut wgpu::CommandEncoder, input: Input<'_>) -> Result<()> {
        let staged;
        let source = match input {
            Input::Host(values) => {
                self.check_host(values)?;
                staged = self.stage_host(encoder, values)?;
                Source::Buffer(&staged, 0)
            }
            Input::Buffer { buffer, offset } => Source::Buffer(buffer, offset),
            Input::Texture(t) => self.preprocess(encoder, std::slice::from_ref(&t))?,
            Input::Textures(ts) => self.preprocess(encoder, ts)?,
        };
        self.inner.encode_forward(encoder, source)
    }

    /// Copy host images into a pooled staging buffer (mapped for writing while pooled) and
    /// have the submission of `encoder` map it again and return it to the pool once its copy
    /// has run. Concurrent forwards each take their own buffer.
    fn stage_host(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        values: &[f32],
    ) -> Result<wgpu::Buffer> {
        let encoded = crate::runtime::forward::encode_elems(values, self.inner.is_f16());
        let bytes: &[u8] = &encoded;
        let buffer = self
            .upload_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| {
                self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("host input"),
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                })
            });
        buffer
            .get_mapped_range_mut(..)
            .map_err(|e| Error::Gpu {
                during: "staging host images".into(),
                why: e.to_string(),
            })?
            .copy_from_slice(bytes);
        buffer.unmap();
        let pool = self.upload_pool.clone();
        let remapped = buffer.clone();
        encoder.map_buffer_on_submit(&buffer, wgpu::MapMode::Write, .., move |r| {
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_ok() && pool.len() < MAX_POOLED_READBACKS {
                pool.push(remapped);
            }
        });
        Ok(buffer)
    }

    pub(crate) fn check_host(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.input_len() {
            return Err(Error::arg(
                "images",
                format!("{} values", values.len()),
                format!(
                    "expected {} ([{}, 3, {s}, {s}])",
                    self.input_len(),
                    self.batch(),
                    s = self.image_size()
                ),
            ));
        }
        Ok(())
    }

    fn preprocess(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        textures: &[&wgpu::Texture],
    ) -> Result<Source<'static>> {
        if textures.len() != self.batch() {
            return Err(Error::arg(
                "textures",
                format!("{} textures", textures.len()),
                format!("this engine's batch is {}", self.batch()),
            ));
        }
        let transform = crate::preprocess::EvalTransform::for_model(self.inner.config());
        if transform != crate::preprocess::EvalTransform::IMAGENET {
            return Err(Error::arg(
                "textures",
                self.model_name,
                format!(
                    "the GPU preprocessing is the ImageNet transform (256, 224, ImageNet mean and std) and this model takes {}x{} images cropped from {} with mean {:?}: pass host or buffer input (io::load_image_with)",
                    transform.crop, transform.crop, transform.resize, transform.mean
                ),
            ));
        }
        if self.image_size() != crate::kernels::preprocess::OUT_SIDE as usize {
            return Err(Error::arg(
                "textures",
                self.model_name,
                format!(
                    "the GPU preprocessing makes {s}x{s} images and this model takes {}x{}: pass host or buffer input",
                    self.image_size(),
                    self.image_size(),
                    s = crate::kernels::preprocess::OUT_SIDE
                ),
            ));
        }
        let (dst, source) = self.inner.preprocess_target();
        self.preprocessor.encode(encoder, textures, dst, 0)?;
        Ok(source)
    }

    /// Record a copy of the logits into a mappable buffer, and their mapping once `encoder` is
    /// submitted (`CommandEncoder::map_buffer_on_submit`). Record it after the forward whose
    /// logits it should read. The buffer comes from a small pool and returns to it when the
    /// logits have been read.
    pub fn encode_readback(&self, encoder: &mut wgpu::CommandEncoder) -> PendingLogits {
        let bytes = self.logits_bytes();
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let buffer = self
            .readback_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| {
                self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("logits readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
        encoder.copy_buffer_to_buffer(self.logits_buffer(), 0, &buffer, 0, bytes);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Waiting {
                waker: None,
                callback: None,
            }),
            arrived: std::sync::Condvar::new(),
        });
        let (batch, classes) = (self.batch(), self.classes());
        let f16 = self.inner.is_f16();
        let done = shared.clone();
        let pool = self.readback_pool.clone();
        let mapped = buffer.clone();
        encoder.map_buffer_on_submit(&buffer, wgpu::MapMode::Read, .., move |r| {
            // The engine never destroys its buffers, so a mapping that fails means the device
            // was destroyed or lost (a borrowed device keeps its own lost-device callback).
            let read = r
                .map_err(crate::gpu::context::lost_in_readback)
                .and_then(|()| {
                    let view = mapped.get_mapped_range(..).map_err(|e| Error::Gpu {
                        during: "readback".into(),
                        why: e.to_string(),
                    })?;
                    let mut values = crate::runtime::forward::decode_elems(&view, f16);
                    values.truncate(batch * classes);
                    Ok(values)
                });
            if read.is_ok() {
                mapped.unmap();
                let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < MAX_POOLED_READBACKS {
                    pool.push(mapped);
                }
            }
            done.complete(read.map(|values| Logits::new(values, batch, classes)));
        });
        PendingLogits {
            shared,
            device: self.device().clone(),
        }
    }

    /// Submit a forward of `input` with its readback, without waiting: one command buffer, one
    /// submission. Host data is staged in a buffer of its own, so concurrent calls (the engine
    /// is `Sync`) never see each other's images.
    pub fn forward_async<'a>(&self, input: impl Into<Input<'a>>) -> Result<PendingLogits> {
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sret-tome forward"),
            });
        self.encode_forward(&mut encoder, input)?;
        let pending = self.encode_readback(&mut encoder);
        self.submit(encoder);
        Ok(pending)
    }

    /// Run a forward and wait for its logits (a blocking helper for simple programs).
    pub fn run<'a>(&self, input: impl Into<Input<'a>>) -> Result<Logits> {
        self.forward_async(input)?.wait()
    }

    /// A forward of `input` and its logits, awaited: validation errors of the recording are
    /// awaited from an error scope, the forward is submitted, and the logits arrive when their
    /// mapping completes. Nothing blocks, so this is the forward for wasm32 in a browser (whose
    /// event loop drives the mapping); natively something must poll the device meanwhile
    /// (`device.poll(PollType::Poll)` on another thread, or [`Engine::run`]).
    pub async fn run_async<'a>(&self, input: impl Into<Input<'a>>) -> Result<Logits> {
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sret-tome forward"),
            });
        let validation = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let recorded = self.record(&mut encoder, input.into());
        let errors = [oom.pop().await, validation.pop().await];
        recorded?;
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Gpu {
                during: "recording the forward".into(),
                why: crate::gpu::context::error_text(&e),
            });
        }
        let pending = self.encode_readback(&mut encoder);
        self.submit(encoder);
        pending.await
    }
}
