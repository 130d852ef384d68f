//! Logits against the paper's own PyTorch code (junseokm/sret-tome, `integration/SReT_ToMe.py`)
//! for the same weights, images and permutations, under every schedule of the paper.
//! Fixtures made by `tools/make_reference_fixtures.sh` (PyTorch 2.15, CPU): the synthetic
//! SReT-T weights, `synthetic_images(cfg, 2, seed 5)`, permutations of seed 0.
//! Tolerance: relative L2 <= 1e-3 and the same top-1 (measured on lavapipe: ~5e-7).

mod common;

use common::*;
use sret_tome::model::session::{build_engine, ForwardPlan, Model};
use sret_tome::reference::synthetic_images;

fn reference_logits(schedule: &str) -> Vec<f32> {
    let name = schedule.replace([':', ','], "_");
    let path = format!(
        "{}/tests/fixtures/reference/sret_t_distill_{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.shape(), [2, 1000]);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn logits_match_the_papers_pytorch_code() {
    let model = Model::load("sret_t_distill", None).unwrap();
    let images = synthetic_images(&model.cfg, 2, 5);
    for schedule in [
        "none",
        "constant:10",
        "linear:10",
        "exp:0.25,0",
        "exp:0.10,0.6",
        "exp:0.40,0.2",
    ] {
        let plan = ForwardPlan::new(&model.cfg, &schedule.parse().unwrap(), 0).unwrap();
        let engine = build_engine(gpu(), cache(), &model, &plan, 2, false).unwrap();
        let got = engine.forward(&images).unwrap().logits;
        let want = reference_logits(schedule);
        let err = rel_l2(&got, &want);
        eprintln!("{schedule}: rel L2 against PyTorch {err:.2e}");
        assert!(err <= 1e-3, "{schedule}: rel L2 {err}");
        for i in 0..2 {
            assert_eq!(
                argmax(&got[i * 1000..(i + 1) * 1000]),
                argmax(&want[i * 1000..(i + 1) * 1000]),
                "{schedule} image {i} top-1"
            );
        }
    }
}
