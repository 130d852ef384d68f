//! Which tokens of a sequence bipartite soft matching splits into its two sets.
//!
//! SReT merges whole sequences: set A is the even positions, set B the odd ones, and the
//! unmerged A tokens come first in order of similarity. Models with lead tokens (class,
//! distillation) keep them in front and never merge them; what differs is how the rest is
//! split and ordered ([`crate::model::LeadMerging`]):
//!
//! * ToMe's timm patch (DeiT) splits the *whole* sequence by parity, so the patch tokens in A
//!   are those at even global positions, and it keeps the unmerged A tokens in their original
//!   order (`unm_idx.sort()`);
//! * the paper's `PiT_ToMe.py` splits the patch tokens alone (A = even patch positions) and
//!   orders them like SReT.
//!
//! Both reduce to: `lead` tokens stay in slots `0..lead`; among the `m = n - lead` tokens after
//! them, window position `j` is in A when `j % 2 == a_odd`; the unmerged A tokens follow in rank
//! order or, when `sorted`, in position order; then every B token in order. This is also what
//! ToMe's `-inf` scores produce: the class token (A index 0) never becomes a source and the
//! distillation token (B index 0) never a destination, and ToMe places them first.

use crate::model::{Arch, LeadMerging, ModelConfig};

/// How bipartite soft matching splits a sequence into sets A and B and orders what it keeps
/// (see the module docs); [`Split::default`] is SReT's plain split with no lead tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Tokens in front that are never merged.
    pub lead: usize,
    /// Set A is the odd window positions (ToMe with a class token but no distillation token).
    pub a_odd: bool,
    /// Unmerged A tokens keep their original order instead of the similarity order.
    pub sorted: bool,
}

impl Split {
    /// How `cfg` splits its sequences.
    pub fn of(cfg: &ModelConfig) -> Split {
        match &cfg.arch {
            Arch::Sret => Split::default(),
            Arch::Vit(v) => match v.merging {
                LeadMerging::InSequence => Split {
                    lead: v.lead(),
                    a_odd: v.lead() % 2 == 1,
                    sorted: true,
                },
                LeadMerging::SplitOff => Split {
                    lead: v.lead(),
                    a_odd: false,
                    sorted: false,
                },
            },
        }
    }

    /// Tokens of an `n`-token sequence that take part in matching.
    pub fn window(&self, n: usize) -> usize {
        n.saturating_sub(self.lead)
    }
    /// Size of set A.
    pub fn na(&self, n: usize) -> usize {
        (self.window(n) + 1 - self.a_odd as usize) / 2
    }
    /// Size of set B.
    pub fn nb(&self, n: usize) -> usize {
        self.window(n) - self.na(n)
    }
    /// Sequence position of A token `a`.
    pub fn a_pos(&self, a: usize) -> usize {
        self.lead + 2 * a + self.a_odd as usize
    }
    /// Sequence position of B token `b`.
    pub fn b_pos(&self, b: usize) -> usize {
        self.lead + 2 * b + 1 - self.a_odd as usize
    }
    /// The kernels' encoding: `lead`, `a_odd`, `sorted`.
    pub fn params(&self) -> [u32; 3] {
        [self.lead as u32, self.a_odd as u32, self.sorted as u32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_partition_the_window() {
        for lead in 0..3 {
            for a_odd in [false, true] {
                for n in lead + 2..lead + 12 {
                    let s = Split {
                        lead,
                        a_odd,
                        sorted: false,
                    };
                    let mut seen: Vec<usize> = (0..s.na(n)).map(|a| s.a_pos(a)).collect();
                    seen.extend((0..s.nb(n)).map(|b| s.b_pos(b)));
                    seen.sort_unstable();
                    assert_eq!(seen, (lead..n).collect::<Vec<_>>(), "{s:?} n {n}");
                    // A is the even global positions when ToMe splits the whole sequence.
                    if a_odd == (lead % 2 == 1) {
                        assert!((0..s.na(n)).all(|a| s.a_pos(a).is_multiple_of(2)));
                    }
                }
            }
        }
    }

    #[test]
    fn models_split_like_their_reference() {
        let of = |name| Split::of(&ModelConfig::by_name(name).unwrap());
        assert_eq!(of("sret_t"), Split::default());
        let deit = of("deit_tiny");
        assert_eq!((deit.lead, deit.a_odd, deit.sorted), (1, true, true));
        let deit_d = of("deit_tiny_distill");
        assert_eq!((deit_d.lead, deit_d.a_odd, deit_d.sorted), (2, false, true));
        let pit = of("pit_ti_distill");
        assert_eq!((pit.lead, pit.a_odd, pit.sorted), (2, false, false));
    }
}
