//! The uniform block of every kernel, one `#[repr(C)]` struct per WGSL `struct Params`.
//!
//! Field names, order and types are those of the shaders (`tests/shaders_validate.rs` checks
//! each against naga's reflection of every kernel whose catalogue entry names it); flags are
//! bit sets documented in the shader.

use crate::kernel_params;

kernel_params! {
    /// The linear kernels (`linear.wgsl`, `linear_sg`, `linear_tiled.wgsl`):
    /// `y [m, n] = epilogue(x [m, k] W^T + b)` for rows `m_base..m` (`m_base` is 0 except for
    /// the subgroup kernels' last tile, which runs as its own dispatch).
    pub struct LinearParams {
        /// Rows of x and y.
        pub m: u32,
        /// Input features.
        pub k: u32,
        /// Output features.
        pub n: u32,
        /// Output features padded to the tile width (the row stride of `W^T` and the bias).
        pub n_pad: u32,
        /// Epilogue: 0 bias, 1 GELU, 2 residual `ca * y + cb * v`.
        pub mode: u32,
        /// Residual coefficient of the old `y`.
        pub ca: f32,
        /// Residual coefficient of the new value.
        pub cb: f32,
        /// Non-zero: normalise each row of x as it is loaded with its LayerNorm statistics, given
        /// in parts of this many columns ([`crate::kernels::norm::RowStats`]).
        pub norm: u32,
        /// First row of this dispatch's tiles (a last-tile dispatch starts after the full tiles).
        pub m_base: u32,
        /// Variance epsilon of the LayerNorm applied with `norm`.
        pub eps: f32,
        /// 1: write the statistics of the stored rows, a part per the kernel's part width
        /// ([`crate::kernels::linear::stats_part_width`]).
        pub stats_out: u32,
    }
}

kernel_params! {
    /// The fused MLP (`mlp_fused.wgsl`): `y = ca * y + cb * (gelu(LN(y) W1^T + b1) W2^T + b2)`
    /// in place, the hidden activations kept in workgroup memory, optionally after the
    /// attention's projection `y = pa * y + pb * (attn Wp^T + bp)` and optionally followed by a
    /// second MLP on the same rows (`chain`) and by the next layer (`next`).
    pub struct MlpParams {
        /// Rows of y.
        pub m: u32,
        /// Input features of fc1 (the row length of y).
        pub k: u32,
        /// Output features of fc2 (equal to `k`: the residual is in place).
        pub n: u32,
        /// Output features padded to the tile width (the row stride of `W2^T` and `b2`).
        pub n_pad: u32,
        /// 1: normalise each row as fc1 loads it, with LayerNorm statistics the kernel measures.
        pub norm: u32,
        /// Variance epsilon of the LayerNorm applied with `norm`.
        pub eps: f32,
        /// 1: write the statistics of the stored rows, one part per row.
        pub stats_out: u32,
        /// 1: first `y = pa * y + pb * (attn Wp^T + bp)`, the attention half's output
        /// projection and residual.
        pub proj: u32,
        /// Residual coefficient of the old `y` in the projection's residual.
        pub pa: f32,
        /// Residual coefficient of the projection's output.
        pub pb: f32,
        /// 1: the block's MLP; 0: only the next layer, on the rows as loaded.
        pub mlp: u32,
        /// Hidden features of the block's MLP (fc1's outputs, fc2's inputs).
        pub h: u32,
        /// Hidden features padded to the tile width (the row stride of `W1^T` and `b1`).
        pub h_pad: u32,
        /// Residual coefficient of the old `y`.
        pub ca: f32,
        /// Residual coefficient of the MLP's output.
        pub cb: f32,
        /// 1: the second MLP follows on the same rows.
        pub chain: u32,
        /// Hidden features of the second MLP.
        pub h2: u32,
        /// Its hidden features padded to the tile width.
        pub h2_pad: u32,
        /// Its residual coefficient of the old `y`.
        pub ca2: f32,
        /// Its residual coefficient of its output.
        pub cb2: f32,
        /// 1: then the next layer, `LN(y) Wq^T + bq`, into its own output.
        pub next: u32,
        /// Output features of the next layer.
        pub q: u32,
        /// Those padded to the tile width (the row stride of `Wq^T`).
        pub q_pad: u32,
    }
}

