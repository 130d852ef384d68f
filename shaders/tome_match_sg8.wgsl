// Bipartite soft matching, step 1, for adapters whose subgroups are exactly 8 lanes (the
// workgroup is one subgroup) and heads of 32 channels: the results of tome_match.wgsl (for
// every token of set A its most similar token of set B and that similarity; exact ties keep the
// lower B index), with each B token's normalised key loaded once per 8 A tokens: lane l loads
// the key's l-th vec4 and subgroupBroadcast hands it to the others, where tome_match.wgsl has
// every lane load the whole key. Sets as in tome_match.wgsl (lead tokens, A parity).

struct Params {
    batch: u32,
    n: u32,
    lead: u32,
    a_odd: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> metric: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> row_max: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let nb = p.n - p.lead - na;
    let tiles = (na + 7u) / 8u;
    let tile = wg.x + wg.y * nwg.x;
    if (tile >= p.batch * tiles) {
        return;
    }
    let b = tile / tiles;
    // Lanes past the last A token work on a copy of it (every lane must broadcast) and store
    // nothing.
    let a_own = (tile % tiles) * 8u + lane;
    let a = min(a_own, na - 1u);
    let abase = (b * p.n + p.lead + 2u * a + p.a_odd) * 8u;
    var ra: array<vec4<f32>, 8>;
    for (var d = 0u; d < 8u; d++) {
        ra[d] = metric[abase + d];
    }
    var best = -3.4e38;
    var arg = 0u;
    for (var jb = 0u; jb < nb; jb++) {
        let kv = metric[(b * p.n + p.lead + 2u * jb + 1u - p.a_odd) * 8u + lane];
        var s4 = ra[0u] * subgroupBroadcast(kv, 0u);
        s4 += ra[1u] * subgroupBroadcast(kv, 1u);
        s4 += ra[2u] * subgroupBroadcast(kv, 2u);
        s4 += ra[3u] * subgroupBroadcast(kv, 3u);
        s4 += ra[4u] * subgroupBroadcast(kv, 4u);
        s4 += ra[5u] * subgroupBroadcast(kv, 5u);
        s4 += ra[6u] * subgroupBroadcast(kv, 6u);
        s4 += ra[7u] * subgroupBroadcast(kv, 7u);
        let s = (s4.x + s4.y) + (s4.z + s4.w);
        if (s > best) {
            best = s;
            arg = jb;
        }
    }
    if (a_own < na) {
        row_max[b * na + a_own] = best;
        dst[b * na + a_own] = arg;
    }
}
