//! The MLP half of a block, `y = ca * y + cb * fc2(gelu(fc1(LN(y))))`, in one dispatch
//! (`mlp_fused.wgsl`): a workgroup owns whole rows, so the hidden activations (3.6-4x the
//! row's width) stay in workgroup memory and registers instead of a round trip through global
//! memory between fc1 and fc2, the LayerNorm's row statistics are measured where the rows are
//! read (no statistics written by the kernel before it, no statistics dispatch), and the
//! block's MLP is one dispatch instead of two.
//!
//! Where no token merge separates them, the attention half's output projection and residual,
//! `y = pa * y + pb * proj(attn)`, runs in the same dispatch ([`Projection`]): the projected
//! rows are stored once instead of being written by the projection and read back by the MLP,
//! and a block is three dispatches (`qkv`, attention, this) instead of four.
//!
//! It runs where the device gives [`INVOCATIONS`] invocations, [`WORKGROUP_BYTES`] of
//! workgroup memory and [`STORAGE_BUFFERS`] storage buffers and the rows are at most
//! [`MAX_COLUMNS`] wide (an invocation holds 16 output columns of one row); elsewhere, or with
//! `mlp=portable`, the projection and the MLP's fc1 and fc2 are linear layers of the linear
//! kind's variant ([`record_pair`]).

use crate::kernels::linear::{self, padded, Epilogue, LinearWeights};
use crate::kernels::norm::{self, RowStats};
use crate::kernels::params::MlpParams;
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId, Variant};
use crate::model::weights::Linear;

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

/// Storage buffers `mlp_fused.wgsl` binds (WebGPU's default limit).
pub const STORAGE_BUFFERS: u32 = 8;

/// Whether `mlp_fused.wgsl` runs a `dim -> hidden -> dim` MLP in `b`'s program: the MLP kind
/// prefers it, the device has room for its workgroups and bindings and rows are at most
/// [`MAX_COLUMNS`] wide.
pub fn fused(b: &ProgramBuilder, dim: usize) -> bool {
    b.variant(KernelKind::Mlp) == Variant::Fused
        && dim <= MAX_COLUMNS
        && b.limits().max_storage_buffers_per_shader_stage >= STORAGE_BUFFERS
        && Kernel::MlpFused.needs().fit(b.limits())
}

/// The attention half's output projection and residual, `y = pa * y + pb * (attn Wp^T + bp)`,
/// for [`record`] to run in front of the MLP.
#[derive(Clone, Copy, Debug)]
pub struct Projection<'a> {
    /// The attention's output, `[m, dim]`.
    pub attn: TensorId,
    /// The projection as a linear layer (for the unfused MLP).
    pub weights: &'a LinearWeights,
    /// The same weights as the fused kernel reads them ([`upload_projection`]); without them
    /// the MLP runs unfused.
    pub packed: Option<TensorId>,
    /// `(pa, pb)`.
    pub coef: (f32, f32),
}

/// Upload a projection for the fused MLP: `W^T` in [`linear::gpu_layout`]'s layout with the
/// bias as one more row, in one tensor (the kernel binds WebGPU's default eight storage
/// buffers, with none to spare for a ninth).
pub fn upload_projection(b: &mut ProgramBuilder, name: &str, l: &Linear) -> TensorId {
    let (mut wt, bias) = linear::gpu_layout(l);
    wt.extend_from_slice(&bias);
    b.weights(format!("{name}.weight^T+bias"), &wt)
}

/// Width of the statistics parts the fused MLP writes: whole rows.
pub fn stats_part_width(dim: usize) -> usize {
    dim
}

