//! `sret-tome bench`: the paper's Table 1 for the adapter at hand: throughput (median over timed
//! forwards, from GPU timestamps where supported), the host's end-to-end time of a forward
//! (encode + submit + wait + readback) and its encoding alone, peak activation memory (the
//! planned arena of a forward), FLOPs (thop convention and all ops) and parameters, per schedule
//! and batch size.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{GpuArgs, ModelArgs};
use crate::bench::ceiling::MatmulRate;
use crate::bench::{bench_many, BenchOptions, BenchRow};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::synthetic_images;
use crate::model::{Model, Precision};
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
use crate::EngineBuilder;

/// The rows of the paper's Table 1.
pub const TABLE1_SCHEDULES: [&str; 8] = [
    "none",
    "constant:10",
    "constant:20",
    "linear:10",
    "linear:20",
    "exp:0.10,0.6",
    "exp:0.25,0",
    "exp:0.40,0.2",
];

/// Default rows for the baselines: DeiT with ToMe's constant and `(r, inflection)` schedules,
/// PiT with the paper's exponential schedules (as its `PiT_ToMe.py` runs them).
pub const DEIT_SCHEDULES: [&str; 5] = [
    "none",
    "constant:8",
    "constant:13",
    "tome:16,-1",
    "tome:13,-0.5",
];
/// Default rows for PiT (see [`DEIT_SCHEDULES`]).
pub const PIT_SCHEDULES: [&str; 5] = [
    "none",
    "constant:16",
    "exp:0.10,0.6",
    "exp:0.25,0",
    "exp:0.40,0.2",
];

/// ToMe's published `r` for timm's ViTs by width (Bolya et al., ICLR 2023: DeiT-S r=13,
/// ViT-B r=16, ViT-L r=8, ViT-H r=7; DeiT-Ti as DeiT-S).
pub fn tome_published_r(cfg: &crate::model::ModelConfig) -> Option<usize> {
    match cfg.stages.first()?.dim {
        192 | 384 => Some(13),
        768 => Some(16),
        1024 => Some(8),
        1280 => Some(7),
        _ => None,
    }
}

/// The schedules `bench` measures by default for a model: the paper's Table 1 for SReT, the
/// paper's baseline rows for DeiT-Tiny and PiT-Ti, and for the rest of the ViT family `none`
/// beside ToMe's published constant `r` (and half of it).
pub fn default_schedules(cfg: &crate::model::ModelConfig) -> Vec<String> {
    let rows: &[&str] =
        if crate::model::VIT_MODEL_NAMES.contains(&cfg.name) || cfg.name.starts_with("deit_tiny") {
            if cfg.name.starts_with("pit") {
                &PIT_SCHEDULES
            } else {
                &DEIT_SCHEDULES
            }
        } else if let (crate::model::Arch::Vit(_), Some(r)) = (&cfg.arch, tome_published_r(cfg)) {
            return vec![
                "none".into(),
                format!("constant:{}", r / 2),
                format!("constant:{r}"),
            ];
        } else {
            &TABLE1_SCHEDULES
        };
    rows.iter().map(|s| s.to_string()).collect()
}

/// Arguments of `sret-tome bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model and weights.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Schedules to measure (repeatable, each once); default: the rows of the paper's Table 1
    /// (for DeiT-Tiny: none, constant:8, constant:13, tome:16,-1, tome:13,-0.5; for PiT: none,
    /// constant:16 and the three exponential schedules; for the other ViTs: none and ToMe's
    /// published constant r and half of it, e.g. r=13 for DeiT-S, 16 for ViT-B).
    #[arg(long)]
    pub schedule: Vec<String>,
    /// Batch sizes, comma separated, each at least 1 and listed once. Default 1,128 (1,2 on a
    /// CPU adapter such as lavapipe).
    #[arg(long, value_delimiter = ',', value_parser = parse_batch)]
    pub batch: Vec<usize>,
    /// Untimed rounds before measuring, at least 1. Default 20 (1 on a CPU adapter).
    #[arg(long, value_parser = parse_warmup)]
    pub warmup: Option<usize>,
    /// Timed rounds, at least 1; the median is reported. A round is one forward timed on the
    /// device and one timed end to end on the host. Default 100 (on a CPU adapter: as many as
    /// fit in about 5 s per configuration, at least 3).
    #[arg(long, value_parser = parse_iters)]
    pub iters: Option<usize>,
    /// Write the results (rows, adapter, timing method, matmul ceiling) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also time each kernel family (stem, attention, MLP, matching, merge, pooling, head) with
    /// a timestamped pass per dispatch, and print where the time goes.
    #[arg(long)]
    pub profile: bool,
    /// Write the result rows as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Measure every schedule in both f32 and f16 storage (interleaved in one run), instead of
    /// only the `--precision` given.
    #[arg(long)]
    pub both_precisions: bool,
    /// GPU choice and precision.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// A count of at least 1, for clap: `why` says what the count is for.
