//! The `sret-tome` command line.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod infer;
pub mod io;
pub mod merge_results;
pub mod plan;
pub mod sweep;
pub mod synthetic;
pub mod visualize;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::gpu::AdapterChoice;
use crate::kernels::PipelineCache;

/// The `sret-tome` command line.
#[derive(Parser, Debug)]
#[command(
    name = "sret-tome",
    version,
    about = "Sliced Recursive Transformers with Token Merging, planned once and run resident on the GPU"
)]
pub struct Cli {
    /// Vector width of Mesa's software Vulkan (llvmpipe/lavapipe), through
    /// LP_NATIVE_VECTOR_WIDTH, set before any GPU is opened and only when that variable is
    /// unset: 256, 512, or auto (512 where the CPU has AVX-512, unless lavapipe is Mesa 25 or
    /// later, which gains nothing at 512 bits). Default: not set (llvmpipe picks 256 bits).
    /// Other drivers ignore the variable.
    #[arg(long, global = true, value_enum)]
    pub vector_width: Option<VectorWidth>,
    /// Choose kernel variants by timing them on the adapter (`on`, the default; the choice is
    /// cached per adapter and plan in ~/.cache/sret-tome/autotune.tsv) or not (`off`: subgroup
    /// kernels where the adapter has them, else vec4 attention, else the portable kernels).
    /// Sets SRET_TOME_AUTOTUNE for every engine the command builds.
    #[arg(long, global = true, value_parser = ["on", "off"])]
    pub autotune: Option<String>,
    /// Pin kernel variants (no measurement), for bit-reproducible runs: one of subgroup, tiled,
    /// vec4, portable for every kind (kinds without that variant run their portable kernel:
    /// `tiled` is the tiled linear kernel and portable elsewhere), or KIND=VARIANT pairs such as
    /// `linear=tiled,attention=vec4` (kinds: linear, conv, attention, matching, mlp; a
    /// variant name fuses the MLP in every family, `mlp=fused` or `mlp=portable` (two linear
    /// layers, the fixed default's choice) says which).
    #[arg(long, global = true, value_parser = parse_variants)]
    pub kernels: Option<crate::kernels::Variants>,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_variants(s: &str) -> std::result::Result<crate::kernels::Variants, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

impl Cli {
    /// The value `--autotune` / `--kernels` give `SRET_TOME_AUTOTUNE`, if any (an error when
    /// both are given, except `--autotune off` with `--kernels`, which is the same thing).
    pub fn autotune_env(&self) -> crate::Result<Option<String>> {
        match (&self.autotune, &self.kernels) {
            (Some(a), Some(_)) if a == "on" => Err(crate::Error::arg(
                "kernels",
                self.kernels.map(|k| k.to_string()).unwrap_or_default(),
                "pins the kernels, which --autotune on would measure; pass one of the two",
            )),
            (_, Some(k)) => Ok(Some(k.to_string())),
            (Some(a), None) => Ok(Some(a.clone())),
            (None, None) => Ok(None),
        }
    }
}

/// `--vector-width`: what the CLI asks llvmpipe for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VectorWidth {
    /// 512 bits where the CPU has AVX-512F and lavapipe is older than Mesa 25, else leave
    /// llvmpipe's default.
    Auto,
    /// 256-bit vectors.
    #[value(name = "256")]
    Bits256,
    /// 512-bit vectors.
    #[value(name = "512")]
    Bits512,
}

/// Name of the environment variable llvmpipe reads for its vector width.
pub const LP_VECTOR_WIDTH_VAR: &str = "LP_NATIVE_VECTOR_WIDTH";

/// What `--vector-width` decides: the value to set `LP_NATIVE_VECTOR_WIDTH` to (`None`: leave
/// the environment alone) and a line saying why. `current` is the variable's value now, if
/// set; `avx512f` whether the CPU has AVX-512F; `lavapipe_mesa` the Mesa release `(major,
/// minor)` of the lavapipe this process would load, asked only for `auto` on an AVX-512F CPU
/// ([`lavapipe_mesa_version`]). Pure given those, so it can be tested; the binary applies it
/// before anything creates a wgpu instance (the library never touches the variable).
///
/// `auto` keeps 256 bits on Mesa 25 and later: their lavapipe broadcasts within 16-lane
/// subgroups several times slower, so the engine runs its subgroup kernels there as 8-lane
/// workgroups (`kernels::program::subgroup_width_for`), and 512 bits then measured 0.97-0.99x
/// of 256 bits (SReT-T at batch 1, Intel Xeon with AVX-512), where Mesa 22.3.6 gained
/// 1.16-1.46x on an AMD AVX-512 CPU (`docs/performance.md`).
pub fn vector_width_decision(
    choice: Option<VectorWidth>,
    current: Option<&str>,
    avx512f: bool,
    lavapipe_mesa: impl FnOnce() -> Option<(u32, u32)>,
) -> (Option<&'static str>, String) {
    let Some(choice) = choice else {
        return (
            None,
            "vector width: not set (llvmpipe's default, 256 bits)".into(),
        );
    };
    if let Some(v) = current {
        return (
            None,
            format!("vector width: {LP_VECTOR_WIDTH_VAR}={v} already set by the user, kept"),
        );
    }
    match choice {
        VectorWidth::Bits256 => (
            Some("256"),
            format!("vector width: {LP_VECTOR_WIDTH_VAR}=256 (--vector-width 256)"),
        ),
        VectorWidth::Bits512 => (
            Some("512"),
            format!("vector width: {LP_VECTOR_WIDTH_VAR}=512 (--vector-width 512)"),
        ),
        VectorWidth::Auto if avx512f => match lavapipe_mesa() {
            Some((major, minor)) if major >= 25 => (
                None,
                format!(
                    "vector width: not set (--vector-width auto: lavapipe of Mesa {major}.{minor} \
                     runs no faster at 512 bits; llvmpipe's default 256 bits)"
                ),
            ),
            _ => (
                Some("512"),
                format!(
                    "vector width: {LP_VECTOR_WIDTH_VAR}=512 (--vector-width auto: the CPU has \
                     AVX-512F)"
                ),
            ),
        },
        VectorWidth::Auto => (
            None,
            "vector width: not set (--vector-width auto: no AVX-512F, llvmpipe's default 256 bits)"
                .into(),
        ),
    }
}

