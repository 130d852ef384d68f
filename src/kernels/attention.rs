//! Fused sliced group attention with proportional attention (see `shaders/attention.wgsl`).

use crate::gpu::{Family, KernelKey, ProgramBuilder, Shader, TensorId};

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub n: usize,
    pub dim: usize,
    pub heads: usize,
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
    let grid = b.grid(s.batch * s.heads * s.n, 64);
    b.dispatch(
        Family::Attention,
        // Vector loads where the head and model widths allow them.
        KernelKey::with_head_dim(
            if hd % 4 == 0 && s.dim % 4 == 0 {
                Shader::AttentionVec4
            } else {
                Shader::Attention
            },
            hd,
        ),
        &[
            s.batch as u32,
            s.n as u32,
            s.dim as u32,
            s.heads as u32,
            s.groups as u32,
            flags,
            scale.to_bits(),
        ],
        &[qkv, perm.unwrap_or(qkv), mass.unwrap_or(qkv), out],
        grid,
    );
}
