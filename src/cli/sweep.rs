//! `sret-tome sweep`: every `(r_init, alpha)` point of the exponential schedule (paper section
//! 5.3): quality (accuracy with labels, fidelity always), throughput and PAM per batch, FLOPs, the
//! Pareto frontier, CSV/JSON and the figures (frontier, effect of alpha, trajectories).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::bench::{check_distinct, parse_batch, parse_iters, parse_warmup};
use super::eval::{default_eval_batch, print_problems, weights_name, DataArgs};
use super::{GpuArgs, ModelArgs};
use crate::bench::BenchOptions;
use crate::error::{Error, Result};
use crate::eval::evaluate::EvalOptions;
use crate::eval::grid::parse_values;
use crate::eval::plots::sweep_figures;
use crate::eval::results::{QualityMetric, ResultsFile, ShardUnit};
use crate::eval::shard::Shard;
use crate::eval::sweep::{run_sweep, trajectory_defaults, RunInfo, SweepConfig};
use crate::gpu::Gpu;
use crate::model::ModelConfig;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;

/// `--shard-by`: what the shards of a sweep split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShardBy {
    /// Each shard runs its grid points over all images.
    Grid,
    /// Each shard runs all grid points over its images (shard 1 also measures throughput).
    Images,
}

/// Arguments of `sret-tome sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Model and weights.
    #[command(flatten)]
    pub model: ModelArgs,
    /// r_init values: START:STOP:STEP (inclusive) or V1,V2,...
    #[arg(long, default_value = "0.05:0.5:0.05")]
    pub rinit: String,
    /// alpha values: START:STOP:STEP (inclusive) or V1,V2,...
    #[arg(long, default_value = "0:1:0.1")]
    pub alpha: String,
    /// Other schedules to measure alongside the grid (repeatable), e.g. constant:10, linear:10.
    #[arg(long)]
    pub schedule: Vec<String>,
    /// The images to evaluate on.
    #[command(flatten)]
    pub data: DataArgs,
    /// Images per forward for quality, at least 1 (default 32; 4 on a CPU adapter).
    #[arg(long, value_parser = parse_batch)]
    pub batch: Option<usize>,
    /// Distinct schedules resident on the GPU at once during the quality passes, at least 1.
    #[arg(long, default_value_t = 8, value_parser = parse_resident)]
    pub resident: usize,
    /// Batches to time, comma separated, each at least 1 and listed once (default 1,128; 1,4
    /// on a CPU adapter). Fig. 6 is the large batch, Fig. 8 batch 1.
    #[arg(long, value_delimiter = ',', value_parser = parse_batch)]
    pub bench_batch: Vec<usize>,
    /// Do not time anything (the frontier then uses FLOPs).
    #[arg(long)]
    pub no_bench: bool,
    /// Untimed forwards before timing, at least 1. Default 20 (1 on a CPU adapter).
    #[arg(long, value_parser = parse_warmup)]
    pub warmup: Option<usize>,
    /// Timed forwards, at least 1 (median reported). Default: as many as fit in ~5 s on a CPU
    /// adapter, else 100.
    #[arg(long, value_parser = parse_iters)]
    pub iters: Option<usize>,
    /// Batch whose throughput and PAM the frontier uses, one of the timed batches (default:
    /// the largest timed).
    #[arg(long, value_parser = parse_batch)]
    pub pareto_batch: Option<usize>,
    /// Quality axis of the frontier and figures: top1, top5, agreement (with the uncompressed
    /// model) or kl (mean KL to it, lower is better). Default: top1 with labels, else agreement.
    #[arg(long, value_enum)]
    pub quality: Option<QualityMetric>,
    /// Schedules drawn in the trajectory figure (default: constant:10, linear:10, exp:0.1,0.6 and
    /// up to three Pareto-optimal points).
    #[arg(long)]
    pub trajectory: Vec<String>,
    /// Seed of the recursive passes' token permutations.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Run slice K of N (K from 1) of the grid (or of the images with --shard-by images), or
    /// `auto` (the slice of this Slurm array task or Kubernetes Indexed Job pod); join the
    /// slices with merge-results.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// What the shards split: grid (the grid points) or images.
    #[arg(long, value_enum, default_value = "grid")]
    pub shard_by: ShardBy,
    /// Directory for sweep.json, sweep.csv and the figures (PNG and SVG).
    #[arg(long, default_value = "sweep-results")]
    pub out_dir: PathBuf,
    /// GPU choice and precision.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// `--resident`: programs resident at once, at least 1.
