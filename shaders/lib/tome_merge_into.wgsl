// ToMe's mass-weighted merge of one output token, shared by tome_merge.wgsl and
// tome_merge_fused.wgsl (appended to each by src/kernels/catalogue.rs). Reads the kernel's `p`
// (n, r, c, flags bit 0: masses in `mass`, lead, a_odd), `x`, `mass`, `dst`, `x_out`,
// `mass_out` and `CHUNK`, and its `merged_source(b, na, k)`: the A token of rank k (the
// kernels keep the rank order in storage or in workgroup memory).

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

// B token `jb` becomes (x_b s_b + sum x_a s_a) / (s_b + sum s_a) over the A tokens
// merged into it, visited in rank order, written to output row `i`.
fn merge_into(b: u32, na: u32, jb: u32, i: u32) {
    let obase = i * p.c;
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
        let a = merged_source(b, na, k);
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
    // Each channel's sum is accumulated in f32 and stored once, so an f16 x_out never holds a
    // partial sum.
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
        // Rare: more than four tokens merge into one. The same sums, CHUNK channels at a time.
        for (var c0 = 0u; c0 < p.c; c0 += CHUNK) {
            let nc = min(CHUNK, p.c - c0);
            var acc: array<f32, CHUNK>;
            for (var ch = 0u; ch < nc; ch++) {
                acc[ch] = f32(x[ibase + c0 + ch]) * sb;
            }
            for (var k = 0u; k < p.r; k++) {
                let a = merged_source(b, na, k);
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
