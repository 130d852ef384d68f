//! Hardware-independent cost figures (`runtime::figures`) and the roofline estimate: no device.

use std::process::Command;

use sret_tome::kernels::linear::{self, Epilogue};
use sret_tome::kernels::{Family, ProgramBuilder, Variant, Variants};
use sret_tome::model::weights::Linear;
use sret_tome::model::{synthetic_weights, ModelConfig};
use sret_tome::runtime::figures::{self, CostFigures};
use sret_tome::runtime::forward::split_batch;
use sret_tome::runtime::{cost, record, ForwardSpec};
use sret_tome::tome::{Schedule, Trajectory, DEFAULT_SEED};

/// The cost figures `plan` prints by default: the portable kernels, the MLP fused.
fn figures_for(model: &str, schedule: &str, batch: usize) -> CostFigures {
    let cfg = ModelConfig::by_name(model).unwrap();
    let schedule: Schedule = schedule.parse().unwrap();
    let spec = ForwardSpec::new(&cfg, &schedule, DEFAULT_SEED)
        .unwrap()
        .with_batch(batch)
        .with_kernels(Variants::all(Variant::Portable));
    let weights = synthetic_weights(&cfg, 0);
    figures::cost_figures(&cfg, &weights, &spec, &wgpu::Limits::default(), None)
}

#[test]
fn merging_costs_fewer_bytes_and_flops() {
    for batch in [1, 8] {
        let none = figures_for("sret_t", "none", batch);
        let merged = figures_for("sret_t", "exp:0.25,0", batch);
        assert!(
            merged.total.bytes() < none.total.bytes(),
            "batch {batch}: {:?} vs {:?}",
            merged.total,
            none.total
        );
        assert!(merged.total.flops < none.total.flops, "batch {batch}");
        // Merging adds per merge the matcher, a merge dispatch (ranking, merge and unmerge map
        // in one) and the attention projection it keeps out of the fused MLP; nothing else
        // changes. (These figures count the portable kernels; the subgroup matcher rides in
        // the subgroup attention's dispatch: plan_counts_the_kernel_variants_it_is_given.)
        let count = |f: &CostFigures, fam: Family| {
            f.families
                .iter()
                .find(|(x, _)| *x == fam)
                .map(|(_, t)| t.dispatches)
                .unwrap()
        };
        let merges = count(&merged, Family::Merge);
        assert!(merges > 0);
        assert_eq!(count(&none, Family::Merge), 0);
        assert_eq!(count(&merged, Family::Matching), merges);
        assert_eq!(
            count(&merged, Family::Attention),
            count(&none, Family::Attention) + merges
        );
        assert_eq!(count(&none, Family::Mlp), count(&merged, Family::Mlp));
    }
}

/// The stem runs in more bands as the batch grows (`record::stem_bands`); a band reads the
/// image rows under it and writes its own rows, so the stem's bytes per image stay what one
/// band would move (before the bands were counted so, every band counted the whole image and
/// the whole conv2 output: 10.6 MB per image at batch 1, 15.7 MB at batch 64).
#[test]
fn stem_bands_count_their_own_rows() {
    let per_image = |batch: usize| {
        let f = figures_for("sret_t", "none", batch);
        let (_, stem) = f.families.iter().find(|(x, _)| *x == Family::Stem).unwrap();
        stem.bytes() as f64 / batch as f64
    };
    let one = per_image(1);
    for batch in [2, 8, 64] {
        let b = per_image(batch);
        assert!(
            (b - one).abs() <= 0.1 * one,
            "stem bytes per image: {b} at batch {batch}, {one} at batch 1"
        );
    }
    // Image, conv1 bands, conv2 output (read and written) and tokens: about 6.4 MB per image.
    assert!(one < 7.0e6, "{one}");
}

