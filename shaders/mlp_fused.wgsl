// The MLP half of a block in one dispatch, its hidden activations never leaving the chip, with
// the attention half's output projection optionally in front of it, a second MLP optionally
// after it (SReT's Non_proj MLP, which follows every block's MLP on the same rows) and the next
// block's LayerNorm-folded qkv layer optionally last:
//   y = pa * y + pb * (attn Wp^T + bp)                   (with `proj`: the attention's residual)
//   y = ca * y + cb * (gelu(LN(y) W1^T + b1) W2^T + b2)  (in place; fc1 normalises as it loads)
//   y = ca2 * y + cb2 * (the same with the second MLP's weights and hidden width h2) (`chain`)
//   next_out = LN(y) Wq^T + bq                           (`next`: q output columns)
// for y [m, n] (fc1 reads n = k columns); without `mlp`, only the last (a LayerNorm-folded
// linear layer that measures its rows' statistics). Each MLP's weights are one tensor, W1^T
// [k, h_pad] and W2^T [h, n_pad] as linear.wgsl's, each followed by its bias as one more row:
// [W1^T; b1; W2^T; b2] (src/kernels/mlp.rs: upload); `wp` is Wp^T [k, n_pad] with bp as its
// row k, `wq` Wq^T [k, q_pad] with bq as its row k. The residuals are linear.wgsl's epilogue
// mode 2 (shaders/lib/linear_epilogue.wgsl).
// The LayerNorm statistics of the rows are measured here (`norm`), and the statistics of the
// rows stored are written with `stats_out` (one part per row, the whole row, as this workgroup
// stores every column of its rows).
// A workgroup of 256 invocations owns 16 whole rows. With `proj` each invocation first computes
// its row's 16 columns (4tx + 64j) of the projection, reading the attention row from global
// memory (the same address across a row's 16 invocations), adds the residual and stores them;
// the LayerNorm statistics then come from those values in registers (otherwise from the rows as
// loaded), through workgroup memory, two passes (mean, then squared deviations). For every
// chunk of 64 hidden columns it computes the chunk as linear_tiled.wgsl computes a tile (16 x 16
// blocks of the normalised rows and of W1^T staged in workgroup memory, each invocation a row's
// 4 columns), applies bias and GELU into workgroup memory, and each invocation adds the chunk's
// contribution to its row's 16 output columns in registers. The rows are read from y again per
// chunk (from cache); y is written after every invocation's last read of it (and, with `proj`
// or before the chained MLP or the next layer, before the next read, behind a storage
// barrier): a workgroup reads and writes only its own rows, so one read-write binding serves as
// input and output. Columns n <= 256 (N_MAX); 8.2 KiB of workgroup memory. No subgroup
// operations.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs). Workgroup
// memory and arithmetic are f32.
alias elem = f32;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    n_pad: u32,
    norm: u32,
    eps: f32,
    stats_out: u32,
    proj: u32,
    pa: f32,
    pb: f32,
    // 1: the block's MLP (weights in `mw`); 0: only the next layer (`next`), on the rows as
    // loaded.
    mlp: u32,
    h: u32,
    h_pad: u32,
    ca: f32,
    cb: f32,
    // 1: the second MLP (weights in `nw`) follows on the same rows.
    chain: u32,
    h2: u32,
    h2_pad: u32,
    ca2: f32,
    cb2: f32,
    // 1: the next layer follows (weights in `wq`, output in `next_out`, q columns).
    next: u32,
    q: u32,
    q_pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mw: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> nw: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read_write> y: array<elem>;
@group(0) @binding(4) var<storage, read> wp: array<vec4<elem>>;
@group(0) @binding(5) var<storage, read> attn: array<elem>;
@group(0) @binding(6) var<storage, read_write> part_out: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> wq: array<vec4<elem>>;
@group(0) @binding(8) var<storage, read_write> next_out: array<elem>;

// Rows per workgroup, hidden columns per chunk, depth per staging step.
const TM: u32 = 16u;
const TH: u32 = 64u;
const TK: u32 = 16u;

