// The statistics of LayerNorm over the last dimension, for a linear layer that normalises its
// input as it loads it (LayerNorm fused into its consumer, the affine part folded into the
// consumer's weights), where no kernel wrote them beside the rows: per row the mean and the sum
// of squared deviations from it, two passes over the row as layernorm.wgsl, the row as one part
// of shaders/lib/ln_row_stats.wgsl (the consumer adds eps; `p.eps` is not read). One invocation
// per row.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> stats: array<vec2<f32>>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.c;
    var sum = 0.0;
    for (var i = 0u; i < p.c; i++) {
        sum += f32(x[base + i]);
    }
    let mean = sum / f32(p.c);
    var sq = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let d = f32(x[base + i]) - mean;
        sq += d * d;
    }
    stats[row] = vec2<f32>(mean, sq);
}