#[test]
fn dispatch_counts_are_the_recorded_programs() {
    for (model, schedule, batch) in [
        ("sret_t", "none", 1),
        ("sret_t", "exp:0.25,0", 4),
        ("sret_t_distill", "exp:0.25,0", 128),
        ("deit_tiny_distill", "constant:8", 2),
        ("pit_ti_distill", "exp:0.25,0", 1),
    ] {
        let cfg = ModelConfig::by_name(model).unwrap();
        let s: Schedule = schedule.parse().unwrap();
        let limits = wgpu::Limits::default();
        let weights = synthetic_weights(&cfg, 0);
        let whole = ForwardSpec::new(&cfg, &s, DEFAULT_SEED)
            .unwrap()
            .with_batch(batch)
            .with_kernels(Variants::all(Variant::Portable));
        let (chunks, mb) = split_batch(&cfg, &weights, &whole, &limits);
        let spec = whole.with_batch(mb);
        let recorded = record::record(&cfg, &weights, &spec, &limits, None);
        let fig = figures_for(model, schedule, batch);
        let what = format!("{model} {schedule} batch {batch}");
        assert_eq!(
            fig.program.len(),
            recorded.builder.dispatch_count(),
            "{what}"
        );
        assert_eq!(
            fig.total.dispatches,
            (chunks * recorded.builder.dispatch_count()) as u64,
            "{what}"
        );
        assert_eq!((fig.micro_batches, fig.micro_batch), (chunks, mb), "{what}");
        assert_eq!(
            fig.passes, chunks,
            "{what}: one compute pass per micro-batch"
        );
        // The families partition the forward.
        let sum =
            |g: fn(&figures::Totals) -> u64| fig.families.iter().map(|(_, t)| g(t)).sum::<u64>();
        assert_eq!(sum(|t| t.dispatches), fig.total.dispatches, "{what}");
        assert_eq!(sum(|t| t.flops), fig.total.flops, "{what}");
        assert_eq!(sum(|t| t.bytes_read), fig.total.bytes_read, "{what}");
        assert_eq!(sum(|t| t.bytes_written), fig.total.bytes_written, "{what}");
    }
    // Batch 128 of SReT-T runs as micro-batches under the default 128 MiB binding limit.
    assert!(figures_for("sret_t_distill", "none", 128).micro_batches > 1);
}

#[test]
fn per_dispatch_flops_agree_with_the_cost_model() {
    // The kernels' arithmetic, read from their parameters, stays within a few per cent of
    // cost::flops_total's all-ops convention.
    for (model, schedule) in [
        ("sret_t", "none"),
        ("sret_t", "exp:0.25,0"),
        ("sret_s", "constant:10"),
        ("deit_tiny_distill", "none"),
        ("deit_tiny_distill", "constant:8"),
        ("pit_ti_distill", "exp:0.25,0"),
    ] {
        let cfg = ModelConfig::by_name(model).unwrap();
        let traj = Trajectory::new(&cfg, &schedule.parse().unwrap()).unwrap();
        let model_flops = cost::flops_total(&cfg, &traj) as f64;
        let fig = figures_for(model, schedule, 1);
        let ratio = fig.total.flops as f64 / model_flops;
        assert!(
            (0.95..1.05).contains(&ratio),
            "{model} {schedule}: {} from the kernels vs {} from the cost model",
            fig.total.flops,
            model_flops
        );
    }
}

#[test]
fn one_linear_layer_by_hand() {
    // y[4, 12] = x[4, 8] W^T + b: W^T is kept as [8, 16] (columns padded to 8), the bias as 16.
    let mut b = ProgramBuilder::new(&wgpu::Limits::default());
    let l = Linear {
        weight: vec![0.5; 12 * 8],
        bias: vec![0.25; 12],
        out_features: 12,
        in_features: 8,
    };
    let w = linear::upload(&mut b, "fc", &l);
    let x = b.activation("x", 4 * 8);
    let y = b.activation("y", 4 * 12);
    linear::record(&mut b, Family::Mlp, 4, &w, Epilogue::Bias, x, y);
    let costs = figures::dispatch_costs(&b);
    assert_eq!(costs.len(), 1);
    let c = &costs[0];
    let (xb, wb, bb, yb) = (4 * 8 * 4, 8 * 16 * 4, 16 * 4, 4 * 12 * 4);
    assert_eq!(
        c.bytes_read,
        xb + wb + bb,
        "x + W + b, the bias bound twice counted once"
    );
    assert_eq!(c.bytes_written, yb);
    // A multiply-accumulate per input and output, plus the bias add.
    assert_eq!(c.flops, 4 * 12 * (2 * 8 + 1));
    assert_eq!(c.family, Family::Mlp);
}

