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
//! [`MAX_TENSORS`], dimensions at most [`MAX_DIMS`]. Nothing of `data.pkl` is copied more than
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
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, View};
use zip::ZipArchive;

use super::config::ModelConfig;
use super::load::{bf16_to_f32, f16_to_f32, load_safetensors, load_safetensors_bytes};
use super::weights::ModelWeights;
use crate::error::{Error, Result};

/// Largest `data.pkl` accepted (real state dicts need ~100 bytes per tensor).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Largest single storage accepted, in bytes.
pub const MAX_STORAGE_BYTES: u64 = 4 << 30;
/// Largest number of elements returned in all (4 GiB of f32).
pub const MAX_TOTAL_ELEMENTS: u64 = 1 << 30;
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
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
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
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
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
    std::fs::write(output, bytes).map_err(|e| Error::Write {
        path: output.to_path_buf(),
        why: e.to_string(),
    })?;
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
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let zip = ZipArchive::new(reader)
        .map_err(|e| bad(path, format!("cannot read the zip archive: {e}")))?;
    let mut archive = Archive::open(zip, path)?;
    let pickle = archive.read_pickle()?;
    let entries = find_state_dict(&pickle).map_err(|why| bad(path, why))?;
    archive.materialize(&entries)
}

struct Archive<'p, R: Read + Seek> {
    zip: ZipArchive<R>,
    path: &'p Path,
    /// Entry-name prefix, with its trailing '/' (empty for entries at the root).
    prefix: String,
    big_endian: bool,
}

impl<'p, R: Read + Seek> Archive<'p, R> {
    fn open(mut zip: ZipArchive<R>, path: &'p Path) -> Result<Self> {
        let first_top = zip
            .name_for_index(0)
            .and_then(|n| n.split_once('/'))
            .map(|(top, _)| format!("{top}/"));
        let candidates: Vec<String> = zip
            .file_names()
            .filter_map(|name| {
                let prefix = name.strip_suffix("data.pkl")?;
                let ok = prefix.is_empty()
                    || (prefix.ends_with('/') && !prefix[..prefix.len() - 1].contains('/'));
                ok.then(|| prefix.to_string())
            })
            .collect();
        let prefix =
            match candidates.as_slice() {
                [] => return Err(bad(
                    path,
                    "the zip archive has no data.pkl entry, so it is not a torch.save checkpoint",
                )),
                [one] => one.clone(),
                many => match many.iter().find(|p| Some(*p) == first_top.as_ref()) {
                    Some(p) => p.clone(),
                    None => {
                        return Err(bad(
                            path,
                            format!("the zip archive has several data.pkl entries ({many:?})"),
                        ))
                    }
                },
            };
        let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 16, path)? {
            None => false,
            Some(b) => match String::from_utf8_lossy(&b).trim() {
                "little" => false,
                "big" => true,
                other => {
                    return Err(bad(
                        path,
                        format!("unknown byte order '{other}' (expected little or big)"),
                    ))
                }
            },
        };
        Ok(Archive {
            zip,
            path,
            prefix,
            big_endian,
        })
    }

    fn read_pickle(&mut self) -> Result<Pickle> {
        let name = format!("{}data.pkl", self.prefix);
        let data = read_entry(&mut self.zip, &name, MAX_PICKLE_BYTES, self.path)?
            .ok_or_else(|| bad(self.path, format!("entry {name} is missing")))?;
        Unpickler::new(&data)
            .load()
            .map_err(|e| bad(self.path, e.to_string()))
    }

    /// Converts the selected tensors, reading each storage once and dropping it after its last
    /// use.
    fn materialize(&mut self, entries: &[(String, &TensorRef)]) -> Result<Vec<NamedTensor>> {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for (_, t) in entries {
            if t.dtype.is_float() {
                *uses.entry(t.storage.key.as_str()).or_default() += 1;
            }
        }
        let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
        let mut total: u64 = 0;
        let mut out = Vec::with_capacity(entries.len());
        for (name, t) in entries {
            if !t.dtype.is_float() {
                log::debug!(
                    "{}: skipping '{name}' (dtype {}, not floating point)",
                    self.path.display(),
                    t.dtype.name()
                );
                continue;
            }
            if out.len() >= MAX_TENSORS {
                return Err(bad(
                    self.path,
                    format!("the state dict holds more than {MAX_TENSORS} float tensors"),
                ));
            }
            let numel = t.numel();
            total = total.saturating_add(numel);
            if total > MAX_TOTAL_ELEMENTS {
                return Err(bad(
                    self.path,
                    format!(
                        "the tensors up to '{name}' hold more than {MAX_TOTAL_ELEMENTS} elements in all"
                    ),
                ));
            }
            let key = t.storage.key.as_str();
            if !cache.contains_key(key) {
                let bytes = self.read_storage(&t.storage)?;
                cache.insert(key.to_string(), bytes);
            }
            let bytes = &cache[key];
            let data = gather(t, bytes, self.big_endian)
                .map_err(|why| bad(self.path, format!("tensor '{name}': {why}")))?;
            let shape = t
                .size
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| bad(self.path, format!("tensor '{name}': size does not fit")))?;
            out.push((name.clone(), shape, data));
            let left = uses.get_mut(key).expect("counted above");
            *left -= 1;
            if *left == 0 {
                cache.remove(key);
            }
        }
        Ok(out)
    }

    fn read_storage(&mut self, s: &StorageRef) -> Result<Vec<u8>> {
        let path = self.path;
        let nbytes = s.nbytes().ok_or_else(|| {
            bad(
                path,
                format!("storage '{}' has an unknown element size", s.key),
            )
        })?;
        if nbytes > MAX_STORAGE_BYTES {
            return Err(bad(
                path,
                format!(
                    "storage '{}' declares {} elements ({nbytes} bytes), more than the limit of {MAX_STORAGE_BYTES} bytes",
                    s.key, s.numel
                ),
            ));
        }
        let name = format!("{}data/{}", self.prefix, s.key);
        let mut file = match self.zip.by_name(&name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad(path, format!("storage entry {name} is missing")))
            }
            Err(e) => return Err(bad(path, format!("cannot read entry {name}: {e}"))),
        };
        if file.size() != nbytes {
            return Err(bad(
                path,
                format!(
                    "storage '{}' declares {} elements of {} ({nbytes} bytes) but entry {name} holds {} bytes",
                    s.key,
                    s.numel,
                    s.dtype.name(),
                    file.size()
                ),
            ));
        }
        let mut buf = Vec::new();
        (&mut file)
            .take(nbytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(path, format!("cannot read entry {name}: {e}")))?;
        if buf.len() as u64 != nbytes {
            return Err(bad(
                path,
                format!(
                    "entry {name} should hold {nbytes} bytes but {} could be read",
                    buf.len()
                ),
            ));
        }
        Ok(buf)
    }
}

/// Reads a whole entry if it exists, refusing entries larger than `limit` bytes.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
    path: &Path,
) -> Result<Option<Vec<u8>>> {
    let mut file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(bad(path, format!("cannot read entry {name}: {e}"))),
    };
    if file.size() > limit {
        return Err(bad(
            path,
            format!(
                "entry {name} declares {} bytes, more than the limit of {limit}",
                file.size()
            ),
        ));
    }
    let mut buf = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("cannot read entry {name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(bad(
            path,
            format!("entry {name} holds more than the limit of {limit} bytes"),
        ));
    }
    Ok(Some(buf))
}

// ------------------------------------------------------------------------------------------------
// Tensors
// ------------------------------------------------------------------------------------------------

/// Element types of torch storages and tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// Anything else (complex, quantized, float8, unsigned 16/32/64, ...): never converted.
    Other(String),
}

impl DType {
    /// From a storage class name (`torch.FloatStorage`, `torch.storage.UntypedStorage`, ...).
    fn from_storage_class(name: &str) -> DType {
        match name {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            other => DType::other(other),
        }
    }

    fn other(name: &str) -> DType {
        DType::Other(name.chars().take(32).collect())
    }

    /// From a `torch.<dtype>` global (`torch.float32`, `torch.half`, ...).
    fn from_dtype_name(name: &str) -> DType {
        match name {
            "float64" | "double" => DType::F64,
            "float32" | "float" => DType::F32,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            other => DType::other(other),
        }
    }

    fn size(&self) -> Option<u64> {
        Some(match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Other(_) => return None,
        })
    }

    fn is_float(&self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    fn name(&self) -> &str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::Other(name) => name,
        }
    }
}

/// A storage named by a persistent id.
#[derive(Clone, Debug, PartialEq)]
struct StorageRef {
    key: String,
    dtype: DType,
    /// Declared number of elements of `dtype`.
    numel: u64,
}

impl StorageRef {
    fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.dtype.size()?)
    }
}

/// A tensor: a strided view of a storage, already checked to lie inside it.
#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    dtype: DType,
    /// In elements of `dtype`.
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
    /// torch's lazy negation bit (`metadata = {'neg': True}`).
    neg: bool,
}

impl TensorRef {
    /// Product of the sizes (checked not to overflow when the tensor was built).
    fn numel(&self) -> u64 {
        self.size.iter().product()
    }

