//! Architecture hyper-parameters of the published SReT variants.
//!
//! The numbers follow the reference implementation (`SReT_T`, `SReT_LT`, `SReT_S` and their
//! `_distill` twins): the distilled models share the architecture and differ only in weights.

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

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: &'static str,
    pub image_size: usize,
    /// Channels after the first stem convolution (`out_channels / 2`).
    pub stem_mid: usize,
    pub stages: Vec<StageConfig>,
    pub num_classes: usize,
}

/// The names accepted by `--model`.
pub const MODEL_NAMES: [&str; 6] = [
    "sret_t",
    "sret_t_distill",
    "sret_lt",
    "sret_lt_distill",
    "sret_s",
    "sret_s_distill",
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
            image_size: 224,
            stem_mid: stages[0].dim / 2,
            stages,
            num_classes: 1000,
        })
    }

    /// Side of the token grid entering each stage: 28, 14, 7 for 224-pixel images.
    pub fn grid_side(&self, stage: usize) -> usize {
        (self.image_size / 8) >> stage
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
    fn unknown_model_is_an_error() {
        let e = ModelConfig::by_name("sret_xl").unwrap_err().to_string();
        assert!(e.contains("sret_xl") && e.contains("sret_t_distill"), "{e}");
    }
}
