//! The results file of `eval` and `sweep` (JSON, the source of truth, and a CSV view), and the
//! merging of shards by `merge-results`.
//!
//! Quality is stored as plain counts ([`QualityStats`]) so that shards of a data set add up
//! exactly; percentages, the mean KL and the Pareto flags are derived by [`ResultsFile::finalize`]
//! (run after every merge).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dataset::{ClassMap, Problem};
use super::metrics::QualityStats;
use super::pareto::{pareto_front, Sense};
use super::shard::Shard;
use crate::bench::BenchRow;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::runtime::cost;
use crate::tome::{self, Schedule};

/// The `format` string every results file carries.
pub const FORMAT: &str = "sret-tome-results";
/// The results-file version this build writes and reads.
pub const VERSION: u32 = 1;

/// Which command wrote a results file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `sret-tome eval`: the schedules named on the command line.
    Eval,
    /// `sret-tome sweep`: the baseline and a grid of `exp` schedules.
    Sweep,
}

/// What a shard is a slice of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardUnit {
    /// Shards hold disjoint images; their counts add up.
    Images,
    /// Shards hold disjoint grid points, each over all images.
    Grid,
}

/// Why a schedule is in the results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The uncompressed model: the fidelity reference, never on the frontier.
    Baseline,
    /// A point of the sweep's `(r_init, alpha)` grid.
    Grid,
    /// A schedule asked for by name (`--schedule`).
    Extra,
}

/// One measured `(schedule, batch)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchPoint {
    /// Images per forward.
    pub batch: usize,
    /// Images per run of the program.
    pub micro_batch: usize,
    /// Images per second.
    pub throughput_img_s: f64,
    /// Milliseconds per forward of the whole batch.
    pub latency_ms: f64,
    /// Peak activation memory: the planned arena of one forward.
    pub pam_bytes: u64,
    /// Timed forwards the figures are the median of.
    pub iters: usize,
}

impl From<&BenchRow> for BenchPoint {
    fn from(r: &BenchRow) -> Self {
        BenchPoint {
            batch: r.batch,
            micro_batch: r.micro_batch,
            throughput_img_s: r.throughput_img_s,
            latency_ms: r.latency_ms,
            pam_bytes: r.pam_bytes,
            iters: r.iters,
        }
    }
}

/// Everything measured and derived for one schedule: static cost, quality counts, timings
/// and, after [`ResultsFile::finalize`], the quality percentages and the Pareto flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleResult {
    /// Canonical spec (`exp:0.25,0`).
    pub schedule: String,
    /// Why the schedule is in the results.
    pub role: Role,
    /// `RINIT` of an `exp` schedule, else `None`.
    pub r_init: Option<f64>,
    /// `ALPHA` of an `exp` schedule, else `None`.
    pub alpha: Option<f64>,
    /// Tokens merged over the network (static).
    pub removed_tokens: usize,
    /// The paper's "FLOPs" per image (twice thop's multiply-accumulates).
    pub flops_thop: u64,
    /// Estimated floating-point operations per image, functional operations included.
    pub flops_total: u64,
    /// Learnable parameters.
    pub params: u64,
    /// An earlier schedule with the same merged counts everywhere (same program, same results).
    #[serde(default)]
    pub same_as: Option<String>,
    /// Quality counts over the evaluated images, when quality was measured.
    #[serde(default)]
    pub quality: Option<QualityStats>,
    /// Timings, one per measured batch size.
    #[serde(default)]
    pub bench: Vec<BenchPoint>,
    // Derived by `finalize`.
    /// Top-1 accuracy, % (derived; needs labels).
    #[serde(default)]
    pub top1: Option<f64>,
    /// Top-5 accuracy, % (derived; needs labels).
    #[serde(default)]
    pub top5: Option<f64>,
    /// Top-1 agreement with the baseline, % (derived).
    #[serde(default)]
    pub agreement: Option<f64>,
    /// Mean KL divergence from the baseline's softmax, nats (derived).
    #[serde(default)]
    pub mean_kl: Option<f64>,
    /// Whether the schedule is on the Pareto frontier (derived; never the baseline).
    #[serde(default)]
    pub pareto: bool,
}

