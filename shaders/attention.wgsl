// Sliced group self-attention with ToMe's proportional attention, fused: scores, log-mass bias,
// an online softmax and the product with V, without ever storing the scores.
// qkv is [batch, n, 3 * dim] in original token order (q | k | v, heads of HEAD_DIM inside each).
// The sequence is permuted through `perm` (permuted position j holds token perm[j]) and cut into
// `groups` contiguous groups; the result for a token is written at that token's original row,
// which is the reference's inverse permutation without a copy.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    dim: u32,
    heads: u32,
    groups: u32,
    // bit 0: read tokens through perm; bit 1: add log(mass[key]) to the scores.
    flags: u32,
    scale: f32,
    // The subgroup attention's matching (attention_sg.wgsl); unused here.
    lead: u32,
    a_odd: u32,
    attention_wgs: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<elem>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> mass: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<elem>;

const WG: u32 = 64u;
const HEAD_DIM: u32 = 32u;

fn token(j: u32) -> u32 {
    if ((p.flags & 1u) != 0u) {
        return perm[j];
    }
    return j;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.heads * p.n) {
        return;
    }
    // Consecutive invocations are consecutive queries of one (image, head).
    let j = i % p.n;
    let h = (i / p.n) % p.heads;
    let b = i / (p.n * p.heads);
    let ng = p.n / p.groups;
    let g0 = (j / ng) * ng;
    let row3 = 3u * p.dim;
    let qbase = (b * p.n + token(j)) * row3 + h * HEAD_DIM;

    var q: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        q[d] = f32(qkv[qbase + d]) * p.scale;
    }
    var acc: array<f32, HEAD_DIM>;
    var mx = -3.4e38;
    var l = 0.0;
    for (var jj = g0; jj < g0 + ng; jj++) {
        let u = token(jj);
        let kbase = (b * p.n + u) * row3 + p.dim + h * HEAD_DIM;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s += q[d] * f32(qkv[kbase + d]);
        }
        if ((p.flags & 2u) != 0u) {
            s += log(mass[b * p.n + u]);
        }
        let m_new = max(mx, s);
        let correction = exp(mx - m_new);
        let e = exp(s - m_new);
        l = l * correction + e;
        let vbase = kbase + p.dim;
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] = acc[d] * correction + e * f32(qkv[vbase + d]);
        }
        mx = m_new;
    }
    let obase = (b * p.n + token(j)) * p.dim + h * HEAD_DIM;
    let inv = 1.0 / l;
    for (var d = 0u; d < HEAD_DIM; d++) {
        out[obase + d] = elem(acc[d] * inv);
    }
}
