//! Running schedules over a data set: accuracy against labels, and fidelity against the
//! uncompressed model (always run, as the reference).
//!
//! Schedules whose static trajectories merge the same counts at every execution build the same
//! program (same weights, same permutations), so they are run once and share their results; a
//! schedule that merges nothing shares the uncompressed model's.
//!
//! Engines are built for `resident` distinct trajectories at a time; each such group is one pass
//! over the data (decoding overlapped with the GPU by the [`Loader`]). The uncompressed model runs
//! in the first pass and its per-image log-softmaxes are kept (4 bytes x classes per image) for
//! the fidelity of the later passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::dataset::{Problem, Sample};
use super::loader::Loader;
use super::metrics::{QualityStats, Reference};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::Model;
use crate::model::Precision;
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::{Engine, EngineBuilder};

/// How `eval` and `sweep` measure quality.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Images per forward.
    pub batch: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Distinct programs resident on the GPU at once (one pass over the data per group).
    pub resident: usize,
    /// Seed of the recursive passes' token permutations.
    pub seed: u64,
    /// Storage precision of the schedules' engines. The reference (the uncompressed model) is
    /// always f32, so with f16 every schedule, `none` included, is measured against it.
    pub precision: Precision,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch: 32,
            workers: default_workers(),
            resident: 8,
            seed: crate::tome::DEFAULT_SEED,
            precision: Precision::F32,
        }
    }
}

/// Decoding threads by default: the machine's parallelism, at most 8.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// The quality of every schedule and of the baseline over the same images.
#[derive(Clone, Debug)]
pub struct EvalOutcome {
    /// The uncompressed model's stats (agreement 100 %, KL 0 by definition).
    pub baseline: QualityStats,
    /// One per requested schedule, in order.
    pub stats: Vec<QualityStats>,
    /// For each requested schedule, the earlier schedule (or `none`) whose program it shares.
    pub same_as: Vec<Option<String>>,
    /// Samples that could not be loaded.
    pub failures: Vec<Problem>,
    /// Wall time of the whole evaluation.
    pub seconds: f64,
    /// Forwards run (batches x programs).
    pub forwards: usize,
}

/// Running top-1 (or agreement) for the progress bar.
fn running(s: &QualityStats) -> String {
    match (s.top1(), s.agreement()) {
        (Some(t), Some(a)) => format!("top-1 {t:.1}% agree {a:.1}%"),
        (Some(t), None) => format!("top-1 {t:.1}%"),
        (None, Some(a)) => format!("agree {a:.1}%"),
        _ => String::new(),
    }
}

