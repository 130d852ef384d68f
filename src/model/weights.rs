//! The model's parameters in the layout the kernels consume.
//!
//! Names follow the reference's `state_dict()`. BatchNorm is folded into the stem convolutions
//! at load time (`w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`),
//! so the stem is three conv + bias + ReLU layers. Linear weights keep PyTorch's `[out, in]`
//! layout. All tensors are f32, row-major.

/// `nn.Linear`: `weight` is `[out, in]`, `bias` is `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Weight matrix, `[out_features, in_features]` row-major.
    pub weight: Vec<f32>,
    /// Bias, `[out_features]`.
    pub bias: Vec<f32>,
    /// Output width.
    pub out_features: usize,
    /// Input width.
    pub in_features: usize,
}

/// `nn.LayerNorm` (eps 1e-6 everywhere in SReT).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// Scale (gamma), `[dim]`.
    pub weight: Vec<f32>,
    /// Shift (beta), `[dim]`.
    pub bias: Vec<f32>,
}

/// A convolution with BatchNorm already folded in: `weight` is `[out, in / groups, k, k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Kernel, `[out_channels, in_channels / groups, kernel, kernel]` row-major, BatchNorm
    /// folded in.
    pub weight: Vec<f32>,
    /// Bias, `[out_channels]` (BatchNorm's shift folded in).
    pub bias: Vec<f32>,
    /// Output channels.
    pub out_channels: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side, in pixels.
    pub padding: usize,
    /// Channel groups (`in_channels` for a depthwise convolution, 1 for a dense one).
    pub groups: usize,
}

/// A shared `Transformer_Block`: run `loops` times per stage with the same weights.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    /// LayerNorm before attention.
    pub norm1: LayerNorm,
    /// Joint query, key and value projection, `dim -> 3 * dim`.
    pub qkv: Linear,
    /// Output projection of the attention, `dim -> dim`.
    pub proj: Linear,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// First MLP layer, `dim -> mlp_hidden`.
    pub fc1: Linear,
    /// Second MLP layer, `mlp_hidden -> dim`.
    pub fc2: Linear,
    /// `coefficient1..4.bias`: `x = c1*x + c2*attn(..)`, then `x = c3*x + c4*mlp(..)`.
    pub coef: [f32; 4],
}

/// A `Non_proj` MLP, one per loop: `x = c1*x + c2*mlp(norm1(x))`.
#[derive(Clone, Debug, PartialEq)]
pub struct NonProjWeights {
    /// LayerNorm before the MLP.
    pub norm1: LayerNorm,
    /// First MLP layer, `dim -> np_hidden`.
    pub fc1: Linear,
    /// Second MLP layer, `np_hidden -> dim`.
    pub fc2: Linear,
    /// `coefficient1..2.bias`: the residual scale `c1` and the MLP branch scale `c2`.
    pub coef: [f32; 2],
}

/// The parameters of one stage: its shared blocks, its per-loop `Non_proj` MLPs and the pooling
/// to the next stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageWeights {
    /// `recursive_num` shared blocks.
    pub blocks: Vec<BlockWeights>,
    /// `depth` Non_proj MLPs, in execution order.
    pub non_projs: Vec<NonProjWeights>,
    /// Pooling to the next stage (depthwise-style grouped 3x3 conv, stride 2); `None` for the last.
    pub pool: Option<Conv>,
    /// PiT: the linear map of the lead tokens that goes with `pool` (`pool.fc`).
    pub pool_fc: Option<Linear>,
}

/// All parameters of a model (SReT or a DeiT/PiT/ViT baseline), f32 and in kernel layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// SReT: `patch_embed.conv{1,2,3}` with `bn{1,2,3}` folded in. DeiT/PiT: the one patch
    /// convolution.
    pub stem: Vec<Conv>,
    /// `pos_embed` of the patch grid, `[dim0, side, side]` (the leading 1 dropped; DeiT's
    /// token-major table is transposed to this layout).
    pub pos_embed: Vec<f32>,
    /// DeiT/PiT: the lead tokens as they enter the first block, `[lead, dim0]` (class, then
    /// distillation token; DeiT's position embedding already added). Empty for SReT.
    pub lead_tokens: Vec<f32>,
    /// One entry per stage of [`ModelConfig::stages`](crate::model::ModelConfig::stages).
    pub stages: Vec<StageWeights>,
    /// The final LayerNorm before pooling and the head.
    pub norm: LayerNorm,
    /// Classifier, `final_dim -> num_classes`.
    pub head: Linear,
    /// Distilled DeiT/PiT: the distillation head; the logits are the mean of both heads.
    pub head_dist: Option<Linear>,
}
