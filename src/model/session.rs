//! From user choices (model, weights, schedule, seed, batch) to a ready [`Engine`]: the glue
//! every command and the library's simple entry point share.

use std::path::Path;

use super::config::ModelConfig;
use super::engine::{Engine, EngineSpec};
use super::perm::draw_permutations;
use super::weights::ModelWeights;
use crate::api::Precision;
use crate::error::Result;
use crate::gpu::{Gpu, PipelineCache};
use crate::tome::{self, Schedule, Trajectory};

/// Seed of the synthetic weights used when no weight file is given.
pub const SYNTHETIC_WEIGHT_SEED: u64 = 0x5E7_70E;
/// Default seed of the recursive passes' token permutations.
pub const DEFAULT_SEED: u64 = 0;

/// A model's configuration with its weights.
#[derive(Clone, Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub weights: ModelWeights,
    /// Whether the weights are synthetic (no file given).
    pub synthetic: bool,
}

impl Model {
    /// Load `weights` (safetensors or a `torch.save` checkpoint) for model `name`, or make
    /// deterministic synthetic weights when `None`.
    pub fn load(name: &str, weights: Option<&Path>) -> Result<Model> {
        let cfg = ModelConfig::by_name(name)?;
        match weights {
            Some(path) => Ok(Model {
                weights: super::checkpoint::load_weights(path, &cfg)?,
                cfg,
                synthetic: false,
            }),
            None => Ok(Model {
                weights: crate::reference::synthetic_weights(&cfg, SYNTHETIC_WEIGHT_SEED),
                cfg,
                synthetic: true,
            }),
        }
    }
}

/// Everything static about a forward besides the model: what merges, and which permutations.
#[derive(Clone, Debug)]
pub struct ForwardPlan {
    pub schedule: Schedule,
    pub trajectory: Trajectory,
    pub seed: u64,
    /// `perms[stage][exec]` for the permuted executions.
    pub perms: Vec<Vec<Option<Vec<u32>>>>,
}

impl ForwardPlan {
    pub fn new(cfg: &ModelConfig, schedule: &Schedule, seed: u64) -> Result<ForwardPlan> {
        let trajectory = tome::plan(cfg, schedule)?;
        let stages = cfg.stages.len();
        let mut permutes = vec![Vec::new(); stages];
        let mut tokens_in = vec![Vec::new(); stages];
        for e in &trajectory.executions {
            permutes[e.stage].push(e.permuted);
            tokens_in[e.stage].push(e.tokens_in);
        }
        Ok(ForwardPlan {
            schedule: schedule.clone(),
            perms: draw_permutations(seed, &permutes, &tokens_in),
            trajectory,
            seed,
        })
    }

    pub fn engine_spec(&self, batch: usize, trace: bool) -> EngineSpec {
        EngineSpec {
            batch,
            safe_r: self.trajectory.per_stage_safe_r(),
            perms: self.perms.clone(),
            trace,
            f16: false,
        }
    }
}

/// Plan and build an f32 engine for `model` under `plan` at `batch` images per forward.
pub fn build_engine(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Model,
    plan: &ForwardPlan,
    batch: usize,
    trace: bool,
) -> Result<Engine> {
    build_engine_with(gpu, cache, model, plan, batch, trace, Precision::F32)
}

/// As [`build_engine`], in the storage `precision` given.
pub fn build_engine_with(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &Model,
    plan: &ForwardPlan,
    batch: usize,
    trace: bool,
    precision: Precision,
) -> Result<Engine> {
    let mut spec = plan.engine_spec(batch, trace);
    spec.f16 = precision == Precision::F16;
    Engine::new(gpu, cache, &model.cfg, &model.weights, &spec)
}