#[test]
fn roofline_is_monotone_and_labelled() {
    let fig = figures_for("sret_t_distill", "exp:0.25,0", 8);
    let base = figures::device_profile("rtx-4060-ti").unwrap();
    let t = |p: &figures::DeviceProfile| figures::roofline(&fig, p).total.seconds;
    let mut prev = f64::INFINITY;
    for bw in [10.0, 50.0, 288.0, 1000.0, 1e6] {
        let p = figures::DeviceProfile {
            bandwidth_gb_s: bw,
            ..base.clone()
        };
        let s = t(&p);
        assert!(
            s <= prev,
            "more bandwidth ({bw} GB/s) is never slower: {s} > {prev}"
        );
        prev = s;
    }
    let mut prev = f64::INFINITY;
    for tf in [0.01, 0.1, 1.0, 22.1, 100.0] {
        let p = figures::DeviceProfile {
            fp32_tflop_s: tf,
            ..base.clone()
        };
        let s = t(&p);
        assert!(s <= prev, "more arithmetic ({tf} TFLOP/s) is never slower");
        prev = s;
    }
    // With no per-dispatch cost and unbounded bandwidth, the compute term alone remains.
    let p = figures::DeviceProfile {
        bandwidth_gb_s: 1e12,
        dispatch_us: 0.0,
        ..base.clone()
    };
    let r = figures::roofline(&fig, &p);
    let compute = fig.total.flops as f64 / (base.fp32_tflop_s * 1e12);
    assert!((r.total.seconds - compute).abs() < 1e-3 * compute);
    assert_eq!(r.total.bound(), figures::Bound::Compute);
    let r = figures::roofline(&fig, &base);
    assert!((r.images_per_s - 8.0 / r.total.seconds).abs() < 1e-6 * r.images_per_s);
    let text = figures::render_roofline(&r, 8);
    assert!(
        text.contains("estimate (roofline, not a measurement)"),
        "{text}"
    );
    assert_eq!(
        figures::roofline_json(&r)["label"],
        "estimate (roofline, not a measurement)"
    );
    // Every profile in assets/devices.json loads, with its sources noted.
    let names: Vec<String> = figures::device_profiles()
        .into_iter()
        .map(|p| p.name)
        .collect();
    for n in ["rtx-4060-ti", "laptop-igpu", "apple-m2", "lavapipe-2core"] {
        assert!(names.iter().any(|m| m == n), "{n} in {names:?}");
    }
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sret-tome"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plan_json_and_text_agree() {
    let args = ["plan", "--schedule", "exp:0.25,0", "--batch", "2"];
    let (ok, text, err) = cli(&args);
    assert!(ok, "{err}");
    let (ok, json, err) = cli(&[&args[..], &["--json"]].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dispatches = v["dispatches"].as_u64().unwrap();
    let bytes = &v["global_bytes"];
    let (read, written) = (
        bytes["read"].as_u64().unwrap(),
        bytes["written"].as_u64().unwrap(),
    );
    assert_eq!(bytes["total"].as_u64().unwrap(), read + written);
    assert_eq!(v["cost_batch"], 2);
    assert!(text.contains(&format!("{dispatches} dispatches")), "{text}");
    let fig = figures_for("sret_t_distill", "exp:0.25,0", 2);
    assert_eq!(dispatches, fig.total.dispatches);
    assert_eq!(read, fig.total.bytes_read);
    assert_eq!(v["cost"]["flops"].as_u64().unwrap(), fig.total.flops);
    let families = v["cost"]["families"].as_object().unwrap();
    for f in Family::ALL {
        let fam = &families[f.name()];
        assert!(fam["dispatches"].is_u64() && fam["global_bytes"]["read"].is_u64());
        assert!(fam["flops"].is_u64() && fam["intensity"].is_f64(), "{f:?}");
    }
    let matching = &families["matching"];
    assert!(text.contains(&format!(
        "  matching   {:>10}",
        matching["dispatches"].as_u64().unwrap()
    )));
    // The roofline, labelled in both forms.
    let (ok, text, err) = cli(&["plan", "--device-profile", "rtx-4060-ti"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("estimate (roofline, not a measurement) on rtx-4060-ti"),
        "{text}"
    );
    assert!(text.contains("images/s at batch 1"), "{text}");
    let (ok, json, _) = cli(&["plan", "--device-profile", "apple-m2", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["roofline"]["label"],
        "estimate (roofline, not a measurement)"
    );
    assert!(v["roofline"]["images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["roofline"]["profile"]["name"], "apple-m2");
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let (ok, _, err) = cli(&["plan", "--device-profile", "tpu-v9"]);
    assert!(!ok);
    assert!(err.contains("tpu-v9"), "{err}");
    for n in ["rtx-4060-ti", "laptop-igpu", "apple-m2", "lavapipe-2core"] {
        assert!(err.contains(n), "{err}");
    }
    assert!(figures::device_profile("tpu-v9").is_err());
}

/// `plan --kernels` counts the dispatches of the variants it is given: the portable kernels by
/// default, the subgroup kernels (at `--subgroup-width` lanes: a linear layer is a full-tile and
/// a last-tile dispatch) or the tiled linear kernel when pinned, the MLP fused in each unless
/// `mlp=portable` says otherwise; `--json` says which.
#[test]
fn plan_counts_the_kernel_variants_it_is_given() {
    let plan = |extra: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_sret-tome"))
            .args([
                "plan",
                "--model",
                "sret_t",
                "--schedule",
                "exp:0.25,0",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let kernels = |v: &serde_json::Value| -> Vec<String> {
        let counts = v["cost"]["kernels"].as_object().expect("cost.kernels");
        counts
            .iter()
            .flat_map(|(k, n)| std::iter::repeat_n(k.clone(), n.as_u64().unwrap_or(0) as usize))
            .collect()
    };
    let portable = plan(&[]);
    let subgroup = plan(&["--kernels", "subgroup", "--subgroup-width", "32"]);
    let tiled = plan(&["--kernels", "tiled"]);
    assert_eq!(
        portable["kernel_variants"]["cost_figures"],
        "linear=portable,conv=portable,attention=portable,matching=portable,mlp=fused"
    );
    assert!(subgroup["kernel_variants"]["cost_figures"]
        .as_str()
        .unwrap()
        .contains("32-lane"));
    let (p, s, t) = (kernels(&portable), kernels(&subgroup), kernels(&tiled));
    assert!(p.iter().any(|k| k == "linear") && !p.iter().any(|k| k.ends_with("_sg")));
    for k in ["linear_sg", "attention_sg", "conv_sg"] {
        assert!(s.iter().any(|x| x == k), "{k} not counted: {s:?}");
    }
    // The subgroup matcher rides in the subgroup attention's dispatches; the portable one is
    // a dispatch of its own, as is the subgroup matcher after another attention.
    assert!(!s.iter().any(|k| k.starts_with("tome_match")), "{s:?}");
    for names in [&p, &t] {
        assert!(names.iter().any(|k| k == "tome_match"), "{names:?}");
    }
    let apart = kernels(&plan(&[
        "--kernels",
        "linear=subgroup,attention=portable,conv=portable,matching=subgroup,mlp=fused",
        "--subgroup-width",
        "32",
    ]));
    assert!(apart.iter().any(|k| k == "tome_match_sg"), "{apart:?}");
    assert!(t.iter().any(|k| k == "linear_tiled") && !t.iter().any(|k| k == "linear"));
    // Every family fuses the MLP unless told not to.
    for names in [&p, &s, &t] {
        assert!(names.iter().any(|k| k == "mlp_fused"), "{names:?}");
    }
    let unfused = kernels(&plan(&[
        "--kernels",
        "linear=tiled,attention=portable,conv=portable,matching=portable,mlp=portable",
    ]));
    assert!(!unfused.iter().any(|k| k == "mlp_fused"));
    assert!(
        unfused.iter().filter(|k| *k == "linear_tiled").count()
            > t.iter().filter(|k| *k == "linear_tiled").count()
    );
    // The dispatch totals are those of the program each counts.
    for (v, names) in [(&portable, &p), (&subgroup, &s), (&tiled, &t)] {
        let total = v["dispatches"].as_u64().unwrap_or(0);
        assert_eq!(
            total,
            names.len() as u64,
            "{}",
            v["kernel_variants"]["cost_figures"]
        );
    }
}
