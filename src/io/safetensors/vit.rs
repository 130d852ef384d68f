//! The timm `state_dict()` layouts of its `VisionTransformer` family (DeiT, DeiT-Distilled, ViT,
//! any width, depth, patch and image size) and of PiT-Ti (with and without distillation).
//!
//! ```text
//! DeiT: cls_token [1, 1, D], dist_token [1, 1, D], pos_embed [1, lead + N, D],
//!       patch_embed.proj.{weight,bias} [D, 3, P, P], blocks.{i}.…, norm, head, head_dist
//!       (global_pool='avg': fc_norm instead of norm, which is the identity)
//! PiT:  cls_token [1, lead, D], pos_embed [1, D, 27, 27], patch_embed.conv.{weight,bias},
//!       transformers.{s}.blocks.{i}.…, transformers.{s+1}.pool.{conv,fc}.…, norm, head, head_dist
//! ```
//!
//! PiT's pooling is also accepted under the names of the original (NAVER) checkpoints and the
//! paper's `PiT_ToMe.py`, `pools.{s}.{conv,fc}` (timm's `checkpoint_filter_fn` renames them).
//!
//! DeiT adds its position embedding to the class and distillation tokens before the first
//! block, so they are kept with it added ([`ModelWeights::lead_tokens`]); on save they are
//! written as the tokens with a zero position row, which gives the same forward.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{
    block_params, check_conv, check_linear, conv_template, structure_error, take, take_linear,
    take_norm, Layout, Result,
};
use crate::model::config::{Arch, ModelConfig, VitConfig, VitPool};
use crate::model::weights::{BlockWeights, Conv, Linear, ModelWeights, StageWeights};

/// timm's `VisionTransformer` layout (DeiT, ViT), as opposed to PiT's.
fn is_deit(cfg: &ModelConfig) -> bool {
    matches!(
        cfg.arch,
        Arch::Vit(VitConfig {
            pos_on_lead: true,
            ..
        })
    )
}

/// The final LayerNorm's name: `norm`, or `fc_norm` after average pooling.
fn final_norm(v: &VitConfig) -> &'static str {
    match v.pool {
        VitPool::Token => "norm",
        VitPool::Avg => "fc_norm",
    }
}

/// Prefix of block `i` of stage `s`.
fn block(cfg: &ModelConfig, s: usize, i: usize) -> String {
    if is_deit(cfg) {
        format!("blocks.{i}")
    } else {
        format!("transformers.{s}.blocks.{i}")
    }
}

fn patch_conv(cfg: &ModelConfig) -> &'static str {
    if is_deit(cfg) {
        "patch_embed.proj"
    } else {
        "patch_embed.conv"
    }
}

/// timm's name of the pooling after stage `s` (`part`: `conv` or `fc`), and the original one.
fn pool_name(s: usize, part: &str) -> (String, String) {
    (
        format!("transformers.{}.pool.{part}", s + 1),
        format!("pools.{s}.{part}"),
    )
}

pub(super) fn layout(l: &mut Layout, cfg: &ModelConfig, v: &VitConfig) {
    let d0 = cfg.stages[0].dim;
    let side = cfg.grid_side(0);
    if is_deit(cfg) {
        l.tensor("cls_token".into(), None, vec![1, 1, d0]);
        if v.distilled {
            l.tensor("dist_token".into(), None, vec![1, 1, d0]);
        }
        l.tensor(
            "pos_embed".into(),
            None,
            vec![1, v.lead() + side * side, d0],
        );
    } else {
        l.tensor("pos_embed".into(), None, vec![1, d0, side, side]);
        l.tensor("cls_token".into(), None, vec![1, v.lead(), d0]);
    }
    let pc = patch_conv(cfg);
    l.tensor(format!("{pc}.weight"), None, vec![d0, 3, v.patch, v.patch]);
    l.tensor(format!("{pc}.bias"), None, vec![d0]);
    for (s, st) in cfg.stages.iter().enumerate() {
        if s > 0 {
            let prev = cfg.stages[s - 1].dim;
            for (part, shape, bias) in [
                ("conv", vec![st.dim, 1, 3, 3], vec![st.dim]),
                ("fc", vec![st.dim, prev], vec![st.dim]),
            ] {
                let (timm, original) = pool_name(s - 1, part);
                l.tensor(format!("{timm}.weight"), None, shape);
                l.tensor(format!("{timm}.bias"), None, bias);
                l.alias(format!("{original}.weight"), &format!("{timm}.weight"));
                l.alias(format!("{original}.bias"), &format!("{timm}.bias"));
            }
        }
        for i in 0..st.depth {
            let p = block(cfg, s, i);
            // SReT's Transformer_Block without its residual coefficients: timm's Block.
            for (suffix, shape) in block_params(st.dim, st.mlp_hidden) {
                if !suffix.starts_with("coefficient") {
                    l.tensor(format!("{p}.{suffix}"), None, shape);
                }
            }
        }
    }
    let fd = cfg.final_dim();
    let norm = final_norm(v);
    l.tensor(format!("{norm}.weight"), None, vec![fd]);
    l.tensor(format!("{norm}.bias"), None, vec![fd]);
    for head in ["head", "head_dist"].iter().take(1 + v.distilled as usize) {
        l.tensor(format!("{head}.weight"), None, vec![cfg.num_classes, fd]);
        l.tensor(format!("{head}.bias"), None, vec![cfg.num_classes]);
    }
}

