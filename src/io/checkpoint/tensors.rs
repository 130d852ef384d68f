//! Storages and tensor views of a checkpoint: dtypes, strides checked against their
//! storage, and the gather of a view into contiguous f32.

use super::*;

/// Element types of torch storages and tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DType {
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
    pub(super) fn from_storage_class(name: &str) -> DType {
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

    pub(super) fn other(name: &str) -> DType {
        DType::Other(name.chars().take(32).collect())
    }

    /// From a `torch.<dtype>` global (`torch.float32`, `torch.half`, ...).
    pub(super) fn from_dtype_name(name: &str) -> DType {
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

    pub(super) fn size(&self) -> Option<u64> {
        Some(match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Other(_) => return None,
        })
    }

    pub(super) fn is_float(&self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    pub(super) fn name(&self) -> &str {
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
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) dtype: DType,
    /// Declared number of elements of `dtype`.
    pub(super) numel: u64,
}

impl StorageRef {
    pub(super) fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.dtype.size()?)
    }
}

/// A tensor: a strided view of a storage, already checked to lie inside it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TensorRef {
    pub(super) storage: StorageRef,
    pub(super) dtype: DType,
    /// In elements of `dtype`.
    pub(super) offset: u64,
    pub(super) size: Vec<u64>,
    pub(super) stride: Vec<u64>,
    /// torch's lazy negation bit (`metadata = {'neg': True}`).
    pub(super) neg: bool,
}

impl TensorRef {
    /// Product of the sizes (checked not to overflow when the tensor was built).
    pub(super) fn numel(&self) -> u64 {
        self.size.iter().product()
    }

    /// Checks the view against the storage; returns an error message.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
pub(super) fn gather(
    t: &TensorRef,
    bytes: &[u8],
    big_endian: bool,
) -> std::result::Result<Vec<f32>, String> {
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
