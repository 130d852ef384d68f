//! Everything that runs on the device, declared and recorded: the kernel [`catalogue`] (every
//! WGSL kernel, its parameters, variant, arithmetic and needs, declared once), the
//! [`generate`]d subgroup kernels, [`pipelines`] (substitutions and the pipeline cache),
//! [`program`]s (dispatches recorded at plan time over tensors packed into an [`arena`]) and
//! one recorder per op family, each appending the dispatch(es) of one op to a
//! [`ProgramBuilder`] with its parameters and grid. The WGSL lives in `shaders/`; the CPU twin
//! of every op lives in [`crate::reference`], and `tests/kernels.rs` checks one against the
//! other.

pub mod arena;
pub mod catalogue;
pub mod generate;
pub mod pipelines;
pub mod program;
pub mod uniform;
pub mod variants;

pub mod attention;
pub mod conv;
pub mod linear;
pub mod merge;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod preprocess;
pub mod tokens;

pub use catalogue::{Kernel, Needs};
pub use pipelines::{KernelKey, PipelineCache};
pub use program::{Family, Program, ProgramBuilder, TensorId};
pub use uniform::KernelParams;
pub use variants::{KernelKind, Variant, Variants};
