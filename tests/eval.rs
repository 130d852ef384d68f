//! `eval`, `sweep`, `merge-results` and `visualize`: the data set scan, the threaded loader, the
//! metrics, the Pareto frontier, shard merging and the figures on hand-made inputs (CPU only),
//! then each command end to end on the GPU on a small labelled folder made here and on
//! synthetic images, cross-checked against direct engine forwards.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;
use image::{Rgb, RgbImage};
use sret_tome::cli::{Cli, Command};
use sret_tome::eval::dataset::{ClassMap, DataSource, Layout, Problem, Sample, SampleItem};
use sret_tome::eval::loader::Loader;
use sret_tome::eval::metrics::QualityStats;
use sret_tome::eval::pareto::{pareto_front, Sense};
use sret_tome::eval::plots::{render_rgb, sweep_figures, TrajectoryFigure};
use sret_tome::eval::results::{
    merge, BenchPoint, DataInfo, GridInfo, Kind, QualityMetric, ResultsFile, Role, ScheduleResult,
    ShardUnit, FORMAT, VERSION,
};
use sret_tome::eval::shard::Shard;
use sret_tome::eval::visualize::{
    group_labels, render, render_stage, StageMap, Style, GROUP_BORDER, TOKEN_BORDER,
};
use sret_tome::model::Model;
use sret_tome::model::ModelConfig;
use sret_tome::runtime::ForwardSpec;
use sret_tome::tome::Schedule;
use sret_tome::tome::DEFAULT_SEED;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.jpg");

/// A fresh, empty temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sret-tome-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg() -> ModelConfig {
    ModelConfig::by_name("sret_t_distill").unwrap()
}

