//! The GPU as a source of faults: a validation error is captured by the engine's error scopes
//! and returned as an error naming what was being done (wgpu's default handler would panic),
//! and a device lost between forwards gives an error, not a hang or a panic.

use sret_tome::gpu::{AdapterChoice, Gpu};
use sret_tome::kernels::PipelineCache;
use sret_tome::model::synthetic_images;
use sret_tome::model::Model;
use sret_tome::runtime::ForwardSpec;
use sret_tome::tome::DEFAULT_SEED;
use sret_tome::{Error, Schedule};

#[test]
fn validation_errors_are_returned_not_raised() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let err = gpu
        .scoped("making a bad buffer", || {
            // MAP_READ may only be combined with COPY_DST: a validation error.
            let _ = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bad"),
                size: 64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            Ok(())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Gpu { .. }) && msg.contains("making a bad buffer"),
        "{msg}"
    );
    // The device is still usable afterwards.
    gpu.scoped("a good buffer", || {
        let _ = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("good"),
            size: 64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_lost_device_is_an_error_not_a_hang() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let model = Model::synthetic("sret_t_distill").unwrap();
    let schedule: Schedule = "exp:0.25,0".parse().unwrap();
    let plan = ForwardSpec::new(&model.cfg, &schedule, DEFAULT_SEED).unwrap();
    let engine = engine(
        &gpu,
        &PipelineCache::default(),
        &model,
        &plan.clone().with_batch(1),
    )
    .unwrap();
    let images = synthetic_images(&model.cfg, 1, 1);
    engine.forward(&images).unwrap();
    gpu.device.destroy();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(engine.forward(&images).map(|_| ()));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a forward on a lost device must return, not hang");
    let err = result.expect_err("a forward on a destroyed device must fail");
    eprintln!("forward after device loss: {err}");
    assert!(
        matches!(err, Error::DeviceLost { .. }) && err.to_string().contains("device was lost"),
        "{err}"
    );
}

#[test]
fn a_batch_too_large_for_the_device_says_how_large_it_can_be() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let model = Model::synthetic("sret_t_distill").unwrap();
    let plan = ForwardSpec::new(&model.cfg, &"none".parse().unwrap(), DEFAULT_SEED).unwrap();
    let Err(err) = engine(
        &gpu,
        &PipelineCache::default(),
        &model,
        &plan.clone().with_batch(100_000),
    ) else {
        panic!("100,000 images do not fit one buffer");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("batch") && msg.contains("max_buffer_size") && msg.contains("at most"),
        "{msg}"
    );
}

#[test]
fn a_missing_adapter_or_backend_is_a_clear_error() {
    let err = Gpu::new(&AdapterChoice {
        backends: None,
        index: Some(999),
    })
    .expect_err("there is no adapter 999");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::NoAdapter { .. }) && msg.contains("999") && msg.contains("adapters"),
        "{msg}"
    );
    let err = Gpu::new(&AdapterChoice {
        backends: Some("glide".into()),
        index: None,
    })
    .expect_err("no such backend");
    assert!(err.to_string().contains("glide"), "{err}");
}

/// Weights built in code (the library's `EngineBuilder::with_model`) that do not fit their
/// model are refused with the tensor named, never a panic while planning.
#[test]
fn weights_that_do_not_fit_the_model_are_an_error() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let cache = PipelineCache::default();
    type Breakage = fn(&mut Model);
    let cases: [(&str, Breakage, &str); 4] = [
        (
            "sret_t",
            |m| {
                m.weights.stages[1].blocks[0].qkv.weight.pop();
            },
            "transformers.1.blocks.0.attn.qkv.weight",
        ),
        (
            "sret_t",
            |m| m.weights.stages[2].blocks.truncate(1),
            "stage 2",
        ),
        (
            "deit_tiny_distill",
            |m| m.weights.lead_tokens.clear(),
            "lead tokens",
        ),
        (
            "pit_ti_distill",
            |m| m.weights.stages[0].pool_fc = None,
            "stage 0 pool",
        ),
    ];
    for (name, break_it, needle) in cases {
        let mut model = Model::synthetic(name).unwrap();
        break_it(&mut model);
        let plan = ForwardSpec::new(&model.cfg, &"none".parse().unwrap(), 0).unwrap();
        let err = match engine(&gpu, &cache, &model, &plan.clone().with_batch(1)) {
            Ok(_) => panic!("{name}: mismatched weights were accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{name}: {err}");
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

/// NaN pixels give NaN logits for their image, as PyTorch does (the stem's ReLU keeps NaN; a
/// `max(v, 0.0)` would have turned it into 0 and hidden it), and leave the other image alone.
#[test]
fn nan_pixels_propagate_to_their_images_logits() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let model = Model::synthetic("sret_t_distill").unwrap();
    let spec = ForwardSpec::new(&model.cfg, &"none".parse().unwrap(), DEFAULT_SEED)
        .unwrap()
        .with_batch(2);
    let engine = engine(&gpu, &PipelineCache::default(), &model, &spec).unwrap();
    let mut images = synthetic_images(&model.cfg, 2, 3);
    for v in &mut images[1000..1010] {
        *v = f32::NAN;
    }
    let logits = engine.forward(&images).unwrap().logits;
    let classes = model.cfg.num_classes;
    let nan = logits[..classes].iter().filter(|v| v.is_nan()).count();
    assert!(nan > 0, "no NaN in the logits of the image with NaN pixels");
    assert!(
        logits[classes..].iter().all(|v| v.is_finite()),
        "NaN leaked into the other image's logits"
    );
}
