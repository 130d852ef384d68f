//! Reading and writing files: weights (safetensors, and PyTorch checkpoints through a pickle
//! reader that executes nothing) and images (JPEG through our own decoder, PNG). Depends on the
//! leaf types ([`crate::model`]), the CPU transform ([`crate::preprocess`]) and the process's
//! limits ([`crate::os_limits`]) only.

#[cfg(feature = "pth")]
pub mod checkpoint;
pub mod detect;
pub mod files;
#[cfg(feature = "images")]
pub mod image;
#[cfg(feature = "images")]
pub mod jpeg;
pub mod safetensors;

use std::path::Path;

#[cfg(feature = "images")]
pub use self::image::{decode_rgb8, decode_rgb8_bytes, load_image, load_image_with, MAX_PIXELS};
use crate::error::Result;
use crate::model::{Model, ModelConfig, ModelWeights};

/// Model `name` with its weights read from `path`: safetensors, or a `torch.save` checkpoint
/// (the published `SReT_T_distill.pth` and siblings, timm's DeiT and PiT files), told apart by
/// their first bytes.
///
/// With `name` [`detect::AUTO`] (`"auto"`) the configuration is read off the file's tensors
/// ([`detect`]).
pub fn load_model(name: &str, path: impl AsRef<Path>) -> Result<Model> {
    if name == detect::AUTO {
        let (cfg, weights) = load_detected(path.as_ref())?;
        return Ok(Model {
            cfg,
            weights,
            synthetic: false,
        });
    }
    let cfg = ModelConfig::by_name(name)?;
    Ok(Model {
        weights: load_weights(path.as_ref(), &cfg)?,
        cfg,
        synthetic: false,
    })
}

/// Model `name` (or [`detect::AUTO`]) with its weights from safetensors bytes already in memory
/// (a file a browser page was given, a download); `what` names them in messages.
pub fn load_model_safetensors_bytes(name: &str, bytes: &[u8], what: &Path) -> Result<Model> {
    let (cfg, weights) = if name == detect::AUTO {
        detect::detect_and_load(bytes, what)?
    } else {
        let cfg = ModelConfig::by_name(name)?;
        let weights = safetensors::load_safetensors_bytes(bytes, what, &cfg)?;
        (cfg, weights)
    };
    Ok(Model {
        cfg,
        weights,
        synthetic: false,
    })
}

/// The file as safetensors bytes (a checkpoint converted in memory), then [`detect`].
fn load_detected(path: &Path) -> Result<(ModelConfig, ModelWeights)> {
    let bytes = files::read_regular(path, safetensors::MAX_WEIGHT_FILE_BYTES, "weight file")?;
    #[cfg(feature = "pth")]
    if checkpoint::detect_format(&bytes) == checkpoint::WeightFormat::Checkpoint {
        let tensors = checkpoint::read_state_dict_bytes(&bytes, path)?;
        drop(bytes);
        let st = checkpoint::to_safetensors_bytes(&tensors)?;
        drop(tensors);
        return detect::detect_and_load(&st, path);
    }
    detect::detect_and_load(&bytes, path)
}

#[cfg(feature = "pth")]
fn load_weights(path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    checkpoint::load_weights(path, cfg)
}

/// Without the `pth` feature only safetensors are read; a zip archive (what `torch.save`
/// writes) is named as such instead of failing as a malformed safetensors file.
#[cfg(not(feature = "pth"))]
fn load_weights(path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    use std::io::Read;
    let mut head = [0u8; 2];
    let zip = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"PK";
    if zip {
        return Err(crate::error::Error::arg(
            "weights",
            path.display(),
            "a PyTorch checkpoint; this build reads safetensors only (enable the `pth` feature, \
             or convert it with `sret-tome convert`)",
        ));
    }
    safetensors::load_safetensors(path, cfg)
}
