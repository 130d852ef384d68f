// Restores the token grid before pooling (the unmerge stack in one step):
// out[b, orig, :] = x[b, map[b, orig], :].

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n_grid: u32,
    n: u32,
    c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> stage_map: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<elem>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.n_grid * p.c) {
        return;
    }
    let ch = i % p.c;
    let row = i / p.c;
    let b = row / p.n_grid;
    out[i] = x[(b * p.n + stage_map[row]) * p.c + ch];
}
