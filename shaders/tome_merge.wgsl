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

fn mass_of(b: u32, t: u32) -> f32 {
    if ((p.flags & 1u) != 0u) {
        return mass[b * p.n + t];
    }
    return 1.0;
}

fn copy_token(b: u32, t: u32, i: u32) {
    let ibase = (b * p.n + t) * p.c;
    let obase = i * p.c;
    for (var ch = 0u; ch < p.c; ch++) {
        x_out[obase + ch] = x[ibase + ch];
    }
    mass_out[i] = mass_of(b, t);
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
    let obase = i * p.c;
    let jb = s - p.lead - unmerged;
    let t = p.lead + 2u * jb + 1u - p.a_odd;
    let ibase = (b * p.n + t) * p.c;
    let sb = mass_of(b, t);
    // One pass over the merged A tokens in rank order: the total mass, how many merge into
    // this B token, and the first four of them (in registers: no dynamic indexing).
    var total = sb;
    var count = 0u;
    var t0 = 0u;
    var t1 = 0u;
    var t2 = 0u;
    var t3 = 0u;
    for (var k = 0u; k < p.r; k++) {
        let a = order[b * na + k];
        if (dst[b * na + a] == jb) {
            let ta = p.lead + 2u * a + p.a_odd;
            total += mass_of(b, ta);
            switch (count) {
                case 0u: { t0 = ta; }
                case 1u: { t1 = ta; }
                case 2u: { t2 = ta; }
                case 3u: { t3 = ta; }
                default: {}
            }
            count += 1u;
        }
    }
    let inv = 1.0 / total;
    // Each channel's sum is accumulated in f32 (x_b s_b, then + x_a s_a in rank order, then
    // times 1 / total) and stored once, so an f16 x_out never holds a partial sum.
    if (count <= 4u) {
        let m0 = mass_of(b, t0);
        let m1 = mass_of(b, t1);
        let m2 = mass_of(b, t2);
        let m3 = mass_of(b, t3);
        let base0 = (b * p.n + t0) * p.c;
        let base1 = (b * p.n + t1) * p.c;
        let base2 = (b * p.n + t2) * p.c;
        let base3 = (b * p.n + t3) * p.c;
        for (var ch = 0u; ch < p.c; ch++) {
            var acc = f32(x[ibase + ch]) * sb;
            if (count > 0u) {
                acc += f32(x[base0 + ch]) * m0;
            }
            if (count > 1u) {
                acc += f32(x[base1 + ch]) * m1;
            }
            if (count > 2u) {
                acc += f32(x[base2 + ch]) * m2;
            }
            if (count > 3u) {
                acc += f32(x[base3 + ch]) * m3;
            }
            x_out[obase + ch] = elem(acc * inv);
        }
    } else {
        // Rare: more than four tokens merge into one. The same sums, CHUNK channels at a time,
        // the merged tokens found again per chunk.
        for (var c0 = 0u; c0 < p.c; c0 += CHUNK) {
            let nc = min(CHUNK, p.c - c0);
            var acc: array<f32, CHUNK>;
            for (var ch = 0u; ch < nc; ch++) {
                acc[ch] = f32(x[ibase + c0 + ch]) * sb;
            }
            for (var k = 0u; k < p.r; k++) {
                let a = order[b * na + k];
                if (dst[b * na + a] == jb) {
                    let ta = p.lead + 2u * a + p.a_odd;
                    let sa = mass_of(b, ta);
                    let abase = (b * p.n + ta) * p.c + c0;
                    for (var ch = 0u; ch < nc; ch++) {
                        acc[ch] += f32(x[abase + ch]) * sa;
                    }
                }
            }
            for (var ch = 0u; ch < nc; ch++) {
                x_out[obase + c0 + ch] = elem(acc[ch] * inv);
            }
        }
    }
    mass_out[i] = total;
}
