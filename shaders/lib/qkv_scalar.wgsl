// Reads of `qkv` for the matching metric (shaders/lib/tome_metric_of.wgsl and the subgroup
// matcher's head means), for kernels that bind it as `array<elem>`; shaders/lib/qkv_vec4.wgsl is
// the same for `array<vec4<elem>>`. `i` counts elements; qkv4_at's is a multiple of 4.

fn qkv_at(i: u32) -> f32 {
    return f32(qkv[i]);
}

fn qkv4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(qkv[i]), f32(qkv[i + 1u]), f32(qkv[i + 2u]), f32(qkv[i + 3u]));
}