fn at_least_one(s: &str, why: &str) -> std::result::Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e}: expected a whole number of at least 1 ({why})"))?;
    if n == 0 {
        return Err(format!("must be at least 1 ({why})"));
    }
    Ok(n)
}

/// `--batch` (and `sweep --bench-batch`) entries: images per forward, at least 1.
pub fn parse_batch(s: &str) -> std::result::Result<usize, String> {
    at_least_one(s, "images per forward")
}

/// `--iters`: timed forwards, at least 1.
pub fn parse_iters(s: &str) -> std::result::Result<usize, String> {
    at_least_one(s, "the figures are medians over the timed forwards")
}

/// `--warmup`: untimed forwards, at least 1.
pub fn parse_warmup(s: &str) -> std::result::Result<usize, String> {
    at_least_one(
        s,
        "the first forward of a configuration is never timed: it pays one-time costs and sizes the time budget",
    )
}

/// Refuses a list naming the same value twice (`what` is the option, e.g. `"batch"`): each
/// would be measured twice and reported as two rows of the same name.
pub fn check_distinct<T: PartialEq + Display>(what: &'static str, values: &[T]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(Error::arg(what, v, "listed twice: give each value once"));
        }
    }
    Ok(())
}

fn pct(v: f64, base: f64) -> String {
    format!("{:+.1}%", 100.0 * (v / base - 1.0))
}

/// What the host-side columns measure, for the printed header and the JSON.
pub const END_TO_END_METHOD: &str = "wall clock on the host from the start of encoding a forward of host images to its logits in host memory (encode + submit + wait + readback, as Engine::run), and the encoding alone";

/// What one `bench` run measures, decided from the arguments and the adapter.
struct BenchSetup {
    /// Batch sizes, in the order given.
    batches: Vec<usize>,
    /// Storage precisions measured (`f32` first with `--both-precisions`).
    precisions: Vec<Precision>,
    /// Every (schedule, precision), schedule-major.
    configs: Vec<(Schedule, Precision)>,
    /// Warm-up, iterations and budget.
    opts: BenchOptions,
    /// How the device's time is taken.
    method: &'static str,
}

impl BenchSetup {
    /// Defaults for the adapter (smaller on a CPU adapter, said on stderr), batch sizes checked
    /// against what the device can hold.
    fn new(a: &BenchArgs, gpu: &Gpu, model: &Model, schedules: &[Schedule]) -> Result<BenchSetup> {
        let cpu_adapter = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let batches = if !a.batch.is_empty() {
            a.batch.clone()
        } else if cpu_adapter {
            vec![1, 2]
        } else {
            vec![1, 128]
        };
        let precisions = if a.both_precisions {
            vec![Precision::F32, Precision::F16]
        } else {
            vec![a.gpu.precision]
        };
        let max = super::max_batch(gpu, &model.cfg, precisions[0]);
        for &b in &batches {
            super::check_batch("batch", b, max, "images per forward on this device")?;
        }
        if cpu_adapter && (a.batch.is_empty() || a.iters.is_none()) {
            eprintln!("note: {} is a CPU adapter: default batches 1,2, 1 warm-up round and as many timed rounds as fit in ~5 s (at least 3); pass --batch/--warmup/--iters to override", gpu.info.name);
        }
        let configs = schedules
            .iter()
            .flat_map(|s| precisions.iter().map(move |&p| (s.clone(), p)))
            .collect();
        Ok(BenchSetup {
            batches,
            precisions,
            configs,
            opts: BenchOptions {
                warmup: a.warmup.unwrap_or(if cpu_adapter { 1 } else { 20 }),
                iters: a.iters,
                budget_secs: if cpu_adapter { 5.0 } else { f64::INFINITY },
                end_to_end: true,
            },
            method: if gpu.has_timestamps() {
                "GPU timestamps around the whole forward (one submission)"
            } else {
                "wall clock from submission to device idle (no TIMESTAMP_QUERY)"
            },
        })
    }

