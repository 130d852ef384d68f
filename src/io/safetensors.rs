//! Reading and writing [`ModelWeights`] as safetensors files that use the reference's
//! `state_dict()` names.
//!
//! # Name layout
//!
//! ```text
//! pos_embed                                   [1, dim0, side, side]
//! patch_embed.conv{1,2,3}.{weight,bias}       3x3, stride 2, padding 1
//! patch_embed.bn{1,2,3}.{weight,bias,running_mean,running_var[,num_batches_tracked]}
//! transformers.{s}.blocks.{2*e}.…             Transformer_Block run by execution e
//! transformers.{s}.blocks.{2*e+1}.…           Non_proj of execution e
//! pools.{s}.conv.{weight,bias}                [dim_{s+1}, 1, 3, 3], groups dim_s (s < last)
//! norm.{weight,bias}, head.{weight,bias}
//! ```
//!
//! Execution `e` of a stage runs shared block `e / loops`, so a shared block is registered in the
//! `blocks` list once per loop, and `state_dict()` lists its tensors under every one of those
//! indices. The *first* name of a shared tensor is the one with the lowest index
//! (`2 * b * loops`).
//!
//! # Loading rules
//!
//! * Every tensor must be present under at least one of its names. A shared tensor may be stored
//!   under all of its names (as `state_dict()` does), under the first one only, or under any
//!   other subset: `safetensors.torch.save_model` drops duplicates keeping the name that sorts
//!   first *as a string*, which for the block at indices 8 and 10 is `blocks.10`. Copies that are
//!   present must be bitwise equal ([`Error::SharedCopiesDiffer`]).
//! * Names outside the layout are refused ([`Error::UnexpectedTensor`]), shapes must match
//!   exactly ([`Error::ShapeMismatch`]), floats may be F32, F16 or BF16 ([`Error::DtypeMismatch`]
//!   otherwise). `num_batches_tracked` is optional and ignored (one integer element).
//! * If every name starts with `module.` (a `DataParallel` checkpoint) the prefix is stripped.
//! * BatchNorm (eps 1e-5) is folded into the stem convolutions, in f64.
//! * Non-finite values are logged with `log::warn!`, not refused.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig};
use crate::model::weights::{
    BlockWeights, Conv, LayerNorm, Linear, ModelWeights, NonProjWeights, StageWeights,
};

pub mod resample;
mod vit;

/// `nn.BatchNorm2d`'s default eps, used by the reference's stem.
pub const BN_EPS: f64 = 1e-5;

/// `running_var` written for an identity BatchNorm: `var + eps` rounds to 1 (exactly in f32,
/// and close enough in f64 that folding returns every f32 weight unchanged).
const BN_IDENTITY_VAR: f32 = 1.0 - 1e-5;

const MODULE_PREFIX: &str = "module.";
const ACCEPTED_DTYPES: &str = "F32, F16 or BF16";

// ------------------------------------------------------------------------------------------------
// Names
// ------------------------------------------------------------------------------------------------

fn stem_conv(n: usize) -> String {
    format!("patch_embed.conv{}", n + 1)
}
fn stem_bn(n: usize) -> String {
    format!("patch_embed.bn{}", n + 1)
}
/// Prefix of the `blocks` entry at module index `index` of stage `s`.
fn blocks_entry(s: usize, index: usize) -> String {
    format!("transformers.{s}.blocks.{index}")
}
fn pool_conv(s: usize) -> String {
    format!("pools.{s}.conv")
}

const BN_PARAMS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// Stem convolutions as (in, out) channel pairs.
fn stem_channels(cfg: &ModelConfig) -> [(usize, usize); 3] {
    let d0 = cfg.stages[0].dim;
    [(3, cfg.stem_mid), (cfg.stem_mid, d0), (d0, d0)]
}

/// The parameters of a `Transformer_Block` (suffix, shape).
fn block_params(dim: usize, hidden: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("norm1.weight", vec![dim]),
        ("norm1.bias", vec![dim]),
        ("attn.qkv.weight", vec![3 * dim, dim]),
        ("attn.qkv.bias", vec![3 * dim]),
        ("attn.proj.weight", vec![dim, dim]),
        ("attn.proj.bias", vec![dim]),
        ("norm2.weight", vec![dim]),
        ("norm2.bias", vec![dim]),
        ("mlp.fc1.weight", vec![hidden, dim]),
        ("mlp.fc1.bias", vec![hidden]),
        ("mlp.fc2.weight", vec![dim, hidden]),
        ("mlp.fc2.bias", vec![dim]),
        ("coefficient1.bias", vec![1]),
        ("coefficient2.bias", vec![1]),
        ("coefficient3.bias", vec![1]),
        ("coefficient4.bias", vec![1]),
    ]
}

/// The parameters of a `Non_proj` (suffix, shape).
fn non_proj_params(dim: usize, hidden: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("norm1.weight", vec![dim]),
        ("norm1.bias", vec![dim]),
        ("mlp.fc1.weight", vec![hidden, dim]),
        ("mlp.fc1.bias", vec![hidden]),
        ("mlp.fc2.weight", vec![dim, hidden]),
        ("mlp.fc2.bias", vec![dim]),
        ("coefficient1.bias", vec![1]),
        ("coefficient2.bias", vec![1]),
    ]
}

/// One distinct tensor: all the names it is stored under (first = lowest index) and its shape.
struct Slot {
    names: Vec<String>,
    shape: Vec<usize>,
}

/// One `state_dict()` entry, in `state_dict()` order.
enum Item {
    /// A float tensor: its name and the slot holding its value.
    Tensor { name: String, slot: usize },
    /// A BatchNorm's `num_batches_tracked` (int64 scalar).
    Counter { name: String },
}

/// The full `state_dict()` of the reference module for a config.
struct Layout {
    slots: Vec<Slot>,
    items: Vec<Item>,
    by_first_name: HashMap<String, usize>,
    /// Other accepted names of a tensor that a saved file does not use (PiT's original
    /// `pools.{s}` beside timm's `transformers.{s+1}.pool`).
    aliases: Vec<String>,
}

