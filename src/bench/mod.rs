//! Measuring a configuration the way the paper's Table 1 does: median time of a forward over
//! timed iterations after a warm-up, peak activation memory from the plan, FLOPs and parameters
//! from the static trajectory. Shared by `bench`, `sweep` and `cargo bench`.

use std::sync::Arc;

use serde::Serialize;

pub mod ceiling;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::Model;
use crate::model::Precision;
use crate::runtime::cost;
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
use crate::EngineBuilder;

/// One measured configuration of `sret-tome bench`, as its CSV and JSON rows hold it.
#[derive(Serialize, Debug, Clone)]
pub struct BenchRow {
    /// The schedule spec, e.g. `"constant:10"`.
    pub schedule: String,
    /// Storage precision, `f32` or `f16`.
    pub precision: &'static str,
    /// Images per forward.
    pub batch: usize,
    /// Images per run of the program.
    pub micro_batch: usize,
    /// Images per second.
    pub throughput_img_s: f64,
    /// Milliseconds per forward of the whole batch.
    pub latency_ms: f64,
    /// Peak activation memory of a forward, bytes.
    pub pam_bytes: u64,
    /// The paper's "FLOPs" per image: twice thop's multiply-accumulate count.
    pub flops_thop: u64,
    /// Estimated floating-point operations per image, functional operations included.
    pub flops_total: u64,
    /// Learnable parameters, as PyTorch counts them.
    pub params: u64,
    /// Timed forwards the figures are the median of.
    pub iters: usize,
}

/// Median of `v` (mean of the two middle values for an even length; NaN-safe ordering by
/// `f64::total_cmp`). Panics on an empty vector.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// How long to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Untimed forwards first (at least one: it also tells how fast the configuration is).
    pub warmup: usize,
    /// Timed forwards (of each configuration); `None`: as many as fit in `budget_secs` (per
    /// configuration), between 3 and 100.
    pub iters: Option<usize>,
    /// Time budget per configuration in seconds, used when `iters` is `None`.
    pub budget_secs: f64,
}

/// Plan, build and time one (schedule, batch) in `precision` on `images`
/// (`[batch, 3, 224, 224]`).
#[allow(clippy::too_many_arguments)]
pub fn bench_one(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    schedule: &Schedule,
    precision: Precision,
    batch: usize,
    images: &[f32],
    opts: &BenchOptions,
) -> Result<BenchRow> {
    let mut rows = bench_many(
        gpu,
        cache,
        model,
        &[(schedule.clone(), precision)],
        batch,
        images,
        opts,
    )?;
    Ok(rows.remove(0))
}

/// Plan, build and time several (schedule, precision) configurations at one batch size, their
/// timed forwards interleaved
/// (one forward of each in turn, round after round), so that whatever else the machine does
/// during the measurement falls on every configuration alike and their ratios stay fair.
/// The number of rounds is `opts.iters`, or what fits the slowest configuration in
/// `opts.budget_secs`.
#[allow(clippy::too_many_arguments)]
pub fn bench_many(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    configs: &[(Schedule, Precision)],
    batch: usize,
    images: &[f32],
    opts: &BenchOptions,
) -> Result<Vec<BenchRow>> {
    let mut runs = Vec::with_capacity(configs.len());
    let mut slowest = 0.0f64;
    for (schedule, precision) in configs {
        let plan = ForwardSpec::new(&model.cfg, schedule, DEFAULT_SEED)?;
        let engine = EngineBuilder::new()
            .gpu(gpu)
            .pipeline_cache(cache)
            .with_model(model.clone())
            .spec(&plan.clone().with_batch(batch).with_precision(*precision))
            .build()?;
        engine.set_input(images)?;
        for i in 0..opts.warmup.max(1) {
            let t = engine.time_forward()?;
            if i == 0 {
                slowest = slowest.max(t.gpu.unwrap_or(t.wall));
            }
        }
        runs.push(((schedule, *precision), plan, engine, Vec::new()));
    }
    let iters = opts
        .iters
        .unwrap_or_else(|| ((opts.budget_secs / slowest.max(1e-6)) as usize).clamp(3, 100));
    for _ in 0..iters {
        for (_, _, engine, times) in runs.iter_mut() {
            let t = engine.time_forward()?;
            times.push(t.gpu.unwrap_or(t.wall));
        }
    }
    Ok(runs
        .into_iter()
        .map(|((schedule, precision), plan, engine, times)| {
            let secs = median(times);
            BenchRow {
                schedule: schedule.to_string(),
                precision: precision.name(),
                batch,
                micro_batch: engine.planned().micro_batch(),
                throughput_img_s: batch as f64 / secs,
                latency_ms: secs * 1e3,
                pam_bytes: engine.activation_bytes(),
                flops_thop: cost::flops_thop(&model.cfg, &plan.trajectory),
                flops_total: cost::flops_total(&model.cfg, &plan.trajectory),
                params: cost::params(&model.cfg),
                iters,
            }
        })
        .collect())
}
