//! Fused sliced group attention with proportional attention (see `shaders/attention.wgsl`).

use crate::kernels::params::AttentionParams;
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId, Variant};

/// Sizes of one sliced group attention: `n` tokens split into `groups` equal groups, each
/// attending only within itself.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per image; a multiple of `groups`.
    pub n: usize,
    /// Channels of the model; `qkv` is `[batch, n, 3 * dim]`.
    pub dim: usize,
    /// Attention heads; divides `dim`.
    pub heads: usize,
    /// Groups of sliced attention (1 is global attention).
    pub groups: usize,
}

/// `perm`: tokens are grouped in this order (torch's `x[:, perm]`); `mass`: add `log(mass)` of
/// each key. `out` is written in the original token order.
pub fn record(
    b: &mut ProgramBuilder,
    s: AttentionShape,
    qkv: TensorId,
    perm: Option<TensorId>,
    mass: Option<TensorId>,
    out: TensorId,
) {
    let hd = s.dim / s.heads;
    let flags = perm.is_some() as u32 | (mass.is_some() as u32) << 1;
    let scale = (hd as f32).powf(-0.5);
    // One query per invocation, vector loads where the widths allow; with subgroups of SG
    // lanes and heads of 32, SG queries share every key through subgroup broadcasts.
    let sg = b
        .subgroup_for(KernelKind::Attention)
        .filter(|_| hd == 32 && s.dim.is_multiple_of(4));
    let vec4 = b.variant(KernelKind::Attention) != Variant::Portable;
    let (key, grid) = if let Some(sg) = sg {
        let blocks = (s.n / s.groups).div_ceil(sg as usize);
        let tiles = s.batch * s.heads * s.groups * blocks;
        (
            KernelKey::with_sg(Kernel::AttentionSg, sg),
            b.grid(tiles * sg as usize, sg),
        )
    } else if vec4 && hd.is_multiple_of(4) && s.dim.is_multiple_of(4) {
        (
            KernelKey::with_head_dim(Kernel::AttentionVec4, hd),
            b.grid(s.batch * s.heads * s.n, 64),
        )
    } else {
        (
            KernelKey::with_head_dim(Kernel::Attention, hd),
            b.grid(s.batch * s.heads * s.n, 64),
        )
    };
    b.dispatch(
        Family::Attention,
        key,
        &AttentionParams {
            batch: s.batch as u32,
            n: s.n as u32,
            dim: s.dim as u32,
            heads: s.heads as u32,
            groups: s.groups as u32,
            flags,
            scale,
        },
        &[qkv, perm.unwrap_or(qkv), mass.unwrap_or(qkv), out],
        grid,
    );
}

/// Arithmetic of one attention dispatch: per group of `n / groups` tokens, `q k^T` and `p v`
/// (`4 n ng dim`), the softmax with proportional attention (`7` per score and head) and the
/// normalisation.
pub fn flops(p: &AttentionParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (batch, n, dim, heads) = (p.batch as u64, p.n as u64, p.dim as u64, p.heads as u64);
    let ng = n / (p.groups.max(1) as u64);
    batch * (4 * n * ng * dim + 7 * heads * n * ng + n)
}
