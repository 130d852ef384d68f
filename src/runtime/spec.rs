//! [`ForwardSpec`]: everything static about a forward besides the model and its weights.

use crate::error::Result;
use crate::kernels::Variants;
use crate::model::{ModelConfig, Precision};
use crate::tome::perm::draw_permutations;
use crate::tome::{Schedule, Trajectory};

/// What a forward is planned for, besides the model: the merging schedule and the token counts
/// it gives, the recursive passes' permutations, the batch size, whether merge maps are read
/// back, and the storage precision. Token counts depend only on this, never on the images, so a
/// forward is planned once per spec.
#[derive(Clone, Debug)]
pub struct ForwardSpec {
    /// The schedule asked for.
    pub schedule: Schedule,
    /// Its token counts per block execution, bounded by Eq. 3.
    pub trajectory: Trajectory,
    /// Seed of the permutations.
    pub seed: u64,
    /// `safe_r[stage][exec]`: tokens merged by each `Transformer_Block` execution.
    pub safe_r: Vec<Vec<usize>>,
    /// `perms[stage][exec]` for the permuted executions.
    pub perms: Vec<Vec<Option<Vec<u32>>>>,
    /// Images per forward (when recording a program: per micro-batch).
    pub batch: usize,
    /// Keep every merge's slot map and masses and every stage's unmerge map for readback.
    pub trace: bool,
    /// Storage precision of activations, weights, images and logits.
    pub precision: Precision,
    /// The kernel variant each kernel kind prefers.
    pub kernels: Variants,
}

impl ForwardSpec {
    /// `schedule` on `cfg` with the permutations of `seed`: one image, no trace, f32.
    pub fn new(cfg: &ModelConfig, schedule: &Schedule, seed: u64) -> Result<ForwardSpec> {
        let trajectory = Trajectory::new(cfg, schedule)?;
        let stages = cfg.stages.len();
        let mut permutes = vec![Vec::new(); stages];
        let mut tokens_in = vec![Vec::new(); stages];
        for e in &trajectory.executions {
            permutes[e.stage].push(e.permuted);
            tokens_in[e.stage].push(e.tokens_in);
        }
        Ok(ForwardSpec {
            schedule: schedule.clone(),
            safe_r: trajectory.per_stage_safe_r(),
            perms: draw_permutations(seed, &permutes, &tokens_in),
            trajectory,
            seed,
            batch: 1,
            trace: false,
            precision: Precision::F32,
            kernels: Variants::default(),
        })
    }

    /// The same spec at `batch` images per forward.
    pub fn with_batch(mut self, batch: usize) -> ForwardSpec {
        self.batch = batch;
        self
    }

    /// The same spec, reading merge maps back (`trace`) or not.
    pub fn with_trace(mut self, trace: bool) -> ForwardSpec {
        self.trace = trace;
        self
    }

    /// The same spec in storage `precision`.
    pub fn with_precision(mut self, precision: Precision) -> ForwardSpec {
        self.precision = precision;
        self
    }

    /// The same spec preferring the kernel `variants`.
    pub fn with_kernels(mut self, variants: Variants) -> ForwardSpec {
        self.kernels = variants;
        self
    }

    /// Whether storage is f16.
    pub fn f16(&self) -> bool {
        self.precision == Precision::F16
    }
}