    /// Header of the device-time column: `GPU ms` from timestamps, else `wall ms`.
    fn device_column(&self) -> &'static str {
        if self.method.starts_with("GPU") {
            "GPU ms"
        } else {
            "wall ms"
        }
    }
}

/// The schedules to measure: those given (each once), else the model's default rows.
fn schedules(a: &BenchArgs, cfg: &crate::model::ModelConfig) -> Result<Vec<Schedule>> {
    let specs = if a.schedule.is_empty() {
        default_schedules(cfg)
    } else {
        a.schedule.clone()
    };
    let schedules: Vec<Schedule> = specs.iter().map(|s| s.parse()).collect::<Result<_>>()?;
    check_distinct("schedule", &schedules)?;
    Ok(schedules)
}

/// `--profile`'s findings: a printed line and a JSON object per (schedule, precision, batch).
#[derive(Default)]
struct Profiles {
    lines: Vec<String>,
    json: Vec<serde_json::Value>,
}

/// Time every dispatch of one configuration's forward (its own engine) and add the split per
/// kernel family and per kernel to `out`.
#[allow(clippy::too_many_arguments)]
fn profile_config(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    (schedule, precision): &(Schedule, Precision),
    images: &[f32],
    row: &BenchRow,
    out: &mut Profiles,
) -> Result<()> {
    let batch = row.batch;
    let spec = ForwardSpec::new(&model.cfg, schedule, DEFAULT_SEED)?;
    let engine = super::build_engine(
        EngineBuilder::new()
            .gpu(gpu)
            .pipeline_cache(cache)
            .with_model(model.clone())
            .spec(&spec.clone().with_batch(batch).with_precision(*precision)),
    )?;
    engine.set_input(images)?;
    let profile = engine.profile()?;
    let total: f64 = profile.families.iter().map(|f| f.1).sum();
    let parts: Vec<String> = profile
        .families
        .iter()
        .filter(|f| f.1 > 0.0)
        .map(|(f, t)| format!("{} {:.1} ms ({:.0}%)", f.name(), t * 1e3, 100.0 * t / total))
        .collect();
    let kernels: Vec<String> = profile
        .kernels
        .iter()
        .map(|(k, t, n)| format!("{k} {:.1} ms ({n}x)", t * 1e3))
        .collect();
    out.json.push(serde_json::json!({
        "schedule": row.schedule,
        "precision": row.precision,
        "batch": batch,
        "micro_batch": row.micro_batch,
        "family_seconds": profile
            .families
            .iter()
            .map(|(f, t)| (f.name().to_string(), serde_json::json!(t)))
            .collect::<serde_json::Map<_, _>>(),
        "variants": engine.kernels().to_string(),
        "kernels": profile
            .kernels
            .iter()
            .map(|(k, t, n)| serde_json::json!({"kernel": k, "seconds": t, "dispatches": n}))
            .collect::<Vec<_>>(),
    }));
    out.lines.push(format!(
        "{} {} batch {batch} (micro-batch {}): {}\n    variants: {}\n    kernels: {}",
        row.schedule,
        row.precision,
        row.micro_batch,
        parts.join(", "),
        engine.kernels(),
        kernels.join(", ")
    ));
    Ok(())
}

/// Measure every configuration at every batch size (the configurations of one batch in
/// turns), profiling each with `--profile`; rows in batch-major order.
fn measure(
    a: &BenchArgs,
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Arc<Model>,
    setup: &BenchSetup,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<BenchRow>, Profiles)> {
    let mut rows = Vec::new();
    let mut profiles = Profiles::default();
    for &batch in &setup.batches {
        let images = synthetic_images(&model.cfg, batch, 1);
        progress.set_message(format!("measuring at batch {batch}"));
        let measured = bench_many(
            gpu,
            cache,
            model,
            &setup.configs,
            batch,
            &images,
            &setup.opts,
        )?;
        for (config, row) in setup.configs.iter().zip(measured) {
            if a.profile {
                progress.set_message(format!("profiling {} at batch {batch}", config.0));
                profile_config(gpu, cache, model, config, &images, &row, &mut profiles)?;
            }
            progress.inc(1);
            rows.push(row);
        }
    }
    Ok((rows, profiles))
}

/// The matrix-multiply ceiling of the efficiency lines, at one micro-batch.
struct Ceiling {
    micro_batch: usize,
    shapes: Vec<MatmulRate>,
}

