// Bipartite soft matching, step 4: the mass-weighted merge. Every output token is produced by
// one invocation that gathers its sources (no float atomics, so the result is deterministic):
// a lead token or an unmerged A token is copied; a B token becomes
// (x_b s_b + sum x_a s_a) / (s_b + sum s_a) over the A tokens merged into it, visited in rank
// order. Masses are summed alongside. order[r + u] is the A token of unmerged slot u
// (tome_slots.wgsl), order[k < r] the merged A tokens.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    r: u32,
    c: u32,
    // bit 0: masses are in `mass`; otherwise every token has mass 1 (the stage's first merge).
    flags: u32,
    lead: u32,
    a_odd: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> mass: array<f32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read> dst: array<u32>;
@group(0) @binding(5) var<storage, read_write> x_out: array<elem>;
@group(0) @binding(6) var<storage, read_write> mass_out: array<f32>;

const WG: u32 = 64u;
// Channels whose weighted sums are held in f32 registers at a time (stored once each).
const CHUNK: u32 = 32u;

// The A token of rank k (for merge_into() in shaders/lib/tome_merge_into.wgsl, appended by
// src/kernels/catalogue.rs with mass_of() and copy_token()).
fn merged_source(b: u32, na: u32, k: u32) -> u32 {
    return order[b * na + k];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let unmerged = na - p.r;
    let n_out = p.n - p.r;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * n_out) {
        return;
    }
    let s = i % n_out;
    let b = i / n_out;
    if (s < p.lead) {
        copy_token(b, s, i);
        return;
    }
    if (s < p.lead + unmerged) {
        let a = order[b * na + p.r + s - p.lead];
        copy_token(b, p.lead + 2u * a + p.a_odd, i);
        return;
    }
    merge_into(b, na, s - p.lead - unmerged, i);
}