impl Layout {
    fn new(cfg: &ModelConfig) -> Layout {
        let mut l = Layout {
            slots: Vec::new(),
            items: Vec::new(),
            by_first_name: HashMap::new(),
            aliases: Vec::new(),
        };
        match &cfg.arch {
            Arch::Sret => l.sret(cfg),
            Arch::Vit(v) => vit::layout(&mut l, cfg, v),
        }
        l
    }

    /// SReT's `state_dict()`.
    fn sret(&mut self, cfg: &ModelConfig) {
        let l = self;
        let side = cfg.grid_side(0);
        l.tensor(
            "pos_embed".into(),
            None,
            vec![1, cfg.stages[0].dim, side, side],
        );

        for (n, (cin, cout)) in stem_channels(cfg).into_iter().enumerate() {
            let conv = stem_conv(n);
            l.tensor(format!("{conv}.weight"), None, vec![cout, cin, 3, 3]);
            l.tensor(format!("{conv}.bias"), None, vec![cout]);
            let bn = stem_bn(n);
            for p in BN_PARAMS {
                l.tensor(format!("{bn}.{p}"), None, vec![cout]);
            }
            l.items.push(Item::Counter {
                name: format!("{bn}.num_batches_tracked"),
            });
        }

        for (s, st) in cfg.stages.iter().enumerate() {
            let loops = st.loops();
            let block = block_params(st.dim, st.mlp_hidden);
            let non_proj = non_proj_params(st.dim, st.np_hidden);
            for exec in 0..st.depth {
                let first_exec = st.block_of(exec) * loops;
                let here = blocks_entry(s, st.module_index(exec));
                let first = blocks_entry(s, st.module_index(first_exec));
                for (suffix, shape) in &block {
                    l.tensor(
                        format!("{here}.{suffix}"),
                        Some(format!("{first}.{suffix}")),
                        shape.clone(),
                    );
                }
                let np = blocks_entry(s, st.module_index(exec) + 1);
                for (suffix, shape) in &non_proj {
                    l.tensor(format!("{np}.{suffix}"), None, shape.clone());
                }
            }
        }

        for s in 0..cfg.stages.len().saturating_sub(1) {
            let out = cfg.stages[s + 1].dim;
            let conv = pool_conv(s);
            l.tensor(format!("{conv}.weight"), None, vec![out, 1, 3, 3]);
            l.tensor(format!("{conv}.bias"), None, vec![out]);
        }

        let fd = cfg.final_dim();
        l.tensor("norm.weight".into(), None, vec![fd]);
        l.tensor("norm.bias".into(), None, vec![fd]);
        l.tensor("head.weight".into(), None, vec![cfg.num_classes, fd]);
        l.tensor("head.bias".into(), None, vec![cfg.num_classes]);
    }

    /// Registers `name`, an alias of `first` when it is a later copy of a shared tensor.
    fn tensor(&mut self, name: String, first: Option<String>, shape: Vec<usize>) {
        let first = first.unwrap_or_else(|| name.clone());
        let slot = match self.by_first_name.get(&first) {
            Some(&slot) => {
                debug_assert_eq!(self.slots[slot].shape, shape);
                self.slots[slot].names.push(name.clone());
                slot
            }
            None => {
                debug_assert_eq!(first, name, "a shared tensor's first name comes first");
                self.slots.push(Slot {
                    names: vec![name.clone()],
                    shape,
                });
                self.by_first_name.insert(first, self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        self.items.push(Item::Tensor { name, slot });
    }

    /// Accepts `alias` on load as another name of the tensor first registered as `first`.
    fn alias(&mut self, alias: String, first: &str) {
        let slot = self.by_first_name[first];
        self.slots[slot].names.push(alias.clone());
        self.aliases.push(alias);
    }

    fn known_names(&self) -> HashSet<&str> {
        self.items
            .iter()
            .map(|item| match item {
                Item::Tensor { name, .. } | Item::Counter { name } => name.as_str(),
            })
            .chain(self.aliases.iter().map(String::as_str))
            .collect()
    }
}

/// The float tensors of the reference's `state_dict()` for `cfg`, in `state_dict()` order, with
/// their shapes: every name of a shared block (as `state_dict()` lists them) and the stem's
/// BatchNorm in eval form (`weight`, `bias`, `running_mean`, `running_var`). The BatchNorms'
/// int64 `num_batches_tracked` counters are not listed: they are optional on load (and
/// [`save_safetensors`] writes them as 0).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let layout = Layout::new(cfg);
    layout
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Tensor { name, slot } => Some((name.clone(), layout.slots[*slot].shape.clone())),
            Item::Counter { .. } => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Loading
// ------------------------------------------------------------------------------------------------

/// Largest safetensors weight file read (it is read whole).
pub const MAX_WEIGHT_FILE_BYTES: u64 = 4 << 30;

/// Loads a safetensors file with the reference's `state_dict()` names into [`ModelWeights`] for
/// `cfg`, folding the stem's BatchNorm into its convolutions. See the module docs for the rules.
pub fn load_safetensors(path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    let bytes = super::files::read_regular(path, MAX_WEIGHT_FILE_BYTES, "weight file")?;
    load_safetensors_bytes(&bytes, path, cfg)
}

/// The largest safetensors header read: the format's own rule (the `safetensors` crate's
/// `MAX_HEADER_SIZE`), checked here before anything in the header is parsed.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Checks the header length the file's first 8 bytes give against [`MAX_HEADER_BYTES`] and
/// the file's size, before any of the header is parsed.
fn check_header_len(bytes: &[u8], path: &Path) -> Result<()> {
    let bad = |why: String| Error::BadSafetensors {
        path: path.to_path_buf(),
        why,
    };
    let Some(head) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes, fewer than the 8 of the header length",
            bytes.len()
        )));
    };
    let len = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    if len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header of {len} bytes, more than the format's limit of {MAX_HEADER_BYTES}"
        )));
    }
    if len > bytes.len() as u64 - 8 {
        return Err(bad(format!(
            "header of {len} bytes, past the end of the {}-byte file",
            bytes.len()
        )));
    }
    Ok(())
}

