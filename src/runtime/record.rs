//! Recording one forward pass: every dispatch of the model for a fixed (model,
//! merge trajectory, permutations, micro-batch), recorded once into a [`Program`].

use std::cell::OnceCell;

use super::spec::ForwardSpec;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::conv::{self, ConvIo, ConvShape, Layout};
use crate::kernels::linear::{self, LinearWeights};
use crate::kernels::merge::{record_merge, Matched, MergeShape, Unmerge};
use crate::kernels::mlp::{self, Mlp, MlpWeights, NextLayer, Projection};
use crate::kernels::norm::RowStats;
use crate::kernels::{Family, PipelineCache, Program, ProgramBuilder, TensorId};
use crate::model::config::{Arch, ModelConfig};
use crate::model::weights::{BlockWeights, Conv, LayerNorm, ModelWeights};
use crate::tome::Split;

mod sret;
mod vit;

/// Most bands the stem's first two convolutions run in (see `sret::stem`).
pub const STEM_BANDS: usize = 8;

/// The stem splits its first convolution's output into bands of at most this many bytes (up to
/// [`STEM_BANDS`]): a band costs two dispatches, several microseconds on a GPU (5 us moves
/// 1.4 MB at 288 GB/s), so small batches take fewer bands. SReT-T (1.6 MB from conv1 per image)
/// runs 4 bands at batch 1 (9 dispatches; peak activation memory 1.35 MB, set by the stem, where
/// 8 bands gave 1.16 MB, set by the first stage: within the 1.5 MB budget `tests/engine.rs`
/// holds) and 8 from batch 3 on.
pub const STEM_BAND_BYTES: u64 = 512 << 10;

/// Bands for a first stem convolution writing `bytes`: the fewest of at most
/// [`STEM_BAND_BYTES`] each, at most [`STEM_BANDS`].
pub fn stem_bands(bytes: u64) -> usize {
    (bytes.div_ceil(STEM_BAND_BYTES) as usize).clamp(1, STEM_BANDS)
}

/// LayerNorm epsilon of every SReT norm layer.
pub const LN_EPS: f32 = 1e-6;

/// Tensors a trace reads back after a run.
#[derive(Clone, Debug, Default)]
pub struct TraceTensors {
    /// `(stage, exec, slot map [batch, n_in], masses [batch, n_out], n_in, n_out)`
    pub merges: Vec<(usize, usize, TensorId, TensorId, usize, usize)>,
    /// `(stage, map [batch, n_grid], n_grid)`
    pub stage_maps: Vec<(usize, TensorId, usize)>,
}

/// A forward made real on a device: the program and what a trace reads back.
pub struct ForwardProgram {
    /// The finished program of one micro-batch.
    pub program: Program,
    /// Images per run of the program (the micro-batch).
    pub batch: usize,
    /// Tensors a trace reads back.
    pub trace: TraceTensors,
}

struct Uploaded {
    weight: TensorId,
    bias: TensorId,
}

fn up_ln(b: &mut ProgramBuilder, name: &str, l: &LayerNorm) -> Uploaded {
    Uploaded {
        weight: b.weights(format!("{name}.weight"), &l.weight),
        bias: b.weights(format!("{name}.bias"), &l.bias),
    }
}
fn up_conv(b: &mut ProgramBuilder, name: &str, c: &Conv) -> Uploaded {
    let (weight, bias) = conv::upload(b, name, c);
    Uploaded { weight, bias }
}

/// A shared block's weights; its LayerNorms are folded into the linear layers that consume them
/// (`qkv`, `fc1`), which normalise their input rows as they load them. `qkv` and the projection
/// are uploaded when first recorded, as linear layers, as the fused MLP reads them, or both (the
/// first execution of a stage runs `qkv` as a linear layer, the others in the MLP before them; a
/// schedule may merge after some executions of a shared block and not others).
struct BlockTensors<'w> {
    mlp: MlpWeights,
    name: String,
    host: &'w BlockWeights,
    qkv: OnceCell<LinearWeights>,
    qkv_packed: OnceCell<TensorId>,
    proj: OnceCell<LinearWeights>,
    proj_packed: OnceCell<TensorId>,
}