/// A small labelled folder:
/// * `tabby/`: the sample photograph, its mirror image as PNG, and a nested `more/` folder with a
///   smaller, recoloured copy;
/// * `Egyptian_cat/`: a generated gradient picture, a truncated JPEG (corrupt) and a text file;
/// * a file directly in the root (not inside a class folder).
///
/// Returns the root and the paths of the 4 good images in ImageFolder order.
fn make_folder(root: &Path) -> Vec<PathBuf> {
    let tabby = root.join("tabby");
    let egypt = root.join("Egyptian_cat");
    std::fs::create_dir_all(tabby.join("more")).unwrap();
    std::fs::create_dir_all(&egypt).unwrap();
    let img = image::open(SAMPLE).unwrap().to_rgb8();
    std::fs::copy(SAMPLE, tabby.join("a.jpg")).unwrap();
    image::imageops::flip_horizontal(&img)
        .save(tabby.join("b_mirror.PNG"))
        .unwrap();
    let mut small = image::imageops::resize(&img, 260, 173, image::imageops::FilterType::Triangle);
    for p in small.pixels_mut() {
        p.0 = [p.0[2], p.0[0], p.0[1]];
    }
    small.save(tabby.join("more").join("c_small.png")).unwrap();
    let grad = RgbImage::from_fn(320, 240, |x, y| {
        Rgb([
            (x * 255 / 319) as u8,
            (y * 255 / 239) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    grad.save(egypt.join("grad.png")).unwrap();
    let bytes = std::fs::read(SAMPLE).unwrap();
    std::fs::write(egypt.join("broken.jpg"), &bytes[..600]).unwrap();
    std::fs::write(egypt.join("notes.txt"), "not an image\n").unwrap();
    std::fs::write(root.join("README.md"), "root file\n").unwrap();
    vec![
        egypt.join("grad.png"),
        tabby.join("a.jpg"),
        tabby.join("b_mirror.PNG"),
        tabby.join("more").join("c_small.png"),
    ]
}

// ---------------------------------------------------------------------------------------------
// CPU: scanning, loading, metrics, frontier, merging, figures.
// ---------------------------------------------------------------------------------------------

#[test]
fn imagefolder_scan_orders_labels_and_names_skips() {
    let root = temp_dir("scan");
    let good = make_folder(&root);
    std::fs::create_dir_all(root.join("zz_empty")).unwrap();
    // Sorted positions (ImageFolder): Egyptian_cat = 0, tabby = 1, zz_empty = 2.
    let ds = DataSource::Folder {
        root: root.clone(),
        layout: Layout::Auto,
        class_map: ClassMap::Sorted,
    }
    .open(1000)
    .unwrap();
    assert_eq!(ds.classes, ["Egyptian_cat", "tabby", "zz_empty"]);
    let files: Vec<PathBuf> = ds
        .samples
        .iter()
        .map(|s| match &s.item {
            SampleItem::File(p) => p.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // The broken JPEG has an image extension: it is a sample (found unreadable later).
    let mut want = vec![root.join("Egyptian_cat").join("broken.jpg")];
    want.extend(good.iter().cloned());
    assert_eq!(files, want);
    let labels: Vec<Option<usize>> = ds.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [Some(0), Some(0), Some(1), Some(1), Some(1)]);
    assert_eq!(ds.total, 5);
    let skipped: Vec<&str> = ds.skipped.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|p| p.ends_with("README.md")));
    assert!(skipped.iter().any(|p| p.ends_with("notes.txt")));
    assert!(
        ds.warnings.iter().any(|w| w.contains("zz_empty")),
        "{:?}",
        ds.warnings
    );

    // Folders named after ImageNet classes map to their indices (auto, since 3 != 1000 folders
    // would otherwise be meaningless indices), here without the empty folder.
    std::fs::remove_dir(root.join("zz_empty")).unwrap();
    let ds = DataSource::Folder {
        root: root.clone(),
        layout: Layout::Auto,
        class_map: ClassMap::Auto,
    }
    .open(1000)
    .unwrap();
    assert_eq!(ds.class_map, Some(ClassMap::ImagenetNames));
    // ImageNet: 281 tabby, 285 Egyptian cat.
    assert_eq!(ds.class_labels, [285, 281]);
    assert_eq!(ds.samples[0].label, Some(285));
    assert_eq!(ds.samples[4].label, Some(281));
    // A folder that names no class: auto falls back to sorted, with a warning; forcing names fails.
    std::fs::create_dir_all(root.join("not_a_class")).unwrap();
    std::fs::copy(SAMPLE, root.join("not_a_class").join("x.jpg")).unwrap();
    let ds = DataSource::Folder {
        root: root.clone(),
        layout: Layout::Auto,
        class_map: ClassMap::Auto,
    }
    .open(1000)
    .unwrap();
    assert_eq!(ds.class_map, Some(ClassMap::Sorted));
    assert!(ds.warnings.iter().any(|w| w.contains("sorted positions")));
    let err = DataSource::Folder {
        root: root.clone(),
        layout: Layout::Auto,
        class_map: ClassMap::ImagenetNames,
    }
    .open(1000)
    .unwrap_err()
    .to_string();
    assert!(err.contains("not_a_class"), "{err}");

    // Flat: every image below the root, no labels.
    let flat = DataSource::Folder {
        root: root.clone(),
        layout: Layout::Flat,
        class_map: ClassMap::Auto,
    }
    .open(1000)
    .unwrap();
    assert!(!flat.labelled());
    assert_eq!(flat.samples.len(), 6);
    assert!(flat.samples.iter().all(|s| s.label.is_none()));
    assert_eq!(flat.skipped.len(), 2);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn loader_keeps_order_pads_and_reports_unreadable_files() {
    let root = temp_dir("loader");
    let good = make_folder(&root);
    let broken = root.join("Egyptian_cat").join("broken.jpg");
    let fake = root.join("fake.jpg");
    std::fs::write(&fake, "this is text, not a JPEG").unwrap();
    let missing = root.join("missing.png");
    // Order: good0, broken, good1, fake, good2, missing, good3.
    let items = [
        &good[0], &broken, &good[1], &fake, &good[2], &missing, &good[3],
    ];
    let samples: Vec<Sample> = items
        .iter()
        .enumerate()
        .map(|(i, p)| Sample {
            index: 10 + i,
            item: SampleItem::File((*p).clone()),
            label: Some(i),
        })
        .collect();
    let per = 3 * 224 * 224;
    let want: Vec<Vec<f32>> = good
        .iter()
        .map(|p| sret_tome::io::load_image(p).unwrap())
        .collect();
    for workers in [1, 3] {
        let batches: Vec<_> = Loader::new(samples.clone(), &cfg(), 3, workers).collect();
        assert_eq!(batches.len(), 2, "workers {workers}");
        let idx: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| b.samples.iter().map(|s| s.index).collect())
            .collect();
        assert_eq!(idx, [vec![10, 12, 14], vec![16]]);
        let failed: Vec<Problem> = batches.iter().flat_map(|b| b.failures.clone()).collect();
        let names: Vec<&str> = failed.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            names,
            [
                broken.to_str().unwrap(),
                fake.to_str().unwrap(),
                missing.to_str().unwrap()
            ]
        );
        assert!(failed.iter().all(|p| !p.why.is_empty()));
        assert!(
            failed[1].why.contains("not a recognised image format"),
            "{}",
            failed[1].why
        );
        // Pixels are the preprocessing's, bit for bit; the last batch is zero-padded.
        for (b, imgs) in batches.iter().zip([&want[..3], &want[3..]]) {
            assert_eq!(b.images.len(), 3 * per);
            for (k, w) in imgs.iter().enumerate() {
                assert!(b.images[k * per..(k + 1) * per] == w[..]);
            }
            assert!(b.images[imgs.len() * per..].iter().all(|&x| x == 0.0));
        }
    }
    // Synthetic samples come out as `synthetic_images` of one image with the sample's seed.
    let syn = DataSource::Synthetic { count: 3, seed: 7 }
        .open(1000)
        .unwrap();
    let b: Vec<_> = Loader::new(syn.samples, &cfg(), 2, 2).collect();
    assert_eq!(b.len(), 2);
    assert!(b[0].images[per..2 * per] == sret_tome::model::synthetic_images(&cfg(), 1, 8)[..]);
    // Dropping a loader part way stops its threads.
    let mut early = Loader::new(samples, &cfg(), 1, 2);
    assert!(early.next().is_some());
    drop(early);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Equal up to the last bit of floats (JSON parsing of floats is not always exact).
fn assert_same(a: &ResultsFile, b: &ResultsFile) {
    fn same(x: &serde_json::Value, y: &serde_json::Value, at: &str) {
        use serde_json::Value::*;
        match (x, y) {
            (Number(p), Number(q)) => {
                let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                assert!(
                    (p - q).abs() <= 1e-12 * p.abs().max(q.abs()),
                    "{at}: {p} vs {q}"
                );
            }
            (Array(p), Array(q)) => {
                assert_eq!(p.len(), q.len(), "{at}");
                for (i, (u, v)) in p.iter().zip(q).enumerate() {
                    same(u, v, &format!("{at}[{i}]"));
                }
            }
            (Object(p), Object(q)) => {
                assert_eq!(
                    p.keys().collect::<Vec<_>>(),
                    q.keys().collect::<Vec<_>>(),
                    "{at}"
                );
                for (k, u) in p {
                    same(u, &q[k], &format!("{at}.{k}"));
                }
            }
            _ => assert_eq!(x, y, "{at}"),
        }
    }
    same(
        &serde_json::to_value(a).unwrap(),
        &serde_json::to_value(b).unwrap(),
        "results",
    );
}

fn stats(images: u64, labelled: u64, top1: u64, top5: u64, agree: u64, kl: f64) -> QualityStats {
    QualityStats {
        images,
        labelled,
        top1_correct: top1,
        top5_correct: top5,
        compared: images,
        agree,
        kl_sum: kl,
        nonfinite: 0,
    }
}

fn bench(batch: usize, tput: f64, pam_mib: f64) -> BenchPoint {
    BenchPoint {
        batch,
        micro_batch: batch,
        throughput_img_s: tput,
        latency_ms: 1e3 * batch as f64 / tput,
        pam_bytes: (pam_mib * 1024.0 * 1024.0) as u64,
        iters: 3,
    }
}

/// A hand-made sweep: the paper's Table 1 numbers for the three exponential configurations,
/// plus made-up points around them, on a labelled data set of 10000 images.
fn hand_made_sweep() -> ResultsFile {
    let c = cfg();
    let mut rows = vec![ScheduleResult::new(&c, &Schedule::None, Role::Baseline).unwrap()];
    rows[0].quality = Some(stats(10000, 10000, 7742, 9300, 10000, 0.0));
    rows[0].bench = vec![bench(1, 223.6, 6.22), bench(128, 1072.9, 795.8)];
    // (r_init, alpha, top-1 count, throughput@128, PAM@128)
    let pts = [
        (0.1, 0.0, 7700, 1120.0, 664.0),
        (0.1, 0.6, 7635, 1186.6, 664.75), // paper: on the frontier? dominated below
        (0.1, 1.0, 7500, 1180.0, 664.0),  // dominated by (0.1, 0.6)
        (0.25, 0.0, 7595, 1368.7, 489.4), // the paper's single shot
        (0.25, 0.6, 7400, 1300.0, 489.4), // dominated by the single shot
        (0.25, 1.0, 7300, 1350.0, 489.4), // dominated by the single shot
        (0.4, 0.0, 7100, 1800.0, 391.5),
        (0.4, 0.2, 6971, 1886.9, 391.5), // paper: fastest
        (0.4, 1.0, 6900, 1850.0, 391.5), // dominated by (0.4, 0.2)
    ];
    for (r, a, top1, t, pam) in pts {
        let mut row = ScheduleResult::new(
            &c,
            &Schedule::Exp {
                r_init: r,
                alpha: a,
            },
            Role::Grid,
        )
        .unwrap();
        row.quality = Some(stats(
            10000,
            10000,
            top1,
            top1 + 1500,
            top1 + 1000,
            0.01 * (7742 - top1) as f64,
        ));
        row.bench = vec![bench(1, 100.0 + t / 20.0, pam / 128.0), bench(128, t, pam)];
        rows.push(row);
    }
    let mut extra = ScheduleResult::new(&c, &Schedule::Constant(10), Role::Extra).unwrap();
    extra.quality = Some(stats(10000, 10000, 7101, 8600, 8000, 300.0));
    extra.bench = vec![bench(1, 110.2, 6.0), bench(128, 1176.3, 769.8)];
    rows.push(extra);
    let mut f = ResultsFile {
        format: FORMAT.into(),
        version: VERSION,
        kind: Kind::Sweep,
        model: "sret_t_distill".into(),
        weights: "hand-made".into(),
        seed: 0,
        adapter: None,
        data: DataInfo {
            source: "folder /imagenet/val".into(),
            labelled: true,
            class_map: Some(ClassMap::Sorted),
            classes: 1000,
            images_total: 50000,
            images_selected: 10000,
            limit: Some(10000),
        },
        eval_batch: 64,
        bench_batches: vec![1, 128],
        shards: vec![Shard::WHOLE],
        shard_unit: ShardUnit::Grid,
        grid: Some(GridInfo {
            r_init: vec![0.1, 0.25, 0.4],
            alpha: vec![0.0, 0.6, 1.0],
        }),
        quality_metric: QualityMetric::Top1,
        pareto_batch: None,
        pareto_objectives: vec![],
        failures: vec![],
        skipped: vec![],
        notes: vec![],
        results: rows,
    };
    f.finalize();
    f
}

#[test]
fn frontier_of_a_hand_made_sweep() {
    let mut f = hand_made_sweep();
    assert_eq!(f.pareto_batch, Some(128));
    let on: Vec<&str> = f
        .results
        .iter()
        .filter(|r| r.pareto)
        .map(|r| r.schedule.as_str())
        .collect();
    // (0.1, 0.0): best accuracy of the grid. (0.1, 0.6): faster than it, same PAM class.
    // (0.25, 0): the single shot. (0.4, 0) and (0.4, 0.2): least memory, speed vs accuracy.
    // constant:10 is dominated by exp:0.1,0.6 (more accurate, faster, less memory).
    assert_eq!(
        on,
        [
            "exp:0.1,0",
            "exp:0.1,0.6",
            "exp:0.25,0",
            "exp:0.4,0",
            "exp:0.4,0.2"
        ]
    );
    assert!(!f.baseline().unwrap().pareto);
    assert_eq!(f.results[1].top1, Some(77.0));
    assert!((f.results[4].mean_kl.unwrap() - 0.01 * 147.0 / 10000.0).abs() < 1e-12);
    assert_eq!(f.pareto_objectives.len(), 3);

    // At batch 1 the frontier follows batch 1's numbers.
    f.pareto_batch = Some(1);
    f.finalize();
    assert_eq!(f.pareto_batch, Some(1));
    assert!(f.pareto_objectives[1].contains("batch 1"));

    // On KL (lower is better) the frontier changes sense on the quality axis.
    f.quality_metric = QualityMetric::Kl;
    f.pareto_batch = Some(128);
    f.finalize();
    assert_eq!(f.quality_metric, QualityMetric::Kl);
    assert!(f.pareto_objectives[0].starts_with("minimise mean KL"));
    let cands: Vec<&ScheduleResult> = f
        .results
        .iter()
        .filter(|r| r.role != Role::Baseline)
        .collect();
    let pts: Vec<Vec<f64>> = cands
        .iter()
        .map(|r| {
            let b = r.bench_at(128).unwrap();
            vec![r.mean_kl.unwrap(), b.throughput_img_s, b.pam_bytes as f64]
        })
        .collect();
    let want = pareto_front(&pts, &[Sense::Minimize, Sense::Maximize, Sense::Minimize]);
    assert_eq!(cands.iter().map(|r| r.pareto).collect::<Vec<_>>(), want);
    // constant:10's KL (made large here) keeps it off; the lowest-KL grid point is on.
    assert!(!cands.last().unwrap().pareto && cands[0].pareto);

    // Without labels the frontier maximises agreement; without timing it minimises FLOPs.
    f.quality_metric = QualityMetric::Top1;
    f.data.labelled = false;
    for r in &mut f.results {
        r.bench.clear();
    }
    f.bench_batches.clear();
    f.finalize();
    assert_eq!(f.quality_metric, QualityMetric::Agreement);
    assert_eq!(f.pareto_batch, None);
    let cands: Vec<&ScheduleResult> = f
        .results
        .iter()
        .filter(|r| r.role != Role::Baseline)
        .collect();
    let pts: Vec<Vec<f64>> = cands
        .iter()
        .map(|r| vec![r.agreement.unwrap(), r.flops_thop as f64])
        .collect();
    let want = pareto_front(&pts, &[Sense::Maximize, Sense::Minimize]);
    let got: Vec<bool> = cands.iter().map(|r| r.pareto).collect();
    assert_eq!(got, want);
    assert!(got.iter().any(|&x| x) && !got.iter().all(|&x| x));
}

#[test]
fn merging_shards_checks_and_adds_up() {
    let whole = hand_made_sweep();
    // Two image shards: every schedule, counts split.
    let mut a = whole.clone();
    let mut b = whole.clone();
    a.shard_unit = ShardUnit::Images;
    b.shard_unit = ShardUnit::Images;
    a.shards = vec![Shard::new(1, 2).unwrap()];
    b.shards = vec![Shard::new(2, 2).unwrap()];
    a.data.images_selected = 6000;
    b.data.images_selected = 4000;
    a.failures = vec![Problem {
        path: "/x/bad.jpg".into(),
        why: "truncated".into(),
    }];
    b.bench_batches.clear();
    for (ra, rb) in a.results.iter_mut().zip(b.results.iter_mut()) {
        let q = ra.quality.clone().unwrap();
        // Split in proportion to the images, so that each shard's counts are consistent
        // (merge-results checks that no part exceeds its whole).
        let part = |n: u64| n * 6 / 10;
        let qa = stats(
            6000,
            6000,
            part(q.top1_correct),
            part(q.top5_correct),
            part(q.agree),
            q.kl_sum * 0.25,
        );
        let qb = stats(
            4000,
            4000,
            q.top1_correct - part(q.top1_correct),
            q.top5_correct - part(q.top5_correct),
            q.agree - part(q.agree),
            q.kl_sum * 0.75,
        );
        ra.quality = Some(qa);
        rb.quality = Some(qb);
        rb.bench.clear(); // only shard 1 times
    }
    let m = merge(vec![b.clone(), a.clone()], false).unwrap();
    assert_eq!(m.data.images_selected, 10000);
    assert_eq!(m.shards.len(), 2);
    assert_eq!(m.failures.len(), 1);
    assert_eq!(m.bench_batches, [1, 128]);
    for (mr, wr) in m.results.iter().zip(&whole.results) {
        assert_eq!(mr.schedule, wr.schedule);
        let (mq, wq) = (mr.quality.as_ref().unwrap(), wr.quality.as_ref().unwrap());
        assert_eq!(
            (mq.images, mq.top1_correct, mq.top5_correct, mq.agree),
            (wq.images, wq.top1_correct, wq.top5_correct, wq.agree)
        );
        assert!((mq.kl_sum - wq.kl_sum).abs() <= 1e-9 * wq.kl_sum.abs().max(1.0));
        assert_eq!(mr.bench, wr.bench);
        assert_eq!(mr.pareto, wr.pareto, "{}", mr.schedule);
    }
    // Missing, duplicated or foreign shards are refused.
    let e = merge(vec![a.clone()], false).unwrap_err().to_string();
    assert!(e.contains("2/2") && e.contains("missing"), "{e}");
    let partial = merge(vec![a.clone()], true).unwrap();
    assert!(partial.notes.iter().any(|n| n.contains("2/2")));
    let e = merge(vec![a.clone(), a.clone()], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than once"), "{e}");
    let mut other = b.clone();
    other.model = "sret_s".into();
    let e = merge(vec![a.clone(), other], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model"), "{e}");

    // Grid shards: disjoint points, the baseline in each.
    let mut g1 = whole.clone();
    let mut g2 = whole.clone();
    g1.shards = vec![Shard::new(1, 2).unwrap()];
    g2.shards = vec![Shard::new(2, 2).unwrap()];
    let keep = |f: &mut ResultsFile, k: usize| {
        let mut i = 0;
        f.results.retain(|r| {
            r.role == Role::Baseline || {
                i += 1;
                (i - 1) % 2 == k
            }
        });
    };
    keep(&mut g1, 0);
    keep(&mut g2, 1);
    let m = merge(vec![g2, g1], false).unwrap();
    let names = |f: &ResultsFile| {
        f.results
            .iter()
            .map(|r| r.schedule.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&m), names(&whole));
    let flags = |f: &ResultsFile| f.results.iter().map(|r| r.pareto).collect::<Vec<_>>();
    assert_eq!(flags(&m), flags(&whole));

    // JSON round trip.
    let dir = temp_dir("merge");
    let p = dir.join("m.json");
    m.write_json(&p).unwrap();
    assert_same(&ResultsFile::read_json(&p).unwrap(), &m);
    std::fs::write(&p, "{\"format\": \"something else\"}").unwrap();
    assert!(ResultsFile::read_json(&p).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Decode a PNG and check it is a real picture: the expected size, many colours, and both
/// dark (text, axes) and white pixels.
fn check_png(path: &Path, size: Option<(u32, u32)>) -> RgbImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    if let Some(s) = size {
        assert_eq!(img.dimensions(), s, "{}", path.display());
    }
    let mut colours = std::collections::HashSet::new();
    let (mut dark, mut white) = (0, 0);
    for p in img.pixels() {
        colours.insert(p.0);
        if p.0.iter().all(|&c| c < 60) {
            dark += 1;
        }
        if p.0 == [255, 255, 255] {
            white += 1;
        }
    }
    assert!(
        colours.len() > 20,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
    assert!(dark > 500, "{}: {dark} dark pixels", path.display());
    assert!(white > 1000, "{}: {white} white pixels", path.display());
    img
}

fn check_svg(path: &Path, words: &[&str]) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(
        s.starts_with("<svg") || s.contains("<svg"),
        "{}",
        path.display()
    );
    assert!(s.trim_end().ends_with("</svg>"));
    for w in words {
        assert!(s.contains(w), "{} lacks '{w}'", path.display());
    }
    assert!(s.matches("<circle").count() + s.matches("<rect").count() > 5);
}

fn count_colour(img: &RgbImage, c: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == c).count()
}

#[test]
fn figures_of_a_hand_made_sweep() {
    let f = hand_made_sweep();
    let dir = temp_dir("figures");
    let traj: Vec<Schedule> = ["constant:10", "linear:10", "exp:0.1,0.6"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let files = sweep_figures(&f, &cfg(), &traj, &dir).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "frontier.png",
            "frontier.svg",
            "alpha_effect_bs1.png",
            "alpha_effect_bs1.svg",
            "alpha_effect_bs128.png",
            "alpha_effect_bs128.svg",
            "trajectories.png",
            "trajectories.svg"
        ]
    );
    let front = check_png(&dir.join("frontier.png"), Some((1500, 640)));
    // The rings of the Pareto-optimal points are drawn in pure (200, 0, 0).
    assert!(count_colour(&front, [200, 0, 0]) > 100);
    check_svg(
        &dir.join("frontier.svg"),
        &["Pareto", "r_init = 0.25", "(0.25, 0)", "uncompressed"],
    );
    let alpha = check_png(&dir.join("alpha_effect_bs128.png"), Some((1650, 580)));
    // One line colour per r_init (tab10 blue, orange, green).
    for c in [[31, 119, 180], [255, 127, 14], [44, 160, 44]] {
        assert!(count_colour(&alpha, c) > 50, "{c:?}");
    }
    check_svg(
        &dir.join("alpha_effect_bs1.svg"),
        &["batch 1", "decay alpha"],
    );
    let traj_png = check_png(&dir.join("trajectories.png"), Some((1200, 60 + 3 * 250)));
    // r_target (light) and r_safe (dark) bars.
    assert!(count_colour(&traj_png, [158, 202, 225]) > 500);
    assert!(count_colour(&traj_png, [33, 113, 181]) > 500);
    check_svg(
        &dir.join("trajectories.svg"),
        &[
            "constant:10: 230 tokens removed",
            "linear:10: 223",
            "exp:0.1,0.6: 235",
            "r_safe",
        ],
    );
    // The trajectory figure alone, in memory.
    let one = TrajectoryFigure {
        schedules: vec![(
            "exp:0.25,0".into(),
            sret_tome::tome::Trajectory::new(&cfg(), &traj[2]).unwrap(),
        )],
    };
    assert_eq!(render_rgb(&one).unwrap().dimensions(), (1200, 310));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stage_pictures_fill_tokens_and_draw_borders() {
    // Four quadrants of distinct colours.
    let img = RgbImage::from_fn(224, 224, |x, y| match (x < 112, y < 112) {
        (true, true) => Rgb([200, 0, 0]),
        (false, true) => Rgb([0, 200, 0]),
        (true, false) => Rgb([0, 0, 200]),
        (false, false) => Rgb([100, 100, 100]),
    });
    // 7x7 grid (32-pixel patches): token 0 = the top row, token 1 = everything else. One group.
    let slots: Vec<u32> = (0..49).map(|p| if p < 7 { 0 } else { 1 }).collect();
    let m = StageMap {
        stage: 2,
        side: 7,
        slots,
        tokens_in: 49,
        tokens_out: 2,
        groups: 1,
    };
    assert_eq!(m.token_stats(), (2, 42, 0));
    let out = render_stage(&img, &m, Style::Mean, 1);
    assert_eq!(out.dimensions(), (224, 224));
    // Token 0: half red, half green (the top row spans both halves, 3.5 patches each).
    assert_eq!(out.get_pixel(10, 10).0, [100, 100, 0]);
    assert_eq!(out.get_pixel(200, 10).0, [100, 100, 0]);
    // Token 1: pixel rows 32..224 = 80 rows of red | green over 112 rows of blue | grey:
    // red (80*112*200 + 112*112*100) / (192*224) = 70.8, blue (112*112*200 + 112*112*100) / ... = 87.5.
    assert_eq!(out.get_pixel(10, 150).0, [71, 71, 88]);
    assert_eq!(out.get_pixel(200, 40).0, [71, 71, 88]);
    // The border between the two tokens (row of patches 0/1 at y = 32) is a token border.
    assert_eq!(out.get_pixel(50, 31).0, TOKEN_BORDER);
    // No group border with one group; no border inside a token.
    assert_eq!(count_colour(&out, GROUP_BORDER), 0);
    assert_ne!(out.get_pixel(31, 100).0, TOKEN_BORDER);

    // Stage 0's grid with 8 groups of 98: borders after 3.5 rows.
    let g = group_labels(28, 8);
    let m0 = StageMap {
        stage: 0,
        side: 28,
        slots: (0..784).collect(),
        tokens_in: 784,
        tokens_out: 784,
        groups: 8,
    };
    assert_eq!(g[3 * 28 + 13], 0);
    let out = render_stage(&img, &m0, Style::Random, 2);
    assert_eq!(out.dimensions(), (448, 448));
    // Scale 2: 16 output pixels per patch. Group 0 ends after row 3 on the left half (y = 64)
    // and after row 2 on the right half (y = 48), with a vertical step at column 14 (x = 224).
    assert_eq!(out.get_pixel(100, 64).0, GROUP_BORDER);
    assert_eq!(out.get_pixel(300, 48).0, GROUP_BORDER);
    assert_eq!(out.get_pixel(224, 56).0, GROUP_BORDER);
    assert_ne!(out.get_pixel(300, 64).0, GROUP_BORDER);
    assert_ne!(out.get_pixel(100, 48).0, GROUP_BORDER);
    // 98 * 2 = 196 = 7 rows: a straight border at y = 7 * 16.
    assert_eq!(out.get_pixel(10, 112).0, GROUP_BORDER);
    assert_eq!(out.get_pixel(440, 112).0, GROUP_BORDER);
    // Every patch is its own token: token borders everywhere else.
    assert_eq!(out.get_pixel(15, 100).0, TOKEN_BORDER);

    // The whole picture: input + 2 panels, captions drawn.
    let pic = render(&img, &[m0, m], Style::Mean, 1, "test").unwrap();
    assert_eq!(pic.dimensions(), (3 * 224 + 4 * 16, 70 + 224 + 64));
    let dark = (0..60)
        .flat_map(|y| (0..pic.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| pic.get_pixel(x, y).0.iter().all(|&c| c < 80))
        .count();
    assert!(dark > 50, "no caption text ({dark} dark pixels)");
}

// ---------------------------------------------------------------------------------------------
// GPU, end to end.
// ---------------------------------------------------------------------------------------------

fn parse(args: &[&str]) -> Command {
    let mut v = vec!["sret-tome"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v)
        .unwrap_or_else(|e| panic!("{e}"))
        .command
}

fn softmax64(l: &[f32]) -> Vec<f64> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn first_argmax(l: &[f32]) -> usize {
    (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
}

/// Logits of `images` through `schedule` at `batch` images per forward (zero-padded).
fn direct_logits(
    model: &Model,
    schedule: &str,
    images: &[Vec<f32>],
    batch: usize,
) -> Vec<Vec<f32>> {
    let plan = ForwardSpec::new(&model.cfg, &schedule.parse().unwrap(), DEFAULT_SEED).unwrap();
    let engine = common::engine(
        common::gpu(),
        common::cache(),
        model,
        &plan.clone().with_batch(batch),
    )
    .unwrap();
    let per = 3 * 224 * 224;
    let mut out = Vec::new();
    for chunk in images.chunks(batch) {
        let mut x: Vec<f32> = chunk.iter().flatten().copied().collect();
        x.resize(batch * per, 0.0);
        let logits = engine.forward(&x).unwrap().logits;
        for i in 0..chunk.len() {
            out.push(logits[i * 1000..(i + 1) * 1000].to_vec());
        }
    }
    out
}

#[test]
fn eval_on_a_labelled_folder_end_to_end_and_by_shards() {
    let root = temp_dir("eval-e2e");
    let good = make_folder(&root);
    let out = root.join("out");
    let run = |extra: &[&str]| -> ResultsFile {
        let mut args = vec![
            "eval",
            "--data",
            root.to_str().unwrap(),
            // 3 of the 5 samples, evenly spaced: broken.jpg, grad.png, b_mirror.PNG.
            "--limit",
            "3",
            "--batch",
            "3",
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        match parse(&args) {
            Command::Eval(a) => sret_tome::cli::eval::run_eval(a).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let json = out.join("eval.json");
    let csv = out.join("eval.csv");
    let res = run(&[
        "--schedule",
        "exp:0.25,0",
        "--schedule",
        "exp:0.25,0.005", // merges exactly as exp:0.25,0: shares its program
        "--schedule",
        "exp:0,0.5", // merges nothing: the uncompressed model
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);

    // The broken JPEG is counted and named; the text file and the root file are skipped.
    assert_eq!(res.failures.len(), 1);
    assert!(res.failures[0].path.ends_with("broken.jpg"));
    assert!(!res.failures[0].why.is_empty());
    assert_eq!(res.skipped.len(), 2);
    assert!(res.data.labelled);
    assert_eq!(res.data.class_map, Some(ClassMap::ImagenetNames));
    assert_eq!((res.data.images_total, res.data.images_selected), (5, 3));
    let names: Vec<&str> = res.results.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(names, ["none", "exp:0.25,0", "exp:0.25,0.005", "exp:0,0.5"]);
    assert_eq!(res.results[2].same_as.as_deref(), Some("exp:0.25,0"));
    assert_eq!(res.results[3].same_as.as_deref(), Some("none"));
    let base = res.results[0].quality.clone().unwrap();
    assert_eq!(
        (base.images, base.labelled, base.compared, base.agree),
        (2, 2, 2, 2)
    );
    assert_eq!(base.kl_sum, 0.0);
    assert_eq!(res.results[1].quality, res.results[2].quality);
    assert_eq!(res.results[3].quality.as_ref().unwrap(), &base);
    assert!(res.results.iter().all(|r| !r.pareto));

    // The same numbers from direct forwards of the same images, one per forward (the
    // evaluation ran them together, padded to a batch of 3).
    let model = Model::synthetic("sret_t_distill").unwrap();
    let images: Vec<Vec<f32>> = [&good[0], &good[2]]
        .iter()
        .map(|p| sret_tome::io::load_image(p).unwrap())
        .collect();
    let labels = [285usize, 281]; // Egyptian cat, tabby
    let base_l = direct_logits(&model, "none", &images, 1);
    let exp_l = direct_logits(&model, "exp:0.25,0", &images, 1);
    let (mut t1, mut t5, mut agree, mut kl) = (0, 0, 0, 0.0f64);
    for i in 0..2 {
        let l = &exp_l[i];
        t1 += (first_argmax(l) == labels[i]) as u64;
        t5 += (l.iter().filter(|&&x| x > l[labels[i]]).count() < 5) as u64;
        agree += (first_argmax(l) == first_argmax(&base_l[i])) as u64;
        let (p, q) = (softmax64(&base_l[i]), softmax64(l));
        kl += p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum::<f64>();
    }
    let q = res.results[1].quality.clone().unwrap();
    assert_eq!(
        (q.images, q.top1_correct, q.top5_correct, q.agree),
        (2, t1, t5, agree)
    );
    assert!(
        (q.kl_sum - kl).abs() < 1e-4 * kl.max(1e-3),
        "{} vs {kl}",
        q.kl_sum
    );
    assert!(kl > 0.0, "merging 264 tokens changed nothing?");
    let bt1 = (0..2)
        .filter(|&i| first_argmax(&base_l[i]) == labels[i])
        .count() as u64;
    assert_eq!(base.top1_correct, bt1);

    // Written files.
    assert_same(&ResultsFile::read_json(&json).unwrap(), &res);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("schedule,role,r_init,alpha,removed_tokens"));
    assert!(
        lines[2].starts_with("exp:0.25;0,extra,0.25,0,264,"),
        "{}",
        lines[2]
    );

    // Two image shards of the uncompressed model, joined, give the same counts.
    let s1 = out.join("s1.json");
    let s2 = out.join("s2.json");
    let p1 = run(&["--shard", "1/2", "--json", s1.to_str().unwrap()]);
    let p2 = run(&["--shard", "2/2", "--json", s2.to_str().unwrap()]);
    assert_eq!((p1.data.images_selected, p2.data.images_selected), (2, 1));
    assert_eq!((p1.failures.len(), p2.failures.len()), (1, 0));
    let merged = match parse(&[
        "merge-results",
        s2.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out-dir",
        out.join("merged").to_str().unwrap(),
    ]) {
        Command::MergeResults(a) => sret_tome::cli::merge_results::run_merge(a).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(out.join("merged").join("eval.json").exists());
    assert!(out.join("merged").join("eval.csv").exists());
    assert_eq!(merged.failures, res.failures);
    assert_eq!(merged.data.images_selected, 3);
    assert_eq!(merged.results.len(), 1);
    assert_eq!(merged.results[0].quality.as_ref(), Some(&base));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn sweep_on_synthetic_images_end_to_end_and_by_shards() {
    let dir = temp_dir("sweep-e2e");
    let common_args = [
        "--synthetic",
        "1",
        "--rinit",
        "0:0.25:0.25",
        "--alpha",
        "0,0.5",
        "--batch",
        "2",
    ];
    let run = |extra: &[&str]| -> ResultsFile {
        let mut args = vec!["sweep"];
        args.extend_from_slice(&common_args);
        args.extend_from_slice(extra);
        match parse(&args) {
            Command::Sweep(a) => sret_tome::cli::sweep::run_sweep_cmd(a).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let whole_dir = dir.join("whole");
    // One program resident at a time: two passes over the data, the second comparing with the
    // uncompressed model's outputs kept from the first.
    let res = run(&[
        "--resident",
        "1",
        "--bench-batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--out-dir",
        whole_dir.to_str().unwrap(),
    ]);
    let names: Vec<&str> = res.results.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(
        names,
        ["none", "exp:0,0", "exp:0,0.5", "exp:0.25,0", "exp:0.25,0.5"]
    );
    assert!(!res.data.labelled);
    assert_eq!(res.quality_metric, QualityMetric::Agreement);
    let c = cfg();
    for r in &res.results {
        let traj = sret_tome::tome::Trajectory::new(&c, &r.schedule.parse().unwrap()).unwrap();
        assert_eq!(r.removed_tokens, traj.removed_total());
        let q = r.quality.as_ref().unwrap();
        assert_eq!((q.images, q.compared), (1, 1));
        assert_eq!(r.bench.len(), 1);
        let b = &r.bench[0];
        assert_eq!(b.batch, 1);
        assert!(b.throughput_img_s > 0.0 && b.pam_bytes > 0);
    }
    // r_init = 0 merges nothing: the uncompressed program, its numbers.
    for i in [1, 2] {
        assert_eq!(res.results[i].same_as.as_deref(), Some("none"));
        assert_eq!(res.results[i].quality, res.results[0].quality);
        assert_eq!(res.results[i].bench, res.results[0].bench);
        assert_eq!(res.results[i].agreement, Some(100.0));
    }
    // Merging changes the outputs a little (synthetic weights: the top-1 rarely moves).
    assert!(res.results[3].mean_kl.unwrap() > 0.0);
    // The frontier is the tested function's on (agreement, throughput, PAM) at batch 1.
    assert_eq!(res.pareto_batch, Some(1));
    let cands: Vec<&ScheduleResult> = res
        .results
        .iter()
        .filter(|r| r.role != Role::Baseline)
        .collect();
    let pts: Vec<Vec<f64>> = cands
        .iter()
        .map(|r| {
            vec![
                r.agreement.unwrap(),
                r.bench[0].throughput_img_s,
                r.bench[0].pam_bytes as f64,
            ]
        })
        .collect();
    let want = pareto_front(&pts, &[Sense::Maximize, Sense::Maximize, Sense::Minimize]);
    assert_eq!(cands.iter().map(|r| r.pareto).collect::<Vec<_>>(), want);
    assert!(want.iter().any(|&x| x));
    // Files and figures.
    assert_same(
        &ResultsFile::read_json(&whole_dir.join("sweep.json")).unwrap(),
        &res,
    );
    assert_eq!(
        std::fs::read_to_string(whole_dir.join("sweep.csv"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    check_png(&whole_dir.join("frontier.png"), Some((1500, 640)));
    check_png(&whole_dir.join("alpha_effect_bs1.png"), Some((1650, 580)));
    check_png(&whole_dir.join("trajectories.png"), None);
    check_svg(
        &whole_dir.join("frontier.svg"),
        &["agreement", "throughput at batch 1"],
    );
    check_svg(&whole_dir.join("alpha_effect_bs1.svg"), &["r_init = 0.25"]);
    // The trajectory figure draws the paper's trio and frontier points; which points are on
    // the frontier depends on measured throughput, so the test asks the tested function.
    let drawn: Vec<String> = sret_tome::eval::sweep::trajectory_defaults(&res)
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(drawn.len() > 3, "no frontier point drawn: {drawn:?}");
    let drawn: Vec<&str> = drawn.iter().map(String::as_str).collect();
    check_svg(&whole_dir.join("trajectories.svg"), &drawn);

    // The grid in two shards (no timing), joined: the same quality, point by point.
    let shard_dir = dir.join("shards");
    for k in ["1/2", "2/2"] {
        let part = run(&[
            "--shard",
            k,
            "--no-bench",
            "--out-dir",
            shard_dir.to_str().unwrap(),
        ]);
        assert_eq!(part.results.len(), 3); // the reference and two points
    }
    assert!(!shard_dir.join("frontier.png").exists());
    let merged_dir = dir.join("merged");
    let merged = match parse(&[
        "merge-results",
        shard_dir.join("sweep.shard-1-of-2.json").to_str().unwrap(),
        shard_dir.join("sweep.shard-2-of-2.json").to_str().unwrap(),
        "--out-dir",
        merged_dir.to_str().unwrap(),
    ]) {
        Command::MergeResults(a) => sret_tome::cli::merge_results::run_merge(a).unwrap(),
        other => panic!("{other:?}"),
    };
    let mnames: Vec<&str> = merged.results.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(mnames, names);
    for (m, w) in merged.results.iter().zip(&res.results) {
        assert_eq!(m.quality, w.quality, "{}", m.schedule);
    }
    // Without timing the frontier is on FLOPs; the figures are drawn from the joined results.
    assert_eq!(merged.pareto_batch, None);
    check_png(&merged_dir.join("frontier.png"), Some((1500, 640)));
    check_png(&merged_dir.join("alpha_effect.png"), Some((1650, 580)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn visualize_end_to_end() {
    let dir = temp_dir("visualize");
    let out = dir.join("vis.png");
    let maps = match parse(&[
        "visualize",
        "--image",
        SAMPLE,
        "--schedule",
        "exp:0.25,0",
        "--out",
        out.to_str().unwrap(),
    ]) {
        Command::Visualize(a) => sret_tome::cli::visualize::run_visualize(a).unwrap(),
        other => panic!("{other:?}"),
    };
    let traj = sret_tome::tome::Trajectory::new(&cfg(), &"exp:0.25,0".parse().unwrap()).unwrap();
    assert_eq!(maps.len(), 3);
    for m in &maps {
        // Every patch is in one of the stage's final tokens, and every final token holds a patch.
        let n_out = traj.final_tokens(m.stage).unwrap();
        assert_eq!(m.tokens_out, n_out);
        assert_eq!(m.slots.len(), m.side * m.side);
        assert!(m.slots.iter().all(|&s| (s as usize) < n_out));
        assert_eq!(m.token_stats().0, n_out, "stage {}", m.stage);
    }
    assert_eq!((maps[0].side, maps[0].groups), (28, 8));
    let img = check_png(&out, Some((4 * 448 + 5 * 16, 70 + 448 + 64)));
    // Group borders of stages 0 and 1 are drawn; stage 2 has one group.
    assert!(count_colour(&img, GROUP_BORDER) > 2000);
    // A name that is not .png is refused before any work.
    match parse(&["visualize", "--image", SAMPLE, "--out", "x.svg"]) {
        Command::Visualize(a) => {
            let e = sret_tome::cli::visualize::run_visualize(a)
                .unwrap_err()
                .to_string();
            assert!(e.contains("PNG"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
