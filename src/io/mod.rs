//! Reading and writing files: weights (safetensors, and PyTorch checkpoints through a pickle
//! reader that executes nothing) and images (JPEG through our own decoder, PNG). Depends on the
//! leaf types ([`crate::model`]) and the CPU transform ([`crate::preprocess`]) only.

pub mod checkpoint;
pub mod files;
pub mod image;
pub mod jpeg;
pub mod safetensors;

use std::path::Path;

pub use self::image::{decode_rgb8, decode_rgb8_bytes, load_image, MAX_PIXELS};
use crate::error::Result;
use crate::model::{Model, ModelConfig};

/// Model `name` with its weights read from `path`: safetensors, or a `torch.save` checkpoint
/// (the published `SReT_T_distill.pth` and siblings, timm's DeiT and PiT files), told apart by
/// their first bytes.
pub fn load_model(name: &str, path: impl AsRef<Path>) -> Result<Model> {
    let cfg = ModelConfig::by_name(name)?;
    Ok(Model {
        weights: checkpoint::load_weights(path.as_ref(), &cfg)?,
        cfg,
        synthetic: false,
    })
}
