//! Every WGSL kernel, and every substitution of it a plan can ask for, parses and validates
//! with naga (the same front end wgpu uses), independently of any adapter; and every variant
//! translates to what wgpu's other backends feed their drivers (SPIR-V, MSL, HLSL, GLSL ES).

use sret_tome::kernels::catalogue::SG_WIDTHS;
use sret_tome::kernels::{Kernel, KernelKey};

/// Every kernel's text as a plan can make it: each catalogue entry at each of its tile heights
/// (kernels without one once), no substitution.
fn every_text() -> Vec<KernelKey> {
    Kernel::ALL
        .into_iter()
        .flat_map(|k| {
            let rows = std::iter::once(0).chain(k.tile_rows().iter().copied().filter(|&r| r != 32));
            rows.map(move |r| KernelKey::plain(k).with_rows(r))
        })
        .collect()
}

fn validate(key: KernelKey) {
    module_and_info(key);
}

fn module_and_info(key: KernelKey) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = key.wgsl();
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{key:?} does not parse:\n{}", e.emit_to_string(&src)));
    // Subgroup kernels are only used on devices with Features::SUBGROUP.
    let mut caps = naga::valid::Capabilities::empty();
    if key.kernel.needs().subgroups {
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
        .map(|info| (module, info))
        .unwrap_or_else(|e| panic!("{key:?} does not validate: {e:?}"))
}

#[test]
fn every_kernel_validates_as_written() {
    for key in every_text() {
        validate(key);
    }
}

