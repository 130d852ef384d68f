//! `sret-tome bench`: the paper's Table 1 for the adapter at hand: throughput (median over timed
//! forwards, from GPU timestamps where supported), peak activation memory (the planned arena of a
//! forward), FLOPs (thop convention and all ops) and parameters, per schedule and batch size.

use std::path::PathBuf;

use clap::Args;

use super::{GpuArgs, ModelArgs};
use crate::bench::{bench_many, BenchOptions};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::synthetic_images;
use crate::model::Precision;
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
    /// Schedules to measure (repeatable); default: the rows of the paper's Table 1 (for
    /// DeiT-Tiny: none, constant:8, constant:13, tome:16,-1, tome:13,-0.5; for PiT: none,
    /// constant:16 and the three exponential schedules; for the other ViTs: none and ToMe's
    /// published constant r and half of it, e.g. r=13 for DeiT-S, 16 for ViT-B).
    #[arg(long)]
    pub schedule: Vec<String>,
    /// Batch sizes, comma separated. Default 1,128 (1,2 on a CPU adapter such as lavapipe).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Untimed forwards before measuring. Default 20 (1 on a CPU adapter).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Timed forwards; the median is reported. Default 100 (on a CPU adapter: as many as fit in
    /// about 5 s per configuration, at least 3).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Write the results (rows, adapter, timing method, matmul ceiling) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also time each kernel family (stem, attention, MLP, matching, merge, unmerge, pooling,
    /// head) with a timestamped pass per dispatch, and print where the time goes.
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

fn pct(v: f64, base: f64) -> String {
    format!("{:+.1}%", 100.0 * (v / base - 1.0))
}

