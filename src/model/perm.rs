//! Reproducible token permutations for the recursive passes.
//!
//! The reference draws `torch.randperm(N)` afresh at every permuted pass, so no two runs agree.
//! We draw them once per plan from a seeded generator (SplitMix64 + Fisher-Yates), the same for
//! every image of the batch, and report them in the trace, so a run can be repeated exactly and
//! replayed in the reference code.

/// SplitMix64: tiny, fast, and good enough to shuffle token indices.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for n < 2^24).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as u128 * n as u128 >> 53) as usize
    }
}

/// A uniformly random permutation of `0..n`, torch semantics: `x_perm = x[perm]`.
pub fn random_permutation(rng: &mut SplitMix64, n: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        p.swap(i, j);
    }
    p
}

/// Permutations for every permuted execution: `perms[stage][exec]`, drawn in execution order
/// with the length the sequence has at that execution (`tokens_in[stage][exec]`).
pub fn draw_permutations(
    seed: u64,
    permutes: &[Vec<bool>],
    tokens_in: &[Vec<usize>],
) -> Vec<Vec<Option<Vec<u32>>>> {
    let mut rng = SplitMix64::new(seed);
    permutes
        .iter()
        .zip(tokens_in)
        .map(|(stage, lens)| {
            stage
                .iter()
                .zip(lens)
                .map(|(&p, &n)| p.then(|| random_permutation(&mut rng, n)))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_reproducible() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let p = random_permutation(&mut a, 784);
        assert_eq!(p, random_permutation(&mut b, 784));
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..784).collect::<Vec<u32>>());
        assert_ne!(p, (0..784).collect::<Vec<u32>>());
        let q = random_permutation(&mut a, 784);
        assert_ne!(p, q, "successive draws differ");
    }

    #[test]
    fn draws_follow_the_schedule() {
        let perms = draw_permutations(1, &[vec![false, true], vec![false]], &[vec![8, 6], vec![4]]);
        assert!(perms[0][0].is_none() && perms[1][0].is_none());
        assert_eq!(perms[0][1].as_ref().unwrap().len(), 6);
    }
}