/// The patch convolution's geometry (no weights): `patch` x `patch`, stride `stride`, no padding.
fn patch_template(v: &VitConfig, d0: usize) -> Conv {
    Conv {
        kernel: v.patch,
        stride: v.stride,
        padding: 0,
        ..conv_template(d0, 3, 1)
    }
}

pub(super) fn assemble(
    values: &mut HashMap<String, Vec<f32>>,
    cfg: &ModelConfig,
    v: &VitConfig,
) -> ModelWeights {
    let d0 = cfg.stages[0].dim;
    let n0 = cfg.tokens(0);
    let lead = v.lead();
    let pos = take(values, "pos_embed");
    let (pos_embed, lead_tokens) = if is_deit(cfg) {
        // [lead + n, d] token-major: lead rows go with the tokens, the grid is transposed.
        let mut tokens = take(values, "cls_token");
        if v.distilled {
            tokens.extend(take(values, "dist_token"));
        }
        for (t, p) in tokens.iter_mut().zip(&pos) {
            *t += *p;
        }
        let mut grid = vec![0.0; d0 * n0];
        for t in 0..n0 {
            for c in 0..d0 {
                grid[c * n0 + t] = pos[(lead + t) * d0 + c];
            }
        }
        (grid, tokens)
    } else {
        (pos, take(values, "cls_token"))
    };
    let pc = patch_conv(cfg);
    let stem = vec![Conv {
        weight: take(values, &format!("{pc}.weight")),
        bias: take(values, &format!("{pc}.bias")),
        ..patch_template(v, d0)
    }];
    let mut stages = Vec::with_capacity(cfg.stages.len());
    for (s, st) in cfg.stages.iter().enumerate() {
        let d = st.dim;
        let blocks = (0..st.depth)
            .map(|i| {
                let p = block(cfg, s, i);
                BlockWeights {
                    norm1: take_norm(values, &format!("{p}.norm1")),
                    qkv: take_linear(values, &format!("{p}.attn.qkv"), 3 * d, d),
                    proj: take_linear(values, &format!("{p}.attn.proj"), d, d),
                    norm2: take_norm(values, &format!("{p}.norm2")),
                    fc1: take_linear(values, &format!("{p}.mlp.fc1"), st.mlp_hidden, d),
                    fc2: take_linear(values, &format!("{p}.mlp.fc2"), d, st.mlp_hidden),
                    coef: [1.0; 4],
                }
            })
            .collect();
        let next = cfg.stages.get(s + 1);
        let pool = next.map(|n| {
            let (conv, _) = pool_name(s, "conv");
            Conv {
                weight: take(values, &format!("{conv}.weight")),
                bias: take(values, &format!("{conv}.bias")),
                ..conv_template(n.dim, d, d)
            }
        });
        let pool_fc = next.map(|n| take_linear(values, &pool_name(s, "fc").0, n.dim, d));
        stages.push(StageWeights {
            blocks,
            non_projs: Vec::new(),
            pool,
            pool_fc,
        });
    }
    let fd = cfg.final_dim();
    let norm = take_norm(values, final_norm(v));
    let head = take_linear(values, "head", cfg.num_classes, fd);
    let head_dist = v
        .distilled
        .then(|| take_linear(values, "head_dist", cfg.num_classes, fd));
    debug_assert!(values.is_empty(), "unused tensors: {:?}", values.keys());
    ModelWeights {
        stem,
        pos_embed,
        lead_tokens,
        stages,
        norm,
        head,
        head_dist,
    }
}

