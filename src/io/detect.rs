//! The model configuration from a weight file's tensor names and shapes (`--model auto`).
//!
//! First every named configuration ([`MODEL_NAMES`], [`VIT_FAMILY_NAMES`]) whose tensors have
//! the file's shapes is tried by loading the file against it; the configurations that load are
//! the answer when they agree (timm's `deit_tiny_patch16_224` and `vit_tiny_patch16_224` are one
//! network under two names: the first listed is taken), and an ambiguity error names them
//! when they do not. A timm `VisionTransformer` matching no named configuration (another depth,
//! patch, image size or class count) is derived from its tensors: width and patch from
//! `patch_embed.proj.weight`, the grid from `pos_embed`, depth from the `blocks.{i}` present,
//! distillation from `dist_token`, average pooling from `fc_norm`, classes from `head`. The
//! number of attention heads is the one thing shapes cannot tell; it is taken from the timm
//! model of the same width (192, 384, 768, 1024, 1280), and other widths are an error.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::SafeTensors;

use super::safetensors::{expected_tensors, load_safetensors_bytes};
use crate::error::{Error, Result};
use crate::model::{Arch, ModelConfig, ModelWeights, VitPool, MODEL_NAMES, VIT_FAMILY_NAMES};

/// The model name that asks for the configuration to be detected from the weights.
pub const AUTO: &str = "auto";

/// `(name, shape)` of the float tensors in safetensors `bytes` (a `module.` prefix stripped,
/// BatchNorm counters left out).
fn shapes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    super::safetensors::check_header(bytes, path)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::BadSafetensors {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut out: Vec<(String, Vec<usize>)> = st
        .iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .map(|(n, v)| (n.to_string(), v.shape().to_vec()))
        .collect();
    if !out.is_empty() && out.iter().all(|(n, _)| n.starts_with("module.")) {
        for (n, _) in &mut out {
            n.drain(.."module.".len());
        }
    }
    out.sort();
    Ok(out)
}

/// The configuration of the safetensors `bytes` and its weights (see the module docs).
pub fn detect_and_load(bytes: &[u8], path: &Path) -> Result<(ModelConfig, ModelWeights)> {
    let file = shapes(bytes, path)?;
    let mut file_shapes: Vec<&Vec<usize>> = file.iter().map(|(_, s)| s).collect();
    file_shapes.sort();
    let mut loaded: Vec<(ModelConfig, ModelWeights)> = Vec::new();
    for name in MODEL_NAMES.iter().chain(VIT_FAMILY_NAMES.iter()) {
        let cfg = ModelConfig::by_name(name)?;
        let want = expected_tensors(&cfg);
        let mut want_shapes: Vec<&Vec<usize>> = want.iter().map(|(_, s)| s).collect();
        want_shapes.sort();
        if want_shapes != file_shapes {
            continue;
        }
        if let Ok(w) = load_safetensors_bytes(bytes, path, &cfg) {
            loaded.push((cfg, w));
        }
    }
    if loaded.is_empty() {
        let cfg = derive_vit(&file, path)?;
        let w = load_safetensors_bytes(bytes, path, &cfg)?;
        log::info!(
            "{}: a {} derived from its tensors",
            path.display(),
            describe(&cfg)
        );
        return Ok((cfg, w));
    }
    let first = loaded[0].0.clone();
    let same = |c: &ModelConfig| {
        ModelConfig {
            name: first.name,
            ..c.clone()
        } == first
    };
    if let Some((other, _)) = loaded.iter().find(|(c, _)| !same(c)) {
        return Err(Error::arg(
            "model",
            AUTO,
            format!(
                "{} fits both {} and {}, which differ in what the tensors cannot show; name one with --model",
                path.display(),
                first.name,
                other.name
            ),
        ));
    }
    log::info!("{}: {} (from its tensors)", path.display(), first.name);
    Ok(loaded.swap_remove(0))
}

fn describe(cfg: &ModelConfig) -> String {
    let st = &cfg.stages[0];
    format!(
        "{}@depth={},img_size={} (width {}, {} heads, {} classes)",
        cfg.name, st.depth, cfg.image_size, st.dim, st.heads, cfg.num_classes
    )
}

