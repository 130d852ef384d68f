//! Token merging on the GPU: metric, matching, ordering, slot map, weighted merge and
//! composition of the stage's unmerge map (the unmerge itself is folded into the loads of the
//! kernels that read the grid: [`Unmerge`]). Every size is static per plan; only the choice of
//! tokens depends on the data, and it never leaves the GPU.

use crate::kernels::norm::{self, RowStats};
use crate::kernels::params::{
    TomeMapUpdateParams, TomeMatchParams, TomeMergeFusedParams, TomeMergeParams, TomeMetricParams,
    TomeSlotsParams,
};
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId};
use crate::tome::Split;

/// Longest sequence `tome_merge_fused.wgsl` merges (its `MAX_TOKENS`): its ranks, rank order
/// and slot map fill 16320 bytes of workgroup memory, within WebGPU's and downlevel GL's
/// limits. Longer sequences (SReT at 384 pixels: 2304 tokens) run the four unfused kernels.
pub const FUSED_MAX_TOKENS: usize = 2040;
/// Invocations of a `tome_merge_fused.wgsl` workgroup (one workgroup per image).
pub const FUSED_INVOCATIONS: u32 = 256;
/// Workgroup memory of `tome_merge_fused.wgsl`: a u32 per token (slots) and two per A token
/// (ranks and rank order).
pub const FUSED_WORKGROUP_BYTES: u32 =
    (FUSED_MAX_TOKENS * 4 + 2 * (FUSED_MAX_TOKENS / 2) * 4) as u32;

/// Storage buffers `tome_merge_fused.wgsl` binds (WebGPU's default limit; the unfused kernels
/// bind at most 6).
const FUSED_STORAGE_BUFFERS: u32 = 8;

/// Workgroup memory of the portable matcher, `tome_match.wgsl`: a chunk of B tokens' metrics.
pub const MATCH_WORKGROUP_BYTES: u32 = 2048 * 4;

/// Whether merges of `n` tokens take the fused kernel on a device with `limits`.
pub fn fused_fits(n: usize, limits: &wgpu::Limits) -> bool {
    n <= FUSED_MAX_TOKENS
        && limits.max_storage_buffers_per_shader_stage >= FUSED_STORAGE_BUFFERS
        && Kernel::TomeMergeFused.needs().fit(limits)
}

/// A merged sequence read as its stage's full grid: grid position `g` of image `b` holds token
/// `map[b, g]` of the `tokens`-token sequence. Kernels that read the grid (the pooling, the
/// mean over tokens) read through it, so the unmerge stack costs neither a dispatch nor a
/// restored grid in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmerge {
    /// The stage's unmerge map `[batch, grid tokens]`.
    pub map: TensorId,
    /// Tokens of the merged sequence (lead tokens included).
    pub tokens: usize,
}

/// Buffers one merge writes; kept apart so a trace can read each merge's map and masses.
pub struct MergeOutputs {
    /// `[batch, n - r, c]`
    pub x: TensorId,
    /// `[batch, n - r]`
    pub mass: TensorId,
    /// `[batch, n]`: incoming position -> outgoing slot, where asked for (or where the
    /// unfused kernels need it).
    pub slot: Option<TensorId>,
    /// The LayerNorm statistics of the merged rows, where asked for (for an MLP that does not
    /// measure them): written by the fused kernel where the slot map is not asked for, else by
    /// an `ln_stats` dispatch.
    pub stats: Option<RowStats>,
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
    /// `[batch, na]` f32: each A token's largest cosine similarity to a B token.
    pub row_max: TensorId,
    /// `[batch, na]` u32: the B token it is (the lowest index among exact ties).
    pub dst: TensorId,
}

/// The uniform block of matching over the sequence `s`.
fn match_params(s: &MergeShape) -> TomeMatchParams {
    let [lead, a_odd, _] = s.split.params();
    TomeMatchParams {
        batch: s.batch as u32,
        n: s.n as u32,
        lead,
        a_odd,
        dim: s.dim as u32,
        heads: s.heads as u32,
    }
}

/// The subgroup width of the matcher the plan prefers for heads of `head_dim` channels: the
/// subgroup matcher's where the plan prefers it and the heads have 32 channels, else `None`
/// (the portable matcher).
pub fn match_subgroup(b: &ProgramBuilder, head_dim: usize) -> Option<u32> {
    b.subgroup_for(KernelKind::Matching)
        .filter(|_| head_dim == 32)
}

