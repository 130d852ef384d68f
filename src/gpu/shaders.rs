//! The WGSL kernels and their pipeline cache.
//!
//! Shaders are plain `.wgsl` files under `shaders/`. Helpers that several kernels share live
//! once under `shaders/lib/` and are appended to the kernels that use them (fixed per kernel,
//! see [`Shader::source`]; today the fused epilogue and the exact GELU of
//! the linear kernels). Three one-line
//! substitutions exist, all part of the cache key:
//! - the attention head size: a file may declare `const HEAD_DIM: u32 = 32u;` and a plan that
//!   needs another size gets that line rewritten;
//! - the storage element type: a file whose first declaration is `alias elem = f32;` keeps its
//!   activations and weights in `array<elem>` / `array<vec4<elem>>`, converts every load to f32
//!   and every store back to `elem`. The f16 variant rewrites that line to
//!   `enable f16; alias elem = f16;` (half the bytes moved and stored; arithmetic, accumulation
//!   and workgroup memory stay f32). Token masses, LayerNorm statistics, matching scores and
//!   indices are always 32-bit.
//! - the subgroup width: the `*_sg` kernels (those using subgroup broadcasts) declare
//!   `const SG: u32 = 8u;` and derive their workgroup size, tile shape and every broadcast lane
//!   from it; a plan for an adapter whose smallest subgroup is another power of two in 4..=64
//!   gets that line rewritten ([`crate::gpu::program::subgroup_width`]). A workgroup of SG lanes
//!   with SG at most the adapter's minimum subgroup size lies within one subgroup whatever size
//!   the compiler picks, so broadcasts from lanes below SG are always defined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every kernel the engine dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shader {
    /// `conv.wgsl`: direct 2-D convolution with groups (the pooling between stages), bias,
    /// optional ReLU and positional embedding.
    Conv,
    /// `conv_dense.wgsl`: dense convolution for the stem, 16 output channels per invocation
    /// from transposed weights.
    ConvDense,
    /// `conv_sg.wgsl`: the dense stem convolution using subgroup broadcasts.
    ConvSg,
    /// `layernorm.wgsl`: LayerNorm over the last axis, one invocation per row.
    LayerNorm,
    /// `ln_stats.wgsl`: per-row LayerNorm statistics for a linear layer that normalises as it
    /// loads.
    LnStats,
    /// `linear.wgsl`: `x W^T + b` with a fused epilogue (bias, GELU or residual).
    Linear,
    /// `linear_sg.wgsl`: the linear layer with subgroup broadcasts, 32-row tiles.
    LinearSg,
    /// The subgroup linear kernel's 40-row last tile (32 rows and a rest of up to 8).
    LinearSgR40,
    /// The subgroup linear kernel's 48-row last tile (32 rows and a rest of 9 to 16).
    LinearSgR48,
    /// The subgroup linear kernel on a matrix of 9 to 16 rows: one 16-row tile.
    LinearSgR16,
    /// The subgroup linear kernel on a matrix of at most 8 rows: one 8-row tile.
    LinearSgR8,
    /// `linear_tiled.wgsl`: the linear layer in 64 x 64 workgroup tiles staged through
    /// workgroup memory (the classic GPU tiling; no subgroups).
    LinearTiled,
    /// `attention.wgsl`: fused sliced group attention with proportional attention (online
    /// softmax, scores never stored).
    Attention,
    /// `attention_vec4.wgsl`: the fused attention with vec4 loads, for head sizes that are a
    /// multiple of 4.
    AttentionVec4,
    /// `attention_sg.wgsl`: the fused attention sharing keys through subgroup broadcasts.
    AttentionSg,
    /// `mean_tokens.wgsl`: global average pooling over tokens, `[batch, n, c] -> [batch, c]`.
    MeanTokens,
    /// `tome_metric.wgsl`: ToMe's matching metric, the keys averaged over heads and
    /// L2-normalised.
    TomeMetric,
    /// `tome_match.wgsl`: matching step 1, each A token's most similar B token and the score.
    TomeMatch,
    /// `tome_match_sg.wgsl`: matching step 1 with subgroup broadcasts.
    TomeMatchSg,
    /// `tome_rank.wgsl`: matching step 2, the rank of every A token by its best score.
    TomeRank,
    /// `tome_slots.wgsl`: matching step 3, the output slot of every incoming token.
    TomeSlots,
    /// `tome_merge.wgsl`: matching step 4, the mass-weighted merge into the new sequence.
    TomeMerge,
    /// `tome_map_update.wgsl`: composes the stage's unmerge map with one merge's slot map.
    TomeMapUpdate,
    /// `gather.wgsl`: restores the stage's full token grid through the unmerge map before pooling.
    Gather,
    /// `copy_tokens.wgsl`: copies a run of tokens between sequences (the lead tokens).
    CopyTokens,
    /// The ImageNet evaluation transform from a texture (its own pipeline, outside programs).
    Preprocess,
}

