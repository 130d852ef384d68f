//! `sret-tome infer`: classify a batch, write the logits and (with `--trace`) the run's
//! permutations, merge maps, masses and per-stage unmerge maps.

use std::path::PathBuf;

use clap::Args;

use super::io::{load_images, write_safetensors, OutTensor};
use super::{GpuArgs, ModelArgs};
use crate::error::Result;
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;
use crate::tome::DEFAULT_SEED;
use crate::EngineBuilder;

/// Arguments of `sret-tome infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model and weights.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A safetensors file with `images` f32 `[B,3,224,224]` (normalised), or image files.
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Token merging schedule: none, constant:R, tome:R,INFLECT, linear:R, exp:RINIT,ALPHA,
    /// list:r1,...
    #[arg(long, default_value = "none")]
    pub schedule: String,
    /// Seed of the recursive passes' token permutations.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Output safetensors: `logits` [B, classes] (+ trace tensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `perm.<stage>.<exec>`, `merge.<stage>.<exec>.map|mass` and `stage_map.<stage>`.
    #[arg(long)]
    pub trace: bool,
    /// GPU choice and precision.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Run `sret-tome infer`: classify the images, print the top classes and write the logits.
pub fn run(a: InferArgs) -> Result<()> {
    // The output is checked before any work: directory there and writable, not an input.
    let mut inputs = a.model.inputs();
    inputs.extend(a.images.iter().map(|p| p.as_path()));
    crate::io::files::check_output(&a.out, &inputs)?;
    let model = std::sync::Arc::new(a.model.load()?);
    let schedule: Schedule = a.schedule.parse()?;
    let spec = ForwardSpec::new(&model.cfg, &schedule, a.seed)?;
    if model.synthetic {
        eprintln!(
            "note: no --weights given; using deterministic synthetic weights for {} (the classes printed are meaningless)",
            model.cfg.name
        );
    }
    let gpu = super::open_gpu(&a.gpu)?;
    let max = super::max_batch(&gpu, &model.cfg, a.gpu.precision);
    let (images, batch) = load_images(&a.images, &model.cfg, max, a.model.refuse_non_finite)?;
    let engine = super::build_engine(
        EngineBuilder::new()
            .gpu(&gpu)
            .pipeline_cache(&a.gpu.pipeline_cache())
            .with_model(model.clone())
            .spec(
                &spec
                    .clone()
                    .with_batch(batch)
                    .with_trace(a.trace)
                    .with_precision(a.gpu.precision),
            ),
    )?;
    let out = engine.forward(&images)?;

    let classes = model.cfg.num_classes;
    let mut tensors = vec![OutTensor::f32("logits", vec![batch, classes], &out.logits)];
    if a.trace {
        for e in &spec.trajectory.executions {
            if let Some(p) = &spec.perms[e.stage][e.exec] {
                tensors.push(OutTensor::i64(
                    format!("perm.{}.{}", e.stage, e.exec),
                    vec![p.len()],
                    p,
                ));
            }
        }
        if let Some(t) = &out.trace {
            for m in &t.merges {
                let (s, e) = (m.stage, m.exec);
                tensors.push(OutTensor::i64(
                    format!("merge.{s}.{e}.map"),
                    vec![batch, m.n_in],
                    &m.slots,
                ));
                tensors.push(OutTensor::f32(
                    format!("merge.{s}.{e}.mass"),
                    vec![batch, m.n_out],
                    &m.masses,
                ));
            }
            for (s, map, n_grid) in &t.stage_maps {
                tensors.push(OutTensor::i64(
                    format!("stage_map.{s}"),
                    vec![batch, *n_grid],
                    map,
                ));
            }
        }
    }
    write_safetensors(&a.out, &tensors)?;

    println!(
        "{} on {}, schedule {} ({} tokens merged per image)",
        model.cfg.name,
        gpu.describe(),
        schedule,
        spec.trajectory.removed_total()
    );
    for (i, row) in out.logits.chunks(classes).enumerate() {
        let p = softmax(row);
        let mut idx: Vec<usize> = (0..classes).collect();
        idx.sort_by(|&x, &y| p[y].total_cmp(&p[x]));
        let name = a
            .images
            .get(i)
            .filter(|_| a.images.len() == batch)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("image {i}"));
        println!("{name}:");
        for &c in idx.iter().take(5) {
            let label = crate::model::imagenet_class(c).unwrap_or("?");
            println!("  {:5.1}%  {c:4}  {label}", 100.0 * p[c]);
        }
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