// xs[r * 16 + kk]: row r of the tile at depth kk (normalised); also the statistics' reduction
// buffer. ws[kk * 16 + c]: W1^T at depth kk, hidden columns 4c..4c+3 of the chunk.
// hs[r * 16 + c]: the chunk's hidden values of row r, columns 4c..4c+3, after GELU.
var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<vec4<f32>, 256>;
var<workgroup> hs: array<vec4<f32>, 256>;
// (mean, 1 / std) of the tile's rows, or (0, 1) without normalisation; the row means while the
// statistics are reduced.
var<workgroup> st: array<vec2<f32>, 16>;

// gelu() comes from shaders/lib/gelu.wgsl, appended by src/kernels/catalogue.rs.

// Stores output column `col` of `row` as the residual `c.x * y + c.y * (acc + b)`, returning
// the stored value (0 past the last row or column).
fn store(row: u32, col: u32, acc: f32, b: f32, c: vec2<f32>) -> f32 {
    if (row >= p.m || col >= p.n) {
        return 0.0;
    }
    let o = row * p.n + col;
    let e = elem(c.x * f32(y[o]) + c.y * (acc + b));
    y[o] = e;
    return f32(e);
}

// Which packed weights a phase reads.
const BLOCK_MLP: u32 = 0u;
const CHAINED_MLP: u32 = 1u;
const NEXT_LAYER: u32 = 2u;

// Element i of the packed weights `which` names.
fn weight(which: u32, i: u32) -> vec4<f32> {
    switch which {
        case 1u: {
            return vec4<f32>(nw[i]);
        }
        case 2u: {
            return vec4<f32>(wq[i]);
        }
        default: {
            return vec4<f32>(mw[i]);
        }
    }
}

fn red_sum(r: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < 16u; t++) {
        s += xs[r * 16u + t];
    }
    return s;
}

// The statistics of the tile's rows over all n columns, left in st as (mean, M2): the row mean
// from the 16 invocations sharing the row through workgroup memory, then the squared deviations
// from it the same way. `v[j]` holds this invocation's columns 4tx + 64j.. of row ty (0 past
// the last column). Called in uniform control flow (barriers).
fn tile_stats(li: u32, tx: u32, ty: u32, v: array<vec4<f32>, 4>) {
    var mask: array<vec4<f32>, 4>;
    var s = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let c = tx * 4u + 64u * j;
        mask[j] = select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(c, c + 1u, c + 2u, c + 3u) < vec4<u32>(p.n));
        s += dot(v[j], mask[j]);
    }
    xs[ty * 16u + tx] = s;
    workgroupBarrier();
    if (li < TM) {
        st[li] = vec2<f32>(red_sum(li) / f32(p.n), 0.0);
    }
    workgroupBarrier();
    var q = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let d = (v[j] - st[ty].x) * mask[j];
        q += dot(d, d);
    }
    xs[ty * 16u + tx] = q;
    workgroupBarrier();
    if (li < TM) {
        st[li].y = red_sum(li);
    }
    workgroupBarrier();
}

// This invocation's columns 4tx + 64j.. of `row` after the attention's residual
// `pa * y + pb * (attn Wp^T + bp)`, stored; 0 past the last row or column.
fn project(row: u32, tx: u32) -> array<vec4<f32>, 4> {
    var v: array<vec4<f32>, 4>;
    if (row >= p.m) {
        return v;
    }
    let n_stride = p.n_pad / 4u;
    var acc: array<vec4<f32>, 4>;
    for (var d = 0u; d < p.k; d++) {
        let a = f32(attn[row * p.k + d]);
        let w_row = d * n_stride + tx;
        for (var j = 0u; j < 4u; j++) {
            if (tx + 16u * j < n_stride) {
                acc[j] += a * vec4<f32>(wp[w_row + 16u * j]);
            }
        }
    }
    for (var j = 0u; j < 4u; j++) {
        let c = tx * 4u + 64u * j;
        if (c < p.n_pad) {
            let z = acc[j] + vec4<f32>(wp[p.k * n_stride + c / 4u]);
            for (var e = 0u; e < 4u; e++) {
                if (c + e < p.n) {
                    let o = row * p.n + c + e;
                    let stored = elem(p.pa * f32(y[o]) + p.pb * z[e]);
                    y[o] = stored;
                    v[j][e] = f32(stored);
                }
            }
        }
    }
    return v;
}