impl Shader {
    /// Every shader, for tests and tools that compile or inspect them all.
    pub const ALL: [Shader; 26] = [
        Shader::Conv,
        Shader::ConvDense,
        Shader::ConvSg,
        Shader::LayerNorm,
        Shader::LnStats,
        Shader::Linear,
        Shader::LinearSg,
        Shader::LinearSgR40,
        Shader::LinearSgR48,
        Shader::LinearSgR16,
        Shader::LinearSgR8,
        Shader::LinearTiled,
        Shader::Attention,
        Shader::AttentionVec4,
        Shader::AttentionSg,
        Shader::MeanTokens,
        Shader::TomeMetric,
        Shader::TomeMatch,
        Shader::TomeMatchSg,
        Shader::TomeRank,
        Shader::TomeSlots,
        Shader::TomeMerge,
        Shader::TomeMapUpdate,
        Shader::Gather,
        Shader::CopyTokens,
        Shader::Preprocess,
    ];

    /// The file name without `.wgsl`, e.g. `"tome_merge"`; also used in pipeline labels.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Conv => "conv",
            Shader::ConvDense => "conv_dense",
            Shader::ConvSg => "conv_sg",
            Shader::LayerNorm => "layernorm",
            Shader::LnStats => "ln_stats",
            Shader::Linear => "linear",
            Shader::LinearSg => "linear_sg",
            Shader::LinearSgR40 => "linear_sg_r40",
            Shader::LinearSgR48 => "linear_sg_r48",
            Shader::LinearSgR16 => "linear_sg_r16",
            Shader::LinearSgR8 => "linear_sg_r8",
            Shader::LinearTiled => "linear_tiled",
            Shader::Attention => "attention",
            Shader::AttentionVec4 => "attention_vec4",
            Shader::AttentionSg => "attention_sg",
            Shader::MeanTokens => "mean_tokens",
            Shader::TomeMetric => "tome_metric",
            Shader::TomeMatch => "tome_match",
            Shader::TomeMatchSg => "tome_match_sg",
            Shader::TomeRank => "tome_rank",
            Shader::TomeSlots => "tome_slots",
            Shader::TomeMerge => "tome_merge",
            Shader::TomeMapUpdate => "tome_map_update",
            Shader::Gather => "gather",
            Shader::CopyTokens => "copy_tokens",
            Shader::Preprocess => "preprocess",
        }
    }

    /// The module's WGSL: the kernel's file, followed by the `shaders/lib/` helpers it uses.
    pub fn source(self) -> &'static str {
        // A linear kernel's file, then the shared epilogue and GELU after it (module-scope
        // declarations are order-independent in WGSL; `enable f16;` stays first).
        macro_rules! linear_kernel {
            ($file:literal) => {
                concat!(
                    include_str!($file),
                    "\n",
                    include_str!("../../shaders/lib/linear_epilogue.wgsl"),
                    "\n",
                    include_str!("../../shaders/lib/gelu.wgsl")
                )
            };
        }
        match self {
            Shader::Conv => include_str!("../../shaders/conv.wgsl"),
            Shader::ConvDense => include_str!("../../shaders/conv_dense.wgsl"),
            Shader::ConvSg => include_str!("../../shaders/conv_sg.wgsl"),
            Shader::LayerNorm => include_str!("../../shaders/layernorm.wgsl"),
            Shader::LnStats => include_str!("../../shaders/ln_stats.wgsl"),
            Shader::Linear => linear_kernel!("../../shaders/linear.wgsl"),
            Shader::LinearSg => linear_kernel!("../../shaders/linear_sg.wgsl"),
            Shader::LinearSgR40 => linear_kernel!("../../shaders/linear_sg_r40.wgsl"),
            Shader::LinearSgR48 => linear_kernel!("../../shaders/linear_sg_r48.wgsl"),
            Shader::LinearSgR16 => linear_kernel!("../../shaders/linear_sg_r16.wgsl"),
            Shader::LinearSgR8 => linear_kernel!("../../shaders/linear_sg_r8.wgsl"),
            Shader::LinearTiled => linear_kernel!("../../shaders/linear_tiled.wgsl"),
            Shader::Attention => include_str!("../../shaders/attention.wgsl"),
            Shader::AttentionVec4 => include_str!("../../shaders/attention_vec4.wgsl"),
            Shader::AttentionSg => include_str!("../../shaders/attention_sg.wgsl"),
            Shader::MeanTokens => include_str!("../../shaders/mean_tokens.wgsl"),
            Shader::TomeMetric => include_str!("../../shaders/tome_metric.wgsl"),
            Shader::TomeMatch => include_str!("../../shaders/tome_match.wgsl"),
            Shader::TomeMatchSg => include_str!("../../shaders/tome_match_sg.wgsl"),
            Shader::TomeRank => include_str!("../../shaders/tome_rank.wgsl"),
            Shader::TomeSlots => include_str!("../../shaders/tome_slots.wgsl"),
            Shader::TomeMerge => include_str!("../../shaders/tome_merge.wgsl"),
            Shader::TomeMapUpdate => include_str!("../../shaders/tome_map_update.wgsl"),
            Shader::Gather => include_str!("../../shaders/gather.wgsl"),
            Shader::CopyTokens => include_str!("../../shaders/copy_tokens.wgsl"),
            Shader::Preprocess => include_str!("../../shaders/preprocess.wgsl"),
        }
    }

    /// The `@binding` indices the shader declares `read_write` (it may write them).
    pub fn writable_bindings(self) -> Vec<u32> {
        self.source()
            .lines()
            .filter(|l| l.contains("var<storage, read_write>"))
            .filter_map(|l| {
                let at = l.find("@binding(")? + "@binding(".len();
                l[at..].split(')').next()?.trim().parse().ok()
            })
            .collect()
    }

    /// Whether the shader uses subgroup operations (needs `Features::SUBGROUP`).
    pub fn needs_subgroups(self) -> bool {
        self.source().contains("subgroupBroadcast")
    }

    /// Whether the source declares the substitutable `HEAD_DIM` constant.
    pub fn has_head_dim(self) -> bool {
        self.source().contains(HEAD_DIM_LINE)
    }

    /// Whether the source declares the substitutable subgroup width `SG`.
    pub fn has_sg(self) -> bool {
        self.source().contains(SG_LINE)
    }

    /// Whether the source stores activations as the substitutable `elem` type.
    pub fn has_elem(self) -> bool {
        self.source().contains(ELEM_LINE)
    }
}

