//! Recording helpers, one per op family: each appends the dispatch(es) of one op to a
//! [`ProgramBuilder`](crate::gpu::ProgramBuilder) with its parameters and grid. The WGSL lives in `shaders/`; the CPU twin of
//! every op lives in [`crate::reference`], and `tests/kernels.rs` checks one against the other.

pub mod attention;
pub mod conv;
pub mod linear;
pub mod norm;
pub mod params;
pub mod preprocess;
pub mod tokens;
pub mod tome;
