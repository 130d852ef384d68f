//! Dense building blocks: convolution, activations, LayerNorm, linear layers and pooling.
//!
//! Every op reads and writes f32 and accumulates in f64, rounding once per output element.

use crate::model::weights::{Conv, LayerNorm, Linear};

/// Dot product of two equally long f32 slices, accumulated in f64.
///
/// Products of two f32 values are exact in f64. Element `k` goes to partial sum `k % 4` (the
/// last `len % 4` elements to a separate tail), and the partial sums are combined as
/// `((p0 + p1) + (p2 + p3)) + tail`: the f64 kernels below use the very same order, so a
/// result never depends on which kernel computed it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let mut tail = 0.0f64;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += *x as f64 * *y as f64;
    }
    combine(acc, tail)
}

#[inline(always)]
fn combine(acc: [f64; 4], tail: f64) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
}

/// [`dot`] on operands already widened to f64: the same products, summed in the same order.
#[inline]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f64;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    combine(acc, tail)
}

/// The four dot products `[a0.b0, a0.b1, a1.b0, a1.b1]`, each bit-identical to [`dot64`];
/// sharing the loads makes it markedly faster.
#[inline]
fn dot64_2x2(a0: &[f64], a1: &[f64], b0: &[f64], b1: &[f64]) -> [f64; 4] {
    let len = a0.len();
    let (a0, a1, b0, b1) = (&a0[..len], &a1[..len], &b0[..len], &b1[..len]);
    let (mut s00, mut s01, mut s10, mut s11) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let split = len - len % 4;
    for k in (0..split).step_by(4) {
        let (x0, x1, y0, y1) = (&a0[k..k + 4], &a1[k..k + 4], &b0[k..k + 4], &b1[k..k + 4]);
        for l in 0..4 {
            s00[l] += x0[l] * y0[l];
        }
        for l in 0..4 {
            s01[l] += x0[l] * y1[l];
        }
        for l in 0..4 {
            s10[l] += x1[l] * y0[l];
        }
        for l in 0..4 {
            s11[l] += x1[l] * y1[l];
        }
    }
    let acc = [s00, s01, s10, s11];
    let mut tail = [0.0f64; 4];
    for k in split..len {
        tail[0] += a0[k] * b0[k];
        tail[1] += a0[k] * b1[k];
        tail[2] += a1[k] * b0[k];
        tail[3] += a1[k] * b1[k];
    }
    [
        combine(acc[0], tail[0]),
        combine(acc[1], tail[1]),
        combine(acc[2], tail[2]),
        combine(acc[3], tail[3]),
    ]
}