/// The most tensors a header may describe: far more than any model here has (a 256-block
/// ViT has ~3,000), few enough that parsing the header takes memory of the order of its size.
pub const MAX_TENSORS: usize = 65_536;
/// The most dimensions a tensor's shape may have.
pub const MAX_RANK: usize = 16;
/// The most `__metadata__` entries a header may have.
pub const MAX_METADATA_ENTRIES: usize = 4096;

/// Checks a safetensors file's header before the `safetensors` crate parses it (which first
/// buffers every entry of the header as a generic JSON value, several times the header's
/// size): the length within [`MAX_HEADER_BYTES`] and the file, then one streaming pass that
/// stops at the first entry that is not a tensor description (`dtype`, `shape` of at most
/// [`MAX_RANK`] numbers, `data_offsets`), past [`MAX_TENSORS`] entries or
/// [`MAX_METADATA_ENTRIES`] metadata, or at a name listed twice (JSON allows repeated keys
/// and a map keeps only one of them, so a file could otherwise carry two tensors under one
/// name unnoticed). The pass keeps only names borrowed from the header, so its memory stays
/// below the header's size.
pub fn check_header(bytes: &[u8], path: &Path) -> Result<()> {
    check_header_len(bytes, path)?;
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    scan_header(&bytes[8..8 + len]).map_err(|why| Error::BadSafetensors {
        path: path.to_path_buf(),
        why,
    })
}

/// The streaming pass of [`check_header`] over the header's JSON text.
fn scan_header(header: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;
    /// A key, borrowed from the header unless it has escapes.
    struct Key<'de>(Cow<'de, str>);
    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a tensor name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }
    /// A shape: at most [`MAX_RANK`] non-negative integers, not kept.
    struct Shape;
    impl<'de> serde::Deserialize<'de> for Shape {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Shape;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    write!(f, "a shape of at most {MAX_RANK} dimensions")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<u64>()?.is_some() {
                        n += 1;
                        if n > MAX_RANK {
                            return Err(A::Error::custom(format!(
                                "a shape of more than {MAX_RANK} dimensions"
                            )));
                        }
                    }
                    Ok(Shape)
                }
            }
            d.deserialize_seq(V)
        }
    }
    /// A tensor's entry (its values are checked again by the crate).
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Entry {
        dtype: IgnoredAny,
        shape: Shape,
        data_offsets: [u64; 2],
    }
    /// `__metadata__`: at most [`MAX_METADATA_ENTRIES`] entries.
    struct Metadata;
    impl<'de> serde::Deserialize<'de> for Metadata {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Metadata;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    write!(f, "at most {MAX_METADATA_ENTRIES} metadata entries")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                    let mut n = 0;
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                        n += 1;
                        if n > MAX_METADATA_ENTRIES {
                            return Err(A::Error::custom(format!(
                                "more than {MAX_METADATA_ENTRIES} metadata entries"
                            )));
                        }
                    }
                    Ok(Metadata)
                }
            }
            d.deserialize_map(V)
        }
    }
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object of tensor descriptions")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen: std::collections::HashSet<Cow<'de, str>> = Default::default();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                if key == "__metadata__" {
                    map.next_value::<Metadata>()?;
                } else {
                    map.next_value::<Entry>()
                        .map_err(|e| A::Error::custom(format!("tensor '{key}': {e}")))?;
                }
                if seen.contains(&key) {
                    return Err(A::Error::custom(format!(
                        "the header lists tensor '{key}' twice (duplicate names)"
                    )));
                }
                if seen.len() >= MAX_TENSORS {
                    return Err(A::Error::custom(format!("more than {MAX_TENSORS} tensors")));
                }
                seen.insert(key);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(Keys)
        .and_then(|()| de.end())
        .map_err(|e| format!("invalid header: {e}"))
}

