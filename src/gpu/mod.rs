//! GPU plumbing: the device context, the shader/pipeline cache and planned programs.

pub mod context;
pub mod limits;
pub mod params;
pub mod program;
pub mod shaders;
pub mod variants;

pub use context::{read_buffer, AdapterChoice, Gpu};
pub use params::KernelParams;
pub use program::{Family, Program, ProgramBuilder, TensorId};
pub use shaders::{KernelKey, PipelineCache, Shader};
pub use variants::{KernelKind, Variant, Variants};