/// `out[i, j] = bias[j] + sum_k a[i, k] * b[j, k]` for `a: [rows, k]`, `b: [cols, k]`,
/// `out: [rows, cols]`; f64 accumulation, one rounding per element. Each element is exactly
/// `(dot(a_i, b_j) + bias_j) as f32`, whatever the blocking.
pub(crate) fn matmul_bt(
    a: &[f32],
    rows: usize,
    k: usize,
    b: &[f32],
    cols: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(
        a.len(),
        rows * k,
        "matmul_bt: left operand is not [{rows}, {k}]"
    );
    assert_eq!(
        b.len(),
        cols * k,
        "matmul_bt: right operand is not [{cols}, {k}]"
    );
    assert_eq!(
        out.len(),
        rows * cols,
        "matmul_bt: output is not [{rows}, {cols}]"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), cols, "matmul_bt: bias is not [{cols}]");
    }
    if rows == 0 || cols == 0 {
        return;
    }
    // Widen once up front (exact), so the inner loops are plain f64 multiply-adds.
    let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let bias_of = |j: usize| bias.map_or(0.0, |bb| bb[j] as f64);
    let a_row = |i: usize| &a[i * k..(i + 1) * k];
    let b_row = |j: usize| &b[j * k..(j + 1) * k];
    // Keep a block of `b` rows resident in cache while every row of `a` passes over it.
    const TILE_BYTES: usize = 128 * 1024;
    let block = (TILE_BYTES / (8 * k.max(1))).clamp(2, cols.max(2));
    let mut j0 = 0;
    while j0 < cols {
        let j1 = (j0 + block).min(cols);
        let mut i = 0;
        while i + 2 <= rows {
            let (a0, a1) = (a_row(i), a_row(i + 1));
            let mut j = j0;
            while j + 2 <= j1 {
                let [s00, s01, s10, s11] = dot64_2x2(a0, a1, b_row(j), b_row(j + 1));
                out[i * cols + j] = (s00 + bias_of(j)) as f32;
                out[i * cols + j + 1] = (s01 + bias_of(j + 1)) as f32;
                out[(i + 1) * cols + j] = (s10 + bias_of(j)) as f32;
                out[(i + 1) * cols + j + 1] = (s11 + bias_of(j + 1)) as f32;
                j += 2;
            }
            if j < j1 {
                out[i * cols + j] = (dot64(a0, b_row(j)) + bias_of(j)) as f32;
                out[(i + 1) * cols + j] = (dot64(a1, b_row(j)) + bias_of(j)) as f32;
            }
            i += 2;
        }
        if i < rows {
            for j in j0..j1 {
                out[i * cols + j] = (dot64(a_row(i), b_row(j)) + bias_of(j)) as f32;
            }
        }
        j0 = j1;
    }
}

