//! Deterministic synthetic weights and inputs for tests and demos.
//!
//! A pure function of (config, seed): a SplitMix64 stream is consumed in a fixed order. Scales
//! keep the random network well-conditioned: linear layers preserve unit variance, the
//! ReLU-followed stem convolutions use He scaling, residual branches enter with coefficients
//! 0.5..1, LayerNorm parameters stay near identity.

use crate::model::weights::{
    BlockWeights, Conv, LayerNorm, Linear, ModelWeights, NonProjWeights, StageWeights,
};
use crate::model::{Arch, ModelConfig, VitConfig};

use crate::rng::SplitMix64;

/// Seed of the synthetic weights used when no weight file is given.
pub const SYNTHETIC_WEIGHT_SEED: u64 = 0x5E7_70E;

/// Bias values are uniform in +-BIAS.
const BIAS: f32 = 0.02;

/// `len` values uniform in `[-scale, scale)`.
fn fill(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.symmetric() * scale).collect()
}

/// `len` values uniform in `[center - spread, center + spread)`.
fn around(rng: &mut SplitMix64, len: usize, center: f32, spread: f32) -> Vec<f32> {
    (0..len)
        .map(|_| center + rng.symmetric() * spread)
        .collect()
}

fn linear(rng: &mut SplitMix64, in_features: usize, out_features: usize) -> Linear {
    let bound = (3.0 / in_features as f32).sqrt();
    Linear {
        weight: fill(rng, out_features * in_features, bound),
        bias: fill(rng, out_features, BIAS),
        out_features,
        in_features,
    }
}

fn layer_norm(rng: &mut SplitMix64, dim: usize) -> LayerNorm {
    LayerNorm {
        weight: around(rng, dim, 1.0, 0.1),
        bias: fill(rng, dim, 0.05),
    }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    rng: &mut SplitMix64,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    gain: f32,
) -> Conv {
    let fan_in = in_channels / groups * kernel * kernel;
    let bound = (gain / fan_in as f32).sqrt();
    Conv {
        weight: fill(rng, out_channels * fan_in, bound),
        bias: fill(rng, out_channels, BIAS),
        out_channels,
        in_channels,
        kernel,
        stride,
        padding,
        groups,
    }
}

/// A residual coefficient pair: keep ~1 +- 0.1, branch 0.5..1.
fn coef_pair(rng: &mut SplitMix64) -> [f32; 2] {
    [1.0 + 0.1 * rng.symmetric(), 0.75 + 0.25 * rng.symmetric()]
}

/// Deterministic synthetic weights with the shapes of `cfg`; a pure function of (cfg, seed).
pub fn synthetic_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    match &cfg.arch {
        Arch::Sret => sret_synthetic_weights(cfg, seed),
        Arch::Vit(vit) => synthetic_vit_weights(cfg, vit, seed),
    }
}

/// [`synthetic_weights`] for SReT.
fn sret_synthetic_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = SplitMix64::new(seed ^ 0x5EE7_70E5_0000_0001);
    let dim0 = cfg.stages[0].dim;
    let mid = cfg.stem_mid;
    // He scaling (gain 6) for the convolutions followed by ReLU.
    let stem = vec![
        conv(&mut rng, 3, mid, 3, 2, 1, 1, 6.0),
        conv(&mut rng, mid, dim0, 3, 2, 1, 1, 6.0),
        conv(&mut rng, dim0, dim0, 3, 2, 1, 1, 6.0),
    ];
    let side = cfg.grid_side(0);
    let pos_embed = fill(&mut rng, dim0 * side * side, 0.02);

    let mut stages = Vec::with_capacity(cfg.stages.len());
    for (s, st) in cfg.stages.iter().enumerate() {
        let d = st.dim;
        let blocks = (0..st.recursive_num)
            .map(|_| {
                let norm1 = layer_norm(&mut rng, d);
                let qkv = linear(&mut rng, d, 3 * d);
                let proj = linear(&mut rng, d, d);
                let norm2 = layer_norm(&mut rng, d);
                let fc1 = linear(&mut rng, d, st.mlp_hidden);
                let fc2 = linear(&mut rng, st.mlp_hidden, d);
                let [c1, c2] = coef_pair(&mut rng);
                let [c3, c4] = coef_pair(&mut rng);
                BlockWeights {
                    norm1,
                    qkv,
                    proj,
                    norm2,
                    fc1,
                    fc2,
                    coef: [c1, c2, c3, c4],
                }
            })
            .collect();
        let non_projs = (0..st.depth)
            .map(|_| {
                let norm1 = layer_norm(&mut rng, d);
                let fc1 = linear(&mut rng, d, st.np_hidden);
                let fc2 = linear(&mut rng, st.np_hidden, d);
                NonProjWeights {
                    norm1,
                    fc1,
                    fc2,
                    coef: coef_pair(&mut rng),
                }
            })
            .collect();
        let pool = cfg
            .stages
            .get(s + 1)
            .map(|next| conv(&mut rng, d, next.dim, 3, 2, 1, d, 3.0));
        stages.push(StageWeights {
            blocks,
            non_projs,
            pool,
            pool_fc: None,
        });
    }
    let final_dim = cfg.final_dim();
    let norm = layer_norm(&mut rng, final_dim);
    let head = linear(&mut rng, final_dim, cfg.num_classes);
    ModelWeights {
        stem,
        pos_embed,
        lead_tokens: Vec::new(),
        stages,
        norm,
        head,
        head_dist: None,
    }
}

