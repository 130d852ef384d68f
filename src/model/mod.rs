//! Model configurations, weights, the CPU reference twin and the GPU plan.

pub mod checkpoint;
pub mod config;

pub use config::{ModelConfig, StageConfig, DEFAULT_MODEL, MODEL_NAMES};
pub mod cost;
pub mod engine;
pub mod load;
pub mod perm;
pub mod plan;
pub mod session;
pub mod weights;
