//! timm's VisionTransformer family (DeiT-S, DeiT-S-Distilled, ViT-B/16, ViT-S/16-384, ViT-B/32,
//! MAE-style ViT-B with `global_pool='avg'`, ViT-L/16-384 at 577 tokens x 4096 hidden) against timm 1.0.31 and the official
//! ToMe patch (`tome.patch.timm`; `tome.patch.mae` for the average-pooled model), at reduced
//! depth with the real widths, patch and image sizes (timm builds the identical architecture from
//! `create_model(name, depth=...)`), for the engine's synthetic weights and
//! `synthetic_images(cfg, 2, seed 5)`. Fixtures made by `tools/make_vit_fixtures.sh`.
//!
//! The CPU twin must reproduce each fixture's logits (relative L2 <= 1e-4) and the engine both
//! the fixture and the twin (relative L2 <= 1e-4, same top-1). A merged case may differ only
//! where ToMe's own scores make a decision a near-tie (the fixture's `min_gap`, the smallest
//! margin of any merge decision, below 1e-5); none of the committed cases is one.

mod common;

use common::*;
use sret_tome::model::{synthetic_images, Model, ModelConfig};
use sret_tome::reference::{self as cpu, ReferenceSpec};
use sret_tome::runtime::ForwardSpec;

/// `(fixture tag, model spec, schedules)`; keep in step with tools/make_vit_fixtures.sh.
const CASES: [(&str, &str, &[&str]); 7] = [
    (
        "deit_s_d3",
        "deit_small_patch16_224@depth=3",
        &["none", "constant:13", "tome:16,-1"],
    ),
    (
        "deit_s_dist_d2",
        "deit_small_distilled_patch16_224@depth=2",
        &["none", "constant:13"],
    ),
    (
        "vit_b_d2",
        "vit_base_patch16_224@depth=2",
        &["none", "constant:16", "list:40,8"],
    ),
    (
        "vit_s384_d2",
        "vit_small_patch16_384@depth=2",
        &["none", "constant:48", "tome:64,-0.5"],
    ),
    (
        "vit_b32_d2",
        "vit_base_patch32_224@depth=2",
        &["none", "constant:8"],
    ),
    (
        "mae_b_d2",
        "vit_base_patch16_224@depth=2,global_pool=avg",
        &["none", "constant:16"],
    ),
    (
        "vit_l384_d2",
        "vit_large_patch16_384@depth=2",
        &["none", "constant:100"],
    ),
];

/// Engine and twin against timm / ToMe.
const TOL: f64 = 1e-4;
/// Below this margin a merge decision is a near-tie that rounding may flip.
const NEAR_TIE: f32 = 1e-5;

struct Fixture {
    logits: Vec<f32>,
    min_gap: Option<f32>,
}

fn floats(st: &safetensors::SafeTensors, name: &str) -> Option<Vec<f32>> {
    let t = st.tensor(name).ok()?;
    Some(
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

fn fixture(tag: &str, schedule: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/vit/{tag}_{}.safetensors",
        env!("CARGO_MANIFEST_DIR"),
        schedule.replace([':', ','], "_").replace('.', "p")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    Fixture {
        logits: floats(&st, "logits").expect("fixture has logits"),
        min_gap: floats(&st, "min_gap").map(|g| g[0]),
    }
}

fn top1(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        })
        .collect()
}

fn cpu_logits(model: &Model, plan: &ForwardSpec, images: &[f32], batch: usize) -> Vec<f32> {
    let safe_r = plan.trajectory.per_stage_safe_r();
    cpu::forward(
        &model.cfg,
        &model.weights,
        images,
        batch,
        &ReferenceSpec {
            safe_r: &safe_r,
            perms: &plan.perms,
            forced: None,
        },
    )
    .logits
}

/// Checks `got` against the fixture; a merged case over tolerance passes only as a near-tie.
fn compare(what: &str, got: &[f32], fx: &Fixture, classes: usize) {
    let err = rel_l2(got, &fx.logits);
    let same_top1 = top1(got, classes) == top1(&fx.logits, classes);
    eprintln!(
        "{what}: rel L2 {err:.2e}{}",
        fx.min_gap
            .map(|g| format!(" (smallest ToMe decision margin {g:.1e})"))
            .unwrap_or_default()
    );
    if err <= TOL && same_top1 {
        return;
    }
    match fx.min_gap {
        Some(g) if g < NEAR_TIE => {
            eprintln!("{what}: differs after a near-tie merge decision (margin {g:.1e})")
        }
        _ => panic!("{what}: rel L2 {err:.3e}, top-1 same: {same_top1}"),
    }
}

