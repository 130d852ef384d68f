// Sliced group self-attention with proportional attention, fused (see attention.wgsl), for head
// sizes that are a multiple of 4: q, k, v are read as vec4 and the running output stays in
// vec4 registers. Same parameters and bindings as attention.wgsl, with qkv viewed as vec4.

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
@group(0) @binding(1) var<storage, read> qkv: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> mass: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<elem>>;

const WG: u32 = 64u;
const HEAD_DIM: u32 = 32u;
const HD4: u32 = HEAD_DIM / 4u;

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
    let j = i % p.n;
    let h = (i / p.n) % p.heads;
    let b = i / (p.n * p.heads);
    let ng = p.n / p.groups;
    let g0 = (j / ng) * ng;
    // Row strides in vec4 units.
    let row3 = 3u * p.dim / 4u;
    let d4 = p.dim / 4u;
    let qbase = (b * p.n + token(j)) * row3 + h * HD4;

    var q: array<vec4<f32>, HD4>;
    for (var d = 0u; d < HD4; d++) {
        q[d] = vec4<f32>(qkv[qbase + d]) * p.scale;
    }
    var acc: array<vec4<f32>, HD4>;
    var mx = -3.4e38;
    var l = 0.0;
    for (var jj = g0; jj < g0 + ng; jj++) {
        let u = token(jj);
        let kbase = (b * p.n + u) * row3 + d4 + h * HD4;
        var s4 = vec4<f32>(0.0);
        for (var d = 0u; d < HD4; d++) {
            s4 += q[d] * vec4<f32>(qkv[kbase + d]);
        }
        var s = s4.x + s4.y + s4.z + s4.w;
        if ((p.flags & 2u) != 0u) {
            s += log(mass[b * p.n + u]);
        }
        let m_new = max(mx, s);
        let correction = exp(mx - m_new);
        let e = exp(s - m_new);
        l = l * correction + e;
        let vbase = kbase + d4;
        for (var d = 0u; d < HD4; d++) {
            acc[d] = acc[d] * correction + e * vec4<f32>(qkv[vbase + d]);
        }
        mx = m_new;
    }
    let obase = (b * p.n + token(j)) * d4 + h * HD4;
    let inv = 1.0 / l;
    for (var d = 0u; d < HD4; d++) {
        out[obase + d] = vec4<elem>(acc[d] * inv);
    }
}
