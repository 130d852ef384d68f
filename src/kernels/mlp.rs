//! The MLP half of a block, `y = ca * y + cb * fc2(gelu(fc1(LN(y))))`, in one dispatch
//! (`mlp_fused.wgsl`): a workgroup owns whole rows, so the hidden activations (3.6-4x the
//! row's width) stay in workgroup memory and registers instead of a round trip through global
//! memory between fc1 and fc2, the LayerNorm's row statistics are measured where the rows are
//! read (no statistics written by the kernel before it, no statistics dispatch), and the
//! block's MLP is one dispatch instead of two.
//!
//! Where no token merge separates them, the attention half's output projection and residual,
//! `y = pa * y + pb * proj(attn)`, runs in the same dispatch ([`Projection`]): the projected
//! rows are stored once instead of being written by the projection and read back by the MLP.
//! A second MLP on the same rows (SReT's Non_proj MLP after every block's MLP) runs in the same
//! dispatch too: a workgroup owns its rows, so it reads back what it stored with no other
//! workgroup in between.
//! For the same reason the next block's LayerNorm-folded `qkv` layer can run last in the same
//! dispatch ([`NextLayer`]), its rows' statistics measured on chip: a block execution is then two
//! dispatches, the attention and this.
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

/// Storage buffers `mlp_fused.wgsl` binds (WebGPU's default limit): each MLP's weights and
/// biases are one tensor ([`upload`]), and so are the projection's and the next layer's.
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
    /// The same weights as the fused kernel reads them ([`upload_packed`]); without them
    /// the MLP runs unfused.
    pub packed: Option<TensorId>,
    /// `(pa, pb)`.
    pub coef: (f32, f32),
}

/// Upload a linear layer (the projection, the next layer) for the fused MLP: `W^T` in
/// [`linear::gpu_layout`]'s layout with the bias as one more row, in one tensor (as [`upload`]
/// packs an MLP).
pub fn upload_packed(b: &mut ProgramBuilder, name: &str, l: &Linear) -> TensorId {
    let (mut wt, bias) = linear::gpu_layout(l);
    wt.extend_from_slice(&bias);
    b.weights(format!("{name}.weight^T+bias"), &wt)
}

/// A linear layer `LN(y) W^T + b` that reads the MLP's output rows next (the next block's `qkv`),
/// for [`record`] to run last, the LayerNorm's affine part folded into it.
#[derive(Clone, Copy, Debug)]
pub struct NextLayer<'a> {
    /// The layer (for the unfused MLP).
    pub weights: &'a LinearWeights,
    /// The same weights as the fused kernel reads them ([`upload_packed`]); without them the
    /// layer runs unfused.
    pub packed: Option<TensorId>,
}

/// What [`record`] leaves for the layers after it.
#[derive(Clone, Copy, Debug)]
pub struct MlpOutput {
    /// The statistics of the rows stored, where asked for.
    pub stats: Option<RowStats>,
    /// The next layer's output `[m, out_features]`, where one was given.
    pub next: Option<TensorId>,
}

/// Width of the statistics parts the fused MLP writes: whole rows.
pub fn stats_part_width(dim: usize) -> usize {
    dim
}

