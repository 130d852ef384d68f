//! Architecture hyper-parameters of the published SReT variants and of the paper's baselines.
//!
//! SReT numbers follow the reference implementation (`SReT_T`, `SReT_LT`, `SReT_S` and their
//! `_distill` twins): the distilled models share the architecture and differ only in weights.
//! The baselines are timm's `deit_tiny[_distilled]_patch16_224` and `pit_ti[_distilled]_224`
//! ([`Arch::Vit`]): plain transformer blocks (one execution each, no sliced attention, no
//! `Non_proj`) after a patch convolution, with class (and distillation) tokens in front of the
//! sequence, described with the same [`StageConfig`]s (PiT has three stages, DeiT one).

use crate::error::{Error, Result};

/// One stage of the pyramid: a set of shared `Transformer_Block`s run recursively, each loop
/// followed by its own `Non_proj` MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct StageConfig {
    /// Channel width (`base_dim * heads`).
    pub dim: usize,
    /// Attention heads; `dim` is a multiple of it.
    pub heads: usize,
    /// Number of `Transformer_Block` executions in the stage (`depth` in the reference).
    pub depth: usize,
    /// Number of distinct (weight-owning) `Transformer_Block`s (`recursive_num`).
    pub recursive_num: usize,
    /// Groups of sliced attention on the first pass of a shared block.
    pub groups1: usize,
    /// Groups on the recursive passes, which also permute the tokens when > 1.
    pub groups2: usize,
    /// Hidden width of the block MLP: `int(dim * mlp_ratio)`.
    pub mlp_hidden: usize,
    /// Hidden width of the `Non_proj` MLP: `int(dim * np_mlp_ratio)`.
    pub np_hidden: usize,
}

impl StageConfig {
    /// Channels per attention head (`dim / heads`).
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    /// Loops each shared block runs (`depth / recursive_num`).
    pub fn loops(&self) -> usize {
        self.depth / self.recursive_num
    }
    /// Least common multiple of the two group counts: every merged length must be a multiple.
    pub fn group_lcm(&self) -> usize {
        lcm(self.groups1, self.groups2)
    }
    /// Execution `exec` (0-based among the stage's `Transformer_Block` runs) is a recursive pass
    /// (groups2, permuted when groups2 > 1) when it is not the first loop of its block.
    pub fn is_recursive(&self, exec: usize) -> bool {
        !exec.is_multiple_of(self.loops())
    }
    /// Number of sliced attention groups that execution `exec` uses: `groups2` on recursive
    /// passes, `groups1` on first passes.
    pub fn groups_of(&self, exec: usize) -> usize {
        if self.is_recursive(exec) {
            self.groups2
        } else {
            self.groups1
        }
    }
    /// Whether execution `exec` permutes the tokens before its sliced attention (a recursive
    /// pass with `groups2 > 1`).
    pub fn permutes(&self, exec: usize) -> bool {
        self.is_recursive(exec) && self.groups2 != 1
    }
    /// Index of the shared block that execution `exec` runs.
    pub fn block_of(&self, exec: usize) -> usize {
        exec / self.loops()
    }
    /// Position of execution `exec`'s `Transformer_Block` in the reference's `blocks` list
    /// (blocks and `Non_proj`s alternate). Its `Non_proj` is at the next index.
    pub fn module_index(&self, exec: usize) -> usize {
        2 * exec
    }
}

/// How the class and distillation tokens take part in token merging (they are never merged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeadMerging {
    /// ToMe's own timm patch (DeiT): the lead tokens stay in the bipartite split (tokens at
    /// even positions form set A, so the class token is in A and a distillation token in B),
    /// the class token's scores are `-inf` (never a source), the distillation token's column
    /// is `-inf` (never a destination), and the unmerged A tokens keep their original order.
    InSequence,
    /// The paper's `PiT_ToMe.py`: the lead tokens are split off, the patch tokens alone are
    /// matched and merged as in SReT (unmerged A tokens in order of similarity), and the lead
    /// tokens are put back in front.
    SplitOff,
}

