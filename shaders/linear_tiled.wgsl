// y = x W^T + b for x [m, k] and nn.Linear weights, with linear.wgsl's fused epilogues:
//   mode 0: y = acc + b
//   mode 1: y = gelu(acc + b)
//   mode 2: y = ca * y + cb * (acc + b)    (in place)
// its optional row normalisation as x is loaded (`norm`, shaders/lib/ln_row_stats.wgsl) and its
// row statistics for the next such layer (`stats_out`: here a part per 64-column tile).
// The classic GPU tiling with workgroup memory: a workgroup of 256 invocations owns a 64 x 64
// tile of y. Per step of 16 along k it stages a 64 x 16 block of x (normalised, transposed so
// four rows are one vec4) and a 16 x 64 block of W^T [k, n_pad] in workgroup memory (8.5 KiB in
// all, within WebGPU's 16 KiB minimum), waits at a barrier, and every invocation accumulates a
// 4 x 4 block of y from one vec4 of each per k. Every value of x and W is read from global
// memory once per tile (64 uses), against once per 8 x 8 register tile in linear.wgsl; global
// loads are coalesced (consecutive invocations read consecutive addresses). No subgroup
// operations: it runs wherever compute shaders do, with any subgroup width.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs). Workgroup
// memory and arithmetic are f32.
alias elem = f32;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    n_pad: u32,
    mode: u32,
    ca: f32,
    cb: f32,
    norm: u32,
    m_base: u32,
    eps: f32,
    stats_out: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<elem>>;
@group(0) @binding(4) var<storage, read_write> y: array<elem>;
@group(0) @binding(5) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> part_out: array<vec2<f32>>;

// Tile rows, columns and depth; 16 x 16 invocations of 4 x 4 outputs each.
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// xs[kk * 16 + r]: rows 4r..4r+3 of the tile at depth kk; ws[kk * 16 + c]: columns 4c..4c+3.
var<workgroup> xs: array<vec4<f32>, 256>;
var<workgroup> ws: array<vec4<f32>, 256>;
// (mean, 1 / std) of the tile's rows, or (0, 1) without normalisation; after the product, the
// row means of the statistics written (tile_stats()).
var<workgroup> st: array<vec2<f32>, 64>;

// epilogue() (the modes above), gelu() and row_stats() come from shaders/lib/,
// appended by src/kernels/catalogue.rs.

// Stores one output, returning the stored value (0 past the last row or column).
fn store(row: u32, col: u32, acc: f32, b: f32) -> f32 {
    if (row >= p.m || col >= p.n) {
        return 0.0;
    }
    return epilogue(row * p.n + col, acc + b);
}

fn store_row(row: u32, n0: u32, acc: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        store(row, n0, acc.x, b.x),
        store(row, n0 + 1u, acc.y, b.y),
        store(row, n0 + 2u, acc.z, b.z),
        store(row, n0 + 3u, acc.w, b.w),
    );
}

// xs as 1024 f32, for the statistics' reductions: entry (tile row, tx).
fn red_set(row: u32, tx: u32, v: f32) {
    let i = row * 16u + tx;
    xs[i / 4u][i % 4u] = v;
}

fn red_sum(row: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < 16u; t++) {
        let i = row * 16u + t;
        s += xs[i / 4u][i % 4u];
    }
    return s;
}

// The statistics of the tile's rows over its columns within n (one part of TN columns per row;
// a row's last part may be narrower): the row mean from the 16 invocations sharing the row
// through workgroup memory, then the squared deviations from it the same way. `v[j]` holds
// the stored values of row 4ty + j, columns 4tx.. (0 where nothing was stored).
fn tile_stats(li: u32, tx: u32, ty: u32, n0: u32, m0: u32, v: array<vec4<f32>, 4>) {
    let c = n0 + tx * 4u;
    let mask = select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(c, c + 1u, c + 2u, c + 3u) < vec4<u32>(p.n));
    for (var j = 0u; j < 4u; j++) {
        red_set(ty * 4u + j, tx, dot(v[j], mask));
    }
    workgroupBarrier();
    if (li < TM) {
        st[li] = vec2<f32>(red_sum(li) / f32(min(TN, p.n - n0)), 0.0);
    }
    workgroupBarrier();
    for (var j = 0u; j < 4u; j++) {
        let d = (v[j] - st[ty * 4u + j].x) * mask;
        red_set(ty * 4u + j, tx, dot(d, d));
    }
    workgroupBarrier();
    if (li < TM && m0 + li < p.m) {
        let parts = (p.n + TN - 1u) / TN;
        part_out[(m0 + li) * parts + n0 / TN] = vec2<f32>(st[li].x, red_sum(li));
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let tiles_n = (p.n_pad + TN - 1u) / TN;
    let tiles_m = (p.m - p.m_base + TM - 1u) / TM;
    // Workgroup-uniform: the whole workgroup leaves or none of it (barriers below).
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles_n * tiles_m) {
        return;
    }
    let n0 = (t % tiles_n) * TN;
    let m0 = p.m_base + (t / tiles_n) * TM;
    if (li < TM) {
        var s = vec2<f32>(0.0, 1.0);
        if (p.norm != 0u) {
            s = row_stats(min(m0 + li, p.m - 1u));
        }
        st[li] = s;
    }
    // Loading roles, lk = li % 16 and lr = li / 16. x: depth lk of rows lr, lr + 16, lr + 32
    // and lr + 48, so 16 consecutive invocations read 16 consecutive values of a row; rows past
    // the edge are clamped (their results are never stored), depths past k are zero. W: depth
    // lr, the vec4 of columns lk (16 consecutive vec4 per depth).
    let lk = li % 16u;
    let lr = li / 16u;
    let stride = p.n_pad / 4u;
    let w_col = n0 / 4u + lk;
    // This invocation's outputs: rows m0 + 4ty.., columns n0 + 4tx...
    let tx = li % 16u;
    let ty = li / 16u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var j = 0u; j < 4u; j++) {
            let r = lr + 16u * j;
            var v = 0.0;
            if (k0 + lk < p.k) {
                let s = st[r];
                v = (f32(x[min(m0 + r, p.m - 1u) * p.k + k0 + lk]) - s.x) * s.y;
            }
            xs[lk * 16u + r / 4u][r % 4u] = v;
        }
        var w = vec4<f32>(0.0);
        if (k0 + lr < p.k && w_col < stride) {
            w = vec4<f32>(wt[(k0 + lr) * stride + w_col]);
        }
        ws[lr * 16u + lk] = w;
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let xv = xs[kk * 16u + ty];
            let wv = ws[kk * 16u + tx];
            a0 += xv.x * wv;
            a1 += xv.y * wv;
            a2 += xv.z * wv;
            a3 += xv.w * wv;
        }
        workgroupBarrier();
    }
    // Invocations past the last column store nothing, but meet the statistics' barriers.
    let c = n0 + tx * 4u;
    var b = vec4<f32>(0.0);
    if (c < p.n_pad) {
        b = vec4<f32>(bias[c / 4u]);
    }
    let r = m0 + ty * 4u;
    let v = array<vec4<f32>, 4>(
        store_row(r, c, a0, b),
        store_row(r + 1u, c, a1, b),
        store_row(r + 2u, c, a2, b),
        store_row(r + 3u, c, a3, b),
    );
    if (p.stats_out != 0u) {
        tile_stats(li, tx, ty, n0, m0, v);
    }
}