/// Record `y = ca * y + cb * fc2(gelu(fc1(LN(y))))` over `m` rows of `y` for `first`, after
/// `proj` when given, before `then` when given (the same on the same rows) and then `next` when
/// given, in one fused dispatch where the weights come packed ([`upload`]), else as
/// [`record_pair`]s and a linear layer; either way a projection or next layer given here counts
/// in the MLP's family. `norm` is the LayerNorm's epsilon (every LayerNorm here has it) and the
/// row statistics of `y` where its writer left them (the LayerNorms' affine parts are folded into
/// the layers after them; the fused kernel measures the statistics itself and the unfused pair
/// measures them with `ln_stats` where none are given). With `stats_after`, the statistics of
/// the rows stored are written beside them (named after `label`) and returned, for a later
/// LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn record(
    b: &mut ProgramBuilder,
    m: usize,
    first: &Mlp,
    then: Option<&Mlp>,
    norm: (Option<RowStats>, f32),
    proj: Option<Projection>,
    next: Option<NextLayer>,
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> MlpOutput {
    let eps = norm.1;
    let then_label = format!("{label} then");
    let (tensor, dim, hidden) = match &first.weights {
        MlpWeights::Packed {
            tensor,
            dim,
            hidden,
        } => (*tensor, *dim, *hidden),
        MlpWeights::Linear { fc1, fc2 } => {
            let after = stats_after || then.is_some() || next.is_some();
            let mid = record_pair(b, m, (fc1, fc2), first.coef, norm, proj, after, y, label);
            return match then {
                Some(t) => record(
                    b,
                    m,
                    t,
                    None,
                    (mid, eps),
                    None,
                    next,
                    stats_after,
                    y,
                    &then_label,
                ),
                None => next_unfused(b, m, next, (mid, eps), stats_after, y, label),
            };
        }
    };
    // A projection not packed for the fused kernel runs as a linear layer before it.
    let proj = match proj {
        Some(p) if p.packed.is_none() => {
            let label = format!("{label} proj");
            let fam = Family::Mlp;
            linear::record_residual(b, fam, m, p.weights, p.coef, p.attn, y, false, &label);
            None
        }
        proj => proj,
    };
    let chained = then.and_then(|t| match t.weights {
        MlpWeights::Packed { tensor, hidden, .. } => Some((tensor, hidden, t.coef)),
        MlpWeights::Linear { .. } => None,
    });
    let unchained = then.filter(|_| chained.is_none());
    // The next layer runs here where it comes packed and nothing unfused comes before it.
    let fused_next = next
        .filter(|_| unchained.is_none())
        .and_then(|n| n.packed.map(|w| (w, n.weights.out_features)));
    let later = unchained.is_some() || (next.is_some() && fused_next.is_none());
    let stats_out = (stats_after || later).then(|| RowStats {
        tensor: b.activation_words(format!("{label} stats"), m * 2),
        width: stats_part_width(dim),
    });
    let next_out = fused_next.map(|(_, q)| b.activation(format!("{label} next"), m * q));
    let (chain_w, h2, (ca2, cb2)) = chained.unwrap_or((tensor, 0, (0.0, 0.0)));
    let (next_w, q) = fused_next.unwrap_or((tensor, 0));
    let params = MlpParams {
        stats_out: stats_out.is_some() as u32,
        proj: proj.is_some() as u32,
        pa: proj.map_or(0.0, |p| p.coef.0),
        pb: proj.map_or(0.0, |p| p.coef.1),
        mlp: 1,
        h: hidden as u32,
        h_pad: padded(hidden) as u32,
        ca: first.coef.0,
        cb: first.coef.1,
        chain: chained.is_some() as u32,
        h2: h2 as u32,
        h2_pad: padded(h2) as u32,
        ca2,
        cb2,
        next: next_out.is_some() as u32,
        q: q as u32,
        q_pad: padded(q) as u32,
        ..rows_params(m, dim, eps)
    };
    // Bindings a dispatch does not use read the first MLP's weights (never touched), or are
    // written to stand-ins of their own.
    let tensors = [
        tensor,
        chain_w,
        y,
        proj.and_then(|p| p.packed).unwrap_or(tensor),
        proj.map_or(tensor, |p| p.attn),
        stats_out.map_or_else(|| b.unwritten_nth(0), |s| s.tensor),
        next_w,
        next_out.unwrap_or_else(|| b.unwritten_nth(1)),
    ];
    let grid = b.grid(m.div_ceil(ROWS) * INVOCATIONS as usize, INVOCATIONS);
    let key = KernelKey::plain(Kernel::MlpFused);
    b.dispatch(Family::Mlp, key, &params, &tensors, grid);
    if let Some(t) = unchained {
        return record(
            b,
            m,
            t,
            None,
            (stats_out, eps),
            None,
            next,
            stats_after,
            y,
            &then_label,
        );
    }
    if next_out.is_some() {
        return MlpOutput {
            stats: stats_out.filter(|_| stats_after),
            next: next_out,
        };
    }
    next_unfused(b, m, next, (stats_out, eps), stats_after, y, label)
}

