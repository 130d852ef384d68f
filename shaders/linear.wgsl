// y = x W^T + b for x [m, k] and nn.Linear weights, with a fused epilogue:
//   mode 0: y = acc + b
//   mode 1: y = gelu(acc + b)              (exact GELU through an erfc with 1.2e-7 relative error)
//   mode 2: y = ca * y + cb * (acc + b)    (residual with SReT's learnable coefficients, in place)
// With `norm` set (the width of the parts of a row's statistics), every row of x is normalised as
// it is loaded, (x - mean) * rstd with the row's statistics combined from their parts
// (shaders/lib/ln_row_stats.wgsl): LayerNorm fused into its consumer, its affine part folded
// into W and b at upload. With `stats_out` set, the kernel writes the statistics of the rows it
// stores for the next such layer, a part per 8-column tile (n a multiple of 8).
// The weights are stored transposed and padded, W^T [k, n_pad] with n_pad a multiple of 8, so
// the 8 output columns of a tile are two aligned vec4 loads per k. Each invocation keeps an
// 8 x 8 tile of y in registers: per k it loads 8 values of x and 2 vec4 of W for 64 multiply-adds.
// No shared memory or barriers: the kernel is portable, and on drivers where every load is
// expensive (software Vulkan) the ratio of arithmetic to loads is what counts. Consecutive
// invocations take consecutive column tiles, so their W loads are contiguous.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
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

const WG: u32 = 64u;

// epilogue() (the modes above), gelu() and row_stats() come from shaders/lib/,
// appended by src/kernels/catalogue.rs.

fn store(row: u32, col: u32, acc: f32, b: f32) {
    if (col >= p.n) {
        return;
    }
    let v = acc + b;
    let o = row * p.n + col;
    epilogue(o, v);
}

fn store_row(row: u32, n0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let b0 = vec4<f32>(bias[n0 / 4u]);
    let b1 = vec4<f32>(bias[n0 / 4u + 1u]);
    store(row, n0, lo.x, b0.x);
    store(row, n0 + 1u, lo.y, b0.y);
    store(row, n0 + 2u, lo.z, b0.z);
    store(row, n0 + 3u, lo.w, b0.w);
    store(row, n0 + 4u, hi.x, b1.x);
    store(row, n0 + 5u, hi.y, b1.y);
    store(row, n0 + 6u, hi.z, b1.z);
    store(row, n0 + 7u, hi.w, b1.w);
}

// The statistics of the 8 columns of each of the tile's rows, read back (this invocation's own
// writes, so no barrier): a loop where the stores are unrolled keeps the kernel quick for a
// shader compiler. The recorder asks for statistics where n is a multiple of 8.
fn row_stats_out(m0: u32, n0: u32) {
    for (var r = 0u; r < 8u; r++) {
        let row = m0 + r;
        if (row >= p.m) {
            break;
        }
        let o = row * p.n + n0;
        var sum = 0.0;
        for (var c = 0u; c < 8u; c++) {
            sum += f32(y[o + c]);
        }
        let mean = sum / 8.0;
        var sq = 0.0;
        for (var c = 0u; c < 8u; c++) {
            let d = f32(y[o + c]) - mean;
            sq += d * d;
        }
        part_out[row * (p.n / 8u) + n0 / 8u] = vec2<f32>(mean, sq);
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tiles_n = p.n_pad / 8u;
    let tiles_m = (p.m - p.m_base + 7u) / 8u;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= tiles_n * tiles_m) {
        return;
    }
    let n0 = (i % tiles_n) * 8u;
    let m0 = p.m_base + (i / tiles_n) * 8u;
    // Rows past the edge are clamped for loading and skipped when storing.
    let r0 = min(m0 + 0u, p.m - 1u) * p.k;
    let r1 = min(m0 + 1u, p.m - 1u) * p.k;
    let r2 = min(m0 + 2u, p.m - 1u) * p.k;
    let r3 = min(m0 + 3u, p.m - 1u) * p.k;
    let r4 = min(m0 + 4u, p.m - 1u) * p.k;
    let r5 = min(m0 + 5u, p.m - 1u) * p.k;
    let r6 = min(m0 + 6u, p.m - 1u) * p.k;
    let r7 = min(m0 + 7u, p.m - 1u) * p.k;
    // (mean, 1 / std) of each row, or the identity (0, 1) without normalisation.
    var s0 = vec2<f32>(0.0, 1.0);
    var s1 = s0;
    var s2 = s0;
    var s3 = s0;
    var s4 = s0;
    var s5 = s0;
    var s6 = s0;
    var s7 = s0;
    if (p.norm != 0u) {
        s0 = row_stats(min(m0 + 0u, p.m - 1u));
        s1 = row_stats(min(m0 + 1u, p.m - 1u));
        s2 = row_stats(min(m0 + 2u, p.m - 1u));
        s3 = row_stats(min(m0 + 3u, p.m - 1u));
        s4 = row_stats(min(m0 + 4u, p.m - 1u));
        s5 = row_stats(min(m0 + 5u, p.m - 1u));
        s6 = row_stats(min(m0 + 6u, p.m - 1u));
        s7 = row_stats(min(m0 + 7u, p.m - 1u));
    }
    var a0 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var b1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var b2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var b3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var b4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var b5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var b6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var b7 = vec4<f32>(0.0);
    let stride = p.n_pad / 4u;
    var wi = n0 / 4u;
    for (var kk = 0u; kk < p.k; kk++) {
        let w0 = vec4<f32>(wt[wi]);
        let w1 = vec4<f32>(wt[wi + 1u]);
        wi += stride;
        let x0 = (f32(x[r0 + kk]) - s0.x) * s0.y;
        a0 += x0 * w0;
        b0 += x0 * w1;
        let x1 = (f32(x[r1 + kk]) - s1.x) * s1.y;
        a1 += x1 * w0;
        b1 += x1 * w1;
        let x2 = (f32(x[r2 + kk]) - s2.x) * s2.y;
        a2 += x2 * w0;
        b2 += x2 * w1;
        let x3 = (f32(x[r3 + kk]) - s3.x) * s3.y;
        a3 += x3 * w0;
        b3 += x3 * w1;
        let x4 = (f32(x[r4 + kk]) - s4.x) * s4.y;
        a4 += x4 * w0;
        b4 += x4 * w1;
        let x5 = (f32(x[r5 + kk]) - s5.x) * s5.y;
        a5 += x5 * w0;
        b5 += x5 * w1;
        let x6 = (f32(x[r6 + kk]) - s6.x) * s6.y;
        a6 += x6 * w0;
        b6 += x6 * w1;
        let x7 = (f32(x[r7 + kk]) - s7.x) * s7.y;
        a7 += x7 * w0;
        b7 += x7 * w1;
    }
    store_row(m0 + 0u, n0, a0, b0);
    store_row(m0 + 1u, n0, a1, b1);
    store_row(m0 + 2u, n0, a2, b2);
    store_row(m0 + 3u, n0, a3, b3);
    store_row(m0 + 4u, n0, a4, b4);
    store_row(m0 + 5u, n0, a5, b5);
    store_row(m0 + 6u, n0, a6, b6);
    store_row(m0 + 7u, n0, a7, b7);
    if (p.stats_out != 0u && n0 + 8u <= p.n) {
        row_stats_out(m0, n0);
    }
}
