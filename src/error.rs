//! The library's one error type. Every message names the file, tensor, argument or limit at
//! fault and what was expected, so the CLI can print it as is.

use std::path::PathBuf;

/// `std::result::Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate: bad arguments, unreadable or mismatched files,
/// and GPU failures. The `Display` text is a complete, user-facing message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model name that is not in the built-in list.
    #[error("unknown model '{name}' (known: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// An argument (command-line option, schedule string, builder setting) that cannot be used.
    #[error("invalid {what} '{value}': {why}")]
    InvalidArgument {
        /// Which argument, e.g. `"schedule"` or `"precision"`.
        what: &'static str,
        /// The value given, as text.
        value: String,
        /// Why it was rejected and what was expected.
        why: String,
    },

    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A `.safetensors` file whose header or data is malformed.
    #[error("{path}: not a valid safetensors file: {why}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },

    /// A weight file lacks a tensor the model needs.
    #[error("{path}: tensor '{name}' is missing")]
    MissingTensor {
        /// The weight file.
        path: PathBuf,
        /// The missing tensor's name.
        name: String,
    },

    /// A weight file holds a tensor the model does not have (likely the wrong model).
    #[error("{path}: unexpected tensor '{name}' (not part of model {model})")]
    UnexpectedTensor {
        /// The weight file.
        path: PathBuf,
        /// The extra tensor's name.
        name: String,
        /// The model the file was read for.
        model: String,
    },

    /// A tensor whose shape differs from the one the model configuration implies.
    #[error("{path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor stored in an element type this crate cannot read.
    #[error("{path}: tensor '{name}' has dtype {found}, expected one of {expected}")]
    DtypeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The accepted element types, as text.
        expected: String,
        /// The element type in the file.
        found: String,
    },

    /// A checkpoint stores the recursively shared block under two names with different values.
    #[error("{path}: the shared block is stored twice, as '{first}' and '{second}', and the two copies differ")]
    SharedCopiesDiffer {
        /// The weight file.
        path: PathBuf,
        /// The name of the first copy.
        first: String,
        /// The name of the second copy, whose values differ from the first.
        second: String,
    },

    /// A PyTorch `.pth` checkpoint that cannot be unpacked (zip, pickle or storage problem).
    #[error("{path}: not a readable PyTorch checkpoint: {why}")]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },

    /// An image file that cannot be decoded.
    #[error("{path}: cannot decode image: {why}")]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// The decoder's complaint.
        why: String,
    },

    /// No wgpu adapter matched the request.
    #[error("no GPU adapter found{detail}")]
    NoAdapter {
        /// Text appended to the message (the index asked for, or wgpu's error and a hint).
        detail: String,
    },

    /// A device feature a requested mode needs is not enabled (`on` says whether the adapter
    /// lacks it or the application's device was created without it).
    #[error("{on} lacks {feature}: {hint}")]
    MissingFeature {
        /// The wgpu feature, e.g. `"SHADER_F16"`.
        feature: &'static str,
        /// What lacks it: the adapter or the application's device, by name.
        on: String,
        /// What to do instead.
        hint: String,
    },

    /// A device limit is below what the planned forward needs.
    #[error("the GPU device's {limit} is {have}, and this forward needs {needed}: {hint}")]
    DeviceLimit {
        /// The wgpu limit's name, e.g. `"max_storage_buffer_binding_size"`.
        limit: &'static str,
        /// The value the forward needs.
        needed: u64,
        /// The device's value.
        have: u64,
        /// What to change (batch size, precision, device limits).
        hint: String,
    },

    /// `Adapter::request_device` failed; the text is wgpu's error.
    #[error("GPU device request failed: {0}")]
    RequestDevice(String),

    /// A GPU operation failed: a wgpu validation or out-of-memory error, or a missing
    /// readback buffer.
    #[error("GPU error during {during}: {why}")]
    Gpu {
        /// The step that failed, e.g. planning or a forward.
        during: String,
        /// wgpu's error text, or what went wrong.
        why: String,
    },

    /// Something that runs one at a time is already running (the engine's traced forward,
    /// whose trace buffers are one per engine).
    #[error("{what} is already in flight: await it first, or build a second engine")]
    Busy {
        /// What is running.
        what: String,
    },

    /// The GPU device was lost (driver reset, removal); the engine must be rebuilt.
    #[error("the GPU device was lost during {during}{detail}")]
    DeviceLost {
        /// The step that was running.
        during: String,
        /// The reason, in parentheses after a space, or empty when unknown.
        detail: String,
    },

    /// A forward's commands did not run (a validation error of the command buffer: an input
    /// of another device, a destroyed input, an encoder that was never submitted), so the
    /// logits read back would be an earlier forward's: none are returned.
    #[error("the forward's commands did not run, so it has no logits of its own: {why}")]
    NotRun {
        /// What was seen, and the likely causes.
        why: String,
    },

    /// An output file could not be written.
    #[error("cannot write {path}: {why}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's or encoder's error.
        why: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::InvalidArgument`]: argument `what` had `value`, rejected because `why`.
    pub fn arg(what: &'static str, value: impl ToString, why: impl ToString) -> Self {
        Error::InvalidArgument {
            what,
            value: value.to_string(),
            why: why.to_string(),
        }
    }
}