    /// Checks the view against the storage; returns an error message.
    fn check(&self) -> std::result::Result<(), String> {
        if self.size.len() != self.stride.len() {
            return Err(format!(
                "size {:?} and stride {:?} differ in length",
                self.size, self.stride
            ));
        }
        let numel = self
            .size
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("size {:?} overflows", self.size))?;
        // Unknown element sizes (dtypes never converted) are not checked.
        let (Some(el), Some(storage_bytes)) = (self.dtype.size(), self.storage.nbytes()) else {
            return Ok(());
        };
        let end = if numel == 0 {
            Some(self.offset)
        } else {
            self.size
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset, |acc, (&n, &s)| {
                    (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
                })
                .and_then(|last| last.checked_add(1))
        };
        let end_bytes = end.and_then(|e| e.checked_mul(el));
        match end_bytes {
            Some(b) if b <= storage_bytes => Ok(()),
            _ => Err(format!(
                "view (offset {}, size {:?}, stride {:?}) of {} reaches past its storage '{}' of {} elements of {}",
                self.offset,
                self.size,
                self.stride,
                self.dtype.name(),
                self.storage.key,
                self.storage.numel,
                self.storage.dtype.name()
            )),
        }
    }
}

/// Reads a float tensor's elements out of its storage's bytes, contiguous, as f32.
fn gather(t: &TensorRef, bytes: &[u8], big_endian: bool) -> std::result::Result<Vec<f32>, String> {
    t.check()?;
    let el = t.dtype.size().ok_or("unknown element size")? as usize;
    let numel = t.numel();
    if numel == 0 {
        return Ok(Vec::new());
    }
    // Re-check against the bytes actually read (the entry length was checked already).
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .fold(t.offset, |acc, (&n, &s)| acc + (n - 1) * s);
    if (last + 1) * el as u64 > bytes.len() as u64 {
        return Err("view reaches past its storage".into());
    }
    let convert: fn(&[u8]) -> f32 = match (&t.dtype, big_endian) {
        (DType::F32, false) => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (DType::F32, true) => |b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        (DType::F64, false) => |b| f64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
        (DType::F64, true) => |b| f64::from_be_bytes(b[..8].try_into().unwrap()) as f32,
        (DType::F16, false) => |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        (DType::F16, true) => |b| f16_to_f32(u16::from_be_bytes([b[0], b[1]])),
        (DType::BF16, false) => |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        (DType::BF16, true) => |b| bf16_to_f32(u16::from_be_bytes([b[0], b[1]])),
        (other, _) => return Err(format!("dtype {} is not converted", other.name())),
    };
    let numel = usize::try_from(numel).map_err(|_| "too many elements")?;
    let mut out = Vec::with_capacity(numel);

    // Contiguous (ignoring dimensions of size 1): one run.
    let mut expected = 1u64;
    let mut contiguous = true;
    for (&n, &s) in t.size.iter().zip(&t.stride).rev() {
        if n != 1 {
            if s != expected {
                contiguous = false;
                break;
            }
            expected *= n;
        }
    }
    if contiguous {
        let start = t.offset as usize * el;
        out.extend(
            bytes[start..start + numel * el]
                .chunks_exact(el)
                .map(convert),
        );
    } else {
        // Odometer over the outer dimensions, a strided run over the last one. Positions
        // wrap while stepping past the end of a dimension but every visited one is in range.
        let nd = t.size.len();
        let inner = t.size[nd - 1];
        let inner_stride = t.stride[nd - 1];
        let mut index = vec![0u64; nd - 1];
        let mut base = t.offset;
        'outer: loop {
            let mut p = base;
            for _ in 0..inner {
                let b = p as usize * el;
                out.push(convert(&bytes[b..b + el]));
                p = p.wrapping_add(inner_stride);
            }
            let mut d = nd - 1;
            loop {
                if d == 0 {
                    break 'outer;
                }
                d -= 1;
                index[d] += 1;
                base = base.wrapping_add(t.stride[d]);
                if index[d] < t.size[d] {
                    break;
                }
                base = base.wrapping_sub(t.stride[d].wrapping_mul(t.size[d]));
                index[d] = 0;
            }
        }
    }
    if t.neg {
        for v in &mut out {
            *v = -*v;
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Unpickler
// ------------------------------------------------------------------------------------------------

/// A pickled value: immediates inline, everything else an index into [`Pickle::nodes`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(u32),
}

#[derive(Debug)]
enum Node {
    Str(String),
    Bytes(Vec<u8>),
    /// An integer that does not fit in i64 (its value is not kept).
    BigInt,
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// `module.name`: two `Str` nodes.
    Global(Value, Value),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    /// The result of a call the unpickler does not interpret: the callable or class (usually
    /// a `Global`).
    Object(Value),
}

/// The result of unpickling: the arena and the root value.
#[derive(Debug)]
struct Pickle {
    nodes: Vec<Node>,
    root: Value,
}

impl Pickle {
    fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(i as usize),
            _ => None,
        }
    }

    fn str(&self, v: Value) -> Option<&str> {
        match self.node(v) {
            Some(Node::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn describe(&self, v: Value) -> String {
        describe(&self.nodes, v)
    }

    /// A dict's string-keyed entries, Python-style: a repeated key keeps its first position and
    /// takes its last value. Other keys are dropped. (A key object repeated many times is
    /// recognised by its index, so long memoised keys are not hashed over and over.)
    fn str_entries(&self, pairs: &[(Value, Value)]) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut by_node: HashMap<u32, usize> = HashMap::new();
        let mut by_text: HashMap<&str, usize> = HashMap::new();
        for &(k, v) in pairs {
            let Value::Ref(node) = k else { continue };
            let at = match by_node.get(&node) {
                Some(&i) => Some(i),
                None => {
                    let Some(key) = self.str(k) else { continue };
                    let at = by_text.get(key).copied();
                    let i = at.unwrap_or(out.len());
                    by_node.insert(node, i);
                    if at.is_none() {
                        by_text.insert(key, i);
                        out.push((key.to_string(), v));
                    }
                    at
                }
            };
            if let Some(i) = at {
                out[i].1 = v;
            }
        }
        out
    }
}

/// A short description of a value for messages (never recursive).
fn describe(nodes: &[Node], v: Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Ref(i) => match nodes.get(i as usize) {
            None => "nothing".into(),
            Some(Node::Str(_)) => "a string".into(),
            Some(Node::Bytes(_)) => "bytes".into(),
            Some(Node::BigInt) => "an int".into(),
            Some(Node::List(_)) => "a list".into(),
            Some(Node::Tuple(_)) => "a tuple".into(),
            Some(Node::Dict(_)) => "a dict".into(),
            Some(Node::Set(_)) => "a set".into(),
            Some(Node::Global(..)) => match global_name(nodes, v) {
                Some((m, n)) => format!("the global {m}.{n}"),
                None => "a global".into(),
            },
            Some(Node::Storage(_)) => "a storage".into(),
            Some(Node::Tensor(_)) => "a tensor".into(),
            Some(Node::Object(class)) => match global_name(nodes, *class) {
                Some((m, n)) => format!("a {m}.{n} object"),
                None => "an object".into(),
            },
        },
    }
}

/// `(module, name)` of a `Global` node.
fn global_name(nodes: &[Node], v: Value) -> Option<(&str, &str)> {
    let str_of = |v: Value| match v {
        Value::Ref(i) => match nodes.get(i as usize) {
            Some(Node::Str(s)) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    };
    match v {
        Value::Ref(i) => match nodes.get(i as usize) {
            Some(Node::Global(m, n)) => Some((str_of(*m)?, str_of(*n)?)),
            _ => None,
        },
        _ => None,
    }
}

/// Locates the state dict and lists its tensor entries.
fn find_state_dict(p: &Pickle) -> std::result::Result<Vec<(String, &TensorRef)>, String> {
    let Some(Node::Dict(root)) = p.node(p.root) else {
        return Err(format!(
            "the checkpoint holds {}, not a dict (save model.state_dict(), not the model)",
            p.describe(p.root)
        ));
    };
    let top = p.str_entries(root);
    let mut state = None;
    for key in STATE_DICT_KEYS {
        if let Some(&(_, v)) = top.iter().find(|(k, _)| k == key) {
            if let Some(Node::Dict(pairs)) = p.node(v) {
                state = Some((pairs, key));
                break;
            }
        }
    }
    let (pairs, under) = match state {
        Some((pairs, key)) => (pairs, Some(key)),
        None => (root, None),
    };
    let entries = p.str_entries(pairs);
    let mut tensors = Vec::new();
    for (name, v) in entries {
        match p.node(v) {
            Some(Node::Tensor(t)) => tensors.push((name, &**t)),
            _ => log::debug!("skipping state dict entry '{name}': {}", p.describe(v)),
        }
    }
    if tensors.is_empty() {
        let mut keys: Vec<String> = top
            .iter()
            .take(12)
            .map(|(k, _)| format!("'{}'", k.chars().take(40).collect::<String>()))
            .collect();
        if top.len() > 12 {
            keys.push("...".into());
        }
        let described: Vec<String> = STATE_DICT_KEYS
            .iter()
            .filter_map(|key| {
                let (_, v) = top.iter().find(|(k, _)| k == key)?;
                Some(format!("'{key}' holds {}", p.describe(*v)))
            })
            .collect();
        return Err(match under {
            Some(key) => format!("the state dict under '{key}' holds no tensors"),
            None if described.is_empty() => format!(
                "found no state dict: the top-level dict (keys: {}) holds no tensors and none of the keys {:?}",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") },
                STATE_DICT_KEYS
            ),
            None => format!("found no state dict: {}", described.join(", ")),
        });
    }
    Ok(tensors)
}

/// A malformed `data.pkl`: what, where, and the opcode at fault.
#[derive(Debug, Clone, PartialEq)]
struct PickleError {
    offset: usize,
    op: Option<u8>,
    why: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => write!(
                f,
                "data.pkl: {} (opcode {} 0x{op:02x} at byte {})",
                self.why,
                opcode_name(op).unwrap_or("unknown"),
                self.offset
            ),
            None => write!(f, "data.pkl: {} (at byte {})", self.why, self.offset),
        }
    }
}

