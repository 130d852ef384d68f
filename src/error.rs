//! The library's one error type. Every message names the file, tensor, argument or limit at
//! fault and what was expected, so the CLI can print it as is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model '{name}' (known: {known})")]
    UnknownModel { name: String, known: String },

    #[error("invalid {what} '{value}': {why}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        why: String,
    },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {why}")]
    BadSafetensors { path: PathBuf, why: String },

    #[error("{path}: tensor '{name}' is missing")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: unexpected tensor '{name}' (not part of model {model})")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        model: String,
    },

    #[error("{path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor '{name}' has dtype {found}, expected one of {expected}")]
    DtypeMismatch {
        path: PathBuf,
        name: String,
        expected: String,
        found: String,
    },

    #[error("{path}: the shared block is stored twice, as '{first}' and '{second}', and the two copies differ")]
    SharedCopiesDiffer {
        path: PathBuf,
        first: String,
        second: String,
    },

    #[error("{path}: not a readable PyTorch checkpoint: {why}")]
    BadCheckpoint { path: PathBuf, why: String },

    #[error("{path}: cannot decode image: {why}")]
    BadImage { path: PathBuf, why: String },

    #[error("no GPU adapter found{detail}")]
    NoAdapter { detail: String },

    /// A device feature a requested mode needs is not enabled (`on` says whether the adapter
    /// lacks it or the application's device was created without it).
    #[error("{on} lacks {feature}: {hint}")]
    MissingFeature {
        feature: &'static str,
        on: String,
        hint: String,
    },

    /// A device limit is below what the planned forward needs.
    #[error("the GPU device's {limit} is {have}, and this forward needs {needed}: {hint}")]
    DeviceLimit {
        limit: &'static str,
        needed: u64,
        have: u64,
        hint: String,
    },

    #[error("GPU device request failed: {0}")]
    RequestDevice(String),

    #[error("GPU error during {during}: {why}")]
    Gpu { during: String, why: String },

    #[error("the GPU device was lost during {during}{detail}")]
    DeviceLost { during: String, detail: String },

    #[error("cannot write {path}: {why}")]
    Write { path: PathBuf, why: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn arg(what: &'static str, value: impl ToString, why: impl ToString) -> Self {
        Error::InvalidArgument {
            what,
            value: value.to_string(),
            why: why.to_string(),
        }
    }
}
