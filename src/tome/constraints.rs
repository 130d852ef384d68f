//! The merging constraint of the paper's Eq. 3.
//!
//! A `Transformer_Block` merges `r` tokens between its sliced group attention and its MLP. The
//! merged length `N - r` is the input of the next execution, whose sliced attention splits the
//! sequence into `g1` or `g2` equal groups, so it must be a multiple of `G = lcm(g1, g2)` with at
//! least one token per group; and bipartite soft matching can merge at most half the tokens:
//!
//! ```text
//! (N - r) mod G = 0,   N - r >= G,   r <= floor(N / 2)
//! ```

/// The number of tokens a block actually merges when the schedule asks for `target_r` out of
/// `n` tokens, with `g` the least common multiple of the stage's group counts.
///
/// This is the rule of the reference implementation (`get_safe_r`):
///
/// 1. a target of 0 merges nothing;
/// 2. the merged length is `n - target_r` rounded *down* to a multiple of `g`, but not below `g`,
///    so `r` is the target rounded *up* to the next admissible value (784 tokens, target 10,
///    `g = 8` merges 16);
/// 3. `r` is capped so that at least half the tokens, rounded up to a multiple of `g`, remain:
///    `r <= n - ceil(ceil(n / 2) / g) * g`.
///
/// Any target is accepted, including one larger than `n`. Where the reference would return a
/// negative count (only when `n < g`, which a planned trajectory never reaches) this returns 0;
/// the reference skips merging for any count `<= 0`, so the behaviour is the same.
///
/// Guarantees (tested exhaustively for `n <= 784`, every target up to `n + g`, `g` in 1, 2, 4, 8):
/// * `r <= n / 2` always, and `r == 0` when `target_r == 0`;
/// * when `n` is a multiple of `g` and `n >= g` (every length a trajectory produces):
///   `(n - r) % g == 0` and `n - r >= g`; moreover, among the admissible counts
///   `A = { r' : r' <= n / 2, (n - r') % g == 0 }`, the result is the smallest `r' >= target_r`
///   in `A` when one exists and `max(A)` otherwise (the nearest compliant count, rounding up).
pub fn safe_r(n: usize, target_r: usize, g: usize) -> usize {
    if target_r == 0 || n == 0 {
        return 0;
    }
    let g = g.max(1);
    let length_after = (n.saturating_sub(target_r) / g * g).max(g);
    let rounded = n.saturating_sub(length_after);
    let kept_at_least = (n - n / 2).div_ceil(g) * g;
    let cap = n.saturating_sub(kept_at_least);
    rounded.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: [usize; 4] = [1, 2, 4, 8];

    /// A direct transcription of the rule in signed arithmetic, with the reference's
    /// floor-division semantics, as an independent oracle.
    fn oracle(n: i64, t: i64, g: i64) -> i64 {
        if t == 0 {
            return 0;
        }
        let length_after = ((n - t).div_euclid(g) * g).max(g);
        let r = (n - length_after).max(0);
        let min_len = (n - n / 2 + g - 1).div_euclid(g) * g;
        r.min(n - min_len)
    }

    #[test]
    fn examples() {
        assert_eq!(safe_r(784, 10, 8), 16);
        assert_eq!(safe_r(784, 0, 8), 0);
        assert_eq!(safe_r(196, 10, 4), 12);
        assert_eq!(safe_r(19, 10, 1), 9);
        assert_eq!(safe_r(10, 10, 1), 5);
        assert_eq!(safe_r(5, 10, 1), 2);
        assert_eq!(safe_r(3, 10, 1), 1);
        assert_eq!(safe_r(1, 10, 1), 0);
        assert_eq!(safe_r(784, 78, 8), 80);
        assert_eq!(safe_r(784, 313, 8), 320);
        // The half-cap: 784 / 2 = 392 is itself admissible.
        assert_eq!(safe_r(784, 1000, 8), 392);
        assert_eq!(safe_r(784, usize::MAX, 8), 392);
        // 8 tokens, g = 8: nothing can be merged.
        assert_eq!(safe_r(8, 5, 8), 0);
        // n < g never occurs in a trajectory; the reference would give a negative count.
        assert_eq!(safe_r(3, 1, 8), 0);
        assert_eq!(safe_r(0, 4, 8), 0);
    }

    #[test]
    fn matches_the_reference_rule_everywhere() {
        for g in GROUPS {
            for n in 0..=784usize {
                for t in 0..=n + 2 * g {
                    let want = oracle(n as i64, t as i64, g as i64).max(0) as usize;
                    assert_eq!(safe_r(n, t, g), want, "n={n} t={t} g={g}");
                }
            }
        }
    }

    #[test]
    fn satisfies_eq3_and_is_the_nearest_compliant_count() {
        for g in GROUPS {
            for n in 0..=784usize {
                // The admissible set A (only meaningful for lengths a trajectory can have).
                let admissible: Vec<usize> = (0..=n / 2).filter(|r| (n - r) % g == 0).collect();
                for t in 0..=n + g {
                    let r = safe_r(n, t, g);
                    assert!(r <= n / 2, "n={n} t={t} g={g} r={r}");
                    if t == 0 {
                        assert_eq!(r, 0);
                    }
                    if n % g != 0 || n < g {
                        continue;
                    }
                    assert_eq!((n - r) % g, 0, "n={n} t={t} g={g} r={r}");
                    assert!(n - r >= g, "n={n} t={t} g={g} r={r}");
                    if t > 0 {
                        let want = admissible
                            .iter()
                            .copied()
                            .find(|&a| a >= t)
                            .unwrap_or(*admissible.last().unwrap());
                        assert_eq!(r, want, "n={n} t={t} g={g}");
                    }
                }
            }
        }
    }

    #[test]
    fn monotone_in_the_target() {
        for g in GROUPS {
            for n in (g..=784).step_by(g) {
                let mut prev = 0;
                for t in 0..=n + g {
                    let r = safe_r(n, t, g);
                    assert!(r >= prev, "n={n} t={t} g={g}");
                    prev = r;
                }
            }
        }
    }
}