#[test]
fn every_head_dim_substitution_validates() {
    // Head sizes of the published models (32 for SReT-T/LT, 42 for SReT-S) and a few others.
    let mut substituted = 0;
    for s in Kernel::ALL.into_iter().filter(|s| s.has_head_dim()) {
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
    for key in every_text() {
        let s = key.kernel;
        let key = key.with_f16(true);
        if !key.f16 {
            assert!(
                !s.source(0).contains("array<f32>") || s.name().starts_with("tome_"),
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

#[test]
fn every_subgroup_width_substitution_validates() {
    let sg: Vec<KernelKey> = every_text()
        .into_iter()
        .filter(|k| k.kernel.has_sg())
        .collect();
    let names: Vec<String> = sg.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        names,
        [
            "conv_sg:0",
            "linear_sg:0",
            "linear_sg:0:r8",
            "linear_sg:0:r16",
            "linear_sg:0:r40",
            "linear_sg:0:r48",
            "attention_sg:0",
            "tome_match_sg:0"
        ]
    );
    for s in Kernel::ALL {
        // Exactly the kernels with subgroup operations take the width, and they all do.
        assert_eq!(s.has_sg(), s.needs().subgroups, "{}", s.name());
    }
    for text in sg {
        for width in SG_WIDTHS {
            for f16 in [false, true] {
                let key = KernelKey { sg: width, ..text }.with_f16(f16);
                let src = key.wgsl();
                assert!(src.contains(&format!("const SG: u32 = {width}u;")));
                assert!(src.contains("@workgroup_size(SG)"));
                validate(key);
            }
        }
    }
}

/// Every variant a plan can ask for: each shader as written, with each head size it takes, in
/// f32 and (where it has one) f16 storage, and each `*_sg` kernel at every subgroup width.
fn every_variant() -> Vec<KernelKey> {
    let mut keys = Vec::new();
    for text in every_text() {
        let s = text.kernel;
        let mut base = vec![text];
        if s.has_head_dim() {
            base = [8, 32, 42, 64, 96]
                .map(|hd| KernelKey::with_head_dim(s, hd))
                .to_vec();
        }
        if s.has_sg() {
            base = SG_WIDTHS.map(|w| KernelKey { sg: w, ..text }).to_vec();
        }
        for k in base {
            keys.push(k);
            if k.with_f16(true).f16 {
                keys.push(k.with_f16(true));
            }
        }
    }
    keys
}

/// wgpu's backends translate WGSL with naga; a kernel that validates can still fail there (a
/// construct a target language lacks). Every variant goes through every writer with the
/// language level wgpu asks for where the feature it uses exists: SPIR-V 1.3 (subgroup
/// operations; Vulkan 1.1), MSL 2.4, HLSL shader model 6.2 (wave intrinsics from 6.0, 16-bit
/// types from 6.2), GLSL ES 3.1 compute (wgpu's GL backend). The GL backend never enables
/// `SHADER_F16` and naga's GLSL writer has no f16 (the test checks that it still refuses), so
/// only f32 variants must translate to GLSL; it does express subgroup operations
/// (`GL_KHR_shader_subgroup`), so the `*_sg` kernels at every width are translated too.
#[test]
fn every_variant_translates_to_every_backend() {
    let keys = every_variant();
    assert!(keys.len() > 100, "only {} variants", keys.len());
    let mut failures = Vec::new();
    for key in &keys {
        let (module, info) = module_and_info(*key);
        let spv = naga::back::spv::Options {
            lang_version: (1, 3),
            ..Default::default()
        };
        let spv_pipe = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
        };
        if let Err(e) = naga::back::spv::write_vec(&module, &info, &spv, Some(&spv_pipe)) {
            failures.push(format!("{key:?} SPIR-V: {e}"));
        }
        let msl = naga::back::msl::Options {
            lang_version: (2, 4),
            ..Default::default()
        };
        if let Err(e) = naga::back::msl::write_string(&module, &info, &msl, &Default::default()) {
            failures.push(format!("{key:?} MSL: {e}"));
        }
        let hlsl = naga::back::hlsl::Options {
            shader_model: naga::back::hlsl::ShaderModel::V6_2,
            ..Default::default()
        };
        let hlsl_pipe = Default::default();
        let mut out = String::new();
        if let Err(e) =
            naga::back::hlsl::Writer::new(&mut out, &hlsl, &hlsl_pipe).write(&module, &info, None)
        {
            failures.push(format!("{key:?} HLSL: {e}"));
        }
        let glsl = naga::back::glsl::Options {
            version: naga::back::glsl::Version::new_gles(310),
            ..Default::default()
        };
        let glsl_pipe = naga::back::glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
            multiview: None,
        };
        let mut out = String::new();
        let written = naga::back::glsl::Writer::new(
            &mut out,
            &module,
            &info,
            &glsl,
            &glsl_pipe,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write());
        match written {
            // Should naga's GLSL writer learn f16, this says so (and the f16 variants become
            // candidates for GL).
            Ok(_) if key.f16 => failures.push(format!("{key:?} GLSL ES 3.1: f16 now translates")),
            Err(e) if !key.f16 => failures.push(format!("{key:?} GLSL ES 3.1: {e}")),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} translations failed:\n{}",
        failures.len(),
        keys.len() * 4,
        failures.join("\n")
    );
}

/// The generated kernels' checked-in renderings (`shaders/NAME.wgsl`, kept for reading) are
/// exactly what their Rust generators make (`src/kernels/generate/`). With
/// `SRET_TOME_WRITE_GENERATED=1` the test rewrites them instead, after a generator changed.
#[test]
fn generated_shaders_match_their_generators() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let write = std::env::var_os("SRET_TOME_WRITE_GENERATED").is_some();
    let generated: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|k| k.is_generated())
        .collect();
    assert_eq!(
        generated,
        [
            Kernel::ConvSg,
            Kernel::LinearSg,
            Kernel::AttentionSg,
            Kernel::TomeMatchSg
        ]
    );
    let mut stale = Vec::new();
    for k in generated {
        let file = root.join(format!("{}.wgsl", k.name()));
        let want = k.text(0);
        if write {
            std::fs::write(&file, &want).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_ref() != Some(&want) {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from their generators (SRET_TOME_WRITE_GENERATED=1 rewrites them)"
    );
}

/// Every kernel's uniform block (`@binding(0)`, `struct Params`) is exactly its Rust twin in
/// `sret_tome::kernels::params` that its catalogue entry names: the same member names in the
/// same order, at the same byte offsets, with the same scalar types, and the same size.
#[test]
fn uniform_blocks_match_their_rust_structs() {
    use naga::{AddressSpace, ScalarKind as N, TypeInner};
    use sret_tome::kernels::uniform::ScalarKind;
    for s in Kernel::ALL {
        let layout = s.params();
        let (module, _) = module_and_info(KernelKey::plain(s));
        let uniform = module
            .global_variables
            .iter()
            .map(|(_, v)| v)
            .find(|v| {
                v.space == AddressSpace::Uniform
                    && v.binding
                        .as_ref()
                        .is_some_and(|b| b.group == 0 && b.binding == 0)
            })
            .unwrap_or_else(|| panic!("{} has no uniform at binding 0", s.name()));
        let ty = &module.types[uniform.ty];
        let TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{}: binding 0 is not a struct", s.name());
        };
        let wgsl: Vec<(String, usize, ScalarKind)> = members
            .iter()
            .map(|m| {
                let TypeInner::Scalar(scalar) = module.types[m.ty].inner else {
                    panic!("{}: member {:?} is not a scalar", s.name(), m.name);
                };
                assert_eq!(scalar.width, 4, "{}: {:?} is not 32-bit", s.name(), m.name);
                let kind = match scalar.kind {
                    N::Uint => ScalarKind::U32,
                    N::Sint => ScalarKind::I32,
                    N::Float => ScalarKind::F32,
                    other => panic!("{}: {:?} is {other:?}", s.name(), m.name),
                };
                (m.name.clone().unwrap_or_default(), m.offset as usize, kind)
            })
            .collect();
        let rust: Vec<(String, usize, ScalarKind)> = layout
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.offset, f.kind))
            .collect();
        assert_eq!(
            wgsl,
            rust,
            "{}'s struct Params differs from {}",
            s.name(),
            layout.rust
        );
        assert_eq!(
            *span as usize,
            layout.size,
            "{} vs {}",
            s.name(),
            layout.rust
        );
    }
}

