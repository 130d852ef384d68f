//! Reading image batches and writing results as safetensors.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Largest safetensors file of images read.
pub const MAX_IMAGES_FILE_BYTES: u64 = 4 << 30;

/// A batch `[b, 3, size, size]` from a safetensors file holding `images`, or from image files
/// preprocessed as torchvision's ImageNet evaluation transform. At most `max_batch` images
/// (checked before anything is decoded); non-finite values are warned about, or refused with
/// `refuse_non_finite`.
pub fn load_images(
    paths: &[PathBuf],
    cfg: &ModelConfig,
    max_batch: usize,
    refuse_non_finite: bool,
) -> Result<(Vec<f32>, usize)> {
    let per = 3 * cfg.image_size * cfg.image_size;
    if paths.len() == 1 && paths[0].extension().is_some_and(|e| e == "safetensors") {
        let path = &paths[0];
        let bytes = crate::io::files::read_regular(path, MAX_IMAGES_FILE_BYTES, "images file")?;
        crate::io::safetensors::check_header(&bytes, path)?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::BadSafetensors {
                path: path.clone(),
                why: e.to_string(),
            })?;
        let t = st.tensor("images").map_err(|_| Error::MissingTensor {
            path: path.clone(),
            name: "images".into(),
        })?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::DtypeMismatch {
                path: path.clone(),
                name: "images".into(),
                expected: "F32".into(),
                found: format!("{:?}", t.dtype()),
            });
        }
        let shape = t.shape().to_vec();
        let s = cfg.image_size;
        if shape.len() != 4 || shape[1..] != [3, s, s] || shape[0] == 0 {
            // The batch a rank-4 tensor gives; 1 for any other rank.
            let b = if shape.len() == 4 { shape[0].max(1) } else { 1 };
            return Err(Error::ShapeMismatch {
                path: path.clone(),
                name: "images".into(),
                expected: vec![b, 3, s, s],
                found: shape,
            });
        }
        super::check_batch(
            "images",
            shape[0],
            max_batch,
            "images per forward on this device",
        )
        .map_err(|e| Error::arg("images", path.display(), e))?;
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            let what = format!(
                "tensor 'images' has {bad} non-finite value(s) (NaN or Inf) of {}",
                data.len()
            );
            if refuse_non_finite {
                return Err(Error::arg(
                    "images",
                    path.display(),
                    format!("{what} and --refuse-non-finite is given"),
                ));
            }
            eprintln!(
                "warning: {}: {what}; the GPU's ReLU turns NaN into 0, so the logits may look finite (--refuse-non-finite refuses such input)",
                path.display()
            );
        }
        let b = data.len() / per;
        return Ok((data, b));
    }
    if paths.len() > max_batch {
        return Err(Error::arg(
            "images",
            format!("{} files", paths.len()),
            format!("at most {max_batch} images per forward on this device (run larger sets as several forwards, or use eval)"),
        ));
    }
    let mut data = Vec::with_capacity(paths.len() * per);
    let transform = crate::preprocess::EvalTransform::for_model(cfg);
    for p in paths {
        data.extend(crate::io::load_image_with(p, &transform)?);
    }
    Ok((data, paths.len()))
}

/// A tensor to write: name, shape and little-endian bytes.
pub struct OutTensor {
    /// Tensor name in the file.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// The elements, little-endian.
    pub bytes: Vec<u8>,
}

impl OutTensor {
    /// An f32 tensor `name` of `shape` holding `v`.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        OutTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    /// Indices as int64, the dtype torch indexing expects.
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, v: &[u32]) -> Self {
        OutTensor {
            name: name.into(),
            dtype: Dtype::I64,
            shape,
            bytes: v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
        }
    }
}

/// Writes the tensors as a safetensors file, atomically ([`crate::io::files::write_atomic`]).
pub fn write_safetensors(path: &Path, tensors: &[OutTensor]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Write {
                    path: path.to_path_buf(),
                    why: format!("tensor '{}': {e}", t.name),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    crate::io::files::write_atomic_bytes(path, &bytes)
}
