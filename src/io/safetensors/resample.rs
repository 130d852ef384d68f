//! Position embeddings at another image size, resampled as timm's `resample_abs_pos_embed`
//! does: the lead tokens' rows kept, the patch grid interpolated bicubically with PyTorch's
//! `F.interpolate(mode='bicubic', align_corners=False, antialias=False)` (Keys' cubic
//! convolution with `A = -0.75`, source index `(dst + 0.5) * in / out - 0.5`, taps clamped to
//! the border), in f32 and in PyTorch's order of operations. The outer taps' weights
//! (`((A x - 5A) x + 8A) x - 4A` near `x = 2`) cancel terms of size 3, so their last bits depend
//! on how the compiler contracts multiply-adds: the result agrees with PyTorch's to a few 1e-6
//! (`tests/weights_infer.rs`, against timm 1.0.31 on torch 2.15), not bit for bit.
//! Written by hand: the one image crate we use resamples `u8`/`f32` pixels with its own
//! filters and order, not PyTorch's.

/// PyTorch's cubic convolution constant.
const A: f32 = -0.75;

/// Keys' kernel for `|x| <= 1`.
fn near(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

/// Keys' kernel for `1 < |x| < 2`.
fn far(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The four tap weights at fractional offset `t` (PyTorch's `get_cubic_upsample_coefficients`).
fn taps(t: f32) -> [f32; 4] {
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Per output index: the first of the four source taps (may be out of range: clamped on use)
/// and their weights.
fn axis(n_in: usize, n_out: usize) -> Vec<(isize, [f32; 4])> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let base = real.floor();
            (base as isize - 1, taps(real - base))
        })
        .collect()
}

/// `pos [lead + g_in², dim]` (row-major, token by token) to `[lead + g_out², dim]`.
pub fn resample_pos_embed(
    pos: &[f32],
    lead: usize,
    dim: usize,
    g_in: usize,
    g_out: usize,
) -> Vec<f32> {
    assert_eq!(pos.len(), (lead + g_in * g_in) * dim, "pos_embed size");
    let mut out = Vec::with_capacity((lead + g_out * g_out) * dim);
    out.extend_from_slice(&pos[..lead * dim]);
    let grid = &pos[lead * dim..];
    let at = |y: isize, x: isize, c: usize| {
        let clamp = |v: isize| v.clamp(0, g_in as isize - 1) as usize;
        grid[(clamp(y) * g_in + clamp(x)) * dim + c]
    };
    let ax = axis(g_in, g_out);
    for &(y0, wy) in &ax {
        for &(x0, wx) in &ax {
            for c in 0..dim {
                // Rows first, then the column of row results (as PyTorch's cubic_interp1d).
                let mut rows = [0.0f32; 4];
                for (j, r) in rows.iter_mut().enumerate() {
                    let y = y0 + j as isize;
                    *r = at(y, x0, c) * wx[0]
                        + at(y, x0 + 1, c) * wx[1]
                        + at(y, x0 + 2, c) * wx[2]
                        + at(y, x0 + 3, c) * wx[3];
                }
                out.push(rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3]);
            }
        }
    }
    out
}

/// The grid side of a `[1, lead + g², dim]` position embedding with `tokens = lead + g²`.
pub fn grid_side(tokens: usize, lead: usize) -> Option<usize> {
    let n = tokens.checked_sub(lead)?;
    let g = (n as f64).sqrt().round() as usize;
    (g > 0 && g * g == n).then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_constants_stay_constant() {
        let pos: Vec<f32> = (0..(1 + 9) * 2).map(|i| i as f32 * 0.25 - 1.0).collect();
        assert_eq!(resample_pos_embed(&pos, 1, 2, 3, 3), pos);
        let flat = vec![0.5f32; (2 + 16) * 3];
        for g in [2, 3, 5, 7] {
            let r = resample_pos_embed(&flat, 2, 3, 4, g);
            assert_eq!(r.len(), (2 + g * g) * 3);
            assert!(r.iter().all(|v| (v - 0.5).abs() < 1e-6), "{g}: {r:?}");
        }
        assert_eq!(grid_side(197, 1), Some(14));
        assert_eq!(grid_side(198, 2), Some(14));
        assert_eq!(grid_side(198, 1), None);
    }
}
