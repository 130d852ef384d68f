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
    pub fn groups_of(&self, exec: usize) -> usize {
        if self.is_recursive(exec) {
            self.groups2
        } else {
            self.groups1
        }
    }
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
    pub merging: LeadMerging,
    /// `pos_embed` covers the lead tokens too (DeiT: `[1, lead + n, dim]`), or only the patch
    /// grid (PiT: `[1, dim, side, side]`, lead tokens carry no position).
    pub pos_on_lead: bool,
}

impl VitConfig {
    /// Class token, plus the distillation token of distilled models.
    pub fn lead(&self) -> usize {
        1 + self.distilled as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arch {
    /// SReT: a three-convolution stem, shared recursive blocks with `Non_proj` MLPs, mean pool.
    Sret,
    /// DeiT / PiT: patch convolution, lead tokens, classification from the lead tokens.
    Vit(VitConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: &'static str,
    pub arch: Arch,
    pub image_size: usize,
    /// Channels after the first stem convolution (`out_channels / 2`).
    pub stem_mid: usize,
    pub stages: Vec<StageConfig>,
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

/// The names accepted by `--model`.
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
    pub fn by_name(name: &str) -> Result<Self> {
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
                    known: MODEL_NAMES.join(", "),
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
            };
            (vit, vec![block(192, 3, 12)])
        } else {
            let vit = VitConfig {
                patch: 16,
                stride: 8,
                distilled,
                merging: LeadMerging::SplitOff,
                pos_on_lead: false,
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

    /// The transformer-with-lead-tokens parameters, `None` for SReT.
    pub fn vit(&self) -> Option<&VitConfig> {
        match &self.arch {
            Arch::Vit(v) => Some(v),
            Arch::Sret => None,
        }
    }

    /// Tokens in front of the patch tokens that are never merged (class, distillation).
    pub fn lead(&self) -> usize {
        self.vit().map_or(0, VitConfig::lead)
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
    pub fn tokens(&self, stage: usize) -> usize {
        self.grid_side(stage) * self.grid_side(stage)
    }
    /// Total `Transformer_Block` executions over all stages (20 for every published variant).
    pub fn total_executions(&self) -> usize {
        self.stages.iter().map(|s| s.depth).sum()
    }
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
    fn unknown_model_is_an_error() {
        let e = ModelConfig::by_name("sret_xl").unwrap_err().to_string();
        assert!(e.contains("sret_xl") && e.contains("sret_t_distill"), "{e}");
    }
}
