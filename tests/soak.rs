//! 10,000 forwards in one process: wgpu's live objects stay exactly flat and the resident memory
//! does not grow (beyond allocator noise). The model is a small SReT configuration (32-pixel
//! images, one stage of two shared-block executions with sliced attention and a merge), so the
//! test exercises the whole engine path — upload, one submission, readback, arena reuse, token
//! merging — ten thousand times in well under a minute even on a software rasteriser.

use sret_tome::gpu::{AdapterChoice, Gpu};
use sret_tome::kernels::PipelineCache;
use sret_tome::model::Model;
use sret_tome::model::{synthetic_images, synthetic_weights};
use sret_tome::model::{ModelConfig, StageConfig};
use sret_tome::runtime::ForwardSpec;
use sret_tome::Schedule;

fn tiny() -> ModelConfig {
    ModelConfig {
        name: "tiny",
        arch: sret_tome::model::Arch::Sret,
        image_size: 32,
        stem_mid: 8,
        stages: vec![StageConfig {
            dim: 32,
            heads: 1,
            depth: 2,
            recursive_num: 1,
            groups1: 2,
            groups2: 1,
            mlp_hidden: 64,
            np_hidden: 32,
        }],
        num_classes: 10,
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn live(device: &wgpu::Device) -> [isize; 5] {
    let c = device.get_internal_counters().hal;
    [
        c.buffers.read(),
        c.bind_groups.read(),
        c.compute_pipelines.read(),
        c.texture_views.read(),
        c.command_encoders.read(),
    ]
}

#[test]
fn ten_thousand_forwards_in_flat_memory() {
    let gpu = Gpu::new(&AdapterChoice::default()).expect("adapter");
    let cfg = tiny();
    let model = Model {
        weights: synthetic_weights(&cfg, 7),
        cfg: cfg.clone(),
        synthetic: true,
    };
    // 16 tokens: the first execution merges 4 (a multiple of both group counts).
    let spec = ForwardSpec::new(&cfg, &Schedule::List(vec![4, 0]), 0)
        .unwrap()
        .with_batch(2);
    assert_eq!(spec.safe_r, vec![vec![4, 0]]);
    let engine = engine(&gpu, &PipelineCache::default(), &model, &spec).unwrap();
    let images = [synthetic_images(&cfg, 2, 1), synthetic_images(&cfg, 2, 2)];
    let first = [
        engine.forward(&images[0]).unwrap().logits,
        engine.forward(&images[1]).unwrap().logits,
    ];
    assert_ne!(first[0], first[1]);
    let objects = live(&gpu.device);
    let mut rss_after_warmup = 0;
    let start = std::time::Instant::now();
    for i in 0..10_000usize {
        let out = engine.forward(&images[i % 2]).unwrap();
        if i % 1000 == 999 {
            assert_eq!(out.logits, first[i % 2], "forward {i}");
            assert_eq!(live(&gpu.device), objects, "live objects after forward {i}");
        }
        if i == 499 {
            rss_after_warmup = resident_bytes();
        }
    }
    let grown = resident_bytes().saturating_sub(rss_after_warmup);
    eprintln!(
        "10,000 forwards in {:.1} s; resident memory grew {:.2} MB after the first 500; {} submissions",
        start.elapsed().as_secs_f64(),
        grown as f64 / 1e6,
        engine.stats().submissions
    );
    assert!(grown < 8 << 20, "resident memory grew {grown} bytes");
    assert_eq!(engine.stats().submissions, 10_002);
    assert_eq!(engine.stats().readbacks, 10_002);
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
