//! ToMe bipartite soft matching and the mass-weighted merge, for one image at a time.
//!
//! Tokens at even positions form set A (`a = pos / 2`, `na = ceil(n / 2)` of them), tokens at odd
//! positions set B (`b = (pos - 1) / 2`, `nb = n / 2`). Each A token proposes its most similar B
//! token; the `r` A tokens with the highest similarity are folded into their B partner.

use super::ops::dot;
use crate::tome::Split;
use std::cmp::Ordering;

/// Bipartite soft matching decision for ONE image.
#[derive(Clone, Debug, PartialEq)]
pub struct Matching {
    /// For each A token: its rank in the order of row maxima, descending (ties: lower A first).
    pub rank: Vec<u32>,
    /// For each A token: the B token of highest cosine similarity (ties: lower B index).
    pub dst: Vec<u32>,
    /// For each A token: that highest cosine similarity.
    pub row_max: Vec<f32>,
}

impl Matching {
    /// Number of A tokens.
    pub fn len(&self) -> usize {
        self.rank.len()
    }
    /// Whether there are no A tokens (nothing was matched).
    pub fn is_empty(&self) -> bool {
        self.rank.is_empty()
    }
}

/// Bipartite soft matching on one image's metric `[n, hd]`.
///
/// Each metric row is divided by its L2 norm (norm accumulated in f64, rounded to f32, division
/// in f32), then cosine similarities A x B are f64 dot products of the normalised rows. The
/// argmax over B keeps the lower B index on exact (f64) ties and stores the maximum rounded to
/// f32 in `row_max`. The ranking sorts A tokens by `row_max` (the stored f32 values)
/// descending, exact ties broken by lower A index, so `rank` is a function of `row_max` alone.
pub fn bipartite_matching(metric: &[f32], n: usize, hd: usize) -> Matching {
    bipartite_matching_split(metric, n, hd, Split::default())
}

/// [`bipartite_matching`] over the sets `split` defines (A token `a` at `split.a_pos(a)`, B
/// token `b` at `split.b_pos(b)`); lead tokens take no part.
pub fn bipartite_matching_split(metric: &[f32], n: usize, hd: usize, split: Split) -> Matching {
    assert_eq!(
        metric.len(),
        n * hd,
        "bipartite_matching: metric is not [{n}, {hd}]"
    );
    assert!(
        split.na(n) >= 1 && split.nb(n) >= 1,
        "bipartite_matching: needs a token in each set, got {n} tokens ({split:?})"
    );
    let na = split.na(n);
    let nb = split.nb(n);

    let mut unit = vec![0.0f32; n * hd];
    for (src, dst) in metric
        .chunks_exact(hd.max(1))
        .zip(unit.chunks_exact_mut(hd.max(1)))
    {
        let norm = dot(src, src).sqrt() as f32;
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s / norm;
        }
    }

    let mut dst = vec![0u32; na];
    let mut row_max = vec![0.0f32; na];
    for a in 0..na {
        let ap = split.a_pos(a);
        let ar = &unit[ap * hd..(ap + 1) * hd];
        let mut best = f64::NEG_INFINITY;
        let mut best_b = 0usize;
        for b in 0..nb {
            let bp = split.b_pos(b);
            let br = &unit[bp * hd..(bp + 1) * hd];
            let s = dot(ar, br);
            if s > best {
                best = s;
                best_b = b;
            }
        }
        dst[a] = best_b as u32;
        row_max[a] = best as f32;
    }

    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let mut order: Vec<usize> = (0..na).collect();
    order.sort_by(|&i, &j| {
        key(row_max[j])
            .partial_cmp(&key(row_max[i]))
            .unwrap_or(Ordering::Equal)
            .then(i.cmp(&j))
    });
    let mut rank = vec![0u32; na];
    for (k, &a) in order.iter().enumerate() {
        rank[a] = k as u32;
    }
    Matching { rank, dst, row_max }
}

