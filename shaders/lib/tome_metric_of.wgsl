// ToMe's matching metric of one token, shared by tome_metric.wgsl and both matchers, alone or
// inside the attention (appended to each by src/kernels/catalogue.rs): its keys averaged over
// the heads, then L2-normalised. Reads the kernel's `p` (dim, heads), `HEAD_DIM` and `qkv`
// through qkv_at() (shaders/lib/qkv_scalar.wgsl or qkv_vec4.wgsl); `t` is the token's index in
// the batch (image * n + position).

fn metric_of(t: u32) -> array<f32, HEAD_DIM> {
    let kbase = t * 3u * p.dim + p.dim;
    var m: array<f32, HEAD_DIM>;
    var norm2 = 0.0;
    let inv_heads = 1.0 / f32(p.heads);
    for (var d = 0u; d < HEAD_DIM; d++) {
        var s = 0.0;
        for (var h = 0u; h < p.heads; h++) {
            s += qkv_at(kbase + h * HEAD_DIM + d);
        }
        m[d] = s * inv_heads;
        norm2 += m[d] * m[d];
    }
    let inv = 1.0 / sqrt(norm2);
    for (var d = 0u; d < HEAD_DIM; d++) {
        m[d] = m[d] * inv;
    }
    return m;
}