/// A transformer with a patch convolution and lead (class, distillation) tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the patch convolution's kernel.
    pub patch: usize,
    /// Stride of the patch convolution (`patch` for DeiT, overlapping for PiT).
    pub stride: usize,
    /// Has a distillation token and head (`(head(cls) + head_dist(dist)) / 2` at inference).
    pub distilled: bool,
    /// How the lead tokens take part in token merging.
    pub merging: LeadMerging,
    /// `pos_embed` covers the lead tokens too (DeiT: `[1, lead + n, dim]`), or only the patch
    /// grid (PiT: `[1, dim, side, side]`, lead tokens carry no position). Also what tells timm's
    /// `VisionTransformer` layout (`blocks.{i}`, `patch_embed.proj`) from PiT's.
    pub pos_on_lead: bool,
    /// What the classifier reads.
    pub pool: VitPool,
    /// ToMe's proportional attention (`prop_attn`: `log(size)` added to the attention scores).
    /// The official patches: on for `tome.patch.timm`, off for `tome.patch.mae`.
    pub prop_attn: bool,
}

/// timm's `global_pool` of a `VisionTransformer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitPool {
    /// `'token'`: the final `norm` on the sequence, the head on the class token (and the
    /// distillation head on the distillation token, the two averaged).
    Token,
    /// `'avg'` with `fc_norm` (MAE fine-tuning): `norm` is the identity, the patch tokens
    /// (everything after the lead tokens) are averaged, then `fc_norm`, then the head. Merged
    /// tokens count by their size, as ToMe's MAE patch pools (`sum(x * size)[:, 1:] / T`, the
    /// mean of the restored grid); without merging this is timm's plain mean.
    Avg,
}

impl VitConfig {
    /// Class token, plus the distillation token of distilled models.
    pub fn lead(&self) -> usize {
        1 + self.distilled as usize
    }
}

/// What the classifier head reads ([`ModelConfig::readout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// The mean of the (restored) tokens after the lead tokens, normalised, then the head:
    /// SReT's average pool, and timm's `global_pool='avg'` with `fc_norm`.
    MeanOfTokens,
    /// The normalised class token's head, averaged with the distillation token's head when
    /// there is one.
    LeadTokens,
}

/// The model family. Every architecture-specific step matches on this exhaustively, once per
/// step, at its entry point: synthetic weights (`model::synthetic`), the weight-file layouts
/// (`io::safetensors`), recording (`runtime::record`), parameter and FLOP counts
/// (`runtime::cost`) and the sequence split (`tome::split`); properties that differ are
/// methods of [`ModelConfig`] (`lead`, `stem_relu`, `proportional_attention`, `readout`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arch {
    /// SReT: a three-convolution stem, shared recursive blocks with `Non_proj` MLPs, mean pool.
    Sret,
    /// DeiT / PiT: patch convolution, lead tokens, classification from the lead tokens.
    Vit(VitConfig),
}

/// The architecture of one model: family, input size, stem, stages and classifier width.
/// Built by [`ModelConfig::by_name`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Canonical model name, as `--model` spells it (e.g. `"sret_t_distill"`).
    pub name: &'static str,
    /// The family and its family-specific settings.
    pub arch: Arch,
    /// Side of the square input image, in pixels (224 for every published model except the
    /// `*_384` ViTs).
    pub image_size: usize,
    /// Channels after the first stem convolution (`out_channels / 2`).
    pub stem_mid: usize,
    /// The stages of the pyramid, first to last (three for SReT and PiT, one for DeiT/ViT).
    pub stages: Vec<StageConfig>,
    /// Number of output logits (1000 for ImageNet-1k).
    pub num_classes: usize,
}

/// The SReT variants.
pub const SRET_MODEL_NAMES: [&str; 6] = [
    "sret_t",
    "sret_t_distill",
    "sret_lt",
    "sret_lt_distill",
    "sret_s",
    "sret_s_distill",
];

/// The paper's baselines (timm layouts).
pub const VIT_MODEL_NAMES: [&str; 4] =
    ["deit_tiny", "deit_tiny_distill", "pit_ti", "pit_ti_distill"];

