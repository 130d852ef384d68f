//! The MLP half of a block, `y = ca * y + cb * fc2(gelu(fc1(LN(y))))`, in one dispatch
//! (`mlp_fused.wgsl`): a workgroup owns whole rows, so the hidden activations (3.6-4x the
//! row's width) stay in workgroup memory and registers instead of a round trip through global
//! memory between fc1 and fc2, and the block's MLP is one dispatch instead of two.
//!
//! It runs where the device gives [`INVOCATIONS`] invocations and [`WORKGROUP_BYTES`] of
//! workgroup memory per workgroup and the rows are at most [`MAX_COLUMNS`] wide (an invocation
//! holds 16 output columns of one row); elsewhere, or with `mlp=portable`, the MLP is fc1 and
//! fc2 as two linear layers of the linear kind's variant ([`record_pair`]).

use crate::kernels::linear::{self, padded, Epilogue, LinearWeights};
use crate::kernels::norm::RowStats;
use crate::kernels::params::MlpParams;
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId, Variant};

/// Rows of y per workgroup (the kernel's `TM`).
pub const ROWS: usize = 16;
/// Hidden columns per chunk (the kernel's `TH`).
pub const CHUNK: usize = 64;
/// Widest row the kernel takes: 16 x 16 invocations, each 16 columns of one row.
pub const MAX_COLUMNS: usize = 256;
/// Invocations of a workgroup.
pub const INVOCATIONS: u32 = 256;
/// Workgroup memory: a 16 x 16 block of rows (f32), a 16 x 64 block of `W1^T` and of hidden
/// values (vec4 of f32 each) and the rows' statistics (two f32 per row).
pub const WORKGROUP_BYTES: u32 = (256 * 4 + 2 * 256 * 16 + ROWS * 8) as u32;

/// Whether `mlp_fused.wgsl` runs a `dim -> hidden -> dim` MLP in `b`'s program: the MLP kind
/// prefers it, the device has room for its workgroups and rows are at most [`MAX_COLUMNS`]
/// wide.
pub fn fused(b: &ProgramBuilder, dim: usize) -> bool {
    b.variant(KernelKind::Mlp) == Variant::Fused
        && dim <= MAX_COLUMNS
        && Kernel::MlpFused.needs().fit(b.limits())
}

/// Width of the statistics parts the fused MLP writes: whole rows.
pub fn stats_part_width(dim: usize) -> usize {
    dim
}

/// Record `y = ca * y + cb * fc2(gelu(fc1(LN(y))))` over `m` rows of `y`, fused where
/// [`fused`] says so, else as [`record_pair`]; `norm` is the LayerNorm's row statistics and
/// epsilon (its affine part is folded into `fc1`). With `stats_after`, the statistics of the
/// rows stored are written beside them (named after `label`) and returned, for the next
/// LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn record(
    b: &mut ProgramBuilder,
    m: usize,
    fc1: &LinearWeights,
    fc2: &LinearWeights,
    coef: (f32, f32),
    norm: (RowStats, f32),
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> Option<RowStats> {
    let dim = fc1.in_features;
    if !fused(b, dim) {
        return record_pair(b, m, fc1, fc2, coef, norm, stats_after, y, label);
    }
    let stats_out = stats_after.then(|| RowStats {
        tensor: b.activation_words(format!("{label} stats"), m * 2),
        width: stats_part_width(dim),
    });
    let (stats, eps) = norm;
    let params = MlpParams {
        m: m as u32,
        k: dim as u32,
        h: fc1.out_features as u32,
        h_pad: padded(fc1.out_features) as u32,
        n: fc2.out_features as u32,
        n_pad: padded(fc2.out_features) as u32,
        mode: 2,
        ca: coef.0,
        cb: coef.1,
        norm: stats.width as u32,
        eps,
        stats_out: stats_after as u32,
    };
    let sink = b.unwritten();
    let tensors = [
        fc1.wt,
        fc1.bias,
        fc2.wt,
        fc2.bias,
        y,
        stats.tensor,
        stats_out.map_or(sink, |s| s.tensor),
    ];
    let grid = b.grid(m.div_ceil(ROWS) * INVOCATIONS as usize, INVOCATIONS);
    let key = KernelKey::plain(Kernel::MlpFused);
    b.dispatch(Family::Mlp, key, &params, &tensors, grid);
    stats_out
}

/// fc1 (GELU) and fc2 (residual) as two linear dispatches of the linear kind's variant, the
/// hidden activations through global memory; arguments as [`record`]'s.
#[allow(clippy::too_many_arguments)]
pub fn record_pair(
    b: &mut ProgramBuilder,
    m: usize,
    fc1: &LinearWeights,
    fc2: &LinearWeights,
    coef: (f32, f32),
    norm: (RowStats, f32),
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> Option<RowStats> {
    let h = b.activation(format!("{label} hidden"), m * fc1.out_features);
    let (stats, eps) = norm;
    linear::record_normalized(b, Family::Mlp, m, fc1, Epilogue::Gelu, y, stats, eps, h);
    linear::record_residual(b, Family::Mlp, m, fc2, coef, h, y, stats_after, label)
}

/// Arithmetic of one fused MLP dispatch: fc1 (`2k` per hidden value, normalising `2k` per row,
/// GELU 11 per hidden value), fc2 (`2h` per output, residual 3) and the statistics written
/// (3 per output), as the two linear dispatches would count them.
pub fn flops(p: &MlpParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (m, k, h, n) = (p.m as u64, p.k as u64, p.h as u64, p.n as u64);
    let normalise = if p.norm != 0 { 2 * m * k } else { 0 };
    let stats = if p.stats_out != 0 { 3 * m * n } else { 0 };
    m * h * (2 * k + 11) + normalise + m * n * (2 * h + 3) + stats
}