/// DeiT / PiT: plain blocks (residual coefficients exactly 1, as the architecture has none),
/// the patch convolution, lead tokens, PiT's pooling with its lead-token map, distillation head.
fn synthetic_vit_weights(cfg: &ModelConfig, vit: &VitConfig, seed: u64) -> ModelWeights {
    let mut rng = SplitMix64::new(seed ^ 0x5EE7_70E5_0000_0002);
    let dim0 = cfg.stages[0].dim;
    let stem = vec![conv(&mut rng, 3, dim0, vit.patch, vit.stride, 0, 1, 3.0)];
    let side = cfg.grid_side(0);
    let pos_embed = fill(&mut rng, dim0 * side * side, 0.02);
    let lead_tokens = fill(&mut rng, vit.lead() * dim0, 0.5);
    let mut stages = Vec::with_capacity(cfg.stages.len());
    for (s, st) in cfg.stages.iter().enumerate() {
        let d = st.dim;
        let blocks = (0..st.recursive_num)
            .map(|_| BlockWeights {
                norm1: layer_norm(&mut rng, d),
                qkv: linear(&mut rng, d, 3 * d),
                proj: linear(&mut rng, d, d),
                norm2: layer_norm(&mut rng, d),
                fc1: linear(&mut rng, d, st.mlp_hidden),
                fc2: linear(&mut rng, st.mlp_hidden, d),
                coef: [1.0; 4],
            })
            .collect();
        let next = cfg.stages.get(s + 1);
        stages.push(StageWeights {
            blocks,
            non_projs: Vec::new(),
            pool: next.map(|n| conv(&mut rng, d, n.dim, 3, 2, 1, d, 3.0)),
            pool_fc: next.map(|n| linear(&mut rng, d, n.dim)),
        });
    }
    let final_dim = cfg.final_dim();
    let norm = layer_norm(&mut rng, final_dim);
    let head = linear(&mut rng, final_dim, cfg.num_classes);
    let head_dist = vit
        .distilled
        .then(|| linear(&mut rng, final_dim, cfg.num_classes));
    ModelWeights {
        stem,
        pos_embed,
        lead_tokens,
        stages,
        norm,
        head,
        head_dist,
    }
}

/// Deterministic synthetic "normalised images" `[batch, 3, size, size]`: a smooth random
/// pattern per image and channel plus noise, roughly unit variance.
pub fn synthetic_images(cfg: &ModelConfig, batch: usize, seed: u64) -> Vec<f32> {
    let side = cfg.image_size;
    let mut rng = SplitMix64::new(seed ^ 0x1A4A_6E50_0000_0002);
    let mut out = Vec::with_capacity(batch * 3 * side * side);
    for _ in 0..batch * 3 {
        // A few random plane waves give spatial structure; noise adds texture.
        let waves: Vec<[f32; 4]> = (0..4)
            .map(|_| {
                [
                    rng.symmetric() * 0.1,
                    rng.symmetric() * 0.1,
                    rng.unit() * std::f32::consts::TAU,
                    0.5 + 0.5 * rng.unit(),
                ]
            })
            .collect();
        for y in 0..side {
            for x in 0..side {
                let mut v = 0.0f32;
                for [fx, fy, phase, amp] in &waves {
                    v += amp * (fx * x as f32 + fy * y as f32 + phase).sin();
                }
                out.push(0.6 * v + 0.4 * rng.symmetric());
            }
        }
    }
    out
}
