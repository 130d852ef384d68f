// LayerNorm statistics as the linear kernels hand them on (src/kernels/norm.rs, `RowStats`): a
// row of c values is cut into parts of `width` consecutive columns (the last part may be
// narrower), and each part keeps (its mean, the sum of squared deviations from that mean). A
// kernel that writes rows writes the parts it stores (its `part_out` binding); ln_stats.wgsl
// writes whole rows as one part. The linear layer that normalises the rows as it loads them
// combines a row's parts (row_stats(): Chan, Golub and LeVeque's update over all parts at once,
// no cancellation; with one part the arithmetic of a two-pass LayerNorm) into
// (mean, 1 / sqrt(var + eps)), biased variance as torch. Appended to the linear kernels by
// src/kernels/catalogue.rs; uses the kernel's `p` (p.k the row length, p.norm the part width,
// p.eps) and its `stats` binding.

fn row_stats(row: u32) -> vec2<f32> {
    let width = p.norm;
    let parts = (p.k + width - 1u) / width;
    let base = row * parts;
    var mean = stats[base].x;
    if (parts > 1u) {
        var sum = 0.0;
        for (var i = 0u; i < parts; i++) {
            sum += f32(min(width, p.k - i * width)) * stats[base + i].x;
        }
        mean = sum / f32(p.k);
    }
    var m2 = 0.0;
    for (var i = 0u; i < parts; i++) {
        let s = stats[base + i];
        let d = s.x - mean;
        m2 += s.y + f32(min(width, p.k - i * width)) * d * d;
    }
    return vec2<f32>(mean, inverseSqrt(m2 / f32(p.k) + p.eps));
}
