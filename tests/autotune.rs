//! Kernel variant selection by measurement: the first build measures and caches, the second
//! reuses the cache; `Off` and `Pin` measure nothing; every pinned variant gives the logits of
//! the CPU twin, and the plan runs what was pinned.

mod common;

use sret_tome::api::{Autotune, ChoiceSource, TuneCache};
use sret_tome::kernels::{KernelKind, Variant, Variants};
use sret_tome::runtime::ForwardSpec;
use sret_tome::{EngineBuilder, Model, Schedule};

fn builder(model: &Model) -> EngineBuilder {
    EngineBuilder::new()
        .gpu(common::gpu())
        .pipeline_cache(common::cache())
        .with_model(model.clone())
        .schedule("constant:8".parse::<Schedule>().unwrap())
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sret-autotune-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

#[test]
fn measures_once_then_reads_the_cache() {
    let model = Model::synthetic("sret_t").unwrap();
    let dir = scratch("cache");
    let first = builder(&model)
        .autotune(Autotune::Measure)
        .autotune_cache(&dir)
        .validate_kernels(true)
        .build()
        .unwrap();
    let k = first.kernels().clone();
    println!("first build: {k}");
    for (variants, times) in &k.measurements {
        println!("  round {variants}: {times:?}");
    }
    assert_eq!(k.source, ChoiceSource::Measured);
    assert!(!k.measurements.is_empty());
    // Every kind the model runs was timed in every round that ran (per kind with timestamps).
    for (_, times) in &k.measurements {
        assert!(
            times.iter().all(|(_, t)| t.is_finite() && *t > 0.0),
            "{times:?}"
        );
    }
    let text = std::fs::read_to_string(TuneCache::in_dir(&dir).path()).unwrap();
    // The choice, and the kernel check's verdicts on its variants, one per kind and variant
    // (asked for: scripts/test turns the default off).
    let verdicts = |text: &str| text.lines().filter(|l| l.contains("| validated ")).count();
    let pairs = |vs: &[Variants]| {
        let mut p: Vec<(KernelKind, Variant)> = vs
            .iter()
            .flat_map(|v| KernelKind::ALL.map(|k| (k, v.get(k))))
            .filter(|(_, v)| *v != Variant::Portable)
            .collect();
        p.sort();
        p.dedup();
        p.len()
    };
    assert_eq!(verdicts(&text), pairs(&[k.preferred]), "{text}");
    assert_eq!(text.lines().count(), 1 + pairs(&[k.preferred]), "{text}");
    assert_eq!(
        first.kernels().validation,
        sret_tome::api::Validation::Checked
    );
    assert!(text.contains("sret_t@224") && text.contains(&k.preferred.to_string()));

    let second = builder(&model)
        .autotune(Autotune::Measure)
        .autotune_cache(&dir)
        .validate_kernels(true)
        .build()
        .unwrap();
    assert_eq!(second.kernels().source, ChoiceSource::Cached);
    assert_eq!(second.kernels().preferred, k.preferred);
    assert!(second.kernels().measurements.is_empty());
    // Same variants, same plan: bit-identical logits.
    let images = common::random(7, 3 * 224 * 224, 1.0);
    assert_eq!(
        first.run(&images).unwrap().into_vec(),
        second.run(&images).unwrap().into_vec()
    );
    // Another batch is another shape: measured again, a second autotune line.
    let b2 = builder(&model)
        .batch(2)
        .autotune(Autotune::Measure)
        .autotune_cache(&dir)
        .validate_kernels(true)
        .build()
        .unwrap();
    assert_eq!(b2.kernels().source, ChoiceSource::Measured);
    let text = std::fs::read_to_string(TuneCache::in_dir(&dir).path()).unwrap();
    // Verdicts do not depend on the batch: only a variant not checked yet adds one.
    let both = pairs(&[k.preferred, b2.kernels().preferred]);
    assert_eq!(verdicts(&text), both, "{text}");
    assert_eq!(text.lines().count(), 2 + both, "{text}");
    let again = if both == pairs(&[k.preferred]) {
        sret_tome::api::Validation::Cached
    } else {
        sret_tome::api::Validation::Checked
    };
    assert_eq!(b2.kernels().validation, again);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn off_and_pinned_measure_nothing_and_run_what_was_asked() {
    let model = Model::synthetic("sret_t").unwrap();
    let images = common::random(11, 3 * 224 * 224, 1.0);
    let off = builder(&model).autotune(Autotune::Off).build().unwrap();
    assert_eq!(off.kernels().source, ChoiceSource::Default);
    assert_eq!(off.kernels().preferred, Variants::default());
    // Each engine's logits against the CPU twin, replaying the engine's merge decisions where
    // it resolved a near-tie of the matching differently (checked to be one): variants sum in
    // different orders, and this random model's similarities crowd near their maximum, so
    // near-ties are common and may fall either way.
    let twin_error = |e: &sret_tome::Engine| {
        let out = e.forward(&images).unwrap();
        let trace = out.trace.expect("a traced engine");
        let spec = ForwardSpec::new(&model.cfg, e.schedule(), e.seed()).unwrap();
        let (twin, _) =
            common::twin_replaying(&model.cfg, &model.weights, &images, 1, &spec, &trace.merges);
        common::rel_l2(&out.logits, &twin.logits)
    };
    let traced = builder(&model)
        .autotune(Autotune::Off)
        .trace(true)
        .build()
        .unwrap();
    let rel = twin_error(&traced);
    assert!(
        rel < 1e-4,
        "default variants: rel L2 {rel:e} against the CPU twin"
    );
    let has_subgroups = sret_tome::kernels::program::subgroup_width(common::gpu()).is_some();
    for pin in [
        "portable",
        "attention=vec4,linear=portable",
        "subgroup",
        "linear=tiled",
    ] {
        let v: Variants = pin.parse().unwrap();
        let e = builder(&model)
            .autotune(Autotune::Pin(v))
            .trace(true)
            .build()
            .unwrap();
        let k = e.kernels();
        println!("{pin}: {k}");
        assert_eq!((k.source, k.preferred), (ChoiceSource::Pinned, v));
        for &(kind, used) in &k.used {
            let asked = v.get(kind);
            let expect = match asked {
                // Falls back without subgroups.
                Variant::Subgroup if !has_subgroups => used,
                // Subgroup attention and matching need 32-channel heads: SReT-T has them.
                _ => asked,
            };
            assert_eq!(used, expect, "{kind:?} pinned {asked:?}");
        }
        assert!(k.used.iter().any(|(kind, _)| *kind == KernelKind::Linear));
        let rel = twin_error(&e);
        assert!(rel < 1e-4, "{pin}: rel L2 {rel:e} against the CPU twin");
    }
}

#[test]
fn the_environment_sets_the_default_and_bad_values_are_errors() {
    assert_eq!("off".parse::<Autotune>().unwrap(), Autotune::Off);
    assert_eq!("on".parse::<Autotune>().unwrap(), Autotune::Measure);
    assert_eq!(
        "portable".parse::<Autotune>().unwrap(),
        Autotune::Pin(Variants::all(Variant::Portable))
    );
    let e = "linear=warp".parse::<Autotune>().unwrap_err().to_string();
    assert!(e.contains("warp") && e.contains("portable"), "{e}");
}