/// [`load_safetensors`] from the file's bytes; `path` is used only in messages.
pub fn load_safetensors_bytes(
    bytes: &[u8],
    path: &Path,
    cfg: &ModelConfig,
) -> Result<ModelWeights> {
    check_header(bytes, path)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::BadSafetensors {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;

    // File names, keyed by the name after stripping a DataParallel prefix.
    let entries: Vec<(&str, TensorView<'_>)> = st.iter().collect();
    let strip = !entries.is_empty() && entries.iter().all(|(n, _)| n.starts_with(MODULE_PREFIX));
    let file: HashMap<&str, (&str, &TensorView<'_>)> = entries
        .iter()
        .map(|(name, view)| {
            let key = if strip {
                &name[MODULE_PREFIX.len()..]
            } else {
                name
            };
            (key, (*name, view))
        })
        .collect();

    let layout = Layout::new(cfg);

    let mut values: Vec<Vec<f32>> = Vec::with_capacity(layout.slots.len());
    for slot in &layout.slots {
        let mut found: Option<(&str, Vec<f32>)> = None;
        for name in &slot.names {
            let Some(&(stored_name, view)) = file.get(name.as_str()) else {
                continue;
            };
            let data = read_slot(path, cfg, &slot.names[0], stored_name, view, &slot.shape)?;
            match &found {
                None => found = Some((stored_name, data)),
                Some((first, first_data)) => {
                    let same = first_data.len() == data.len()
                        && first_data
                            .iter()
                            .zip(&data)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                    if !same {
                        return Err(Error::SharedCopiesDiffer {
                            path: path.to_path_buf(),
                            first: first.to_string(),
                            second: stored_name.to_string(),
                        });
                    }
                }
            }
        }
        let Some((stored_name, data)) = found else {
            return Err(Error::MissingTensor {
                path: path.to_path_buf(),
                name: slot.names[0].clone(),
            });
        };
        warn_non_finite(path, stored_name, &data);
        values.push(data);
    }

    for item in &layout.items {
        if let Item::Counter { name } = item {
            if let Some(&(stored_name, view)) = file.get(name.as_str()) {
                check_counter(path, stored_name, view)?;
            }
        }
    }

    let known = layout.known_names();
    let mut extra: Vec<(&str, &str)> = file
        .iter()
        .filter(|(key, _)| !known.contains(*key))
        .map(|(key, (stored, _))| (*key, *stored))
        .collect();
    extra.sort_unstable();
    if let Some((_, stored)) = extra.first() {
        return Err(Error::UnexpectedTensor {
            path: path.to_path_buf(),
            name: stored.to_string(),
            model: cfg.name.to_string(),
        });
    }

    let mut values: HashMap<String, Vec<f32>> = layout
        .slots
        .iter()
        .map(|slot| slot.names[0].clone())
        .zip(values)
        .collect();
    assemble(&mut values, path, cfg)
}

/// Checks shape and dtype and converts to f32.
/// The values of a tensor of `shape`; a ViT's `pos_embed` saved for another patch grid (a
/// checkpoint at another image size) is resampled to `cfg`'s grid as timm does on load.
fn read_slot(
    path: &Path,
    cfg: &ModelConfig,
    key: &str,
    name: &str,
    view: &TensorView<'_>,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let timm_pos = matches!(
        cfg.arch,
        Arch::Vit(crate::model::VitConfig {
            pos_on_lead: true,
            ..
        })
    );
    let found = view.shape();
    if key == "pos_embed" && timm_pos && found != shape && found.len() == 3 && shape.len() == 3 {
        let lead = cfg.lead();
        let grids = (
            resample::grid_side(found[1], lead),
            resample::grid_side(shape[1], lead),
        );
        if let ((Some(g_in), Some(g)), true) = (grids, found[0] == 1 && found[2] == shape[2]) {
            let raw = read_f32(path, name, view, found)?;
            log::info!(
                "{}: {name} of a {g_in}x{g_in} patch grid resampled to {g}x{g} for {} at {} \
                 pixels (bicubic, as timm's resample_abs_pos_embed)",
                path.display(),
                cfg.name,
                cfg.image_size
            );
            return Ok(resample::resample_pos_embed(&raw, lead, shape[2], g_in, g));
        }
    }
    read_f32(path, name, view, shape)
}

fn read_f32(path: &Path, name: &str, view: &TensorView<'_>, shape: &[usize]) -> Result<Vec<f32>> {
    if view.shape() != shape {
        return Err(Error::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => {
            return Err(Error::DtypeMismatch {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: ACCEPTED_DTYPES.to_string(),
                found: other.to_string(),
            })
        }
    })
}

/// `num_batches_tracked`: any integer dtype, one element (`[]` as torch writes it, or `[1]`).
fn check_counter(path: &Path, name: &str, view: &TensorView<'_>) -> Result<()> {
    let integer = matches!(
        view.dtype(),
        Dtype::I8
            | Dtype::U8
            | Dtype::I16
            | Dtype::U16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64
    );
    if !integer {
        return Err(Error::DtypeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: "an integer dtype".to_string(),
            found: view.dtype().to_string(),
        });
    }
    if view.shape().iter().product::<usize>() != 1 {
        return Err(Error::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: vec![],
            found: view.shape().to_vec(),
        });
    }
    Ok(())
}

fn warn_non_finite(path: &Path, name: &str, data: &[f32]) {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        log::warn!(
            "{}: tensor '{name}' has {bad} non-finite value(s) (NaN or Inf) out of {}",
            path.display(),
            data.len()
        );
    }
}

/// IEEE binary16 to f32 (exact), through `half`.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// bfloat16 to f32 (exact), through `half`.
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

/// Folds an eval-mode BatchNorm into the preceding convolution (weight `[out, …]`), in f64:
/// `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
pub(crate) fn fold_batch_norm(
    weight: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let out = bias.len();
    debug_assert!(out > 0 && weight.len().is_multiple_of(out));
    debug_assert!([gamma.len(), beta.len(), mean.len(), var.len()]
        .iter()
        .all(|&n| n == out));
    let per = weight.len() / out;
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(out);
    for o in 0..out {
        let scale = f64::from(gamma[o]) / (f64::from(var[o]) + eps).sqrt();
        w.extend(
            weight[o * per..(o + 1) * per]
                .iter()
                .map(|&x| (f64::from(x) * scale) as f32),
        );
        let shifted = (f64::from(bias[o]) - f64::from(mean[o])) * scale;
        // `x + 0.0` turns -0.0 into +0.0; skipping it keeps identity folds bit-exact.
        let folded = if beta[o] == 0.0 {
            shifted
        } else {
            shifted + f64::from(beta[o])
        };
        b.push(folded as f32);
    }
    (w, b)
}

fn take(values: &mut HashMap<String, Vec<f32>>, name: &str) -> Vec<f32> {
    values
        .remove(name)
        .unwrap_or_else(|| panic!("internal: tensor '{name}' not in the layout"))
}

fn take_linear(
    values: &mut HashMap<String, Vec<f32>>,
    prefix: &str,
    out: usize,
    inp: usize,
) -> Linear {
    Linear {
        weight: take(values, &format!("{prefix}.weight")),
        bias: take(values, &format!("{prefix}.bias")),
        out_features: out,
        in_features: inp,
    }
}

fn take_norm(values: &mut HashMap<String, Vec<f32>>, prefix: &str) -> LayerNorm {
    LayerNorm {
        weight: take(values, &format!("{prefix}.weight")),
        bias: take(values, &format!("{prefix}.bias")),
    }
}

fn take_coef(values: &mut HashMap<String, Vec<f32>>, prefix: &str, n: usize) -> f32 {
    take(values, &format!("{prefix}.coefficient{n}.bias"))[0]
}