// This invocation's columns 4tx + 64j.. of `row` as stored; 0 past the last row or column.
fn load_row(row: u32, tx: u32) -> array<vec4<f32>, 4> {
    var v: array<vec4<f32>, 4>;
    if (row >= p.m) {
        return v;
    }
    for (var j = 0u; j < 4u; j++) {
        let c = tx * 4u + 64u * j;
        for (var e = 0u; e < 4u; e++) {
            if (c + e < p.n) {
                v[j][e] = f32(y[row * p.n + c + e]);
            }
        }
    }
    return v;
}

// Sets st to the tile's normalisation for fc1, (mean, 1 / std) from tile_stats' (mean, M2),
// or (0, 1) without `norm`. Called in uniform control flow (barrier).
fn set_norm(li: u32) {
    if (li < TM) {
        var s = vec2<f32>(0.0, 1.0);
        if (p.norm != 0u) {
            s = vec2<f32>(st[li].x, inverseSqrt(st[li].y / f32(p.n) + p.eps));
        }
        st[li] = s;
    }
    workgroupBarrier();
}

// Output columns c0 + 4tx.. (of h_pad / 4 vec4 columns) of row ty of the normalised tile times
// the packed weights `which` (W^T from element 0, no bias), as linear_tiled.wgsl computes a
// tile: 16 x 16 blocks of the rows and of W^T staged in workgroup memory. `x_row` is where row
// ty starts in y. Called in uniform control flow (barriers).
fn chunk(tx: u32, ty: u32, x_row: u32, which: u32, c0: u32, h_stride: u32) -> vec4<f32> {
    let hc = c0 / 4u + tx;
    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // Loading roles: x at row ty, depth tx; W^T at depth ty, the vec4 of columns tx.
        var v = 0.0;
        if (k0 + tx < p.k) {
            let s = st[ty];
            v = (f32(y[x_row + k0 + tx]) - s.x) * s.y;
        }
        xs[ty * 16u + tx] = v;
        var w = vec4<f32>(0.0);
        if (k0 + ty < p.k && hc < h_stride) {
            w = weight(which, (k0 + ty) * h_stride + hc);
        }
        ws[ty * 16u + tx] = w;
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            acc += xs[ty * 16u + kk] * ws[kk * 16u + tx];
        }
        workgroupBarrier();
    }
    return acc;
}

// One MLP over the tile's rows (`which`: the block's or the chained one), normalised by st:
// stores them and returns this invocation's columns 4tx + 64j.. of row ty as stored. Called in
// uniform control flow (barriers), `which` uniform.
fn mlp(tx: u32, ty: u32, m0: u32, which: u32) -> array<vec4<f32>, 4> {
    let second = which == CHAINED_MLP;
    let h = select(p.h, p.h2, second);
    let h_pad = select(p.h_pad, p.h2_pad, second);
    let coef = select(vec2<f32>(p.ca, p.cb), vec2<f32>(p.ca2, p.cb2), second);
    // Rows past the edge are clamped (their results are never stored).
    let x_row = min(m0 + ty, p.m - 1u) * p.k;
    let h_stride = h_pad / 4u;
    let n_stride = p.n_pad / 4u;
    // Where b1, W2^T and b2 start in the packed weights.
    let b1_at = p.k * h_stride;
    let w2_at = b1_at + h_stride;
    let b2_at = w2_at + h * n_stride;
    var out = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var c0 = 0u; c0 < h; c0 += TH) {
        // fc1 on the chunk: this invocation's hidden columns c0 + 4tx.. of row ty.
        let hc = c0 / 4u + tx;
        let acc = chunk(tx, ty, x_row, which, c0, h_stride);
        var hv = vec4<f32>(0.0);
        if (hc < h_stride) {
            let z = acc + weight(which, b1_at + hc);
            hv = vec4<f32>(gelu(z.x), gelu(z.y), gelu(z.z), gelu(z.w));
            let col = c0 + tx * 4u;
            hv *= select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(col, col + 1u, col + 2u, col + 3u) < vec4<u32>(h));
        }
        hs[ty * 16u + tx] = hv;
        workgroupBarrier();
        // fc2's share of the chunk: row ty, output columns 4tx + 64j...
        let depth = min(TH, h - c0);
        for (var d = 0u; d < depth; d++) {
            let a = hs[ty * 16u + d / 4u][d % 4u];
            let w_row = w2_at + (c0 + d) * n_stride + tx;
            for (var j = 0u; j < 4u; j++) {
                if (tx + 16u * j < n_stride) {
                    out[j] += a * weight(which, w_row + 16u * j);
                }
            }
        }
        workgroupBarrier();
    }
    // Every read of y happened before the last barrier; now each invocation stores its columns.
    let row = m0 + ty;
    var v: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j++) {
        let c = tx * 4u + 64u * j;
        var b = vec4<f32>(0.0);
        if (c < p.n_pad) {
            b = weight(which, b2_at + c / 4u);
        }
        let a = out[j];
        v[j] = vec4<f32>(
            store(row, c, a.x, b.x, coef),
            store(row, c + 1u, a.y, b.y, coef),
            store(row, c + 2u, a.z, b.z, coef),
            store(row, c + 3u, a.w, b.w, coef),
        );
    }
    return v;
}

