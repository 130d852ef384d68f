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
//! and a block is three dispatches (`qkv`, attention, this) instead of four. A second MLP on the
//! same rows (SReT's Non_proj MLP after every block's MLP) runs in the same dispatch too: a
//! workgroup owns its rows, so it reads back what it stored with no other workgroup in between.
//!
//! It runs where the device gives [`INVOCATIONS`] invocations, [`WORKGROUP_BYTES`] of
//! workgroup memory and [`STORAGE_BUFFERS`] storage buffers and the rows are at most
//! [`MAX_COLUMNS`] wide (an invocation holds 16 output columns of one row); elsewhere, or with
//! `mlp=portable`, the projection and each MLP's fc1 and fc2 are linear layers of the linear
//! kind's variant ([`record_pair`]). [`upload`] gives an MLP's weights in the form its kernel
//! reads.

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

/// Storage buffers `mlp_fused.wgsl` binds: each MLP's weights and biases are one tensor
/// ([`upload`]), which leaves room within WebGPU's default of eight.
pub const STORAGE_BUFFERS: u32 = 6;

/// Whether `mlp_fused.wgsl` runs a `dim -> hidden -> dim` MLP in `b`'s program: the MLP kind
/// prefers it, the device has room for its workgroups and bindings and rows are at most
/// [`MAX_COLUMNS`] wide.
pub fn fused(b: &ProgramBuilder, dim: usize) -> bool {
    b.variant(KernelKind::Mlp) == Variant::Fused
        && dim <= MAX_COLUMNS
        && b.limits().max_storage_buffers_per_shader_stage >= STORAGE_BUFFERS
        && Kernel::MlpFused.needs().fit(b.limits())
}

/// One MLP's weights (fc1 with its LayerNorm folded in, fc2) as the kernel that runs it reads
/// them.
#[derive(Clone, Copy, Debug)]
pub enum MlpWeights {
    /// Two linear layers, for [`record_pair`].
    Linear {
        /// fc1 (its output is the hidden layer).
        fc1: LinearWeights,
        /// fc2.
        fc2: LinearWeights,
    },
    /// `[W1^T; b1; W2^T; b2]` in one tensor (each bias as one more row of its layer, in
    /// [`linear::gpu_layout`]'s layout), for `mlp_fused.wgsl`.
    Packed {
        /// The tensor.
        tensor: TensorId,
        /// Row width (fc1's inputs, fc2's outputs).
        dim: usize,
        /// Hidden features.
        hidden: usize,
    },
}

/// An MLP with its residual `y = ca * y + cb * mlp(y)`.
#[derive(Clone, Copy, Debug)]
pub struct Mlp {
    /// Its weights ([`upload`]).
    pub weights: MlpWeights,
    /// `(ca, cb)`.
    pub coef: (f32, f32),
}

