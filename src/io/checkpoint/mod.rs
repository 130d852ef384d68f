//! Reading PyTorch checkpoints (`.pth` files written by `torch.save`) without Python.
//!
//! # Format
//!
//! Since PyTorch 1.6, `torch.save` writes a zip archive (stored, not compressed) whose entries
//! share one top folder whose name varies (the file's stem when it was written):
//!
//! ```text
//! <archive>/data.pkl        the pickled object (protocol 2 by default)
//! <archive>/byteorder       "little" or "big" (absent in files from before PyTorch 1.11: little)
//! <archive>/data/<key>      the raw bytes of one storage
//! <archive>/version, .format_version, .storage_alignment, .data/serialization_id
//! ```
//!
//! In `data.pkl` every tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, requires_grad, hooks[, metadata])` whose `storage` is a *persistent id*
//! `('storage', torch.FloatStorage, key, location, numel)`.
//!
//! # The unpickler
//!
//! The unpickler is a small pickle virtual machine that never executes anything. `GLOBAL` only
//! names a symbol; `REDUCE`, `NEWOBJ` and `BUILD` are interpreted for the handful of callables
//! `torch.save` needs (`torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `_rebuild_parameter{,_with_state}`, `torch._tensor._rebuild_from_type_v2`,
//! `collections.OrderedDict`); any other call gives an
//! opaque object, which is fine unless the state dict itself is one. It implements the opcodes
//! of protocols 2 to 5 that CPython's pickler emits for dicts, lists, tuples, sets, strings,
//! bytes, numbers, globals and objects (see [`opcode_name`]), plus the text forms of
//! `INT`/`LONG`/`FLOAT`/`PUT`/`GET` and `INST`/`OBJ`. `STRING`/`UNICODE` (escaped text), `EXT*`
//! and out-of-band buffers are refused.
//!
//! Objects live in an arena and are referred to by index, so memoised and shared values are
//! never copied, self-referencing containers are harmless and nothing is dropped recursively.
//!
//! # What is returned
//!
//! The state dict is the top-level dict, or the dict under `model`, `state_dict` or
//! `model_state` (the first of these keys that holds a dict). Of its entries, the floating-point
//! tensors (f32, f16, bf16 and f64 storages, returned as f32, contiguous in row-major order)
//! are returned in the dict's order; integer and bool tensors (such as BatchNorm's int64
//! `num_batches_tracked`, which the weight loader does not need), tensors of other dtypes and
//! entries that are not tensors are skipped (logged at debug level). A repeated key keeps its
//! first position and its last value, as a Python dict does. A `module.` prefix is left as is
//! ([`load_safetensors_bytes`] strips it).
//!
//! # Limits
//!
//! Every length is checked against what is actually there before anything is allocated:
//! strings and byte strings against the rest of `data.pkl`, storages against their zip entry
//! (whose length must equal `numel × element size`), tensor views against their storage
//! (`offset + Σ (size_i - 1)·stride_i` must lie inside it). Global caps: `data.pkl` at most
//! [`MAX_PICKLE_BYTES`], one storage at most [`MAX_STORAGE_BYTES`], all returned tensors
//! together at most [`MAX_TOTAL_ELEMENTS`] elements, and the unpickler's objects, stack, memo
//! and container items at most [`MAX_PICKLE_OBJECTS`] each, tensors and storages at most
//! [`MAX_TENSORS`], dimensions at most [`MAX_DIMS`]. Before any storage is inflated, the
//! storages the float tensors use (as their zip entries declare them) and the f32 tensors
//! returned must each fit in [`read_budget`] of the file's size (`4 x size + 64 MiB`, at most
//! 4 GiB), so a small file with deflated or broadcast (stride 0) storages is refused at once;
//! each storage is dropped after its last use. Only regular files are opened (see
//! [`crate::io::files`]). Nothing of `data.pkl` is copied more than
//! once (memoised strings, tuples and globals are shared, not cloned), so a hostile `data.pkl`
//! can make the reader use at most a few hundred MiB, in time linear in its size. Violations, malformed pickles (unknown opcode, stack
//! underflow, undefined memo index, truncation, ...) and malformed archives are
//! [`Error::BadCheckpoint`] errors naming what is wrong and, for `data.pkl`, the opcode and its
//! byte offset.
//!
//! The legacy format (`_use_new_zipfile_serialization=False`, and everything written before
//! PyTorch 1.6) is recognised and refused with a message saying how to re-save the file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, View};
use zip::ZipArchive;