/// The buffers matching over `s` writes.
pub fn matched_outputs(b: &mut ProgramBuilder, s: &MergeShape, label: &str) -> Matched {
    let na = s.split.na(s.n);
    Matched {
        row_max: b.activation_words(format!("{label} row max"), s.batch * na),
        dst: b.activation_words(format!("{label} dst"), s.batch * na),
    }
}

/// Record matching step 1 on the keys in `qkv` as a dispatch of its own (the attention runs it
/// in its own dispatch where it can: [`crate::kernels::attention::record`]), computing the
/// metric (the keys averaged over heads, L2-normalised) on chip: the subgroup matcher where
/// [`match_subgroup`] says, else the portable one. Also what the first-build kernel check
/// runs, at the model's shapes.
pub fn record_match(b: &mut ProgramBuilder, s: MergeShape, qkv: TensorId, label: &str) -> Matched {
    let hd = s.dim / s.heads;
    let na = s.split.na(s.n);
    let m = matched_outputs(b, &s, label);
    let params = match_params(&s);
    // SG A tokens per SG-lane workgroup sharing the B keys, else 64 A tokens of one image per
    // workgroup.
    let (key, tile) = match match_subgroup(b, hd) {
        Some(sg) => (KernelKey::with_sg(Kernel::TomeMatchSg, sg), sg),
        None => (KernelKey::with_head_dim(Kernel::TomeMatch, hd), 64),
    };
    let g = b.grid(s.batch * na.div_ceil(tile as usize) * tile as usize, tile);
    b.dispatch(Family::Matching, key, &params, &[qkv, m.row_max, m.dst], g);
    m
}

/// Record the matching metric of every token of `s` on its own, `[batch, n, head_dim]` f32:
/// what the kernel check scores the matchers' choices with.
pub fn record_metric(
    b: &mut ProgramBuilder,
    s: MergeShape,
    qkv: TensorId,
    label: &str,
) -> TensorId {
    let hd = s.dim / s.heads;
    let metric = b.activation_words(format!("{label} metric"), s.batch * s.n * hd);
    let g = b.grid(s.batch * s.n, 64);
    b.dispatch(
        Family::Matching,
        KernelKey::with_head_dim(Kernel::TomeMetric, hd),
        &TomeMetricParams {
            batch: s.batch as u32,
            n: s.n as u32,
            dim: s.dim as u32,
            heads: s.heads as u32,
        },
        &[qkv, metric],
        g,
    );
    metric
}