/// Record `y = ca * y + cb * fc2(gelu(fc1(LN(y))))` over `m` rows of `y`, after `proj` when
/// given, fused where [`fused`] says so (and the projection comes packed), else as
/// [`record_pair`]; either way a projection given here counts in the MLP's family; `norm` is the LayerNorm's
/// epsilon and the row statistics of `y` where its writer left them (its affine part is folded
/// into `fc1`; the fused kernel measures the statistics itself and the unfused pair measures
/// them with `ln_stats` where none are given). With `stats_after`, the statistics of the rows
/// stored are written beside them (named after `label`) and returned, for the next LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn record(
    b: &mut ProgramBuilder,
    m: usize,
    fc1: &LinearWeights,
    fc2: &LinearWeights,
    coef: (f32, f32),
    norm: (Option<RowStats>, f32),
    proj: Option<Projection>,
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> Option<RowStats> {
    let dim = fc1.in_features;
    if !fused(b, dim) || proj.is_some_and(|p| p.packed.is_none()) {
        return record_pair(b, m, fc1, fc2, coef, norm, proj, stats_after, y, label);
    }
    let stats_out = stats_after.then(|| RowStats {
        tensor: b.activation_words(format!("{label} stats"), m * 2),
        width: stats_part_width(dim),
    });
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
        norm: 1,
        eps: norm.1,
        stats_out: stats_after as u32,
        proj: proj.is_some() as u32,
        pa: proj.map_or(0.0, |p| p.coef.0),
        pb: proj.map_or(0.0, |p| p.coef.1),
    };
    let sink = b.unwritten();
    // Without a projection its two bindings read fc1's weights (never touched).
    let tensors = [
        fc1.wt,
        fc1.bias,
        fc2.wt,
        fc2.bias,
        y,
        proj.and_then(|p| p.packed).unwrap_or(fc1.wt),
        proj.map_or(fc1.wt, |p| p.attn),
        stats_out.map_or(sink, |s| s.tensor),
    ];
    let grid = b.grid(m.div_ceil(ROWS) * INVOCATIONS as usize, INVOCATIONS);
    let key = KernelKey::plain(Kernel::MlpFused);
    b.dispatch(Family::Mlp, key, &params, &tensors, grid);
    stats_out
}

/// The projection (when given, a residual linear dispatch), then fc1 (GELU) and fc2
/// (residual) as two linear dispatches of the linear kind's variant, the hidden activations
/// through global memory; arguments as [`record`]'s.
#[allow(clippy::too_many_arguments)]
pub fn record_pair(
    b: &mut ProgramBuilder,
    m: usize,
    fc1: &LinearWeights,
    fc2: &LinearWeights,
    coef: (f32, f32),
    norm: (Option<RowStats>, f32),
    proj: Option<Projection>,
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> Option<RowStats> {
    let dim = fc1.in_features;
    let (known, eps) = norm;
    let known = match proj {
        Some(p) => {
            let fam = Family::Mlp;
            let out = format!("{label} proj");
            linear::record_residual(b, fam, m, p.weights, p.coef, p.attn, y, true, &out)
        }
        None => known,
    };
    let stats =
        known.unwrap_or_else(|| norm::ln_stats(b, Family::Mlp, m, dim, y, &format!("{label} in")));
    let h = b.activation(format!("{label} hidden"), m * fc1.out_features);
    linear::record_normalized(b, Family::Mlp, m, fc1, Epilogue::Gelu, y, stats, eps, h);
    linear::record_residual(b, Family::Mlp, m, fc2, coef, h, y, stats_after, label)
}

/// Arithmetic of one fused MLP dispatch: the projection when there is one (`2k` per output,
/// bias and residual 3), the rows' statistics (3 per element), fc1 (`2k` per hidden value,
/// normalising `2k` per row, GELU 11 per hidden value), fc2 (`2h` per output, residual 3) and the
/// statistics written (3 per output), as the linear dispatches would count them.
pub fn flops(p: &MlpParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (m, k, h, n) = (p.m as u64, p.k as u64, p.h as u64, p.n as u64);
    let proj = if p.proj != 0 { m * n * (2 * k + 3) } else { 0 };
    let normalise = if p.norm != 0 {
        3 * m * k + 2 * m * k
    } else {
        0
    };
    let stats = if p.stats_out != 0 { 3 * m * n } else { 0 };
    proj + m * h * (2 * k + 11) + normalise + m * n * (2 * h + 3) + stats
}