/// Builds the weights from the validated values (keyed by first names).
fn assemble(
    values: &mut HashMap<String, Vec<f32>>,
    path: &Path,
    cfg: &ModelConfig,
) -> Result<ModelWeights> {
    match &cfg.arch {
        Arch::Sret => sret_assemble(values, path, cfg),
        Arch::Vit(v) => Ok(vit::assemble(values, cfg, v)),
    }
}

/// [`assemble`] for SReT.
fn sret_assemble(
    values: &mut HashMap<String, Vec<f32>>,
    path: &Path,
    cfg: &ModelConfig,
) -> Result<ModelWeights> {
    let pos_embed = take(values, "pos_embed");

    let stem = stem_channels(cfg)
        .into_iter()
        .enumerate()
        .map(|(n, (cin, cout))| {
            let conv = stem_conv(n);
            let bn = stem_bn(n);
            let w = take(values, &format!("{conv}.weight"));
            let b = take(values, &format!("{conv}.bias"));
            let [gamma, beta, mean, var] = BN_PARAMS.map(|p| take(values, &format!("{bn}.{p}")));
            let (weight, bias) = fold_batch_norm(&w, &b, &gamma, &beta, &mean, &var, BN_EPS);
            if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
                log::warn!(
                    "{}: folding '{bn}' into '{conv}' gives non-finite values \
                     (running_var + eps <= 0, or non-finite inputs)",
                    path.display()
                );
            }
            Conv {
                weight,
                bias,
                out_channels: cout,
                in_channels: cin,
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: 1,
            }
        })
        .collect::<Vec<_>>();

    let mut stages = Vec::with_capacity(cfg.stages.len());
    for (s, st) in cfg.stages.iter().enumerate() {
        let d = st.dim;
        let loops = st.loops();
        let blocks = (0..st.recursive_num)
            .map(|b| {
                let p = blocks_entry(s, st.module_index(b * loops));
                BlockWeights {
                    norm1: take_norm(values, &format!("{p}.norm1")),
                    qkv: take_linear(values, &format!("{p}.attn.qkv"), 3 * d, d),
                    proj: take_linear(values, &format!("{p}.attn.proj"), d, d),
                    norm2: take_norm(values, &format!("{p}.norm2")),
                    fc1: take_linear(values, &format!("{p}.mlp.fc1"), st.mlp_hidden, d),
                    fc2: take_linear(values, &format!("{p}.mlp.fc2"), d, st.mlp_hidden),
                    coef: [1, 2, 3, 4].map(|n| take_coef(values, &p, n)),
                }
            })
            .collect();
        let non_projs = (0..st.depth)
            .map(|exec| {
                let p = blocks_entry(s, st.module_index(exec) + 1);
                NonProjWeights {
                    norm1: take_norm(values, &format!("{p}.norm1")),
                    fc1: take_linear(values, &format!("{p}.mlp.fc1"), st.np_hidden, d),
                    fc2: take_linear(values, &format!("{p}.mlp.fc2"), d, st.np_hidden),
                    coef: [1, 2].map(|n| take_coef(values, &p, n)),
                }
            })
            .collect();
        let pool = cfg.stages.get(s + 1).map(|next| {
            let conv = pool_conv(s);
            Conv {
                weight: take(values, &format!("{conv}.weight")),
                bias: take(values, &format!("{conv}.bias")),
                out_channels: next.dim,
                in_channels: d,
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: d,
            }
        });
        stages.push(StageWeights {
            blocks,
            non_projs,
            pool,
            pool_fc: None,
        });
    }

    let norm = take_norm(values, "norm");
    let head = take_linear(values, "head", cfg.num_classes, cfg.final_dim());
    debug_assert!(values.is_empty(), "unused tensors: {:?}", values.keys());
    Ok(ModelWeights {
        stem,
        pos_embed,
        lead_tokens: Vec::new(),
        stages,
        norm,
        head,
        head_dist: None,
    })
}

// ------------------------------------------------------------------------------------------------
// Saving
// ------------------------------------------------------------------------------------------------

/// A tensor to serialize; copies of a shared block share their bytes.
struct OutTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Arc<[u8]>,
}

impl View for OutTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

const IN_MEMORY: &str = "<weights being saved>";

fn structure_error(what: String, why: String) -> Error {
    Error::InvalidArgument {
        what: "weights",
        value: what,
        why,
    }
}

fn check_linear(name: &str, l: &Linear, out: usize, inp: usize) -> Result<()> {
    if (l.out_features, l.in_features) != (out, inp) {
        return Err(Error::ShapeMismatch {
            path: PathBuf::from(IN_MEMORY),
            name: format!("{name}.weight"),
            expected: vec![out, inp],
            found: vec![l.out_features, l.in_features],
        });
    }
    Ok(())
}

fn check_conv(name: &str, c: &Conv, expected: &Conv) -> Result<()> {
    let shape = |c: &Conv| {
        vec![
            c.out_channels,
            c.in_channels / c.groups.max(1),
            c.kernel,
            c.kernel,
        ]
    };
    if shape(c) != shape(expected) || c.in_channels != expected.in_channels {
        return Err(Error::ShapeMismatch {
            path: PathBuf::from(IN_MEMORY),
            name: format!("{name}.weight"),
            expected: shape(expected),
            found: shape(c),
        });
    }
    if (c.stride, c.padding, c.groups) != (expected.stride, expected.padding, expected.groups) {
        return Err(structure_error(
            name.to_string(),
            format!(
                "stride {}, padding {}, groups {}; the model has stride {}, padding {}, groups {}",
                c.stride, c.padding, c.groups, expected.stride, expected.padding, expected.groups
            ),
        ));
    }
    Ok(())
}

fn conv_template(out: usize, inp: usize, groups: usize) -> Conv {
    Conv {
        weight: Vec::new(),
        bias: Vec::new(),
        out_channels: out,
        in_channels: inp,
        kernel: 3,
        stride: 2,
        padding: 1,
        groups,
    }
}