impl ScheduleResult {
    /// A row with the static numbers of `schedule` filled in.
    pub fn new(cfg: &ModelConfig, schedule: &Schedule, role: Role) -> Result<ScheduleResult> {
        let traj = tome::Trajectory::new(cfg, schedule)?;
        let (r_init, alpha) = match schedule {
            Schedule::Exp { r_init, alpha } => (Some(*r_init), Some(*alpha)),
            _ => (None, None),
        };
        Ok(ScheduleResult {
            schedule: schedule.to_string(),
            role,
            r_init,
            alpha,
            removed_tokens: traj.removed_total(),
            flops_thop: cost::flops_thop(cfg, &traj),
            flops_total: cost::flops_total(cfg, &traj),
            params: cost::params(cfg),
            same_as: None,
            quality: None,
            bench: Vec::new(),
            top1: None,
            top5: None,
            agreement: None,
            mean_kl: None,
            pareto: false,
        })
    }

    /// The timing at batch size `batch`, if it was measured.
    pub fn bench_at(&self, batch: usize) -> Option<&BenchPoint> {
        self.bench.iter().find(|b| b.batch == batch)
    }

    /// The value of a quality metric (derived by [`ResultsFile::finalize`]).
    pub fn quality_value(&self, metric: QualityMetric) -> Option<f64> {
        match metric {
            QualityMetric::Top1 => self.top1,
            QualityMetric::Top5 => self.top5,
            QualityMetric::Agreement => self.agreement,
            QualityMetric::Kl => self.mean_kl,
        }
    }
}

/// The quality axis of the frontier and the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QualityMetric {
    /// Top-1 accuracy against labels (%).
    Top1,
    /// Top-5 accuracy against labels (%).
    Top5,
    /// Top-1 agreement with the uncompressed model (%).
    Agreement,
    /// Mean KL divergence from the uncompressed model's softmax (nats; lower is better).
    Kl,
}

impl QualityMetric {
    /// Axis label for tables and figures, with the unit.
    pub fn label(&self) -> &'static str {
        match self {
            QualityMetric::Top1 => "top-1 accuracy (%)",
            QualityMetric::Top5 => "top-5 accuracy (%)",
            QualityMetric::Agreement => "top-1 agreement with uncompressed (%)",
            QualityMetric::Kl => "mean KL to uncompressed (nats)",
        }
    }
    /// Better is higher, except for KL.
    pub fn sense(&self) -> Sense {
        match self {
            QualityMetric::Kl => Sense::Minimize,
            _ => Sense::Maximize,
        }
    }
    /// Whether values are percentages (all but KL).
    pub fn is_percent(&self) -> bool {
        *self != QualityMetric::Kl
    }
    /// Whether the metric needs labelled data (top-1 and top-5).
    pub fn needs_labels(&self) -> bool {
        matches!(self, QualityMetric::Top1 | QualityMetric::Top5)
    }
    /// Top-1 with labels, else agreement.
    pub fn default_for(labelled: bool) -> QualityMetric {
        if labelled {
            QualityMetric::Top1
        } else {
            QualityMetric::Agreement
        }
    }
}

fn verb(s: Sense) -> &'static str {
    match s {
        Sense::Maximize => "maximise",
        Sense::Minimize => "minimise",
    }
}

/// The data set a results file was computed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// `folder DIR` or `synthetic N images (seed S)`.
    pub source: String,
    /// Whether the samples have ground-truth labels.
    pub labelled: bool,
    /// How folder names map to class indices, for labelled folders.
    pub class_map: Option<ClassMap>,
    /// Number of class folders (0 without labels).
    pub classes: usize,
    /// Samples in the whole data set.
    pub images_total: usize,
    /// Samples evaluated over all shards (after `--limit`).
    pub images_selected: usize,
    /// The `--limit` on the number of samples, if any.
    pub limit: Option<usize>,
}