/// Where each token of an `n`-token sequence goes when `r` tokens are merged according to `m`:
/// `slot_map[old position] = new slot`.
///
/// Unmerged A tokens take slots `0 .. na - r` in rank order; B token `b` takes slot
/// `na - r + b`; a merged A token maps to its destination B token's slot.
pub fn merge_slot_map(n: usize, r: usize, m: &Matching) -> Vec<u32> {
    merge_slot_map_split(n, r, m, Split::default())
}

/// [`merge_slot_map`] for `split`: lead tokens keep slots `0..lead`, the unmerged A tokens
/// follow (in rank order, or in position order when `split.sorted`), then the B tokens.
pub fn merge_slot_map_split(n: usize, r: usize, m: &Matching, split: Split) -> Vec<u32> {
    let na = split.na(n);
    let nb = split.nb(n);
    assert_eq!(
        m.rank.len(),
        na,
        "matching has {} A tokens, expected {na} for n = {n}",
        m.rank.len()
    );
    assert_eq!(
        m.dst.len(),
        na,
        "matching dst has {} entries, expected {na}",
        m.dst.len()
    );
    assert!(r <= nb, "cannot merge {r} of {n} tokens (at most {nb})");
    let mut seen = vec![false; na];
    for &rank in &m.rank {
        let rank = rank as usize;
        assert!(
            rank < na && !seen[rank],
            "matching ranks are not a permutation of 0..{na}"
        );
        seen[rank] = true;
    }
    assert!(r <= na, "cannot merge {r} of {na} A tokens");
    let lead = split.lead;
    let mut map = vec![0u32; n];
    for (p, slot) in map.iter_mut().enumerate().take(lead) {
        *slot = p as u32;
    }
    let mut kept_before = 0;
    for a in 0..na {
        let rank = m.rank[a] as usize;
        map[split.a_pos(a)] = if rank < r {
            let d = m.dst[a] as usize;
            assert!(d < nb, "dst {d} out of range for {nb} B tokens");
            (lead + na - r + d) as u32
        } else if split.sorted {
            kept_before += 1;
            (lead + kept_before - 1) as u32
        } else {
            (lead + rank - r) as u32
        };
    }
    for b in 0..nb {
        map[split.b_pos(b)] = (lead + na - r + b) as u32;
    }
    map
}

/// Merges `r` tokens of ONE image: `x: [n, c]`, `mass: [n]`.
///
/// Returns (`x_new: [n - r, c]`, `mass_new: [n - r]`, `slot_map: [n]`), see [`merge_slot_map`]
/// for the layout. Every new slot is the mass-weighted mean of the tokens mapped to it
/// (accumulated in f64; an unmerged token is reproduced exactly) and its mass is their sum.
pub fn merge(
    x: &[f32],
    mass: &[f32],
    n: usize,
    c: usize,
    r: usize,
    m: &Matching,
) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    merge_split(x, mass, n, c, r, m, Split::default())
}

/// [`merge`] for `split` (see [`merge_slot_map_split`]).
pub fn merge_split(
    x: &[f32],
    mass: &[f32],
    n: usize,
    c: usize,
    r: usize,
    m: &Matching,
    split: Split,
) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    assert_eq!(x.len(), n * c, "merge: x is not [{n}, {c}]");
    assert_eq!(mass.len(), n, "merge: mass is not [{n}]");
    let slot_map = merge_slot_map_split(n, r, m, split);
    let n_new = n - r;
    let mut acc = vec![0.0f64; n_new * c];
    let mut acc_mass = vec![0.0f64; n_new];
    for t in 0..n {
        let s = slot_map[t] as usize;
        let w = mass[t] as f64;
        acc_mass[s] += w;
        let row = &x[t * c..(t + 1) * c];
        for (a, &v) in acc[s * c..(s + 1) * c].iter_mut().zip(row) {
            *a += v as f64 * w;
        }
    }
    let mut x_new = vec![0.0f32; n_new * c];
    for s in 0..n_new {
        let total = acc_mass[s];
        for (o, a) in x_new[s * c..(s + 1) * c]
            .iter_mut()
            .zip(&acc[s * c..(s + 1) * c])
        {
            *o = (*a / total) as f32;
        }
    }
    let mass_new = acc_mass.iter().map(|&v| v as f32).collect();
    (x_new, mass_new, slot_map)
}
