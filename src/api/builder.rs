//! [`EngineBuilder`]: the model, weights, schedule, batch, precision, device and kernel
//! choice of an [`Engine`], and the build that plans the forward and makes it on the device.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::tune;
use super::{
    useful_features, Autotune, ChoiceSource, Engine, KernelChoice, Progress, Rejected, Timer,
    TuneCache, Validation,
};
use crate::error::{Error, Result};
use crate::gpu::{AdapterChoice, Gpu};
use crate::kernels::preprocess::Preprocessor;
use crate::kernels::{KernelKind, PipelineCache, Variants};
use crate::model::{Model, Precision, DEFAULT_MODEL};
use crate::runtime::{ForwardSpec, PlannedForward};
use crate::tome::{Schedule, DEFAULT_SEED};

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
    /// Check non-portable kernel variants against the portable ones ([`super::validate`]).
    validate: bool,
    /// Test hook: the kind whose variant the check sees as wrong.
    fault: Option<KernelKind>,
    /// Told what a long build does ([`EngineBuilder::on_progress`]).
    progress: Option<Progress>,
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
            validate: super::validate::from_env(),
            fault: None,
            progress: None,
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

    /// Load weights from a safetensors file or a `torch.save` checkpoint (`.pth`, which needs
    /// the `pth` feature, on with the default `cli`) with the reference's `state_dict()` names.
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

    /// Check every non-portable kernel variant the engine would run against the portable
    /// kernel on the device, the first time a plan meets an adapter, driver and precision (on
    /// by default; `SRET_TOME_VALIDATE=off` turns the default off). A variant that disagrees
    /// is not used: see [`super::validate`]. The verdict is cached with the autotune choice,
    /// so the check costs once per adapter; turn it off only where the build cannot afford
    /// the first check and the adapter's variants are known good.
    pub fn validate_kernels(mut self, on: bool) -> Self {
        self.validate = on;
        self
    }

    /// Test hook: the kernel check sees `kind`'s variant as wrong (its logits perturbed), to
    /// show the rejection and the portable fallback. Not cached.
    #[doc(hidden)]
    pub fn validation_fault(mut self, kind: KernelKind) -> Self {
        self.fault = Some(kind);
        self
    }

    /// Call `f` with a line saying what a long build is doing: each autotune round and the
    /// kernel check as they start, and the seconds they took (the `info` log lines). The first
    /// build of a plan on an adapter takes a minute on a CPU adapter; a command line shows
    /// these in a spinner. Called on the building thread.
    pub fn on_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Some(std::sync::Arc::new(f));
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
        let model = self.load_model()?;
        self.schedule.validate()?;
        let gpu = match &self.device {
            DeviceChoice::Own(choice) => Gpu::new_async(choice).await?,
            DeviceChoice::Shared(gpu) => (**gpu).clone(),
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
        let cache = self.cache.clone().unwrap_or_default();
        let plan = ForwardSpec::new(&model.cfg, &self.schedule, self.seed)?;
        let spec = plan
            .clone()
            .with_batch(self.batch)
            .with_trace(self.trace)
            .with_precision(self.precision);
        let (preferred, source, measurements) = self.choose(&model, &gpu, &cache, &spec)?;
        let (preferred, validation, rejected) =
            self.check_kernels(&model, &gpu, &cache, &spec, preferred)?;
        let f16 = self.precision == Precision::F16;
        let (inner, preprocessor) =
            make_on_device(&gpu, &cache, &model, &spec.with_kernels(preferred), f16).await?;
        let kernels = KernelChoice {
            preferred,
            source,
            used: tune::used(inner.dispatch_names().map(|(_, name)| name)),
            measurements,
            validation,
            rejected,
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

    /// The model the builder names: loaded, read from its file, or synthetic.
    fn load_model(&self) -> Result<Arc<Model>> {
        Ok(match &self.weights {
            Weights::Loaded(m) => m.clone(),
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
            Weights::File(p) => Arc::new(crate::io::load_model(&self.model, p)?),
        })
    }

    /// The kernel preferences of the plan ([`Autotune`]), where they came from, and what was
    /// measured to choose them.
    fn choose(
        &self,
        model: &Arc<Model>,
        gpu: &Gpu,
        cache: &PipelineCache,
        spec: &ForwardSpec,
    ) -> Result<(Variants, ChoiceSource, super::Measurements)> {
        Ok(match &self.autotune {
            Autotune::Off => (Variants::default(), ChoiceSource::Default, Vec::new()),
            Autotune::Pin(v) => (*v, ChoiceSource::Pinned, Vec::new()),
            #[cfg(target_arch = "wasm32")]
            Autotune::Measure => {
                let _ = (model, gpu, cache, spec);
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
                    validate: false,
                    fault: None,
                    progress: None,
                };
                let dir = self.tune_dir.clone().or_else(TuneCache::default_dir);
                let progress = self.progress.as_ref();
                tune::measure(base, gpu, cache, &model.cfg, spec, dir.as_deref(), progress)?
            }
        })
    }
}

impl EngineBuilder {
    /// `preferred` checked against the portable kernels ([`super::validate`]).
    fn check_kernels(
        &self,
        model: &Arc<Model>,
        gpu: &Gpu,
        cache: &PipelineCache,
        spec: &ForwardSpec,
        preferred: Variants,
    ) -> Result<(Variants, Validation, Vec<Rejected>)> {
        if !self.validate || cfg!(target_arch = "wasm32") {
            return Ok((preferred, Validation::Off, Vec::new()));
        }
        let base = EngineBuilder {
            model: self.model.clone(),
            weights: Weights::Loaded(model.clone()),
            schedule: self.schedule.clone(),
            seed: self.seed,
            batch: self.batch,
            precision: self.precision,
            trace: false,
            device: DeviceChoice::Shared(Box::new(gpu.clone())),
            cache: Some(cache.clone()),
            autotune: Autotune::Off,
            tune_dir: None,
            validate: false,
            fault: None,
            progress: None,
        };
        let dir = self.tune_dir.clone().or_else(TuneCache::default_dir);
        let check = super::validate::Check {
            base,
            gpu,
            cache,
            cfg: &model.cfg,
            spec,
            trusted: cache.is_trusted(),
            dir: dir.as_deref(),
            fault: self.fault,
            progress: self.progress.as_ref(),
        };
        super::validate::check(check, preferred)
    }
}

/// The planned forward and the texture preprocessor made on the device, with the device's
/// validation and out-of-memory errors returned rather than left to its uncaptured-error
/// handler.
async fn make_on_device(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Model,
    spec: &ForwardSpec,
    f16: bool,
) -> Result<(PlannedForward, Preprocessor)> {
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let built = PlannedForward::new(gpu, cache, model, spec);
    let preprocessor = Preprocessor::with_precision(&gpu.device, cache, f16);
    let errors = [oom.pop().await, validation.pop().await];
    let inner = built?;
    if let Some(e) = errors.into_iter().flatten().next() {
        return Err(Error::Gpu {
            during: "building the engine".into(),
            why: crate::gpu::context::error_text(&e),
        });
    }
    Ok((inner, preprocessor))
}
