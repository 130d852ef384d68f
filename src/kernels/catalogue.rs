//! The kernel catalogue: every WGSL kernel the engine dispatches, declared once.
//!
//! One entry per kernel gives
//! - its name: the file stem under `shaders/` (also its pipeline label and its name in
//!   profiles and cost figures);
//! - its text: that file, or a Rust generator in [`super::generate`] for the subgroup kernels
//!   (whose unrolled rows WGSL cannot express with loops) with the tile height as a parameter;
//! - the `shaders/lib/` helpers appended to it (module-scope declarations are order-independent
//!   in WGSL, and `enable f16;` stays first);
//! - its uniform block, a [`KernelParams`] type from [`super::params`];
//! - the kernel kind and variant it implements, if it is one of several ways to compute the
//!   same op (what autotune measures and `--kernels` pins; [`KernelKind::candidates`] derives
//!   from these);
//! - its arithmetic, computed from the typed parameter block by the op's module;
//! - what it needs of the device beyond WebGPU's defaults ([`Needs`]).
//!
//! [`Kernel`], [`Kernel::ALL`], names, sources, kinds, FLOP counts and parameter layouts all
//! come from the `catalogue!` table below, and the tests derive their lists from it:
//! `tests/shaders_validate.rs` validates and translates every entry and substitution with
//! naga, compares every uniform block with its Rust struct and fails on a `.wgsl` file that is
//! no entry's; `tests/kernels.rs` names the CPU-twin test of every entry in an exhaustive
//! match, so an entry without one does not compile. How to add a kernel:
//! `docs/architecture.md`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::generate;
use super::params::*;
use super::pipelines::KernelKey;
use super::uniform::{KernelParams, ParamsLayout};
use super::variants::{KernelKind, Variant};
use super::{attention, conv, linear, merge, mlp, norm, preprocess, tokens};

/// Where a kernel's WGSL comes from.
#[derive(Clone, Copy)]
enum Text {
    /// A file under `shaders/`, as written.
    File(&'static str),
    /// A generator taking the tile height in rows (ignored by generators without one).
    Generated(fn(u32) -> String),
}

/// What a kernel needs of the device beyond WebGPU's default limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `Features::SUBGROUP`: the kernel shares values through subgroup broadcasts.
    pub subgroups: bool,
    /// Invocations in one workgroup (0: within every device's limits).
    pub invocations: u32,
    /// Bytes of workgroup memory (0: none).
    pub workgroup_bytes: u32,
}

impl Needs {
    /// Nothing beyond WebGPU's defaults.
    const NONE: Needs = Needs {
        subgroups: false,
        invocations: 0,
        workgroup_bytes: 0,
    };
    /// Subgroup operations.
    const SUBGROUPS: Needs = Needs {
        subgroups: true,
        ..Needs::NONE
    };

    /// Whether a device with `limits` has room for the kernel's workgroups (subgroup support is
    /// the planner's to check: it picks the width).
    pub fn fit(&self, limits: &wgpu::Limits) -> bool {
        limits.max_compute_invocations_per_workgroup >= self.invocations
            && limits.max_compute_workgroup_size_x >= self.invocations
            && limits.max_compute_workgroup_storage_size >= self.workgroup_bytes
    }
}

/// The fused MLP's: exact GELU (it measures its rows' statistics itself and writes its
/// residuals with per-MLP coefficients).
const MLP_LIBS: &[&str] = &[include_str!("../../shaders/lib/gelu.wgsl")];

/// The linear kernels' shared epilogue, exact GELU and row statistics.
const LINEAR_LIBS: &[&str] = &[
    include_str!("../../shaders/lib/linear_epilogue.wgsl"),
    include_str!("../../shaders/lib/gelu.wgsl"),
    include_str!("../../shaders/lib/ln_row_stats.wgsl"),
];

/// The weighted merge of one token, shared by the unfused and the fused merge.
const MERGE_LIBS: &[&str] = &[include_str!("../../shaders/lib/tome_merge_into.wgsl")];

/// A token's matching metric.
const METRIC_OF: &str = include_str!("../../shaders/lib/tome_metric_of.wgsl");

/// The metric kernel's and both matchers': the metric, reading `qkv` as `array<elem>`.
const METRIC_LIBS: &[&str] = &[METRIC_OF, include_str!("../../shaders/lib/qkv_scalar.wgsl")];
/// The subgroup attention's: the metric for the subgroup matcher generated into its text,
/// reading `qkv` as `array<vec4<elem>>`.
const ATTENTION_SG_LIBS: &[&str] = &[METRIC_OF, include_str!("../../shaders/lib/qkv_vec4.wgsl")];

