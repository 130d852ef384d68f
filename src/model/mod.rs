//! Model configurations, weights, the CPU reference twin and the GPU plan.

pub mod checkpoint;
pub mod config;

pub use config::{
    Arch, LeadMerging, ModelConfig, StageConfig, VitConfig, DEFAULT_MODEL, MODEL_NAMES,
    SRET_MODEL_NAMES, VIT_MODEL_NAMES,
};
pub mod cost;
pub mod engine;
pub mod load;
pub mod perm;
pub mod plan;
pub mod session;
pub mod weights;
