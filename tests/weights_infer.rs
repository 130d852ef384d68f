//! `--model auto`: the configuration read off a weight file's tensors, and position embeddings
//! at another image size resampled as timm does (against timm 1.0.31's resample_abs_pos_embed).

use sret_tome::io::safetensors::resample::resample_pos_embed;
use sret_tome::io::safetensors::{load_safetensors, save_safetensors, to_safetensors_bytes};
use sret_tome::model::synthetic::synthetic_weights;
use sret_tome::model::ModelConfig;

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sret-infer-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// `found` is `expected` in everything but its name.
fn assert_same_network(found: &ModelConfig, expected: &ModelConfig, what: &str) {
    assert_eq!(
        &ModelConfig {
            name: expected.name,
            ..found.clone()
        },
        expected,
        "{what} read as {}",
        found.name
    );
}

/// Without `module.` or other naming differences, the file names its own architecture.
#[test]
fn auto_finds_the_configuration_of_every_named_model() {
    for name in [
        "sret_t",
        "sret_lt_distill",
        "deit_tiny_distill",
        "pit_ti",
        "deit_small_patch16_224",
        "vit_small_patch16_384",
    ] {
        let cfg = ModelConfig::by_name(name).unwrap();
        let path = scratch(&format!("{name}.safetensors"));
        save_safetensors(&synthetic_weights(&cfg, 3), &cfg, &path).unwrap();
        let model = sret_tome::io::load_model("auto", &path).unwrap();
        // deit_tiny and vit_tiny_patch16_224 (say) are one network.
        assert_same_network(&model.cfg, &cfg, name);
        std::fs::remove_file(&path).ok();
    }
}

/// A ViT no name describes (another depth, image size, class count, MAE pooling) is derived.
#[test]
fn auto_derives_an_unnamed_vit() {
    for (spec, classes) in [
        ("vit_small_patch16_224@depth=3,img_size=160", 1000),
        ("vit_tiny_patch16_224@depth=2,global_pool=avg", 10),
        ("deit_tiny_distilled_patch16_224@depth=2,img_size=288", 1000),
    ] {
        let mut cfg = ModelConfig::by_name(spec).unwrap();
        cfg.num_classes = classes;
        let path = scratch("derived.safetensors");
        let w = synthetic_weights(&cfg, 5);
        save_safetensors(&w, &cfg, &path).unwrap();
        let model = sret_tome::io::load_model("auto", &path).unwrap();
        // Derived configurations carry the name of the timm model of their width.
        assert_same_network(&model.cfg, &cfg, spec);
        assert_eq!(model.weights.head.weight, w.head.weight, "{spec}");
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn auto_says_what_it_cannot_tell() {
    let e = sret_tome::io::load_model("auto", "/nonexistent.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
    let e = ModelConfig::by_name("auto").unwrap_err().to_string();
    assert!(e.contains("--weights"), "{e}");
    // A width no timm model has: the heads cannot be told.
    let zeros = |shape: &[usize]| vec![0u8; 4 * shape.iter().product::<usize>()];
    let tensors = [
        ("patch_embed.proj.weight", vec![256, 3, 16, 16]),
        ("cls_token", vec![1, 1, 256]),
        ("pos_embed", vec![1, 197, 256]),
        ("head.weight", vec![10, 256]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| (n.to_string(), s.clone(), zeros(s)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let path = scratch("w256.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = sret_tome::io::load_model("auto", &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("width 256") && e.contains("heads"), "{e}");
    std::fs::remove_file(&path).ok();
}

#[derive(serde::Deserialize)]
struct Case {
    lead: usize,
    dim: usize,
    g_in: usize,
    g_out: usize,
    input: Vec<f32>,
    output: Vec<f32>,
}

/// tools/make_resample_fixtures.py: timm's resample_abs_pos_embed, up and down.
#[test]
fn position_embeddings_resample_as_timm() {
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/resample/pos_embed.json"
    );
    let f: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(f.cases.len(), 5);
    for c in &f.cases {
        let got = resample_pos_embed(&c.input, c.lead, c.dim, c.g_in, c.g_out);
        assert_eq!(got.len(), c.output.len());
        let worst = got
            .iter()
            .zip(&c.output)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        println!(
            "{}x{} -> {}x{}: max error {worst:e}",
            c.g_in, c.g_in, c.g_out, c.g_out
        );
        // f32 rounding of the cubic weights (see src/io/safetensors/resample.rs): measured
        // up to 3.8e-6 of max(|value|, 1).
        assert!(worst <= 1e-5, "{} -> {}: {worst}", c.g_in, c.g_out);
        assert_eq!(&got[..c.lead * c.dim], &c.input[..c.lead * c.dim]);
    }
}

/// A 224-pixel checkpoint loads into a config at another image size, its position embedding
/// resampled on the way.
#[test]
fn a_checkpoint_at_another_image_size_is_resampled_on_load() {
    let small = ModelConfig::by_name("deit_tiny_patch16_224@depth=1").unwrap();
    let w = synthetic_weights(&small, 9);
    let path = scratch("deit224.safetensors");
    save_safetensors(&w, &small, &path).unwrap();
    let big = ModelConfig::by_name("deit_tiny_patch16_224@depth=1,img_size=320").unwrap();
    let loaded = load_safetensors(&path, &big).unwrap();
    let pos_of = |bytes: &[u8]| -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let v = st.tensor("pos_embed").unwrap();
        bytemuck::pod_collect_to_vec(v.data())
    };
    let before = pos_of(&to_safetensors_bytes(&w, &small).unwrap());
    let after = pos_of(&to_safetensors_bytes(&loaded, &big).unwrap());
    let dim = small.stages[0].dim;
    assert_eq!(before.len(), (1 + 196) * dim);
    assert_eq!(after, resample_pos_embed(&before, 1, dim, 14, 20));
    // Another width is no resampling matter: refused, naming both shapes.
    let other = ModelConfig::by_name("deit_small_patch16_224@depth=1").unwrap();
    let e = load_safetensors(&path, &other).unwrap_err().to_string();
    assert!(e.contains("384]") && e.contains("192]"), "{e}");
    std::fs::remove_file(&path).ok();
}