/// timm's `VisionTransformer` family by timm's model names ([`ModelConfig::by_name`] also takes
/// `deit_tiny_patch16_224` and `deit_tiny_distilled_patch16_224`; the short names above stay).
/// `vit_*` are the AugReg layouts (class token, `global_pool='token'`, no `pre_logits`, no
/// `fc_norm`). Not in [`MODEL_NAMES`], whose every entry the test suite runs in full.
pub const VIT_FAMILY_NAMES: [&str; 21] = [
    "deit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_small_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit_base_patch16_384",
    "deit_base_distilled_patch16_384",
    "vit_tiny_patch16_224",
    "vit_tiny_patch16_384",
    "vit_small_patch16_224",
    "vit_small_patch16_384",
    "vit_small_patch32_224",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
    "vit_base_patch32_224",
    "vit_base_patch32_384",
    "vit_large_patch16_224",
    "vit_large_patch16_384",
    "vit_large_patch32_384",
    "vit_huge_patch14_224",
];

/// The names accepted by `--model` (besides [`VIT_FAMILY_NAMES`]).
pub const MODEL_NAMES: [&str; 10] = [
    "sret_t",
    "sret_t_distill",
    "sret_lt",
    "sret_lt_distill",
    "sret_s",
    "sret_s_distill",
    "deit_tiny",
    "deit_tiny_distill",
    "pit_ti",
    "pit_ti_distill",
];

/// The most `Transformer_Block` executions one stage may run ([`ModelConfig::validate`]):
/// well past the deepest published ViT (48 blocks).
pub const MAX_DEPTH: usize = 256;
/// The largest input side in pixels ([`ModelConfig::validate`]).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// The most patch tokens one image may have (a 128 x 128 grid: a 2048-pixel image in patches
/// of 16); the attention of more does not fit any adapter's buffers.
pub const MAX_TOKENS: usize = 16384;
/// The most parameters a model may have: 4 GiB of f32, the largest weight file read.
pub const MAX_PARAMS: u64 = 1 << 30;

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "sret_t_distill";

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// `int(x * ratio)` as Python computes it for the ratios the reference uses.
fn hidden(dim: usize, ratio: f64) -> usize {
    (dim as f64 * ratio).floor() as usize
}

impl ModelConfig {
    /// A model by name: [`MODEL_NAMES`] or [`VIT_FAMILY_NAMES`]. A ViT-family name may carry
    /// overrides after `@`, as timm's `create_model(name, **kwargs)` takes them:
    /// `vit_base_patch16_224@depth=2,global_pool=avg,img_size=384` (`depth`: blocks;
    /// `global_pool`: `token` or `avg` (with `fc_norm`, MAE-style, and ToMe's MAE patch:
    /// size-weighted pool, no proportional attention); `img_size`: a multiple of the patch,
    /// position embeddings of that grid; `prop_attn`: `true` or `false`, after `global_pool`).
    /// Overrides apply in order. The name stays timm's.
    pub fn by_name(name: &str) -> Result<Self> {
        if name == "auto" {
            return Err(Error::arg(
                "model",
                name,
                "'auto' reads the architecture from a weight file; give --weights, or name the model",
            ));
        }
        let (base, overrides) = match name.split_once('@') {
            Some((b, o)) => (b, Some(o)),
            None => (name, None),
        };
        if let Some(cfg) = Self::vit_family(base) {
            return match overrides {
                Some(o) => cfg.with_overrides(name, o),
                None => Ok(cfg),
            };
        }
        if overrides.is_some() {
            return Err(Error::arg(
                "model",
                name,
                "overrides after '@' apply to the ViT family (deit_*, vit_* timm names) only",
            ));
        }
        if let Some(cfg) = Self::vit_by_name(name) {
            return Ok(cfg);
        }
        let (base, heads, mlp_ratio, np_ratio): (usize, [usize; 3], f64, f64) = match name {
            "sret_t" | "sret_t_distill" => (32, [2, 4, 8], 3.6, 1.0),
            "sret_lt" | "sret_lt_distill" => (32, [2, 4, 8], 4.0, 1.0),
            "sret_s" | "sret_s_distill" => (42, [3, 6, 12], 3.0, 2.0),
            _ => {
                return Err(Error::UnknownModel {
                    name: name.to_string(),
                    known: format!(
                        "{}, and timm's {}",
                        MODEL_NAMES.join(", "),
                        VIT_FAMILY_NAMES.join(", ")
                    ),
                })
            }
        };
        let name = MODEL_NAMES
            .iter()
            .find(|n| **n == name)
            .copied()
            .unwrap_or("?");
        let depth = [4, 10, 6];
        let recursive_num = [2, 5, 3];
        let groups1 = [8, 4, 1];
        let groups2 = [2, 1, 1];
        let stages = (0..3)
            .map(|s| {
                let dim = base * heads[s];
                StageConfig {
                    dim,
                    heads: heads[s],
                    depth: depth[s],
                    recursive_num: recursive_num[s],
                    groups1: groups1[s],
                    groups2: groups2[s],
                    mlp_hidden: hidden(dim, mlp_ratio),
                    np_hidden: hidden(dim, np_ratio),
                }
            })
            .collect::<Vec<_>>();
        Ok(ModelConfig {
            name,
            arch: Arch::Sret,
            image_size: 224,
            stem_mid: stages[0].dim / 2,
            stages,
            num_classes: 1000,
        })
    }