/// Upload an MLP (`fc1` with the LayerNorm before it folded in, then `fc2`) in the form `b`'s
/// program runs it: packed where [`fused`] says so, else as two linear layers.
pub fn upload(b: &mut ProgramBuilder, name: &str, fc1: &Linear, fc2: &Linear) -> MlpWeights {
    let dim = fc1.in_features;
    if !fused(b, dim) {
        return MlpWeights::Linear {
            fc1: linear::upload(b, &format!("{name}.fc1"), fc1),
            fc2: linear::upload(b, &format!("{name}.fc2"), fc2),
        };
    }
    let (mut packed, b1) = linear::gpu_layout(fc1);
    packed.extend_from_slice(&b1);
    let (w2, b2) = linear::gpu_layout(fc2);
    packed.extend_from_slice(&w2);
    packed.extend_from_slice(&b2);
    MlpWeights::Packed {
        tensor: b.weights(format!("{name}.fc1+fc2 packed"), &packed),
        dim,
        hidden: fc1.out_features,
    }
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
/// bias as one more row, in one tensor (as [`upload`] packs an MLP).
pub fn upload_projection(b: &mut ProgramBuilder, name: &str, l: &Linear) -> TensorId {
    let (mut wt, bias) = linear::gpu_layout(l);
    wt.extend_from_slice(&bias);
    b.weights(format!("{name}.weight^T+bias"), &wt)
}

/// Width of the statistics parts the fused MLP writes: whole rows.
pub fn stats_part_width(dim: usize) -> usize {
    dim
}

/// Record `y = ca * y + cb * fc2(gelu(fc1(LN(y))))` over `m` rows of `y` for `first`, after
/// `proj` when given and before `then` when given (the same on the same rows), in one fused
/// dispatch where the weights come packed ([`upload`]), else as [`record_pair`]s; either way a
/// projection given here counts in the MLP's family. `norm` is the LayerNorm's epsilon and the
/// row statistics of `y` where its writer left them (the LayerNorms' affine parts are folded into
/// the fc1s; the fused kernel measures the statistics itself and the unfused pair measures them
/// with `ln_stats` where none are given). With `stats_after`, the statistics of the rows stored
/// are written beside them (named after `label`) and returned, for the next LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn record(
    b: &mut ProgramBuilder,
    m: usize,
    first: &Mlp,
    then: Option<&Mlp>,
    norm: (Option<RowStats>, f32),
    proj: Option<Projection>,
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> Option<RowStats> {
    let eps = norm.1;
    let then_label = format!("{label} then");
    let (tensor, dim, hidden) = match &first.weights {
        MlpWeights::Packed {
            tensor,
            dim,
            hidden,
        } => (*tensor, *dim, *hidden),
        MlpWeights::Linear { fc1, fc2 } => {
            let after = stats_after || then.is_some();
            let mid = record_pair(b, m, (fc1, fc2), first.coef, norm, proj, after, y, label);
            return match then {
                Some(t) => record(b, m, t, None, (mid, eps), None, stats_after, y, &then_label),
                None => mid,
            };
        }
    };
    // A projection not packed for the fused kernel runs as a linear layer before it.
    let proj = proj.filter(|p| {
        p.packed.is_some() || {
            let label = format!("{label} proj");
            linear::record_residual(
                b,
                Family::Mlp,
                m,
                p.weights,
                p.coef,
                p.attn,
                y,
                false,
                &label,
            );
            false
        }
    });
    let chained = then.and_then(|t| match t.weights {
        MlpWeights::Packed { tensor, hidden, .. } => Some((tensor, hidden, t.coef)),
        MlpWeights::Linear { .. } => None,
    });
    let unchained = then.filter(|_| chained.is_none());
    let stats_out = (stats_after || unchained.is_some()).then(|| RowStats {
        tensor: b.activation_words(format!("{label} stats"), m * 2),
        width: stats_part_width(dim),
    });
    let (chain_w, h2, (ca2, cb2)) = chained.unwrap_or((tensor, 0, (0.0, 0.0)));
    let params = MlpParams {
        m: m as u32,
        k: dim as u32,
        n: dim as u32,
        n_pad: padded(dim) as u32,
        norm: 1,
        eps,
        stats_out: stats_out.is_some() as u32,
        proj: proj.is_some() as u32,
        pa: proj.map_or(0.0, |p| p.coef.0),
        pb: proj.map_or(0.0, |p| p.coef.1),
        h: hidden as u32,
        h_pad: padded(hidden) as u32,
        ca: first.coef.0,
        cb: first.coef.1,
        chain: chained.is_some() as u32,
        h2: h2 as u32,
        h2_pad: padded(h2) as u32,
        ca2,
        cb2,
    };
    let sink = b.unwritten();
    // Bindings a dispatch does not use read the first MLP's weights (never touched).
    let tensors = [
        tensor,
        chain_w,
        y,
        proj.and_then(|p| p.packed).unwrap_or(tensor),
        proj.map_or(tensor, |p| p.attn),
        stats_out.map_or(sink, |s| s.tensor),
    ];
    let grid = b.grid(m.div_ceil(ROWS) * INVOCATIONS as usize, INVOCATIONS);
    let key = KernelKey::plain(Kernel::MlpFused);
    b.dispatch(Family::Mlp, key, &params, &tensors, grid);
    match unchained {
        Some(t) => record(
            b,
            m,
            t,
            None,
            (stats_out, eps),
            None,
            stats_after,
            y,
            &then_label,
        ),
        None => stats_out,
    }
}

/// The projection (when given, a residual linear dispatch), then fc1 (GELU) and fc2
/// (residual) as two linear dispatches of the linear kind's variant, the hidden activations
/// through global memory; arguments as [`record`]'s, `coef` the MLP's residual coefficients.
#[allow(clippy::too_many_arguments)]
pub fn record_pair(
    b: &mut ProgramBuilder,
    m: usize,
    (fc1, fc2): (&LinearWeights, &LinearWeights),
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
/// bias and residual 3), per MLP the rows' statistics (3 per element), fc1 (`2k` per hidden value,
/// normalising `2k` per row, GELU 11 per hidden value) and fc2 (`2h` per output, residual 3),
/// and the statistics written (3 per output), as the linear dispatches would count them.
pub fn flops(p: &MlpParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (m, k, n) = (p.m as u64, p.k as u64, p.n as u64);
    let proj = if p.proj != 0 { m * n * (2 * k + 3) } else { 0 };
    let normalise = if p.norm != 0 {
        3 * m * k + 2 * m * k
    } else {
        0
    };
    let one = |h: u64| m * h * (2 * k + 11) + normalise + m * n * (2 * h + 3);
    let chained = if p.chain != 0 { one(p.h2 as u64) } else { 0 };
    let stats = if p.stats_out != 0 { 3 * m * n } else { 0 };
    proj + one(p.h as u64) + chained + stats
}
