//! The plan of DeiT / ViT and PiT: patch convolution, lead tokens in front, plain blocks with
//! ToMe, PiT's unmerge-then-pool between stages, and the heads on the lead tokens (or, with
//! timm's `global_pool='avg'`, on the `fc_norm` of the patch tokens' mean, weighted by size as
//! ToMe's MAE patch pools).

use super::{
    record_attention_half, record_mlp, record_pool, up_block, up_conv, BlockTensors, Recorded,
    StageTokens, TraceTensors, LN_EPS,
};
use crate::gpu::{Family, ProgramBuilder, TensorId};
use crate::kernels::attention::AttentionShape;
use crate::kernels::conv::{self, ConvIo, ConvShape, Layout};
use crate::kernels::linear::{self, Epilogue};
use crate::kernels::norm;
use crate::kernels::tokens::{record_copy, TokenCopy};
use crate::kernels::tome as tome_k;
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

pub(super) fn record(
    mut b: ProgramBuilder,
    cfg: &ModelConfig,
    v: &VitConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
) -> Recorded {
    let bt = spec.batch;
    let split = Split::of(cfg);
    let lead = split.lead;
    let img_bytes = b.elem_bytes(bt * 3 * cfg.image_size * cfg.image_size);
    let img = b.external("images", img_bytes);
    let logit_bytes = b.elem_bytes(bt * cfg.num_classes);
    let out = b.external("logits", logit_bytes);
    let mut trace = TraceTensors::default();

    // Patch convolution with the grid's position embedding, then the lead tokens in front.
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
    let up = up_conv(&mut b, "patch_embed", patch);
    let pos = b.weights("pos_embed", &w.pos_embed);
    let patches = b.activation("patches", bt * cfg.tokens(0) * d0);
    conv::record(
        &mut b,
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
    let mut x = prepend(
        &mut b,
        bt,
        lead,
        lead_tokens,
        true,
        patches,
        cfg.tokens(0),
        d0,
        "sequence".into(),
    );

    let last = cfg.stages.len() - 1;
    for (s, (sc, sw)) in cfg.stages.iter().zip(&w.stages).enumerate() {
        let n_grid = cfg.tokens(s);
        let dim = sc.dim;
        let blocks: Vec<BlockTensors> = sw
            .blocks
            .iter()
            .enumerate()
            .map(|(i, bw)| up_block(&mut b, &format!("stage{s}.block{i}"), bw))
            .collect();
        let mut seq = StageTokens::start(
            &mut b,
            spec,
            s,
            x,
            lead + n_grid,
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
            let qkv =
                record_attention_half(&mut b, shape, blk, [1.0; 4], seq.x, None, mass, &label);
            seq.merge(&mut b, spec, &mut trace, exec, qkv, &label);
            record_mlp(
                &mut b,
                bt * seq.n,
                dim,
                sc.mlp_hidden,
                seq.x,
                &blk.fc1,
                &blk.fc2,
                (1.0, 1.0),
                &label,
            );
        }
        if seq.merged && spec.trace {
            trace.stage_maps.push((s, seq.map, n_grid));
        }
        let n = seq.n;
        x = seq.x;
        // For the heads after the last stage, for the pooling's linear map before the others.
        let family = if s == last {
            Family::Head
        } else {
            Family::Pooling
        };
        if s == last && v.pool == VitPool::Avg {
            // global_pool='avg' as ToMe's MAE patch pools: every merged token by its size, i.e.
            // the mean of the restored grid; then fc_norm.
            let grid = if seq.merged {
                let full = b.activation("restored grid", bt * n_grid * dim);
                tome_k::record_unmerge(&mut b, bt, n_grid, n, dim, x, seq.map, full);
                full
            } else {
                take_tokens(
                    &mut b,
                    Family::Head,
                    bt,
                    x,
                    n,
                    lead,
                    n_grid,
                    dim,
                    "patch tokens".into(),
                )
            };
            let pooled = b.activation("pooled", bt * dim);
            norm::mean_tokens(&mut b, Family::Head, bt, n_grid, dim, grid, pooled);
            let normed = b.activation("pooled ln", bt * dim);
            let nw_w = b.weights("fc_norm.weight", &w.norm.weight);
            let nw_b = b.weights("fc_norm.bias", &w.norm.bias);
            norm::layer_norm(
                &mut b,
                Family::Head,
                bt,
                dim,
                LN_EPS,
                pooled,
                nw_w,
                nw_b,
                normed,
            );
            let head = linear::upload(&mut b, "head", &w.head);
            linear::record(&mut b, Family::Head, bt, &head, Epilogue::Bias, normed, out);
            break;
        }
        let lead_x = take_tokens(
            &mut b,
            family,
            bt,
            x,
            n,
            0,
            lead,
            dim,
            format!("stage{s} lead"),
        );
        if s == last {
            // The heads read the normalised lead tokens.
            let normed = b.activation("lead ln", bt * lead * dim);
            let nw_w = b.weights("norm.weight", &w.norm.weight);
            let nw_b = b.weights("norm.bias", &w.norm.bias);
            norm::layer_norm(
                &mut b,
                Family::Head,
                bt * lead,
                dim,
                LN_EPS,
                lead_x,
                nw_w,
                nw_b,
                normed,
            );
            let head = linear::upload(&mut b, "head", &head_linear(w));
            linear::record(&mut b, Family::Head, bt, &head, Epilogue::Bias, normed, out);
            break;
        }
        // PiT: restore the grid (the unmerge stack as one gather), pool it, map the lead tokens.
        let grid = if seq.merged {
            let full = b.activation(format!("stage{s} restored"), bt * n_grid * dim);
            tome_k::record_unmerge(&mut b, bt, n_grid, n, dim, x, seq.map, full);
            full
        } else {
            take_tokens(
                &mut b,
                Family::Unmerge,
                bt,
                x,
                n,
                lead,
                n_grid,
                dim,
                format!("stage{s} grid"),
            )
        };
        let (Some(pool), Some(fc)) = (&sw.pool, &sw.pool_fc) else {
            unreachable!("load checks that PiT pools after every stage but the last")
        };
        let pooled = record_pool(&mut b, bt, s, cfg.grid_side(s), pool, grid);
        let next_tokens = cfg.tokens(s + 1);
        let fcw = linear::upload(&mut b, &format!("pools.{s}.fc"), fc);
        let lead_next = b.activation(format!("pool{s} lead"), bt * lead * fc.out_features);
        linear::record(
            &mut b,
            Family::Pooling,
            bt * lead,
            &fcw,
            Epilogue::Bias,
            lead_x,
            lead_next,
        );
        x = prepend(
            &mut b,
            bt,
            lead,
            lead_next,
            false,
            pooled,
            next_tokens,
            fc.out_features,
            format!("stage{} sequence", s + 1),
        );
    }

    Recorded {
        builder: b,
        images: img,
        logits: out,
        trace,
    }
}
