//! [`Logits`]: the logits of one forward on the host.

/// The logits of one forward, `[batch, classes]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    values: Vec<f32>,
    batch: usize,
    classes: usize,
}

impl Logits {
    /// Logits from row-major `values` of `[batch, classes]`. Panics when the length is not
    /// `batch * classes`.
    pub fn new(values: Vec<f32>, batch: usize, classes: usize) -> Logits {
        assert_eq!(
            values.len(),
            batch * classes,
            "logits of [{batch}, {classes}]"
        );
        Logits {
            values,
            batch,
            classes,
        }
    }
    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Logits per image (1000 for ImageNet-1k).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// All logits, row-major `[batch, classes]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }
    /// All logits, row-major `[batch, classes]`, without copying.
    pub fn into_vec(self) -> Vec<f32> {
        self.values
    }
    /// The logits of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }
    /// The highest-scoring class of image `i` (the first one on ties).
    pub fn argmax(&self, i: usize) -> usize {
        self.top_k(i, 1)[0].0
    }
    /// The `k` highest-scoring classes of image `i` with their softmax probabilities, best
    /// first (ties: lower class first).
    pub fn top_k(&self, i: usize, k: usize) -> Vec<(usize, f32)> {
        let row = self.image(i);
        let p = self.probabilities(i);
        let mut order: Vec<usize> = (0..self.classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.into_iter().take(k).map(|c| (c, p[c])).collect()
    }
    /// Softmax of image `i`'s logits.
    pub fn probabilities(&self, i: usize) -> Vec<f32> {
        let row = self.image(i);
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| (x / s) as f32).collect()
    }
}