/// Record a whole merge of `s.r` tokens per image. `matched`: the matching, where the
/// attention before ran it (else it is recorded here). `mass`: masses of the incoming tokens, or
/// `None` when all are 1 (first merge of a stage). `map`: the stage's unmerge map, updated in
/// place (`first` = it is still the identity). `slot_map`: keep the slot map (a trace reads
/// it). `stats`: hand on the merged rows' LayerNorm statistics. Returns the new sequence, its
/// masses, the row statistics and the slot map where asked for.
#[allow(clippy::too_many_arguments)]
pub fn record_merge(
    b: &mut ProgramBuilder,
    s: MergeShape,
    qkv: TensorId,
    matched: Option<Matched>,
    x: TensorId,
    mass: Option<TensorId>,
    map: TensorId,
    first: bool,
    slot_map: bool,
    want_stats: bool,
    label: &str,
) -> MergeOutputs {
    let na = s.split.na(s.n);
    let (bt, n) = (s.batch as u32, s.n as u32);
    let [lead, a_odd, sorted] = s.split.params();
    let Matched { row_max, dst } = matched.unwrap_or_else(|| record_match(b, s, qkv, label));
    let n_out = s.n - s.r;
    let x_out = b.activation(format!("{label} x"), s.batch * n_out * s.c);
    let mass_out = b.activation_words(format!("{label} mass"), s.batch * n_out);
    // The merged rows' statistics where asked for and no kernel wrote them.
    let measured = |b: &mut ProgramBuilder| {
        want_stats.then(|| {
            let label = format!("{label} merged");
            norm::ln_stats(b, Family::Merge, s.batch * n_out, s.c, x_out, &label)
        })
    };
    if fused_fits(s.n, b.limits()) {
        // The statistics take the slot map's binding where nobody reads the slot map.
        let (slot, stats) = if slot_map || !want_stats {
            (
                b.activation_words(format!("{label} slot"), s.batch * s.n),
                None,
            )
        } else {
            let t = b.activation_words(format!("{label} merged stats"), s.batch * n_out * 2);
            (
                t,
                Some(RowStats {
                    tensor: t,
                    width: s.c,
                }),
            )
        };
        // Ranking, slots, merge and map update: one workgroup per image, one dispatch.
        let g = b.grid(s.batch * FUSED_INVOCATIONS as usize, FUSED_INVOCATIONS);
        b.dispatch(
            Family::Merge,
            KernelKey::plain(Kernel::TomeMergeFused),
            &TomeMergeFusedParams {
                batch: bt,
                n,
                r: s.r as u32,
                c: s.c as u32,
                n_grid: s.n_grid as u32,
                flags: mass.is_some() as u32 | (first as u32) << 1 | (stats.is_some() as u32) << 2,
                lead,
                a_odd,
                sorted,
            },
            &[
                x,
                mass.unwrap_or(x),
                row_max,
                dst,
                x_out,
                mass_out,
                slot,
                map,
            ],
            g,
        );
        let stats = stats.or_else(|| measured(b));
        return MergeOutputs {
            x: x_out,
            mass: mass_out,
            slot: slot_map.then_some(slot),
            stats,
        };
    }
    let slot = b.activation_words(format!("{label} slot"), s.batch * s.n);
    let rank = b.activation_words(format!("{label} rank"), s.batch * na);
    let order = b.activation_words(format!("{label} order"), s.batch * na);
    let match_params = match_params(&s);
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
        slot: Some(slot),
        stats: measured(b),
    }
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
/// (the key's head size, 32 where it has none) and the row maxima, and the metric: of each A
/// token and, per A tile, of every B token (the portable matcher's 64-token tiles; the subgroup
/// matcher's SG-token tiles average the heads once per tile and normalise in every lane).
pub fn match_flops(p: &TomeMatchParams, key: &KernelKey, _bound: &[u64]) -> u64 {
    let (na, nb) = sets(p);
    let hd = match key.head_dim {
        0 => 32,
        hd => hd as u64,
    };
    let (dim, norm) = (p.dim as u64, 3 * hd);
    let b_metrics = match key.kernel {
        Kernel::TomeMatchSg => {
            let sg = key.sg.max(1) as u64;
            na.div_ceil(sg) * nb * (dim + sg * norm)
        }
        _ => na.div_ceil(64) * nb * (dim + norm),
    };
    p.batch as u64 * (na * nb * (2 * hd + 1) + na * (dim + norm) + b_metrics)
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

/// Arithmetic of the fused ranking, slots, merge and map update: those of the four kernels.
pub fn merge_fused_flops(p: &TomeMergeFusedParams, key: &KernelKey, bound: &[u64]) -> u64 {
    let matching = TomeMatchParams {
        batch: p.batch,
        n: p.n,
        lead: p.lead,
        a_odd: p.a_odd,
        dim: 0,
        heads: 1,
    };
    let slots = TomeSlotsParams {
        batch: p.batch,
        n: p.n,
        r: p.r,
        lead: p.lead,
        a_odd: p.a_odd,
        sorted: p.sorted,
    };
    let merge = TomeMergeParams {
        batch: p.batch,
        n: p.n,
        r: p.r,
        c: p.c,
        flags: p.flags & 1,
        lead: p.lead,
        a_odd: p.a_odd,
    };
    let map = TomeMapUpdateParams {
        batch: p.batch,
        n_grid: p.n_grid,
        n: p.n,
        flags: p.flags >> 1,
        lead: p.lead,
    };
    rank_flops(&matching, key, bound)
        + slots_flops(&slots, key, bound)
        + merge_flops(&merge, key, bound)
        + map_update_flops(&map, key, bound)
}

/// Arithmetic of composing the unmerge map: one per grid token.
pub fn map_update_flops(p: &TomeMapUpdateParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    p.batch as u64 * p.n_grid as u64
}
