//! `sret-tome plan`: the static token trajectory of a schedule, its FLOPs and parameters, the
//! hardware-independent cost figures of its recorded forward (dispatches, passes, global-memory
//! bytes, FLOPs and arithmetic intensity per kernel family) and, for a named device profile, a
//! roofline estimate; all computed without touching a GPU.

use clap::Args;

use crate::error::Result;
use crate::kernels::{KernelKind, Variant, Variants};
use crate::model::synthetic_weights;
use crate::model::ModelConfig;
use crate::runtime::cost;
use crate::runtime::figures;
use crate::runtime::forward::memory_plan;
use crate::runtime::ForwardSpec;
use crate::tome::DEFAULT_SEED;
use crate::tome::{self, Schedule};

/// Arguments of `sret-tome plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model whose trajectory to plan.
    #[arg(long, default_value = crate::model::DEFAULT_MODEL)]
    pub model: String,
    /// Token merging schedule: none, constant:R, tome:R,INFLECT, linear:R, exp:RINIT,ALPHA,
    /// list:r1,...
    #[arg(long, default_value = "none")]
    pub schedule: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also plan the memory of a forward at this batch size (for the WebGPU default limits:
    /// 128 MiB per storage binding), without a device; the cost figures are for this batch
    /// (default 1).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Add a roofline estimate (not a measurement) of the forward on a named device profile
    /// (assets/devices.json: rtx-4060-ti, laptop-igpu, apple-m2, lavapipe-2core).
    #[arg(long)]
    pub device_profile: Option<String>,
    /// Subgroup width the cost figures assume for the subgroup kernels when `--kernels` picks
    /// them (32 on NVIDIA, Apple and Intel GPUs, 64 or 32 on AMD, 8 or 16 on lavapipe).
    #[arg(long, default_value_t = 32, value_parser = parse_subgroup_width)]
    pub subgroup_width: u32,
}

fn parse_subgroup_width(s: &str) -> std::result::Result<u32, String> {
    s.parse()
        .ok()
        .filter(|w| crate::kernels::catalogue::SG_WIDTHS.contains(w))
        .ok_or_else(|| {
            format!(
                "'{s}' is not a subgroup width the kernels are written for (4, 8, 16, 32 or 64)"
            )
        })
}

/// The largest `--batch` planned: 2^20 images (632 GB of f32 input at 224 pixels, past what
/// any adapter holds in one forward), which keeps every figure within 64-bit counters.
pub const MAX_PLAN_BATCH: usize = 1 << 20;

/// How engines choose kernel variants (`plan` opens no device, so it can only say the policy
/// and what the autotune cache already holds).
const KERNEL_POLICY: &str = "each engine times its candidate variants per kind (linear, conv, attention, matching, mlp) on its adapter at build, unless --autotune off or --kernels";

/// Run `sret-tome plan`: print the token trajectory, FLOPs and parameters of a schedule, and the
/// cost figures of its forward with the kernel variants `kernels` pins (the portable kernels
/// when `None`).
pub fn run(a: PlanArgs, kernels: Option<Variants>) -> Result<()> {
    let cfg = ModelConfig::by_name(&a.model)?;
    let schedule: Schedule = a.schedule.parse()?;
    let traj = tome::Trajectory::new(&cfg, &schedule)?;
    let flops_thop = cost::flops_thop(&cfg, &traj);
    let flops_total = cost::flops_total(&cfg, &traj);
    let params = cost::params(&cfg);
    if let Some(batch) = a.batch {
        super::check_batch(
            "batch",
            batch,
            MAX_PLAN_BATCH,
            "images in one forward: more than any adapter's buffers hold",
        )?;
    }
    let profile = match &a.device_profile {
        Some(name) => Some(figures::device_profile(name)?),
        None => None,
    };
    let mut spec = ForwardSpec::new(&cfg, &schedule, DEFAULT_SEED)?;
    let counted = kernels.unwrap_or(Variants::all(Variant::Portable));
    spec.kernels = counted;
    let uses_subgroups = KernelKind::ALL
        .iter()
        .any(|&k| counted.get(k) == Variant::Subgroup);
    let width = uses_subgroups.then_some(a.subgroup_width);
    let counted_text = match width {
        Some(w) => format!("{counted} ({w}-lane subgroups)"),
        None => counted.to_string(),
    };
    let weights = synthetic_weights(&cfg, 0);
    let fig = figures::cost_figures(
        &cfg,
        &weights,
        &spec.clone().with_batch(a.batch.unwrap_or(1)),
        &wgpu::Limits::default(),
        width,
    );
    if fig.overflowed() {
        return Err(crate::error::Error::arg(
            "batch",
            fig.batch,
            format!(
                "the cost figures of {} under {schedule} at this batch pass 2^64 (FLOPs or bytes); plan a smaller batch",
                cfg.name
            ),
        ));
    }
    let roofline = profile.as_ref().map(|p| figures::roofline(&fig, p));
    let memory = match a.batch {
        Some(batch) => {
            let (mb, arena) = memory_plan(
                &cfg,
                &weights,
                &spec.clone().with_batch(batch),
                &wgpu::Limits::default(),
                width,
            );
            Some((
                batch,
                mb,
                arena.buffer_sizes.iter().sum::<u64>(),
                arena.peak_live_bytes,
            ))
        }
        None => None,
    };
    // Choices engines made for this model and trajectory on adapters seen before.
    let cached: Vec<(String, crate::kernels::Variants)> = {
        let (model_tag, tokens_tag) = crate::api::shape_tag(&cfg, &spec);
        crate::api::TuneCache::default_dir()
            .map(|d| crate::api::TuneCache::in_dir(&d).entries())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                k.contains(&format!("| {model_tag} |")) && k.contains(&format!("| {tokens_tag} |"))
            })
            .collect()
    };
    let report = Report {
        cfg: &cfg,
        schedule: &schedule,
        traj: &traj,
        flops_thop,
        flops_total,
        params,
        memory,
        counted_text,
        cached,
        fig,
        roofline,
    };
    if a.json {
        print_json(&report);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// What `plan` prints, as text or JSON.
struct Report<'a> {
    cfg: &'a ModelConfig,
    schedule: &'a Schedule,
    traj: &'a tome::Trajectory,
    flops_thop: u64,
    flops_total: u64,
    params: u64,
    /// `(batch, micro-batch, PAM bytes, peak live bytes)` with `--batch`.
    memory: Option<(usize, usize, u64, u64)>,
    /// The kernel variants the cost figures count.
    counted_text: String,
    /// Choices engines made for this model and trajectory on adapters seen before.
    cached: Vec<(String, Variants)>,
    fig: figures::CostFigures,
    roofline: Option<figures::Roofline>,
}