// The next layer on the tile's rows, normalised by st: its q output columns into next_out, 64
// at a time. Called in uniform control flow (barriers).
fn next_layer(tx: u32, ty: u32, m0: u32) {
    let x_row = min(m0 + ty, p.m - 1u) * p.k;
    let q_stride = p.q_pad / 4u;
    let row = m0 + ty;
    for (var c0 = 0u; c0 < p.q; c0 += TH) {
        let acc = chunk(tx, ty, x_row, NEXT_LAYER, c0, q_stride);
        let hc = c0 / 4u + tx;
        if (row < p.m && hc < q_stride) {
            let z = acc + weight(NEXT_LAYER, p.k * q_stride + hc);
            for (var e = 0u; e < 4u; e++) {
                let col = 4u * hc + e;
                if (col < p.q) {
                    next_out[row * p.q + col] = elem(z[e]);
                }
            }
        }
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // Workgroup-uniform: the whole workgroup leaves or none of it (barriers below).
    let t = wid.x + wid.y * nwg.x;
    if (t * TM >= p.m) {
        return;
    }
    let m0 = t * TM;
    let tx = li % 16u;
    let ty = li / 16u;
    var v: array<vec4<f32>, 4>;
    if (p.proj != 0u) {
        v = project(m0 + ty, tx);
        // The rows stored above are read back by other invocations of the workgroup below.
        storageBarrier();
    } else if (p.norm != 0u) {
        v = load_row(m0 + ty, tx);
    }
    if (p.norm != 0u) {
        tile_stats(li, tx, ty, v);
    }
    set_norm(li);
    if (p.mlp != 0u) {
        v = mlp(tx, ty, m0, BLOCK_MLP);
    }
    if (p.chain != 0u) {
        // As after the projection: the chained MLP reads the rows just stored. Every read of st
        // and of the staging buffers is behind the chunk loop's last barrier.
        storageBarrier();
        if (p.norm != 0u) {
            tile_stats(li, tx, ty, v);
        }
        set_norm(li);
        v = mlp(tx, ty, m0, CHAINED_MLP);
    }
    if (p.next != 0u) {
        // The same for the next layer, where an MLP rewrote the rows.
        if (p.mlp != 0u) {
            storageBarrier();
            if (p.norm != 0u) {
                tile_stats(li, tx, ty, v);
            }
            set_norm(li);
        }
        next_layer(tx, ty, m0);
    }
    if (p.stats_out != 0u) {
        // Every invocation's last read of st (the normalisation) is behind the chunk loop's
        // barriers.
        tile_stats(li, tx, ty, v);
        if (li < TM && m0 + li < p.m) {
            part_out[m0 + li] = st[li];
        }
    }
}
