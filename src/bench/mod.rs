//! Measuring a configuration the way the paper's Table 1 does: median time of a forward over
//! timed iterations after a warm-up, peak activation memory from the plan, FLOPs and parameters
//! from the static trajectory. Shared by `bench`, `sweep` and `cargo bench`.
//!
//! Two times per forward, each the median over the timed iterations:
//! - the device's: between GPU timestamps written at the start and end of the whole forward
//!   (one submission; wall clock from submission to idle where the adapter has no timestamp
//!   queries): what the device spends, with the host's work before and after left out;
//! - with [`BenchOptions::end_to_end`], the host's: from the start of encoding a forward of host
//!   images to its logits in host memory (encode + submit + wait + readback), through the
//!   public API as an application runs it ([`Engine::encode_forward`],
//!   [`Engine::encode_readback`], [`crate::PendingLogits::wait`]: what [`Engine::run`] costs),
//!   and the encoding alone.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub mod ceiling;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::Model;
use crate::model::Precision;
use crate::runtime::cost;
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
use crate::{Engine, EngineBuilder};

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
    /// Images per second, from the device's time of a forward (GPU timestamps where supported).
    pub throughput_img_s: f64,
    /// Milliseconds per forward of the whole batch, the device's time (GPU timestamps where
    /// supported, else submission to idle).
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
    /// Milliseconds per forward of the whole batch on the host, from the start of its encoding
    /// to its logits in host memory (encode + submit + wait + readback: what [`Engine::run`] of
    /// host images costs an application); median over the timed iterations. `None` where not
    /// measured ([`BenchOptions::end_to_end`] off, as in `sweep`).
    pub e2e_ms: Option<f64>,
    /// Milliseconds of the encoding alone (staging the host images, recording the forward and
    /// its readback, finishing the command buffer), the first part of [`BenchRow::e2e_ms`];
    /// median over the timed iterations. `None` where not measured.
    pub encode_ms: Option<f64>,
}

/// Median of `v` (mean of the two middle values for an even length; NaN-safe ordering by
/// `f64::total_cmp`); `None` for an empty vector.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(0.5 * (v[n / 2 - 1] + v[n / 2])),
    }
}

/// How long to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Untimed rounds first (at least one is run whatever this says: it also tells how fast
    /// the configuration is).
    pub warmup: usize,
    /// Timed rounds (of each configuration), at least 1; `None`: as many as fit in
    /// `budget_secs` (per configuration), between 3 and 100.
    pub iters: Option<usize>,
    /// Time budget per configuration in seconds, used when `iters` is `None`.
    pub budget_secs: f64,
    /// Also time each round's end-to-end forward on the host ([`time_end_to_end`]): a round is
    /// then two forwards, and [`BenchRow::e2e_ms`] and [`BenchRow::encode_ms`] are filled in.
    pub end_to_end: bool,
}

impl BenchOptions {
    /// Refuses options that measure nothing: `iters` of `Some(0)` (no timed forward, so no
    /// median).
    pub fn validate(&self) -> Result<()> {
        if self.iters == Some(0) {
            return Err(Error::arg(
                "iters",
                0,
                "at least 1 timed forward is needed (the figures are medians over them)",
            ));
        }
        Ok(())
    }
}

/// Seconds one end-to-end forward took on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostTiming {
    /// Creating the encoder, recording the forward of host images (their staging included)
    /// and the logits' readback, and finishing the command buffer.
    pub encode: f64,
    /// From the start of encoding to the logits in host memory: encode + submit + wait +
    /// readback.
    pub total: f64,
}

/// One forward of host `images` (`[batch, 3, H, W]`) with its logits read back, as an
/// application runs it through the public API ([`Engine::encode_forward`],
/// [`Engine::encode_readback`], `Queue::submit`, [`crate::PendingLogits::wait`]: the steps of
/// [`Engine::run`]), timed on the host.
pub fn time_end_to_end(engine: &Engine, images: &[f32]) -> Result<HostTiming> {
    let start = Instant::now();
    let mut encoder = engine
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench end-to-end forward"),
        });
    engine.encode_forward(&mut encoder, images)?;
    let pending = engine.encode_readback(&mut encoder);
    let commands = encoder.finish();
    let encode = start.elapsed().as_secs_f64();
    engine.queue().submit([commands]);
    let logits = pending.wait()?;
    let total = start.elapsed().as_secs_f64();
    drop(logits);
    Ok(HostTiming { encode, total })
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
    rows.pop()
        .ok_or_else(|| Error::arg("schedule", schedule, "was not measured"))
}

/// One configuration under measurement: its engine and the times of its timed rounds.
struct Run {
    schedule: Schedule,
    precision: Precision,
    spec: ForwardSpec,
    engine: Engine,
    device_secs: Vec<f64>,
    encode_secs: Vec<f64>,
    e2e_secs: Vec<f64>,
}