/// Run `sret-tome bench`: time every schedule at every batch size and print the table.
pub fn run(a: BenchArgs) -> Result<()> {
    for out in a.json.iter().chain(&a.csv) {
        crate::io::files::check_output(out, &a.model.inputs())?;
    }
    let model = std::sync::Arc::new(a.model.load()?);
    let schedules: Vec<Schedule> = if a.schedule.is_empty() {
        default_schedules(&model.cfg)
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?
    } else {
        a.schedule
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?
    };
    let gpu = Gpu::new(&a.gpu.choice())?;
    let cpu_adapter = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let batches = if !a.batch.is_empty() {
        a.batch.clone()
    } else if cpu_adapter {
        vec![1, 2]
    } else {
        vec![1, 128]
    };
    let precision = if a.both_precisions {
        Precision::F32
    } else {
        a.gpu.precision
    };
    let max = super::max_batch(&gpu, &model.cfg, precision);
    for &b in &batches {
        super::check_batch("batch", b, max, "images per forward on this device")?;
    }
    let warmup = a.warmup.unwrap_or(if cpu_adapter { 1 } else { 20 });
    let method = if gpu.has_timestamps() {
        "GPU timestamps around the whole forward (one submission)"
    } else {
        "wall clock from submission to device idle (no TIMESTAMP_QUERY)"
    };
    if cpu_adapter && (a.batch.is_empty() || a.iters.is_none()) {
        eprintln!("note: {} is a CPU adapter: default batches 1,2, 1 warm-up forward and as many timed forwards as fit in ~5 s (at least 3); pass --batch/--warmup/--iters to override", gpu.info.name);
    }
    let cache = a.gpu.pipeline_cache();
    let precisions = if a.both_precisions {
        vec![Precision::F32, Precision::F16]
    } else {
        vec![a.gpu.precision]
    };
    let configs: Vec<(Schedule, Precision)> = schedules
        .iter()
        .flat_map(|s| precisions.iter().map(move |&p| (s.clone(), p)))
        .collect();
    let mut rows = Vec::new();
    let mut profiles: Vec<String> = Vec::new();
    let mut profiles_json: Vec<serde_json::Value> = Vec::new();
    // On stderr; indicatif hides it when stderr is not a terminal.
    let progress = indicatif::ProgressBar::new((batches.len() * configs.len()) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for &batch in &batches {
        let images = synthetic_images(&model.cfg, batch, 1);
        progress.set_message(format!("measuring at batch {batch}"));
        let opts = BenchOptions {
            warmup,
            iters: a.iters,
            budget_secs: if cpu_adapter { 5.0 } else { f64::INFINITY },
        };
        let measured = bench_many(&gpu, &cache, &model, &configs, batch, &images, &opts)?;
        for ((sched, precision), row) in configs.iter().zip(measured) {
            if a.profile {
                progress.set_message(format!("profiling {sched} at batch {batch}"));
                let plan = ForwardSpec::new(&model.cfg, sched, DEFAULT_SEED)?;
                let engine = EngineBuilder::new()
                    .gpu(&gpu)
                    .pipeline_cache(&cache)
                    .with_model(model.clone())
                    .spec(&plan.clone().with_batch(batch).with_precision(*precision))
                    .build()?;
                engine.set_input(&images)?;
                let profile = engine.profile()?;
                let total: f64 = profile.families.iter().map(|f| f.1).sum();
                let parts: Vec<String> = profile
                    .families
                    .iter()
                    .filter(|f| f.1 > 0.0)
                    .map(|(f, t)| {
                        format!("{} {:.1} ms ({:.0}%)", f.name(), t * 1e3, 100.0 * t / total)
                    })
                    .collect();
                let kernels: Vec<String> = profile
                    .kernels
                    .iter()
                    .map(|(k, t, n)| format!("{k} {:.1} ms ({n}x)", t * 1e3))
                    .collect();
                profiles_json.push(serde_json::json!({
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
                profiles.push(format!(
                    "{} {} batch {batch} (micro-batch {}): {}\n    variants: {}\n    kernels: {}",
                    row.schedule,
                    row.precision,
                    row.micro_batch,
                    parts.join(", "),
                    engine.kernels(),
                    kernels.join(", ")
                ));
            }
            progress.inc(1);
            rows.push(row);
        }
    }

    // The matrix-multiply ceiling at the largest batch's micro-batch, for the efficiency lines.
    let largest = batches.iter().copied().max().unwrap_or(1);
    let micro = rows
        .iter()
        .find(|r| r.batch == largest)
        .map_or(largest, |r| r.micro_batch);
    progress.set_message(format!("matmul ceiling at micro-batch {micro}"));
    let ceiling =
        crate::bench::ceiling::measure(&gpu, &cache, &model.cfg, micro, 3, precisions[0])?;
    let best = ceiling
        .iter()
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
        .cloned();

    println!("{} on {}", model.cfg.name, gpu.describe());
    println!("timing: {method}; median of timed forwards after warm-up, the schedules of a batch taking turns; PAM = planned activation arena of one forward");
    println!(
        "{:<14} {:>4} {:>5} {:>8} {:>9} {:>13} {:>8} {:>11} {:>8} {:>10} {:>8}",
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
        "(vs)"
    );
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.batch == r.batch && b.schedule == "none" && b.precision == r.precision)
            .unwrap_or(r);
        println!(
            "{:<14} {:>4} {:>5} {:>8.2} {:>9.2} {:>13} {:>8.2} {:>11.2} {:>8} {:>10.2} {:>8}",
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
        );
    }
    progress.finish_and_clear();
    if a.both_precisions {
        for r in rows.iter().filter(|r| r.precision == "f16") {
            if let Some(f32_row) = rows
                .iter()
                .find(|b| b.batch == r.batch && b.schedule == r.schedule && b.precision == "f32")
            {
                println!(
                    "f16 vs f32 {:<14} batch {:>3}: throughput {}, PAM {}",
                    r.schedule,
                    r.batch,
                    pct(r.throughput_img_s, f32_row.throughput_img_s),
                    pct(r.pam_bytes as f64, f32_row.pam_bytes as f64)
                );
            }
        }
    }
    if let Some(best) = &best {
        let worst = ceiling
            .iter()
            .map(|c| c.gflops)
            .fold(f64::INFINITY, f64::min);
        println!(
            "matmul ceiling: the linear kernel alone on the model's {} linear shapes at micro-batch {micro}: best {:.2} GFLOP/s ({}x{}x{}), worst {:.2}",
            ceiling.len(),
            best.gflops,
            best.m,
            best.k,
            best.n,
            worst
        );
        for r in rows
            .iter()
            .filter(|r| r.batch == largest && r.precision == precisions[0].name())
        {
            let rate = r.flops_total as f64 * r.throughput_img_s * 1e-9;
            let thop = r.flops_thop as f64 * r.throughput_img_s * 1e-9;
            println!(
                "efficiency {:<14} {} batch {largest}: {:.2} GFLOP/s all ops ({:.0}% of the ceiling), {:.2} GFLOP/s thop ({:.0}%)",
                r.schedule,
                r.precision,
                rate,
                100.0 * rate / best.gflops,
                thop,
                100.0 * thop / best.gflops
            );
        }
    }
    for p in &profiles {
        println!("profile {p}");
    }
    if let Some(path) = &a.json {
        let v = serde_json::json!({
            "model": model.cfg.name,
            "adapter": { "name": gpu.info.name, "backend": format!("{:?}", gpu.info.backend), "driver": gpu.info.driver, "driver_info": gpu.info.driver_info, "device_type": format!("{:?}", gpu.info.device_type) },
            "timing": method,
            "results": rows,
            "matmul_ceiling": { "micro_batch": micro, "shapes": ceiling },
        });
        let mut v = v;
        if a.profile {
            v["profiles"] = profiles_json.into();
        }
        crate::io::files::write_atomic_bytes(
            path,
            serde_json::to_string_pretty(&v)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    if let Some(path) = &a.csv {
        let mut s = String::from("schedule,precision,batch,micro_batch,throughput_img_s,latency_ms,pam_bytes,flops_thop,flops_total,params,iters\n");
        for r in &rows {
            s += &format!(
                "{},{},{},{},{:.4},{:.4},{},{},{},{},{}\n",
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
                r.iters
            );
        }
        crate::io::files::write_atomic_bytes(path, s.as_bytes())?;
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
