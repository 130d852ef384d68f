//! sret-tome: Sliced Recursive Transformers with Token Merging, planned once and run resident
//! on the GPU through wgpu.

pub mod error;
pub mod eval;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod preprocess;
pub mod reference;
pub mod rng;
pub mod tome;

pub use error::{Error, Result};
pub mod bench;
pub mod cli;
