//! The plan of DeiT / ViT and PiT: patch convolution, lead tokens in front, plain blocks with
//! ToMe, PiT's unmerge-then-pool between stages, and the heads on the lead tokens (or, with
//! timm's `global_pool='avg'`, on the `fc_norm` of the patch tokens' mean, weighted by size as
//! ToMe's MAE patch pools).

use super::{
    record_attention_half, record_mlp, record_pool, up_block, up_conv, BlockTensors, Recorded,
    StageTokens, TraceTensors, LN_EPS,
};
use crate::kernels::attention::AttentionShape;
use crate::kernels::conv::{self, ConvIo, ConvShape, Layout};
use crate::kernels::linear::{self, Epilogue};
use crate::kernels::mlp::Mlp;
use crate::kernels::norm;
use crate::kernels::tokens::{record_copy, TokenCopy};
use crate::kernels::{Family, ProgramBuilder, TensorId};
use crate::model::config::{ModelConfig, VitConfig, VitPool};
use crate::model::weights::{Linear, ModelWeights};
use crate::runtime::ForwardSpec;
use crate::tome::Split;

/// `out[:, 0..count] = x[:, off..off + count]` with `n` tokens per image of `x`.
#[allow(clippy::too_many_arguments)]
fn take_tokens(
    b: &mut ProgramBuilder,
    family: Family,
    batch: usize,
    x: TensorId,
    n: usize,
    off: usize,
    count: usize,
    c: usize,
    label: String,
) -> TensorId {
    let out = b.activation(label, batch * count * c);
    let s = TokenCopy {
        batch,
        count,
        c,
        in_tokens: n,
        in_off: off,
        out_tokens: count,
        out_off: 0,
    };
    record_copy(b, family, s, x, out);
    out
}

/// `[lead tokens, patch tokens]` per image; `lead_shared`: one lead sequence for all images.
#[allow(clippy::too_many_arguments)]
fn prepend(
    b: &mut ProgramBuilder,
    batch: usize,
    lead: usize,
    lead_x: TensorId,
    lead_shared: bool,
    patches: TensorId,
    tokens: usize,
    c: usize,
    label: String,
) -> TensorId {
    let n = lead + tokens;
    let out = b.activation(label, batch * n * c);
    let mut s = TokenCopy {
        batch,
        count: lead,
        c,
        in_tokens: if lead_shared { 0 } else { lead },
        in_off: 0,
        out_tokens: n,
        out_off: 0,
    };
    record_copy(b, Family::Stem, s, lead_x, out);
    (s.count, s.in_tokens, s.out_off) = (tokens, tokens, lead);
    record_copy(b, Family::Stem, s, patches, out);
    out
}

/// The classifier on the normalised lead tokens `[batch, lead * dim]`: `head(cls)`, or for a
/// distilled model `(head(cls) + head_dist(dist)) / 2` as one linear layer over both tokens
/// (`[W / 2 | W_dist / 2]`, bias `(b + b_dist) / 2`).
fn head_linear(w: &ModelWeights) -> Linear {
    match &w.head_dist {
        None => w.head.clone(),
        Some(hd) => {
            let (out, inp) = (w.head.out_features, w.head.in_features);
            let mut weight = Vec::with_capacity(out * 2 * inp);
            for o in 0..out {
                for l in [&w.head, hd] {
                    weight.extend(l.weight[o * inp..(o + 1) * inp].iter().map(|v| v * 0.5));
                }
            }
            Linear {
                weight,
                bias: w
                    .head
                    .bias
                    .iter()
                    .zip(&hd.bias)
                    .map(|(a, b)| (a + b) * 0.5)
                    .collect(),
                out_features: out,
                in_features: 2 * inp,
            }
        }
    }
}

/// Record DeiT / ViT / PiT's forward for `spec` into `b`.
pub(super) fn record(
    mut b: ProgramBuilder,
    cfg: &ModelConfig,
    v: &VitConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
) -> Recorded {
    let bt = spec.batch;
    let img_bytes = b.elem_bytes(bt * 3 * cfg.image_size * cfg.image_size);
    let img = b.external("images", img_bytes);
    let logit_bytes = b.elem_bytes(bt * cfg.num_classes);
    let out = b.external("logits", logit_bytes);
    let mut trace = TraceTensors::default();
    let mut x = embed(&mut b, cfg, v, w, bt, img);
    let last = cfg.stages.len() - 1;
    for s in 0..=last {
        let seq = blocks(&mut b, cfg, v, w, spec, &mut trace, s, x);
        if s == last && v.pool == VitPool::Avg {
            avg_head(&mut b, cfg, w, bt, s, &seq, out);
        } else if s == last {
            token_head(&mut b, cfg, w, bt, s, &seq, out);
        } else {
            x = pit_pool(&mut b, cfg, w, bt, s, &seq);
        }
    }
    Recorded {
        builder: b,
        images: img,
        logits: out,
        trace,
    }
}