/// The element-type line a plan may rewrite to f16.
pub const ELEM_LINE: &str = "alias elem = f32;";
/// What [`ELEM_LINE`] becomes in the f16 variant (`enable` must precede every declaration, which
/// is why the alias is each file's first declaration).
pub const ELEM_LINE_F16: &str = "enable f16; alias elem = f16;";

/// The line a plan may rewrite, exactly as it stands in the `.wgsl` files.
pub const HEAD_DIM_LINE: &str = "const HEAD_DIM: u32 = 32u;";

/// The subgroup-width line a plan may rewrite, exactly as it stands in the `*_sg.wgsl` files.
pub const SG_LINE: &str = "const SG: u32 = 8u;";

/// The subgroup widths the `*_sg` kernels are written for (powers of two; see [`SG_LINE`]).
pub const SG_WIDTHS: [u32; 5] = [4, 8, 16, 32, 64];

/// A shader with its substitution: the pipeline cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelKey {
    /// The kernel.
    pub shader: Shader,
    /// Head size for shaders that declare `HEAD_DIM`; 0 otherwise.
    pub head_dim: u32,
    /// Activations and weights stored as f16 (only for shaders with [`ELEM_LINE`]).
    pub f16: bool,
    /// Subgroup width for shaders that declare `SG` ([`SG_LINE`]); 0 otherwise.
    pub sg: u32,
}

