//! A sweep over the exponential schedule's `(r_init, alpha)` grid (paper section 5.3): every point
//! gets its quality (accuracy with labels, fidelity always) from [`evaluate`], its throughput and
//! peak activation memory from [`bench_one`] at each benchmark batch, and its FLOPs from the
//! static trajectory; then the Pareto frontier is marked.
//!
//! Sharding (`--shard K/N`): by grid point (each shard runs its points over all images, and the
//! uncompressed reference too) or by image (each shard runs every point on its images; only
//! shard 1 measures throughput, so that one machine times everything).

use std::time::Instant;

use super::dataset::Dataset;
use super::evaluate::{evaluate, EvalOptions};
use super::results::{
    AdapterInfo, BenchPoint, DataInfo, GridInfo, Kind, QualityMetric, ResultsFile, Role,
    ScheduleResult, ShardUnit, FORMAT, VERSION,
};
use super::shard::Shard;
use crate::bench::{bench_one, BenchOptions};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::synthetic_images;
use crate::model::Model;
use crate::tome::Schedule;
use std::sync::Arc;

/// Everything a `sweep` measures: the `(r_init, alpha)` grid of `exp` schedules, extra
/// schedules, and how to time and evaluate them.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// `RINIT` values of the grid.
    pub r_init: Vec<f64>,
    /// `ALPHA` values of the grid.
    pub alpha: Vec<f64>,
    /// Schedules measured alongside the grid (e.g. `constant:10`, `linear:10`).
    pub extra: Vec<Schedule>,
    /// Batches to measure throughput and PAM at; empty: no timing (frontier on FLOPs).
    pub bench_batches: Vec<usize>,
    /// How long to time each configuration.
    pub bench: BenchOptions,
    /// How to evaluate quality.
    pub eval: EvalOptions,
    /// The slice of the work this run does.
    pub shard: Shard,
    /// Whether shards split the images or the grid points.
    pub shard_by: ShardUnit,
    /// Batch whose throughput/PAM the frontier uses; default the largest measured.
    pub pareto_batch: Option<usize>,
    /// The frontier's quality axis; default top-1 with labels, else agreement.
    pub quality: Option<QualityMetric>,
}

/// Where the run's inputs came from, for the results file.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Weight file, or `synthetic`.
    pub weights: String,
    /// The `--limit` on the number of samples, if any.
    pub limit: Option<usize>,
}

/// The grid's schedules, `r_init`-major.
pub fn grid_schedules(r_init: &[f64], alpha: &[f64]) -> Result<Vec<Schedule>> {
    let mut out = Vec::with_capacity(r_init.len() * alpha.len());
    for &r in r_init {
        for &a in alpha {
            let s = Schedule::Exp {
                r_init: r,
                alpha: a,
            };
            s.validate()?;
            out.push(s);
        }
    }
    Ok(out)
}

/// The header of a results file for `dataset` (after `--limit`, before sharding).
#[allow(clippy::too_many_arguments)]
pub fn results_header(
    kind: Kind,
    model: &Model,
    info: &RunInfo,
    gpu: Option<&Gpu>,
    dataset: &Dataset,
    seed: u64,
    eval_batch: usize,
    shard: Shard,
    shard_unit: ShardUnit,
) -> ResultsFile {
    ResultsFile {
        format: FORMAT.into(),
        version: VERSION,
        kind,
        model: model.cfg.name.to_string(),
        weights: info.weights.clone(),
        seed,
        adapter: gpu.map(AdapterInfo::of),
        data: DataInfo {
            source: dataset.source.clone(),
            labelled: dataset.labelled(),
            class_map: dataset.class_map,
            classes: dataset.classes.len(),
            images_total: dataset.total,
            images_selected: dataset.samples.len(),
            limit: info.limit,
        },
        eval_batch,
        bench_batches: Vec::new(),
        shards: vec![shard],
        shard_unit,
        grid: None,
        quality_metric: QualityMetric::default_for(dataset.labelled()),
        pareto_batch: None,
        pareto_objectives: Vec::new(),
        failures: Vec::new(),
        skipped: dataset.skipped.clone(),
        notes: dataset.warnings.clone(),
        results: Vec::new(),
    }
}

/// Progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let p = indicatif::ProgressBar::new(len);
    p.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:28}} {{pos}}/{{len}} {{per_sec}} {{msg}} [{{elapsed}}<{{eta}}]"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    p
}