impl Ceiling {
    /// Measure it at the largest batch's micro-batch.
    fn measure(
        gpu: &Gpu,
        cache: &PipelineCache,
        model: &Model,
        rows: &[BenchRow],
        precision: Precision,
        progress: &indicatif::ProgressBar,
    ) -> Result<Ceiling> {
        let largest = largest_batch(rows);
        let micro_batch = rows
            .iter()
            .find(|r| r.batch == largest)
            .map_or(largest, |r| r.micro_batch);
        progress.set_message(format!("matmul ceiling at micro-batch {micro_batch}"));
        let shapes =
            crate::bench::ceiling::measure(gpu, cache, &model.cfg, micro_batch, 3, precision)?;
        Ok(Ceiling {
            micro_batch,
            shapes,
        })
    }

    fn best(&self) -> Option<&MatmulRate> {
        self.shapes
            .iter()
            .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
    }
}

fn largest_batch(rows: &[BenchRow]) -> usize {
    rows.iter().map(|r| r.batch).max().unwrap_or(1)
}

fn ms_cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The table: a header line and a line per row, each figure beside its change against `none`
/// at the same batch and precision. The device's time (`device_column`), the host's end-to-end
/// time and the encoding come last, so the earlier columns keep their places.
pub fn table(rows: &[BenchRow], device_column: &str) -> String {
    let mut s = format!(
        "{:<14} {:>4} {:>5} {:>8} {:>9} {:>13} {:>8} {:>11} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8}\n",
        "schedule",
        "prec",
        "batch",
        "params M",
        "FLOPs G",
        "(vs base)",
        "all G",
        "img/s",
        "(vs)",
        "PAM MB",
        "(vs)",
        device_column,
        "e2e ms",
        "enc ms",
        "e2e img/s",
        "(vs)"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.batch == r.batch && b.schedule == "none" && b.precision == r.precision)
            .unwrap_or(r);
        let e2e_rate = |r: &BenchRow| r.e2e_ms.map(|ms| 1e3 * r.batch as f64 / ms);
        let (rate, base_rate) = (e2e_rate(r), e2e_rate(base));
        s += &format!(
            "{:<14} {:>4} {:>5} {:>8.2} {:>9.2} {:>13} {:>8.2} {:>11.2} {:>8} {:>10.2} {:>8} {:>8.2} {:>8} {:>7} {:>9} {:>8}\n",
            r.schedule,
            r.precision,
            r.batch,
            r.params as f64 / 1e6,
            r.flops_thop as f64 / 1e9,
            pct(r.flops_thop as f64, base.flops_thop as f64),
            r.flops_total as f64 / 1e9,
            r.throughput_img_s,
            pct(r.throughput_img_s, base.throughput_img_s),
            r.pam_bytes as f64 / (1024.0 * 1024.0),
            pct(r.pam_bytes as f64, base.pam_bytes as f64),
            r.latency_ms,
            ms_cell(r.e2e_ms),
            ms_cell(r.encode_ms),
            rate.map_or("-".into(), |v| format!("{v:.2}")),
            match (rate, base_rate) {
                (Some(v), Some(b)) => pct(v, b),
                _ => "-".into(),
            },
        );
    }
    s
}

/// With `--both-precisions`: each f16 row against its f32 twin.
fn precision_lines(rows: &[BenchRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.precision == "f16")
        .filter_map(|r| {
            let f32_row = rows
                .iter()
                .find(|b| b.batch == r.batch && b.schedule == r.schedule && b.precision == "f32")?;
            Some(format!(
                "f16 vs f32 {:<14} batch {:>3}: throughput {}, PAM {}",
                r.schedule,
                r.batch,
                pct(r.throughput_img_s, f32_row.throughput_img_s),
                pct(r.pam_bytes as f64, f32_row.pam_bytes as f64)
            ))
        })
        .collect()
}

/// The ceiling's line and each schedule's efficiency at the largest batch (in `precision`).
fn efficiency_lines(rows: &[BenchRow], ceiling: &Ceiling, precision: Precision) -> Vec<String> {
    let Some(best) = ceiling.best() else {
        return Vec::new();
    };
    let worst = ceiling
        .shapes
        .iter()
        .map(|c| c.gflops)
        .fold(f64::INFINITY, f64::min);
    let largest = largest_batch(rows);
    let mut lines = vec![format!(
        "matmul ceiling: the linear kernel alone on the model's {} linear shapes at micro-batch {}: best {:.2} GFLOP/s ({}x{}x{}), worst {:.2}",
        ceiling.shapes.len(),
        ceiling.micro_batch,
        best.gflops,
        best.m,
        best.k,
        best.n,
        worst
    )];
    for r in rows
        .iter()
        .filter(|r| r.batch == largest && r.precision == precision.name())
    {
        let rate = r.flops_total as f64 * r.throughput_img_s * 1e-9;
        let thop = r.flops_thop as f64 * r.throughput_img_s * 1e-9;
        lines.push(format!(
            "efficiency {:<14} {} batch {largest}: {:.2} GFLOP/s all ops ({:.0}% of the ceiling), {:.2} GFLOP/s thop ({:.0}%)",
            r.schedule,
            r.precision,
            rate,
            100.0 * rate / best.gflops,
            thop,
            100.0 * thop / best.gflops
        ));
    }
    lines
}