/// Everything an entry declares besides its name.
struct Entry {
    text: Text,
    libs: &'static [&'static str],
    kind: Option<(KernelKind, Variant)>,
    needs: Needs,
    params: ParamsLayout,
}

/// `Some(e)` for an entry's optional field given as `e`, `None` where it is left out.
macro_rules! some_or_none {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

macro_rules! catalogue {
    ($(
        $(#[$doc:meta])*
        $kernel:ident = $name:literal {
            text: $text:expr,
            libs: $libs:expr,
            params: $params:ty,
            kind: $kind:expr,
            needs: $needs:expr,
            flops: $flops:expr
            $(, traffic: $traffic:expr)? $(,)?
        }
    ),+ $(,)?) => {
        /// Every kernel the engine dispatches; the catalogue's entries (see the module docs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kernel {
            $($(#[$doc])* $kernel),+
        }

        impl Kernel {
            /// Every kernel, in catalogue order.
            pub const ALL: [Kernel; [$(stringify!($kernel)),+].len()] = [$(Kernel::$kernel),+];

            /// Its name: the file stem under `shaders/`, e.g. `"tome_merge"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => $name),+
                }
            }

            fn entry(self) -> Entry {
                match self {
                    $(Kernel::$kernel => Entry {
                        text: $text,
                        libs: $libs,
                        kind: $kind,
                        needs: $needs,
                        params: ParamsLayout::of::<$params>(),
                    }),+
                }
            }

            /// Floating-point operations of one dispatch of this kernel with the uniform block
            /// `words` and bindings of `bound` bytes (conventions in `crate::runtime::figures`).
            pub fn flops(self, key: &KernelKey, words: &[u32], bound: &[u64]) -> u64 {
                match self {
                    $(Kernel::$kernel => {
                        let flops: fn(&$params, &KernelKey, &[u64]) -> u64 = $flops;
                        flops(&<$params>::from_words(words), key, bound)
                    }),+
                }
            }

            /// Bytes of the `bytes` bound at WGSL binding `binding` that one dispatch with the
            /// uniform block `words` reads or writes: the whole binding, unless the entry says
            /// otherwise (`traffic:`, e.g. a convolution band touches its own rows).
            pub fn traffic(self, words: &[u32], binding: u32, bytes: u64) -> u64 {
                match self {
                    $(Kernel::$kernel => {
                        let part: Option<fn(&$params, u32, u64) -> u64> =
                            some_or_none!($($traffic)?);
                        match part {
                            Some(part) => part(&<$params>::from_words(words), binding, bytes),
                            None => bytes,
                        }
                    }),+
                }
            }
        }
    };
}

catalogue! {
    /// Direct 2-D convolution with groups (the pooling between stages), bias, optional ReLU and
    /// positional embedding.
    Conv = "conv" {
        text: Text::File(include_str!("../../shaders/conv.wgsl")),
        libs: &[],
        params: ConvParams,
        kind: None,
        needs: Needs::NONE,
        flops: conv::flops,
        traffic: conv::traffic,
    },
    /// Dense convolution for the stem, 16 output channels per invocation from transposed
    /// weights.
    ConvDense = "conv_dense" {
        text: Text::File(include_str!("../../shaders/conv_dense.wgsl")),
        libs: &[],
        params: ConvParams,
        kind: Some((KernelKind::Conv, Variant::Portable)),
        needs: Needs::NONE,
        flops: conv::flops,
        traffic: conv::traffic,
    },
    /// The dense stem convolution sharing inputs through subgroup broadcasts.
    ConvSg = "conv_sg" {
        text: Text::Generated(|_| generate::conv_sg()),
        libs: &[],
        params: ConvParams,
        kind: Some((KernelKind::Conv, Variant::Subgroup)),
        needs: Needs::SUBGROUPS,
        flops: conv::flops,
        traffic: conv::traffic,
    },
    /// LayerNorm over the last axis, one invocation per row.
    LayerNorm = "layernorm" {
        text: Text::File(include_str!("../../shaders/layernorm.wgsl")),
        libs: &[],
        params: NormParams,
        kind: None,
        needs: Needs::NONE,
        flops: norm::layer_norm_flops,
    },
    /// Per-row LayerNorm statistics for a linear layer that normalises as it loads.
    LnStats = "ln_stats" {
        text: Text::File(include_str!("../../shaders/ln_stats.wgsl")),
        libs: &[],
        params: NormParams,
        kind: None,
        needs: Needs::NONE,
        flops: norm::ln_stats_flops,
    },
    /// `x W^T + b` with a fused epilogue (bias, GELU or residual) in 8 x 8 register tiles.
    Linear = "linear" {
        text: Text::File(include_str!("../../shaders/linear.wgsl")),
        libs: LINEAR_LIBS,
        params: LinearParams,
        kind: Some((KernelKind::Linear, Variant::Portable)),
        needs: Needs::NONE,
        flops: linear::flops,
    },
    /// The linear layer sharing loads through subgroup broadcasts, in tiles of
    /// [`generate::linear_sg::TILE_ROWS`] rows (the key's `rows`).
    LinearSg = "linear_sg" {
        text: Text::Generated(generate::linear_sg),
        libs: LINEAR_LIBS,
        params: LinearParams,
        kind: Some((KernelKind::Linear, Variant::Subgroup)),
        needs: Needs::SUBGROUPS,
        flops: linear::flops,
    },
    /// The linear layer in 64 x 64 workgroup tiles staged through workgroup memory (the classic
    /// GPU tiling; no subgroups).
    LinearTiled = "linear_tiled" {
        text: Text::File(include_str!("../../shaders/linear_tiled.wgsl")),
        libs: LINEAR_LIBS,
        params: LinearParams,
        kind: Some((KernelKind::Linear, Variant::Tiled)),
        needs: Needs {
            subgroups: false,
            invocations: linear::TILED_INVOCATIONS,
            workgroup_bytes: linear::TILED_WORKGROUP_BYTES,
        },
        flops: linear::flops,
    },
    /// The whole MLP (LayerNorm-folded fc1, GELU, fc2, residual) in one dispatch, the hidden
    /// activations kept in workgroup memory, optionally after the attention's projection and
    /// before a second MLP on the same rows.
    MlpFused = "mlp_fused" {
        text: Text::File(include_str!("../../shaders/mlp_fused.wgsl")),
        libs: MLP_LIBS,
        params: MlpParams,
        kind: Some((KernelKind::Mlp, Variant::Fused)),
        needs: Needs {
            subgroups: false,
            invocations: mlp::INVOCATIONS,
            workgroup_bytes: mlp::WORKGROUP_BYTES,
        },
        flops: mlp::flops,
    },
    /// Fused sliced group attention with proportional attention (online softmax, scores never
    /// stored).
    Attention = "attention" {
        text: Text::File(include_str!("../../shaders/attention.wgsl")),
        libs: &[],
        params: AttentionParams,
        kind: Some((KernelKind::Attention, Variant::Portable)),
        needs: Needs::NONE,
        flops: attention::flops,
    },
    /// The fused attention with vec4 loads, for head sizes that are a multiple of 4.
    AttentionVec4 = "attention_vec4" {
        text: Text::File(include_str!("../../shaders/attention_vec4.wgsl")),
        libs: &[],
        params: AttentionParams,
        kind: Some((KernelKind::Attention, Variant::Vec4)),
        needs: Needs::NONE,
        flops: attention::flops,
    },
    /// The fused attention sharing keys through subgroup broadcasts.
    AttentionSg = "attention_sg" {
        text: Text::Generated(|_| generate::attention_sg()),
        libs: ATTENTION_SG_LIBS,
        params: AttentionParams,
        kind: Some((KernelKind::Attention, Variant::Subgroup)),
        needs: Needs::SUBGROUPS,
        flops: attention::flops,
    },
    /// Global average pooling over tokens, `[batch, n, c] -> [batch, c]`.
    MeanTokens = "mean_tokens" {
        text: Text::File(include_str!("../../shaders/mean_tokens.wgsl")),
        libs: &[],
        params: MeanTokensParams,
        kind: None,
        needs: Needs::NONE,
        flops: norm::mean_tokens_flops,
    },
    /// ToMe's matching metric: the keys averaged over heads and L2-normalised, on its own (both
    /// matchers compute it on chip; the kernel check scores their choices with it).
    TomeMetric = "tome_metric" {
        text: Text::File(include_str!("../../shaders/tome_metric.wgsl")),
        libs: METRIC_LIBS,
        params: TomeMetricParams,
        kind: None,
        needs: Needs::NONE,
        flops: merge::metric_flops,
    },
    /// Matching step 1 with the metric computed on chip: each A token's most similar B token
    /// and the score.
    TomeMatch = "tome_match" {
        text: Text::File(include_str!("../../shaders/tome_match.wgsl")),
        libs: METRIC_LIBS,
        params: TomeMatchParams,
        kind: Some((KernelKind::Matching, Variant::Portable)),
        needs: Needs {
            subgroups: false,
            invocations: 64,
            workgroup_bytes: merge::MATCH_WORKGROUP_BYTES,
        },
        flops: merge::match_flops,
    },
    /// Matching step 1 with subgroup broadcasts, the metric computed on chip.
    TomeMatchSg = "tome_match_sg" {
        text: Text::Generated(|_| generate::tome_match_sg()),
        libs: METRIC_LIBS,
        params: TomeMatchParams,
        kind: Some((KernelKind::Matching, Variant::Subgroup)),
        needs: Needs::SUBGROUPS,
        flops: merge::match_flops,
    },
    /// Matching step 2: the rank of every A token by its best score.
    TomeRank = "tome_rank" {
        text: Text::File(include_str!("../../shaders/tome_rank.wgsl")),
        libs: &[],
        params: TomeMatchParams,
        kind: None,
        needs: Needs::NONE,
        flops: merge::rank_flops,
    },
    /// Matching step 3: the output slot of every incoming token.
    TomeSlots = "tome_slots" {
        text: Text::File(include_str!("../../shaders/tome_slots.wgsl")),
        libs: &[],
        params: TomeSlotsParams,
        kind: None,
        needs: Needs::NONE,
        flops: merge::slots_flops,
    },
    /// Matching step 4: the mass-weighted merge into the new sequence.
    TomeMerge = "tome_merge" {
        text: Text::File(include_str!("../../shaders/tome_merge.wgsl")),
        libs: MERGE_LIBS,
        params: TomeMergeParams,
        kind: None,
        needs: Needs::NONE,
        flops: merge::merge_flops,
    },
    /// Matching steps 2-4 and the map update in one dispatch, one workgroup per image (the four
    /// kernels above, for sequences of up to [`merge::FUSED_MAX_TOKENS`] tokens).
    TomeMergeFused = "tome_merge_fused" {
        text: Text::File(include_str!("../../shaders/tome_merge_fused.wgsl")),
        libs: MERGE_LIBS,
        params: TomeMergeFusedParams,
        kind: None,
        needs: Needs {
            subgroups: false,
            invocations: merge::FUSED_INVOCATIONS,
            workgroup_bytes: merge::FUSED_WORKGROUP_BYTES,
        },
        flops: merge::merge_fused_flops,
    },
    /// Composes the stage's unmerge map with one merge's slot map.
    TomeMapUpdate = "tome_map_update" {
        text: Text::File(include_str!("../../shaders/tome_map_update.wgsl")),
        libs: &[],
        params: TomeMapUpdateParams,
        kind: None,
        needs: Needs::NONE,
        flops: merge::map_update_flops,
    },
    /// Copies a run of tokens between sequences (the lead tokens).
    CopyTokens = "copy_tokens" {
        text: Text::File(include_str!("../../shaders/copy_tokens.wgsl")),
        libs: &[],
        params: CopyTokensParams,
        kind: None,
        needs: Needs::NONE,
        flops: tokens::copy_tokens_flops,
    },
    /// The ImageNet evaluation transform from a texture (its own pipeline, outside programs).
    Preprocess = "preprocess" {
        text: Text::File(include_str!("../../shaders/preprocess.wgsl")),
        libs: &[],
        params: PreprocessParams,
        kind: None,
        needs: Needs::NONE,
        flops: preprocess::flops,
    },
}

impl Kernel {
    /// The module's WGSL for tiles of `rows` rows (generated kernels with a tile height;
    /// 0 means the default, [`generate::linear_sg::FULL_ROWS`]; others ignore it): the kernel's
    /// text followed by the `shaders/lib/` helpers it uses. Made once per kernel and height.
    pub fn source(self, rows: u32) -> &'static str {
        let entry = self.entry();
        let rows = self.tile(rows);
        static MADE: OnceLock<Mutex<HashMap<(Kernel, u32), &'static str>>> = OnceLock::new();
        let mut made = MADE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        made.entry((self, rows)).or_insert_with(|| {
            let mut text = self.text(rows);
            for lib in entry.libs {
                text.push('\n');
                text.push_str(lib);
            }
            // A finite set (kernels x tile heights), kept for the life of the process.
            Box::leak(text.into_boxed_str())
        })
    }

    /// The kernel's own text, without the helpers appended to it: its file, or what its
    /// generator makes for tiles of `rows` rows (0: the default height).
    pub fn text(self, rows: u32) -> String {
        match self.entry().text {
            Text::File(text) => text.to_string(),
            Text::Generated(make) => make(self.tile(rows)),
        }
    }

    /// The tile height `rows` stands for: 0 for kernels without one, the full tile
    /// ([`generate::linear_sg::FULL_ROWS`]) for 0, else `rows`.
    fn tile(self, rows: u32) -> u32 {
        match (self.tile_rows().is_empty(), rows) {
            (true, _) => 0,
            (false, 0) => generate::linear_sg::FULL_ROWS,
            (false, r) => r,
        }
    }

    /// Whether the WGSL comes from a generator in [`super::generate`] (`shaders/NAME.wgsl` is
    /// then its default rendering, kept for reading and compared with the generator by a test).
    pub fn is_generated(self) -> bool {
        matches!(self.entry().text, Text::Generated(_))
    }

    /// The tile heights a generated kernel is made for (empty for kernels without one).
    pub fn tile_rows(self) -> &'static [u32] {
        match self {
            Kernel::LinearSg => &generate::linear_sg::TILE_ROWS,
            _ => &[],
        }
    }

    /// The kernel kind and variant it implements, `None` for kernels without alternatives.
    pub fn variant(self) -> Option<(KernelKind, Variant)> {
        self.entry().kind
    }

    /// What it needs of the device.
    pub fn needs(self) -> Needs {
        self.entry().needs
    }

    /// Its uniform block's Rust type, as reflection tests read it.
    pub fn params(self) -> ParamsLayout {
        self.entry().params
    }

    /// The `@binding` indices the shader declares `read_write` (it may write them).
    pub fn writable_bindings(self) -> Vec<u32> {
        self.source(0)
            .lines()
            .filter(|l| l.contains("var<storage, read_write>"))
            .filter_map(|l| {
                let at = l.find("@binding(")? + "@binding(".len();
                l[at..].split(')').next()?.trim().parse().ok()
            })
            .collect()
    }

    /// Whether the source declares the substitutable `HEAD_DIM` constant.
    pub fn has_head_dim(self) -> bool {
        self.source(0).contains(HEAD_DIM_LINE)
    }

    /// Whether the source declares the substitutable subgroup width `SG`.
    pub fn has_sg(self) -> bool {
        self.source(0).contains(SG_LINE)
    }

    /// Whether the source stores activations as the substitutable `elem` type.
    pub fn has_elem(self) -> bool {
        self.source(0).contains(ELEM_LINE)
    }
}