/// `plan --json`.
fn print_json(r: &Report) {
    let v = serde_json::json!({
        "model": r.cfg.name,
        "schedule": r.schedule.to_string(),
        "executions": r.traj.executions,
        "removed_total": r.traj.removed_total(),
        "removed_per_stage": r.traj.removed_per_stage(),
        "flops_thop": r.flops_thop,
        "flops_total": r.flops_total,
        "params": r.params,
        "lead_tokens": r.cfg.lead(),
    });
    let mut v = v;
    if let Some((batch, mb, pam, live)) = r.memory {
        v["batch"] = batch.into();
        v["micro_batch"] = mb.into();
        v["pam_bytes"] = pam.into();
        v["peak_live_bytes"] = live.into();
    }
    v["kernel_variants"] = serde_json::json!({
        "policy": KERNEL_POLICY,
        "cost_figures": r.counted_text,
        "cached": r.cached
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "variants": v.to_string()}))
            .collect::<Vec<_>>(),
    });
    let costs = figures::figures_json(&r.fig);
    v["cost_batch"] = r.fig.batch.into();
    v["dispatches"] = costs["dispatches"].clone();
    v["global_bytes"] = costs["global_bytes"].clone();
    v["cost"] = costs;
    if let Some(roofline) = &r.roofline {
        v["roofline"] = figures::roofline_json(roofline);
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// `plan`'s table and figures.
fn print_text(r: &Report) {
    println!("{} under {}", r.cfg.name, r.schedule);
    print!("{}", tome::render_table(r.traj));
    println!(
        "kernels: {KERNEL_POLICY}; the cost figures below count {} (--kernels)",
        r.counted_text
    );
    for (key, variants) in &r.cached {
        println!("  autotuned earlier: {variants}  [{key}]");
    }
    if r.cfg.lead() > 0 {
        println!(
            "token counts are patch tokens; {} class/distillation token{} ride{} in front, never merged",
            r.cfg.lead(),
            if r.cfg.lead() == 1 { "" } else { "s" },
            if r.cfg.lead() == 1 { "s" } else { "" }
        );
    }
    println!(
        "FLOPs per image: {:.2} G (thop convention), {:.2} G (all ops); parameters {:.2} M",
        r.flops_thop as f64 / 1e9,
        r.flops_total as f64 / 1e9,
        r.params as f64 / 1e6
    );
    if let Some((batch, mb, pam, live)) = r.memory {
        println!(
            "batch {batch} (micro-batches of {mb}): peak activation memory {:.2} MB ({:.2} MB live at the busiest step)",
            pam as f64 / 1048576.0,
            live as f64 / 1048576.0
        );
    }
    print!("{}", figures::render_figures(&r.fig));
    if let Some(roofline) = &r.roofline {
        print!("{}", figures::render_roofline(roofline, r.fig.batch));
    }
}