/// The GPU adapter a results file was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// wgpu backend (`Vulkan`, `Metal`, `Dx12`, `Gl`).
    pub backend: String,
    /// Driver name and version.
    pub driver: String,
    /// wgpu's device type (`DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu`, `Other`).
    pub device_type: String,
}

impl AdapterInfo {
    /// The description of `gpu`'s adapter.
    pub fn of(gpu: &crate::gpu::Gpu) -> AdapterInfo {
        AdapterInfo {
            name: gpu.info.name.clone(),
            backend: format!("{:?}", gpu.info.backend),
            driver: format!("{} {}", gpu.info.driver, gpu.info.driver_info),
            device_type: format!("{:?}", gpu.info.device_type),
        }
    }
}

/// The `(r_init, alpha)` grid of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridInfo {
    /// `RINIT` values of the grid.
    pub r_init: Vec<f64>,
    /// `ALPHA` values of the grid.
    pub alpha: Vec<f64>,
}

/// A whole results file of `eval` or `sweep`: its header (model, data, device, shards) and one
/// [`ScheduleResult`] per schedule. Written as JSON (the source of truth) and as CSV.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this build writes.
    pub version: u32,
    /// The command that wrote the file.
    pub kind: Kind,
    /// Model name.
    pub model: String,
    /// Weight file, or `synthetic`.
    pub weights: String,
    /// Seed of the recursive passes' permutations.
    pub seed: u64,
    /// The adapter the run used (`None` when it opened no GPU).
    pub adapter: Option<AdapterInfo>,
    /// The data set.
    pub data: DataInfo,
    /// Images per forward in the quality evaluation.
    pub eval_batch: usize,
    /// Batch sizes measured for throughput and PAM.
    pub bench_batches: Vec<usize>,
    /// Shards contained in this file (`[1/1]` for a whole run).
    pub shards: Vec<Shard>,
    /// What the shards split: images or grid points.
    pub shard_unit: ShardUnit,
    /// The sweep's grid (`None` for `eval`).
    pub grid: Option<GridInfo>,
    /// The quality axis of the frontier.
    pub quality_metric: QualityMetric,
    /// Batch whose throughput and PAM the frontier uses (`None`: FLOPs instead).
    pub pareto_batch: Option<usize>,
    /// The frontier's objectives, for readers.
    #[serde(default)]
    pub pareto_objectives: Vec<String>,
    /// Samples that could not be loaded (counted out of every schedule's images).
    pub failures: Vec<Problem>,
    /// Files that are not samples.
    pub skipped: Vec<Problem>,
    /// Remarks for the reader (data-set warnings, merge notes).
    #[serde(default)]
    pub notes: Vec<String>,
    /// One row per schedule, the baseline included.
    pub results: Vec<ScheduleResult>,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// KL values span many decades: 4 significant digits.
fn fmt_kl(k: f64) -> String {
    if k == 0.0 {
        "0".into()
    } else if k.abs() < 0.01 {
        format!("{k:.3e}")
    } else {
        format!("{k:.4}")
    }
}

