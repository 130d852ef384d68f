// Bipartite soft matching, step 3: where every token of the incoming sequence goes.
// New order: the na - r unmerged A tokens by rank, then the nb B tokens in their order; a merged
// A token goes to its B destination. slot[pos] is that new index; it is also the merge map the
// trace reports and what the per-stage unmerge map is composed from.

struct Params {
    batch: u32,
    n: u32,
    r: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rank: array<u32>;
@group(0) @binding(2) var<storage, read> dst: array<u32>;
@group(0) @binding(3) var<storage, read_write> slot: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let na = (p.n + 1u) / 2u;
    let unmerged = na - p.r;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.n) {
        return;
    }
    let pos = i % p.n;
    let b = i / p.n;
    if ((pos & 1u) == 1u) {
        slot[i] = unmerged + pos / 2u;
        return;
    }
    let ai = b * na + pos / 2u;
    let k = rank[ai];
    if (k < p.r) {
        slot[i] = unmerged + dst[ai];
    } else {
        slot[i] = k - p.r;
    }
}
