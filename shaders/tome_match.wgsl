// Bipartite soft matching, step 1: for every token of set A (even positions) its most similar
// token of set B (odd positions) by cosine similarity of the normalised metric, and that
// similarity. The A x B score matrix is never stored: each invocation keeps its row's running
// max. Exact ties keep the lower B index (strict comparison), like torch's max on CPU.
// The sets exclude `lead` tokens at the front; after them, set A is the window positions of
// parity `a_odd` (see src/tome/split.rs).

struct Params {
    batch: u32,
    n: u32,
    lead: u32,
    a_odd: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> metric: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_max: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

const WG: u32 = 64u;
const HEAD_DIM: u32 = 32u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let nb = p.n - p.lead - na;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * na) {
        return;
    }
    let a = i % na;
    let b = i / na;
    let abase = (b * p.n + p.lead + 2u * a + p.a_odd) * HEAD_DIM;
    var ra: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        ra[d] = metric[abase + d];
    }
    var best = -3.4e38;
    var arg = 0u;
    for (var jb = 0u; jb < nb; jb++) {
        let bbase = (b * p.n + p.lead + 2u * jb + 1u - p.a_odd) * HEAD_DIM;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s += ra[d] * metric[bbase + d];
        }
        if (s > best) {
            best = s;
            arg = jb;
        }
    }
    row_max[i] = best;
    dst[i] = arg;
}