impl BlockTensors<'_> {
    /// `qkv` as a linear layer.
    fn qkv(&self, b: &mut ProgramBuilder) -> &LinearWeights {
        self.qkv.get_or_init(|| {
            let name = format!("{}.qkv", self.name);
            up_normalized(b, &name, &self.host.qkv, &self.host.norm1)
        })
    }

    /// `qkv` for the MLP half before this block to run last (packed for the fused MLP where
    /// `dim`-wide rows take it).
    fn qkv_next(&self, b: &mut ProgramBuilder, dim: usize) -> NextLayer<'_> {
        let packed = mlp::fused(b, dim).then(|| {
            *self.qkv_packed.get_or_init(|| {
                let folded = linear::fold_layer_norm(&self.host.qkv, &self.host.norm1);
                mlp::upload_packed(b, &format!("{}.qkv", self.name), &folded)
            })
        });
        NextLayer {
            weights: self.qkv(b),
            packed,
        }
    }

    /// The projection as a linear layer.
    fn proj(&self, b: &mut ProgramBuilder) -> &LinearWeights {
        self.proj
            .get_or_init(|| linear::upload(b, &format!("{}.proj", self.name), &self.host.proj))
    }

    /// The attention half's projection and residual `x = ca * x + cb * proj(att)`, for the MLP
    /// half to record in front of its own work (packed for the fused MLP where `dim`-wide rows
    /// take it).
    fn projection(
        &self,
        b: &mut ProgramBuilder,
        att: TensorId,
        coef: (f32, f32),
        dim: usize,
    ) -> Projection<'_> {
        let packed = mlp::fused(b, dim).then(|| {
            *self.proj_packed.get_or_init(|| {
                mlp::upload_packed(b, &format!("{}.proj", self.name), &self.host.proj)
            })
        });
        Projection {
            attn: att,
            weights: self.proj(b),
            packed,
            coef,
        }
    }
}

/// Upload `lin` with the LayerNorm before it folded in ([`linear::fold_layer_norm`]).
fn up_normalized(
    b: &mut ProgramBuilder,
    name: &str,
    lin: &crate::model::weights::Linear,
    ln: &LayerNorm,
) -> LinearWeights {
    linear::upload(b, name, &linear::fold_layer_norm(lin, ln))
}

/// Upload the MLP `fc2(gelu(fc1(ln(x))))` with `ln` folded into `fc1`, in the form `b`'s program
/// runs it ([`mlp::upload`]).
fn up_mlp(
    b: &mut ProgramBuilder,
    name: &str,
    ln: &LayerNorm,
    fc1: &crate::model::weights::Linear,
    fc2: &crate::model::weights::Linear,
) -> MlpWeights {
    mlp::upload(b, name, &linear::fold_layer_norm(fc1, ln), fc2)
}

/// `x = ca * x + cb * fc2(gelu(fc1(LN(x))))`, the MLP half of both block kinds, with the
/// LayerNorm folded into `fc1` (the fused MLP measures each row's statistics, the unfused one
/// takes `x_stats` or measures them), after the attention half's projection `proj` where that
/// was left to it, then `then` on the same rows where given (SReT's Non_proj MLP; in the same
/// dispatch where fused), then `next` (the next block's `qkv`, likewise). Returns `next`'s
/// output.
#[allow(clippy::too_many_arguments)]
fn record_mlp(
    b: &mut ProgramBuilder,
    rows: usize,
    x: TensorId,
    x_stats: Option<RowStats>,
    proj: Option<Projection>,
    mlp: &Mlp,
    then: Option<&Mlp>,
    next: Option<NextLayer>,
    label: &str,
) -> Option<TensorId> {
    let out = format!("{label} mlp out");
    let norm = (x_stats, LN_EPS);
    mlp::record(b, rows, mlp, then, norm, proj, next, false, x, &out).next
}

/// Whether the MLP half of `dim`-wide rows takes its LayerNorm's statistics from the kernel
/// before it (the unfused MLP's fc1 does; the fused MLP measures them).
fn mlp_takes_stats(b: &ProgramBuilder, dim: usize) -> bool {
    !mlp::fused(b, dim)
}

/// `attention(qkv(LN(x)))`, the attention half of every block (sliced, permuted and
/// proportional as `shape`, `perm` and `mass` say), with the LayerNorm folded into `qkv`
/// (statistics `x_stats`, or measured; or `qkv` as `ready` where the MLP before computed it; a
/// stage's first `qkv` is recorded as the fused MLP's next layer alone, in the MLP's family),
/// then `x = ca * x + cb * proj(attention)`: recorded here (in the attention's family) when a
/// merge comes before the MLP (`matching`, the merge's shape: its matching rides in the
/// attention's dispatch where it can), else returned for the MLP half to record in front of
/// its own work (in one dispatch with the fused MLP; in the MLP's family either way, so that
/// the MLP kind's time covers the same work fused or not). Returns `qkv`, whose keys the
/// matching reads, the projection left to do and the matching where asked for.
#[allow(clippy::too_many_arguments)]
fn record_attention_half<'b>(
    b: &mut ProgramBuilder,
    shape: AttentionShape,
    blk: &'b BlockTensors,
    coef: [f32; 4],
    x: TensorId,
    x_stats: Option<RowStats>,
    ready: Option<TensorId>,
    perm: Option<TensorId>,
    mass: Option<TensorId>,
    matching: Option<MergeShape>,
    label: &str,
) -> (TensorId, Option<Projection<'b>>, Option<Matched>) {
    let rows = shape.batch * shape.n;
    let dim = shape.dim;
    let fam = Family::Attention;
    let qkv = ready.unwrap_or_else(|| {
        let next = blk.qkv_next(b, dim);
        mlp::record_next(b, rows, next, (x_stats, LN_EPS), x, &format!("{label} qkv"))
    });
    let att = b.activation(format!("{label} attn"), rows * dim);
    let matched = attention::record(b, shape, qkv, perm, mass, att, matching.map(|m| (m, label)));
    let coef = (coef[0], coef[1]);
    if matching.is_none() {
        return (qkv, Some(blk.projection(b, att, coef, dim)), None);
    }
    let out = format!("{label} attn out");
    let proj = blk.proj(b);
    linear::record_residual(b, fam, rows, proj, coef, att, x, false, &out);
    (qkv, None, matched)
}

