//! `sret-tome visualize`: for each stage, the input with every original patch coloured by the
//! merged token it ended in, token and group borders drawn (see [`crate::eval::visualize`]).

use std::path::PathBuf;

use clap::Args;

use super::{GpuArgs, ModelArgs};
use crate::error::{Error, Result};
use crate::eval::metrics::log_softmax;
use crate::eval::visualize::{denormalize, render, stage_maps, StageMap, Style};
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
use crate::EngineBuilder;

/// Arguments of `sret-tome visualize`.
#[derive(Args, Debug)]
pub struct VisualizeArgs {
    /// Model and weights.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The image (JPEG or PNG), preprocessed as for evaluation (resize 256, centre crop 224).
    #[arg(long)]
    pub image: PathBuf,
    /// Token merging schedule.
    #[arg(long, default_value = "exp:0.25,0")]
    pub schedule: String,
    /// Seed of the recursive passes' token permutations.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// mean: patches take their token's mean colour (ToMe); random: one colour per token.
    #[arg(long, value_enum, default_value = "mean")]
    pub style: Style,
    /// Output pixels per input pixel (panels are 224 x scale wide).
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// GPU choice and precision.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Run the forward with tracing, draw the merge picture and return each stage's map.
pub fn run_visualize(a: VisualizeArgs) -> Result<Vec<StageMap>> {
    let is_png = a
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(Error::arg(
            "out",
            a.out.display(),
            "visualize writes PNG: give a file name ending in .png",
        ));
    }
    if !(1..=8).contains(&a.scale) {
        return Err(Error::arg("scale", a.scale, "must be between 1 and 8"));
    }
    let mut inputs = a.model.inputs();
    inputs.push(&a.image);
    // Checked before any work; its directory is created only when the picture is written.
    crate::io::files::check_output_creating(&a.out, &inputs)?;
    let model = std::sync::Arc::new(a.model.load()?);
    if model.synthetic {
        eprintln!(
            "note: no --weights given; using deterministic synthetic weights for {} (which tokens merge is then not what a trained model does)",
            model.cfg.name
        );
    }
    let schedule: Schedule = a.schedule.parse()?;
    let spec = ForwardSpec::new(&model.cfg, &schedule, a.seed)?;
    let input = crate::io::load_image_with(
        &a.image,
        &crate::preprocess::EvalTransform::for_model(&model.cfg),
    )?;
    let crop = denormalize(&input, model.cfg.image_size);
    let gpu = super::open_gpu(&a.gpu)?;
    let engine = super::build_engine(
        EngineBuilder::new()
            .gpu(&gpu)
            .pipeline_cache(&a.gpu.pipeline_cache())
            .with_model(model.clone())
            .spec(
                &spec
                    .clone()
                    .with_batch(1)
                    .with_trace(true)
                    .with_precision(a.gpu.precision),
            ),
    )?;
    let out = engine.forward(&input)?;
    let trace_maps = out.trace.map(|t| t.stage_maps).unwrap_or_default();
    let maps = stage_maps(&model.cfg, &spec.trajectory, &trace_maps, 0)?;
    let name = a
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{name}: {} with {} ({} tokens merged){}",
        model.cfg.name,
        schedule,
        spec.trajectory.removed_total(),
        if model.synthetic {
            ", synthetic weights"
        } else {
            ""
        }
    );
    let picture = render(&crop, &maps, a.style, a.scale, &title)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Write {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    crate::io::files::write_png(&a.out, &picture)?;
    println!("{title}");
    for m in &maps {
        let (tokens, largest, single) = m.token_stats();
        println!(
            "stage {}: {}x{} grid, {} -> {tokens} tokens, largest token {largest} patches, {single} tokens of one patch, {} attention groups on the first execution",
            m.stage,
            m.side,
            m.side,
            m.tokens_in,
            m.groups
        );
    }
    let lp = log_softmax(&out.logits);
    let mut idx: Vec<usize> = (0..lp.len()).collect();
    idx.sort_by(|&x, &y| lp[y].total_cmp(&lp[x]));
    for &c in idx.iter().take(3) {
        println!(
            "  {:5.1}%  {c:4}  {}",
            100.0 * (lp[c] as f64).exp(),
            crate::model::imagenet_class(c).unwrap_or("?")
        );
    }
    println!("wrote {}", a.out.display());
    Ok(maps)
}

/// Run `sret-tome visualize`.
pub fn run(a: VisualizeArgs) -> Result<()> {
    run_visualize(a).map(|_| ())
}
