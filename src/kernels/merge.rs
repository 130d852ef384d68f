//! Token merging on the GPU: metric, matching, ordering, slot map, weighted merge, composition
//! of the stage's unmerge map, and the one-gather unmerge. Every size is static per plan; only
//! the choice of tokens depends on the data, and it never leaves the GPU.

use crate::kernels::params::{
    GatherParams, TomeMapUpdateParams, TomeMatchParams, TomeMergeParams, TomeMetricParams,
    TomeSlotsParams,
};
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId};
use crate::tome::Split;

/// Buffers one merge writes; kept apart so a trace can read each merge's map and masses.
pub struct MergeOutputs {
    /// `[batch, n - r, c]`
    pub x: TensorId,
    /// `[batch, n - r]`
    pub mass: TensorId,
    /// `[batch, n]`: incoming position -> outgoing slot.
    pub slot: TensorId,
}

/// Sizes of one token merge (bipartite soft matching on the keys, then a mass-weighted merge).
#[derive(Clone, Copy, Debug)]
pub struct MergeShape {
    /// Images in the batch.
    pub batch: usize,
    /// Tokens entering the merge.
    pub n: usize,
    /// Tokens merged away per image; the output has `n - r` tokens.
    pub r: usize,
    /// Channels of the residual stream.
    pub c: usize,
    /// Channels of the model (`dim`) and heads, to read keys out of `qkv`.
    pub dim: usize,
    /// Attention heads; the matching metric is the keys averaged over heads.
    pub heads: usize,
    /// Tokens of the stage's grid (length of the unmerge map).
    pub n_grid: usize,
    /// Lead tokens and how the rest is split into the two sets.
    pub split: Split,
}

/// What matching step 1 writes: per A token, its best score and its most similar B token.
pub struct Matched {
    /// `[batch, n, head_dim]` f32: the metric every token is matched by.
    pub metric: TensorId,
    /// `[batch, na]` f32: each A token's largest cosine similarity to a B token.
    pub row_max: TensorId,
    /// `[batch, na]` u32: the B token it is (the lowest index among exact ties).
    pub dst: TensorId,
}

/// Record the matching metric (the keys of `qkv` averaged over heads, L2-normalised) and
/// matching step 1, with the subgroup matcher where the plan prefers it and the heads have 32
/// channels. Also what the first-build kernel check runs, at the model's shapes.
pub fn record_match(b: &mut ProgramBuilder, s: MergeShape, qkv: TensorId, label: &str) -> Matched {
    let hd = s.dim / s.heads;
    let na = s.split.na(s.n);
    let (bt, n) = (s.batch as u32, s.n as u32);
    let [lead, a_odd, _] = s.split.params();
    let metric = b.activation_words(format!("{label} metric"), s.batch * s.n * hd);
    let row_max = b.activation_words(format!("{label} row max"), s.batch * na);
    let dst = b.activation_words(format!("{label} dst"), s.batch * na);
    let g = b.grid(s.batch * s.n, 64);
    b.dispatch(
        Family::Matching,
        KernelKey::with_head_dim(Kernel::TomeMetric, hd),
        &TomeMetricParams {
            batch: bt,
            n,
            dim: s.dim as u32,
            heads: s.heads as u32,
        },
        &[qkv, metric],
        g,
    );
    // SG A tokens per SG-lane workgroup sharing the B keys where subgroups allow (32-channel
    // heads), else one A token per invocation.
    let sg = b.subgroup_for(KernelKind::Matching).filter(|_| hd == 32);
    let (matcher, g_match) = if let Some(sg) = sg {
        let tiles = s.batch * na.div_ceil(sg as usize);
        (
            KernelKey::with_sg(Kernel::TomeMatchSg, sg),
            b.grid(tiles * sg as usize, sg),
        )
    } else {
        (
            KernelKey::with_head_dim(Kernel::TomeMatch, hd),
            b.grid(s.batch * na, 64),
        )
    };
    b.dispatch(
        Family::Matching,
        matcher,
        &TomeMatchParams {
            batch: bt,
            n,
            lead,
            a_odd,
        },
        &[metric, row_max, dst],
        g_match,
    );
    Matched {
        metric,
        row_max,
        dst,
    }
}

