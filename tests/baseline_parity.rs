//! The paper's baselines against their own code: timm's DeiT-Tiny(-Distill) and PiT-Ti(-Distill)
//! for the engine's synthetic weights and `synthetic_images(cfg, 2, seed 5)`; with merging,
//! DeiT patched by the official ToMe and PiT as the paper's `PiT_ToMe.py`. Fixtures made by
//! `tools/make_baseline_fixtures.sh` (timm 1.0.31, PyTorch 2.15, CPU).
//!
//! The CPU twin must reproduce each fixture's logits (relative L2 <= 1e-4) and the engine both
//! the fixture (relative L2 <= 1e-3, same top-1) and the twin.

mod common;

use common::*;
use sret_tome::model::synthetic_images;
use sret_tome::model::Model;
use sret_tome::reference::{self as cpu, ReferenceSpec};
use sret_tome::runtime::ForwardSpec;

const CASES: [(&str, &str); 12] = [
    ("deit_tiny", "none"),
    ("deit_tiny", "constant:8"),
    ("deit_tiny", "tome:16,-1"),
    ("deit_tiny_distill", "none"),
    ("deit_tiny_distill", "constant:8"),
    ("deit_tiny_distill", "tome:13,-0.5"),
    ("pit_ti", "none"),
    ("pit_ti", "exp:0.25,0"),
    ("pit_ti_distill", "none"),
    ("pit_ti_distill", "exp:0.25,0"),
    ("pit_ti_distill", "exp:0.4,0.5"),
    ("pit_ti_distill", "constant:16"),
];

fn fixture(model: &str, schedule: &str) -> Vec<f32> {
    let path = format!(
        "{}/tests/fixtures/baselines/{model}_{}.safetensors",
        env!("CARGO_MANIFEST_DIR"),
        schedule.replace([':', ','], "_")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
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

#[test]
fn cpu_twin_matches_timm_and_tome() {
    for (name, schedule) in CASES {
        let model = Model::synthetic(name).unwrap();
        let plan = ForwardSpec::new(&model.cfg, &schedule.parse().unwrap(), 0).unwrap();
        let images = synthetic_images(&model.cfg, 2, 5);
        let got = cpu_logits(&model, &plan, &images, 2);
        let want = fixture(name, schedule);
        let err = rel_l2(&got, &want);
        eprintln!("{name} {schedule}: CPU twin rel L2 {err:.2e}");
        assert!(err <= 1e-4, "{name} {schedule}: CPU twin rel L2 {err:.3e}");
        if schedule != "none" {
            // Merging must matter, or the comparison would not test it.
            let moved = rel_l2(&want, &fixture(name, "none"));
            assert!(
                moved > 1e-2,
                "{name} {schedule}: merging moves logits by {moved:.1e}"
            );
            assert!(plan.trajectory.merges());
        }
    }
}

#[test]
fn engine_matches_timm_and_tome() {
    for (name, schedule) in CASES {
        let model = Model::synthetic(name).unwrap();
        let plan = ForwardSpec::new(&model.cfg, &schedule.parse().unwrap(), 0).unwrap();
        let images = synthetic_images(&model.cfg, 2, 5);
        let engine = common::engine(gpu(), cache(), &model, &plan.clone().with_batch(2)).unwrap();
        let got = engine.forward(&images).unwrap().logits;
        let want = fixture(name, schedule);
        let twin = cpu_logits(&model, &plan, &images, 2);
        let (err, err_twin) = (rel_l2(&got, &want), rel_l2(&got, &twin));
        eprintln!("{name} {schedule}: engine rel L2 {err:.2e} (vs twin {err_twin:.2e})");
        assert!(err <= 1e-3, "{name} {schedule}: engine rel L2 {err:.3e}");
        assert!(
            err_twin <= 1e-3,
            "{name} {schedule}: engine vs twin {err_twin:.3e}"
        );
        let c = model.cfg.num_classes;
        assert_eq!(top1(&got, c), top1(&want, c), "{name} {schedule}: top-1");
    }
}

/// Checkpoints in the layouts the baselines' authors published (`tools/make_official_checkpoints.py`:
/// DeiT's `{'model': state_dict}`, PiT's bare state_dict with `pools.{s}` names; every tensor a
/// strided f32 or f16 view of a small pool) run without conversion and give timm's logits; the
/// converted safetensors file loads to the very same weights.
#[test]
fn official_checkpoints_run_as_published() {
    use sret_tome::io::checkpoint::{convert_to_safetensors, load_weights};
    let dir = format!("{}/tests/fixtures/checkpoint", env!("CARGO_MANIFEST_DIR"));
    for name in ["deit_tiny_distill", "pit_ti_distill"] {
        let pth = std::path::PathBuf::from(format!("{dir}/{name}_official.pth"));
        let model = sret_tome::io::load_model(name, &pth).unwrap();
        let converted = std::env::temp_dir().join(format!("{name}_official.safetensors"));
        convert_to_safetensors(&pth, &converted).unwrap();
        let again = load_weights(&converted, &model.cfg).unwrap();
        std::fs::remove_file(&converted).ok();
        assert!(again == model.weights, "{name}: converted weights differ");

        let plan = ForwardSpec::new(&model.cfg, &"none".parse().unwrap(), 0).unwrap();
        let images = synthetic_images(&model.cfg, 2, 5);
        let engine = common::engine(gpu(), cache(), &model, &plan.clone().with_batch(2)).unwrap();
        let got = engine.forward(&images).unwrap().logits;
        let path = format!("{dir}/{name}_official.logits.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let err = rel_l2(&got, &want);
        eprintln!("{name} official checkpoint: engine rel L2 {err:.2e}");
        assert!(err <= 1e-3, "{name}: rel L2 {err:.3e}");
        assert_eq!(top1(&got, 1000), top1(&want, 1000), "{name}: top-1");
    }
}