/// The patch convolution with the grid's position embedding, then the lead tokens in front:
/// the first stage's sequence.
fn embed(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    v: &VitConfig,
    w: &ModelWeights,
    bt: usize,
    img: TensorId,
) -> TensorId {
    let lead = Split::of(cfg).lead;
    let d0 = cfg.stages[0].dim;
    let patch = &w.stem[0];
    let shape = ConvShape {
        batch: bt,
        cin: 3,
        h: cfg.image_size,
        w: cfg.image_size,
        cout: d0,
        k: v.patch,
        stride: v.stride,
        pad: 0,
        groups: 1,
    };
    let up = up_conv(b, "patch_embed", patch);
    let pos = b.weights("pos_embed", &w.pos_embed);
    let patches = b.activation("patches", bt * cfg.tokens(0) * d0);
    conv::record(
        b,
        Family::Stem,
        shape,
        ConvIo {
            x: img,
            weight: up.weight,
            bias: up.bias,
            pos: Some(pos),
            y: patches,
            input: Layout::Nchw,
            output: Layout::Tokens,
            relu: false,
        },
    );
    let lead_tokens = b.weights("lead tokens", &w.lead_tokens);
    prepend(
        b,
        bt,
        lead,
        lead_tokens,
        true,
        patches,
        cfg.tokens(0),
        d0,
        "sequence".into(),
    )
}

/// Stage `s`'s blocks on the sequence `x` (lead tokens, then the grid), each with the merge
/// its trajectory schedules after the attention: the stage's tokens at its end.
#[allow(clippy::too_many_arguments)]
fn blocks(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    v: &VitConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
    trace: &mut TraceTensors,
    s: usize,
    x: TensorId,
) -> StageTokens {
    let bt = spec.batch;
    let split = Split::of(cfg);
    let (sc, sw) = (&cfg.stages[s], &w.stages[s]);
    let n_grid = cfg.tokens(s);
    let dim = sc.dim;
    let blocks: Vec<BlockTensors> = sw
        .blocks
        .iter()
        .enumerate()
        .map(|(i, bw)| up_block(b, &format!("stage{s}.block{i}"), bw))
        .collect();
    let mut seq = StageTokens::start(
        b,
        spec,
        s,
        x,
        split.lead + n_grid,
        n_grid,
        dim,
        sc.heads,
        split,
    );
    for (exec, blk) in blocks.iter().enumerate() {
        let label = format!("s{s}e{exec}");
        let shape = AttentionShape {
            batch: bt,
            n: seq.n,
            dim,
            heads: sc.heads,
            groups: 1,
        };
        // ToMe's MAE patch leaves the attention unweighted (sizes still weight merging).
        let mass = seq.mass.filter(|_| v.prop_attn);
        // The MLP half before this block computed its `qkv` (the first reads the statistics
        // its input's writer left, or measures them). Without a merge the projection is left
        // to the MLP half.
        let matching = seq.merge_at(spec, exec);
        let stats = seq.stats.take();
        let ready = seq.qkv.take();
        let (qkv, proj, matched) = record_attention_half(
            b, shape, blk, [1.0; 4], seq.x, stats, ready, None, mass, matching, &label,
        );
        seq.merge(b, spec, trace, exec, qkv, matched, &label);
        let stats = seq.stats.take();
        let next = blocks.get(exec + 1).map(|n| n.qkv_next(b, dim));
        seq.qkv = record_mlp(
            b,
            bt * seq.n,
            seq.x,
            stats,
            proj,
            &Mlp {
                weights: blk.mlp,
                coef: (1.0, 1.0),
            },
            None,
            next,
            &label,
        );
    }
    if seq.merged && spec.trace {
        trace.stage_maps.push((s, seq.map, n_grid));
    }
    seq
}

/// Stage `s`'s token grid from a sequence that never merged: the tokens after the lead ones (a
/// merged one is read through its unmerge map instead).
fn patch_tokens(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    bt: usize,
    s: usize,
    seq: &StageTokens,
    family: Family,
    label: String,
) -> TensorId {
    debug_assert!(!seq.merged, "a merged grid is read through its unmerge map");
    let (n_grid, dim) = (cfg.tokens(s), cfg.stages[s].dim);
    let lead = Split::of(cfg).lead;
    take_tokens(b, family, bt, seq.x, seq.n, lead, n_grid, dim, label)
}

