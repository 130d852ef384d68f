//! Fused sliced group attention with proportional attention (see `shaders/attention.wgsl`),
//! and, where a merge follows, the merge's matching in the same dispatch.

use crate::kernels::merge::{self, Matched, MergeShape};
use crate::kernels::params::{AttentionParams, TomeMatchParams};
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
/// each key. `out` is written in the original token order. `matching`: a merge of this
/// sequence follows (its shape and its tensors' label), matched on the keys in `qkv`. Where
/// the plan runs the subgroup attention and the subgroup matcher at one width, the matching
/// rides in extra workgroups of the attention's dispatch (both read only `qkv`, and neither
/// uses a barrier or workgroup memory); elsewhere it is a dispatch of its own
/// ([`merge::record_match`]; why the portable matcher stays apart: `docs/performance.md`,
/// "The matcher beside the attention"). Returns the matching's outputs where asked for.
pub fn record(
    b: &mut ProgramBuilder,
    s: AttentionShape,
    qkv: TensorId,
    perm: Option<TensorId>,
    mass: Option<TensorId>,
    out: TensorId,
    matching: Option<(MergeShape, &str)>,
) -> Option<Matched> {
    let hd = s.dim / s.heads;
    let scale = (hd as f32).powf(-0.5);
    if let Some((m, _)) = &matching {
        assert!(
            (m.batch, m.n, m.dim, m.heads) == (s.batch, s.n, s.dim, s.heads),
            "attention::record: the merge's sequence {m:?} is not the attention's {s:?}"
        );
    }
    // One query per invocation, vector loads where the widths allow; with subgroups of SG
    // lanes and heads of 32, SG queries share every key through subgroup broadcasts.
    let sg = b
        .subgroup_for(KernelKind::Attention)
        .filter(|_| hd == 32 && s.dim.is_multiple_of(4));
    let vec4 = b.variant(KernelKind::Attention) != Variant::Portable;
    let (key, attention_wgs, wg) = if let Some(sg) = sg {
        let blocks = (s.n / s.groups).div_ceil(sg as usize);
        let tiles = s.batch * s.heads * s.groups * blocks;
        (KernelKey::with_sg(Kernel::AttentionSg, sg), tiles, sg)
    } else if vec4 && hd.is_multiple_of(4) && s.dim.is_multiple_of(4) {
        let key = KernelKey::with_head_dim(Kernel::AttentionVec4, hd);
        (key, (s.batch * s.heads * s.n).div_ceil(64), 64)
    } else {
        let key = KernelKey::with_head_dim(Kernel::Attention, hd);
        (key, (s.batch * s.heads * s.n).div_ceil(64), 64)
    };
    // Where the matcher rides in this dispatch: SG A tokens per workgroup after the subgroup
    // attention.
    let fused = matching.filter(|_| sg.is_some() && merge::match_subgroup(b, hd) == sg);
    let matched = match (matching, fused) {
        (Some((m, label)), None) => Some(merge::record_match(b, m, qkv, label)),
        (Some((m, label)), Some(_)) => Some(merge::matched_outputs(b, &m, label)),
        (None, _) => None,
    };
    let (match_wgs, split) = match fused {
        Some((m, _)) => (m.batch * m.split.na(m.n).div_ceil(wg as usize), m.split),
        None => (0, Default::default()),
    };
    let [lead, a_odd, _] = split.params();
    let flags =
        perm.is_some() as u32 | (mass.is_some() as u32) << 1 | ((match_wgs > 0) as u32) << 2;
    let mut tensors = vec![qkv, perm.unwrap_or(qkv), mass.unwrap_or(qkv), out];
    if key.kernel == Kernel::AttentionSg {
        // The matching's outputs, or stand-ins where none runs here.
        tensors.extend(match (&matched, fused) {
            (Some(m), Some(_)) => [m.row_max, m.dst],
            _ => [b.unwritten_nth(0), b.unwritten_nth(1)],
        });
    }
    let grid = b.grid((attention_wgs + match_wgs) * wg as usize, wg);
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
            lead,
            a_odd,
            attention_wgs: attention_wgs as u32,
        },
        &tensors,
        grid,
    );
    matched
}

/// Arithmetic of one attention dispatch: per group of `n / groups` tokens, `q k^T` and `p v`
/// (`4 n ng dim`), the softmax with proportional attention (`7` per score and head) and the
/// normalisation.
/// With flags bit 2 (the subgroup attention), also the subgroup matcher's
/// ([`merge::match_flops`]).
pub fn flops(p: &AttentionParams, key: &KernelKey, bound: &[u64]) -> u64 {
    let (batch, n, dim, heads) = (p.batch as u64, p.n as u64, p.dim as u64, p.heads as u64);
    let ng = n / (p.groups.max(1) as u64);
    let attention = batch * (4 * n * ng * dim + 7 * heads * n * ng + n);
    if p.flags & 4 == 0 {
        return attention;
    }
    let matcher = KernelKey::with_sg(Kernel::TomeMatchSg, key.sg);
    let matching = TomeMatchParams {
        batch: p.batch,
        n: p.n,
        lead: p.lead,
        a_odd: p.a_odd,
        dim: p.dim,
        heads: p.heads,
    };
    attention + merge::match_flops(&matching, &matcher, bound)
}
