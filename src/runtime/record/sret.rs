//! The plan of SReT: the three-convolution stem, stages of recursive shared blocks (sliced
//! attention, token merging between attention and MLP, the loop's own Non_proj MLP), the
//! unmerge stack and pooling between stages, and the head.

use super::{
    record_attention_half, record_mlp, record_pool, stem_bands, up_block, up_conv, up_ln, up_mlp,
    BlockTensors, Recorded, StageTokens, TraceTensors, Uploaded, LN_EPS,
};
use crate::kernels::attention::AttentionShape;
use crate::kernels::conv::{self, Band, ConvIo, ConvShape, Layout};
use crate::kernels::linear::{self, Epilogue};
use crate::kernels::merge::Unmerge;
use crate::kernels::mlp::Mlp;
use crate::kernels::norm;
use crate::kernels::{Family, ProgramBuilder, TensorId};
use crate::model::config::ModelConfig;
use crate::model::weights::{ModelWeights, StageWeights};
use crate::runtime::ForwardSpec;
use crate::tome::Split;

/// Record SReT's forward for `spec` into `b`.
pub(super) fn record(
    mut b: ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
) -> Recorded {
    let bt = spec.batch;
    let img_bytes = b.elem_bytes(bt * 3 * cfg.image_size * cfg.image_size);
    let img = b.external("images", img_bytes);
    let logit_bytes = b.elem_bytes(bt * cfg.num_classes);
    let out = b.external("logits", logit_bytes);
    let mut trace = TraceTensors::default();
    let mut x = stem(&mut b, cfg, w, bt, img);
    let mut last_grid = None;
    for s in 0..cfg.stages.len() {
        (x, last_grid) = stage(&mut b, cfg, &w.stages[s], spec, &mut trace, s, x);
    }
    head(&mut b, cfg, w, bt, x, last_grid, out);
    Recorded {
        builder: b,
        images: img,
        logits: out,
        trace,
    }
}

/// The stem: three stride-2 convolutions (BN folded, ReLU) from `img` to the first stage's
/// tokens, with the positional embedding added. conv1 and conv2 run band by band over conv2's
/// output rows, each band's conv1 rows (with their halo) in a small buffer, so that conv1's
/// output, the largest activation of the model, never exists whole where it is large
/// ([`stem_bands`]). conv3 reads conv2's output and
/// writes tokens.
fn stem(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    bt: usize,
    img: TensorId,
) -> TensorId {
    let mut shapes = Vec::with_capacity(3);
    let (mut h, mut cin) = (cfg.image_size, 3usize);
    for c in &w.stem {
        let shape = ConvShape {
            batch: bt,
            cin,
            h,
            w: h,
            cout: c.out_channels,
            k: c.kernel,
            stride: c.stride,
            pad: c.padding,
            groups: c.groups,
        };
        shapes.push(shape);
        (h, cin) = (shape.out_hw().0, c.out_channels);
    }
    let ups: Vec<Uploaded> = w
        .stem
        .iter()
        .enumerate()
        .map(|(i, c)| up_conv(b, &format!("patch_embed.conv{}", i + 1), c))
        .collect();
    let io =
        |x: TensorId, up: &Uploaded, y: TensorId, output: Layout, pos: Option<TensorId>| ConvIo {
            x,
            weight: up.weight,
            bias: up.bias,
            pos,
            y,
            input: Layout::Nchw,
            output,
            relu: true,
        };
    let (oh1, ow1) = shapes[0].out_hw();
    let (oh2, ow2) = shapes[1].out_hw();
    let stem2 = b.activation("stem2", bt * shapes[1].cout * oh2 * ow2);
    let conv1_bytes = b.elem_bytes(bt * shapes[0].cout * oh1 * ow1);
    let band_rows = oh2.div_ceil(stem_bands(conv1_bytes));
    for first in (0..oh2).step_by(band_rows) {
        let rows = (first, (first + band_rows).min(oh2));
        let (r0, r1) = shapes[1].input_rows(rows);
        let band1 = b.activation(
            format!("stem1 rows {r0}..{r1}"),
            bt * shapes[0].cout * (r1 - r0) * ow1,
        );
        conv::record_band(
            b,
            Family::Stem,
            shapes[0],
            io(img, &ups[0], band1, Layout::Nchw, None),
            Band {
                out_rows: (r0, r1),
                in_buf: (0, shapes[0].h),
                out_buf: (r0, r1 - r0),
            },
        );
        conv::record_band(
            b,
            Family::Stem,
            shapes[1],
            io(band1, &ups[1], stem2, Layout::Nchw, None),
            Band {
                out_rows: rows,
                in_buf: (r0, r1 - r0),
                out_buf: (0, oh2),
            },
        );
    }
    debug_assert_eq!(oh1, shapes[1].h);
    let (oh3, ow3) = shapes[2].out_hw();
    let pos = b.weights("pos_embed", &w.pos_embed);
    let x = b.activation("tokens", bt * oh3 * ow3 * shapes[2].cout);
    conv::record(
        b,
        Family::Stem,
        shapes[2],
        io(stem2, &ups[2], x, Layout::Tokens, Some(pos)),
    );
    x
}

