//! Tests of the CPU reference: each op against hand-checked values or an independent naive
//! formulation, the matching and merge rules, the unmerge stack, and whole-model smoke tests.

#![allow(clippy::needless_range_loop)]

use super::*;
use crate::model::weights::{Conv, LayerNorm, Linear};
use crate::model::ModelConfig;
use crate::model::{synthetic_images, synthetic_weights};

fn rand_vec(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.symmetric() * scale).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// Dense ops
// ---------------------------------------------------------------------------------------------

#[test]
fn conv2d_single_channel_by_hand() {
    // 3x3 input 1..9, all-ones 3x3 kernel, stride 1, padding 1: each output is the sum of the
    // in-bounds neighbourhood.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let conv = Conv {
        weight: vec![1.0; 9],
        bias: vec![0.5],
        out_channels: 1,
        in_channels: 1,
        kernel: 3,
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let (y, oh, ow) = conv2d(&x, 1, 3, 3, &conv);
    assert_eq!((oh, ow), (3, 3));
    let expected = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0].map(|v: f32| v + 0.5);
    assert_eq!(y, expected);

    // Stride 2 on a 5x5 input, against the textbook formula.
    let x: Vec<f32> = (0..25).map(|v| (v as f32 * 0.37).sin()).collect();
    let k: Vec<f32> = (0..9).map(|v| (v as f32 * 1.3).cos()).collect();
    let conv = Conv {
        weight: k.clone(),
        bias: vec![-0.25],
        stride: 2,
        ..conv
    };
    let (y, oh, ow) = conv2d(&x, 1, 5, 5, &conv);
    assert_eq!((oh, ow), (3, 3));
    for oy in 0..3 {
        for ox in 0..3 {
            let mut s = -0.25f64;
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = (2 * oy + ky, 2 * ox + kx);
                    if (1..=5).contains(&iy) && (1..=5).contains(&ix) {
                        s += x[(iy - 1) * 5 + ix - 1] as f64 * k[ky * 3 + kx] as f64;
                    }
                }
            }
            assert!(
                (y[oy * 3 + ox] as f64 - s).abs() < 1e-6,
                "({oy},{ox}): {} vs {s}",
                y[oy * 3 + ox]
            );
        }
    }
}