/// Evaluate `schedules` (and the uncompressed model) on `samples`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    schedules: &[Schedule],
    samples: &[Sample],
    opts: &EvalOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<EvalOutcome> {
    if opts.batch == 0 {
        return Err(Error::arg("batch", 0, "must be at least 1"));
    }
    let start = Instant::now();
    let cfg = &model.cfg;
    let classes = cfg.num_classes;
    let base_spec = ForwardSpec::new(cfg, &Schedule::None, opts.seed)?;
    let Distinct {
        specs,
        owner,
        same_as,
    } = distinct(cfg, &base_spec, schedules, opts)?;
    let waves = waves(specs.len(), opts.resident);
    let batch = opts.batch.min(samples.len().max(1));
    let mut baseline = QualityStats::default();
    let mut per_spec = vec![QualityStats::default(); specs.len()];
    let mut refs: HashMap<usize, Reference> = HashMap::new();
    let mut failures: Vec<Problem> = Vec::new();
    let mut forwards = 0;
    if let Some(p) = progress {
        p.set_length((samples.len() * waves.len()) as u64);
        p.set_position(0);
    }
    for (w, wave) in waves.iter().enumerate() {
        let first = w == 0;
        let keep_refs = waves.len() > 1;
        let base_engine = if first {
            Some(engine(
                gpu,
                cache,
                model,
                &base_spec.clone().with_batch(batch),
            )?)
        } else {
            None
        };
        let engines = wave
            .iter()
            .map(|&k| {
                engine(
                    gpu,
                    cache,
                    model,
                    &specs[k]
                        .clone()
                        .with_batch(batch)
                        .with_precision(opts.precision),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let loader = Loader::new(samples.to_vec(), cfg, batch, opts.workers);
        for b in loader {
            if first {
                failures.extend(b.failures.iter().cloned());
            }
            let n = b.samples.len();
            if n > 0 {
                let mut batch_refs: Vec<Option<Reference>> = vec![None; n];
                if let Some(e) = &base_engine {
                    let out = e.forward(&b.images)?;
                    forwards += 1;
                    for (i, s) in b.samples.iter().enumerate() {
                        let logits = &out.logits[i * classes..(i + 1) * classes];
                        let r = Reference::from_logits(logits);
                        baseline.add(logits, s.label, Some(&r));
                        if keep_refs {
                            refs.insert(s.index, r.clone());
                        }
                        batch_refs[i] = Some(r);
                    }
                } else {
                    for (i, s) in b.samples.iter().enumerate() {
                        batch_refs[i] = refs.get(&s.index).cloned();
                    }
                }
                for (e, &k) in engines.iter().zip(wave) {
                    let out = e.forward(&b.images)?;
                    forwards += 1;
                    for (i, s) in b.samples.iter().enumerate() {
                        let logits = &out.logits[i * classes..(i + 1) * classes];
                        per_spec[k].add(logits, s.label, batch_refs[i].as_ref());
                    }
                }
            }
            if let Some(p) = progress {
                p.inc((n + b.failures.len()) as u64);
                let last = wave.last().map(|&k| &per_spec[k]).unwrap_or(&baseline);
                let label = wave
                    .last()
                    .and_then(|&k| owner.iter().position(|o| *o == Some(k)))
                    .map(|i| schedules[i].to_string())
                    .unwrap_or_else(|| "none".into());
                p.set_message(format!(
                    "pass {}/{} | none {} | {label} {}",
                    w + 1,
                    waves.len(),
                    running(&baseline),
                    running(last)
                ));
            }
        }
    }
    let stats = owner
        .iter()
        .map(|o| match o {
            None => baseline.clone(),
            Some(k) => per_spec[*k].clone(),
        })
        .collect();
    Ok(EvalOutcome {
        baseline,
        stats,
        same_as,
        failures,
        seconds: start.elapsed().as_secs_f64(),
        forwards,
    })
}

/// The distinct programs of `schedules`: schedules whose merged counts per execution are the
/// same share one (and in f32 those equal to the baseline's run none).
struct Distinct {
    /// One spec per distinct program.
    specs: Vec<ForwardSpec>,
    /// Per schedule, its program (`None`: the baseline's).
    owner: Vec<Option<usize>>,
    /// Per schedule, the earlier schedule whose program it shares, if any.
    same_as: Vec<Option<String>>,
}

/// [`Distinct`] programs of `schedules`, keyed by merged counts per execution.
fn distinct(
    cfg: &crate::model::ModelConfig,
    base_spec: &ForwardSpec,
    schedules: &[Schedule],
    opts: &EvalOptions,
) -> Result<Distinct> {
    let mut specs: Vec<ForwardSpec> = Vec::new();
    let mut keys: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut owner: Vec<Option<usize>> = Vec::with_capacity(schedules.len());
    let mut same_as = Vec::with_capacity(schedules.len());
    let base_key = base_spec.trajectory.per_stage_safe_r();
    for (i, s) in schedules.iter().enumerate() {
        let spec = ForwardSpec::new(cfg, s, opts.seed)?;
        let key = spec.trajectory.per_stage_safe_r();
        if key == base_key && opts.precision == Precision::F32 {
            owner.push(None);
            same_as.push((*s != Schedule::None).then(|| "none".to_string()));
        } else if let Some(k) = keys.iter().position(|k| *k == key) {
            owner.push(Some(k));
            let first = owner[..i].iter().position(|o| *o == Some(k)).unwrap_or(0);
            same_as.push(Some(schedules[first].to_string()));
        } else {
            keys.push(key);
            owner.push(Some(specs.len()));
            specs.push(spec);
            same_as.push(None);
        }
    }
    Ok(Distinct {
        specs,
        owner,
        same_as,
    })
}

/// The programs `0..n` in waves of `resident` (one empty wave without programs: the baseline
/// still runs).
fn waves(n: usize, resident: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    (0..n)
        .collect::<Vec<_>>()
        .chunks(resident.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// The engine of `model` for `spec` on `gpu`, through the public builder.
fn engine(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    spec: &ForwardSpec,
) -> Result<Engine> {
    EngineBuilder::new()
        .gpu(gpu)
        .pipeline_cache(cache)
        .with_model(model.clone())
        .spec(spec)
        .build()
}
