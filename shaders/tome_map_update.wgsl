// Composes the stage's unmerge map with one merge: map[orig] <- slot[map[orig]], so after the
// stage's last merge map[orig] is the merged token that original grid position ended in.
// Replaying the reference's unmerge stack in reverse copies exactly that token back to `orig`.
// Grid position `orig` starts at sequence position lead + orig (after the class tokens).

struct Params {
    batch: u32,
    // tokens at the start of the stage (the grid)
    n_grid: u32,
    // tokens entering this merge
    n: u32,
    // bit 0: first merge of the stage (map is the identity before it)
    flags: u32,
    lead: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> slot: array<u32>;
@group(0) @binding(2) var<storage, read_write> stage_map: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.batch * p.n_grid) {
        return;
    }
    let orig = i % p.n_grid;
    let b = i / p.n_grid;
    var cur = p.lead + orig;
    if ((p.flags & 1u) == 0u) {
        cur = stage_map[i];
    }
    stage_map[i] = slot[b * p.n + cur];
}
