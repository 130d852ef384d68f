//! A host application's device that is too small, lacks a feature, belongs to another engine or
//! has been destroyed gets a clear [`Error`], never a panic: every limit the engine needs is
//! checked against `device.limits()` before anything is recorded.

use sret_tome::{EngineBuilder, Error, Precision};

/// One instance for the whole test binary, as in an application.
fn instance() -> &'static wgpu::Instance {
    static I: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    I.get_or_init(|| {
        {
            // GL only when asked: wgpu's EGL probe panics when test threads race on it.
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
            wgpu::Instance::new(desc)
        }
    })
}

/// A device on the test adapter with `limits` and `features` (of those the adapter has).
fn device(limits: wgpu::Limits, features: wgpu::Features) -> (wgpu::Device, wgpu::Queue) {
    let adapter = pollster::block_on(instance().request_adapter(&Default::default()))
        .expect("GPU tests need an adapter; on Linux without a GPU install mesa-vulkan-drivers");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application"),
        required_features: adapter.features() & features,
        required_limits: limits,
        ..Default::default()
    }))
    .expect("device")
}

fn build_on(device: &wgpu::Device, queue: &wgpu::Queue) -> sret_tome::Result<sret_tome::Engine> {
    EngineBuilder::new()
        .model("sret_t")
        .device(device, queue)
        .build()
}

#[test]
fn downlevel_limits_name_the_limit_and_both_values() {
    let (device, queue) = device(wgpu::Limits::downlevel_defaults(), wgpu::Features::empty());
    let err = build_on(&device, &queue).expect_err("four storage buffers cannot run the engine");
    eprintln!("downlevel_defaults: {err}");
    match &err {
        Error::DeviceLimit {
            limit,
            needed,
            have,
            ..
        } => {
            assert_eq!(*limit, "max_storage_buffers_per_shader_stage");
            assert_eq!(*have, 4);
            assert!(*needed > 4);
        }
        other => panic!("expected a DeviceLimit error, got {other}"),
    }
    assert!(err.to_string().contains("required_limits"), "{err}");
}

#[test]
fn webgl2_limits_say_the_device_has_no_compute() {
    let (device, queue) = device(
        wgpu::Limits::downlevel_webgl2_defaults(),
        wgpu::Features::empty(),
    );
    let err = build_on(&device, &queue).expect_err("a device without compute cannot run it");
    eprintln!("downlevel_webgl2_defaults: {err}");
    assert!(
        matches!(err, Error::DeviceLimit { .. }) && err.to_string().contains("compute"),
        "{err}"
    );
}

#[test]
fn a_binding_limit_below_one_image_names_the_binding_limit() {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 16,
        ..wgpu::Limits::default()
    };
    let (device, queue) = device(limits, wgpu::Features::empty());
    let err = build_on(&device, &queue).expect_err("64 KiB bindings cannot hold one image");
    eprintln!("64 KiB bindings: {err}");
    assert!(
        matches!(
            err,
            Error::DeviceLimit {
                limit: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn f16_on_a_device_without_it_blames_the_device_not_the_adapter() {
    let (device, queue) = device(wgpu::Limits::default(), wgpu::Features::empty());
    let err = EngineBuilder::new()
        .model("sret_t")
        .precision(Precision::F16)
        .device(&device, &queue)
        .build()
        .expect_err("f16 needs SHADER_F16");
    eprintln!("f16 without SHADER_F16: {err}");
    let text = err.to_string();
    assert!(matches!(err, Error::MissingFeature { .. }), "{text}");
    assert!(
        text.contains("application's GPU device") && text.contains("SHADER_F16"),
        "{text}"
    );
    assert!(!text.contains("adapter lacks"), "{text}");
}

#[test]
fn a_destroyed_application_device_gives_device_lost() {
    let (device, queue) = device(wgpu::Limits::default(), wgpu::Features::SUBGROUP);
    let engine = build_on(&device, &queue).expect("engine");
    let images = vec![0.25f32; engine.input_len()];
    engine.run(&images).expect("a forward before the loss");
    device.destroy();
    let err = engine
        .run(&images)
        .expect_err("a forward on a destroyed device must fail");
    eprintln!("after device.destroy(): {err}");
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
}

/// (A texture of another `wgpu::Instance` cannot be checked: wgpu itself panics on it.)
#[test]
fn a_texture_of_another_device_is_refused() {
    let (device, queue) = device(wgpu::Limits::default(), wgpu::Features::SUBGROUP);
    let (other, _) = device_pair();
    let engine = build_on(&device, &queue).expect("engine");
    let texture = other.create_texture(&wgpu::TextureDescriptor {
        label: Some("other device's frame"),
        size: wgpu::Extent3d {
            width: 64,
            height: 48,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    let err = engine
        .encode_forward(&mut encoder, &texture)
        .expect_err("a texture of another device cannot be read");
    eprintln!("texture of another device: {err}");
    assert!(matches!(err, Error::Gpu { .. }), "{err}");
    // The engine still works.
    let images = vec![0.25f32; engine.input_len()];
    engine
        .run(&images)
        .expect("a forward after the refused texture");
}

fn device_pair() -> (wgpu::Device, wgpu::Queue) {
    device(wgpu::Limits::default(), wgpu::Features::empty())
}