use super::safetensors::{bf16_to_f32, f16_to_f32, load_safetensors, load_safetensors_bytes};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::ModelWeights;

mod archive;
mod pickle;
mod tensors;

use archive::*;
pub use pickle::opcode_name;
use pickle::*;
use tensors::*;

/// Largest `data.pkl` accepted (real state dicts need ~100 bytes per tensor).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Largest single storage accepted, in bytes.
pub const MAX_STORAGE_BYTES: u64 = 4 << 30;
/// Largest number of elements returned in all (4 GiB of f32).
pub const MAX_TOTAL_ELEMENTS: u64 = 1 << 30;
/// Reading budget: a checkpoint may inflate (storages, as their zip entries declare them) and
/// return (tensors as f32) at most `BUDGET_FACTOR` times its own size plus [`BUDGET_SLACK`]
/// bytes each, and never more than [`BUDGET_CAP`] (see [`read_budget`]).
pub const BUDGET_FACTOR: u64 = 4;
/// See [`BUDGET_FACTOR`].
pub const BUDGET_SLACK: u64 = 64 << 20;
/// See [`BUDGET_FACTOR`].
pub const BUDGET_CAP: u64 = MAX_TOTAL_ELEMENTS * 4;
/// Largest checkpoint file opened (its storages are read entry by entry, within the budget).
pub const MAX_CHECKPOINT_FILE_BYTES: u64 = 64 << 30;

/// The bytes a checkpoint of `file_len` bytes may inflate, and separately return as f32:
/// `min(BUDGET_FACTOR * file_len + BUDGET_SLACK, BUDGET_CAP)`. Real checkpoints store their
/// storages uncompressed (f16 ones double as f32), so they stay far inside it.
pub fn read_budget(file_len: u64) -> u64 {
    file_len
        .saturating_mul(BUDGET_FACTOR)
        .saturating_add(BUDGET_SLACK)
        .min(BUDGET_CAP)
}

fn budget_rule() -> String {
    format!(
        "file ({BUDGET_FACTOR} x its size + {} MiB, at most {} GiB)",
        BUDGET_SLACK >> 20,
        BUDGET_CAP >> 30
    )
}

/// Cap on each of: objects built, stack depth, memo entries, and items put in containers
/// (the container cap is twice this). A real checkpoint needs about ten of each per tensor.
pub const MAX_PICKLE_OBJECTS: usize = 1 << 21;
/// Cap on the tensors and storages the unpickler builds and on the tensors returned.
pub const MAX_TENSORS: usize = 1 << 18;
/// Cap on a tensor's number of dimensions.
pub const MAX_DIMS: usize = 32;
/// Cap on the length of a storage key (torch writes decimal numbers).
const MAX_KEY_LEN: usize = 64;

/// One tensor of a state dict: name, shape, values (row-major, converted to f32).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Keys under which a wrapper dict may hold the state dict, in order of preference.
pub const STATE_DICT_KEYS: [&str; 3] = ["model", "state_dict", "model_state"];

/// First bytes of a zip archive's local file header.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";
/// First bytes of a legacy `torch.save` file: PROTO 2, then LONG1 of the magic number
/// 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

// ------------------------------------------------------------------------------------------------
// Public API
// ------------------------------------------------------------------------------------------------

/// Reads the float tensors of the state dict in a `torch.save` checkpoint (see the module docs
/// for where the state dict is looked for and what is skipped).
pub fn read_state_dict(path: &Path) -> Result<Vec<NamedTensor>> {
    let (file, _) = super::files::open_regular(path, MAX_CHECKPOINT_FILE_BYTES, "checkpoint")?;
    read_from(BufReader::new(file), path)
}

/// [`read_state_dict`] from the file's bytes; `path` is used only in messages.
pub fn read_state_dict_bytes(bytes: &[u8], path: &Path) -> Result<Vec<NamedTensor>> {
    read_from(std::io::Cursor::new(bytes), path)
}

