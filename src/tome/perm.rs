//! Reproducible token permutations for the recursive passes.
//!
//! The reference draws `torch.randperm(N)` afresh at every permuted pass, so no two runs agree.
//! We draw them once per plan from a seeded generator (SplitMix64 + Fisher-Yates), the same for
//! every image of the batch, and report them in the trace, so a run can be repeated exactly and
//! replayed in the reference code.

pub use crate::rng::SplitMix64;

/// Default seed of the recursive passes' token permutations.
pub const DEFAULT_SEED: u64 = 0;

/// A uniformly random permutation of `0..n`, torch semantics: `x_perm = x[perm]`.
pub fn random_permutation(rng: &mut SplitMix64, n: usize) -> Vec<u32> {
    rng.permutation(n)
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
