// Bipartite soft matching, step 2: the rank of every A token when A is ordered by its row max,
// descending, exact ties broken by the lower A index. A rank (counting) sort: each invocation
// counts the tokens ahead of it, so the order is total and deterministic, needs no shared
// memory or barriers, and works for any length (O(na^2) comparisons; na <= 392 here).
// Writes rank[a] and its inverse order[rank] = a.

struct Params {
    batch: u32,
    n: u32,
    lead: u32,
    a_odd: u32,
    // unused here (the matching's uniform block).
    dim: u32,
    heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_max: array<f32>;
@group(0) @binding(2) var<storage, read_write> rank: array<u32>;
@group(0) @binding(3) var<storage, read_write> order: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * na) {
        return;
    }
    let a = i % na;
    let base = i - a;
    let v = row_max[i];
    var ahead = 0u;
    for (var o = 0u; o < na; o++) {
        let w = row_max[base + o];
        if (w > v || (w == v && o < a)) {
            ahead += 1u;
        }
    }
    rank[i] = ahead;
    order[base + ahead] = a;
}
