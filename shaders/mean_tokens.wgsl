// Global average pooling over tokens: [batch, n, c] -> [batch, c]. One invocation per output.
// With n_in > 0, x is a merged sequence [batch, n_in, c] and the n tokens are the grid
// positions, read through the stage's unmerge map (the unmerge gather folded into the mean, the
// same sum in the same order).

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    c: u32,
    n_in: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;
@group(0) @binding(3) var<storage, read> unmerge_map: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.c) {
        return;
    }
    let c = i % p.c;
    let b = i / p.c;
    var s = 0.0;
    if (p.n_in != 0u) {
        for (var t = 0u; t < p.n; t++) {
            s += f32(x[(b * p.n_in + unmerge_map[b * p.n + t]) * p.c + c]);
        }
    } else {
        for (var t = 0u; t < p.n; t++) {
            s += f32(x[(b * p.n + t) * p.c + c]);
        }
    }
    y[i] = elem(s / f32(p.n));
}