kernel_params! {
    /// The attention kernels: one head of `softmax(q k^T * scale [+ log mass]) v` per group.
    pub struct AttentionParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image.
        pub n: u32,
        /// Model width (`heads * head_dim`).
        pub dim: u32,
        /// Attention heads.
        pub heads: u32,
        /// Slices of the token sequence attending within themselves (SReT's groups; 1 = global).
        pub groups: u32,
        /// Bit 0: read tokens through the permutation; bit 1: proportional attention; bit 2:
        /// the workgroups after the first `attention_wgs` match tokens for the merge after.
        pub flags: u32,
        /// `head_dim ^ -0.5`.
        pub scale: f32,
        /// The merge's lead tokens (with flags bit 2).
        pub lead: u32,
        /// The merge's parity of set A (with flags bit 2).
        pub a_odd: u32,
        /// Workgroups that run the attention; the rest of the grid matches or returns.
        pub attention_wgs: u32,
    }
}

kernel_params! {
    /// The convolutions (grouped, dense from NCHW, subgroup dense), over a band of rows.
    pub struct ConvParams {
        /// Images.
        pub batch: u32,
        /// Input channels.
        pub cin: u32,
        /// Input height.
        pub h: u32,
        /// Input width.
        pub w: u32,
        /// Output channels.
        pub cout: u32,
        /// Output height.
        pub oh: u32,
        /// Output width.
        pub ow: u32,
        /// Kernel size.
        pub k: u32,
        /// Stride.
        pub stride: u32,
        /// Zero padding on every side.
        pub pad: u32,
        /// Channel groups.
        pub groups: u32,
        /// Bit 0 ReLU, bit 1 token-layout input, bit 2 token-layout output, bit 3 add `pos`,
        /// bit 4 input read through an unmerge map.
        pub flags: u32,
        /// Input rows held by the input buffer.
        pub h_buf: u32,
        /// First input row held by the input buffer.
        pub iy_off: u32,
        /// First output row of this dispatch.
        pub oy0: u32,
        /// Output rows of this dispatch.
        pub oh_run: u32,
        /// Output rows held by the output buffer.
        pub oh_buf: u32,
        /// First output row held by the output buffer.
        pub oy_off: u32,
        /// Tokens of the merged input sequence where flag bit 4 reads it through an unmerge
        /// map (0 otherwise).
        pub n_in: u32,
    }
}

kernel_params! {
    /// `copy_tokens.wgsl`: copy `count` tokens of `c` channels between token ranges.
    pub struct CopyTokensParams {
        /// Images.
        pub batch: u32,
        /// Tokens copied per image.
        pub count: u32,
        /// Channels per token.
        pub c: u32,
        /// Tokens per image in the input.
        pub in_tokens: u32,
        /// First input token.
        pub in_off: u32,
        /// Tokens per image in the output.
        pub out_tokens: u32,
        /// First output token.
        pub out_off: u32,
    }
}

kernel_params! {
    /// `layernorm.wgsl` and `ln_stats.wgsl`: per-row normalisation of `rows x c`.
    pub struct NormParams {
        /// Rows.
        pub rows: u32,
        /// Channels per row.
        pub c: u32,
        /// Variance epsilon (`layernorm.wgsl`; `ln_stats.wgsl` leaves it to the statistics'
        /// consumer).
        pub eps: f32,
    }
}

kernel_params! {
    /// `mean_tokens.wgsl`: the mean over tokens (global average pooling).
    pub struct MeanTokensParams {
        /// Images.
        pub batch: u32,
        /// Tokens averaged per image.
        pub n: u32,
        /// Channels.
        pub c: u32,
        /// 0: `x` holds the `n` tokens; else `x` is a merged sequence of `n_in` tokens read
        /// through the unmerge map (`n` grid positions).
        pub n_in: u32,
    }
}