    /// timm's DeiT-Tiny and PiT-Ti, with or without distillation.
    fn vit_by_name(name: &str) -> Option<Self> {
        let name = VIT_MODEL_NAMES.iter().find(|n| **n == name).copied()?;
        let distilled = name.ends_with("_distill");
        let block = |dim: usize, heads: usize, depth: usize| StageConfig {
            dim,
            heads,
            depth,
            recursive_num: depth,
            groups1: 1,
            groups2: 1,
            mlp_hidden: 4 * dim,
            np_hidden: 0,
        };
        let (vit, stages) = if name.starts_with("deit") {
            let vit = VitConfig {
                patch: 16,
                stride: 16,
                distilled,
                merging: LeadMerging::InSequence,
                pos_on_lead: true,
                pool: VitPool::Token,
                prop_attn: true,
            };
            (vit, vec![block(192, 3, 12)])
        } else {
            let vit = VitConfig {
                patch: 16,
                stride: 8,
                distilled,
                merging: LeadMerging::SplitOff,
                pos_on_lead: false,
                pool: VitPool::Token,
                prop_attn: true,
            };
            let stages =
                [(2, 2), (4, 6), (8, 4)].map(|(heads, depth)| block(32 * heads, heads, depth));
            (vit, stages.to_vec())
        };
        Some(ModelConfig {
            name,
            arch: Arch::Vit(vit),
            image_size: 224,
            stem_mid: 0,
            stages,
            num_classes: 1000,
        })
    }

    /// timm's `deit_*` / `vit_*` `VisionTransformer`s: `{deit,vit}_{size}[_distilled]_patch{P}_{S}`
    /// from [`VIT_FAMILY_NAMES`] (and the two long DeiT-Tiny names). One stage of plain
    /// blocks, MLP ratio 4, `qkv_bias`, class (and distillation) token with its position.
    fn vit_family(name: &str) -> Option<Self> {
        let name = VIT_FAMILY_NAMES.iter().find(|n| **n == name).copied()?;
        let (family, rest) = name.split_once('_')?;
        let (size, rest) = rest.split_once('_')?;
        let (distilled, rest) = match rest.strip_prefix("distilled_") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (patch, image) = rest.strip_prefix("patch")?.split_once('_')?;
        let (patch, image_size): (usize, usize) = (patch.parse().ok()?, image.parse().ok()?);
        let (dim, heads, depth) = match size {
            "tiny" => (192, 3, 12),
            "small" => (384, 6, 12),
            "base" => (768, 12, 12),
            "large" => (1024, 16, 24),
            "huge" => (1280, 16, 32),
            _ => return None,
        };
        debug_assert!(family == "deit" || !distilled);
        let vit = VitConfig {
            patch,
            stride: patch,
            distilled,
            merging: LeadMerging::InSequence,
            pos_on_lead: true,
            pool: VitPool::Token,
            prop_attn: true,
        };
        Some(ModelConfig {
            name,
            arch: Arch::Vit(vit),
            image_size,
            stem_mid: 0,
            stages: vec![StageConfig {
                dim,
                heads,
                depth,
                recursive_num: depth,
                groups1: 1,
                groups2: 1,
                mlp_hidden: 4 * dim,
                np_hidden: 0,
            }],
            num_classes: 1000,
        })
    }

