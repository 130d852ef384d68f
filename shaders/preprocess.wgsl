// The ImageNet evaluation transform on the GPU, from an RGBA8/BGRA8 texture of any size:
// Resize(256) with Pillow's antialiased bilinear filter, CenterCrop(224), ToTensor, Normalize.
//
// One invocation per output pixel of the 224x224 crop. The resize is Pillow's separable
// resampler in its own fixed-point arithmetic: per axis, the taps of every output index (first
// input index, count, 22-bit weights) are computed on the CPU exactly as Pillow does
// (`preprocess::Coeffs`) and read from `coeffs`; the first pass is rounded to 8 bits before the
// second, in Pillow 13's order (`vertical_first`). An axis that keeps its size has one tap of
// weight 1.0 (Pillow skips that pass; the result is the same). Integer arithmetic makes the
// result bit-identical to the CPU path; only the final normalisation is floating point.
//
// Texels are read with textureLoad (mip 0, no sampler): the value is rounded back to its 8-bit
// code; sRGB views return linear values, which are re-encoded first (`srgb`). BGRA textures
// need nothing special: textureLoad returns (r, g, b, a) whatever the memory order. Alpha is
// dropped, as PIL's convert("RGB") drops it.

// Storage element type (f32, or f16 in the f16 variant; see src/kernels/pipelines.rs).
alias elem = f32;

struct Params {
    // Word offset and stride (2 + taps) of the horizontal table: per output column x,
    // coeffs[h_off + x * h_stride] = first input column, [+1] = tap count, [+2..] = weights.
    h_off: u32,
    h_stride: u32,
    // The same for the vertical table, per output row.
    v_off: u32,
    v_stride: u32,
    // 1: vertical pass first (Pillow 13's order for images that shrink much more in height).
    vertical_first: u32,
    // 1: the texture view is sRGB (textureLoad decodes to linear).
    srgb: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> coeffs: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<elem>;
@group(0) @binding(3) var src: texture_2d<f32>;

const SIZE: u32 = 224u;
const PRECISION_BITS: u32 = 22u;
// 1 << (PRECISION_BITS - 1): Pillow's rounding offset.
const HALF: i32 = 2097152;
const MEAN: vec3<f32> = vec3<f32>(0.485, 0.456, 0.406);
const STD: vec3<f32> = vec3<f32>(0.229, 0.224, 0.225);

fn to_srgb(l: vec3<f32>) -> vec3<f32> {
    let hi = 1.055 * pow(l, vec3<f32>(1.0 / 2.4)) - vec3<f32>(0.055);
    return select(12.92 * l, hi, l > vec3<f32>(0.0031308));
}

// The 8-bit code of texel (x, y), per channel.
fn texel(x: u32, y: u32) -> vec3<i32> {
    var v = clamp(textureLoad(src, vec2<u32>(x, y), 0).rgb, vec3<f32>(0.0), vec3<f32>(1.0));
    if (p.srgb != 0u) {
        v = to_srgb(v);
    }
    return vec3<i32>(round(v * 255.0));
}

fn clip8(acc: vec3<i32>) -> vec3<i32> {
    return clamp(acc >> vec3<u32>(PRECISION_BITS), vec3<i32>(0), vec3<i32>(255));
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = gid.x;
    let y = gid.y;
    if (x >= SIZE || y >= SIZE) {
        return;
    }
    let hb = p.h_off + x * p.h_stride;
    let vb = p.v_off + y * p.v_stride;
    let xmin = u32(coeffs[hb]);
    let xn = u32(coeffs[hb + 1u]);
    let ymin = u32(coeffs[vb]);
    let yn = u32(coeffs[vb + 1u]);
    var acc = vec3<i32>(HALF);
    if (p.vertical_first == 0u) {
        // Horizontal pass over each input row the vertical taps read, then the vertical pass.
        for (var j = 0u; j < yn; j++) {
            var row = vec3<i32>(HALF);
            for (var i = 0u; i < xn; i++) {
                row += texel(xmin + i, ymin + j) * coeffs[hb + 2u + i];
            }
            acc += clip8(row) * coeffs[vb + 2u + j];
        }
    } else {
        // Vertical pass over each input column the horizontal taps read, then horizontal.
        for (var i = 0u; i < xn; i++) {
            var col = vec3<i32>(HALF);
            for (var j = 0u; j < yn; j++) {
                col += texel(xmin + i, ymin + j) * coeffs[vb + 2u + j];
            }
            acc += clip8(col) * coeffs[hb + 2u + i];
        }
    }
    let v = (vec3<f32>(clip8(acc)) / 255.0 - MEAN) / STD;
    let plane = SIZE * SIZE;
    let o = y * SIZE + x;
    out[o] = elem(v.x);
    out[plane + o] = elem(v.y);
    out[2u * plane + o] = elem(v.z);
}
