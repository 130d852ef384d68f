//! Every WGSL kernel, and every substitution of it a plan can ask for, parses and validates
//! with naga (the same front end wgpu uses), independently of any adapter.

use sret_tome::gpu::{KernelKey, Shader};

fn validate(key: KernelKey) {
    let src = key.wgsl();
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{key:?} does not parse:\n{}", e.emit_to_string(&src)));
    // Subgroup kernels are only used on devices with Features::SUBGROUP.
    let mut caps = naga::valid::Capabilities::empty();
    if key.shader.needs_subgroups() {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    // f16 variants are only used on devices with Features::SHADER_F16.
    if key.f16 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{key:?} does not validate: {e:?}"));
}

#[test]
fn every_shader_validates_as_written() {
    for s in Shader::ALL {
        validate(KernelKey::plain(s));
    }
}

#[test]
fn every_head_dim_substitution_validates() {
    // Head sizes of the published models (32 for SReT-T/LT, 42 for SReT-S) and a few others.
    let mut substituted = 0;
    for s in Shader::ALL.into_iter().filter(|s| s.has_head_dim()) {
        for hd in [8, 32, 42, 64, 96] {
            let key = KernelKey::with_head_dim(s, hd);
            assert!(key
                .wgsl()
                .contains(&format!("const HEAD_DIM: u32 = {hd}u;")));
            validate(key);
            substituted += 1;
        }
    }
    assert!(
        substituted >= 15,
        "expected several shaders to take HEAD_DIM"
    );
}

#[test]
fn every_f16_variant_validates() {
    // Every shader that moves activations or weights has an f16 variant; the matching and
    // index kernels (32-bit scores, masses and indices only) have none.
    let mut variants = 0;
    for s in Shader::ALL {
        let key = KernelKey::plain(s).with_f16(true);
        if !key.f16 {
            assert!(
                !s.source().contains("array<f32>") || s.name().starts_with("tome_"),
                "{} stores f32 activations but has no `alias elem = f32;` line",
                s.name()
            );
            continue;
        }
        let src = key.wgsl();
        assert!(src.contains("enable f16;") && src.contains("alias elem = f16;"));
        validate(key);
        if s.has_head_dim() {
            for hd in [8, 42, 64] {
                validate(KernelKey::with_head_dim(s, hd).with_f16(true));
            }
        }
        variants += 1;
    }
    assert!(
        variants >= 17,
        "only {variants} shaders have an f16 variant"
    );
}