/// The Mesa release of the Vulkan lavapipe this process would load, asked of a child `sret-tome
/// adapters` (llvmpipe reads `LP_NATIVE_VECTOR_WIDTH` once, when a process first opens it, so
/// this process must not open it before deciding). `None` where there is no lavapipe or the
/// child fails.
pub fn lavapipe_mesa_version() -> Option<(u32, u32)> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["adapters", "--backend", "vulkan"])
        .env(LP_VECTOR_WIDTH_VAR, "256")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let version = listing
        .lines()
        .filter(|l| l.contains("llvmpipe"))
        .find_map(crate::gpu::context::mesa_version);
    log::info!("lavapipe's Mesa release (asked of a child process): {version:?}");
    version
}

/// Whether this CPU has AVX-512F.
pub fn cpu_has_avx512f() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    {
        false
    }
}

/// The subcommands of `sret-tome`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Classify images; write logits (and with --trace the permutations and merge maps).
    Infer(infer::InferArgs),
    /// Measure the paper's Table 1 on this adapter: throughput, peak activation memory, FLOPs.
    Bench(bench::BenchArgs),
    /// Print the static token trajectory of a schedule, with FLOPs and parameters.
    Plan(plan::PlanArgs),
    /// Convert a PyTorch checkpoint (.pth) to safetensors.
    Convert(convert::ConvertArgs),
    /// List the GPU adapters `--adapter` can choose from.
    Adapters(GpuArgs),
    /// Write the synthetic weights (and images) used when no weight file is given.
    Synthetic(synthetic::SyntheticArgs),
    /// Top-1/top-5 on an image folder, and each schedule's fidelity to the uncompressed model.
    Eval(eval::EvalArgs),
    /// Sweep the exponential schedule's (r_init, alpha) grid: quality, throughput, PAM, Pareto
    /// frontier, CSV/JSON and figures.
    Sweep(sweep::SweepArgs),
    /// Join the shards (--shard K/N) of an eval or sweep run.
    MergeResults(merge_results::MergeArgs),
    /// Draw, per stage, which merged token every patch of an image ended in.
    Visualize(visualize::VisualizeArgs),
}

/// Choice of GPU, shared by every command that runs the model.
#[derive(Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Backends to consider (vulkan, metal, dx12, gl, all); default: WGPU_BACKEND, else Vulkan, Metal and DX12 (GL only as a fallback).
    #[arg(long)]
    pub backend: Option<String>,
    /// Adapter index as listed by `sret-tome adapters`; default: the high-performance one.
    #[arg(long)]
    pub adapter: Option<usize>,
    /// Build the kernels without wgpu's runtime bounds checks (their indexing is verified by
    /// the test suite, which runs every kernel both ways).
    #[arg(long)]
    pub trusted_shaders: bool,
    /// Storage precision: f32, or f16 (activations, weights, images and logits stored as f16,
    /// arithmetic in f32; needs an adapter with SHADER_F16).
    #[arg(long, default_value = "f32")]
    pub precision: crate::model::Precision,
}

impl GpuArgs {
    /// The pipeline cache the command's plans share.
    pub fn pipeline_cache(&self) -> PipelineCache {
        if self.trusted_shaders {
            PipelineCache::trusted()
        } else {
            PipelineCache::default()
        }
    }

    /// The adapter these arguments select.
    pub fn choice(&self) -> AdapterChoice {
        AdapterChoice {
            backends: self.backend.clone(),
            index: self.adapter,
        }
    }
}

/// Opens the GPU `args` choose, after checking that the address-space limit (`ulimit -v`)
/// leaves what a driver needs ([`crate::os_limits::check_address_space_for_device`]): a
/// software driver that runs out of it crashes inside `vkCreateDevice`.
pub fn open_gpu(args: &GpuArgs) -> Result<crate::gpu::Gpu> {
    crate::os_limits::check_address_space_for_device()?;
    crate::gpu::Gpu::new(&args.choice())
}