/// Everything `--json` writes.
fn json_report(
    model: &Model,
    gpu: &Gpu,
    setup: &BenchSetup,
    rows: &[BenchRow],
    ceiling: &Ceiling,
    profiles: Option<Vec<serde_json::Value>>,
) -> serde_json::Value {
    let info = &gpu.info;
    let mut v = serde_json::json!({
        "model": model.cfg.name,
        "adapter": { "name": info.name, "backend": format!("{:?}", info.backend), "driver": info.driver, "driver_info": info.driver_info, "device_type": format!("{:?}", info.device_type) },
        "timing": setup.method,
        "timing_end_to_end": END_TO_END_METHOD,
        "results": rows,
        "matmul_ceiling": { "micro_batch": ceiling.micro_batch, "shapes": ceiling.shapes },
    });
    if let Some(p) = profiles {
        v["profiles"] = p.into();
    }
    v
}

/// The CSV `--csv` writes: a header and a row per measurement; the end-to-end columns come
/// last and are empty where not measured.
pub fn csv_text(rows: &[BenchRow]) -> String {
    let mut s = String::from("schedule,precision,batch,micro_batch,throughput_img_s,latency_ms,pam_bytes,flops_thop,flops_total,params,iters,e2e_ms,encode_ms\n");
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        s += &format!(
            "{},{},{},{},{:.4},{:.4},{},{},{},{},{},{},{}\n",
            r.schedule,
            r.precision,
            r.batch,
            r.micro_batch,
            r.throughput_img_s,
            r.latency_ms,
            r.pam_bytes,
            r.flops_thop,
            r.flops_total,
            r.params,
            r.iters,
            cell(r.e2e_ms),
            cell(r.encode_ms)
        );
    }
    s
}

/// Print the table, the f16-vs-f32 lines, the ceiling and efficiency lines and the profiles.
fn print_report(
    model: &Model,
    gpu: &Gpu,
    setup: &BenchSetup,
    rows: &[BenchRow],
    ceiling: &Ceiling,
    profiles: &Profiles,
) {
    println!("{} on {}", model.cfg.name, gpu.describe());
    println!("timing: {}; e2e: {END_TO_END_METHOD}; medians of timed forwards after warm-up, the schedules of a batch taking turns; PAM = planned activation arena of one forward", setup.method);
    print!("{}", table(rows, setup.device_column()));
    for line in precision_lines(rows).into_iter().chain(efficiency_lines(
        rows,
        ceiling,
        setup.precisions[0],
    )) {
        println!("{line}");
    }
    for p in &profiles.lines {
        println!("profile {p}");
    }
}

