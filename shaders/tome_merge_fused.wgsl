// Bipartite soft matching, steps 2-5 in one dispatch: one workgroup per image ranks its A
// tokens (tome_rank.wgsl), places every token (tome_slots.wgsl), merges with masses
// (tome_merge.wgsl) and composes the stage's unmerge map (tome_map_update.wgsl). Each step
// needs the whole image's result of the one before, which a workgroup barrier gives without a
// dispatch of its own: four dispatches and three round trips of rank, order and slot through
// global memory become one. The ranks, the rank order and the slot map stay in workgroup
// memory (16320 bytes: up to MAX_TOKENS tokens; longer sequences take the four kernels). Every
// comparison, tie rule and summation order is the one of those kernels, so the results are
// bit for bit theirs. With flags bit 2 the kernel also writes the LayerNorm statistics of the
// merged rows for the MLP after the merge (mean and sum of squared deviations per row, the
// one-part form of shaders/lib/ln_row_stats.wgsl, two passes as ln_stats.wgsl), into binding 7
// in place of the slot map, which only a trace reads: a statistics dispatch fewer per merge,
// within WebGPU's 8 storage buffers per stage.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    r: u32,
    c: u32,
    n_grid: u32,
    // bit 0: masses are in `mass` (otherwise every token has mass 1: the stage's first merge);
    // bit 1: first merge of the stage (the unmerge map is the identity before it);
    // bit 2: binding 7 takes the merged rows' statistics (two f32 words per row) instead of
    // the slot map.
    flags: u32,
    lead: u32,
    a_odd: u32,
    // 1: the unmerged A tokens keep their position order (else rank order).
    sorted: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> mass: array<f32>;
@group(0) @binding(3) var<storage, read> row_max: array<f32>;
@group(0) @binding(4) var<storage, read> dst: array<u32>;
@group(0) @binding(5) var<storage, read_write> x_out: array<elem>;
@group(0) @binding(6) var<storage, read_write> mass_out: array<f32>;
// The slot map, or with flags bit 2 the merged rows' (mean, M2) as f32 bits.
@group(0) @binding(7) var<storage, read_write> slot: array<u32>;
@group(0) @binding(8) var<storage, read_write> stage_map: array<u32>;

const WG: u32 = 256u;
// Longest sequence merged here (src/kernels/merge.rs: FUSED_MAX_TOKENS), and its A set.
const MAX_TOKENS: u32 = 2040u;
const MAX_A: u32 = 1020u;
// Channels whose weighted sums are held in f32 registers at a time (stored once each).
const CHUNK: u32 = 32u;

var<workgroup> rank: array<u32, MAX_A>;
var<workgroup> order: array<u32, MAX_A>;
var<workgroup> slots: array<u32, MAX_TOKENS>;

// Step 2: the rank of A token `a` by row max, descending, exact ties by the lower index.
fn rank_of(base: u32, na: u32, a: u32) -> u32 {
    let v = row_max[base + a];
    var ahead = 0u;
    for (var o = 0u; o < na; o++) {
        let w = row_max[base + o];
        if (w > v || (w == v && o < a)) {
            ahead += 1u;
        }
    }
    return ahead;
}

// The A token of rank k (for merge_into() in shaders/lib/tome_merge_into.wgsl, appended by
// src/kernels/catalogue.rs with mass_of() and copy_token()).
fn merged_source(b: u32, na: u32, k: u32) -> u32 {
    return order[k];
}

// Step 3: the slot of incoming position `pos`; an unmerged A token also records itself as the
// source of its slot in `order` (rank order holds that already unless `sorted`).
fn slot_of(b: u32, na: u32, pos: u32) -> u32 {
    let unmerged = na - p.r;
    if (pos < p.lead) {
        return pos;
    }
    let j = pos - p.lead;
    if ((j & 1u) != p.a_odd) {
        return p.lead + unmerged + (j + p.a_odd - 1u) / 2u;
    }
    let a = (j - p.a_odd) / 2u;
    let k = rank[a];
    if (k < p.r) {
        return p.lead + unmerged + dst[b * na + a];
    }
    var u = k - p.r;
    if (p.sorted != 0u) {
        u = 0u;
        for (var o = 0u; o < a; o++) {
            if (rank[o] >= p.r) {
                u += 1u;
            }
        }
        order[p.r + u] = a;
    }
    return p.lead + u;
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // One image per workgroup (the grid may hold a few more workgroups than images).
    let b = wid.x + wid.y * nwg.x;
    if (b >= p.batch) {
        return;
    }
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let unmerged = na - p.r;
    let n_out = p.n - p.r;
    for (var a = lid; a < na; a += WG) {
        let k = rank_of(b * na, na, a);
        rank[a] = k;
        order[k] = a;
    }
    workgroupBarrier();
    for (var pos = lid; pos < p.n; pos += WG) {
        let s = slot_of(b, na, pos);
        slots[pos] = s;
        if ((p.flags & 4u) == 0u) {
            slot[b * p.n + pos] = s;
        }
    }
    workgroupBarrier();
    for (var s = lid; s < n_out; s += WG) {
        let i = b * n_out + s;
        if (s < p.lead) {
            copy_token(b, s, i);
        } else if (s < p.lead + unmerged) {
            copy_token(b, p.lead + 2u * order[p.r + s - p.lead] + p.a_odd, i);
        } else {
            merge_into(b, na, s - p.lead - unmerged, i);
        }
    }
    for (var o = lid; o < p.n_grid; o += WG) {
        let i = b * p.n_grid + o;
        var cur = p.lead + o;
        if ((p.flags & 2u) == 0u) {
            cur = stage_map[i];
        }
        stage_map[i] = slots[cur];
    }
    if ((p.flags & 4u) != 0u) {
        // The merged rows this workgroup stored, visible to it after the barrier.
        storageBarrier();
        for (var s = lid; s < n_out; s += WG) {
            let base = (b * n_out + s) * p.c;
            var sum = 0.0;
            for (var i = 0u; i < p.c; i++) {
                sum += f32(x_out[base + i]);
            }
            let mean = sum / f32(p.c);
            var sq = 0.0;
            for (var i = 0u; i < p.c; i++) {
                let d = f32(x_out[base + i]) - mean;
                sq += d * d;
            }
            slot[2u * (b * n_out + s)] = bitcast<u32>(mean);
            slot[2u * (b * n_out + s) + 1u] = bitcast<u32>(sq);
        }
    }
}
