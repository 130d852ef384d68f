//! Storage precision of a forward.

use crate::error::{Error, Result};

/// Storage precision of the forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precision {
    /// f32 storage and arithmetic everywhere.
    #[default]
    F32,
    /// Activations, weights, images and logits stored as f16 (half the memory and the bytes
    /// moved); arithmetic, accumulation, softmax and LayerNorm statistics stay f32, and so do
    /// token masses and the matching scores. Needs `Features::SHADER_F16` on the device.
    F16,
}

impl Precision {
    /// `"f32"` or `"f16"`, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(Error::arg("precision", s, "expected f32 or f16")),
        }
    }
}
