// Dense (groups = 1) 2-D convolution with zero padding, bias, ReLU and optional positional
// embedding, for the stem. One invocation computes 16 output channels of one output pixel:
// the weights are stored transposed, W^T [cin * k * k, cout_pad] (cout_pad a multiple of 16), so
// per input value it loads 4 vec4 of weights for 16 multiply-adds. Input NCHW; output NCHW or
// tokens [batch, h*w, cout]. Row bands as in conv.wgsl (same parameter block).

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, k: u32,
    stride: u32, pad: u32, groups: u32,
    // bit 0: ReLU; bit 1: unused (input is NCHW); bit 2: output in token layout;
    // bit 3: add pos[cout, oh, ow] after the activation.
    flags: u32,
    h_buf: u32, iy_off: u32,
    oy0: u32, oh_run: u32,
    oh_buf: u32, oy_off: u32,
    // unused (the input is NCHW): see conv.wgsl.
    n_in: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read> bias: array<elem>;
@group(0) @binding(4) var<storage, read> pos: array<elem>;
@group(0) @binding(5) var<storage, read_write> y: array<elem>;

const WG: u32 = 64u;

fn emit(b: u32, co: u32, oy: u32, ox: u32, acc: f32) {
    if (co >= p.cout) {
        return;
    }
    var v = acc + f32(bias[co]);
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

fn emit4(b: u32, co: u32, oy: u32, ox: u32, a: vec4<f32>) {
    emit(b, co, oy, ox, a.x);
    emit(b, co + 1u, oy, ox, a.y);
    emit(b, co + 2u, oy, ox, a.z);
    emit(b, co + 3u, oy, ox, a.w);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.batch * p.oh_run * p.ow;
    let cout_pad = (p.cout + 15u) / 16u * 16u;
    let tiles = cout_pad / 16u;
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= pixels * tiles) {
        return;
    }
    let pix = i % pixels;
    let co0 = (i / pixels) * 16u;
    let ox = pix % p.ow;
    let oy = p.oy0 + (pix / p.ow) % p.oh_run;
    let b = pix / (p.ow * p.oh_run);
    let row_vec4 = cout_pad / 4u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var ci = 0u; ci < p.cin; ci++) {
        let plane = (b * p.cin + ci) * p.h_buf;
        for (var ky = 0u; ky < p.k; ky++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            let rowbase = (plane + u32(iy) - p.iy_off) * p.w;
            for (var kx = 0u; kx < p.k; kx++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                let v = f32(x[rowbase + u32(ix)]);
                let wi = ((ci * p.k + ky) * p.k + kx) * row_vec4 + co0 / 4u;
                a0 += v * vec4<f32>(wt[wi]);
                a1 += v * vec4<f32>(wt[wi + 1u]);
                a2 += v * vec4<f32>(wt[wi + 2u]);
                a3 += v * vec4<f32>(wt[wi + 3u]);
            }
        }
    }
    emit4(b, co0, oy, ox, a0);
    emit4(b, co0 + 4u, oy, ox, a1);
    emit4(b, co0 + 8u, oy, ox, a2);
    emit4(b, co0 + 12u, oy, ox, a3);
}