/// A stage's sequence while token merging shortens it: the tokens, their masses (`None` while
/// all are 1), the length, whether anything merged yet, and the stage's unmerge map, composed
/// with every merge. SReT and the baselines merge alike between attention and MLP.
pub(super) struct StageTokens {
    pub x: TensorId,
    pub mass: Option<TensorId>,
    pub n: usize,
    pub merged: bool,
    pub map: TensorId,
    /// The LayerNorm statistics of `x`'s rows, where the kernel that wrote `x` left them.
    pub stats: Option<RowStats>,
    /// `x`'s `qkv` for the next block, where the kernel that wrote `x` computed it.
    pub qkv: Option<TensorId>,
    stage: usize,
    batch: usize,
    dim: usize,
    heads: usize,
    n_grid: usize,
    split: Split,
}

impl StageTokens {
    /// The sequence as the stage's grid, read through its unmerge map (once anything merged).
    pub(super) fn unmerge(&self) -> Unmerge {
        Unmerge {
            map: self.map,
            tokens: self.n,
        }
    }

    /// Stage `stage`'s `x` of `n` tokens (`n_grid` of them patches, `split.lead` in front).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        b: &mut ProgramBuilder,
        spec: &ForwardSpec,
        stage: usize,
        x: TensorId,
        n: usize,
        n_grid: usize,
        dim: usize,
        heads: usize,
        split: Split,
    ) -> StageTokens {
        let map = b.activation_words(format!("stage{stage} unmerge map"), spec.batch * n_grid);
        if spec.trace {
            b.pin(map);
        }
        StageTokens {
            x,
            mass: None,
            n,
            merged: false,
            map,
            stats: None,
            qkv: None,
            stage,
            batch: spec.batch,
            dim,
            heads,
            n_grid,
            split,
        }
    }

    /// The merge ToMe makes after execution `exec`'s attention, if any.
    pub(super) fn merge_at(&self, spec: &ForwardSpec, exec: usize) -> Option<MergeShape> {
        let r = spec.safe_r[self.stage][exec];
        (r > 0).then_some(MergeShape {
            batch: self.batch,
            n: self.n,
            r,
            c: self.dim,
            dim: self.dim,
            heads: self.heads,
            n_grid: self.n_grid,
            split: self.split,
        })
    }

    /// ToMe between execution `exec`'s attention and its MLP: merges `spec.safe_r[stage][exec]`
    /// tokens matched on the keys in `qkv` (`matched`, where the attention matched them),
    /// keeping the slot map and masses for a trace.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn merge(
        &mut self,
        b: &mut ProgramBuilder,
        spec: &ForwardSpec,
        trace: &mut TraceTensors,
        exec: usize,
        qkv: TensorId,
        matched: Option<Matched>,
        label: &str,
    ) {
        let Some(shape) = self.merge_at(spec, exec) else {
            return;
        };
        let r = shape.r;
        let m = record_merge(
            b,
            shape,
            qkv,
            matched,
            self.x,
            self.mass,
            self.map,
            !self.merged,
            spec.trace,
            mlp_takes_stats(b, self.dim),
            label,
        );
        if let (true, Some(slot)) = (spec.trace, m.slot) {
            b.pin(slot);
            b.pin(m.mass);
            trace
                .merges
                .push((self.stage, exec, slot, m.mass, self.n, self.n - r));
        }
        self.merged = true;
        self.stats = m.stats;
        self.x = m.x;
        self.mass = Some(m.mass);
        self.n -= r;
    }
}

