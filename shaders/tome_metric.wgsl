// ToMe's matching metric: the keys averaged over heads, then L2-normalised, per token.
// qkv [batch, n, 3 * dim] -> metric [batch, n, HEAD_DIM]. Independent of any permutation: a
// token's keys are its own whatever group it sat in.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    dim: u32,
    heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<elem>;
@group(0) @binding(2) var<storage, read_write> metric: array<f32>;

const WG: u32 = 64u;
const HEAD_DIM: u32 = 32u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.batch * p.n) {
        return;
    }
    // metric_of() comes from shaders/lib/tome_metric_of.wgsl (appended).
    let m = metric_of(t);
    for (var d = 0u; d < HEAD_DIM; d++) {
        metric[t * HEAD_DIM + d] = m[d];
    }
}