/// A fingerprint of the code of `kind`'s `variant` (FNV-1a over the text of each of its kernels
/// at each tile height): cached measurements and verdicts about a variant name it, so a build
/// whose kernels changed measures and checks again.
pub fn variant_fingerprint(kind: KernelKind, variant: Variant) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in Kernel::ALL
        .into_iter()
        .filter(|k| k.variant() == Some((kind, variant)))
    {
        for rows in std::iter::once(0).chain(k.tile_rows().iter().copied()) {
            for byte in k.source(rows).bytes() {
                h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// The element-type line a plan may rewrite to f16.
pub const ELEM_LINE: &str = "alias elem = f32;";
/// What [`ELEM_LINE`] becomes in the f16 variant (`enable` must precede every declaration, which
/// is why the alias is each file's first declaration).
pub const ELEM_LINE_F16: &str = "enable f16; alias elem = f16;";

/// The line a plan may rewrite, exactly as it stands in the `.wgsl` files.
pub const HEAD_DIM_LINE: &str = "const HEAD_DIM: u32 = 32u;";

/// The subgroup-width line a plan may rewrite, exactly as it stands in the `*_sg` kernels.
pub const SG_LINE: &str = "const SG: u32 = 8u;";

/// The subgroup widths the `*_sg` kernels are written for (powers of two; see [`SG_LINE`]).
pub const SG_WIDTHS: [u32; 5] = [4, 8, 16, 32, 64];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_needs_match_what_the_source_uses() {
        for k in Kernel::ALL {
            assert_eq!(
                k.needs().subgroups,
                k.source(0).contains("subgroupBroadcast"),
                "{}: declared subgroup need differs from its source",
                k.name()
            );
            assert_eq!(
                k.needs().subgroups,
                k.has_sg(),
                "{}: a subgroup kernel declares its width as the line `{SG_LINE}`",
                k.name()
            );
        }
    }

    #[test]
    fn every_kernel_declares_a_readable_workgroup_size() {
        for k in Kernel::ALL {
            for rows in std::iter::once(0).chain(k.tile_rows().iter().copied()) {
                let key = KernelKey::plain(k).with_rows(rows);
                assert!(
                    crate::gpu::limits::workgroup_size(&key.wgsl()).is_some(),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn writable_bindings_are_read_from_the_source() {
        assert_eq!(Kernel::Linear.writable_bindings(), vec![4, 6]);
        assert_eq!(Kernel::TomeMerge.writable_bindings(), vec![5, 6]);
        assert_eq!(Kernel::TomeMatch.writable_bindings(), vec![2, 3]);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kernel::ALL.len());
    }
}
