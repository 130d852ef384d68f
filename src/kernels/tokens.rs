//! Moving runs of tokens between sequences: the lead (class, distillation) tokens of DeiT and
//! PiT go in front of the patch tokens and come out again for pooling and the heads. CPU twin:
//! [`crate::reference::copy_tokens`].

use crate::kernels::params::CopyTokensParams;
use crate::kernels::{Family, Kernel, KernelKey, ProgramBuilder, TensorId};

/// `out[b, out_off + t] = x[b, in_off + t]` for `t < count`, rows of `c` channels.
#[derive(Clone, Copy, Debug)]
pub struct TokenCopy {
    /// Images in the batch.
    pub batch: usize,
    /// Tokens copied per image.
    pub count: usize,
    /// Channels per token.
    pub c: usize,
    /// Tokens per image of `x`; 0 when `x` is one sequence shared by all images.
    pub in_tokens: usize,
    /// First source token in each image of `x`.
    pub in_off: usize,
    /// Tokens per image of `out`.
    pub out_tokens: usize,
    /// First destination token in each image of `out`.
    pub out_off: usize,
}

/// Record the copy `s` from `x` into `out`.
pub fn record_copy(
    b: &mut ProgramBuilder,
    family: Family,
    s: TokenCopy,
    x: TensorId,
    out: TensorId,
) {
    let g = b.grid(s.batch * s.count * s.c, 64);
    b.dispatch(
        family,
        KernelKey::plain(Kernel::CopyTokens),
        &CopyTokensParams {
            batch: s.batch as u32,
            count: s.count as u32,
            c: s.c as u32,
            in_tokens: s.in_tokens as u32,
            in_off: s.in_off as u32,
            out_tokens: s.out_tokens as u32,
            out_off: s.out_off as u32,
        },
        &[x, out],
        g,
    );
}

/// Moves of a token copy: one per element of the output binding (its bytes / 4).
pub fn copy_tokens_flops(_p: &CopyTokensParams, _key: &KernelKey, bound: &[u64]) -> u64 {
    bound.last().copied().unwrap_or(0) / 4
}
