// LayerNorm over the last dimension, one invocation per row (rows are many: batch x tokens),
// two passes over the row for a numerically stable variance. Biased variance, as torch.

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

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
        sum += x[base + i];
    }
    let mean = sum / f32(p.c);
    var sq = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let inv = inverseSqrt(sq / f32(p.c) + p.eps);
    for (var i = 0u; i < p.c; i++) {
        y[base + i] = (x[base + i] - mean) * inv * gamma[i] + beta[i];
    }
}