/// The weights' tensors keyed by timm name, after checking the structure against `cfg`.
pub(super) fn collect<'w>(
    w: &'w ModelWeights,
    cfg: &ModelConfig,
    v: &VitConfig,
) -> Result<HashMap<String, Cow<'w, [f32]>>> {
    let mut m: HashMap<String, Cow<'w, [f32]>> = HashMap::new();
    let d0 = cfg.stages[0].dim;
    let n0 = cfg.tokens(0);
    let lead = v.lead();
    if w.lead_tokens.len() != lead * d0 || w.pos_embed.len() != d0 * n0 {
        return Err(structure_error(
            "lead tokens / pos_embed".into(),
            format!(
                "{} and {} values, model {} needs {} and {}",
                w.lead_tokens.len(),
                w.pos_embed.len(),
                cfg.name,
                lead * d0,
                d0 * n0
            ),
        ));
    }
    if is_deit(cfg) {
        let mut pos = vec![0.0; (lead + n0) * d0];
        for t in 0..n0 {
            for c in 0..d0 {
                pos[(lead + t) * d0 + c] = w.pos_embed[c * n0 + t];
            }
        }
        m.insert("pos_embed".into(), Cow::Owned(pos));
        m.insert("cls_token".into(), Cow::Borrowed(&w.lead_tokens[..d0]));
        if v.distilled {
            m.insert("dist_token".into(), Cow::Borrowed(&w.lead_tokens[d0..]));
        }
    } else {
        m.insert("pos_embed".into(), Cow::Borrowed(&w.pos_embed));
        m.insert("cls_token".into(), Cow::Borrowed(&w.lead_tokens));
    }
    let put_linear = |m: &mut HashMap<String, Cow<'w, [f32]>>, p: &str, l: &'w Linear| {
        m.insert(format!("{p}.weight"), Cow::Borrowed(&l.weight));
        m.insert(format!("{p}.bias"), Cow::Borrowed(&l.bias));
    };
    let pc = patch_conv(cfg);
    let [patch] = w.stem.as_slice() else {
        return Err(structure_error(
            "stem".into(),
            format!("{} convolutions, model {} has one", w.stem.len(), cfg.name),
        ));
    };
    check_conv(pc, patch, &patch_template(v, d0))?;
    m.insert(format!("{pc}.weight"), Cow::Borrowed(&patch.weight));
    m.insert(format!("{pc}.bias"), Cow::Borrowed(&patch.bias));
    if w.stages.len() != cfg.stages.len() {
        return Err(structure_error(
            "stages".into(),
            format!(
                "{}, model {} has {}",
                w.stages.len(),
                cfg.name,
                cfg.stages.len()
            ),
        ));
    }
    for (s, (sw, st)) in w.stages.iter().zip(&cfg.stages).enumerate() {
        let d = st.dim;
        if sw.blocks.len() != st.depth || sw.blocks.iter().any(|b| b.coef != [1.0; 4]) {
            return Err(structure_error(
                format!("stage {s}"),
                format!(
                    "{} blocks (model {} has {} plain blocks, residual coefficients 1)",
                    sw.blocks.len(),
                    cfg.name,
                    st.depth
                ),
            ));
        }
        for (i, bw) in sw.blocks.iter().enumerate() {
            let p = block(cfg, s, i);
            check_linear(&format!("{p}.attn.qkv"), &bw.qkv, 3 * d, d)?;
            check_linear(&format!("{p}.attn.proj"), &bw.proj, d, d)?;
            check_linear(&format!("{p}.mlp.fc1"), &bw.fc1, st.mlp_hidden, d)?;
            check_linear(&format!("{p}.mlp.fc2"), &bw.fc2, d, st.mlp_hidden)?;
            for (n, norm) in [("norm1", &bw.norm1), ("norm2", &bw.norm2)] {
                m.insert(format!("{p}.{n}.weight"), Cow::Borrowed(&norm.weight));
                m.insert(format!("{p}.{n}.bias"), Cow::Borrowed(&norm.bias));
            }
            put_linear(&mut m, &format!("{p}.attn.qkv"), &bw.qkv);
            put_linear(&mut m, &format!("{p}.attn.proj"), &bw.proj);
            put_linear(&mut m, &format!("{p}.mlp.fc1"), &bw.fc1);
            put_linear(&mut m, &format!("{p}.mlp.fc2"), &bw.fc2);
        }
        match (&sw.pool, &sw.pool_fc, cfg.stages.get(s + 1)) {
            (Some(conv), Some(fc), Some(next)) => {
                let (cname, _) = pool_name(s, "conv");
                check_conv(&cname, conv, &conv_template(next.dim, d, d))?;
                m.insert(format!("{cname}.weight"), Cow::Borrowed(&conv.weight));
                m.insert(format!("{cname}.bias"), Cow::Borrowed(&conv.bias));
                let (fname, _) = pool_name(s, "fc");
                check_linear(&fname, fc, next.dim, d)?;
                put_linear(&mut m, &fname, fc);
            }
            (None, None, None) => {}
            _ => {
                return Err(structure_error(
                    format!("stage {s} pool"),
                    format!(
                        "model {} pools (conv and fc) after every stage but the last",
                        cfg.name
                    ),
                ))
            }
        }
    }
    let fd = cfg.final_dim();
    let norm = final_norm(v);
    m.insert(format!("{norm}.weight"), Cow::Borrowed(&w.norm.weight));
    m.insert(format!("{norm}.bias"), Cow::Borrowed(&w.norm.bias));
    check_linear("head", &w.head, cfg.num_classes, fd)?;
    put_linear(&mut m, "head", &w.head);
    match (&w.head_dist, v.distilled) {
        (Some(h), true) => {
            check_linear("head_dist", h, cfg.num_classes, fd)?;
            put_linear(&mut m, "head_dist", h);
        }
        (None, false) => {}
        (have, _) => {
            return Err(structure_error(
                "head_dist".into(),
                format!(
                    "{}, but model {} is {}distilled",
                    if have.is_some() { "present" } else { "absent" },
                    cfg.name,
                    if v.distilled { "" } else { "not " }
                ),
            ))
        }
    }
    Ok(m)
}