fn fmt_f64(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

impl ResultsFile {
    /// Recompute the derived percentages, mean KL and the Pareto frontier.
    pub fn finalize(&mut self) {
        for r in &mut self.results {
            let q = r.quality.clone().unwrap_or_default();
            r.top1 = q.top1();
            r.top5 = q.top5();
            r.agreement = q.agreement();
            r.mean_kl = q.mean_kl();
        }
        if self.quality_metric.needs_labels() && !self.data.labelled {
            self.quality_metric = QualityMetric::Agreement;
        }
        for r in &mut self.results {
            r.pareto = false;
        }
        if self.kind != Kind::Sweep {
            self.pareto_objectives.clear();
            return;
        }
        // The frontier: the pareto batch if every candidate has it (largest measured batch by
        // default, as the paper's Fig. 7 at batch 128), else FLOPs.
        let candidates: Vec<usize> = (0..self.results.len())
            .filter(|&i| self.results[i].role != Role::Baseline)
            .collect();
        if self.pareto_batch.is_none()
            || !candidates.iter().all(|&i| {
                self.results[i]
                    .bench_at(self.pareto_batch.unwrap_or(0))
                    .is_some()
            })
        {
            self.pareto_batch = self.bench_batches.iter().copied().max().filter(|&b| {
                candidates
                    .iter()
                    .all(|&i| self.results[i].bench_at(b).is_some())
            });
        }
        let metric = self.quality_metric;
        let (senses, names, points): (Vec<Sense>, Vec<String>, Vec<Vec<f64>>) =
            match self.pareto_batch {
                Some(b) => (
                    vec![metric.sense(), Sense::Maximize, Sense::Minimize],
                    vec![
                        format!("{} {}", verb(metric.sense()), metric.label()),
                        format!("maximise throughput at batch {b} (img/s)"),
                        format!("minimise peak activation memory at batch {b}"),
                    ],
                    candidates
                        .iter()
                        .map(|&i| {
                            let r = &self.results[i];
                            let bp = r.bench_at(b);
                            vec![
                                r.quality_value(metric).unwrap_or(f64::NAN),
                                bp.map_or(f64::NAN, |p| p.throughput_img_s),
                                bp.map_or(f64::NAN, |p| p.pam_bytes as f64),
                            ]
                        })
                        .collect(),
                ),
                None => (
                    vec![metric.sense(), Sense::Minimize],
                    vec![
                        format!("{} {}", verb(metric.sense()), metric.label()),
                        "minimise FLOPs (no throughput measured)".into(),
                    ],
                    candidates
                        .iter()
                        .map(|&i| {
                            let r = &self.results[i];
                            vec![
                                r.quality_value(metric).unwrap_or(f64::NAN),
                                r.flops_thop as f64,
                            ]
                        })
                        .collect(),
                ),
            };
        let front = pareto_front(&points, &senses);
        for (k, &i) in candidates.iter().enumerate() {
            self.results[i].pareto = front[k];
        }
        self.pareto_objectives = names;
    }

    /// The uncompressed schedule's row, if any.
    pub fn baseline(&self) -> Option<&ScheduleResult> {
        self.results.iter().find(|r| r.role == Role::Baseline)
    }

    /// The file as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Write the file as JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_text(path, &(self.to_json() + "\n"))
    }

    /// Read a results file written by this crate; errors when it is not JSON of this format and
    /// version.
    pub fn read_json(path: &Path) -> Result<ResultsFile> {
        let text = crate::io::files::read_regular_text(path, MAX_RESULTS_BYTES, "results file")?;
        let f: ResultsFile = serde_json::from_str(&text).map_err(|e| {
            Error::arg(
                "results file",
                path.display(),
                format!("not a sret-tome results file: {e}"),
            )
        })?;
        if f.format != FORMAT || f.version != VERSION {
            return Err(Error::arg(
                "results file",
                path.display(),
                format!(
                    "format '{}' version {}, expected '{FORMAT}' version {VERSION}",
                    f.format, f.version
                ),
            ));
        }
        Ok(f)
    }

    /// One line per schedule: static numbers, quality, then per bench batch throughput, latency,
    /// PAM (MiB) and the micro-batch it ran as.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "schedule,role,r_init,alpha,removed_tokens,flops_thop_g,flops_total_g,params_m,images,labelled,top1,top5,agreement,mean_kl,same_as,pareto",
        );
        for b in &self.bench_batches {
            s += &format!(
                ",throughput_img_s_bs{b},latency_ms_bs{b},pam_mib_bs{b},micro_batch_bs{b}"
            );
        }
        s.push('\n');
        for r in &self.results {
            let q = r.quality.clone().unwrap_or_default();
            s += &format!(
                "{},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{}",
                r.schedule.replace(',', ";"),
                format!("{:?}", r.role).to_lowercase(),
                fmt_f64(r.r_init),
                fmt_f64(r.alpha),
                r.removed_tokens,
                r.flops_thop as f64 / 1e9,
                r.flops_total as f64 / 1e9,
                r.params as f64 / 1e6,
                q.images,
                q.labelled,
                fmt_opt(r.top1, 4),
                fmt_opt(r.top5, 4),
                fmt_opt(r.agreement, 4),
                fmt_f64(r.mean_kl),
                r.same_as.clone().unwrap_or_default().replace(',', ";"),
                r.pareto
            );
            for b in &self.bench_batches {
                match r.bench_at(*b) {
                    Some(p) => {
                        s += &format!(
                            ",{:.4},{:.4},{:.4},{}",
                            p.throughput_img_s,
                            p.latency_ms,
                            p.pam_bytes as f64 / (1024.0 * 1024.0),
                            p.micro_batch
                        )
                    }
                    None => s += ",,,,",
                }
            }
            s.push('\n');
        }
        s
    }

    /// Write the CSV view to `path`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        write_text(path, &self.to_csv())
    }

    /// The human-readable table printed by `eval`, `sweep` and `merge-results`.
    pub fn render_table(&self) -> String {
        let base = self.baseline();
        let mut s = String::new();
        let mut head = format!(
            "{:<16} {:>7} {:>8} {:>15} {:>8} {:>9} {:>9}",
            "schedule", "removed", "FLOPs G", "top-1 % (vs)", "top-5 %", "agree %", "KL"
        );
        for b in &self.bench_batches {
            head += &format!(" {:>11} {:>9}", format!("img/s@{b}"), format!("PAM@{b}"));
        }
        if self.kind == Kind::Sweep {
            head += "  pareto";
        }
        s += &head;
        s.push('\n');
        for r in &self.results {
            let rel = |v: Option<f64>, b: Option<f64>| match (v, b) {
                (Some(v), Some(b)) if r.role != Role::Baseline => format!("{v:.2} ({:+.2})", v - b),
                (Some(v), _) => format!("{v:.2}"),
                _ => "-".into(),
            };
            let mut line = format!(
                "{:<16} {:>7} {:>8.3} {:>15} {:>8} {:>9} {:>9}",
                r.schedule,
                r.removed_tokens,
                r.flops_thop as f64 / 1e9,
                rel(r.top1, base.and_then(|b| b.top1)),
                r.top5.map_or("-".into(), |v| format!("{v:.2}")),
                r.agreement.map_or("-".into(), |v| format!("{v:.2}")),
                r.mean_kl.map(fmt_kl).unwrap_or_else(|| "-".into()),
            );
            for b in &self.bench_batches {
                match r.bench_at(*b) {
                    Some(p) => {
                        line += &format!(
                            " {:>11.2} {:>9.1}",
                            p.throughput_img_s,
                            p.pam_bytes as f64 / (1024.0 * 1024.0)
                        )
                    }
                    None => line += &format!(" {:>11} {:>9}", "-", "-"),
                }
            }
            line += if r.pareto { "  *" } else { "" };
            if let Some(o) = &r.same_as {
                line += &format!("  (= {o})");
            }
            s += line.trim_end();
            s.push('\n');
        }
        s
    }
}

