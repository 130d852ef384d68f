//! `sret-tome synthetic`: write the deterministic synthetic weights (and optionally images)
//! the engine uses when no weight file is given, so other tools (the PyTorch reference harness
//! in `tools/`) can run the very same model.

use std::path::PathBuf;

use clap::Args;

use super::io::{write_safetensors, OutTensor};
use crate::error::Result;
use crate::model::Model;

/// Arguments of `sret-tome synthetic`.
#[derive(Args, Debug)]
pub struct SyntheticArgs {
    /// Model whose synthetic weights to write.
    #[arg(long, default_value = crate::model::DEFAULT_MODEL)]
    pub model: String,
    /// Where to write the weights (safetensors, the reference's state_dict names).
    #[arg(long)]
    pub weights_out: PathBuf,
    /// Also write `images` f32 `[B,3,224,224]` of synthetic, normalised-looking inputs.
    #[arg(long)]
    pub images_out: Option<PathBuf>,
    /// Number of images written with --images-out.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Seed of the synthetic images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Most bytes of synthetic images written (2 GiB, what one forward takes on common devices).
pub const MAX_SYNTHETIC_IMAGE_BYTES: usize = 2 << 30;

/// Run `sret-tome synthetic`: write the model's synthetic weights (and images).
pub fn run(a: SyntheticArgs) -> Result<()> {
    let cfg = crate::model::ModelConfig::by_name(&a.model)?;
    let per = 3 * cfg.image_size * cfg.image_size * 4;
    super::check_batch(
        "batch",
        a.batch,
        MAX_SYNTHETIC_IMAGE_BYTES / per,
        "2 GiB of f32 images",
    )?;
    let mut outputs = vec![("--weights-out", a.weights_out.as_path())];
    if let Some(p) = &a.images_out {
        outputs.push(("--images-out", p.as_path()));
    }
    crate::io::files::check_distinct_outputs(&outputs)?;
    for (_, p) in &outputs {
        crate::io::files::check_output(p, &[])?;
    }
    let model = Model::synthetic(&a.model)?;
    crate::io::safetensors::save_safetensors(&model.weights, &model.cfg, &a.weights_out)?;
    if let Some(path) = &a.images_out {
        let s = model.cfg.image_size;
        let images = crate::model::synthetic_images(&model.cfg, a.batch, a.seed);
        write_safetensors(
            path,
            &[OutTensor::f32("images", vec![a.batch, 3, s, s], &images)],
        )?;
    }
    Ok(())
}
