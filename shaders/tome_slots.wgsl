// Bipartite soft matching, step 3: where every token of the incoming sequence goes.
// New order: the `lead` tokens (never merged), the na - r unmerged A tokens (by rank, or by
// position when `sorted`), then the nb B tokens in their order; a merged A token goes to its B
// destination. slot[pos] is that new index; it is also the merge map the trace reports and what
// the per-stage unmerge map is composed from. Each unmerged A token also records itself as the
// source of its slot, order[r + u] = a (rank order already holds that unless `sorted`).
// Set A is the window positions (after the lead tokens) of parity `a_odd` (src/tome/split.rs).

struct Params {
    batch: u32,
    n: u32,
    r: u32,
    lead: u32,
    a_odd: u32,
    sorted: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rank: array<u32>;
@group(0) @binding(2) var<storage, read> dst: array<u32>;
@group(0) @binding(3) var<storage, read_write> slot: array<u32>;
@group(0) @binding(4) var<storage, read_write> order: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let unmerged = na - p.r;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.n) {
        return;
    }
    let pos = i % p.n;
    let b = i / p.n;
    if (pos < p.lead) {
        slot[i] = pos;
        return;
    }
    let j = pos - p.lead;
    if ((j & 1u) != p.a_odd) {
        slot[i] = p.lead + unmerged + (j + p.a_odd - 1u) / 2u;
        return;
    }
    let a = (j - p.a_odd) / 2u;
    let base = b * na;
    let k = rank[base + a];
    if (k < p.r) {
        slot[i] = p.lead + unmerged + dst[base + a];
        return;
    }
    var u = k - p.r;
    if (p.sorted != 0u) {
        u = 0u;
        for (var o = 0u; o < a; o++) {
            if (rank[base + o] >= p.r) {
                u += 1u;
            }
        }
    }
    slot[i] = p.lead + u;
    order[base + p.r + u] = a;
}