type PResult<T> = std::result::Result<T, PickleError>;

/// The name of every opcode the unpickler implements (`None`: refused as unknown).
pub fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        _ => return None,
    })
}

/// Opcodes that exist but that `torch.save` never emits and the unpickler refuses.
fn unsupported_opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'S' => "STRING",
        b'V' => "UNICODE",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// The pickle virtual machine (see the module docs). It builds values; it never calls
/// anything.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and opcode being executed, for messages.
    at: usize,
    op: u8,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
    /// Items stored in containers so far.
    items: usize,
    /// Tensors and storages built so far.
    tensors: usize,
    storages: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            at: 0,
            op: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: Vec::new(),
            items: 0,
            tensors: 0,
            storages: 0,
        }
    }

    fn err<T>(&self, why: impl Into<String>) -> PResult<T> {
        Err(PickleError {
            offset: self.at,
            op: Some(self.op),
            why: why.into(),
        })
    }

    // --- input ---

    fn take(&mut self, n: u64) -> PResult<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return self.err(format!(
                "needs {n} more bytes but only {left} remain (truncated?)"
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A text line (without its '\n').
    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated text argument (truncated?)");
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text argument is not UTF-8"),
        }
    }

    fn utf8(&self, b: &[u8]) -> PResult<String> {
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    // --- stack, memo, arena ---

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> PResult<()> {
        if self.stack.len() >= MAX_PICKLE_OBJECTS {
            return self.err(format!("stack deeper than {MAX_PICKLE_OBJECTS}"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> PResult<Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(*self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return self.err("no MARK to pop to");
        };
        Ok(self.stack.split_off(mark))
    }

    fn new_node(&mut self, node: Node) -> PResult<Value> {
        if self.nodes.len() >= MAX_PICKLE_OBJECTS {
            return self.err(format!("more than {MAX_PICKLE_OBJECTS} objects"));
        }
        self.nodes.push(node);
        Ok(Value::Ref((self.nodes.len() - 1) as u32))
    }

    fn push_node(&mut self, node: Node) -> PResult<()> {
        let v = self.new_node(node)?;
        self.push(v)
    }

    fn count_items(&mut self, n: usize) -> PResult<()> {
        self.items = self.items.saturating_add(n);
        if self.items > 2 * MAX_PICKLE_OBJECTS {
            return self.err(format!(
                "more than {} items in containers",
                2 * MAX_PICKLE_OBJECTS
            ));
        }
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> PResult<()> {
        let v = self.top()?;
        if self.memo.len() >= MAX_PICKLE_OBJECTS && !self.memo.contains_key(&index) {
            return self.err(format!("more than {MAX_PICKLE_OBJECTS} memo entries"));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> PResult<()> {
        match self.memo.get(&index) {
            Some(&v) => self.push(v),
            None => self.err(format!("memo index {index} is not defined")),
        }
    }

    fn node_mut(&mut self, v: Value) -> Option<&mut Node> {
        match v {
            Value::Ref(i) => self.nodes.get_mut(i as usize),
            _ => None,
        }
    }

    fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(i as usize),
            _ => None,
        }
    }

    fn global(&self, v: Value) -> Option<(&str, &str)> {
        global_name(&self.nodes, v)
    }

    fn seq(&self, v: Value) -> Option<&[Value]> {
        match self.node(v) {
            Some(Node::Tuple(items) | Node::List(items)) => Some(items),
            _ => None,
        }
    }

    fn kind(&self, v: Value) -> String {
        describe(&self.nodes, v)
    }

    // --- the machine ---

    fn load(mut self) -> PResult<Pickle> {
        loop {
            self.at = self.pos;
            if self.pos >= self.data.len() {
                return Err(PickleError {
                    offset: self.pos,
                    op: None,
                    why: "ends before STOP (truncated?)".into(),
                });
            }
            self.op = self.data[self.pos];
            self.pos += 1;
            if self.op == b'.' {
                let root = self.pop()?;
                return Ok(Pickle {
                    nodes: self.nodes,
                    root,
                });
            }
            self.step()?;
        }
    }

    fn step(&mut self) -> PResult<()> {
        match self.op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return self.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.u64()?;
            }
            b'(' => {
                if self.marks.len() >= MAX_PICKLE_OBJECTS {
                    return self.err(format!("more than {MAX_PICKLE_OBJECTS} nested MARKs"));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?;
                self.push(v)?;
            }

            // Immediates.
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(i64::from(v)))?
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(i64::from(v)))?
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(i64::from(v)))?
            }
            0x8a => {
                let n = self.u8()?;
                let b = self.take(u64::from(n))?;
                self.push_long(b)?
            }
            0x8b => {
                let n = self.u32()?;
                let b = self.take(u64::from(n))?;
                self.push_long(b)?
            }
            b'I' => {
                let line = self.line()?;
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => return self.err(format!("bad INT argument '{s}'")),
                    },
                };
                self.push(v)?
            }
            b'L' => {
                let line = self.line()?;
                let digits = line.strip_suffix('L').unwrap_or(line);
                if digits.is_empty()
                    || !digits
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                {
                    return self.err(format!("bad LONG argument '{line}'"));
                }
                match digits.parse::<i64>() {
                    Ok(i) => self.push(Value::Int(i))?,
                    Err(_) => self.push_node(Node::BigInt)?,
                }
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                self.push(Value::Float(v))?
            }
            b'F' => {
                let line = self.line()?;
                match line.trim().parse::<f64>() {
                    Ok(v) => self.push(Value::Float(v))?,
                    Err(_) => return self.err(format!("bad FLOAT argument '{line}'")),
                }
            }

            // Strings and bytes.
            b'X' => {
                let n = self.u32()?;
                let s = self.take(u64::from(n))?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            0x8c => {
                let n = self.u8()?;
                let s = self.take(u64::from(n))?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.take(n)?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            b'T' | b'U' => {
                // Python 2 `str`: a string if it is UTF-8, bytes otherwise.
                let n = if self.op == b'T' {
                    u64::from(self.u32()?)
                } else {
                    u64::from(self.u8()?)
                };
                let b = self.take(n)?;
                let node = match std::str::from_utf8(b) {
                    Ok(s) => Node::Str(s.to_string()),
                    Err(_) => Node::Bytes(b.to_vec()),
                };
                self.push_node(node)?
            }
            b'B' => {
                let n = self.u32()?;
                let b = self.take(u64::from(n))?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }
            b'C' => {
                let n = self.u8()?;
                let b = self.take(u64::from(n))?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }
            0x8e | 0x96 => {
                let n = self.u64()?;
                let b = self.take(n)?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }

            // Containers.
            b')' => self.push_node(Node::Tuple(Vec::new()))?,
            b']' => self.push_node(Node::List(Vec::new()))?,
            b'}' => self.push_node(Node::Dict(Vec::new()))?,
            0x8f => self.push_node(Node::Set(Vec::new()))?,
            0x85..=0x87 => {
                let n = usize::from(self.op - 0x84);
                if self.stack.len() < self.floor() + n {
                    return self.err("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.count_items(n)?;
                self.push_node(Node::Tuple(items))?
            }
            b't' => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::Tuple(items))?
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::List(items))?
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::Set(items))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push_node(Node::Dict(pairs))?
            }
            b'a' => {
                let v = self.pop()?;
                self.extend(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend(items)?
            }
            0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.set_items(pairs)?
            }

            // Memo.
            b'q' => {
                let i = self.u8()?;
                self.memo_put(u32::from(i))?
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(i)?
            }
            b'p' => {
                let line = self.line()?;
                match line.parse::<u32>() {
                    Ok(i) => self.memo_put(i)?,
                    Err(_) => return self.err(format!("bad memo index '{line}'")),
                }
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(u32::from(i))?
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(i)?
            }
            b'g' => {
                let line = self.line()?;
                match line.parse::<u32>() {
                    Ok(i) => self.memo_get(i)?,
                    Err(_) => return self.err(format!("bad memo index '{line}'")),
                }
            }

            // Globals and objects: symbolic only.
            b'c' => {
                let g = self.global_from_lines()?;
                self.push(g)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(Node::Str(_)), Some(Node::Str(_))) = (self.node(module), self.node(name))
                else {
                    return self.err("STACK_GLOBAL needs two strings");
                };
                self.push_node(Node::Global(module, name))?
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = self.reduce(func, args, true)?;
                self.push(v)?
            }
            0x81 => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            b'i' => {
                let class = self.global_from_lines()?;
                self.pop_mark()?;
                self.push_node(Node::Object(class))?
            }
            b'o' => {
                let items = self.pop_mark()?;
                let Some(&cls) = items.first() else {
                    return self.err("OBJ without a class");
                };
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            b'b' => {
                // The state goes to the object's attributes or __setstate__, never to a
                // dict's items or a tensor's data: nothing to keep.
                let _state = self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid)?;
                self.push(v)?
            }
            b'P' => {
                self.line()?;
                return self.err("text persistent ids are not used by torch.save");
            }
            op => {
                return Err(PickleError {
                    offset: self.at,
                    op: None,
                    why: match unsupported_opcode_name(op) {
                        Some(name) => format!("unsupported opcode {name} 0x{op:02x}"),
                        None => format!("unknown opcode 0x{op:02x}"),
                    },
                })
            }
        }
        Ok(())
    }

    /// GLOBAL / INST: `module\nname\n` as a `Global` node.
    fn global_from_lines(&mut self) -> PResult<Value> {
        let module = self.line()?.to_string();
        let name = self.line()?.to_string();
        let module = self.new_node(Node::Str(module))?;
        let name = self.new_node(Node::Str(name))?;
        self.new_node(Node::Global(module, name))
    }

    fn push_long(&mut self, b: &[u8]) -> PResult<()> {
        // Two's complement, little-endian; fits in i64 if the bytes past the 8th only repeat
        // the sign.
        let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
        let fill = if negative { 0xff } else { 0x00 };
        let fits =
            b.len() <= 8 || (b[8..].iter().all(|&x| x == fill) && ((b[7] & 0x80 != 0) == negative));
        if !fits {
            return self.push_node(Node::BigInt);
        }
        let mut bytes = [fill; 8];
        let n = b.len().min(8);
        bytes[..n].copy_from_slice(&b[..n]);
        self.push(Value::Int(i64::from_le_bytes(bytes)))
    }

    fn pairs(&mut self, items: Vec<Value>) -> PResult<Vec<(Value, Value)>> {
        if !items.len().is_multiple_of(2) {
            return self.err(format!("odd number of items ({}) for a dict", items.len()));
        }
        self.count_items(items.len())?;
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    /// APPEND(S) / ADDITEMS into the list or set on top of the stack (items given to an opaque
    /// object are dropped).
    fn extend(&mut self, items: Vec<Value>) -> PResult<()> {
        let target = self.top()?;
        self.count_items(items.len())?;
        match self.node_mut(target) {
            Some(Node::List(v) | Node::Set(v)) => {
                v.extend(items);
                Ok(())
            }
            Some(Node::Object(_)) => Ok(()),
            _ => self.err(format!("cannot append to {}", self.kind(target))),
        }
    }

    /// SETITEM(S) into the dict on top of the stack (items given to an opaque object are
    /// dropped).
    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> PResult<()> {
        let target = self.top()?;
        self.count_items(2 * pairs.len())?;
        match self.node_mut(target) {
            Some(Node::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            Some(Node::Object(_)) => Ok(()),
            _ => self.err(format!("cannot set items of {}", self.kind(target))),
        }
    }

    /// NEWOBJ / OBJ: an `OrderedDict` becomes a dict, anything else an opaque object.
    fn instantiate(&mut self, cls: Value) -> PResult<Value> {
        if self.global(cls) == Some(("collections", "OrderedDict")) {
            return self.new_node(Node::Dict(Vec::new()));
        }
        self.new_node(Node::Object(cls))
    }

    /// REDUCE: interprets the callables `torch.save` uses; anything else is opaque.
    fn reduce(&mut self, func: Value, args: Value, outer: bool) -> PResult<Value> {
        let callable = match self.global(func) {
            Some(("torch._utils", "_rebuild_tensor")) => Callable::Tensor(TensorRebuild::V1),
            Some(("torch._utils", "_rebuild_tensor_v2")) => Callable::Tensor(TensorRebuild::V2),
            Some(("torch._utils", "_rebuild_tensor_v3")) => Callable::Tensor(TensorRebuild::V3),
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                Callable::Parameter
            }
            Some(("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type")) if outer => {
                Callable::FromType
            }
            Some(("collections", "OrderedDict")) => Callable::OrderedDict,
            _ => return self.new_node(Node::Object(func)),
        };
        // The first few arguments (all any of these callables takes) and their number.
        let Some((argc, argv)) = self
            .seq(args)
            .map(|a| (a.len(), a.iter().take(8).copied().collect::<Vec<Value>>()))
        else {
            return self.err(format!(
                "the arguments of {} are {}, not a tuple",
                callable.name(),
                self.kind(args)
            ));
        };
        match callable {
            Callable::Tensor(version) => self.rebuild_tensor(version, argc, &argv),
            Callable::Parameter => match argv.first() {
                Some(&data) => Ok(data),
                None => self.err("_rebuild_parameter without arguments"),
            },
            Callable::FromType => {
                // (func, type, args, state): the tensor is func(*args).
                let (Some(&inner), Some(&inner_args)) = (argv.first(), argv.get(2)) else {
                    return self.err("_rebuild_from_type_v2 needs (func, type, args, state)");
                };
                self.reduce(inner, inner_args, false)
            }
            Callable::OrderedDict => {
                // OrderedDict() or OrderedDict([(k, v), ...]).
                let mut pairs = Vec::new();
                if let Some(&items) = argv.first() {
                    let Some(items) = self.seq(items) else {
                        return self.err("the argument of OrderedDict is not a list of pairs");
                    };
                    let n = items.len();
                    for &item in items {
                        match self.seq(item) {
                            Some(&[k, v]) => pairs.push((k, v)),
                            _ => {
                                return self
                                    .err("the argument of OrderedDict is not a list of pairs")
                            }
                        }
                    }
                    self.count_items(2 * n)?;
                }
                self.new_node(Node::Dict(pairs))
            }
        }
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, `_v2(..., requires_grad, hooks[,
    /// metadata])`, `_v3(..., requires_grad, hooks, dtype[, metadata])`.
    fn rebuild_tensor(
        &mut self,
        version: TensorRebuild,
        argc: usize,
        argv: &[Value],
    ) -> PResult<Value> {
        let name = Callable::Tensor(version).name();
        let (min_args, metadata_at) = match version {
            TensorRebuild::V1 => (4, None),
            TensorRebuild::V2 => (6, Some(6)),
            TensorRebuild::V3 => (7, Some(7)),
        };
        if argc < min_args || argc > min_args + usize::from(metadata_at.is_some()) {
            return self.err(format!(
                "{name} called with {argc} arguments, expected {min_args}{}",
                if metadata_at.is_some() {
                    " or one more"
                } else {
                    ""
                }
            ));
        }
        if self.tensors >= MAX_TENSORS {
            return self.err(format!("more than {MAX_TENSORS} tensors"));
        }
        let storage = match self.node(argv[0]) {
            Some(Node::Storage(s)) => (**s).clone(),
            _ => {
                return self.err(format!(
                    "{name}: the storage argument is {}",
                    self.kind(argv[0])
                ))
            }
        };
        let offset = match argv[1] {
            Value::Int(i) if i >= 0 => i as u64,
            other => {
                return self.err(format!(
                    "{name}: the storage offset is {}",
                    self.describe_int(other)
                ))
            }
        };
        let size = self.int_tuple(name, "size", argv[2])?;
        let stride = self.int_tuple(name, "stride", argv[3])?;
        let dtype = match version {
            TensorRebuild::V3 => match self.global(argv[6]) {
                Some(("torch", dt)) => DType::from_dtype_name(dt),
                _ => {
                    return self.err(format!(
                        "{name}: the dtype argument is {}",
                        self.kind(argv[6])
                    ))
                }
            },
            _ => storage.dtype.clone(),
        };
        let neg = match metadata_at.and_then(|i| argv.get(i)) {
            Some(&m) => match self.node(m) {
                // torch writes at most {'conj': ..., 'neg': ...}: look no further.
                Some(Node::Dict(pairs)) => pairs.iter().take(8).any(|&(k, v)| {
                    v == Value::Bool(true)
                        && matches!(self.node(k), Some(Node::Str(s)) if s == "neg")
                }),
                _ => false,
            },
            None => false,
        };
        let t = TensorRef {
            storage,
            dtype,
            offset,
            size,
            stride,
            neg,
        };
        if let Err(why) = t.check() {
            return self.err(format!("{name}: {why}"));
        }
        self.tensors += 1;
        self.new_node(Node::Tensor(Box::new(t)))
    }

    fn describe_int(&self, v: Value) -> String {
        match v {
            Value::Int(i) => format!("{i}"),
            other => self.kind(other),
        }
    }

    /// A size or stride: a tuple of at most [`MAX_DIMS`] non-negative ints (counted as
    /// container items, since they are copied).
    fn int_tuple(&mut self, func: &str, what: &str, v: Value) -> PResult<Vec<u64>> {
        let Some(items) = self.seq(v) else {
            return self.err(format!(
                "{func}: the {what} is {}, not a tuple",
                self.kind(v)
            ));
        };
        if items.len() > MAX_DIMS {
            return self.err(format!(
                "{func}: the {what} has {} dimensions, more than {MAX_DIMS}",
                items.len()
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for &item in items {
            match item {
                Value::Int(i) if i >= 0 => out.push(i as u64),
                other => {
                    return self.err(format!(
                        "{func}: the {what} holds {}, not a non-negative int",
                        self.describe_int(other)
                    ))
                }
            }
        }
        self.count_items(out.len())?;
        Ok(out)
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel)`.
    fn persistent_load(&mut self, pid: Value) -> PResult<Value> {
        let Some(items) = self.seq(pid) else {
            return self.err(format!("persistent id is {}, not a tuple", self.kind(pid)));
        };
        let first = items.first().copied().unwrap_or(Value::None);
        let typename = match self.node(first) {
            Some(Node::Str(s)) => s.as_bytes(),
            Some(Node::Bytes(b)) => b.as_slice(),
            _ => &[],
        };
        if typename != b"storage" {
            let shown: String = String::from_utf8_lossy(&typename[..typename.len().min(40)]).into();
            return self.err(format!("unsupported persistent id type '{shown}'"));
        }
        let [_, class, key, _location, numel] = *items else {
            return self.err(format!(
                "storage persistent id has {} fields, expected 5 (storage, class, key, location, numel)",
                items.len()
            ));
        };
        if self.storages >= MAX_TENSORS {
            return self.err(format!("more than {MAX_TENSORS} storages"));
        }
        let dtype = match self.global(class) {
            Some((module, class)) if module == "torch" || module.starts_with("torch.") => {
                DType::from_storage_class(class)
            }
            _ => {
                return self.err(format!(
                    "storage class is {}, not a torch storage class",
                    self.kind(class)
                ))
            }
        };
        let key = match (key, self.node(key)) {
            (_, Some(Node::Str(s))) if s.len() <= MAX_KEY_LEN => s.clone(),
            (Value::Int(i), _) => i.to_string(),
            (other, _) => {
                return self.err(format!(
                    "storage key is {}, not a string of at most {MAX_KEY_LEN} bytes",
                    self.kind(other)
                ))
            }
        };
        let numel = match numel {
            Value::Int(n) if n >= 0 => n as u64,
            other => {
                return self.err(format!(
                    "storage '{key}' has element count {}",
                    self.describe_int(other)
                ))
            }
        };
        let s = StorageRef { key, dtype, numel };
        if s.dtype.size().is_some() && s.nbytes().is_none() {
            return self.err(format!("storage '{}' size overflows", s.key));
        }
        self.storages += 1;
        self.new_node(Node::Storage(Box::new(s)))
    }
}

/// The callables REDUCE interprets.
#[derive(Clone, Copy, Debug)]
enum Callable {
    Tensor(TensorRebuild),
    Parameter,
    FromType,
    OrderedDict,
}

#[derive(Clone, Copy, Debug)]
enum TensorRebuild {
    V1,
    V2,
    V3,
}

impl Callable {
    fn name(self) -> &'static str {
        match self {
            Callable::Tensor(TensorRebuild::V1) => "_rebuild_tensor",
            Callable::Tensor(TensorRebuild::V2) => "_rebuild_tensor_v2",
            Callable::Tensor(TensorRebuild::V3) => "_rebuild_tensor_v3",
            Callable::Parameter => "_rebuild_parameter",
            Callable::FromType => "_rebuild_from_type_v2",
            Callable::OrderedDict => "OrderedDict",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpickles `body` (a `PROTO 2` header and `STOP` are added).
    fn run(body: &[u8]) -> PResult<Pickle> {
        let mut data = vec![0x80, 2];
        data.extend_from_slice(body);
        data.push(b'.');
        Unpickler::new(&data).load()
    }

    fn run_err(body: &[u8]) -> PickleError {
        match run(body) {
            Ok(p) => panic!("expected an error, got {}", p.describe(p.root)),
            Err(e) => e,
        }
    }

    fn binunicode(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    /// A torch-style storage persistent id, BINPERSID included.
    fn storage(class: &str, key: &str, numel: u8) -> Vec<u8> {
        let mut v = vec![b'('];
        v.extend(binunicode("storage"));
        v.extend(global("torch", class));
        v.extend(binunicode(key));
        v.extend(binunicode("cpu"));
        v.extend([b'K', numel, b't', b'Q']);
        v
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        class: &str,
        key: &str,
        numel: u8,
        offset: u8,
        size: &[u8],
        stride: &[u8],
    ) -> Vec<u8> {
        let mut v = global("torch._utils", "_rebuild_tensor_v2");
        v.push(b'(');
        v.extend(storage(class, key, numel));
        v.extend([b'K', offset]);
        for dims in [size, stride] {
            v.push(b'(');
            for &d in dims {
                v.extend([b'K', d]);
            }
            v.push(b't');
        }
        v.push(0x89);
        v.extend(global("collections", "OrderedDict"));
        v.extend([b')', b'R', b't', b'R']);
        v
    }

    fn root_int(p: &Pickle) -> i64 {
        match p.root {
            Value::Int(i) => i,
            other => panic!("root is {other:?}"),
        }
    }

    fn root_items(p: &Pickle) -> Vec<Value> {
        match p.node(p.root) {
            Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
            other => panic!("root is {other:?}"),
        }
    }

    #[test]
    fn integers() {
        assert_eq!(root_int(&run(b"K\xff").unwrap()), 255);
        assert_eq!(root_int(&run(b"M\x01\x02").unwrap()), 0x0201);
        assert_eq!(root_int(&run(b"J\xfe\xff\xff\xff").unwrap()), -2);
        assert_eq!(root_int(&run(b"\x8a\x00").unwrap()), 0);
        assert_eq!(root_int(&run(b"\x8a\x01\xff").unwrap()), -1);
        assert_eq!(root_int(&run(b"\x8a\x02\xff\x00").unwrap()), 255);
        assert_eq!(
            root_int(&run(b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap()),
            i64::MAX
        );
    }

    #[test]
    fn long_integers() {
        // 2^64 - 1 needs 9 bytes and does not fit in i64.
        let p = run(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00").unwrap();
        assert!(matches!(p.node(p.root), Some(Node::BigInt)));
        // i64::MIN in 9 bytes (sign-extended) fits.
        let p = run(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff").unwrap();
        assert_eq!(root_int(&p), i64::MIN);
        // LONG4.
        let p = run(b"\x8b\x02\x00\x00\x00\x34\x12").unwrap();
        assert_eq!(root_int(&p), 0x1234);
        // Text INT / LONG.
        assert_eq!(root_int(&run(b"I-17\n").unwrap()), -17);
        assert_eq!(run(b"I01\n").unwrap().root, Value::Bool(true));
        assert_eq!(root_int(&run(b"L42L\n").unwrap()), 42);
        let p = run(b"L123456789012345678901234567890L\n").unwrap();
        assert!(matches!(p.node(p.root), Some(Node::BigInt)));
    }

    #[test]
    fn floats_and_constants() {
        let p = run(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00").unwrap();
        assert_eq!(p.root, Value::Float(1.5));
        assert_eq!(run(b"F-0.25\n").unwrap().root, Value::Float(-0.25));
        assert_eq!(run(b"N").unwrap().root, Value::None);
        assert_eq!(run(b"\x88").unwrap().root, Value::Bool(true));
        assert_eq!(run(b"\x89").unwrap().root, Value::Bool(false));
    }

    #[test]
    fn strings_and_bytes() {
        let p = run(&binunicode("héllo")).unwrap();
        assert_eq!(p.str(p.root), Some("héllo"));
        let p = run(b"\x8c\x02ab").unwrap();
        assert_eq!(p.str(p.root), Some("ab"));
        let p = run(b"\x8d\x01\x00\x00\x00\x00\x00\x00\x00z").unwrap();
        assert_eq!(p.str(p.root), Some("z"));
        let p = run(b"U\x03abc").unwrap();
        assert_eq!(p.str(p.root), Some("abc"));
        let p = run(b"T\x01\x00\x00\x00\xff").unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Bytes(b)) if b == &[0xff]));
        for body in [
            &b"B\x02\x00\x00\x00\x01\x02"[..],
            b"C\x02\x01\x02",
            b"\x8e\x02\x00\x00\x00\x00\x00\x00\x00\x01\x02",
            b"\x96\x02\x00\x00\x00\x00\x00\x00\x00\x01\x02",
        ] {
            let p = run(body).unwrap();
            assert!(matches!(p.node(p.root), Some(Node::Bytes(b)) if b == &[1, 2]));
        }
        let e = run_err(b"X\x02\x00\x00\x00\xff\xfe");
        assert!(e.why.contains("UTF-8"), "{e}");
    }

    #[test]
    fn tuples() {
        assert!(root_items(&run(b")").unwrap()).is_empty());
        assert_eq!(root_items(&run(b"K\x01\x85").unwrap()), [Value::Int(1)]);
        assert_eq!(
            root_items(&run(b"K\x01K\x02\x86").unwrap()),
            [Value::Int(1), Value::Int(2)]
        );
        assert_eq!(
            root_items(&run(b"K\x01K\x02K\x03\x87").unwrap()),
            [Value::Int(1), Value::Int(2), Value::Int(3)]
        );
        assert_eq!(
            root_items(&run(b"(K\x01K\x02K\x03K\x04t").unwrap()).len(),
            4
        );
        // TUPLE2 cannot reach below a MARK.
        let e = run_err(b"K\x01(K\x02\x86");
        assert!(e.why.contains("underflow"), "{e}");
    }

    #[test]
    fn lists_and_sets() {
        assert_eq!(
            root_items(&run(b"]K\x01aK\x02a").unwrap()),
            [Value::Int(1), Value::Int(2)]
        );
        assert_eq!(
            root_items(&run(b"](K\x01K\x02e").unwrap()),
            [Value::Int(1), Value::Int(2)]
        );
        assert_eq!(root_items(&run(b"(K\x01l").unwrap()), [Value::Int(1)]);
        assert_eq!(
            root_items(&run(b"\x8f(K\x01K\x02\x90").unwrap()),
            [Value::Int(1), Value::Int(2)]
        );
        assert_eq!(root_items(&run(b"(K\x07\x91").unwrap()), [Value::Int(7)]);
        let e = run_err(b"K\x01K\x02a");
        assert!(e.why.contains("cannot append to an int"), "{e}");
    }

    #[test]
    fn dicts() {
        let check = |body: &[u8]| {
            let p = run(body).unwrap();
            let Some(Node::Dict(pairs)) = p.node(p.root) else {
                panic!("not a dict")
            };
            let e = p.str_entries(pairs);
            assert_eq!(e.len(), 2);
            assert_eq!(e[0], ("a".to_string(), Value::Int(3)));
            assert_eq!(e[1], ("b".to_string(), Value::Int(2)));
        };
        let a = binunicode("a");
        let b = binunicode("b");
        // SETITEM, with a repeated key keeping its first position and its last value.
        check(&[&b"}"[..], &a, b"K\x01s", &b, b"K\x02s", &a, b"K\x03s"].concat());
        // SETITEMS.
        check(&[&b"}("[..], &a, b"K\x01", &b, b"K\x02", &a, b"K\x03u"].concat());
        // DICT.
        check(&[&b"("[..], &a, b"K\x03", &b, b"K\x02d"].concat());
        let e = run_err(&[&b"}("[..], &a, b"u"].concat());
        assert!(e.why.contains("odd number"), "{e}");
        let e = run_err(&[&b"K\x01"[..], &a, b"K\x01s"].concat());
        assert!(e.why.contains("cannot set items of an int"), "{e}");
    }

    #[test]
    fn memo() {
        // BINPUT / BINGET share the object: appending through the memo is visible.
        let p = run(b"]q\x00K\x01ah\x00\x86").unwrap();
        let items = root_items(&p);
        assert_eq!(items[0], items[1]);
        assert_eq!(
            root_items(&Pickle {
                root: items[0],
                nodes: p.nodes,
            }),
            [Value::Int(1)]
        );
        // LONG_BINPUT / LONG_BINGET with a large index.
        let p = run(b"K\x05r\x00\x00\x00\x80j\x00\x00\x00\x80\x86").unwrap();
        assert_eq!(root_items(&p), [Value::Int(5), Value::Int(5)]);
        // MEMOIZE numbers from the memo's length; PUT / GET are text.
        let p = run(b"K\x05\x94K\x06\x94h\x01h\x00\x86\x86").unwrap();
        assert_eq!(root_items(&p)[0], Value::Int(6));
        let p = run(b"K\x09p7\ng7\n\x86").unwrap();
        assert_eq!(root_items(&p), [Value::Int(9), Value::Int(9)]);
        let e = run_err(b"h\x03");
        assert!(e.why.contains("memo index 3 is not defined"), "{e}");
        assert_eq!(e.offset, 2);
        assert_eq!(e.op, Some(b'h'));
        let e = run_err(b"j\xff\xff\xff\xff");
        assert!(e.why.contains("memo index 4294967295"), "{e}");
        let e = run_err(b"q\x00");
        assert!(e.why.contains("underflow"), "{e}");
    }

    #[test]
    fn stack_ops() {
        // POP, POP_MARK, DUP, MARK.
        assert_eq!(root_int(&run(b"K\x01K\x020").unwrap()), 1);
        assert_eq!(root_int(&run(b"K\x01(K\x02K\x031").unwrap()), 1);
        assert_eq!(root_items(&run(b"K\x012\x86").unwrap()), [Value::Int(1); 2]);
        // POP with nothing above the mark pops the mark (as CPython does).
        assert_eq!(root_int(&run(b"K\x01(0").unwrap()), 1);
        let e = run_err(b"1");
        assert!(e.why.contains("no MARK"), "{e}");
        let e = run_err(b"2");
        assert!(e.why.contains("underflow"), "{e}");
        // FRAME is accepted and ignored.
        assert_eq!(
            root_int(&run(b"\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x04").unwrap()),
            4
        );
        // STOP on an empty stack.
        let e = Unpickler::new(b"\x80\x02.").load().unwrap_err();
        assert!(e.why.contains("underflow"), "{e}");
        assert_eq!(e.op, Some(b'.'));
    }

    #[test]
    fn globals_reduce_newobj_build() {
        // An unknown call is opaque, whatever its arguments.
        let body = [
            global("os", "system"),
            binunicode("rm -rf /"),
            b"\x85R".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        assert_eq!(p.describe(p.root), "a os.system object");
        // STACK_GLOBAL.
        let body = [
            binunicode("argparse"),
            binunicode("Namespace"),
            b"\x93)\x81}b".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        assert_eq!(p.describe(p.root), "a argparse.Namespace object");
        // NEWOBJ_EX, INST, OBJ.
        let body = [global("a", "B"), b")}\x92".to_vec()].concat();
        assert!(matches!(
            run(&body).map(|p| p.describe(p.root)).unwrap().as_str(),
            "a a.B object"
        ));
        let p = run(b"(K\x01imod\ncls\n").unwrap();
        assert_eq!(p.describe(p.root), "a mod.cls object");
        let body = [b"(".to_vec(), global("m", "C"), b"K\x01o".to_vec()].concat();
        assert_eq!(
            run(&body).map(|p| p.describe(p.root)).unwrap(),
            "a m.C object"
        );
        // OrderedDict via REDUCE and NEWOBJ, BUILD leaves the object (the state dict's
        // `_metadata` is dropped).
        for call in [&b")R"[..], b")\x81"] {
            let body = [
                global("collections", "OrderedDict"),
                call.to_vec(),
                binunicode("k"),
                b"K\x01s}".to_vec(),
                binunicode("_metadata"),
                b"NsbN0".to_vec(),
            ]
            .concat();
            let p = run(&body).unwrap();
            let Some(Node::Dict(pairs)) = p.node(p.root) else {
                panic!("not a dict")
            };
            assert_eq!(p.str_entries(pairs), [("k".to_string(), Value::Int(1))]);
        }
        // OrderedDict([(k, v)]).
        let body = [
            global("collections", "OrderedDict"),
            b"(".to_vec(),
            binunicode("k"),
            b"K\x02\x86l\x85R".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        let Some(Node::Dict(pairs)) = p.node(p.root) else {
            panic!("not a dict")
        };
        assert_eq!(p.str_entries(pairs), [("k".to_string(), Value::Int(2))]);
        // Items given to opaque objects are dropped, not fatal.
        let body = [
            global("m", "C"),
            b")R".to_vec(),
            binunicode("k"),
            b"K\x01s(K\x01e".to_vec(),
        ]
        .concat();
        assert!(run(&body).is_ok());
        // REDUCE of a known callable needs a tuple; an unknown one is opaque anyway.
        let e = run_err(
            &[
                global("torch._utils", "_rebuild_tensor_v2"),
                b"K\x01R".to_vec(),
            ]
            .concat(),
        );
        assert!(e.why.contains("not a tuple"), "{e}");
        assert!(run(&[global("m", "f"), b"K\x01R".to_vec()].concat()).is_ok());
    }

    #[test]
    fn persistent_storage_and_tensor() {
        let body = tensor("HalfStorage", "7", 10, 2, &[2, 3], &[1, 2]);
        let p = run(&body).unwrap();
        let Some(Node::Tensor(t)) = p.node(p.root) else {
            panic!("not a tensor: {}", p.describe(p.root))
        };
        assert_eq!(t.storage.key, "7");
        assert_eq!(t.storage.dtype, DType::F16);
        assert_eq!(t.storage.numel, 10);
        assert_eq!(t.dtype, DType::F16);
        assert_eq!(
            (t.offset, &t.size[..], &t.stride[..]),
            (2, &[2, 3][..], &[1, 2][..])
        );
        assert!(!t.neg);
        // Last element at 2 + 1*1 + 2*2 = 7 < 10; with offset 5 it is 10: out of range.
        let e = run_err(&tensor("HalfStorage", "7", 10, 5, &[2, 3], &[1, 2]));
        assert!(e.why.contains("reaches past its storage"), "{e}");
        // 0-d tensor.
        let p = run(&tensor("FloatStorage", "0", 1, 0, &[], &[])).unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if t.numel() == 1));
        let e = run_err(&tensor("FloatStorage", "0", 1, 1, &[], &[]));
        assert!(e.why.contains("reaches past"), "{e}");
        // Empty tensor: only the offset must lie inside.
        assert!(run(&tensor("FloatStorage", "0", 1, 1, &[0, 4], &[4, 1])).is_ok());
        // Size and stride of different lengths.
        let e = run_err(&tensor("FloatStorage", "0", 8, 0, &[2, 4], &[4]));
        assert!(e.why.contains("differ in length"), "{e}");
        // Unknown storage classes are kept (and never converted).
        let p = run(&tensor("ComplexFloatStorage", "0", 4, 0, &[4], &[1])).unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if !t.dtype.is_float()));
    }

    #[test]
    fn tensor_wrappers() {
        // _rebuild_parameter(tensor, requires_grad, hooks) is the tensor.
        let body = [
            global("torch._utils", "_rebuild_parameter"),
            tensor("FloatStorage", "0", 4, 0, &[4], &[1]),
            b"\x88)\x87R".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Tensor(_))));
        // _rebuild_from_type_v2(func, type, args, state).
        let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
        // Split `t` into its callable (the GLOBAL) and its argument tuple (the rest minus 'R').
        let split = global("torch._utils", "_rebuild_tensor_v2").len();
        let body = [
            global("torch._tensor", "_rebuild_from_type_v2"),
            b"(".to_vec(),
            t[..split].to_vec(),
            global("torch", "Tensor"),
            t[split..t.len() - 1].to_vec(),
            b"}t".to_vec(),
            b"R".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        assert!(
            matches!(p.node(p.root), Some(Node::Tensor(_))),
            "{}",
            p.describe(p.root)
        );
    }

    #[test]
    fn tensor_v3_and_metadata() {
        // _rebuild_tensor_v3(UntypedStorage of 8 bytes, offset, (3,), (1,), False, hooks, torch.float16)
        let v3 = |offset: u8| {
            let mut body = global("torch._utils", "_rebuild_tensor_v3");
            body.push(b'(');
            body.extend(storage("UntypedStorage", "0", 8));
            body.extend([b'K', offset]);
            body.extend(b"(K\x03t(K\x01t\x89");
            body.extend(global("collections", "OrderedDict"));
            body.extend(b")R");
            body.extend(global("torch", "float16"));
            body.extend(b"tR");
            body
        };
        let p = run(&v3(1)).unwrap();
        let Some(Node::Tensor(t)) = p.node(p.root) else {
            panic!("not a tensor")
        };
        assert_eq!(
            (t.dtype.clone(), t.storage.dtype.clone()),
            (DType::F16, DType::U8)
        );
        // Offset 2 (in f16 elements) + 3 elements = 10 bytes > 8.
        let e = run_err(&v3(2));
        assert!(e.why.contains("reaches past"), "{e}");

        // metadata {'neg': True}.
        let t = tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
        let mut body = t[..t.len() - 2].to_vec();
        body.push(b'}');
        body.extend(binunicode("neg"));
        body.extend(b"\x88stR");
        let p = run(&body).unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if t.neg));
    }

    #[test]
    fn malformed_persistent_ids() {
        let e = run_err(b"K\x01Q");
        assert!(e.why.contains("not a tuple"), "{e}");
        let e = run_err(&[b"(".to_vec(), binunicode("module"), b"tQ".to_vec()].concat());
        assert!(
            e.why.contains("unsupported persistent id type 'module'"),
            "{e}"
        );
        let e = run_err(&[b"(".to_vec(), binunicode("storage"), b"K\x01tQ".to_vec()].concat());
        assert!(e.why.contains("fields"), "{e}");
        let mut body = vec![b'('];
        body.extend(binunicode("storage"));
        body.extend(global("os", "system"));
        body.extend(binunicode("0"));
        body.extend(binunicode("cpu"));
        body.extend(b"K\x01tQ");
        let e = run_err(&body);
        assert!(e.why.contains("not a torch storage class"), "{e}");
        // numel 2^62 of 4-byte floats overflows u64 bytes.
        let mut body = vec![b'('];
        body.extend(binunicode("storage"));
        body.extend(global("torch", "FloatStorage"));
        body.extend(binunicode("0"));
        body.extend(binunicode("cpu"));
        body.extend(b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40tQ");
        let e = run_err(&body);
        assert!(e.why.contains("overflows"), "{e}");
        let e = run_err(b"Pfoo\n");
        assert!(e.why.contains("text persistent ids"), "{e}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = Unpickler::new(b"\x80\x02\xff").load().unwrap_err();
        assert_eq!((e.offset, e.op), (2, None));
        assert!(e.why.contains("unknown opcode 0xff"), "{e}");
        assert!(e.to_string().contains("at byte 2"), "{e}");
        for op in [b'S', b'V', 0x82, 0x83, 0x84, 0x97, 0x98] {
            let e = Unpickler::new(&[0x80, 2, op, b'\n', b'.'])
                .load()
                .unwrap_err();
            assert!(e.why.contains("opcode"), "{e}");
        }
        let e = Unpickler::new(b"\x80\x06.").load().unwrap_err();
        assert!(e.why.contains("protocol 6"), "{e}");
        let e = Unpickler::new(b"\x80\x02K\x01").load().unwrap_err();
        assert!(e.why.contains("before STOP"), "{e}");
        let e = Unpickler::new(b"\x80\x02X\xff\xff\xff\xff")
            .load()
            .unwrap_err();
        assert!(e.why.contains("only 0 remain"), "{e}");
        let e = Unpickler::new(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff")
            .load()
            .unwrap_err();
        assert!(
            e.why.contains("needs 18446744073709551615 more bytes"),
            "{e}"
        );
        let e = Unpickler::new(b"\x80\x02cos\nsys").load().unwrap_err();
        assert!(e.why.contains("unterminated"), "{e}");
        assert!(Unpickler::new(b"").load().is_err());
        let e = run_err(b"R");
        assert!(e.why.contains("underflow"), "{e}");
        let e = run_err(b"t");
        assert!(e.why.contains("no MARK"), "{e}");
    }

    #[test]
    fn limits() {
        // A million MARKs then nothing: within limits, fails at STOP (underflow), quickly.
        let body = vec![b'('; 1_000_000];
        assert!(run(&body).is_err());
        // Too many objects.
        let body = vec![b']'; MAX_PICKLE_OBJECTS + 1];
        let e = run_err(&body);
        assert!(
            e.why.contains("more than") || e.why.contains("deeper"),
            "{e}"
        );
        // Too many container items (appending None over and over).
        let mut body = b"]".to_vec();
        for _ in 0..(2 * MAX_PICKLE_OBJECTS + 2) {
            body.extend(b"Na");
        }
        let e = run_err(&body);
        assert!(e.why.contains("items"), "{e}");
    }

    #[test]
    fn dimensions_keys_and_tensor_counts_are_capped() {
        let dims = [1u8; MAX_DIMS + 1];
        let e = run_err(&tensor("FloatStorage", "0", 1, 0, &dims, &dims));
        assert!(e.why.contains("33 dimensions, more than 32"), "{e}");
        assert!(run(&tensor("FloatStorage", "0", 1, 0, &dims[1..], &dims[1..])).is_ok());
        let long_key = "7".repeat(MAX_KEY_LEN + 1);
        let e = run_err(&tensor("FloatStorage", &long_key, 1, 0, &[], &[]));
        assert!(e.why.contains("storage key"), "{e}");

        // The same memoised call repeated: every REDUCE builds a tensor, until the cap.
        let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
        let split = global("torch._utils", "_rebuild_tensor_v2").len();
        let mut body = t[..split].to_vec();
        body.extend(b"q\x00");
        body.extend(&t[split..t.len() - 1]);
        body.extend(b"q\x01R0");
        for _ in 0..MAX_TENSORS + 1 {
            body.extend(b"h\x00h\x01R0");
        }
        body.push(b'N');
        let e = run_err(&body);
        assert!(e.why.contains("more than 262144 tensors"), "{e}");
    }

    #[test]
    fn memoised_keys_are_recognised_by_identity() {
        // d = {}; 100000 times d[k] = i with k one memoised string.
        let mut body = b"}".to_vec();
        body.extend(binunicode(&"k".repeat(1000)));
        body.extend(b"q\x01K\x00s");
        for i in 0..100_000u32 {
            body.extend(b"h\x01J");
            body.extend(i.to_le_bytes());
            body.push(b's');
        }
        let p = run(&body).unwrap();
        let Some(Node::Dict(pairs)) = p.node(p.root) else {
            panic!("not a dict")
        };
        assert_eq!(pairs.len(), 100_001);
        let e = p.str_entries(pairs);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1, Value::Int(99_999));
    }

    #[test]
    fn self_reference_is_harmless() {
        // l = []; l.append(l); d = {}; d['d'] = d
        let p = run(b"]q\x00h\x00a0}q\x01X\x01\x00\x00\x00dh\x01s").unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Dict(_))));
    }

    /// The names of the state dict's tensors.
    fn parse_state(body: &[u8]) -> std::result::Result<Vec<String>, String> {
        let p = run(body).map_err(|e| e.to_string())?;
        let found = find_state_dict(&p)?;
        Ok(found.into_iter().map(|(name, _)| name).collect())
    }

    #[test]
    fn state_dict_location() {
        let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
        let sd = [
            b"}(".to_vec(),
            binunicode("w"),
            t.clone(),
            binunicode("n"),
            b"K\x01u".to_vec(),
        ]
        .concat();
        // Top level.
        let r = parse_state(&sd).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r, ["w"]);
        // Under each wrapper key, with other entries around.
        for key in STATE_DICT_KEYS {
            let body = [
                b"}(".to_vec(),
                binunicode("epoch"),
                b"K\x03".to_vec(),
                binunicode("optimizer"),
                b"}".to_vec(),
                binunicode(key),
                sd.clone(),
                b"u".to_vec(),
            ]
            .concat();
            let r = parse_state(&body).unwrap();
            assert_eq!(r.len(), 1, "{key}");
        }
        // `model` holding a pickled module, `state_dict` the dict: the dict wins.
        let body = [
            b"}(".to_vec(),
            binunicode("model"),
            global("m", "Net"),
            b")\x81".to_vec(),
            binunicode("state_dict"),
            sd.clone(),
            b"u".to_vec(),
        ]
        .concat();
        assert_eq!(parse_state(&body).unwrap().len(), 1);
        // Only a pickled module.
        let body = [
            b"}(".to_vec(),
            binunicode("model"),
            global("m", "Net"),
            b")\x81u".to_vec(),
        ]
        .concat();
        let e = parse_state(&body).unwrap_err();
        assert!(e.contains("'model' holds a m.Net object"), "{e}");
        // Not a dict at all.
        let e = parse_state(&[global("m", "Net"), b")\x81".to_vec()].concat()).unwrap_err();
        assert!(e.contains("holds a m.Net object, not a dict"), "{e}");
        let e = parse_state(b"}").unwrap_err();
        assert!(e.contains("keys: none"), "{e}");
        let e = parse_state(&[b"}".to_vec(), binunicode("a"), b"K\x01s".to_vec()].concat())
            .unwrap_err();
        assert!(e.contains("'a'"), "{e}");
    }

    fn view(dtype: DType, numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: dtype.clone(),
                numel,
            },
            dtype,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
            neg: false,
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn gather_views() {
        let storage: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let bytes = f32_bytes(&storage);
        // Contiguous with offset.
        let t = view(DType::F32, 24, 3, &[2, 2], &[2, 1]);
        assert_eq!(gather(&t, &bytes, false).unwrap(), [3.0, 4.0, 5.0, 6.0]);
        // Transpose of a [3, 4] matrix.
        let t = view(DType::F32, 24, 0, &[4, 3], &[1, 4]);
        assert_eq!(
            gather(&t, &bytes, false).unwrap(),
            [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
        );
        // 3-d permuted with offset, a size-1 dimension with a huge stride, and an expanded
        // (stride 0) dimension.
        let t = view(DType::F32, 24, 1, &[2, 1, 3], &[12, u64::MAX / 2, 4]);
        assert_eq!(
            gather(&t, &bytes, false).unwrap(),
            [1.0, 5.0, 9.0, 13.0, 17.0, 21.0]
        );
        let t = view(DType::F32, 24, 2, &[3, 2], &[0, 1]);
        assert_eq!(
            gather(&t, &bytes, false).unwrap(),
            [2.0, 3.0, 2.0, 3.0, 2.0, 3.0]
        );
        // 0-d.
        let t = view(DType::F32, 24, 23, &[], &[]);
        assert_eq!(gather(&t, &bytes, false).unwrap(), [23.0]);
        // Empty.
        let t = view(DType::F32, 24, 0, &[0, 3], &[3, 1]);
        assert!(gather(&t, &bytes, false).unwrap().is_empty());
        // Negated.
        let mut t = view(DType::F32, 24, 1, &[2], &[1]);
        t.neg = true;
        assert_eq!(gather(&t, &bytes, false).unwrap(), [-1.0, -2.0]);
        // Past the end.
        let t = view(DType::F32, 24, 5, &[4, 3], &[1, 8]); // last = 5 + 3 + 16 = 24
        assert!(gather(&t, &bytes, false).is_err());
        let t = view(DType::F32, 24, 0, &[2, 2], &[u64::MAX, 1]);
        assert!(gather(&t, &bytes, false).is_err());
        // Shorter bytes than declared (never reached through the archive, still safe).
        let t = view(DType::F32, 24, 0, &[24], &[1]);
        assert!(gather(&t, &bytes[..20], false).is_err());
    }

    #[test]
    fn gather_dtypes_and_byte_order() {
        let halves: [u16; 3] = [0x3c00, 0xc000, 0x0001]; // 1, -2, 2^-24
        let le: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        let be: Vec<u8> = halves.iter().flat_map(|h| h.to_be_bytes()).collect();
        let t = view(DType::F16, 3, 0, &[3], &[1]);
        let want = [1.0, -2.0, 2f32.powi(-24)];
        assert_eq!(gather(&t, &le, false).unwrap(), want);
        assert_eq!(gather(&t, &be, true).unwrap(), want);
        let bf: [u16; 2] = [0x3f80, 0xc040]; // 1, -3
        let le: Vec<u8> = bf.iter().flat_map(|h| h.to_le_bytes()).collect();
        let t = view(DType::BF16, 2, 0, &[2], &[1]);
        assert_eq!(gather(&t, &le, false).unwrap(), [1.0, -3.0]);
        let d: Vec<u8> = [0.5f64, -1.25]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let t = view(DType::F64, 2, 0, &[2], &[1]);
        assert_eq!(gather(&t, &d, true).unwrap(), [0.5, -1.25]);
        let f: Vec<u8> = [7.5f32].iter().flat_map(|x| x.to_be_bytes()).collect();
        let t = view(DType::F32, 1, 0, &[], &[]);
        assert_eq!(gather(&t, &f, true).unwrap(), [7.5]);
        let t = view(DType::I64, 1, 0, &[], &[]);
        assert!(gather(&t, &[0; 8], false).is_err());
    }

    #[test]
    fn dtype_names() {
        for (class, dt) in [
            ("FloatStorage", DType::F32),
            ("HalfStorage", DType::F16),
            ("BFloat16Storage", DType::BF16),
            ("DoubleStorage", DType::F64),
            ("LongStorage", DType::I64),
            ("UntypedStorage", DType::U8),
        ] {
            assert_eq!(DType::from_storage_class(class), dt);
        }
        assert_eq!(DType::from_dtype_name("half"), DType::F16);
        assert_eq!(DType::from_dtype_name("float8_e4m3fn").size(), None);
        assert!(opcode_name(b'Q') == Some("BINPERSID") && opcode_name(0xff).is_none());
    }

    #[test]
    fn safetensors_roundtrip() {
        let tensors: Vec<NamedTensor> = vec![
            ("a".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ("s".into(), vec![], vec![5.0]),
        ];
        let bytes = to_safetensors_bytes(&tensors).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let a = st.tensor("a").unwrap();
        assert_eq!(a.shape(), &[2, 2]);
        assert_eq!(a.data(), &f32_bytes(&[1.0, 2.0, 3.0, 4.0])[..]);
        assert_eq!(st.tensor("s").unwrap().shape(), &[] as &[usize]);
        let dup = vec![tensors[0].clone(), tensors[0].clone()];
        assert!(to_safetensors_bytes(&dup).is_err());
        let wrong: Vec<NamedTensor> = vec![("a".into(), vec![3], vec![1.0])];
        assert!(to_safetensors_bytes(&wrong).is_err());
    }

    #[test]
    fn formats_are_sniffed() {
        assert_eq!(detect_format(b"PK\x03\x04rest"), WeightFormat::Checkpoint);
        assert_eq!(detect_format(&LEGACY_MAGIC), WeightFormat::Checkpoint);
        assert_eq!(
            detect_format(b"\x08\x01\x00\x00"),
            WeightFormat::Safetensors
        );
        assert_eq!(detect_format(b""), WeightFormat::Safetensors);
    }
}