/// Record a whole merge of `s.r` tokens per image. `mass`: masses of the incoming tokens, or
/// `None` when all are 1 (first merge of a stage). `map`: the stage's unmerge map, updated in
/// place (`first` = it is still the identity). Returns the new sequence, masses and slot map.
#[allow(clippy::too_many_arguments)]
pub fn record_merge(
    b: &mut ProgramBuilder,
    s: MergeShape,
    qkv: TensorId,
    x: TensorId,
    mass: Option<TensorId>,
    map: TensorId,
    first: bool,
    label: &str,
) -> MergeOutputs {
    let na = s.split.na(s.n);
    let (bt, n) = (s.batch as u32, s.n as u32);
    let [lead, a_odd, sorted] = s.split.params();
    let Matched { row_max, dst, .. } = record_match(b, s, qkv, label);
    let rank = b.activation_words(format!("{label} rank"), s.batch * na);
    let order = b.activation_words(format!("{label} order"), s.batch * na);
    let slot = b.activation_words(format!("{label} slot"), s.batch * s.n);
    let x_out = b.activation(format!("{label} x"), s.batch * (s.n - s.r) * s.c);
    let mass_out = b.activation_words(format!("{label} mass"), s.batch * (s.n - s.r));
    let match_params = TomeMatchParams {
        batch: bt,
        n,
        lead,
        a_odd,
    };
    let g = b.grid(s.batch * na, 64);
    b.dispatch(
        Family::Matching,
        KernelKey::plain(Kernel::TomeRank),
        &match_params,
        &[row_max, rank, order],
        g,
    );
    let g = b.grid(s.batch * s.n, 64);
    b.dispatch(
        Family::Merge,
        KernelKey::plain(Kernel::TomeSlots),
        &TomeSlotsParams {
            batch: bt,
            n,
            r: s.r as u32,
            lead,
            a_odd,
            sorted,
        },
        &[rank, dst, slot, order],
        g,
    );
    let g = b.grid(s.batch * (s.n - s.r), 64);
    b.dispatch(
        Family::Merge,
        KernelKey::plain(Kernel::TomeMerge),
        &TomeMergeParams {
            batch: bt,
            n,
            r: s.r as u32,
            c: s.c as u32,
            flags: mass.is_some() as u32,
            lead,
            a_odd,
        },
        &[x, mass.unwrap_or(x), order, dst, x_out, mass_out],
        g,
    );
    let g = b.grid(s.batch * s.n_grid, 64);
    b.dispatch(
        Family::Merge,
        KernelKey::plain(Kernel::TomeMapUpdate),
        &TomeMapUpdateParams {
            batch: bt,
            n_grid: s.n_grid as u32,
            n,
            flags: first as u32,
            lead,
        },
        &[slot, map],
        g,
    );
    MergeOutputs {
        x: x_out,
        mass: mass_out,
        slot,
    }
}

/// The unmerge stack in one gather: `out[b, orig] = x[b, map[b, orig]]`.
#[allow(clippy::too_many_arguments)]
pub fn record_unmerge(
    b: &mut ProgramBuilder,
    batch: usize,
    n_grid: usize,
    n: usize,
    c: usize,
    x: TensorId,
    map: TensorId,
    out: TensorId,
) {
    let g = b.grid(batch * n_grid * c, 64);
    b.dispatch(
        Family::Unmerge,
        KernelKey::plain(Kernel::Gather),
        &GatherParams {
            batch: batch as u32,
            n_grid: n_grid as u32,
            n: n as u32,
            c: c as u32,
        },
        &[x, map, out],
        g,
    );
}

/// Arithmetic of the matching metric: the head mean, then the key's norm.
pub fn metric_flops(p: &TomeMetricParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let hd = p.dim as u64 / (p.heads.max(1) as u64);
    p.batch as u64 * p.n as u64 * (p.dim as u64 + 3 * hd)
}

/// Sizes of the bipartite sets `(A, B)` of a matching over `n` tokens after `lead`.
fn sets(p: &TomeMatchParams) -> (u64, u64) {
    let window = (p.n as u64).saturating_sub(p.lead as u64);
    let na = (window + 1).saturating_sub(p.a_odd as u64) / 2;
    (na, window - na)
}

/// Arithmetic of matching: the cosine similarity of every A-B pair over the metric's width
/// (the key's head size, 32 where it has none) and the row maxima.
pub fn match_flops(p: &TomeMatchParams, key: &KernelKey, _bound: &[u64]) -> u64 {
    let (na, nb) = sets(p);
    let hd = match key.head_dim {
        0 => 32,
        hd => hd as u64,
    };
    p.batch as u64 * na * nb * (2 * hd + 1)
}

/// Arithmetic of ranking: every A token compared with every other.
pub fn rank_flops(p: &TomeMatchParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (na, _) = sets(p);
    p.batch as u64 * na * na
}

/// Arithmetic of the slot map: one per token, and the rank order of A where it is kept sorted.
pub fn slots_flops(p: &TomeSlotsParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (batch, n) = (p.batch as u64, p.n as u64);
    let na = n.saturating_sub(p.lead as u64) / 2;
    batch * n
        + if p.sorted != 0 {
            batch * na * na / 2
        } else {
            0
        }
}

/// Arithmetic of the weighted merge: weight by mass, move every token, scatter-sum, divide.
pub fn merge_flops(p: &TomeMergeParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let (batch, n, r, c) = (p.batch as u64, p.n as u64, p.r as u64, p.c as u64);
    batch * (n * c + n * (c + 1) + r * (c + 1) + (n - r.min(n)) * c)
}

/// Arithmetic of composing the unmerge map: one per grid token.
pub fn map_update_flops(p: &TomeMapUpdateParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    p.batch as u64 * p.n_grid as u64
}

/// Moves of the unmerge gather: one per element of the restored grid.
pub fn gather_flops(p: &GatherParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    p.batch as u64 * p.n_grid as u64 * p.c as u64
}
