//! Per-image metrics and their sums.
//!
//! * **top-1 / top-5** against a label: the label is the first index of the largest logit
//!   (top-1), or fewer than 5 classes have a logit strictly larger than the label's (top-5).
//! * **agreement**: the top-1 class equals the uncompressed model's top-1 class on the same image.
//! * **KL**: `KL(p_ref || p) = sum_c p_ref(c) (log p_ref(c) - log p(c))` of the softmaxes, with the
//!   uncompressed model as the reference `p_ref` (how much information about the reference
//!   prediction the compressed one loses), in nats, averaged over images. Log-softmaxes are
//!   computed in `f64` from the `f32` logits and rounded to `f32`, the same way for both models, so
//!   identical logits give exactly 0.
//!
//! [`QualityStats`] holds plain counts and sums, so that the stats of disjoint shards of a data set
//! add up exactly (see `merge-results`).

use serde::{Deserialize, Serialize};

/// The log-softmax of `logits`, computed in `f64`, stored as `f32`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// First index of the largest value (as `torch.argmax` on CPU).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Number of classes whose logit is strictly larger than class `label`'s.
pub fn rank_of(logits: &[f32], label: usize) -> usize {
    let l = logits[label];
    logits.iter().filter(|&&x| x > l).count()
}

/// `KL(p_ref || p)` in nats from two log-softmaxes.
pub fn kl_divergence(ref_logp: &[f32], logp: &[f32]) -> f64 {
    ref_logp
        .iter()
        .zip(logp)
        .map(|(&a, &b)| {
            let a = a as f64;
            if a == f64::NEG_INFINITY {
                0.0
            } else {
                a.exp() * (a - b as f64)
            }
        })
        .sum()
}

/// What the uncompressed model said about one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// Its top-1 class.
    pub top1: usize,
    /// Its log-softmax over classes.
    pub logp: Vec<f32>,
}

impl Reference {
    /// The top-1 class and log-softmax of one image's logits.
    pub fn from_logits(logits: &[f32]) -> Reference {
        Reference {
            top1: argmax(logits),
            logp: log_softmax(logits),
        }
    }
}

/// Counts and sums over images; shards add up with [`QualityStats::merge`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityStats {
    /// Images evaluated.
    pub images: u64,
    /// Images with a label.
    pub labelled: u64,
    /// Labelled images whose top-1 class is the label.
    pub top1_correct: u64,
    /// Labelled images whose label is among the top-5 classes.
    pub top5_correct: u64,
    /// Images compared with the uncompressed model.
    pub compared: u64,
    /// Compared images whose top-1 equals the uncompressed model's.
    pub agree: u64,
    /// Sum over compared images of `KL(p_ref || p)` in nats.
    pub kl_sum: f64,
    /// Images whose logits were not all finite (counted wrong and disagreeing; no KL).
    pub nonfinite: u64,
}

impl QualityStats {
    /// Account for one image's `logits`.
    pub fn add(&mut self, logits: &[f32], label: Option<usize>, reference: Option<&Reference>) {
        self.images += 1;
        let finite = logits.iter().all(|x| x.is_finite());
        if !finite {
            self.nonfinite += 1;
        }
        if let Some(l) = label {
            self.labelled += 1;
            if finite && l < logits.len() {
                if argmax(logits) == l {
                    self.top1_correct += 1;
                }
                if rank_of(logits, l) < 5 {
                    self.top5_correct += 1;
                }
            }
        }
        if let Some(r) = reference {
            self.compared += 1;
            if finite {
                if argmax(logits) == r.top1 {
                    self.agree += 1;
                }
                self.kl_sum += kl_divergence(&r.logp, &log_softmax(logits));
            }
        }
    }

    /// Checks that the counts are consistent (each part no larger than its whole, the KL sum
    /// finite and not negative); `Err` says which.
    pub fn validate(&self) -> Result<(), String> {
        let le = [
            ("labelled", self.labelled, "images", self.images),
            ("top5_correct", self.top5_correct, "labelled", self.labelled),
            (
                "top1_correct",
                self.top1_correct,
                "top5_correct",
                self.top5_correct,
            ),
            ("compared", self.compared, "images", self.images),
            ("agree", self.agree, "compared", self.compared),
            ("nonfinite", self.nonfinite, "images", self.images),
        ];
        for (a, x, b, y) in le {
            if x > y {
                return Err(format!("{a} = {x} is more than {b} = {y}"));
            }
        }
        // Rounding can make a sum of tiny KLs a hair negative; anything more is not a KL.
        if !self.kl_sum.is_finite() || self.kl_sum < -1e-9 * (self.compared as f64).max(1.0) {
            return Err(format!(
                "kl_sum = {} is not a finite sum of KL divergences (>= 0)",
                self.kl_sum
            ));
        }
        Ok(())
    }

