//! The model's parameters in the layout the kernels consume.
//!
//! Names follow the reference's `state_dict()`. BatchNorm is folded into the stem convolutions
//! at load time (`w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`),
//! so the stem is three conv + bias + ReLU layers. Linear weights keep PyTorch's `[out, in]`
//! layout. All tensors are f32, row-major.

/// `nn.Linear`: `weight` is `[out, in]`, `bias` is `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
}

/// `nn.LayerNorm` (eps 1e-6 everywhere in SReT).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A convolution with BatchNorm already folded in: `weight` is `[out, in / groups, k, k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// A shared `Transformer_Block`: run `loops` times per stage with the same weights.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    pub norm1: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// `coefficient1..4.bias`: `x = c1*x + c2*attn(..)`, then `x = c3*x + c4*mlp(..)`.
    pub coef: [f32; 4],
}

/// A `Non_proj` MLP, one per loop: `x = c1*x + c2*mlp(norm1(x))`.
#[derive(Clone, Debug, PartialEq)]
pub struct NonProjWeights {
    pub norm1: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub coef: [f32; 2],
}

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
    pub stages: Vec<StageWeights>,
    pub norm: LayerNorm,
    pub head: Linear,
    /// Distilled DeiT/PiT: the distillation head; the logits are the mean of both heads.
    pub head_dist: Option<Linear>,
}