/// Model and weights, shared by every command that runs the model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// sret_t, sret_t_distill, sret_lt, sret_lt_distill, sret_s, sret_s_distill, the paper's
    /// baselines deit_tiny, deit_tiny_distill, pit_ti, pit_ti_distill (timm layouts), timm's
    /// deit_*/vit_* names (with @depth=..,img_size=..,global_pool=.. overrides), or `auto`: the
    /// architecture read off the --weights file's tensors.
    #[arg(long, default_value = crate::model::DEFAULT_MODEL)]
    pub model: String,
    /// Weights: safetensors or a PyTorch checkpoint (`torch.save` .pth, as published) with the
    /// reference's (SReT) or timm's (DeiT, PiT; also PiT's original `pools.N`) state_dict names;
    /// synthetic when absent.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Refuse weights (and `infer`'s images) holding NaN or Inf instead of warning: the GPU's
    /// ReLU does not propagate NaN as PyTorch does, so such a model can give finite logits.
    #[arg(long)]
    pub refuse_non_finite: bool,
}

impl ModelArgs {
    /// The model with its weights file, or with synthetic weights (said on stderr).
    pub fn load(&self) -> Result<crate::model::Model> {
        match &self.weights {
            Some(path) => {
                let model = crate::io::load_model(&self.model, path)?;
                // The loader has warned (log level warn) about each non-finite tensor.
                if !self.refuse_non_finite {
                    return Ok(model);
                }
                let bad = crate::io::safetensors::non_finite_tensors(&model.weights, &model.cfg)?;
                if let Some((name, n, of)) = bad.first() {
                    return Err(crate::error::Error::arg(
                        "weights",
                        path.display(),
                        format!(
                            "tensor '{name}' has {n} non-finite value(s) of {of} ({} tensor(s) in all) and --refuse-non-finite is given",
                            bad.len()
                        ),
                    ));
                }
                Ok(model)
            }
            None => crate::model::Model::synthetic(&self.model),
        }
    }

    /// The weight file, as an input an output must not overwrite.
    pub fn inputs(&self) -> Vec<&std::path::Path> {
        self.weights.iter().map(|p| p.as_path()).collect()
    }
}

/// The most images one forward on `gpu` takes (its whole batch lives in one buffer of at most
/// `max_buffer_size` bytes), for checking user-given batch sizes before allocating anything.
pub fn max_batch(
    gpu: &crate::gpu::Gpu,
    cfg: &crate::model::ModelConfig,
    precision: crate::model::Precision,
) -> usize {
    let es: u64 = if precision == crate::model::Precision::F16 {
        2
    } else {
        4
    };
    let per = (3 * (cfg.image_size * cfg.image_size) as u64 * es).max(1);
    usize::try_from(gpu.limits.max_buffer_size / per).unwrap_or(usize::MAX)
}

/// Refuses a batch size of 0 or above `max`, saying the largest value that works.
pub fn check_batch(what: &'static str, batch: usize, max: usize, why: &str) -> Result<()> {
    if batch == 0 {
        return Err(crate::error::Error::arg(what, batch, "must be at least 1"));
    }
    if batch > max {
        return Err(crate::error::Error::arg(
            what,
            batch,
            format!("at most {max} ({why})"),
        ));
    }
    Ok(())
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Infer(a) => infer::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Plan(a) => plan::run(a, cli.kernels),
        Command::Convert(a) => convert::run(a),
        Command::Synthetic(a) => synthetic::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::MergeResults(a) => merge_results::run(a),
        Command::Visualize(a) => visualize::run(a),
        Command::Adapters(g) => {
            crate::os_limits::check_address_space_for_device()?;
            let list = crate::gpu::context::list_adapters(&g.choice())?;
            if list.is_empty() {
                println!("no adapters found (on Linux without a GPU: apt-get install mesa-vulkan-drivers)");
            }
            for (i, a) in list.iter().enumerate() {
                println!(
                    "{i}: {} ({:?}, {:?}, {} {}), subgroups of {}..{} lanes",
                    a.name,
                    a.backend,
                    a.device_type,
                    a.driver,
                    a.driver_info,
                    a.subgroup_min_size,
                    a.subgroup_max_size
                );
            }
            Ok(())
        }
    }
}

/// Build `builder`'s engine with a spinner on stderr that shows what a long first build on an
/// adapter is doing (autotune rounds, the kernel check; [`crate::EngineBuilder::on_progress`]).
/// Nothing is drawn for a build that reads its choices from the cache, nor when stderr is not
/// a terminal.
pub fn build_engine(builder: crate::EngineBuilder) -> Result<crate::Engine> {
    let spinner = indicatif::ProgressBar::new_spinner();
    let shown = spinner.clone();
    let engine = builder
        .on_progress(move |line| {
            shown.enable_steady_tick(std::time::Duration::from_millis(120));
            // The first clause of the line (the rest is in the `info` log).
            let short = line.split([';', '(']).next().unwrap_or(line).trim();
            shown.set_message(short.to_string());
        })
        .build();
    spinner.finish_and_clear();
    engine
}