fn parse_resident(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (distinct schedules resident on the GPU at once)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}: expected a whole number of at least 1")),
    }
}

/// The timing arguments that need no device: `--bench-batch` entries given once, and
/// `--pareto-batch` one of the batches that will be timed (`timed`: none with `--no-bench`).
fn check_bench_args(a: &SweepArgs, timed: Option<&[usize]>) -> Result<()> {
    check_distinct("bench-batch", &a.bench_batch)?;
    let Some(p) = a.pareto_batch else {
        return Ok(());
    };
    match timed {
        None => Err(Error::arg(
            "pareto-batch",
            p,
            "nothing is timed with --no-bench (the frontier then uses FLOPs): drop one of the two",
        )),
        Some(t) if !t.contains(&p) => Err(Error::arg(
            "pareto-batch",
            p,
            format!(
                "not a timed batch: pass one of {} or add it to --bench-batch",
                t.iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Draw the figures of a (whole) sweep and say where they went.
pub fn write_figures(
    res: &ResultsFile,
    cfg: &ModelConfig,
    trajectory: &[String],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let schedules: Vec<Schedule> = if trajectory.is_empty() {
        trajectory_defaults(res)
    } else {
        trajectory
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?
    };
    let files = sweep_figures(res, cfg, &schedules, dir)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(files)
}

/// What the sweep measures and how, from the arguments and the adapter (smaller timing
/// defaults on a CPU adapter); the timed batches checked against the device.
fn sweep_config(
    a: &SweepArgs,
    gpu: &Gpu,
    model: &ModelConfig,
    r_init: Vec<f64>,
    alpha: Vec<f64>,
    extra: Vec<Schedule>,
) -> Result<SweepConfig> {
    let cpu_adapter = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let bench_batches = if a.no_bench {
        Vec::new()
    } else if !a.bench_batch.is_empty() {
        a.bench_batch.clone()
    } else if cpu_adapter {
        vec![1, 4]
    } else {
        vec![1, 128]
    };
    check_bench_args(a, (!a.no_bench).then_some(&bench_batches[..]))?;
    let max = super::max_batch(gpu, model, a.gpu.precision);
    for &b in &bench_batches {
        super::check_batch("bench-batch", b, max, "images per forward on this device")?;
    }
    let shard = a.shard.unwrap_or_default();
    let batch = a.batch.unwrap_or_else(|| default_eval_batch(gpu));
    Ok(SweepConfig {
        r_init,
        alpha,
        extra,
        bench_batches,
        bench: BenchOptions {
            warmup: a.warmup.unwrap_or(if cpu_adapter { 1 } else { 20 }),
            iters: a.iters,
            budget_secs: if cpu_adapter { 5.0 } else { f64::INFINITY },
            // The results file holds the device's time only.
            end_to_end: false,
        },
        eval: EvalOptions {
            batch,
            workers: a.data.workers(),
            resident: a.resident,
            seed: a.seed,
            precision: a.gpu.precision,
        },
        shard,
        shard_by: match a.shard_by {
            ShardBy::Grid => ShardUnit::Grid,
            ShardBy::Images => ShardUnit::Images,
        },
        pareto_batch: a.pareto_batch,
        quality: a.quality,
    })
}

/// Run the sweep the arguments describe, write its JSON, CSV and figures, and return the results.
pub fn run_sweep_cmd(a: SweepArgs) -> Result<ResultsFile> {
    crate::io::files::check_output_dir(&a.out_dir, &a.model.inputs())?;
    if a.no_bench || !a.bench_batch.is_empty() {
        check_bench_args(&a, (!a.no_bench).then_some(&a.bench_batch[..]))?;
    }
    let earlier = earlier_files(&a.out_dir);
    let model = std::sync::Arc::new(a.model.load()?);
    if model.synthetic {
        eprintln!(
            "note: no --weights given; using deterministic synthetic weights for {} (accuracy is meaningless; fidelity still compares schedules)",
            model.cfg.name
        );
    }
    let r_init = parse_values(&a.rinit)?;
    let alpha = parse_values(&a.alpha)?;
    let extra = a
        .schedule
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<Schedule>>>()?;
    for s in &a.trajectory {
        s.parse::<Schedule>()?;
    }
    let dataset = a.data.open(model.cfg.num_classes)?;
    let gpu = super::open_gpu(&a.gpu)?;
    let cfg = sweep_config(&a, &gpu, &model.cfg, r_init, alpha, extra)?;
    let shard = cfg.shard;
    eprintln!(
        "sweep: {} r_init x {} alpha{} on {} ({} images{}), {} on {}",
        cfg.r_init.len(),
        cfg.alpha.len(),
        if cfg.extra.is_empty() {
            String::new()
        } else {
            format!(" + {} schedules", cfg.extra.len())
        },
        dataset.source,
        dataset.samples.len(),
        if shard.is_whole() {
            String::new()
        } else {
            format!(", shard {shard} by {:?}", a.shard_by).to_lowercase()
        },
        model.cfg.name,
        gpu.describe()
    );
    let info = RunInfo {
        weights: weights_name(&a.model),
        limit: a.data.limit,
    };
    let res = run_sweep(&gpu, &a.gpu.pipeline_cache(), &model, &dataset, &info, &cfg)?;
    print!("{}", res.render_table());
    println!("pareto (*): {}", res.pareto_objectives.join("; "));
    print_problems("unreadable images (not counted)", &res.failures);
    print_problems("skipped files (not images)", &res.skipped);
    let stem = if shard.is_whole() {
        "sweep".to_string()
    } else {
        format!("sweep.{}", shard.tag())
    };
    let json = a.out_dir.join(format!("{stem}.json"));
    let csv = a.out_dir.join(format!("{stem}.csv"));
    res.write_json(&json)?;
    res.write_csv(&csv)?;
    println!("wrote {}\nwrote {}", json.display(), csv.display());
    let mut written = vec![json, csv];
    if shard.is_whole() {
        written.extend(write_figures(&res, &model.cfg, &a.trajectory, &a.out_dir)?);
        report_earlier(&a.out_dir, &earlier, &written);
    } else {
        report_earlier(&a.out_dir, &earlier, &written);
        println!(
            "figures are drawn once all shards are joined: sret-tome merge-results {}/sweep.shard-*-of-{}.json --out-dir DIR",
            a.out_dir.display(),
            shard.count
        );
    }
    Ok(res)
}

/// The files (not directories) in `dir` before this run wrote anything.
pub fn earlier_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Says which earlier files of `dir` this run replaced and which it left as they were (an
/// earlier run's figures, say), so that a directory of mixed runs does not go unnoticed.
pub fn report_earlier(dir: &Path, earlier: &[PathBuf], written: &[PathBuf]) {
    let names = |v: Vec<&PathBuf>| {
        v.iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (replaced, left): (Vec<&PathBuf>, Vec<&PathBuf>) =
        earlier.iter().partition(|p| written.contains(p));
    if !replaced.is_empty() {
        println!(
            "note: replaced {} earlier file(s) in {}: {}",
            replaced.len(),
            dir.display(),
            names(replaced)
        );
    }
    if !left.is_empty() {
        println!(
            "note: left {} earlier file(s) in {} that this run did not write (from another run?): {}",
            left.len(),
            dir.display(),
            names(left)
        );
    }
}

/// Run `sret-tome sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    run_sweep_cmd(a).map(|_| ())
}