/// The weights' tensors keyed by first name, after checking the structure against `cfg`.
fn collect<'w>(w: &'w ModelWeights, cfg: &ModelConfig) -> Result<HashMap<String, Cow<'w, [f32]>>> {
    match &cfg.arch {
        Arch::Sret => sret_collect(w, cfg),
        Arch::Vit(v) => vit::collect(w, cfg, v),
    }
}

/// [`collect`] for SReT.
fn sret_collect<'w>(
    w: &'w ModelWeights,
    cfg: &ModelConfig,
) -> Result<HashMap<String, Cow<'w, [f32]>>> {
    let mut m: HashMap<String, Cow<'w, [f32]>> = HashMap::new();
    let mut put = |name: String, data: &'w [f32]| {
        m.insert(name, Cow::Borrowed(data));
    };
    fn put_linear<'w>(put: &mut impl FnMut(String, &'w [f32]), p: &str, l: &'w Linear) {
        put(format!("{p}.weight"), &l.weight);
        put(format!("{p}.bias"), &l.bias);
    }
    fn put_norm<'w>(put: &mut impl FnMut(String, &'w [f32]), p: &str, n: &'w LayerNorm) {
        put(format!("{p}.weight"), &n.weight);
        put(format!("{p}.bias"), &n.bias);
    }

    put("pos_embed".into(), &w.pos_embed);
    for (n, (cin, cout)) in stem_channels(cfg).into_iter().enumerate() {
        let conv = stem_conv(n);
        check_conv(&conv, &w.stem[n], &conv_template(cout, cin, 1))?;
        put(format!("{conv}.weight"), &w.stem[n].weight);
        put(format!("{conv}.bias"), &w.stem[n].bias);
    }

    if w.stages.len() != cfg.stages.len() {
        return Err(structure_error(
            "stages".into(),
            format!(
                "{} stages, model {} has {}",
                w.stages.len(),
                cfg.name,
                cfg.stages.len()
            ),
        ));
    }
    for (s, (sw, st)) in w.stages.iter().zip(&cfg.stages).enumerate() {
        let d = st.dim;
        if sw.blocks.len() != st.recursive_num || sw.non_projs.len() != st.depth {
            return Err(structure_error(
                format!("stage {s}"),
                format!(
                    "{} blocks and {} Non_projs, model {} has {} and {}",
                    sw.blocks.len(),
                    sw.non_projs.len(),
                    cfg.name,
                    st.recursive_num,
                    st.depth
                ),
            ));
        }
        for (b, bw) in sw.blocks.iter().enumerate() {
            let p = blocks_entry(s, st.module_index(b * st.loops()));
            check_linear(&format!("{p}.attn.qkv"), &bw.qkv, 3 * d, d)?;
            check_linear(&format!("{p}.attn.proj"), &bw.proj, d, d)?;
            check_linear(&format!("{p}.mlp.fc1"), &bw.fc1, st.mlp_hidden, d)?;
            check_linear(&format!("{p}.mlp.fc2"), &bw.fc2, d, st.mlp_hidden)?;
            put_norm(&mut put, &format!("{p}.norm1"), &bw.norm1);
            put_linear(&mut put, &format!("{p}.attn.qkv"), &bw.qkv);
            put_linear(&mut put, &format!("{p}.attn.proj"), &bw.proj);
            put_norm(&mut put, &format!("{p}.norm2"), &bw.norm2);
            put_linear(&mut put, &format!("{p}.mlp.fc1"), &bw.fc1);
            put_linear(&mut put, &format!("{p}.mlp.fc2"), &bw.fc2);
            for (i, c) in bw.coef.iter().enumerate() {
                put(
                    format!("{p}.coefficient{}.bias", i + 1),
                    std::slice::from_ref(c),
                );
            }
        }
        for (k, nw) in sw.non_projs.iter().enumerate() {
            let p = blocks_entry(s, st.module_index(k) + 1);
            check_linear(&format!("{p}.mlp.fc1"), &nw.fc1, st.np_hidden, d)?;
            check_linear(&format!("{p}.mlp.fc2"), &nw.fc2, d, st.np_hidden)?;
            put_norm(&mut put, &format!("{p}.norm1"), &nw.norm1);
            put_linear(&mut put, &format!("{p}.mlp.fc1"), &nw.fc1);
            put_linear(&mut put, &format!("{p}.mlp.fc2"), &nw.fc2);
            for (i, c) in nw.coef.iter().enumerate() {
                put(
                    format!("{p}.coefficient{}.bias", i + 1),
                    std::slice::from_ref(c),
                );
            }
        }
        match (&sw.pool, cfg.stages.get(s + 1)) {
            (Some(pool), Some(next)) => {
                let conv = pool_conv(s);
                check_conv(&conv, pool, &conv_template(next.dim, d, d))?;
                put(format!("{conv}.weight"), &pool.weight);
                put(format!("{conv}.bias"), &pool.bias);
            }
            (None, None) => {}
            (have, _) => {
                return Err(structure_error(
                    format!("stage {s} pool"),
                    format!(
                        "{}, but stage {s} of model {} {}",
                        if have.is_some() { "present" } else { "absent" },
                        cfg.name,
                        if have.is_some() {
                            "is the last"
                        } else {
                            "pools into the next"
                        }
                    ),
                ))
            }
        }
    }
    check_linear("head", &w.head, cfg.num_classes, cfg.final_dim())?;
    put_norm(&mut put, "norm", &w.norm);
    put_linear(&mut put, "head", &w.head);

    // The folded stem is saved with identity BatchNorms.
    for (n, (_, cout)) in stem_channels(cfg).into_iter().enumerate() {
        let bn = stem_bn(n);
        for (p, v) in BN_PARAMS.into_iter().zip([1.0, 0.0, 0.0, BN_IDENTITY_VAR]) {
            m.insert(format!("{bn}.{p}"), Cow::Owned(vec![v; cout]));
        }
    }
    Ok(m)
}