/// Stage `s`: its executions of the shared blocks on the tokens `x`, then the pooling to the
/// next stage, if any, reading the grid through the unmerge map when anything merged. Returns
/// the next stage's tokens, or the last stage's sequence and how to read it as the grid.
fn stage(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    sw: &StageWeights,
    spec: &ForwardSpec,
    trace: &mut TraceTensors,
    s: usize,
    x: TensorId,
) -> (TensorId, Option<Unmerge>) {
    let bt = spec.batch;
    let sc = &cfg.stages[s];
    let n_grid = cfg.tokens(s);
    let dim = sc.dim;
    let blocks: Vec<BlockTensors> = sw
        .blocks
        .iter()
        .enumerate()
        .map(|(i, bw)| up_block(b, &format!("transformers.{s}.block{i}"), bw))
        .collect();
    let mut seq = StageTokens::start(
        b,
        spec,
        s,
        x,
        n_grid,
        n_grid,
        dim,
        sc.heads,
        Split::default(),
    );
    for exec in 0..sc.depth {
        execution(b, cfg, sw, &blocks, spec, trace, &mut seq, s, exec);
    }
    // The grid is never restored: the pooling, or the head, reads it through the unmerge
    // stack composed into one map.
    if seq.merged && spec.trace {
        trace.stage_maps.push((s, seq.map, n_grid));
    }
    let grid = seq.merged.then(|| seq.unmerge());
    let Some(pool) = &sw.pool else {
        return (seq.x, grid);
    };
    let input = grid.map_or(Layout::Tokens, Layout::Unmerged);
    (
        record_pool(b, bt, s, cfg.grid_side(s), pool, seq.x, input),
        None,
    )
}

/// Execution `exec` of stage `s`: sliced attention of its shared block, the merge the
/// trajectory schedules after it, the block's MLP and the loop's own Non_proj MLP.
#[allow(clippy::too_many_arguments)]
fn execution(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    sw: &StageWeights,
    blocks: &[BlockTensors],
    spec: &ForwardSpec,
    trace: &mut TraceTensors,
    seq: &mut StageTokens,
    s: usize,
    exec: usize,
) {
    let bt = spec.batch;
    let sc = &cfg.stages[s];
    let dim = sc.dim;
    let label = format!("s{s}e{exec}");
    let blk = &blocks[sc.block_of(exec)];
    let coef = sw.blocks[sc.block_of(exec)].coef;
    let perm = spec.perms[s][exec]
        .as_ref()
        .map(|p| b.constant(format!("perm.{s}.{exec}"), p));
    let shape = AttentionShape {
        batch: bt,
        n: seq.n,
        dim,
        heads: sc.heads,
        groups: sc.groups_of(exec),
    };
    // The MLP half before this execution computed its `qkv` (the stage's first reads the
    // statistics its input's writer left, or measures them). Without a merge the projection is
    // left to the MLP half.
    let matching = seq.merge_at(spec, exec);
    let stats = seq.stats.take();
    let ready = seq.qkv.take();
    let (qkv, proj, matched) = record_attention_half(
        b, shape, blk, coef, seq.x, stats, ready, perm, seq.mass, matching, &label,
    );
    // Token merging between attention and MLP.
    seq.merge(b, spec, trace, exec, qkv, matched, &label);
    let x = seq.x;
    let rows = bt * seq.n;
    let stats = seq.stats.take();
    // The block's MLP, then the loop's own Non_proj MLP on the same rows, then the next
    // execution's qkv.
    let np = &sw.non_projs[exec];
    let np_label = format!("{label}.np");
    let block_mlp = Mlp {
        weights: blk.mlp,
        coef: (coef[2], coef[3]),
    };
    let non_proj = Mlp {
        weights: up_mlp(b, &np_label, &np.norm1, &np.fc1, &np.fc2),
        coef: (np.coef[0], np.coef[1]),
    };
    let next = (exec + 1 < sc.depth).then(|| blocks[sc.block_of(exec + 1)].qkv_next(b, dim));
    seq.qkv = record_mlp(
        b,
        rows,
        x,
        stats,
        proj,
        &block_mlp,
        Some(&non_proj),
        next,
        &label,
    );
}

/// The head: mean over the last grid (`x`, read through `grid` where it merged), LayerNorm,
/// linear classifier into `out`.
fn head(
    b: &mut ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    bt: usize,
    x: TensorId,
    grid: Option<Unmerge>,
    out: TensorId,
) {
    let last = cfg.stages.len() - 1;
    let dim = cfg.final_dim();
    let pooled = b.activation("pooled", bt * dim);
    norm::mean_tokens(b, Family::Head, bt, cfg.tokens(last), dim, x, grid, pooled);
    let normed = b.activation("pooled ln", bt * dim);
    let nw = up_ln(b, "norm", &w.norm);
    norm::layer_norm(
        b,
        Family::Head,
        bt,
        dim,
        LN_EPS,
        pooled,
        nw.weight,
        nw.bias,
        normed,
    );
    let hw = linear::upload(b, "head", &w.head);
    linear::record(b, Family::Head, bt, &hw, Epilogue::Bias, normed, out);
}