    /// [`QualityStats::merge`] with every sum checked for overflow.
    pub fn checked_merge(&mut self, o: &QualityStats) -> Result<(), String> {
        let mut r = self.clone();
        let pairs: [(&str, &mut u64, u64); 7] = [
            ("images", &mut r.images, o.images),
            ("labelled", &mut r.labelled, o.labelled),
            ("top1_correct", &mut r.top1_correct, o.top1_correct),
            ("top5_correct", &mut r.top5_correct, o.top5_correct),
            ("compared", &mut r.compared, o.compared),
            ("agree", &mut r.agree, o.agree),
            ("nonfinite", &mut r.nonfinite, o.nonfinite),
        ];
        for (name, a, b) in pairs {
            *a = a
                .checked_add(b)
                .ok_or_else(|| format!("the sum of {name} over the shards overflows"))?;
        }
        r.kl_sum += o.kl_sum;
        r.validate()?;
        *self = r;
        Ok(())
    }

    /// Add the counts of `o` (another shard or batch) to these.
    pub fn merge(&mut self, o: &QualityStats) {
        self.images += o.images;
        self.labelled += o.labelled;
        self.top1_correct += o.top1_correct;
        self.top5_correct += o.top5_correct;
        self.compared += o.compared;
        self.agree += o.agree;
        self.kl_sum += o.kl_sum;
        self.nonfinite += o.nonfinite;
    }

    fn pct(n: u64, d: u64) -> Option<f64> {
        (d > 0).then(|| 100.0 * n as f64 / d as f64)
    }
    /// Top-1 accuracy in percent of labelled images.
    pub fn top1(&self) -> Option<f64> {
        Self::pct(self.top1_correct, self.labelled)
    }
    /// Top-5 accuracy in percent of labelled images (`None` without labels).
    pub fn top5(&self) -> Option<f64> {
        Self::pct(self.top5_correct, self.labelled)
    }
    /// Top-1 agreement with the uncompressed model, in percent.
    pub fn agreement(&self) -> Option<f64> {
        Self::pct(self.agree, self.compared)
    }
    /// Mean `KL(p_ref || p)` in nats.
    pub fn mean_kl(&self) -> Option<f64> {
        let n = self.compared - self.nonfinite.min(self.compared);
        (n > 0).then(|| self.kl_sum / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_and_ties() {
        let l = [0.1f32, 3.0, 2.0, 3.0, -1.0, 0.5, 0.4];
        assert_eq!(argmax(&l), 1);
        assert_eq!(rank_of(&l, 3), 0);
        assert_eq!(rank_of(&l, 6), 4);
        assert_eq!(rank_of(&l, 0), 5);
        let mut s = QualityStats::default();
        s.add(&l, Some(1), None); // top-1 and top-5
        s.add(&l, Some(3), None); // tie with an earlier max: top-5 only
        s.add(&l, Some(6), None); // 5th: top-5
        s.add(&l, Some(0), None); // 6th: neither
        s.add(&l, None, None);
        assert_eq!(
            (s.images, s.labelled, s.top1_correct, s.top5_correct),
            (5, 4, 1, 3)
        );
        assert_eq!(s.top1(), Some(25.0));
        assert_eq!(s.top5(), Some(75.0));
        assert_eq!(s.agreement(), None);
        assert_eq!(s.mean_kl(), None);
    }

    #[test]
    fn kl_against_closed_form() {
        // Two classes: p = softmax([0, 0]) = (1/2, 1/2), q = softmax([ln 3, 0]) = (3/4, 1/4).
        let p = log_softmax(&[0.0, 0.0]);
        let q = log_softmax(&[3f32.ln(), 0.0]);
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-7);
        // KL is not symmetric.
        let back = 0.75 * (0.75f64 / 0.5).ln() + 0.25 * (0.25f64 / 0.5).ln();
        assert!((kl_divergence(&q, &p) - back).abs() < 1e-7);
        // Identical logits give exactly zero; shifting logits changes nothing.
        let a = [1.0f32, -2.0, 0.25, 7.5];
        let b = [11.0f32, 8.0, 10.25, 17.5];
        assert_eq!(kl_divergence(&log_softmax(&a), &log_softmax(&a)), 0.0);
        assert!(kl_divergence(&log_softmax(&a), &log_softmax(&b)).abs() < 1e-6);
        let lp = log_softmax(&a);
        let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn agreement_kl_and_merge() {
        let base = [2.0f32, 1.0, 0.0];
        let r = Reference::from_logits(&base);
        let mut a = QualityStats::default();
        a.add(&base, Some(0), Some(&r));
        a.add(&[0.0, 3.0, 0.0], Some(0), Some(&r));
        assert_eq!((a.compared, a.agree), (2, 1));
        assert_eq!(a.agreement(), Some(50.0));
        let kl2 = kl_divergence(&r.logp, &log_softmax(&[0.0, 3.0, 0.0]));
        assert!((a.mean_kl().unwrap() - kl2 / 2.0).abs() < 1e-12);
        let mut b = QualityStats::default();
        b.add(&[f32::NAN, 0.0, 0.0], Some(0), Some(&r));
        assert_eq!((b.nonfinite, b.agree, b.top1_correct), (1, 0, 0));
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!((m.images, m.compared, m.agree, m.nonfinite), (3, 3, 1, 1));
        // The non-finite image has no KL: the mean stays over the two others.
        assert!((m.mean_kl().unwrap() - kl2 / 2.0).abs() < 1e-12);
    }
}