kernel_params! {
    /// `tome_metric.wgsl`: the matching metric (mean of the heads' keys, L2-normalised).
    pub struct TomeMetricParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image.
        pub n: u32,
        /// Model width.
        pub dim: u32,
        /// Attention heads.
        pub heads: u32,
    }
}

kernel_params! {
    /// Bipartite matching (`tome_match*.wgsl`) and ranking (`tome_rank.wgsl`).
    pub struct TomeMatchParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image.
        pub n: u32,
        /// Protected leading tokens (class, distillation).
        pub lead: u32,
        /// 1: set A is the odd positions after the lead (see [`crate::tome::split`]).
        pub a_odd: u32,
        /// Channels of the model (`qkv` holds `3 dim` per token); read by `tome_match.wgsl`.
        pub dim: u32,
        /// Attention heads (the metric averages the keys over them); read by
        /// `tome_match.wgsl`.
        pub heads: u32,
    }
}

kernel_params! {
    /// `tome_slots.wgsl`: each token's slot in the merged sequence.
    pub struct TomeSlotsParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image before the merge.
        pub n: u32,
        /// Tokens merged away.
        pub r: u32,
        /// Protected leading tokens.
        pub lead: u32,
        /// 1: set A is the odd positions.
        pub a_odd: u32,
        /// 1: the unmerged A tokens keep their position order (else rank order).
        pub sorted: u32,
    }
}

kernel_params! {
    /// `tome_merge.wgsl`: size-weighted average of merged tokens, and their masses.
    pub struct TomeMergeParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image before the merge.
        pub n: u32,
        /// Tokens merged away.
        pub r: u32,
        /// Channels per token.
        pub c: u32,
        /// Bit 0: masses are in `mass` (otherwise every token has mass 1).
        pub flags: u32,
        /// Protected leading tokens.
        pub lead: u32,
        /// 1: set A is the odd positions.
        pub a_odd: u32,
    }
}

kernel_params! {
    /// `tome_merge_fused.wgsl`: ranking, slots, the weighted merge and the map update of one
    /// merge, one workgroup per image.
    pub struct TomeMergeFusedParams {
        /// Images.
        pub batch: u32,
        /// Tokens per image before the merge.
        pub n: u32,
        /// Tokens merged away.
        pub r: u32,
        /// Channels per token.
        pub c: u32,
        /// Tokens at the start of the stage (the unmerge map's length).
        pub n_grid: u32,
        /// Bit 0: masses are in `mass` (otherwise every token has mass 1); bit 1: first merge
        /// of the stage (the unmerge map is the identity before it).
        pub flags: u32,
        /// Protected leading tokens.
        pub lead: u32,
        /// 1: set A is the odd positions.
        pub a_odd: u32,
        /// 1: the unmerged A tokens keep their position order (else rank order).
        pub sorted: u32,
    }
}

kernel_params! {
    /// `tome_map_update.wgsl`: compose a merge into the stage's unmerge map.
    pub struct TomeMapUpdateParams {
        /// Images.
        pub batch: u32,
        /// Tokens at the start of the stage (the grid).
        pub n_grid: u32,
        /// Tokens entering this merge.
        pub n: u32,
        /// Bit 0: first merge of the stage (the map is the identity before it).
        pub flags: u32,
        /// Protected leading tokens.
        pub lead: u32,
    }
}

kernel_params! {
    /// `preprocess.wgsl`: the ImageNet transform's coefficient tables.
    pub struct PreprocessParams {
        /// Word offset of the horizontal table.
        pub h_off: u32,
        /// Words per output column in it (2 + taps).
        pub h_stride: u32,
        /// Word offset of the vertical table.
        pub v_off: u32,
        /// Words per output row in it.
        pub v_stride: u32,
        /// 1: vertical pass first (Pillow's order for images that shrink more in height).
        pub vertical_first: u32,
        /// 1: the texture view is sRGB.
        pub srgb: u32,
    }
}
