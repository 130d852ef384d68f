// Direct 2-D convolution (zero padding, nn.Conv2d groups), bias, optional ReLU and positional
// embedding. One invocation computes 4 consecutive output channels of one output pixel, so an
// input value loaded once feeds 4 accumulators when groups == 1 (the stem).
// Layouts: NCHW, or "tokens" [batch, h*w, channels] for the transformer side, or as input a
// merged token sequence read through the stage's unmerge map (gather.wgsl folded into the
// loads: the pooling reads the merged tokens where the restored grid would hold them).
// Bands: a dispatch may compute only output rows [oy0, oy0 + oh_run), and either buffer may hold
// only a band of rows (input rows from iy_off, h_buf of them; output rows from oy_off, oh_buf of
// them). Padding is decided on the full logical image. The stem uses this to run conv1 and conv2
// band by band, so conv1's large output never exists whole.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, k: u32,
    stride: u32, pad: u32, groups: u32,
    // bit 0: ReLU; bit 1: input in token layout; bit 2: output in token layout;
    // bit 3: add pos[cout, oh, ow] after the activation; bit 4: the input is a merged sequence
    // of n_in tokens, read at grid positions through the unmerge map.
    flags: u32,
    h_buf: u32, iy_off: u32,
    oy0: u32, oh_run: u32,
    oh_buf: u32, oy_off: u32,
    n_in: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> wt: array<elem>;
@group(0) @binding(3) var<storage, read> bias: array<elem>;
@group(0) @binding(4) var<storage, read> pos: array<elem>;
@group(0) @binding(5) var<storage, read_write> y: array<elem>;
// Grid position -> token of the merged sequence, per image (read with flag bit 4).
@group(0) @binding(6) var<storage, read> unmerge_map: array<u32>;

const WG: u32 = 64u;
const CT: u32 = 4u;

// iy is a logical row; the buffer holds rows from iy_off (all of them when unmerging).
fn x_at(b: u32, c: u32, iy: u32, ix: u32) -> f32 {
    if ((p.flags & 16u) != 0u) {
        let t = unmerge_map[(b * p.h + iy) * p.w + ix];
        return f32(x[(b * p.n_in + t) * p.cin + c]);
    }
    let r = iy - p.iy_off;
    if ((p.flags & 2u) != 0u) {
        return f32(x[(b * p.h_buf * p.w + r * p.w + ix) * p.cin + c]);
    }
    return f32(x[((b * p.cin + c) * p.h_buf + r) * p.w + ix]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.batch * p.oh_run * p.ow;
    let tiles = (p.cout + CT - 1u) / CT;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= pixels * tiles) {
        return;
    }
    // Consecutive invocations take consecutive pixels of the same channel tile.
    let pix = i % pixels;
    let co0 = (i / pixels) * CT;
    let ox = pix % p.ow;
    let oy = p.oy0 + (pix / p.ow) % p.oh_run;
    let b = pix / (p.ow * p.oh_run);
    let cin_g = p.cin / p.groups;
    let cout_g = p.cout / p.groups;
    let kk = p.k * p.k;

    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let tap = ky * p.k + kx;
            if (p.groups == 1u) {
                for (var ci = 0u; ci < p.cin; ci++) {
                    let v = x_at(b, ci, u32(iy), u32(ix));
                    for (var j = 0u; j < CT; j++) {
                        let co = min(co0 + j, p.cout - 1u);
                        acc[j] += v * f32(wt[(co * cin_g + ci) * kk + tap]);
                    }
                }
            } else {
                for (var j = 0u; j < CT; j++) {
                    let co = min(co0 + j, p.cout - 1u);
                    let g = co / cout_g;
                    for (var cl = 0u; cl < cin_g; cl++) {
                        let v = x_at(b, g * cin_g + cl, u32(iy), u32(ix));
                        acc[j] += v * f32(wt[(co * cin_g + cl) * kk + tap]);
                    }
                }
            }
        }
    }
    for (var j = 0u; j < CT; j++) {
        let co = co0 + j;
        if (co >= p.cout) {
            break;
        }
        var v = acc[j] + f32(bias[co]);
        if ((p.flags & 1u) != 0u) {
            // ReLU as torch.relu: NaN stays NaN (max(v, 0.0) may return 0 for NaN).
            v = select(v, 0.0, v < 0.0);
        }
        if ((p.flags & 8u) != 0u) {
            v += f32(pos[(co * p.oh + oy) * p.ow + ox]);
        }
        let r = oy - p.oy_off;
        if ((p.flags & 4u) != 0u) {
            y[(b * p.oh_buf * p.ow + r * p.ow + ox) * p.cout + co] = elem(v);
        } else {
            y[((b * p.cout + co) * p.oh_buf + r) * p.ow + ox] = elem(v);
        }
    }
}
