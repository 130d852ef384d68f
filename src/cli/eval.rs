//! `sret-tome eval`: top-1/top-5 on an image folder (torchvision `ImageFolder` layout), and the
//! label-free fidelity of each schedule to the uncompressed model (top-1 agreement, mean KL of the
//! softmaxes) on any folder of images or on synthetic inputs.

use std::path::PathBuf;

use clap::Args;

use super::{GpuArgs, ModelArgs};
use crate::error::{Error, Result};
use crate::eval::dataset::{
    ClassMap, DataSource, Dataset, Layout, Problem, SampleItem, MAX_SAMPLES,
};
use crate::eval::evaluate::{default_workers, evaluate, EvalOptions};
use crate::eval::results::{Kind, ResultsFile, Role, ScheduleResult, ShardUnit};
use crate::eval::shard::Shard;
use crate::eval::sweep::{progress_bar, results_header, RunInfo};
use crate::gpu::Gpu;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;

/// The most decoding threads `--workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// The most schedules `--resident` may keep on the GPU at once.
pub const MAX_RESIDENT: usize = 256;

/// What to evaluate on; shared by `eval` and `sweep`.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Image folder: one sub-folder per class (labels: sorted folder names, as torchvision's
    /// ImageFolder), or a flat folder of images (no labels: fidelity only).
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Option<PathBuf>,
    /// Evaluate on N deterministic synthetic images instead (no labels: fidelity only).
    #[arg(long, value_name = "N")]
    pub synthetic: Option<usize>,
    /// Seed of the synthetic images (image i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    /// How to read --data: auto (class folders if there are sub-directories), imagefolder, flat.
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: Layout,
    /// How class folders map to model classes: auto, sorted (ImageFolder), imagenet-names
    /// (folders named after ImageNet classes or class indices).
    #[arg(long, value_enum, default_value = "auto")]
    pub class_map: ClassMap,
    /// Use N images spread evenly over the data set (every class of a sorted folder appears).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Decoding threads (default: the machine's parallelism, at most 8).
    #[arg(long)]
    pub workers: Option<usize>,
}

impl DataArgs {
    /// The data source the arguments name: `--data DIR` or `--synthetic N`, exactly one.
    pub fn source(&self) -> Result<DataSource> {
        match (&self.data, self.synthetic) {
            (Some(root), None) => Ok(DataSource::Folder {
                root: root.clone(),
                layout: self.layout,
                class_map: self.class_map,
            }),
            (None, Some(count)) if count > MAX_SAMPLES => Err(Error::arg(
                "synthetic",
                count,
                format!("at most {MAX_SAMPLES} images"),
            )),
            (None, Some(count)) => Ok(DataSource::Synthetic {
                count,
                seed: self.data_seed,
            }),
            _ => Err(Error::arg(
                "data",
                "(none)",
                "give --data DIR (an image folder) or --synthetic N",
            )),
        }
    }

    /// Scan the data and apply `--limit`; warnings go to stderr.
    pub fn open(&self, num_classes: usize) -> Result<Dataset> {
        self.check_workers()?;
        let mut ds = self.source()?.open(num_classes)?;
        if let Some(n) = self.limit {
            if n == 0 {
                return Err(Error::arg("limit", 0, "must be at least 1"));
            }
            ds.limit(n);
        }
        for w in &ds.warnings {
            eprintln!("warning: {w}");
        }
        if ds.samples.is_empty() {
            return Err(Error::arg(
                "data",
                &ds.source,
                format!(
                    "no image files found{}",
                    if ds.skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} other files skipped)", ds.skipped.len())
                    }
                ),
            ));
        }
        Ok(ds)
    }

    /// Refuses `--workers 0` (nothing would decode the images) and more than
    /// [`MAX_WORKERS`].
    pub fn check_workers(&self) -> Result<()> {
        match self.workers {
            Some(0) => Err(Error::arg(
                "workers",
                0,
                "must be at least 1 (the threads that decode images); leave it out for the default",
            )),
            Some(n) if n > MAX_WORKERS => Err(Error::arg(
                "workers",
                n,
                format!("at most {MAX_WORKERS} decoding threads"),
            )),
            _ => Ok(()),
        }
    }

    /// The image files the data set reads (none for synthetic data): inputs an output must
    /// not replace.
    pub fn files(ds: &Dataset) -> impl Iterator<Item = &std::path::Path> {
        ds.samples.iter().filter_map(|s| match &s.item {
            SampleItem::File(p) => Some(p.as_path()),
            SampleItem::Synthetic { .. } => None,
        })
    }

    /// Decoding threads: `--workers`, or the default (the machine's parallelism, at most 8).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(default_workers).max(1)
    }
}