/// NCHW convolution with zero padding and `nn.Conv2d` group semantics, plus bias, no activation.
/// `x` is `[batch, in_channels, h, w]`; returns (`[batch, out_channels, oh, ow]`, oh, ow).
pub fn conv2d(
    x: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    conv: &Conv,
) -> (Vec<f32>, usize, usize) {
    let (cin, cout, k, s, p, g) = (
        conv.in_channels,
        conv.out_channels,
        conv.kernel,
        conv.stride,
        conv.padding,
        conv.groups,
    );
    assert!(k > 0 && s > 0, "conv2d: kernel and stride must be positive");
    assert!(
        g > 0 && cin.is_multiple_of(g) && cout.is_multiple_of(g),
        "conv2d: groups {g} must divide in {cin} and out {cout} channels"
    );
    assert_eq!(
        x.len(),
        batch * cin * h * w,
        "conv2d: input is not [{batch}, {cin}, {h}, {w}]"
    );
    let cpg = cin / g;
    let opg = cout / g;
    let kk = k * k;
    assert_eq!(
        conv.weight.len(),
        cout * cpg * kk,
        "conv2d: weight is not [{cout}, {cpg}, {k}, {k}]"
    );
    assert_eq!(conv.bias.len(), cout, "conv2d: bias is not [{cout}]");
    assert!(
        h + 2 * p >= k && w + 2 * p >= k,
        "conv2d: kernel larger than padded input"
    );
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let ohw = oh * ow;
    let patch = cpg * kk;

    let mut out = vec![0.0f32; batch * cout * ohw];
    // im2col buffer for one group of one image: [ohw, cpg * k * k], channel-major like the weight.
    let mut col = vec![0.0f32; ohw * patch];
    let mut tmp = vec![0.0f32; ohw * opg];
    for b in 0..batch {
        let img = &x[b * cin * h * w..(b + 1) * cin * h * w];
        for gi in 0..g {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = &mut col[(oy * ow + ox) * patch..(oy * ow + ox + 1) * patch];
                    for c in 0..cpg {
                        let plane = &img[(gi * cpg + c) * h * w..(gi * cpg + c + 1) * h * w];
                        for ky in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            for kx in 0..k {
                                let ix = (ox * s + kx) as isize - p as isize;
                                let inside =
                                    iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                                row[c * kk + ky * k + kx] = if inside {
                                    plane[iy as usize * w + ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
            let wg = &conv.weight[gi * opg * patch..(gi + 1) * opg * patch];
            let bg = &conv.bias[gi * opg..(gi + 1) * opg];
            matmul_bt(&col, ohw, patch, wg, opg, Some(bg), &mut tmp);
            for o in 0..opg {
                let dst =
                    &mut out[(b * cout + gi * opg + o) * ohw..(b * cout + gi * opg + o + 1) * ohw];
                for (pix, d) in dst.iter_mut().enumerate() {
                    *d = tmp[pix * opg + o];
                }
            }
        }
    }
    (out, oh, ow)
}

/// In-place `max(x, 0)` (NaN stays NaN, as in torch).
pub fn relu(x: &mut [f32]) {
    for v in x.iter_mut() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// LayerNorm over the last dimension of `x: [rows, c]` (c = weight length), biased variance.
pub fn layer_norm(x: &[f32], rows: usize, ln: &LayerNorm, eps: f32) -> Vec<f32> {
    let c = ln.weight.len();
    assert_eq!(
        ln.bias.len(),
        c,
        "layer_norm: weight and bias lengths differ"
    );
    assert_eq!(x.len(), rows * c, "layer_norm: input is not [{rows}, {c}]");
    let mut out = vec![0.0f32; rows * c];
    if c == 0 {
        return out;
    }
    for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr
            .iter()
            .map(|&v| {
                let d = v as f64 - mean;
                d * d
            })
            .sum::<f64>()
            / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            or[i] = ((xr[i] as f64 - mean) * inv * ln.weight[i] as f64 + ln.bias[i] as f64) as f32;
        }
    }
    out
}

/// `y = x W^T + b` for `x: [rows, in]`, `W: [out, in]`; returns `[rows, out]`.
pub fn linear(x: &[f32], rows: usize, lin: &Linear) -> Vec<f32> {
    let (i, o) = (lin.in_features, lin.out_features);
    assert_eq!(lin.weight.len(), o * i, "linear: weight is not [{o}, {i}]");
    assert_eq!(lin.bias.len(), o, "linear: bias is not [{o}]");
    assert_eq!(x.len(), rows * i, "linear: input is not [{rows}, {i}]");
    let mut out = vec![0.0f32; rows * o];
    matmul_bt(x, rows, i, &lin.weight, o, Some(&lin.bias), &mut out);
    out
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, evaluated in f64.
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        let t = *v as f64;
        *v = (0.5 * t * (1.0 + libm::erf(t * std::f64::consts::FRAC_1_SQRT_2))) as f32;
    }
}

/// Global average over tokens: `[batch, n, c] -> [batch, c]`.
pub fn mean_tokens(x: &[f32], batch: usize, n: usize, c: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * n * c,
        "mean_tokens: input is not [{batch}, {n}, {c}]"
    );
    let mut out = vec![0.0f32; batch * c];
    let mut acc = vec![0.0f64; c];
    for b in 0..batch {
        acc.fill(0.0);
        for t in 0..n {
            let row = &x[(b * n + t) * c..(b * n + t + 1) * c];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        for (o, a) in out[b * c..(b + 1) * c].iter_mut().zip(&acc) {
            *o = (*a / n as f64) as f32;
        }
    }
    out
}

/// The twin of `kernels::tokens::record_copy`: copies `count` tokens of `c` channels of every
/// image from `x` (at token `in_off` of `in_tokens` per image, or of one shared sequence when
/// `in_tokens` is 0) into `out` (at token `out_off` of `out_tokens` per image).
#[allow(clippy::too_many_arguments)]
pub fn copy_tokens(
    x: &[f32],
    out: &mut [f32],
    batch: usize,
    count: usize,
    c: usize,
    in_tokens: usize,
    in_off: usize,
    out_tokens: usize,
    out_off: usize,
) {
    for b in 0..batch {
        for t in 0..count {
            let src = (b * in_tokens + in_off + t) * c;
            let dst = (b * out_tokens + out_off + t) * c;
            out[dst..dst + c].copy_from_slice(&x[src..src + c]);
        }
    }
}