impl Run {
    fn build(
        gpu: &Gpu,
        cache: &PipelineCache,
        model: &Arc<Model>,
        (schedule, precision): &(Schedule, Precision),
        batch: usize,
        images: &[f32],
    ) -> Result<Run> {
        let spec = ForwardSpec::new(&model.cfg, schedule, DEFAULT_SEED)?;
        let engine = EngineBuilder::new()
            .gpu(gpu)
            .pipeline_cache(cache)
            .with_model(model.clone())
            .spec(&spec.clone().with_batch(batch).with_precision(*precision))
            .build()?;
        engine.set_input(images)?;
        Ok(Run {
            schedule: schedule.clone(),
            precision: *precision,
            spec,
            engine,
            device_secs: Vec::new(),
            encode_secs: Vec::new(),
            e2e_secs: Vec::new(),
        })
    }

    /// One round: a forward timed on the device and, with `end_to_end`, one timed on the host
    /// from encoding to logits. The times are kept when `keep`; returns the round's seconds.
    fn round(&mut self, images: &[f32], end_to_end: bool, keep: bool) -> Result<f64> {
        let t = self.engine.time_forward()?;
        let device = t.gpu.unwrap_or(t.wall);
        let host = if end_to_end {
            Some(time_end_to_end(&self.engine, images)?)
        } else {
            None
        };
        if keep {
            self.device_secs.push(device);
            if let Some(h) = host {
                self.encode_secs.push(h.encode);
                self.e2e_secs.push(h.total);
            }
        }
        Ok(t.wall + host.map_or(0.0, |h| h.total))
    }

    fn into_row(self, model: &Model, batch: usize, iters: usize) -> Result<BenchRow> {
        let secs = median(self.device_secs).ok_or_else(|| {
            Error::arg("iters", iters, "no timed forward ran: at least 1 is needed")
        })?;
        let ms = |v: Vec<f64>| median(v).map(|s| s * 1e3);
        Ok(BenchRow {
            schedule: self.schedule.to_string(),
            precision: self.precision.name(),
            batch,
            micro_batch: self.engine.planned().micro_batch(),
            throughput_img_s: batch as f64 / secs,
            latency_ms: secs * 1e3,
            pam_bytes: self.engine.activation_bytes(),
            flops_thop: cost::flops_thop(&model.cfg, &self.spec.trajectory),
            flops_total: cost::flops_total(&model.cfg, &self.spec.trajectory),
            params: cost::params(&model.cfg),
            iters,
            e2e_ms: ms(self.e2e_secs),
            encode_ms: ms(self.encode_secs),
        })
    }
}

/// Plan, build and time several (schedule, precision) configurations at one batch size, their
/// timed rounds interleaved
/// (one round of each in turn, round after round), so that whatever else the machine does
/// during the measurement falls on every configuration alike and their ratios stay fair.
/// A round is a forward timed on the device and, with [`BenchOptions::end_to_end`], one timed
/// on the host ([`time_end_to_end`]). The number of timed rounds is `opts.iters`, or what fits
/// the slowest configuration's first round in `opts.budget_secs`.
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
    opts.validate()?;
    let mut runs = Vec::with_capacity(configs.len());
    let mut slowest = 0.0f64;
    for config in configs {
        let mut run = Run::build(gpu, cache, model, config, batch, images)?;
        let first = run.round(images, opts.end_to_end, false)?;
        for _ in 1..opts.warmup {
            run.round(images, opts.end_to_end, false)?;
        }
        log::debug!(
            "bench: {} {} at batch {batch}: first round {:.1} ms, {} warm-up round(s)",
            run.schedule,
            run.precision.name(),
            first * 1e3,
            opts.warmup.max(1)
        );
        slowest = slowest.max(first);
        runs.push(run);
    }
    let iters = opts
        .iters
        .unwrap_or_else(|| ((opts.budget_secs / slowest.max(1e-6)) as usize).clamp(3, 100));
    for _ in 0..iters {
        for run in runs.iter_mut() {
            run.round(images, opts.end_to_end, true)?;
        }
    }
    runs.into_iter()
        .map(|run| run.into_row(model, batch, iters))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{median, BenchOptions};

    #[test]
    fn median_of_nothing_is_none_and_of_something_the_middle() {
        assert_eq!(median(Vec::new()), None);
        assert_eq!(median(vec![2.0]), Some(2.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn zero_timed_forwards_are_refused_before_any_work() {
        let opts = |iters| BenchOptions {
            warmup: 1,
            iters,
            budget_secs: 1.0,
            end_to_end: true,
        };
        let e = opts(Some(0)).validate().unwrap_err().to_string();
        assert!(e.contains("iters") && e.contains("at least 1"), "{e}");
        opts(Some(1)).validate().unwrap();
        opts(None).validate().unwrap();
    }
}