    /// `key=value` overrides of a ViT-family config (see [`ModelConfig::by_name`]).
    fn with_overrides(mut self, spec: &str, overrides: &str) -> Result<Self> {
        let bad = |why: String| Error::arg("model", spec, why);
        for kv in overrides.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("override '{kv}' is not key=value")))?;
            let count = || {
                v.parse::<usize>()
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or_else(|| bad(format!("{k} must be a positive integer, got '{v}'")))
            };
            match k {
                "depth" => {
                    let d = count()?;
                    let st = &mut self.stages[0];
                    (st.depth, st.recursive_num) = (d, d);
                }
                "img_size" => self.image_size = count()?,
                "global_pool" => {
                    let pool = match v {
                        "token" => VitPool::Token,
                        "avg" => VitPool::Avg,
                        _ => return Err(bad(format!("global_pool is token or avg, got '{v}'"))),
                    };
                    if let Arch::Vit(vc) = &mut self.arch {
                        if vc.distilled && pool == VitPool::Avg {
                            return Err(bad("distilled models pool their lead tokens".into()));
                        }
                        vc.pool = pool;
                        // ToMe's MAE patch turns proportional attention off (unless told).
                        vc.prop_attn = pool == VitPool::Token;
                    }
                }
                "prop_attn" => {
                    let on = match v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad(format!("prop_attn is true or false, got '{v}'"))),
                    };
                    if let Arch::Vit(vc) = &mut self.arch {
                        vc.prop_attn = on;
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown override '{k}' (depth, global_pool, img_size, prop_attn)"
                    )))
                }
            }
        }
        let patch = match &self.arch {
            Arch::Sret => 1,
            Arch::Vit(v) => v.patch,
        };
        if self.image_size < patch || !self.image_size.is_multiple_of(patch) {
            return Err(bad(format!(
                "img_size {} is not a multiple of the patch {patch}",
                self.image_size
            )));
        }
        self.check().map_err(bad)?;
        Ok(self)
    }

    /// Checks that the configuration is one a forward can run and whose sizes, FLOPs and
    /// memory figures fit 64-bit counters: every count positive, the divisions exact
    /// (`dim` by `heads`, `depth` by `recursive_num`), and the bounds [`MAX_DEPTH`],
    /// [`MAX_IMAGE_SIZE`], [`MAX_TOKENS`] and [`MAX_PARAMS`] respected. Every way of making a
    /// configuration (names, overrides, a weight file's shapes) and every plan of one
    /// ([`crate::tome::Schedule::targets`]) calls it, before anything is sized from it.
    pub fn validate(&self) -> Result<()> {
        self.check()
            .map_err(|why| Error::arg("model", self.name, why))
    }

    /// [`ModelConfig::validate`]'s checks; the error says why.
    fn check(&self) -> std::result::Result<(), String> {
        let bad = |why: String| Err(why);
        if self.stages.is_empty() {
            return bad("it has no stages".into());
        }
        if self.num_classes == 0 {
            return bad("it has 0 classes".into());
        }
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return bad(format!(
                "image size {} is outside 1..={MAX_IMAGE_SIZE} pixels (no adapter holds the \
                 attention of a larger image in one forward)",
                self.image_size
            ));
        }
        if let Arch::Vit(v) = &self.arch {
            if v.patch == 0 || v.stride == 0 {
                return bad(format!(
                    "patch {} / stride {}: a patch convolution needs both at least 1",
                    v.patch, v.stride
                ));
            }
            if self.image_size < v.patch {
                return bad(format!(
                    "image size {} is smaller than the patch {}",
                    self.image_size, v.patch
                ));
            }
        } else if self.image_size < 8 << (self.stages.len() - 1) {
            return bad(format!(
                "image size {} leaves no tokens for {} stages (at least {} pixels)",
                self.image_size,
                self.stages.len(),
                8 << (self.stages.len() - 1)
            ));
        }
        let tokens = self.tokens(0);
        if tokens == 0 || tokens > MAX_TOKENS {
            return bad(format!(
                "{tokens} patch tokens per image, outside 1..={MAX_TOKENS} (a larger image or a \
                 smaller patch: its attention would not fit any adapter's buffers)"
            ));
        }
        for (s, st) in self.stages.iter().enumerate() {
            if st.dim == 0 || st.heads == 0 || !st.dim.is_multiple_of(st.heads) {
                return bad(format!(
                    "stage {s}: width {} is not a positive multiple of its {} heads",
                    st.dim, st.heads
                ));
            }
            if st.depth == 0 || st.depth > MAX_DEPTH {
                return bad(format!(
                    "stage {s}: depth {} is outside 1..={MAX_DEPTH} (the deepest published \
                     ViT runs 48 blocks)",
                    st.depth
                ));
            }
            if st.recursive_num == 0 || !st.depth.is_multiple_of(st.recursive_num) {
                return bad(format!(
                    "stage {s}: depth {} is not a multiple of its {} shared blocks",
                    st.depth, st.recursive_num
                ));
            }
            if st.groups1 == 0 || st.groups2 == 0 || st.mlp_hidden == 0 {
                return bad(format!(
                    "stage {s}: groups ({}, {}) and MLP width {} must be at least 1",
                    st.groups1, st.groups2, st.mlp_hidden
                ));
            }
        }
        match self.params_estimate() {
            Some(p) if p <= MAX_PARAMS => Ok(()),
            p => bad(format!(
                "{} parameters, more than {MAX_PARAMS} (4 GiB of f32, the largest weight file \
                 read)",
                p.map_or_else(|| "over 2^64".to_string(), |p| p.to_string())
            )),
        }
    }

    /// The number of weights, as [`crate::runtime::cost::params`] counts them up to the
    /// few small terms this leaves out, with checked arithmetic (`None` past `u64`).
    fn params_estimate(&self) -> Option<u64> {
        let m = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let mut p: u64 = m(self.tokens(0), self.stages[0].dim)?;
        for st in &self.stages {
            let d = st.dim;
            let block = m(d, 4 * d.checked_add(3)?)?
                .checked_add(m(d, st.mlp_hidden)?.checked_mul(2)?)?
                .checked_add(m(st.mlp_hidden, 1)?)?;
            let np = m(d, st.np_hidden)?.checked_mul(2)?;
            p = p
                .checked_add(block.checked_mul(st.recursive_num as u64)?)?
                .checked_add(np.checked_mul(st.depth as u64)?)?;
        }
        let head = m(self.final_dim().checked_add(1)?, self.num_classes)?;
        p.checked_add(head.checked_mul(2)?)
    }

    /// Tokens in front of the patch tokens that are never merged (class, distillation).
    pub fn lead(&self) -> usize {
        match &self.arch {
            Arch::Sret => 0,
            Arch::Vit(v) => v.lead(),
        }
    }

    /// Whether the stem's convolutions are followed by ReLU (SReT's three-convolution stem;
    /// a ViT's patch convolution is linear).
    pub fn stem_relu(&self) -> bool {
        matches!(self.arch, Arch::Sret)
    }

    /// Whether merged tokens weigh in attention by their size (ToMe's proportional attention:
    /// always for SReT, as the paper; per config for the ViT family).
    pub fn proportional_attention(&self) -> bool {
        match &self.arch {
            Arch::Sret => true,
            Arch::Vit(v) => v.prop_attn,
        }
    }

    /// What the classifier head reads after the last stage.
    pub fn readout(&self) -> Readout {
        match &self.arch {
            Arch::Sret
            | Arch::Vit(VitConfig {
                pool: VitPool::Avg, ..
            }) => Readout::MeanOfTokens,
            Arch::Vit(_) => Readout::LeadTokens,
        }
    }

    /// Side of the token grid entering each stage: 28, 14, 7 for SReT at 224 pixels; 14 for
    /// DeiT; 27, 14, 7 for PiT (each pooling is a 3x3, stride 2, padding 1 convolution).
    pub fn grid_side(&self, stage: usize) -> usize {
        match &self.arch {
            Arch::Sret => (self.image_size / 8) >> stage,
            Arch::Vit(v) => {
                let first = (self.image_size.saturating_sub(v.patch)) / v.stride.max(1) + 1;
                (0..stage).fold(first, |g, _| g.div_ceil(2))
            }
        }
    }
    /// Patch tokens entering stage `stage` (`grid_side(stage)` squared, lead tokens not counted).
    pub fn tokens(&self, stage: usize) -> usize {
        self.grid_side(stage) * self.grid_side(stage)
    }
    /// Total `Transformer_Block` executions over all stages (20 for every published variant).
    pub fn total_executions(&self) -> usize {
        self.stages.iter().map(|s| s.depth).sum()
    }
    /// Channel width of the last stage, which the final norm and the head read (0 without stages).
    pub fn final_dim(&self) -> usize {
        self.stages.last().map(|s| s.dim).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sret_t_matches_reference_dimensions() {
        let c = ModelConfig::by_name("sret_t_distill").unwrap();
        let dims: Vec<_> = c.stages.iter().map(|s| s.dim).collect();
        assert_eq!(dims, [64, 128, 256]);
        let hidden: Vec<_> = c.stages.iter().map(|s| s.mlp_hidden).collect();
        assert_eq!(hidden, [230, 460, 921]);
        assert_eq!(c.stem_mid, 32);
        assert_eq!(c.stages[0].group_lcm(), 8);
        assert_eq!(c.total_executions(), 20);
        assert_eq!([c.tokens(0), c.tokens(1), c.tokens(2)], [784, 196, 49]);
        // Recursive passes are the odd executions (loops = 2); only stage 0 permutes.
        assert!(!c.stages[0].is_recursive(0) && c.stages[0].is_recursive(1));
        assert!(c.stages[0].permutes(3) && !c.stages[1].permutes(3));
    }

    #[test]
    fn sret_s_dimensions() {
        let c = ModelConfig::by_name("sret_s").unwrap();
        let dims: Vec<_> = c
            .stages
            .iter()
            .map(|s| (s.dim, s.mlp_hidden, s.np_hidden))
            .collect();
        assert_eq!(dims, [(126, 378, 252), (252, 756, 504), (504, 1512, 1008)]);
    }

    #[test]
    fn baselines_match_timm_dimensions() {
        let deit = ModelConfig::by_name("deit_tiny_distill").unwrap();
        assert_eq!(
            (deit.tokens(0), deit.lead(), deit.total_executions()),
            (196, 2, 12)
        );
        assert_eq!(deit.stages[0].mlp_hidden, 768);
        assert_eq!(ModelConfig::by_name("deit_tiny").unwrap().lead(), 1);
        let pit = ModelConfig::by_name("pit_ti_distill").unwrap();
        let grids: Vec<_> = (0..3).map(|s| pit.grid_side(s)).collect();
        assert_eq!(grids, [27, 14, 7]);
        let dims: Vec<_> = pit
            .stages
            .iter()
            .map(|s| (s.dim, s.heads, s.depth))
            .collect();
        assert_eq!(dims, [(64, 2, 2), (128, 4, 6), (256, 8, 4)]);
        assert!(pit
            .stages
            .iter()
            .all(|s| s.loops() == 1 && s.group_lcm() == 1));
    }

    #[test]
    fn vit_family_has_timm_dimensions() {
        let dims = |n: &str| {
            let c = ModelConfig::by_name(n).unwrap();
            let s = &c.stages[0];
            (s.dim, s.heads, s.depth, s.mlp_hidden, c.tokens(0), c.lead())
        };
        assert_eq!(dims("deit_small_patch16_224"), (384, 6, 12, 1536, 196, 1));
        assert_eq!(
            dims("deit_base_distilled_patch16_384"),
            (768, 12, 12, 3072, 576, 2)
        );
        assert_eq!(dims("vit_large_patch16_384"), (1024, 16, 24, 4096, 576, 1));
        assert_eq!(dims("vit_base_patch32_224"), (768, 12, 12, 3072, 49, 1));
        assert_eq!(dims("vit_huge_patch14_224"), (1280, 16, 32, 5120, 256, 1));
        // The long DeiT-Tiny names are the short ones' architecture.
        let long = ModelConfig::by_name("deit_tiny_distilled_patch16_224").unwrap();
        let short = ModelConfig::by_name("deit_tiny_distill").unwrap();
        assert_eq!((long.arch, &long.stages), (short.arch, &short.stages));
        for n in VIT_FAMILY_NAMES {
            assert_eq!(ModelConfig::by_name(n).unwrap().name, n);
        }
    }

    #[test]
    fn vit_overrides() {
        let c = ModelConfig::by_name("vit_base_patch16_224@depth=2,global_pool=avg,img_size=384")
            .unwrap();
        assert_eq!(c.name, "vit_base_patch16_224");
        assert_eq!((c.total_executions(), c.tokens(0)), (2, 576));
        assert_eq!(c.readout(), Readout::MeanOfTokens);
        assert!(!c.proportional_attention());
        let c = ModelConfig::by_name("vit_base_patch16_224@global_pool=avg,prop_attn=true");
        assert!(c.unwrap().proportional_attention());
        for bad in [
            "vit_base_patch16_224@depth=0",
            "vit_base_patch16_224@img_size=200",
            "vit_base_patch16_224@global_pool=max",
            "vit_base_patch16_224@width=3",
            "deit_base_distilled_patch16_224@global_pool=avg",
            "sret_t@depth=2",
        ] {
            assert!(ModelConfig::by_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_named_config_is_valid_and_sizes_are_bounded() {
        for n in MODEL_NAMES.iter().chain(&VIT_FAMILY_NAMES) {
            ModelConfig::by_name(n).unwrap().validate().unwrap();
        }
        for (spec, needle) in [
            (
                "vit_tiny_patch16_224@depth=257",
                "depth 257 is outside 1..=256",
            ),
            (
                "vit_tiny_patch16_224@depth=18446744073709551615",
                "depth 18446744073709551615",
            ),
            ("vit_tiny_patch16_224@img_size=4112", "image size 4112"),
            (
                "vit_tiny_patch16_224@img_size=18446744073709551600",
                "image size 18446744073709551600",
            ),
            // 4096 pixels in patches of 16: a 256 x 256 grid.
            ("vit_tiny_patch16_224@img_size=4096", "65536 patch tokens"),
            ("vit_huge_patch14_224@depth=256", "parameters, more than"),
        ] {
            let e = ModelConfig::by_name(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        // The largest accepted sizes.
        ModelConfig::by_name("vit_tiny_patch16_224@depth=256,img_size=2048").unwrap();
        // Hand-made configurations are checked as well.
        let mut c = ModelConfig::by_name("deit_tiny").unwrap();
        if let Arch::Vit(v) = &mut c.arch {
            v.patch = 0;
        }
        assert!(c.validate().unwrap_err().to_string().contains("patch 0"));
        let mut c = ModelConfig::by_name("sret_t").unwrap();
        c.stages[1].heads = 0;
        assert!(c.validate().is_err());
        c.stages[1].heads = 4;
        c.num_classes = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_model_is_an_error() {
        let e = ModelConfig::by_name("sret_xl").unwrap_err().to_string();
        assert!(e.contains("sret_xl") && e.contains("sret_t_distill"), "{e}");
    }
}