/// The pooling convolution after stage `s` on its `side` x `side` grid of tokens: `x` in
/// `input` layout, the grid itself ([`Layout::Tokens`]) or a merged sequence read through the
/// stage's unmerge map ([`Layout::Unmerged`]: the unmerge stack folded into the pooling's
/// loads). Returns the next stage's tokens.
fn record_pool(
    b: &mut ProgramBuilder,
    batch: usize,
    s: usize,
    side: usize,
    pool: &Conv,
    x: TensorId,
    input: Layout,
) -> TensorId {
    let up = up_conv(b, &format!("pools.{s}.conv"), pool);
    let shape = ConvShape {
        batch,
        cin: pool.in_channels,
        h: side,
        w: side,
        cout: pool.out_channels,
        k: pool.kernel,
        stride: pool.stride,
        pad: pool.padding,
        groups: pool.groups,
    };
    let (oh, ow) = shape.out_hw();
    let next = b.activation(format!("pool{s}"), batch * oh * ow * pool.out_channels);
    conv::record(
        b,
        Family::Pooling,
        shape,
        ConvIo {
            x,
            weight: up.weight,
            bias: up.bias,
            pos: None,
            y: next,
            input,
            output: Layout::Tokens,
            relu: false,
        },
    );
    next
}

/// Uploads a block's weights (LayerNorms folded into `qkv` and `fc1`; the projection when
/// first recorded).
fn up_block<'w>(b: &mut ProgramBuilder, p: &str, bw: &'w BlockWeights) -> BlockTensors<'w> {
    BlockTensors {
        mlp: up_mlp(b, &format!("{p}.mlp"), &bw.norm2, &bw.fc1, &bw.fc2),
        name: p.to_string(),
        host: bw,
        qkv: OnceCell::new(),
        qkv_packed: OnceCell::new(),
        proj: OnceCell::new(),
        proj_packed: OnceCell::new(),
    }
}

/// A recorded forward, not yet on a device.
pub struct Recorded {
    /// The builder holding every tensor and dispatch.
    pub builder: ProgramBuilder,
    /// `[batch, 3, H, W]`, external.
    pub images: TensorId,
    /// `[batch, classes]`, external.
    pub logits: TensorId,
    /// Tensors a trace reads back.
    pub trace: TraceTensors,
}

/// Make the recorded forward on `gpu`, reading `images` and writing `logits` (caller-owned).
pub fn build(
    gpu: &Gpu,
    cache: &PipelineCache,
    cfg: &ModelConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
    images: &wgpu::Buffer,
    logits: &wgpu::Buffer,
) -> Result<ForwardProgram> {
    let subgroup_width = crate::kernels::program::subgroup_width(gpu);
    let r = record(cfg, w, spec, &gpu.limits, subgroup_width);
    Ok(ForwardProgram {
        program: r
            .builder
            .finish(gpu, cache, &[(r.images, images), (r.logits, logits)])?,
        batch: spec.batch,
        trace: r.trace,
    })
}

/// Record every dispatch of the forward for `spec` on a device with `limits`; `subgroup_width`
/// lets kernels pick their subgroup variants for that width (the choice is made while recording).
pub fn record(
    cfg: &ModelConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
    subgroup_width: Option<u32>,
) -> Recorded {
    let mut b = ProgramBuilder::new(limits);
    b.set_subgroup_width(subgroup_width);
    record_into(b, cfg, w, spec)
}

/// Every tensor's size in the forward of `spec`, recorded without a device and without copying
/// the weights ([`ProgramBuilder::sizes_only`]): `(label, bytes, scales with the batch)`.
pub fn tensor_sizes(
    cfg: &ModelConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
) -> Vec<(String, u64, bool)> {
    let r = record_into(ProgramBuilder::sizes_only(limits), cfg, w, spec);
    r.builder
        .tensor_sizes()
        .map(|(l, b, per)| (l.to_string(), b, per))
        .collect()
}

fn record_into(
    mut b: ProgramBuilder,
    cfg: &ModelConfig,
    w: &ModelWeights,
    spec: &ForwardSpec,
) -> Recorded {
    b.set_f16(spec.f16());
    b.set_variants(spec.kernels);
    match &cfg.arch {
        Arch::Sret => sret::record(b, cfg, w, spec),
        Arch::Vit(v) => vit::record(b, cfg, v, w, spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stem_runs_in_fewer_bands_where_small() {
        // SReT-T's first stem convolution writes 1.6 MB per image (32 x 112 x 112, f32).
        let per_image = 32 * 112 * 112 * 4;
        assert_eq!(stem_bands(per_image), 4);
        assert_eq!(stem_bands(2 * per_image), 7);
        assert_eq!(stem_bands(3 * per_image), STEM_BANDS);
        assert_eq!(stem_bands(64 * per_image), STEM_BANDS);
        assert_eq!(stem_bands(1000), 1);
        assert_eq!(stem_bands(0), 1);
        assert_eq!(stem_bands(STEM_BAND_BYTES), 1);
        assert_eq!(stem_bands(STEM_BAND_BYTES + 1), 2);
    }
}