/// Naive multi-channel grouped convolution, straight from the definition.
fn naive_conv(x: &[f32], batch: usize, h: usize, w: usize, c: &Conv) -> Vec<f32> {
    let (k, s, p) = (c.kernel, c.stride, c.padding);
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let cpg = c.in_channels / c.groups;
    let opg = c.out_channels / c.groups;
    let mut out = vec![0.0f32; batch * c.out_channels * oh * ow];
    for b in 0..batch {
        for o in 0..c.out_channels {
            let g = o / opg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = c.bias[o] as f64;
                    for ci in 0..cpg {
                        let ic = g * cpg + ci;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as i64 - p as i64;
                                let ix = (ox * s + kx) as i64 - p as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let xv = x[((b * c.in_channels + ic) * h + iy as usize) * w
                                    + ix as usize];
                                let wv = c.weight[((o * cpg + ci) * k + ky) * k + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * c.out_channels + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_grouped_and_batched_match_naive() {
    let mut rng = SplitMix64::new(11);
    // (in, out, k, stride, pad, groups, h, w): dense, grouped, and the depthwise pooling shape.
    for &(cin, cout, k, s, p, g, h, w) in &[
        (
            3usize, 5usize, 3usize, 2usize, 1usize, 1usize, 9usize, 7usize,
        ),
        (4, 6, 3, 1, 1, 2, 5, 6),
        (4, 8, 3, 2, 1, 4, 8, 8),
        (2, 3, 1, 1, 0, 1, 4, 3),
    ] {
        let conv = Conv {
            weight: rand_vec(&mut rng, cout * cin / g * k * k, 1.0),
            bias: rand_vec(&mut rng, cout, 1.0),
            out_channels: cout,
            in_channels: cin,
            kernel: k,
            stride: s,
            padding: p,
            groups: g,
        };
        let x = rand_vec(&mut rng, 2 * cin * h * w, 1.0);
        let (y, oh, ow) = conv2d(&x, 2, h, w, &conv);
        assert_eq!((oh, ow), ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1));
        let d = max_abs_diff(&y, &naive_conv(&x, 2, h, w, &conv));
        assert!(d < 1e-5, "conv {cin}->{cout} g{g}: diff {d}");
    }
}

#[test]
fn relu_clamps_negatives() {
    let mut x = vec![-2.0, -0.0, 0.0, 1.5, f32::NAN];
    relu(&mut x);
    assert_eq!(&x[..4], &[0.0, -0.0, 0.0, 1.5]);
    assert!(x[4].is_nan());
}

#[test]
fn layer_norm_by_hand_and_statistics() {
    let ln = LayerNorm {
        weight: vec![1.0, 2.0, 1.0],
        bias: vec![0.0, 0.0, 0.5],
    };
    let y = layer_norm(&[1.0, 2.0, 3.0, 5.0, 5.0, 5.0], 2, &ln, LN_EPS);
    let z = 1.0 / (2.0f64 / 3.0 + 1e-6).sqrt();
    let expected = [-z, 0.0, z + 0.5, 0.0, 0.0, 0.5];
    for (a, b) in y.iter().zip(expected) {
        assert!((*a as f64 - b).abs() < 1e-6, "{y:?}");
    }

    let mut rng = SplitMix64::new(3);
    let c = 37;
    let x: Vec<f32> = (0..4 * c)
        .map(|i| rng.symmetric() * 5.0 + i as f32 * 0.01)
        .collect();
    let ln = LayerNorm {
        weight: vec![1.0; c],
        bias: vec![0.0; c],
    };
    let y = layer_norm(&x, 4, &ln, LN_EPS);
    for row in y.chunks(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "mean {mean} var {var}"
        );
    }
}

#[test]
fn linear_by_hand() {
    let lin = Linear {
        weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        bias: vec![0.5, -1.0, 0.0],
        out_features: 3,
        in_features: 2,
    };
    let y = linear(&[1.0, 1.0, 2.0, -1.0], 2, &lin);
    assert_eq!(y, vec![3.5, 6.0, 11.0, 0.5, 1.0, 4.0]);
}

#[test]
fn linear_matches_naive_on_odd_sizes() {
    let mut rng = SplitMix64::new(5);
    let (rows, i, o) = (7, 45, 29);
    let lin = Linear {
        weight: rand_vec(&mut rng, o * i, 1.0),
        bias: rand_vec(&mut rng, o, 1.0),
        out_features: o,
        in_features: i,
    };
    let x = rand_vec(&mut rng, rows * i, 1.0);
    let y = linear(&x, rows, &lin);
    for r in 0..rows {
        for j in 0..o {
            let mut s = lin.bias[j] as f64;
            for k in 0..i {
                s += x[r * i + k] as f64 * lin.weight[j * i + k] as f64;
            }
            assert!((y[r * o + j] as f64 - s).abs() < 1e-5);
        }
    }
}

#[test]
fn linear_rows_do_not_depend_on_their_neighbours() {
    // The blocked kernel and the single-row path round identically: any row computed alone
    // equals the same row inside a larger (odd-sized) batch, bit for bit.
    let mut rng = SplitMix64::new(6);
    let (rows, i, o) = (5, 43, 7);
    let lin = Linear {
        weight: rand_vec(&mut rng, o * i, 1.0),
        bias: rand_vec(&mut rng, o, 1.0),
        out_features: o,
        in_features: i,
    };
    let x = rand_vec(&mut rng, rows * i, 3.0);
    let all = linear(&x, rows, &lin);
    for r in 0..rows {
        assert_eq!(
            linear(&x[r * i..(r + 1) * i], 1, &lin),
            all[r * o..(r + 1) * o]
        );
    }
}

#[test]
fn gelu_exact_values() {
    let mut x = vec![1.0f32, 0.0, -1.0, 3.0, -10.0];
    gelu(&mut x);
    assert_eq!(x[0], 0.841_344_746_068_542_9_f64 as f32);
    assert_eq!(x[1], 0.0);
    assert_eq!(x[2], -0.158_655_253_931_457_07_f64 as f32);
    assert_eq!(x[3], 2.995_950_305_905_11_f64 as f32);
    assert!(x[4].abs() < 1e-20);
}

#[test]
fn mean_tokens_by_hand() {
    // batch 2, n 2, c 2
    let y = mean_tokens(&[1.0, 2.0, 3.0, 6.0, -1.0, 0.0, 1.0, 1.0], 2, 2, 2);
    assert_eq!(y, vec![2.0, 4.0, 0.0, 0.5]);
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Dense attention over all `n` tokens of each image, written independently: explicit Q, K, V
/// per head, a full score matrix, a normalised softmax, then `P V`.
fn dense_attention(
    qkv: &[f32],
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    mass: &[f32],
) -> Vec<f32> {
    let hd = dim / heads;
    let mut out = vec![0.0f32; batch * n * dim];
    for b in 0..batch {
        for h in 0..heads {
            let get = |t: usize, which: usize, d: usize| {
                qkv[(b * n + t) * 3 * dim + which * dim + h * hd + d] as f64
            };
            let mut p = vec![vec![0.0f64; n]; n];
            for i in 0..n {
                for j in 0..n {
                    let s: f64 = (0..hd).map(|d| get(i, 0, d) * get(j, 1, d)).sum();
                    p[i][j] = s / (hd as f64).sqrt() + (mass[b * n + j] as f64).ln();
                }
                let m = p[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = p[i].iter().map(|v| (v - m).exp()).sum();
                for j in 0..n {
                    p[i][j] = (p[i][j] - m).exp() / z;
                }
            }
            for i in 0..n {
                for d in 0..hd {
                    let v: f64 = (0..n).map(|j| p[i][j] * get(j, 2, d)).sum();
                    out[(b * n + i) * dim + h * hd + d] = v as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_one_group_equals_dense_softmax() {
    let mut rng = SplitMix64::new(21);
    let (batch, n, dim, heads) = (2, 9, 12, 3);
    let qkv = rand_vec(&mut rng, batch * n * 3 * dim, 1.5);
    let mass: Vec<f32> = (0..batch * n).map(|_| 1.0 + rng.below(4) as f32).collect();
    let got = grouped_attention(&qkv, batch, n, dim, heads, 1, None, &mass);
    let want = dense_attention(&qkv, batch, n, dim, heads, &mass);
    assert!(max_abs_diff(&got, &want) < 1e-6);

    // With unit mass the log term vanishes.
    let ones = vec![1.0; batch * n];
    let got = grouped_attention(&qkv, batch, n, dim, heads, 1, None, &ones);
    assert!(max_abs_diff(&got, &dense_attention(&qkv, batch, n, dim, heads, &ones)) < 1e-6);
}

#[test]
fn attention_groups_are_independent_consecutive_blocks() {
    let mut rng = SplitMix64::new(22);
    let (n, dim, heads, groups) = (12, 8, 2, 3);
    let qkv = rand_vec(&mut rng, n * 3 * dim, 1.0);
    let mass: Vec<f32> = (0..n).map(|_| 1.0 + rng.below(3) as f32).collect();
    let got = grouped_attention(&qkv, 1, n, dim, heads, groups, None, &mass);
    let per = n / groups;
    for g in 0..groups {
        let sub_qkv = &qkv[g * per * 3 * dim..(g + 1) * per * 3 * dim];
        let want = dense_attention(sub_qkv, 1, per, dim, heads, &mass[g * per..(g + 1) * per]);
        assert!(max_abs_diff(&got[g * per * dim..(g + 1) * per * dim], &want) < 1e-6);
    }
}

#[test]
fn attention_with_perm_equals_explicit_permutation() {
    let mut rng = SplitMix64::new(23);
    let (batch, n, dim, heads, groups) = (2, 16, 8, 2, 4);
    let qkv = rand_vec(&mut rng, batch * n * 3 * dim, 1.0);
    let mass: Vec<f32> = (0..batch * n).map(|_| 1.0 + rng.below(5) as f32).collect();
    let perm = rng.permutation(n);
    let got = grouped_attention(&qkv, batch, n, dim, heads, groups, Some(&perm), &mass);

    // Permute explicitly (position j <- token perm[j]), attend unpermuted, then scatter back.
    let row = 3 * dim;
    let mut qkv_p = vec![0.0f32; qkv.len()];
    let mut mass_p = vec![0.0f32; mass.len()];
    for b in 0..batch {
        for j in 0..n {
            let t = perm[j] as usize;
            qkv_p[(b * n + j) * row..(b * n + j + 1) * row]
                .copy_from_slice(&qkv[(b * n + t) * row..(b * n + t + 1) * row]);
            mass_p[b * n + j] = mass[b * n + t];
        }
    }
    let out_p = grouped_attention(&qkv_p, batch, n, dim, heads, groups, None, &mass_p);
    let mut want = vec![0.0f32; out_p.len()];
    for b in 0..batch {
        for j in 0..n {
            let t = perm[j] as usize;
            want[(b * n + t) * dim..(b * n + t + 1) * dim]
                .copy_from_slice(&out_p[(b * n + j) * dim..(b * n + j + 1) * dim]);
        }
    }
    assert_eq!(got, want);
    // And the permutation matters.
    let plain = grouped_attention(&qkv, batch, n, dim, heads, groups, None, &mass);
    assert!(max_abs_diff(&got, &plain) > 1e-3);
}

#[test]
fn attention_mass_two_equals_duplicated_token() {
    let mut rng = SplitMix64::new(24);
    let (n, dim, heads) = (5, 6, 2);
    let qkv = rand_vec(&mut rng, n * 3 * dim, 1.0);
    let mut mass = vec![1.0f32; n];
    mass[2] = 2.0;
    let got = grouped_attention(&qkv, 1, n, dim, heads, 1, None, &mass);

    let mut dup = qkv.clone();
    dup.extend_from_slice(&qkv[2 * 3 * dim..3 * 3 * dim]);
    let want = grouped_attention(&dup, 1, n + 1, dim, heads, 1, None, &[1.0; 6]);
    assert!(max_abs_diff(&got, &want[..n * dim]) < 1e-6);
}

#[test]
fn head_mean_keys_by_hand() {
    // n = 1, dim = 4, heads = 2: k = [1, 2, 3, 6] -> mean of [1, 2] and [3, 6].
    let qkv = [9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 6.0, 7.0, 7.0, 7.0, 7.0];
    assert_eq!(head_mean_keys(&qkv, 1, 1, 4, 2), vec![2.0, 4.0]);
}

// ---------------------------------------------------------------------------------------------
// Matching and merging
// ---------------------------------------------------------------------------------------------

#[test]
fn matching_tie_breaks() {
    // n = 5: A = positions 0, 2, 4; B = positions 1, 3 (identical rows: argmax picks b = 0).
    // A rows: (0,1) -> cos 0; (2,0) and (1,0) -> cos 1 exactly, a tie broken by lower A.
    let metric = [0.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    let m = bipartite_matching(&metric, 5, 2);
    assert_eq!(m.dst, vec![0, 0, 0]);
    assert_eq!(m.row_max, vec![0.0, 1.0, 1.0]);
    assert_eq!(m.rank, vec![2, 0, 1]);

    // A genuine argmax: (1,1) is closer to (1,2) than to (1,0).
    let metric = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0];
    let m = bipartite_matching(&metric, 4, 2);
    assert_eq!(m.dst, vec![1, 1]);
    assert!((m.row_max[0] as f64 - 3.0 / 10f64.sqrt()).abs() < 1e-6);
    assert_eq!(m.row_max[0], m.row_max[1]);
    assert_eq!(m.rank, vec![0, 1]);
}

#[test]
fn matching_matches_brute_force() {
    let mut rng = SplitMix64::new(31);
    for &(n, hd) in &[(2usize, 3usize), (7, 4), (40, 16), (51, 32)] {
        let metric = rand_vec(&mut rng, n * hd, 1.0);
        let m = bipartite_matching(&metric, n, hd);
        let (na, nb) = (n.div_ceil(2), n / 2);
        assert_eq!((m.rank.len(), m.dst.len(), m.row_max.len()), (na, na, na));
        let norm = |t: usize| -> Vec<f64> {
            let r = &metric[t * hd..(t + 1) * hd];
            let l = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            r.iter().map(|&v| v as f64 / l).collect()
        };
        let mut best = vec![];
        for a in 0..na {
            let ua = norm(2 * a);
            let sims: Vec<f64> = (0..nb)
                .map(|b| norm(2 * b + 1).iter().zip(&ua).map(|(x, y)| x * y).sum())
                .collect();
            let (bi, bv) = sims
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
            assert_eq!(m.dst[a] as usize, bi);
            assert!((m.row_max[a] as f64 - bv).abs() < 1e-6);
            best.push(bv);
        }
        // Ranks: descending row maxima.
        let mut by_rank = vec![0usize; na];
        for a in 0..na {
            by_rank[m.rank[a] as usize] = a;
        }
        for w in by_rank.windows(2) {
            assert!(
                m.row_max[w[0]] > m.row_max[w[1]]
                    || (m.row_max[w[0]] == m.row_max[w[1]] && w[0] < w[1])
            );
        }
    }
}

#[test]
fn merge_by_hand() {
    // Matching of the tie-break test: ranks [2, 0, 1], all dst 0; n = 5, r = 1.
    let m = Matching {
        rank: vec![2, 0, 1],
        dst: vec![0, 0, 0],
        row_max: vec![0.0, 1.0, 1.0],
    };
    let x = [10.0, 1.0, 20.0, 2.0, 30.0, 3.0, 40.0, 4.0, 50.0, 5.0];
    let mass = [1.0, 3.0, 1.0, 1.0, 2.0];
    let (xn, mn, map) = merge(&x, &mass, 5, 2, 1, &m);
    // Slots: a2 (rank 1) -> 0, a0 (rank 2) -> 1, b0 -> 2 (absorbs a1), b1 -> 3.
    assert_eq!(map, vec![1, 2, 2, 3, 0]);
    assert_eq!(mn, vec![2.0, 1.0, 4.0, 1.0]);
    let merged = |p: f64, q: f64| ((p * 3.0 + q * 1.0) / 4.0) as f32;
    assert_eq!(
        xn,
        vec![
            50.0,
            5.0,
            10.0,
            1.0,
            merged(20.0, 30.0),
            merged(2.0, 3.0),
            40.0,
            4.0
        ]
    );
}

#[test]
fn merge_conserves_mass_and_weighted_sum() {
    let mut rng = SplitMix64::new(41);
    let (n, c, hd) = (37, 5, 6);
    let mut x = rand_vec(&mut rng, n * c, 2.0);
    let mut mass = vec![1.0f32; n];
    let mut len = n;
    for r in [18usize, 6, 3] {
        let metric = rand_vec(&mut rng, len * hd, 1.0);
        let m = bipartite_matching(&metric, len, hd);
        let before: Vec<f64> = (0..c)
            .map(|ch| {
                (0..len)
                    .map(|t| x[t * c + ch] as f64 * mass[t] as f64)
                    .sum()
            })
            .collect();
        let (xn, mn, map) = merge(&x, &mass, len, c, r, &m);
        assert_eq!(map.len(), len);
        len -= r;
        assert_eq!((xn.len(), mn.len()), (len * c, len));
        assert!(map.iter().all(|&s| (s as usize) < len));
        assert_eq!(mn.iter().map(|&v| v as f64).sum::<f64>(), n as f64);
        for ch in 0..c {
            let after: f64 = (0..len).map(|t| xn[t * c + ch] as f64 * mn[t] as f64).sum();
            assert!(
                (after - before[ch]).abs() < 1e-4,
                "channel {ch}: {after} vs {}",
                before[ch]
            );
        }
        x = xn;
        mass = mn;
    }
}

/// One step of the reference's `unmerge`: `x` has `n_before - r` rows laid out as
/// `[unmerged A in rank order | B in order]`; the output has `n_before` rows with
/// out[odd] = B, out[2 * unm] = unm, out[2 * src] = B[dst].
fn replay_unmerge(x: &[f32], c: usize, n_before: usize, r: usize, m: &Matching) -> Vec<f32> {
    let na = n_before.div_ceil(2);
    let nb = n_before / 2;
    let mut edge = vec![0usize; na];
    for a in 0..na {
        edge[m.rank[a] as usize] = a;
    }
    let (src_idx, unm_idx) = edge.split_at(r);
    let unm_len = na - r;
    assert_eq!(x.len(), (unm_len + nb) * c);
    let (unm, dst) = x.split_at(unm_len * c);
    let mut out = vec![f32::NAN; n_before * c];
    for b in 0..nb {
        out[(2 * b + 1) * c..(2 * b + 2) * c].copy_from_slice(&dst[b * c..(b + 1) * c]);
    }
    for (j, &a) in unm_idx.iter().enumerate() {
        out[2 * a * c..(2 * a + 1) * c].copy_from_slice(&unm[j * c..(j + 1) * c]);
    }
    for &a in src_idx {
        let d = m.dst[a] as usize;
        out[2 * a * c..(2 * a + 1) * c].copy_from_slice(&dst[d * c..(d + 1) * c]);
    }
    out
}

#[test]
fn unmerge_stack_equals_composed_map() {
    let mut rng = SplitMix64::new(51);
    for trial in 0..4 {
        let (n0, c, hd) = (50 + trial, 3, 4);
        let mut x = rand_vec(&mut rng, n0 * c, 1.0);
        let mut mass = vec![1.0f32; n0];
        let mut n = n0;
        let mut map: Vec<u32> = (0..n0 as u32).collect();
        let mut stack = Vec::new();
        for r in [10usize, 0, 15, 7, 3] {
            if r == 0 {
                continue; // executions without a merge push an identity unmerge
            }
            let metric = rand_vec(&mut rng, n * hd, 1.0);
            let m = bipartite_matching(&metric, n, hd);
            let (xn, mn, slot_map) = merge(&x, &mass, n, c, r, &m);
            // One step: unmerge(x)[pos] = x[slot_map[pos]].
            let step = replay_unmerge(&xn, c, n, r, &m);
            for pos in 0..n {
                let s = slot_map[pos] as usize;
                assert_eq!(&step[pos * c..(pos + 1) * c], &xn[s * c..(s + 1) * c]);
            }
            for slot in map.iter_mut() {
                *slot = slot_map[*slot as usize];
            }
            stack.push((n, r, m));
            x = xn;
            mass = mn;
            n -= r;
        }
        // Pretend the later layers changed the features: restore arbitrary final features.
        let final_x = rand_vec(&mut rng, n * c, 1.0);
        let mut replayed = final_x.clone();
        for (n_before, r, m) in stack.iter().rev() {
            replayed = replay_unmerge(&replayed, c, *n_before, *r, m);
        }
        let mut composed = vec![0.0f32; n0 * c];
        for (t, &s) in map.iter().enumerate() {
            let s = s as usize;
            composed[t * c..(t + 1) * c].copy_from_slice(&final_x[s * c..(s + 1) * c]);
        }
        assert_eq!(replayed, composed);
        // The final masses count the original tokens behind each slot.
        for (s, &m) in mass.iter().enumerate() {
            assert_eq!(m as usize, map.iter().filter(|&&v| v as usize == s).count());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic weights and the whole model
// ---------------------------------------------------------------------------------------------

#[test]
fn synthetic_weights_are_deterministic_and_shaped() {
    let cfg = ModelConfig::by_name("sret_t").unwrap();
    let a = synthetic_weights(&cfg, 1);
    assert_eq!(a, synthetic_weights(&cfg, 1));
    assert_ne!(a.head.weight, synthetic_weights(&cfg, 2).head.weight);
    assert_eq!(a.stem[0].weight.len(), cfg.stem_mid * 27);
    assert_eq!(a.pos_embed.len(), 64 * 28 * 28);
    for (s, st) in cfg.stages.iter().enumerate() {
        let sw = &a.stages[s];
        assert_eq!(sw.blocks.len(), st.recursive_num);
        assert_eq!(sw.non_projs.len(), st.depth);
        assert_eq!(sw.blocks[0].qkv.weight.len(), 3 * st.dim * st.dim);
        assert_eq!(sw.blocks[0].fc1.out_features, st.mlp_hidden);
        assert_eq!(sw.non_projs[0].fc1.out_features, st.np_hidden);
        assert_eq!(sw.pool.is_some(), s + 1 < cfg.stages.len());
    }
    let pool = a.stages[0].pool.as_ref().unwrap();
    assert_eq!(
        (pool.in_channels, pool.out_channels, pool.groups),
        (64, 128, 64)
    );
    assert_eq!(a.head.out_features, 1000);
}

/// Random permutations for every permuted execution of a trajectory.
fn perms_for(cfg: &ModelConfig, safe_r: &[Vec<usize>], seed: u64) -> Vec<Vec<Option<Vec<u32>>>> {
    let mut rng = SplitMix64::new(seed);
    cfg.stages
        .iter()
        .enumerate()
        .map(|(s, st)| {
            let mut n = cfg.tokens(s);
            (0..st.depth)
                .map(|e| {
                    let p = st.permutes(e).then(|| rng.permutation(n));
                    n -= safe_r[s][e];
                    p
                })
                .collect()
        })
        .collect()
}

fn std_dev(v: &[f32]) -> f64 {
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn whole_model_smoke_sret_t_with_merging() {
    let cfg = ModelConfig::by_name("sret_t").unwrap();
    let w = synthetic_weights(&cfg, 7);
    let images = synthetic_images(&cfg, 2, 8);
    let safe_r = vec![vec![16; 4], vec![12; 10], vec![10, 10, 10, 9, 5, 2]];
    let perms = perms_for(&cfg, &safe_r, 9);
    assert!(perms[0][1].as_ref().is_some_and(|p| p.len() == 768));
    assert!(perms[0][3].as_ref().is_some_and(|p| p.len() == 736));
    let spec = ReferenceSpec {
        safe_r: &safe_r,
        perms: &perms,
        forced: None,
    };

    let out = forward(&cfg, &w, &images, 2, &spec);
    assert_eq!(out.logits.len(), 2000);
    assert!(out.logits.iter().all(|v| v.is_finite()));
    let final_n = [720usize, 76, 3];
    for (s, st) in cfg.stages.iter().enumerate() {
        let tokens = cfg.tokens(s);
        let mut n = tokens;
        let mut last_mass = None;
        for e in 0..st.depth {
            let r = safe_r[s][e];
            assert_eq!(out.matchings[s][e].len(), 2);
            for m in &out.matchings[s][e] {
                assert_eq!(m.rank.len(), n.div_ceil(2));
            }
            n -= r;
            assert_eq!(out.masses[s][e].len(), 2 * n);
            for img in out.masses[s][e].chunks(n) {
                assert!(img.iter().all(|&v| v >= 1.0 && v.fract() == 0.0));
                assert_eq!(img.iter().sum::<f32>() as usize, tokens);
            }
            last_mass = Some(&out.masses[s][e]);
        }
        assert_eq!(n, final_n[s]);
        // The stage map is onto the final slots and agrees with the final masses.
        let map = &out.stage_maps[s];
        assert_eq!(map.len(), 2 * tokens);
        let masses = last_mass.unwrap();
        for i in 0..2 {
            let mut count = vec![0usize; n];
            for &slot in &map[i * tokens..(i + 1) * tokens] {
                count[slot as usize] += 1;
            }
            let mass_i = &masses[i * n..(i + 1) * n];
            assert!(count.iter().zip(mass_i).all(|(&k, &m)| k == m as usize));
        }
    }

    // Non-degenerate logits: spread across classes and different across images.
    let (l0, l1) = out.logits.split_at(1000);
    let spread = std_dev(l0).min(std_dev(l1));
    assert!(spread > 0.1, "logit spread {spread}");
    let diff: Vec<f32> = l0.iter().zip(l1).map(|(a, b)| a - b).collect();
    assert!(
        std_dev(&diff) > 0.05 * spread,
        "images give nearly equal logits"
    );

    // Images are independent: image 1 alone gives the same result as in the batch.
    let per = 3 * 224 * 224;
    let t = std::time::Instant::now();
    let single = forward(&cfg, &w, &images[per..], 1, &spec);
    eprintln!(
        "sret_t batch-1 reference forward with merging: {:?}",
        t.elapsed()
    );
    assert_eq!(single.logits, l1);
    for s in 0..3 {
        let tokens = cfg.tokens(s);
        assert_eq!(single.stage_maps[s], out.stage_maps[s][tokens..]);
        for e in 0..cfg.stages[s].depth {
            assert_eq!(single.matchings[s][e][0], out.matchings[s][e][1]);
        }
    }

    // Forcing the computed decisions reproduces the run exactly; forcing a different one is obeyed.
    let mut forced: Vec<Vec<Vec<Option<Matching>>>> = out
        .matchings
        .iter()
        .map(|st| {
            st.iter()
                .map(|ex| ex.iter().cloned().map(Some).collect())
                .collect()
        })
        .collect();
    let again = forward(
        &cfg,
        &w,
        &images,
        2,
        &ReferenceSpec {
            forced: Some(&forced),
            ..spec
        },
    );
    assert_eq!(again.logits, out.logits);
    let m = forced[2][0][0].as_mut().unwrap();
    let (i, j) = (
        m.rank.iter().position(|&r| r == 0).unwrap(),
        m.rank.iter().position(|&r| r == 20).unwrap(),
    );
    m.rank.swap(i, j);
    let changed = forward(
        &cfg,
        &w,
        &images,
        2,
        &ReferenceSpec {
            forced: Some(&forced),
            ..spec
        },
    );
    assert_eq!(
        changed.matchings[2][0][0],
        *forced[2][0][0].as_ref().unwrap()
    );
    assert_eq!(changed.logits[1000..], out.logits[1000..]);
    assert_ne!(changed.logits[..1000], out.logits[..1000]);
}

#[test]
fn whole_model_without_merging_has_identity_maps() {
    let cfg = ModelConfig::by_name("sret_t").unwrap();
    let w = synthetic_weights(&cfg, 17);
    let images = synthetic_images(&cfg, 1, 18);
    let safe_r: Vec<Vec<usize>> = cfg.stages.iter().map(|st| vec![0; st.depth]).collect();
    let perms = perms_for(&cfg, &safe_r, 19);
    let out = forward(
        &cfg,
        &w,
        &images,
        1,
        &ReferenceSpec {
            safe_r: &safe_r,
            perms: &perms,
            forced: None,
        },
    );
    assert!(out.logits.iter().all(|v| v.is_finite()));
    for s in 0..3 {
        assert_eq!(
            out.stage_maps[s],
            (0..cfg.tokens(s) as u32).collect::<Vec<_>>()
        );
        assert!(out.matchings[s].iter().all(|m| m.is_empty()));
        assert!(out.masses[s].iter().all(|m| m.is_empty()));
    }
}

/// Timing of the largest variant; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_sret_s_batch3() {
    let cfg = ModelConfig::by_name("sret_s").unwrap();
    let w = synthetic_weights(&cfg, 1);
    let images = synthetic_images(&cfg, 3, 2);
    let safe_r = vec![
        vec![200, 0, 0, 0],
        vec![48, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![12, 0, 0, 0, 0, 0],
    ];
    let perms = perms_for(&cfg, &safe_r, 3);
    let spec = ReferenceSpec {
        safe_r: &safe_r,
        perms: &perms,
        forced: None,
    };
    let t = std::time::Instant::now();
    let out = forward(&cfg, &w, &images, 3, &spec);
    eprintln!("sret_s batch-3 reference forward: {:?}", t.elapsed());
    assert!(out.logits.iter().all(|v| v.is_finite()));
    let safe_r: Vec<Vec<usize>> = cfg.stages.iter().map(|st| vec![0; st.depth]).collect();
    let perms = perms_for(&cfg, &safe_r, 3);
    let t = std::time::Instant::now();
    forward(
        &cfg,
        &w,
        &images[..3 * 224 * 224],
        1,
        &ReferenceSpec {
            safe_r: &safe_r,
            perms: &perms,
            forced: None,
        },
    );
    eprintln!(
        "sret_s batch-1 reference forward without merging: {:?}",
        t.elapsed()
    );
}