/// Arguments of `sret-tome eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model and weights.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The images to evaluate on.
    #[command(flatten)]
    pub data: DataArgs,
    /// Schedules to evaluate (repeatable); the uncompressed model always runs as the reference.
    #[arg(long)]
    pub schedule: Vec<String>,
    /// Images per forward (default 32; 4 on a CPU adapter such as lavapipe).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Distinct schedules resident on the GPU at once; more schedules take more passes over the
    /// data. Lower it if the device runs out of memory.
    #[arg(long, default_value_t = 8)]
    pub resident: usize,
    /// Seed of the recursive passes' token permutations.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Evaluate slice K of N of the images (K from 1), or `auto`: the slice of this Slurm array
    /// task or Kubernetes Indexed Job pod (scripts/cluster, deploy/k8s); join the slices with
    /// merge-results.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Write the results (counts, so that shards add up) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the results as CSV too.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// GPU choice and precision.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Print up to 10 problems, then a count.
pub fn print_problems(title: &str, list: &[Problem]) {
    if list.is_empty() {
        return;
    }
    println!("{title}: {}", list.len());
    for p in list.iter().take(10) {
        println!("  {}: {}", p.path, p.why);
    }
    if list.len() > 10 {
        println!(
            "  ... and {} more (all listed in the JSON results)",
            list.len() - 10
        );
    }
}

/// Batch for evaluation when none is given.
pub fn default_eval_batch(gpu: &Gpu) -> usize {
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        4
    } else {
        32
    }
}

/// The weight file's path as text, or `synthetic` without one (for results files).
pub fn weights_name(m: &ModelArgs) -> String {
    m.weights
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "synthetic".into())
}