/// Shared helpers are defined once: no kernel file under `shaders/` defines a function of
/// `shaders/lib/`, and every kernel that calls one gets the helper appended.
#[test]
fn shared_helpers_are_defined_once() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let fns = |src: &str| -> Vec<String> {
        src.lines()
            .filter_map(|l| l.strip_prefix("fn "))
            .filter_map(|l| l.split('(').next())
            .map(str::to_string)
            .collect()
    };
    let mut helpers = Vec::new();
    for entry in std::fs::read_dir(root.join("lib")).unwrap() {
        helpers.extend(fns(&std::fs::read_to_string(entry.unwrap().path()).unwrap()));
    }
    assert!(helpers.contains(&"gelu".to_string()), "{helpers:?}");
    assert!(helpers.contains(&"epilogue".to_string()), "{helpers:?}");
    for s in Kernel::ALL {
        let file = std::fs::read_to_string(root.join(format!("{}.wgsl", s.name()))).unwrap();
        for h in &helpers {
            assert!(
                !fns(&file).contains(h),
                "{}.wgsl defines {h}, which shaders/lib/ already does",
                s.name()
            );
            if file.contains(&format!("{h}(")) {
                assert!(
                    fns(s.source(0)).contains(h),
                    "{} calls {h} without its helper",
                    s.name()
                );
            }
        }
    }
}

/// The catalogue is the list of kernels: every `.wgsl` file under `shaders/` is an entry's
/// (its text, or a generated kernel's rendering), every helper under `shaders/lib/` is appended
/// to some entry, and every entry's file exists.
#[test]
fn every_shader_file_is_in_the_catalogue() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let stems = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().ok()?;
                name.strip_suffix(".wgsl").map(str::to_string)
            })
            .collect();
        v.sort();
        v
    };
    let files = stems(&root);
    let mut names: Vec<String> = Kernel::ALL.iter().map(|k| k.name().to_string()).collect();
    names.sort();
    let missing: Vec<&String> = files.iter().filter(|f| !names.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "shaders/{missing:?}.wgsl have no entry in src/kernels/catalogue.rs"
    );
    let absent: Vec<&String> = names.iter().filter(|n| !files.contains(n)).collect();
    assert!(
        absent.is_empty(),
        "catalogue entries without a file: {absent:?}"
    );
    for lib in stems(&root.join("lib")) {
        let text = std::fs::read_to_string(root.join("lib").join(format!("{lib}.wgsl"))).unwrap();
        assert!(
            Kernel::ALL.iter().any(|k| k.source(0).contains(&text)),
            "shaders/lib/{lib}.wgsl is appended to no kernel"
        );
    }
}

/// The workgroup memory each catalogue entry declares (what the planner checks against the
/// device's limit before choosing the kernel) is what its source declares, as naga lays it out.
#[test]
fn declared_workgroup_memory_is_what_the_source_declares() {
    for key in every_text() {
        let (module, _) = module_and_info(key);
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
            .sum();
        assert_eq!(bytes, key.kernel.needs().workgroup_bytes, "{key}");
    }
}
