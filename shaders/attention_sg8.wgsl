// Sliced group attention with proportional attention, fused, for adapters whose subgroups are
// exactly 8 lanes and heads of 32 (= 8 vec4). Same parameters and bindings as attention.wgsl.
// A workgroup (one subgroup) takes 8 queries of one group of one head: for every key, lane l
// loads only the l-th vec4 of the key and of the value and the lanes exchange them with
// subgroupBroadcast, so each key is read once per 8 queries instead of once per query.

struct Params {
    batch: u32,
    n: u32,
    dim: u32,
    heads: u32,
    groups: u32,
    // bit 0: read tokens through perm; bit 1: add log(mass[key]) to the scores.
    flags: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> mass: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

fn token(j: u32) -> u32 {
    if ((p.flags & 1u) != 0u) {
        return perm[j];
    }
    return j;
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {
    let ng = p.n / p.groups;
    let blocks = (ng + 7u) / 8u;
    let tile = wg.x + wg.y * nwg.x;
    if (tile >= p.batch * p.heads * p.groups * blocks) {
        return;
    }
    let qb = tile % blocks;
    let g = (tile / blocks) % p.groups;
    let h = (tile / (blocks * p.groups)) % p.heads;
    let b = tile / (blocks * p.groups * p.heads);
    let g0 = g * ng;
    let jq = qb * 8u + lane;
    let valid = jq < ng;
    let row3 = 3u * p.dim / 4u;
    let d4 = p.dim / 4u;
    let qtok = token(g0 + min(jq, ng - 1u));
    let qbase = (b * p.n + qtok) * row3 + h * 8u;

    var q: array<vec4<f32>, 8>;
    for (var d = 0u; d < 8u; d++) {
        q[d] = qkv[qbase + d] * p.scale;
    }
    var acc: array<vec4<f32>, 8>;
    var mx = -3.4e38;
    var l = 0.0;
    for (var jj = g0; jj < g0 + ng; jj++) {
        let u = token(jj);
        let kbase = (b * p.n + u) * row3 + d4 + h * 8u;
        let kv = qkv[kbase + lane];
        let vv = qkv[kbase + d4 + lane];
        var s4 = vec4<f32>(0.0);
        s4 += q[0u] * subgroupBroadcast(kv, 0u);
        s4 += q[1u] * subgroupBroadcast(kv, 1u);
        s4 += q[2u] * subgroupBroadcast(kv, 2u);
        s4 += q[3u] * subgroupBroadcast(kv, 3u);
        s4 += q[4u] * subgroupBroadcast(kv, 4u);
        s4 += q[5u] * subgroupBroadcast(kv, 5u);
        s4 += q[6u] * subgroupBroadcast(kv, 6u);
        s4 += q[7u] * subgroupBroadcast(kv, 7u);
        var s = s4.x + s4.y + s4.z + s4.w;
        if ((p.flags & 2u) != 0u) {
            s += log(mass[b * p.n + u]);
        }
        let m_new = max(mx, s);
        let correction = exp(mx - m_new);
        let e = exp(s - m_new);
        l = l * correction + e;
        acc[0u] = acc[0u] * correction + e * subgroupBroadcast(vv, 0u);
        acc[1u] = acc[1u] * correction + e * subgroupBroadcast(vv, 1u);
        acc[2u] = acc[2u] * correction + e * subgroupBroadcast(vv, 2u);
        acc[3u] = acc[3u] * correction + e * subgroupBroadcast(vv, 3u);
        acc[4u] = acc[4u] * correction + e * subgroupBroadcast(vv, 4u);
        acc[5u] = acc[5u] * correction + e * subgroupBroadcast(vv, 5u);
        acc[6u] = acc[6u] * correction + e * subgroupBroadcast(vv, 6u);
        acc[7u] = acc[7u] * correction + e * subgroupBroadcast(vv, 7u);
        mx = m_new;
    }
    if (!valid) {
        return;
    }
    let obase = (b * p.n + qtok) * d4 + h * 8u;
    let inv = 1.0 / l;
    for (var d = 0u; d < 8u; d++) {
        out[obase + d] = acc[d] * inv;
    }
}
