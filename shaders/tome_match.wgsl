// Bipartite soft matching, step 1, with the matching metric computed on the way (tome_metric.wgsl
// folded in): for every token of set A its most similar token of set B by cosine similarity of
// the keys averaged over heads, and that similarity. A workgroup takes 64 A tokens of one image:
// each invocation computes its A token's metric into registers, then the workgroup computes the
// B tokens' metrics a chunk at a time into workgroup memory (8 KiB) and every invocation
// scores its A token against the chunk. The metric never goes through global memory, and the
// A x B score matrix is never stored: each invocation keeps its row's running max. Exact ties
// keep the lower B index (strict comparison), like torch's max on CPU. The metric's arithmetic
// and the order of every sum are those of tome_metric.wgsl.
// The sets exclude `lead` tokens at the front; after them, set A is the window positions of
// parity `a_odd` (see src/tome/split.rs).

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32,
    n: u32,
    lead: u32,
    a_odd: u32,
    dim: u32,
    heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<elem>;
@group(0) @binding(2) var<storage, read_write> row_max: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

const WG: u32 = 64u;
const HEAD_DIM: u32 = 32u;
// B tokens whose metrics a chunk holds: 2048 f32, 8 KiB of workgroup memory.
const CHUNK: u32 = 2048u / HEAD_DIM;

var<workgroup> keys: array<f32, 2048>;

// metric_of(), a token's metric, comes from shaders/lib/tome_metric_of.wgsl (appended by
// src/kernels/catalogue.rs), as in tome_metric.wgsl.

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let na = (p.n - p.lead + 1u - p.a_odd) / 2u;
    let nb = p.n - p.lead - na;
    let tiles = (na + WG - 1u) / WG;
    let w = wid.x + wid.y * nwg.x;
    if (w >= p.batch * tiles) {
        return;
    }
    let b = w / tiles;
    let a = (w % tiles) * WG + lid;
    let in_set = a < na;
    var ra: array<f32, HEAD_DIM>;
    if (in_set) {
        ra = metric_of(b * p.n + p.lead + 2u * a + p.a_odd);
    }
    var best = -3.4e38;
    var arg = 0u;
    for (var j0 = 0u; j0 < nb; j0 += CHUNK) {
        // The previous chunk is scored by every invocation before it is overwritten.
        workgroupBarrier();
        for (var t = lid; t < CHUNK && j0 + t < nb; t += WG) {
            let m = metric_of(b * p.n + p.lead + 2u * (j0 + t) + 1u - p.a_odd);
            for (var d = 0u; d < HEAD_DIM; d++) {
                keys[t * HEAD_DIM + d] = m[d];
            }
        }
        workgroupBarrier();
        if (in_set) {
            let count = min(CHUNK, nb - j0);
            for (var t = 0u; t < count; t++) {
                var s = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    s += ra[d] * keys[t * HEAD_DIM + d];
                }
                if (s > best) {
                    best = s;
                    arg = j0 + t;
                }
            }
        }
    }
    if (in_set) {
        row_max[b * na + a] = best;
        dst[b * na + a] = arg;
    }
}
