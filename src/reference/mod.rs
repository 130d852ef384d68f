//! CPU reference twin: plain Rust versions of every op and of the whole SReT + ToMe forward.
//!
//! This is the oracle the GPU kernels are tested against. Tensors are f32 row-major; every
//! reduction (dot products, means, variances, softmax sums, merges) is accumulated in f64 and
//! rounded once. It follows the semantics of the reference PyTorch integration:
//!
//! * stem: three 3x3 stride-2 convolutions with folded BatchNorm, each + ReLU; `pos_embed` is
//!   added and the 28x28 grid flattened into tokens (`t = row * 28 + col`);
//! * per stage, every `Transformer_Block` execution runs sliced group attention with
//!   proportional attention (`+ ln(mass)` on the keys), then (if `safe_r > 0`) a ToMe merge
//!   matched on the head-averaged keys, then its MLP, then the execution's `Non_proj` MLP;
//! * at the end of a stage the merged sequence is expanded back to the full grid (equivalent to
//!   unwinding the reference's stack of `unmerge` functions) before the pooling convolution, or
//!   before global average pooling, the final LayerNorm and the head in the last stage.

mod attention;
mod forward;
mod merging;
mod ops;

#[cfg(test)]
mod tests;

pub use crate::rng::SplitMix64;
pub use attention::{grouped_attention, head_mean_keys};
pub use forward::{forward, ReferenceOutput, ReferenceSpec};
pub use merging::{
    bipartite_matching, bipartite_matching_split, merge, merge_slot_map, merge_slot_map_split,
    merge_split, Matching,
};
pub use ops::{conv2d, copy_tokens, gelu, layer_norm, linear, mean_tokens, relu};

/// LayerNorm epsilon used by every norm in SReT.
pub const LN_EPS: f32 = 1e-6;