/// Run the evaluation and return the results (also printed and written as asked).
pub fn run_eval(a: EvalArgs) -> Result<ResultsFile> {
    let outputs = check_args(&a)?;
    let model = std::sync::Arc::new(a.model.load()?);
    if model.synthetic {
        eprintln!(
            "note: no --weights given; using deterministic synthetic weights for {} (accuracy is meaningless; fidelity still compares schedules)",
            model.cfg.name
        );
    }
    let mut schedules: Vec<Schedule> = Vec::new();
    for s in &a.schedule {
        let s: Schedule = s.parse()?;
        if s != Schedule::None && !schedules.contains(&s) {
            schedules.push(s);
        }
    }
    let dataset = a.data.open(model.cfg.num_classes)?;
    // No output may replace an image of the data set (by device and inode, links followed).
    for (_, out) in &outputs {
        crate::io::files::check_not_inputs(out, DataArgs::files(&dataset))?;
    }
    let shard = a.shard.unwrap_or_default();
    let samples = shard.select(dataset.samples.clone());
    let gpu = super::open_gpu(&a.gpu)?;
    let batch = a.batch.unwrap_or_else(|| default_eval_batch(&gpu));
    super::check_batch(
        "batch",
        batch,
        super::max_batch(&gpu, &model.cfg, a.gpu.precision),
        "images per forward on this device",
    )?;
    let opts = EvalOptions {
        batch,
        workers: a.data.workers(),
        resident: a.resident,
        seed: a.seed,
        precision: a.gpu.precision,
    };
    let info = RunInfo {
        weights: weights_name(&a.model),
        limit: a.data.limit,
    };
    let mut res = results_header(
        Kind::Eval,
        &model,
        &info,
        Some(&gpu),
        &dataset,
        a.seed,
        batch,
        shard,
        ShardUnit::Images,
    );
    res.data.images_selected = samples.len();
    let mut rows = vec![ScheduleResult::new(
        &model.cfg,
        &Schedule::None,
        Role::Baseline,
    )?];
    for s in &schedules {
        rows.push(ScheduleResult::new(&model.cfg, s, Role::Extra)?);
    }
    if !samples.is_empty() {
        let bar = progress_bar(samples.len() as u64, "eval");
        let out = evaluate(
            &gpu,
            &a.gpu.pipeline_cache(),
            &model,
            &schedules,
            &samples,
            &opts,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        rows[0].quality = Some(out.baseline.clone());
        for (i, st) in out.stats.iter().enumerate() {
            rows[i + 1].quality = Some(st.clone());
            rows[i + 1].same_as = out.same_as[i].clone();
        }
        res.failures = out.failures;
        let n = out.baseline.images;
        println!(
            "{} on {}: {n} images, {} forwards of batch {batch} in {:.1} s ({:.2} img/s per forward, decoding overlapped)",
            model.cfg.name,
            gpu.describe(),
            out.forwards,
            out.seconds,
            (out.forwards * batch) as f64 / out.seconds.max(1e-9)
        );
    }
    res.results = rows;
    res.finalize();
    print_data_line(&dataset, shard, samples.len());
    println!("agree: top-1 agreement with the uncompressed model; KL: mean KL(p_uncompressed || p_schedule) in nats");
    print!("{}", res.render_table());
    print_problems("unreadable images (not counted)", &res.failures);
    print_problems("skipped files (not images)", &res.skipped);
    if let Some(p) = &a.json {
        res.write_json(p)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.csv {
        res.write_csv(p)?;
        println!("wrote {}", p.display());
    }
    let evaluated = res
        .baseline()
        .and_then(|b| b.quality.as_ref())
        .map_or(0, |q| q.images);
    if evaluated == 0 && !samples.is_empty() {
        return Err(Error::arg(
            "data",
            &dataset.source,
            format!("none of the {} images could be read", samples.len()),
        ));
    }
    Ok(res)
}

/// The line that says what was evaluated: the data's source, its classes and labels, and the
/// shard's share of its images (`selected` of them).
fn print_data_line(dataset: &Dataset, shard: Shard, selected: usize) {
    println!(
        "data: {}{}{}",
        dataset.source,
        if dataset.labelled() {
            format!(
                ", {} classes (labels: {})",
                dataset.classes.len(),
                match dataset.class_map {
                    Some(ClassMap::ImagenetNames) => "ImageNet classes named by the folders",
                    _ => "sorted folder index, as torchvision ImageFolder",
                }
            )
        } else {
            ", no labels (fidelity only)".into()
        },
        if shard.is_whole() {
            String::new()
        } else {
            format!(
                ", shard {shard}: {} of {} images",
                selected,
                dataset.samples.len()
            )
        }
    );
}

/// `eval`'s arguments checked before any work: workers, batch, resident schedules and the
/// output paths (distinct, creatable, no input); the outputs with their flags.
fn check_args(a: &EvalArgs) -> Result<Vec<(&'static str, &std::path::Path)>> {
    a.data.check_workers()?;
    if a.batch == Some(0) {
        return Err(Error::arg("batch", 0, "must be at least 1"));
    }
    if a.resident == 0 || a.resident > MAX_RESIDENT {
        return Err(Error::arg(
            "resident",
            a.resident,
            format!("schedules resident at once: between 1 and {MAX_RESIDENT}"),
        ));
    }
    let outputs: Vec<(&str, &std::path::Path)> = [("--json", &a.json), ("--csv", &a.csv)]
        .into_iter()
        .filter_map(|(w, p)| Some((w, p.as_deref()?)))
        .collect();
    crate::io::files::check_distinct_outputs(&outputs)?;
    for (_, out) in &outputs {
        crate::io::files::check_output_creating(out, &a.model.inputs())?;
    }
    Ok(outputs)
}

/// Run `sret-tome eval`: evaluate every schedule and the uncompressed reference on the data.
pub fn run(a: EvalArgs) -> Result<()> {
    run_eval(a).map(|_| ())
}
