//! Sliced group self-attention with ToMe's proportional attention, and the ToMe matching metric.

use super::ops::dot;

/// Panics unless `perm` is a permutation of `0..n`.
pub(crate) fn check_permutation(perm: &[u32], n: usize) {
    assert_eq!(
        perm.len(),
        n,
        "permutation has length {}, expected {n}",
        perm.len()
    );
    let mut seen = vec![false; n];
    for &p in perm {
        let p = p as usize;
        assert!(
            p < n && !seen[p],
            "not a permutation of 0..{n}: index {p} out of range or repeated"
        );
        seen[p] = true;
    }
}

/// Sliced group attention with proportional attention.
///
/// `qkv` is `[batch, n, 3 * dim]`, each token row being `q | k | v`, each of those split into
/// `heads` consecutive slices of `head_dim = dim / heads`. The sequence is first permuted
/// (permuted position `j` holds original token `perm[j]`), then cut into `groups` equal
/// consecutive groups; every token attends to the keys of its own group only, with
/// `score = q.k / sqrt(head_dim) + ln(mass[key])` and a softmax over the group's keys.
/// `mass` is `[batch, n]` in original order. The result is `[batch, n, dim]` in original token
/// order, head `h` in channels `h * head_dim ..`, before the output projection.
#[allow(clippy::too_many_arguments)]
pub fn grouped_attention(
    qkv: &[f32],
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    groups: usize,
    perm: Option<&[u32]>,
    mass: &[f32],
) -> Vec<f32> {
    assert!(
        heads > 0 && dim.is_multiple_of(heads),
        "attention: {heads} heads do not divide dim {dim}"
    );
    assert!(
        groups > 0 && n.is_multiple_of(groups),
        "attention: {groups} groups do not divide {n} tokens"
    );
    assert_eq!(
        qkv.len(),
        batch * n * 3 * dim,
        "attention: qkv is not [{batch}, {n}, {}]",
        3 * dim
    );
    assert_eq!(
        mass.len(),
        batch * n,
        "attention: mass is not [{batch}, {n}]"
    );
    if let Some(p) = perm {
        check_permutation(p, n);
    }
    let hd = dim / heads;
    let per = n / groups;
    let scale = 1.0 / (hd as f64).sqrt();
    let stride = 3 * dim;

    let mut out = vec![0.0f32; batch * n * dim];
    let mut tokens = vec![0usize; per];
    let mut log_mass = vec![0.0f64; per];
    let mut weights = vec![0.0f64; per];
    let mut acc = vec![0.0f64; hd];
    for b in 0..batch {
        let qkv_b = &qkv[b * n * stride..(b + 1) * n * stride];
        let mass_b = &mass[b * n..(b + 1) * n];
        let out_b = &mut out[b * n * dim..(b + 1) * n * dim];
        for g in 0..groups {
            for j in 0..per {
                let pos = g * per + j;
                let t = perm.map_or(pos, |p| p[pos] as usize);
                tokens[j] = t;
                log_mass[j] = (mass_b[t] as f64).ln();
            }
            for h in 0..heads {
                let (q_off, k_off, v_off) = (h * hd, dim + h * hd, 2 * dim + h * hd);
                for &ti in &tokens {
                    let q = &qkv_b[ti * stride + q_off..ti * stride + q_off + hd];
                    let mut max = f64::NEG_INFINITY;
                    for j in 0..per {
                        let tj = tokens[j];
                        let k = &qkv_b[tj * stride + k_off..tj * stride + k_off + hd];
                        let s = dot(q, k) * scale + log_mass[j];
                        weights[j] = s;
                        if s > max {
                            max = s;
                        }
                    }
                    let mut sum = 0.0f64;
                    for wj in weights.iter_mut() {
                        *wj = (*wj - max).exp();
                        sum += *wj;
                    }
                    acc.fill(0.0);
                    for j in 0..per {
                        let tj = tokens[j];
                        let v = &qkv_b[tj * stride + v_off..tj * stride + v_off + hd];
                        let wj = weights[j];
                        for (a, &vd) in acc.iter_mut().zip(v) {
                            *a += wj * vd as f64;
                        }
                    }
                    let o = &mut out_b[ti * dim + h * hd..ti * dim + (h + 1) * hd];
                    for (od, a) in o.iter_mut().zip(&acc) {
                        *od = (*a / sum) as f32;
                    }
                }
            }
        }
    }
    out
}

/// The ToMe matching metric: each token's key averaged over heads, `[batch, n, head_dim]`,
/// not normalised. Token order is that of `qkv` (original order).
pub fn head_mean_keys(qkv: &[f32], batch: usize, n: usize, dim: usize, heads: usize) -> Vec<f32> {
    assert!(
        heads > 0 && dim.is_multiple_of(heads),
        "head_mean_keys: {heads} heads do not divide dim {dim}"
    );
    assert_eq!(
        qkv.len(),
        batch * n * 3 * dim,
        "head_mean_keys: qkv is not [{batch}, {n}, {}]",
        3 * dim
    );
    let hd = dim / heads;
    let mut out = vec![0.0f32; batch * n * hd];
    let mut acc = vec![0.0f64; hd];
    for t in 0..batch * n {
        let keys = &qkv[t * 3 * dim + dim..t * 3 * dim + 2 * dim];
        acc.fill(0.0);
        for head in keys.chunks_exact(hd) {
            for (a, &v) in acc.iter_mut().zip(head) {
                *a += v as f64;
            }
        }
        for (o, a) in out[t * hd..(t + 1) * hd].iter_mut().zip(&acc) {
            *o = (*a / heads as f64) as f32;
        }
    }
    out
}