/// Serializes tensors as a safetensors file (F32, in memory), with the `{"format": "pt"}`
/// metadata. Names must be unique and every shape must match its data.
pub fn to_safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::arg("tensor name", name, "appears twice"));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::arg("tensor shape", format!("{shape:?}"), "overflows"))?;
        if numel != data.len() {
            return Err(Error::arg(
                "tensor",
                name,
                format!("shape {shape:?} needs {numel} values, got {}", data.len()),
            ));
        }
        views.push((
            name.as_str(),
            F32View {
                shape: shape.clone(),
                data,
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Write {
        path: "<checkpoint being converted>".into(),
        why: e.to_string(),
    })
}

/// Loads a `torch.save` checkpoint into [`ModelWeights`] for `cfg`: [`read_state_dict`], then
/// the safetensors loader's rules ([`load_safetensors_bytes`]: names, shared blocks, shapes,
/// BatchNorm folding, `module.` prefixes), with messages naming `path`.
pub fn load_checkpoint(path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    let tensors = read_state_dict(path)?;
    let bytes = to_safetensors_bytes(&tensors)?;
    drop(tensors);
    load_safetensors_bytes(&bytes, path, cfg)
}

/// [`load_checkpoint`] from the file's bytes; `path` is used only in messages.
pub fn load_checkpoint_bytes(bytes: &[u8], path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    let tensors = read_state_dict_bytes(bytes, path)?;
    let st = to_safetensors_bytes(&tensors)?;
    drop(tensors);
    load_safetensors_bytes(&st, path, cfg)
}

/// What a weight file is, judging by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// A zip archive (`torch.save` since PyTorch 1.6) or a legacy `torch.save` pickle.
    Checkpoint,
    /// Anything else, assumed to be safetensors.
    Safetensors,
}

/// Sniffs the format from the file's first bytes (not its extension).
pub fn detect_format(head: &[u8]) -> WeightFormat {
    if head.starts_with(ZIP_MAGIC)
        || head.starts_with(b"PK\x05\x06")
        || head.starts_with(&LEGACY_MAGIC[..4])
    {
        WeightFormat::Checkpoint
    } else {
        WeightFormat::Safetensors
    }
}

/// Loads weights from a safetensors file or a `torch.save` checkpoint, whichever `path` holds
/// (decided by its content, see [`detect_format`]).
pub fn load_weights(path: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    let mut head = [0u8; 4];
    let (mut file, _) = super::files::open_regular(path, MAX_CHECKPOINT_FILE_BYTES, "weight file")?;
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    drop(file);
    match detect_format(&head[..n]) {
        WeightFormat::Checkpoint => load_checkpoint(path, cfg),
        WeightFormat::Safetensors => load_safetensors(path, cfg),
    }
}

/// Converts a checkpoint to a safetensors file (F32, the state dict's names) and returns the
/// number of tensors written.
pub fn convert_to_safetensors(input: &Path, output: &Path) -> Result<usize> {
    let tensors = read_state_dict(input)?;
    let bytes = to_safetensors_bytes(&tensors)?;
    super::files::write_atomic_bytes(output, &bytes)?;
    Ok(tensors.len())
}

struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> StDtype {
        StDtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

// ------------------------------------------------------------------------------------------------
// Archive
// ------------------------------------------------------------------------------------------------

fn bad(path: &Path, why: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_from<R: Read + Seek>(mut reader: R, path: &Path) -> Result<Vec<NamedTensor>> {
    let mut head = [0u8; LEGACY_MAGIC.len()];
    let n = read_up_to(&mut reader, &mut head).map_err(|e| Error::io(path, e))?;
    const RESAVE: &str = "re-save it with PyTorch >= 1.6: \
                          torch.save(torch.load(IN, weights_only=True), OUT)";
    if head[..n] == LEGACY_MAGIC {
        return Err(bad(
            path,
            format!(
                "this is the legacy torch.save format (written before PyTorch 1.6 or with \
                 _use_new_zipfile_serialization=False), which is not supported; {RESAVE}"
            ),
        ));
    }
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Err(bad(
            path,
            format!(
                "this is a bare pickle (the legacy torch.save format or pickle.dump), not a \
                 zip archive, and is not supported; {RESAVE}"
            ),
        ));
    }
    if !head[..n].starts_with(ZIP_MAGIC) && !head[..n].starts_with(b"PK\x05\x06") {
        return Err(bad(
            path,
            "not a zip archive (torch.save has written zip archives since PyTorch 1.6)",
        ));
    }
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(path, e))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let zip = ZipArchive::new(reader)
        .map_err(|e| bad(path, format!("cannot read the zip archive: {e}")))?;
    let mut archive = Archive::open(zip, path, file_len)?;
    let pickle = archive.read_pickle()?;
    let entries = find_state_dict(&pickle).map_err(|why| bad(path, why))?;
    archive.materialize(&entries)
}

#[cfg(test)]
mod tests;
