// Moves a run of tokens between sequences, for the lead (class, distillation) tokens:
// out[b, out_off + t, :] = x[b, in_off + t, :] for t < count, where a sequence of `x` holds
// `in_tokens` tokens per image, or `x` is one sequence shared by every image when in_tokens is
// 0 (the learned tokens). Used to put the lead tokens in front of the patch tokens, to take
// them out again, and to take the patch tokens of a stage that merged nothing.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    count: u32,
    c: u32,
    in_tokens: u32,
    in_off: u32,
    out_tokens: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> out: array<elem>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.count * p.c) {
        return;
    }
    let ch = i % p.c;
    let row = i / p.c;
    let t = row % p.count;
    let b = row / p.count;
    out[(b * p.out_tokens + p.out_off + t) * p.c + ch] =
        x[(b * p.in_tokens + p.in_off + t) * p.c + ch];
}