/// Largest results file `merge-results` reads.
pub const MAX_RESULTS_BYTES: u64 = 64 << 20;

/// Writes `text` atomically ([`crate::io::files::write_atomic`]), creating the directory.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Write {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    crate::io::files::write_atomic_bytes(path, text.as_bytes())
}

fn dedup_problems(v: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.path.clone()));
    v.sort_by(|a, b| a.path.cmp(&b.path));
}

/// [`merge_files`] of results not read from files: each is named by its shards in messages.
pub fn merge(files: Vec<ResultsFile>, allow_partial: bool) -> Result<ResultsFile> {
    let named = files
        .into_iter()
        .map(|f| {
            (
                std::path::PathBuf::from(format!("(shards {})", shard_list(&f))),
                f,
            )
        })
        .collect();
    merge_files(named, allow_partial)
}

/// A shard file with its path, for messages.
type Named = (std::path::PathBuf, ResultsFile);

/// The most schedules (rows) a results file, or a merge of them, may hold: a 100 x 100 sweep
/// grid; the Pareto frontier compares every pair of rows.
pub const MAX_RESULT_ROWS: usize = 10_000;
/// The most bench batch sizes a results file may list.
pub const MAX_BENCH_BATCHES: usize = 64;

/// An error about the results file `path`.
fn file_error(path: &Path, why: impl ToString) -> Error {
    Error::arg("results file", path.display(), why)
}