impl KernelKey {
    /// `shader` with no substitution (f32 storage, no head size, no subgroup width).
    pub fn plain(shader: Shader) -> Self {
        KernelKey {
            shader,
            head_dim: 0,
            f16: false,
            sg: 0,
        }
    }
    /// `shader` with its `HEAD_DIM` set to `head_dim` when the shader declares it (ignored
    /// otherwise).
    pub fn with_head_dim(shader: Shader, head_dim: usize) -> Self {
        KernelKey {
            shader,
            head_dim: if shader.has_head_dim() {
                head_dim as u32
            } else {
                0
            },
            f16: false,
            sg: 0,
        }
    }
    /// A `*_sg` kernel for subgroups of `width` lanes (one of [`SG_WIDTHS`]).
    pub fn with_sg(shader: Shader, width: u32) -> Self {
        debug_assert!(SG_WIDTHS.contains(&width), "subgroup width {width}");
        KernelKey {
            sg: if shader.has_sg() { width } else { 0 },
            ..KernelKey::plain(shader)
        }
    }
    /// This key with f16 storage when `on` and the shader has an element type to substitute.
    pub fn with_f16(self, on: bool) -> Self {
        KernelKey {
            f16: on && self.shader.has_elem(),
            ..self
        }
    }
    /// The WGSL text after substitution.
    pub fn wgsl(&self) -> String {
        let mut src = self.shader.source().to_string();
        if self.head_dim != 0 {
            src = src.replace(
                HEAD_DIM_LINE,
                &format!("const HEAD_DIM: u32 = {}u;", self.head_dim),
            );
        }
        if self.sg != 0 {
            src = src.replace(SG_LINE, &format!("const SG: u32 = {}u;", self.sg));
        }
        if self.f16 {
            src = src.replace(ELEM_LINE, ELEM_LINE_F16);
        }
        src
    }
}

/// Compiled pipelines, shared by every plan built on one device.
///
/// By default shader modules keep wgpu's runtime checks (every array index clamped or
/// checked). [`PipelineCache::trusted`] builds them without: the kernels' index arithmetic is
/// what the kernel tests exercise, on ragged shapes and with every output poisoned, and each of
/// them runs both ways there with bitwise-identical results required.
#[derive(Clone, Default)]
pub struct PipelineCache {
    map: Arc<Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>>,
    trusted: bool,
}

impl PipelineCache {
    /// A cache whose modules are created without runtime bounds checks
    /// (`Device::create_shader_module_trusted` with `ShaderRuntimeChecks::unchecked()`): faster
    /// kernels, and the project's promise that its shaders index only within their bindings for
    /// every shape a plan accepts. Only this crate's own WGSL ever goes through a cache.
    pub fn trusted() -> Self {
        PipelineCache {
            map: Default::default(),
            trusted: true,
        }
    }

    /// Whether modules are built without runtime checks.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// The pipeline for `key`, compiled on `device` the first time and cloned from the cache after.
    pub fn get(&self, device: &wgpu::Device, key: KernelKey) -> wgpu::ComputePipeline {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let label = format!(
                    "{}:{}{}{}",
                    key.shader.name(),
                    key.head_dim,
                    if key.sg != 0 {
                        format!(":sg{}", key.sg)
                    } else {
                        String::new()
                    },
                    if key.f16 { ":f16" } else { "" }
                );
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(key.wgsl().into()),
                };
                let module = if self.trusted {
                    // SAFETY: the source is one of this crate's kernels (never user input), whose
                    // indexing stays within the bindings for every shape the planner emits;
                    // tests/kernels.rs runs each kernel with and without checks on ragged
                    // shapes and requires bitwise-identical outputs.
                    unsafe {
                        device.create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    }
                } else {
                    device.create_shader_module(desc)
                };
                #[cfg(not(target_arch = "wasm32"))]
                let started = std::time::Instant::now();
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                });
                // Software drivers compile at pipeline creation: say what took how long.
                #[cfg(not(target_arch = "wasm32"))]
                log::debug!("pipeline {label}: {:.0?}", started.elapsed());
                pipeline
            })
            .clone()
    }
    /// Number of compiled pipelines.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Whether nothing has been compiled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