/// Run the sweep. `dataset` is the whole (limited) data set; the shard is taken here.
pub fn run_sweep(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    dataset: &Dataset,
    info: &RunInfo,
    cfg: &SweepConfig,
) -> Result<ResultsFile> {
    let start = Instant::now();
    let grid = grid_schedules(&cfg.r_init, &cfg.alpha)?;
    let mut points: Vec<(Schedule, Role)> = grid.iter().map(|s| (s.clone(), Role::Grid)).collect();
    for e in &cfg.extra {
        if *e != Schedule::None && !points.iter().any(|(s, _)| s == e) {
            points.push((e.clone(), Role::Extra));
        }
    }
    if points.is_empty() {
        return Err(Error::arg("grid", "(empty)", "no schedules to sweep"));
    }
    let (points, samples, bench_here) = match cfg.shard_by {
        ShardUnit::Grid => (cfg.shard.select(points), dataset.samples.clone(), true),
        ShardUnit::Images => (
            points,
            cfg.shard.select(dataset.samples.clone()),
            cfg.shard.index == 1,
        ),
    };
    let mut res = results_header(
        Kind::Sweep,
        model,
        info,
        Some(gpu),
        dataset,
        cfg.eval.seed,
        cfg.eval.batch,
        cfg.shard,
        cfg.shard_by,
    );
    if cfg.shard_by == ShardUnit::Images {
        res.data.images_selected = samples.len();
    }
    res.grid = Some(GridInfo {
        r_init: cfg.r_init.clone(),
        alpha: cfg.alpha.clone(),
    });
    res.pareto_batch = cfg.pareto_batch;
    if let Some(q) = cfg.quality {
        if q.needs_labels() && !dataset.labelled() {
            return Err(Error::arg(
                "quality",
                format!("{q:?}").to_lowercase(),
                "needs labelled data (an ImageFolder); use agreement or kl",
            ));
        }
        res.quality_metric = q;
    }
    // Quality.
    let schedules: Vec<Schedule> = points.iter().map(|(s, _)| s.clone()).collect();
    let mut rows: Vec<ScheduleResult> = Vec::with_capacity(points.len() + 1);
    rows.push(ScheduleResult::new(
        &model.cfg,
        &Schedule::None,
        Role::Baseline,
    )?);
    for (s, role) in &points {
        rows.push(ScheduleResult::new(&model.cfg, s, *role)?);
    }
    if !samples.is_empty() {
        let bar = progress_bar(samples.len() as u64, "quality");
        let out = evaluate(
            gpu,
            cache,
            model,
            &schedules,
            &samples,
            &cfg.eval,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        rows[0].quality = Some(out.baseline.clone());
        for (i, st) in out.stats.iter().enumerate() {
            rows[i + 1].quality = Some(st.clone());
            rows[i + 1].same_as = out.same_as[i].clone();
        }
        res.failures = out.failures;
    }
    // Throughput and PAM.
    if bench_here && !cfg.bench_batches.is_empty() {
        res.bench_batches = cfg.bench_batches.clone();
        time_rows(gpu, cache, model, cfg, &mut rows)?;
    } else if !bench_here {
        res.notes.push(format!(
            "shard {} of an image-sharded sweep: throughput is measured by shard 1 only",
            cfg.shard
        ));
    }
    res.results = rows;
    res.notes.push(format!(
        "sweep of {} schedules took {:.1} s",
        points.len(),
        start.elapsed().as_secs_f64()
    ));
    res.finalize();
    Ok(res)
}

/// Throughput and PAM of every row at every bench batch of `cfg`; a row whose program is an
/// earlier row's (`same_as`) takes that row's measurement.
fn time_rows(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    cfg: &SweepConfig,
    rows: &mut [ScheduleResult],
) -> Result<()> {
    let bar = progress_bar((cfg.bench_batches.len() * rows.len()) as u64, "timing");
    for &b in &cfg.bench_batches {
        if b == 0 {
            return Err(Error::arg("bench-batch", 0, "must be at least 1"));
        }
        let images = synthetic_images(&model.cfg, b, 1);
        for i in 0..rows.len() {
            // The same program as an earlier row: same measurement.
            let twin = rows[i].same_as.as_ref().and_then(|name| {
                rows[..i]
                    .iter()
                    .position(|r| &r.schedule == name)
                    .and_then(|j| rows[j].bench_at(b).cloned())
            });
            let point = match twin {
                Some(p) => p,
                None => {
                    bar.set_message(format!("{} at batch {b}", rows[i].schedule));
                    let sched: Schedule = rows[i].schedule.parse()?;
                    let row = bench_one(
                        gpu,
                        cache,
                        model,
                        &sched,
                        cfg.eval.precision,
                        b,
                        &images,
                        &cfg.bench,
                    )?;
                    BenchPoint::from(&row)
                }
            };
            rows[i].bench.push(point);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Schedules for the trajectory figure: the paper's Fig. 5 trio, then up to three Pareto-optimal
/// grid points not already among them.
pub fn trajectory_defaults(res: &ResultsFile) -> Vec<Schedule> {
    let mut out: Vec<Schedule> = ["constant:10", "linear:10", "exp:0.1,0.6"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    // The best-quality, the middle and the cheapest of the frontier.
    let mut front: Vec<&ScheduleResult> = res
        .results
        .iter()
        .filter(|r| r.pareto && r.role == Role::Grid)
        .collect();
    let metric = res.quality_metric;
    front.sort_by(|a, b| {
        let q = |r: &ScheduleResult| r.quality_value(metric).unwrap_or(f64::NAN);
        match metric.sense() {
            super::pareto::Sense::Maximize => q(b).total_cmp(&q(a)),
            super::pareto::Sense::Minimize => q(a).total_cmp(&q(b)),
        }
    });
    let picks = match front.len() {
        0 => vec![],
        1 => vec![0],
        2 => vec![0, 1],
        n => vec![0, n / 2, n - 1],
    };
    for i in picks {
        if let Ok(s) = front[i].schedule.parse::<Schedule>() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}