/// Every tensor of the layout with its value, in layout order, once the weights' structure
/// and every tensor's length have been checked against `cfg`.
fn checked_values<'w>(
    w: &'w ModelWeights,
    cfg: &ModelConfig,
    layout: &Layout,
) -> Result<Vec<Cow<'w, [f32]>>> {
    let mut values = collect(w, cfg)?;
    let mut out = Vec::with_capacity(layout.slots.len());
    for slot in &layout.slots {
        let name = &slot.names[0];
        let data = values
            .remove(name)
            .unwrap_or_else(|| panic!("internal: no value for '{name}'"));
        let numel: usize = slot.shape.iter().product();
        if data.len() != numel {
            return Err(structure_error(
                name.clone(),
                format!(
                    "holds {} values, shape {:?} needs {numel}",
                    data.len(),
                    slot.shape
                ),
            ));
        }
        out.push(data);
    }
    Ok(out)
}

/// Checks weights built in code (not loaded from a file) against `cfg`: the number of stages,
/// blocks and heads, every layer's shape and every tensor's length, so that a mismatched model
/// handed to the engine is an error naming the tensor rather than a panic while planning.
pub fn check_weights(w: &ModelWeights, cfg: &ModelConfig) -> Result<()> {
    checked_values(w, cfg, &Layout::new(cfg)).map(|_| ())
}

fn out_tensors(w: &ModelWeights, cfg: &ModelConfig) -> Result<Vec<(String, OutTensor)>> {
    let layout = Layout::new(cfg);
    let bytes: Vec<Arc<[u8]>> = checked_values(w, cfg, &layout)?
        .iter()
        .map(|data| data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let zero: Arc<[u8]> = Arc::from(0i64.to_le_bytes().as_slice());
    Ok(layout
        .items
        .into_iter()
        .map(|item| match item {
            Item::Tensor { name, slot } => (
                name,
                OutTensor {
                    dtype: Dtype::F32,
                    shape: layout.slots[slot].shape.clone(),
                    data: bytes[slot].clone(),
                },
            ),
            Item::Counter { name } => (
                name,
                OutTensor {
                    dtype: Dtype::I64,
                    shape: vec![],
                    data: zero.clone(),
                },
            ),
        })
        .collect())
}

fn file_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Writes the weights as a safetensors file with the reference's names: every name of a shared
/// block (as `state_dict()` lists them), the stem as the folded convolutions followed by identity
/// BatchNorms (`weight` 1, `bias` 0, `running_mean` 0, `running_var` 1 - 1e-5,
/// `num_batches_tracked` 0), so that [`load_safetensors`] returns the same weights bit for bit
/// and `torch`'s `load_state_dict(strict=True)` accepts the file.
pub fn save_safetensors(w: &ModelWeights, cfg: &ModelConfig, path: &Path) -> Result<()> {
    let tensors = out_tensors(w, cfg)?;
    let bytes = safetensors::serialize(tensors, file_metadata()).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    super::files::write_atomic_bytes(path, &bytes)
}

/// The tensors of `w` holding NaN or Inf, under the reference's names (the stem as folded):
/// `(name, non-finite count, element count)`, each stored tensor once.
pub fn non_finite_tensors(
    w: &ModelWeights,
    cfg: &ModelConfig,
) -> Result<Vec<(String, usize, usize)>> {
    let layout = Layout::new(cfg);
    let values = checked_values(w, cfg, &layout)?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for item in &layout.items {
        if let Item::Tensor { name, slot } = item {
            if !seen.insert(*slot) {
                continue;
            }
            let data = &values[*slot];
            let bad = data.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                out.push((name.clone(), bad, data.len()));
            }
        }
    }
    Ok(out)
}

