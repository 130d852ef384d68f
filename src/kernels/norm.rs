//! LayerNorm over the channels of every token, and global average pooling over tokens.

use crate::kernels::merge::Unmerge;
use crate::kernels::params::{MeanTokensParams, NormParams};
use crate::kernels::{Family, Kernel, KernelKey, ProgramBuilder, TensorId};

/// Record a LayerNorm over the last axis: `y[i] = (x[i] - mean) / sqrt(var + eps) * gamma + beta`
/// for each of the `rows` rows of `x [rows, c]`; `gamma` and `beta` are `[c]`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    b: &mut ProgramBuilder,
    family: Family,
    rows: usize,
    c: usize,
    eps: f32,
    x: TensorId,
    gamma: TensorId,
    beta: TensorId,
    y: TensorId,
) {
    let grid = b.grid(rows, 64);
    b.dispatch(
        family,
        KernelKey::plain(Kernel::LayerNorm),
        &NormParams {
            rows: rows as u32,
            c: c as u32,
            eps,
        },
        &[x, gamma, beta, y],
        grid,
    );
}

/// The LayerNorm statistics of a tensor's rows, as a linear layer that normalises its input
/// rows as it loads them reads them ([`crate::kernels::linear::record_normalized`]): `[rows,
/// parts]` of (mean, sum of squared deviations from it) over parts of `width` consecutive
/// columns, the last part of a row narrower where `width` does not divide it
/// (`shaders/lib/ln_row_stats.wgsl` combines them). Written by [`ln_stats`] (one part) or,
/// beside the rows themselves, by the linear layer that stored them
/// ([`crate::kernels::linear::record_with_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStats {
    /// `[rows, ceil(row length / width)]` of `(mean, M2)`, two f32 each.
    pub tensor: TensorId,
    /// Columns per part.
    pub width: usize,
}

/// The LayerNorm statistics of each row of `x [rows, c]` in one part, in a tensor of its own
/// named after `label`: for rows no kernel wrote them beside (a stage's first tokens, merged
/// tokens).
pub fn ln_stats(
    b: &mut ProgramBuilder,
    family: Family,
    rows: usize,
    c: usize,
    x: TensorId,
    label: &str,
) -> RowStats {
    let stats = b.activation_words(format!("{label} stats"), rows * 2);
    let grid = b.grid(rows, 64);
    b.dispatch(
        family,
        KernelKey::plain(Kernel::LnStats),
        &NormParams {
            rows: rows as u32,
            c: c as u32,
            eps: 0.0,
        },
        &[x, stats],
        grid,
    );
    RowStats {
        tensor: stats,
        width: c,
    }
}

/// `[batch, n, c] -> [batch, c]`, the mean over `n` tokens: those of `x`, or with `grid` the
/// `n` grid positions of the merged sequence `x` read through its unmerge map (the unmerge
/// stack folded into the mean, summed in grid order as after a gather).
#[allow(clippy::too_many_arguments)]
pub fn mean_tokens(
    b: &mut ProgramBuilder,
    family: Family,
    batch: usize,
    n: usize,
    c: usize,
    x: TensorId,
    grid: Option<Unmerge>,
    y: TensorId,
) {
    let g = b.grid(batch * c, 64);
    b.dispatch(
        family,
        KernelKey::plain(Kernel::MeanTokens),
        &MeanTokensParams {
            batch: batch as u32,
            n: n as u32,
            c: c as u32,
            n_in: grid.map_or(0, |u| u.tokens as u32),
        },
        // Without a map the kernel never reads binding 3; `x` stands in for it.
        &[x, y, grid.map_or(x, |u| u.map)],
        g,
    );
}

/// Arithmetic of a LayerNorm dispatch: 8 per element (statistics, normalise, scale, shift).
pub fn layer_norm_flops(p: &NormParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    8 * p.rows as u64 * p.c as u64
}

/// Arithmetic of a LayerNorm statistics dispatch: 4 per element.
pub fn ln_stats_flops(p: &NormParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    4 * p.rows as u64 * p.c as u64
}

/// Arithmetic of the mean over tokens: one add per element and one divide per output.
pub fn mean_tokens_flops(p: &MeanTokensParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    p.batch as u64 * p.c as u64 * (p.n as u64 + 1)
}
