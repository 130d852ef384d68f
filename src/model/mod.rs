//! Leaf types of a model: configurations, weights, storage precision, class names and
//! deterministic synthetic weights. Nothing here depends on another module of this crate
//! except [`crate::error`] and [`crate::rng`].

pub mod classes;
pub mod config;
pub mod precision;
pub mod synthetic;
pub mod weights;

pub use classes::imagenet_class;
pub use config::{
    Arch, LeadMerging, ModelConfig, Readout, StageConfig, VitConfig, VitPool, DEFAULT_MODEL,
    MODEL_NAMES, SRET_MODEL_NAMES, VIT_FAMILY_NAMES, VIT_MODEL_NAMES,
};
pub use precision::Precision;
pub use synthetic::{synthetic_images, synthetic_weights};
pub use weights::ModelWeights;

use crate::error::Result;

/// A model's configuration with its weights.
#[derive(Clone, Debug)]
pub struct Model {
    /// Architecture and sizes.
    pub cfg: ModelConfig,
    /// Parameters, in the layout the CPU twin and the planner read.
    pub weights: ModelWeights,
    /// Whether the weights are synthetic (made by [`synthetic_weights`], not read from a file):
    /// its classes mean nothing.
    pub synthetic: bool,
}

impl Model {
    /// Model `name` with deterministic synthetic weights ([`synthetic::SYNTHETIC_WEIGHT_SEED`]).
    /// Without its published weights the classes a model prints are meaningless; the numbers
    /// are still exact, so tests, benchmarks and merge pictures work.
    pub fn synthetic(name: &str) -> Result<Model> {
        let cfg = ModelConfig::by_name(name)?;
        Ok(Model {
            weights: synthetic_weights(&cfg, synthetic::SYNTHETIC_WEIGHT_SEED),
            cfg,
            synthetic: true,
        })
    }
}