/// timm's `global_pool='avg'` head, as ToMe's MAE patch pools: every merged token by its size,
/// i.e. the mean of the restored grid; then `fc_norm` and the classifier into `out`.
fn avg_head(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    bt: usize,
    s: usize,
    seq: &StageTokens,
    out: TensorId,
) {
    let (n_grid, dim) = (cfg.tokens(s), cfg.stages[s].dim);
    let pooled = b.activation("pooled", bt * dim);
    if seq.merged {
        // The mean reads the grid through the unmerge map.
        let via = Some(seq.unmerge());
        norm::mean_tokens(b, Family::Head, bt, n_grid, dim, seq.x, via, pooled);
    } else {
        let patches = patch_tokens(b, cfg, bt, s, seq, Family::Head, "patch tokens".into());
        norm::mean_tokens(b, Family::Head, bt, n_grid, dim, patches, None, pooled);
    }
    let normed = b.activation("pooled ln", bt * dim);
    let nw_w = b.weights("fc_norm.weight", &w.norm.weight);
    let nw_b = b.weights("fc_norm.bias", &w.norm.bias);
    norm::layer_norm(b, Family::Head, bt, dim, LN_EPS, pooled, nw_w, nw_b, normed);
    let head = linear::upload(b, "head", &w.head);
    linear::record(b, Family::Head, bt, &head, Epilogue::Bias, normed, out);
}

/// The heads on the normalised lead tokens (class, and distillation where there is one) into
/// `out`.
fn token_head(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    bt: usize,
    s: usize,
    seq: &StageTokens,
    out: TensorId,
) {
    let lead = Split::of(cfg).lead;
    let dim = cfg.stages[s].dim;
    let label = format!("stage{s} lead");
    let lead_x = take_tokens(b, Family::Head, bt, seq.x, seq.n, 0, lead, dim, label);
    let normed = b.activation("lead ln", bt * lead * dim);
    let nw_w = b.weights("norm.weight", &w.norm.weight);
    let nw_b = b.weights("norm.bias", &w.norm.bias);
    norm::layer_norm(
        b,
        Family::Head,
        bt * lead,
        dim,
        LN_EPS,
        lead_x,
        nw_w,
        nw_b,
        normed,
    );
    let head = linear::upload(b, "head", &head_linear(w));
    linear::record(b, Family::Head, bt, &head, Epilogue::Bias, normed, out);
}

/// PiT between stages `s` and `s + 1`: pool the grid (read through the unmerge map where
/// anything merged), map the lead tokens with the pooling's linear layer and put them in
/// front: the next stage's sequence.
fn pit_pool(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    bt: usize,
    s: usize,
    seq: &StageTokens,
) -> TensorId {
    let lead = Split::of(cfg).lead;
    let dim = cfg.stages[s].dim;
    let sw = &w.stages[s];
    let label = format!("stage{s} lead");
    let lead_x = take_tokens(b, Family::Pooling, bt, seq.x, seq.n, 0, lead, dim, label);
    let (Some(pool), Some(fc)) = (&sw.pool, &sw.pool_fc) else {
        unreachable!("load checks that PiT pools after every stage but the last")
    };
    // The grid: read through the unmerge map where anything merged (the unmerge stack folded
    // into the pooling's loads), else the grid tokens after the lead ones.
    let side = cfg.grid_side(s);
    let pooled = if seq.merged {
        record_pool(b, bt, s, side, pool, seq.x, Layout::Unmerged(seq.unmerge()))
    } else {
        let grid = patch_tokens(
            b,
            cfg,
            bt,
            s,
            seq,
            Family::Pooling,
            format!("stage{s} grid"),
        );
        record_pool(b, bt, s, side, pool, grid, Layout::Tokens)
    };
    let fcw = linear::upload(b, &format!("pools.{s}.fc"), fc);
    let lead_next = b.activation(format!("pool{s} lead"), bt * lead * fc.out_features);
    linear::record(
        b,
        Family::Pooling,
        bt * lead,
        &fcw,
        Epilogue::Bias,
        lead_x,
        lead_next,
    );
    prepend(
        b,
        bt,
        lead,
        lead_next,
        false,
        pooled,
        cfg.tokens(s + 1),
        fc.out_features,
        format!("stage{} sequence", s + 1),
    )
}
