//! After the first forward, a forward creates no pipeline, bind group, buffer, shader module,
//! texture view or query set, and makes exactly one submission and one readback: checked with
//! wgpu's own live-object counters (its `counters` feature) on a device of this test's own, both
//! for the planned engine and for the library API's host-slice and texture inputs, including
//! while a forward is in flight (where a staging buffer would show).

use sret_tome::gpu::{AdapterChoice, Gpu};
use sret_tome::kernels::PipelineCache;
use sret_tome::model::synthetic_images;
use sret_tome::model::Model;
use sret_tome::runtime::ForwardSpec;
use sret_tome::tome::DEFAULT_SEED;
use sret_tome::{Engine, Schedule};

/// Live objects of the kinds a forward must not create.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Live {
    buffers: isize,
    bind_groups: isize,
    compute_pipelines: isize,
    shader_modules: isize,
    texture_views: isize,
    query_sets: isize,
}

fn live(device: &wgpu::Device) -> Live {
    let c = device.get_internal_counters().hal;
    Live {
        buffers: c.buffers.read(),
        bind_groups: c.bind_groups.read(),
        compute_pipelines: c.compute_pipelines.read(),
        shader_modules: c.shader_modules.read(),
        texture_views: c.texture_views.read(),
        query_sets: c.query_sets.read(),
    }
}

#[test]
fn steady_state_forwards_create_nothing() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let before = live(&gpu.device);
    assert!(
        before.buffers >= 0 && live(&gpu.device) == before,
        "counters must be readable"
    );

    // The planned engine: one submission and one readback per forward.
    let model = Model::synthetic("sret_t_distill").unwrap();
    let schedule: Schedule = "exp:0.25,0".parse().unwrap();
    let plan = ForwardSpec::new(&model.cfg, &schedule, DEFAULT_SEED).unwrap();
    let cache = PipelineCache::default();
    let engine = engine(&gpu, &cache, &model, &plan.clone().with_batch(1)).unwrap();
    let built = live(&gpu.device);
    assert!(
        built.buffers > before.buffers && built.bind_groups > before.bind_groups,
        "the counters see the engine's objects: {before:?} -> {built:?}"
    );
    let first = engine.forward(&synthetic_images(&model.cfg, 1, 1)).unwrap();
    let steady = live(&gpu.device);
    let stats = engine.stats();
    assert_eq!((stats.submissions, stats.readbacks), (1, 1));
    for i in 0..3u64 {
        let images = synthetic_images(&model.cfg, 1, 1 + i % 2);
        let out = engine.forward(&images).unwrap();
        assert_eq!(live(&gpu.device), steady, "planned forward {}", i + 2);
        let stats = engine.stats();
        assert_eq!(
            (stats.submissions, stats.readbacks),
            (i + 2, i + 2),
            "one submission and one readback per forward"
        );
        if i % 2 == 0 {
            assert_eq!(out.logits, first.logits, "same images, same logits");
        } else {
            assert_ne!(out.logits, first.logits, "the new images were used");
        }
    }
    drop(engine);

    // The library API on the same device: host slices and textures.
    let api = Engine::builder()
        .gpu(&gpu)
        .pipeline_cache(&cache)
        .synthetic_weights()
        .schedule(schedule)
        .build()
        .unwrap();
    let host = synthetic_images(&model.cfg, 1, 3);
    let want = api.run(&host).unwrap();
    api.run(&host).unwrap();
    let steady = live(&gpu.device);
    for i in 0..3 {
        let pending = api.forward_async(&host).unwrap();
        let in_flight = live(&gpu.device);
        let got = pending.wait().unwrap();
        assert_eq!(in_flight, steady, "host forward {i} in flight");
        assert_eq!(live(&gpu.device), steady, "host forward {i} done");
        assert_eq!(got.as_slice(), want.as_slice());
    }

    let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: 300,
            height: 260,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let texels: Vec<u8> = (0..300 * 260 * 4).map(|i| (i * 7 % 251) as u8).collect();
    gpu.queue.write_texture(
        texture.as_image_copy(),
        &texels,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(300 * 4),
            rows_per_image: None,
        },
        texture.size(),
    );
    let want = api.run(&texture).unwrap();
    let steady = live(&gpu.device);
    for i in 0..3 {
        let pending = api.forward_async(&texture).unwrap();
        let in_flight = live(&gpu.device);
        let got = pending.wait().unwrap();
        assert_eq!(in_flight, steady, "texture forward {i} in flight");
        assert_eq!(live(&gpu.device), steady, "texture forward {i} done");
        assert_eq!(got.as_slice(), want.as_slice());
    }
}

/// The engine of `model` for `spec` on `gpu`, through the public builder.
fn engine(
    gpu: &sret_tome::gpu::Gpu,
    cache: &sret_tome::PipelineCache,
    model: &sret_tome::Model,
    spec: &ForwardSpec,
) -> sret_tome::Result<sret_tome::Engine> {
    sret_tome::EngineBuilder::new()
        .gpu(gpu)
        .pipeline_cache(cache)
        .with_model(model.clone())
        .spec(spec)
        .build()
}