/// `1/4,3/4`: the shards a file holds.
fn shard_list(f: &ResultsFile) -> String {
    f.shards
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// At most 10 items of a list, then how many more.
fn summarise(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > 10 {
        s.push_str(&format!(" and {} more", items.len() - 10));
    }
    s
}

/// Join the shards of one `eval` or `sweep` run: image shards add their counts per schedule,
/// grid shards contribute their grid points. Every shard `1..N` must be present exactly once,
/// unless `allow_partial` (then the missing ones are listed in `notes`). `files` pairs each
/// results file with its path, which every error names.
///
/// Before anything is joined the files are checked against each other with work bounded by
/// their size ([`MAX_SHARDS`](super::shard::MAX_SHARDS) at most): one run (model, weights,
/// data, shard count, ...), no shard holding more images than the run selects and all of
/// them together exactly those images, every count within its shard's images.
pub fn merge_files(files: Vec<Named>, allow_partial: bool) -> Result<ResultsFile> {
    let Some((_, first)) = files.first() else {
        return Err(Error::arg("results", "(none)", "no results files to merge"));
    };
    let count = check_one_run(&files)?;
    for (path, f) in &files {
        check_shard_file(path, f, count)?;
    }
    let have = shard_coverage(&files, count)?;
    let missing: Vec<String> = (1..=count)
        .filter(|k| !have.contains_key(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    let mut out = first.clone();
    out.notes.clear();
    if !missing.is_empty() {
        if !allow_partial {
            return Err(Error::arg(
                "results",
                summarise(&missing),
                format!(
                    "{} of {count} shards are missing (pass --allow-partial to merge what is there)",
                    missing.len()
                ),
            ));
        }
        out.notes.push(format!(
            "partial merge: {} shard(s) missing: {}",
            missing.len(),
            summarise(&missing)
        ));
    }
    out.shards = have.keys().map(|&k| Shard { index: k, count }).collect();
    join_shards(&mut out, &files)?;
    let selected = selected_images(&first.data);
    let joined = out.data.images_selected;
    if first.shard_unit == ShardUnit::Images
        && (joined > selected || (missing.is_empty() && joined != selected))
    {
        return Err(Error::arg(
            "results",
            files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            format!(
                "the image shards hold {joined} images together, but the run selects {selected}{}",
                if missing.is_empty() {
                    " (all shards given)"
                } else {
                    ""
                }
            ),
        ));
    }
    if first.shard_unit == ShardUnit::Images {
        check_every_schedule_everywhere(&out, &files)?;
    }
    out.bench_batches.sort_unstable();
    dedup_problems(&mut out.failures);
    dedup_problems(&mut out.skipped);
    sort_results(&mut out.results);
    out.finalize();
    Ok(out)
}

/// Checks that the files are shards of one run (the first file's header is the reference)
/// and returns their shard count `N`.
fn check_one_run(files: &[Named]) -> Result<usize> {
    let (first_path, first) = &files[0];
    let count = first.shards.first().map_or(1, |s| s.count);
    let header = |f: &ResultsFile| -> [(&'static str, String); 13] {
        [
            ("kind", format!("{:?}", f.kind)),
            ("model", f.model.clone()),
            ("weights", f.weights.clone()),
            ("seed", f.seed.to_string()),
            ("data", f.data.source.clone()),
            ("labelled", f.data.labelled.to_string()),
            ("class map", format!("{:?}", f.data.class_map)),
            ("classes", f.data.classes.to_string()),
            ("images_total", f.data.images_total.to_string()),
            ("limit", format!("{:?}", f.data.limit)),
            ("eval batch", f.eval_batch.to_string()),
            ("shard unit", format!("{:?}", f.shard_unit)),
            ("grid", format!("{:?}", f.grid)),
        ]
    };
    let reference = header(first);
    for (path, f) in files {
        for ((what, a), (_, b)) in reference.iter().zip(header(f)) {
            if *a != b {
                return Err(file_error(
                    path,
                    format!(
                        "shards disagree on {what}: '{b}' here, '{a}' in {} (not shards of one run)",
                        first_path.display()
                    ),
                ));
            }
        }
        if let Some(s) = f.shards.iter().find(|s| s.count != count) {
            return Err(file_error(
                path,
                format!(
                    "shards disagree on the shard count: shard {s} here, {count} shards in {}",
                    first_path.display()
                ),
            ));
        }
    }
    Ok(count)
}

/// Checks one file on its own: it holds shards, its image counts are what slicing the data
/// gives, and each schedule appears once with consistent counts within the file's images.
fn check_shard_file(path: &Path, f: &ResultsFile, count: usize) -> Result<()> {
    if f.shards.is_empty() {
        return Err(file_error(path, "it lists no shards"));
    }
    let shards = shard_list(f);
    let d = &f.data;
    if d.images_total > super::dataset::MAX_SAMPLES {
        return Err(file_error(
            path,
            format!(
                "images_total = {} is more than any data set ({})",
                d.images_total,
                super::dataset::MAX_SAMPLES
            ),
        ));
    }
    let selected = selected_images(&f.data);
    let fits = match f.shard_unit {
        ShardUnit::Images => d.images_selected <= selected,
        ShardUnit::Grid => d.images_selected == selected,
    };
    if !fits {
        return Err(file_error(
            path,
            format!(
                "shard {shards} of {count} holds {} images, but the run selects {selected} ({}){}",
                d.images_selected,
                match d.limit {
                    Some(l) => format!("--limit {l} of {} images", d.images_total),
                    None => "images_total".into(),
                },
                match f.shard_unit {
                    ShardUnit::Images => ", more than a slice can hold",
                    ShardUnit::Grid => ", and every grid shard runs them all",
                }
            ),
        ));
    }
    if f.results.len() > MAX_RESULT_ROWS || f.bench_batches.len() > MAX_BENCH_BATCHES {
        return Err(file_error(
            path,
            format!(
                "{} schedules and {} bench batches, more than a run has (at most {MAX_RESULT_ROWS} and {MAX_BENCH_BATCHES})",
                f.results.len(),
                f.bench_batches.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for r in &f.results {
        if !seen.insert(r.schedule.as_str()) {
            return Err(file_error(
                path,
                format!(
                    "schedule {} appears twice in this shard ({shards})",
                    r.schedule
                ),
            ));
        }
        let Some(q) = &r.quality else { continue };
        let why = q.validate().err().or_else(|| {
            (q.images > d.images_selected as u64).then(|| {
                format!(
                    "images = {} is more than the shard's {} images",
                    q.images, d.images_selected
                )
            })
        });
        if let Some(why) = why {
            return Err(file_error(
                path,
                format!(
                    "shard {shards}: schedule {}: inconsistent counts: {why}",
                    r.schedule
                ),
            ));
        }
    }
    Ok(())
}

/// The images a whole run evaluates: `--limit` of the data set's.
fn selected_images(d: &DataInfo) -> usize {
    d.limit.map_or(d.images_total, |l| l.min(d.images_total))
}

/// The shards present (index to the file holding it); an error naming both files when a
/// shard is given twice.
fn shard_coverage(files: &[Named], count: usize) -> Result<BTreeMap<usize, usize>> {
    let mut have: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (path, f)) in files.iter().enumerate() {
        for s in &f.shards {
            if let Some(&j) = have.get(&s.index) {
                return Err(file_error(
                    path,
                    format!(
                        "shard {}/{count} is given more than once (also in {})",
                        s.index,
                        files[j].0.display()
                    ),
                ));
            }
            have.insert(s.index, i);
        }
    }
    Ok(have)
}

/// Adds every file's images, problems, bench batches and per-schedule counts into `out` (the
/// first file's header, emptied).
fn join_shards(out: &mut ResultsFile, files: &[Named]) -> Result<()> {
    let first = &files[0].1;
    out.bench_batches.clear();
    out.failures.clear();
    out.skipped.clear();
    out.results.clear();
    out.data.images_selected = 0;
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for (path, f) in files {
        if f.adapter != first.adapter {
            out.notes.push(format!(
                "shards {} ran on a different adapter ({}) than shards {} ({}): throughput is not comparable across them",
                shard_list(f),
                f.adapter.as_ref().map_or("?".into(), |a| a.name.clone()),
                shard_list(first),
                first.adapter.as_ref().map_or("?".into(), |a| a.name.clone()),
            ));
        }
        for b in &f.bench_batches {
            if !out.bench_batches.contains(b) {
                out.bench_batches.push(*b);
            }
        }
        out.failures.extend(f.failures.iter().cloned());
        out.skipped.extend(f.skipped.iter().cloned());
        out.data.images_selected = match first.shard_unit {
            // Bounded by images_total (checked), so the sum cannot overflow.
            ShardUnit::Images => out.data.images_selected + f.data.images_selected,
            ShardUnit::Grid => f.data.images_selected,
        };
        for r in &f.results {
            let Some(&i) = index.get(&r.schedule) else {
                if out.results.len() == MAX_RESULT_ROWS {
                    return Err(file_error(
                        path,
                        format!("the shards hold more than {MAX_RESULT_ROWS} schedules together"),
                    ));
                }
                index.insert(r.schedule.clone(), out.results.len());
                out.results.push(r.clone());
                continue;
            };
            let o = &mut out.results[i];
            if first.shard_unit == ShardUnit::Images {
                match (&mut o.quality, &r.quality) {
                    (Some(a), Some(b)) => a.checked_merge(b).map_err(|why| {
                        file_error(path, format!("schedule {}: {why}", r.schedule))
                    })?,
                    (None, Some(b)) => o.quality = Some(b.clone()),
                    _ => {}
                }
            } else if o.quality != r.quality {
                out.notes.push(format!(
                    "{} appears in several grid shards with different quality counts; the first is kept",
                    r.schedule
                ));
            }
            if o.bench.is_empty() {
                o.bench = r.bench.clone();
            }
        }
    }
    Ok(())
}

/// Every image shard evaluates every schedule: a schedule missing from a file means the files
/// are not of one run.
fn check_every_schedule_everywhere(out: &ResultsFile, files: &[Named]) -> Result<()> {
    let sets: Vec<std::collections::HashSet<&str>> = files
        .iter()
        .map(|(_, f)| f.results.iter().map(|x| x.schedule.as_str()).collect())
        .collect();
    for r in &out.results {
        if let Some(((path, _), _)) = files
            .iter()
            .zip(&sets)
            .find(|(_, set)| !set.contains(r.schedule.as_str()))
        {
            return Err(file_error(
                path,
                format!(
                    "schedule {} is missing here but present in other image shards",
                    r.schedule
                ),
            ));
        }
    }
    Ok(())
}

/// Baseline first, then the grid by `(r_init, alpha)`, then the others in their order.
pub fn sort_results(results: &mut [ScheduleResult]) {
    results.sort_by(|a, b| {
        a.role.cmp(&b.role).then_with(|| match a.role {
            Role::Grid => a
                .r_init
                .unwrap_or(0.0)
                .total_cmp(&b.r_init.unwrap_or(0.0))
                .then(a.alpha.unwrap_or(0.0).total_cmp(&b.alpha.unwrap_or(0.0))),
            _ => std::cmp::Ordering::Equal,
        })
    });
}
