// Reads of `qkv` for the matching metric, for kernels that bind it as `array<vec4<elem>>` (the
// subgroup attention, which runs the subgroup matcher): shaders/lib/qkv_scalar.wgsl's
// functions, the same values.

fn qkv_at(i: u32) -> f32 {
    return f32(qkv[i / 4u][i % 4u]);
}

fn qkv4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(qkv[i / 4u]);
}