/// `LN(y) W^T + b` over `m` rows of `y` for `next` (a stage's first `qkv`, whose input no MLP
/// wrote), in the MLP's family like the next layers [`record`] runs: one fused dispatch that
/// measures the rows' statistics where the weights come packed, else a linear layer after the
/// statistics `norm` (measured with `ln_stats` where not given). Returns the output,
/// `[m, out_features]`.
pub fn record_next(
    b: &mut ProgramBuilder,
    m: usize,
    next: NextLayer,
    norm: (Option<RowStats>, f32),
    y: TensorId,
    label: &str,
) -> TensorId {
    let dim = next.weights.in_features;
    let Some(packed) = next.packed else {
        return next_linear(b, m, next, norm, y, label).0;
    };
    let q = next.weights.out_features;
    let out = b.activation(format!("{label} next"), m * q);
    let params = MlpParams {
        next: 1,
        q: q as u32,
        q_pad: padded(q) as u32,
        ..rows_params(m, dim, norm.1)
    };
    let sink = b.unwritten();
    let tensors = [packed, packed, y, packed, packed, sink, packed, out];
    let grid = b.grid(m.div_ceil(ROWS) * INVOCATIONS as usize, INVOCATIONS);
    let key = KernelKey::plain(Kernel::MlpFused);
    b.dispatch(Family::Mlp, key, &params, &tensors, grid);
    out
}

/// The parameters of a fused dispatch over `m` rows `dim` wide, each LayerNorm with `eps`, with
/// nothing to run yet.
fn rows_params(m: usize, dim: usize, eps: f32) -> MlpParams {
    MlpParams {
        m: m as u32,
        k: dim as u32,
        n: dim as u32,
        n_pad: padded(dim) as u32,
        norm: 1,
        eps,
        ..MlpParams::default()
    }
}

/// `next` (when given) as a linear layer in the MLP's family after the rows' writer left their
/// statistics (`norm`, measured where it did not).
fn next_unfused(
    b: &mut ProgramBuilder,
    m: usize,
    next: Option<NextLayer>,
    norm: (Option<RowStats>, f32),
    stats_after: bool,
    y: TensorId,
    label: &str,
) -> MlpOutput {
    match next {
        Some(n) => {
            let (out, stats) = next_linear(b, m, n, norm, y, label);
            MlpOutput {
                stats: Some(stats).filter(|_| stats_after),
                next: Some(out),
            }
        }
        None => MlpOutput {
            stats: norm.0,
            next: None,
        },
    }
}

/// `next` as a linear layer in the MLP's family; returns its output and the statistics it
/// normalised with (`norm`'s, or measured by an `ln_stats` dispatch).
fn next_linear(
    b: &mut ProgramBuilder,
    m: usize,
    next: NextLayer,
    (known, eps): (Option<RowStats>, f32),
    y: TensorId,
    label: &str,
) -> (TensorId, RowStats) {
    let dim = next.weights.in_features;
    let stats =
        known.unwrap_or_else(|| norm::ln_stats(b, Family::Mlp, m, dim, y, &format!("{label} out")));
    let out = b.activation(format!("{label} next"), m * next.weights.out_features);
    linear::record_normalized(
        b,
        Family::Mlp,
        m,
        next.weights,
        Epilogue::Bias,
        y,
        stats,
        eps,
        out,
    );
    (out, stats)
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
/// the next layer when there is one (statistics and normalising as an MLP's, `2k` per output,
/// bias 1) and the statistics written (3 per output), as the linear dispatches would count them.
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
    let q = p.q as u64;
    let next = if p.next != 0 {
        normalise + m * q * (2 * k + 1)
    } else {
        0
    };
    let stats = if p.stats_out != 0 { 3 * m * n } else { 0 };
    proj + one(p.h as u64) + chained + next + stats
}