/// A timm `VisionTransformer` configuration from its tensors.
fn derive_vit(file: &[(String, Vec<usize>)], path: &Path) -> Result<ModelConfig> {
    let map: HashMap<&str, &Vec<usize>> = file.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let bad = |why: String| Error::arg("model", AUTO, format!("{}: {why}", path.display()));
    let get = |name: &str| {
        map.get(name).copied().ok_or_else(|| {
            bad(format!(
                "no named model has these tensors, and without '{name}' they are not a timm VisionTransformer either; name the model with --model"
            ))
        })
    };
    let proj = get("patch_embed.proj.weight")?;
    let [dim, 3, patch, patch2] = proj[..] else {
        return Err(bad(format!(
            "patch_embed.proj.weight has shape {proj:?}, not [dim, 3, p, p]"
        )));
    };
    if patch != patch2 {
        return Err(bad(format!("non-square patches {patch}x{patch2}")));
    }
    if patch == 0 {
        return Err(bad(format!(
            "patch_embed.proj.weight has shape {proj:?}: a patch of 0 pixels"
        )));
    }
    let base = match dim {
        192 => "vit_tiny_patch16_224",
        384 => "vit_small_patch16_224",
        768 => "vit_base_patch16_224",
        1024 => "vit_large_patch16_224",
        1280 => "vit_huge_patch14_224",
        _ => {
            return Err(bad(format!(
                "width {dim} is no timm model's, so the number of attention heads cannot be told from the shapes; name a config with --model NAME@depth=..,img_size=.."
            )))
        }
    };
    get("cls_token")?;
    let distilled = map.contains_key("dist_token");
    let base = match (distilled, dim) {
        (true, 192) => "deit_tiny_distilled_patch16_224",
        (true, 384) => "deit_small_distilled_patch16_224",
        (true, 768) => "deit_base_distilled_patch16_224",
        _ => base,
    };
    let lead = 1 + distilled as usize;
    let pos = get("pos_embed")?;
    let grid = match pos[..] {
        [1, n, d] if d == dim => super::safetensors::resample::grid_side(n, lead),
        _ => None,
    }
    .ok_or_else(|| {
        bad(format!(
            "pos_embed has shape {pos:?}, not [1, {lead} + g*g, {dim}]"
        ))
    })?;
    let depth = file
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .collect::<BTreeSet<usize>>();
    let blocks = depth.len();
    if blocks == 0 || depth.iter().next_back() != Some(&(blocks - 1)) {
        return Err(bad(format!("blocks are not numbered 0..{blocks}")));
    }
    let head = get("head.weight")?;
    let classes = match head[..] {
        [c, d] if d == dim => c,
        _ => {
            return Err(bad(format!(
                "head.weight has shape {head:?}, not [classes, {dim}]"
            )))
        }
    };
    let fc1 = get("blocks.0.mlp.fc1.weight")?;
    let hidden = match fc1[..] {
        [h, d] if d == dim && h > 0 => h,
        _ => {
            return Err(bad(format!(
                "blocks.0.mlp.fc1.weight has shape {fc1:?}, not [hidden, {dim}]"
            )))
        }
    };
    let mut cfg = ModelConfig::by_name(base)?;
    cfg.image_size = grid.checked_mul(patch).ok_or_else(|| {
        bad(format!(
            "a {grid} x {grid} grid of {patch}-pixel patches is too large"
        ))
    })?;
    cfg.num_classes = classes;
    let st = &mut cfg.stages[0];
    (st.depth, st.recursive_num, st.mlp_hidden) = (blocks, blocks, hidden);
    if let Arch::Vit(v) = &mut cfg.arch {
        (v.patch, v.stride, v.distilled) = (patch, patch, distilled);
        if map.contains_key("fc_norm.weight") {
            v.pool = VitPool::Avg;
            v.prop_attn = false;
        }
    }
    cfg.validate()
        .map_err(|e| bad(format!("the tensors describe {}: {e}", describe(&cfg))))?;
    Ok(cfg)
}