fn check(tag: &str) {
    let (_, spec, schedules) = CASES.iter().find(|c| c.0 == tag).unwrap();
    let model = Model::synthetic(spec).unwrap();
    let classes = model.cfg.num_classes;
    let images = synthetic_images(&model.cfg, 2, 5);
    for schedule in *schedules {
        let plan = ForwardSpec::new(&model.cfg, &schedule.parse().unwrap(), 0).unwrap();
        let fx = fixture(tag, schedule);
        let twin = cpu_logits(&model, &plan, &images, 2);
        compare(&format!("{spec} {schedule}: CPU twin"), &twin, &fx, classes);
        let engine = common::engine(gpu(), cache(), &model, &plan.clone().with_batch(2)).unwrap();
        let got = engine.forward(&images).unwrap().logits;
        compare(&format!("{spec} {schedule}: engine"), &got, &fx, classes);
        let err_twin = rel_l2(&got, &twin);
        assert!(
            err_twin <= TOL,
            "{spec} {schedule}: engine vs twin {err_twin:.3e}"
        );
        if *schedule != "none" {
            // Merging must matter, or the comparison would not test it.
            let moved = rel_l2(&fx.logits, &fixture(tag, "none").logits);
            assert!(
                moved > 1e-3,
                "{spec} {schedule}: merging moves logits by {moved:.1e}"
            );
            assert!(plan.trajectory.merges());
        }
    }
}

#[test]
fn deit_small() {
    check("deit_s_d3");
}

#[test]
fn deit_small_distilled() {
    check("deit_s_dist_d2");
}

#[test]
fn vit_base_16_224() {
    check("vit_b_d2");
}

#[test]
fn vit_small_16_384() {
    check("vit_s384_d2");
}

#[test]
fn vit_base_32_224() {
    check("vit_b32_d2");
}

#[test]
fn mae_style_global_pool() {
    check("mae_b_d2");
}

#[test]
fn vit_large_16_384() {
    check("vit_l384_d2");
}

/// ToMe's `parse_r` over ViT-L's 24 blocks, as `tome.utils.parse_r(24, (8, -0.5))` gives it, and
/// its `r = min(r, (t - protected) // 2)` cap on the patch tokens.
#[test]
fn schedules_generalise_to_24_blocks() {
    use sret_tome::tome::Trajectory;
    let cfg = ModelConfig::by_name("vit_large_patch16_224").unwrap();
    let t = Trajectory::new(&cfg, &"tome:8,-0.5".parse().unwrap()).unwrap();
    let r: Vec<usize> = t.executions.iter().map(|e| e.safe_r).collect();
    // parse_r: min = int(8 * 1.5) = 12, max = 4, step = -8 / 23.
    let want: Vec<usize> = (0..24)
        .map(|i| (12.0 + (4.0 - 12.0) / 23.0 * i as f64) as usize)
        .collect();
    assert_eq!(r, want);
    let t = Trajectory::new(&cfg, &"constant:200".parse().unwrap()).unwrap();
    assert_eq!(t.executions[0].safe_r, 98);
    assert!(t.executions.iter().all(|e| e.tokens_out >= 1));
}

/// Micro-batches for ViT-L/16-384: its widest per-image tensor is the MLP's hidden, 577 tokens x
/// 4096 (qkv is 577 x 3072; attention keeps no score matrix), and a micro-batch of them fits one
/// storage binding.
#[test]
fn vit_large_384_micro_batches_fit_the_binding_limit() {
    use sret_tome::runtime::forward::{max_micro_batch, split_batch};
    // One block has every per-image tensor of the whole model (the sizes are recorded).
    let model = Model::synthetic("vit_large_patch16_384@depth=1").unwrap();
    let cfg = &model.cfg;
    let spec = ForwardSpec::new(cfg, &"none".parse().unwrap(), 0)
        .unwrap()
        .with_batch(128);
    let limits = wgpu::Limits::default();
    let per_image = 577 * 4096 * 4;
    let mb = max_micro_batch(cfg, &model.weights, &spec, &limits);
    let binding = limits.max_storage_buffer_binding_size as usize;
    assert_eq!(mb, binding / per_image);
    assert!(mb * per_image <= binding && (mb + 1) * per_image > binding);
    let (chunks, each) = split_batch(cfg, &model.weights, &spec, &limits);
    assert!(chunks * each >= 128 && each <= mb, "{chunks} x {each}");
}