/// [`save_safetensors`] to a byte buffer.
pub fn to_safetensors_bytes(w: &ModelWeights, cfg: &ModelConfig) -> Result<Vec<u8>> {
    let tensors = out_tensors(w, cfg)?;
    safetensors::serialize(tensors, file_metadata()).map_err(|e| Error::Write {
        path: PathBuf::from(IN_MEMORY),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold_one(w: f32, b: f32, g: f32, beta: f32, mean: f32, var: f32) -> (f32, f32) {
        let (w, b) = fold_batch_norm(&[w], &[b], &[g], &[beta], &[mean], &[var], BN_EPS);
        (w[0], b[0])
    }

    #[test]
    fn headers_are_scanned_with_bounds_before_the_crate_parses_them() {
        let e = |h: &str| scan_header(h.as_bytes());
        let t = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        assert!(e(&format!(r#"{{"a":{t},"__metadata__":{{"k":"v"}}}}"#)).is_ok());
        let twice = e(&format!(r#"{{"a":{t},"a":{t}}}"#)).unwrap_err();
        assert!(twice.contains("'a' twice"), "{twice}");
        let not_tensor = e(r#"{"0":0,"1":0}"#).unwrap_err();
        assert!(not_tensor.contains("tensor '0'"), "{not_tensor}");
        let rank = format!("[{}]", vec!["1"; MAX_RANK + 1].join(","));
        let deep = e(&format!(
            r#"{{"a":{{"dtype":"F32","shape":{rank},"data_offsets":[0,4]}}}}"#
        ))
        .unwrap_err();
        assert!(deep.contains("dimensions"), "{deep}");
        let extra = e(r#"{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}}"#);
        assert!(extra.is_err());
        let meta: Vec<String> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| format!(r#""{i}":"v""#))
            .collect();
        let many_meta = e(&format!(r#"{{"__metadata__":{{{}}}}}"#, meta.join(","))).unwrap_err();
        assert!(many_meta.contains("metadata entries"), "{many_meta}");
        let tensors: Vec<String> = (0..=MAX_TENSORS).map(|i| format!(r#""{i}":{t}"#)).collect();
        let many = e(&format!("{{{}}}", tensors.join(","))).unwrap_err();
        assert!(many.contains("more than 65536 tensors"), "{many}");
        // The length: past the format's limit, or past the file.
        let mut bytes = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let path = Path::new("x.safetensors");
        let long = check_header(&bytes, path).unwrap_err().to_string();
        assert!(long.contains("more than the format's limit"), "{long}");
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let past = check_header(&bytes, path).unwrap_err().to_string();
        assert!(past.contains("past the end"), "{past}");
    }

    #[test]
    fn folding_matches_the_formula() {
        // var + eps = 4 exactly is not representable, so compare against f64 by hand.
        let (w, b) = fold_one(2.0, 1.0, 3.0, 0.5, 0.25, 4.0);
        let s = 3.0 / (4.0f64 + 1e-5).sqrt();
        assert_eq!(w, (2.0 * s) as f32);
        assert_eq!(b, ((1.0 - 0.25) * s + 0.5) as f32);
        assert!(
            (w - 3.0).abs() < 1e-5 && (b - 1.625).abs() < 1e-5,
            "{w} {b}"
        );
    }

    #[test]
    fn folding_scales_each_output_channel_separately() {
        // Two output channels of two weights each.
        let weight = [1.0, -2.0, 3.0, 4.0];
        let (w, b) = fold_batch_norm(
            &weight,
            &[0.0, 1.0],
            &[1.0, -2.0],
            &[0.0, 10.0],
            &[0.0, 3.0],
            &[1.0 - 1e-5, 0.25 - 1e-5],
            BN_EPS,
        );
        let s1 = -2.0 / (f64::from(0.25f32 - 1e-5) + 1e-5).sqrt();
        assert_eq!(&w[..2], &[1.0, -2.0]);
        assert_eq!(w[2], (3.0 * s1) as f32);
        assert_eq!(w[3], (4.0 * s1) as f32);
        assert_eq!(b[0], 0.0);
        assert_eq!(b[1], ((1.0 - 3.0) * s1 + 10.0) as f32);
        assert!(
            (w[2] + 12.0).abs() < 1e-4 && (b[1] - 18.0).abs() < 1e-4,
            "{w:?} {b:?}"
        );
    }

    #[test]
    fn identity_batch_norm_folds_to_the_same_bits() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            1e-40,
            -3.3e38,
            65504.0,
        ];
        // A sweep over mantissas and exponents.
        let mut x = 1.234_567e-30f32;
        while x < 1e30 {
            values.extend([
                x,
                -x,
                f32::from_bits(x.to_bits() + 1),
                f32::from_bits(x.to_bits() | 0x7f_ffff),
            ]);
            x *= 3.7;
        }
        let n = values.len();
        let (w, b) = fold_batch_norm(
            &values,
            &values,
            &vec![1.0; n],
            &vec![0.0; n],
            &vec![0.0; n],
            &vec![BN_IDENTITY_VAR; n],
            BN_EPS,
        );
        for (i, v) in values.iter().enumerate() {
            assert_eq!(w[i].to_bits(), v.to_bits(), "weight {v:e}");
            assert_eq!(b[i].to_bits(), v.to_bits(), "bias {v:e}");
        }
    }

    #[test]
    fn half_precision_conversions() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3800), 0.5);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x83ff), -1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x3eab), 0.333_984_38);
        assert_eq!(bf16_to_f32(0xff80), f32::NEG_INFINITY);
    }

    #[test]
    fn layout_of_sret_t() {
        let cfg = ModelConfig::by_name("sret_t").unwrap();
        let l = Layout::new(&cfg);
        let names: HashMap<&str, &Slot> = l
            .slots
            .iter()
            .flat_map(|s| s.names.iter().map(move |n| (n.as_str(), s)))
            .collect();
        // Stage 0: depth 4, 2 shared blocks, 2 loops: blocks 0 and 2 are block 0, 4 and 6 block 1.
        let s = names["transformers.0.blocks.2.attn.qkv.weight"];
        assert_eq!(
            s.names,
            [
                "transformers.0.blocks.0.attn.qkv.weight",
                "transformers.0.blocks.2.attn.qkv.weight"
            ]
        );
        assert_eq!(s.shape, [192, 64]);
        assert_eq!(
            names["transformers.0.blocks.6.norm1.weight"].names[0],
            "transformers.0.blocks.4.norm1.weight"
        );
        // Non_proj 3 of stage 1 is module 7, its own tensor.
        assert_eq!(
            names["transformers.1.blocks.7.mlp.fc1.weight"].names.len(),
            1
        );
        assert_eq!(
            names["transformers.1.blocks.10.mlp.fc1.weight"].names[0],
            "transformers.1.blocks.8.mlp.fc1.weight"
        );
        assert_eq!(names["pools.1.conv.weight"].shape, [256, 1, 3, 3]);
        assert_eq!(names["pos_embed"].shape, [1, 64, 28, 28]);
        assert_eq!(names["patch_embed.conv1.weight"].shape, [32, 3, 3, 3]);
        assert!(!names.contains_key("transformers.0.blocks.8.norm1.weight"));
        assert!(!names.contains_key("pools.2.conv.weight"));
        // Distinct parameter counts (torch: `sum(p.numel() for p in model.parameters())`, which
        // counts shared blocks once): the paper's 4.8M / 5.0M / 20.9M.
        for (name, total) in [
            ("sret_t", 4_755_979),
            ("sret_lt", 4_988_024),
            ("sret_s", 20_899_692),
        ] {
            let cfg = ModelConfig::by_name(name).unwrap();
            let l = Layout::new(&cfg);
            let numel = |s: &Slot| s.shape.iter().product::<usize>();
            let params: usize = l
                .slots
                .iter()
                .filter(|s| {
                    !s.names[0].ends_with("running_mean") && !s.names[0].ends_with("running_var")
                })
                .map(numel)
                .sum();
            assert_eq!(params, total, "{name}");
        }
        assert_eq!(expected_tensors(&cfg).len(), l.items.len() - 3);
    }
}