/// Run `sret-tome bench`: time every schedule at every batch size and print the table.
pub fn run(a: BenchArgs) -> Result<()> {
    for out in a.json.iter().chain(&a.csv) {
        crate::io::files::check_output(out, &a.model.inputs())?;
    }
    check_distinct("batch", &a.batch)?;
    let model = Arc::new(a.model.load()?);
    let schedules = schedules(&a, &model.cfg)?;
    let gpu = super::open_gpu(&a.gpu)?;
    let setup = BenchSetup::new(&a, &gpu, &model, &schedules)?;
    let cache = a.gpu.pipeline_cache();
    // On stderr; indicatif hides it when stderr is not a terminal.
    let progress = indicatif::ProgressBar::new((setup.batches.len() * setup.configs.len()) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (rows, profiles) = measure(&a, &gpu, &cache, &model, &setup, &progress)?;
    let ceiling = Ceiling::measure(&gpu, &cache, &model, &rows, setup.precisions[0], &progress)?;
    progress.finish_and_clear();
    print_report(&model, &gpu, &setup, &rows, &ceiling, &profiles);
    if let Some(path) = &a.json {
        let profiles = a.profile.then_some(profiles.json);
        let v = json_report(&model, &gpu, &setup, &rows, &ceiling, profiles);
        crate::io::files::write_atomic_bytes(
            path,
            serde_json::to_string_pretty(&v)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    if let Some(path) = &a.csv {
        crate::io::files::write_atomic_bytes(path, csv_text(&rows).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod default_rows {
    use super::default_schedules;
    use crate::model::ModelConfig;

    #[test]
    fn each_family_gets_its_published_rows() {
        let rows = |name: &str| default_schedules(&ModelConfig::by_name(name).unwrap());
        assert_eq!(rows("sret_t").len(), 8);
        assert_eq!(rows("deit_tiny_distill")[2], "constant:13");
        assert_eq!(rows("pit_ti")[1], "constant:16");
        assert_eq!(
            rows("deit_small_patch16_224"),
            ["none", "constant:6", "constant:13"]
        );
        assert_eq!(
            rows("vit_base_patch16_224"),
            ["none", "constant:8", "constant:16"]
        );
        assert_eq!(rows("vit_large_patch16_384")[2], "constant:8");
        assert_eq!(rows("vit_huge_patch14_224")[2], "constant:7");
    }
}

#[cfg(test)]
mod output {
    use super::{check_distinct, csv_text, parse_batch, parse_iters, parse_warmup, table};
    use crate::bench::BenchRow;

    fn row(schedule: &str, batch: usize, e2e: Option<(f64, f64)>) -> BenchRow {
        BenchRow {
            schedule: schedule.into(),
            precision: "f32",
            batch,
            micro_batch: batch,
            throughput_img_s: 100.0,
            latency_ms: 10.0 * batch as f64,
            pam_bytes: 1 << 20,
            flops_thop: 2_000_000_000,
            flops_total: 2_500_000_000,
            params: 4_760_000,
            iters: 5,
            e2e_ms: e2e.map(|e| e.0),
            encode_ms: e2e.map(|e| e.1),
        }
    }

    #[test]
    fn csv_keeps_its_columns_and_adds_the_end_to_end_ones_last() {
        let text = csv_text(&[row("none", 1, Some((12.5, 0.75))), row("none", 2, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "schedule,precision,batch,micro_batch,throughput_img_s,latency_ms,pam_bytes,flops_thop,flops_total,params,iters,e2e_ms,encode_ms"
        );
        assert_eq!(
            lines[1],
            "none,f32,1,1,100.0000,10.0000,1048576,2000000000,2500000000,4760000,5,12.5000,0.7500"
        );
        // Not measured: empty cells, the same number of them.
        assert_eq!(
            lines[2],
            "none,f32,2,2,100.0000,20.0000,1048576,2000000000,2500000000,4760000,5,,"
        );
    }

    #[test]
    fn table_shows_device_end_to_end_and_encode_times_after_the_old_columns() {
        let rows = [
            row("none", 1, Some((12.5, 0.75))),
            row("exp:0.25,0", 1, Some((10.0, 0.5))),
            row("none", 2, None),
        ];
        let text = table(&rows, "GPU ms");
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 4);
        let header = text.lines().next().unwrap();
        for h in ["GPU ms", "e2e ms", "enc ms", "e2e img/s"] {
            assert!(header.contains(h), "{header}");
        }
        // The columns scripts read by position (img/s 8th, PAM MB 10th) keep their places.
        assert_eq!(lines[1][7], "100.00");
        assert_eq!(lines[1][9], "1.00");
        assert_eq!(
            &lines[1][11..],
            ["10.00", "12.50", "0.75", "80.00", "+0.0%"]
        );
        // One image in 10 ms end to end against 12.5 ms for `none`: +25%.
        assert_eq!(
            &lines[2][11..],
            ["10.00", "10.00", "0.50", "100.00", "+25.0%"]
        );
        assert_eq!(&lines[3][11..], ["20.00", "-", "-", "-", "-"]);
    }

    #[test]
    fn counts_of_zero_and_repeated_values_are_refused() {
        for parse in [parse_batch, parse_iters, parse_warmup] {
            assert_eq!(parse("3"), Ok(3));
            let e = parse("0").unwrap_err();
            assert!(e.starts_with("must be at least 1 ("), "{e}");
            assert!(parse("-1").unwrap_err().contains("at least 1"));
            assert!(parse("").is_err());
        }
        check_distinct("batch", &[1, 8, 128]).unwrap();
        let e = check_distinct("batch", &[1, 8, 1]).unwrap_err().to_string();
        assert_eq!(e, "invalid batch '1': listed twice: give each value once");
    }
}
