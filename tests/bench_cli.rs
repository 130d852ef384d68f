//! `sret-tome bench` and `sweep` run as a user runs them (the built binary): the end-to-end
//! columns of `bench` in its table, `--json` and `--csv`, and every count argument of the two
//! commands refused with a clear message (clap's exit 2, or exit 1 naming the flag) instead of
//! a panic (exit 101).

use std::path::PathBuf;
use std::process::Command;

/// A small model, so that a real measurement takes seconds on a software adapter.
const MODEL: &str = "deit_tiny_patch16_224@depth=1";

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_sret-tome"))
        .args(args)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the binary");
    Ran {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sret-tome-bench-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `args` exits with `code` (not a panic's), its stderr naming every one of `needles`.
fn assert_refused(args: &[&str], code: i32, needles: &[&str]) {
    let r = run(args);
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("stack backtrace"),
        "{args:?} panicked:\n{}",
        r.stderr
    );
    assert_eq!(r.code, code, "{args:?}: exit code\n{}", r.stderr);
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "{args:?}: expected '{n}' in:\n{}",
            r.stderr
        );
    }
}

const OLD_FIELDS: [&str; 11] = [
    "schedule",
    "precision",
    "batch",
    "micro_batch",
    "throughput_img_s",
    "latency_ms",
    "pam_bytes",
    "flops_thop",
    "flops_total",
    "params",
    "iters",
];

#[test]
fn bench_reports_end_to_end_and_encode_times_in_table_json_and_csv() {
    let dir = temp_dir("e2e");
    let json = dir.join("bench.json");
    let csv = dir.join("bench.csv");
    let r = run(&[
        "bench",
        "--model",
        MODEL,
        "--schedule",
        "none",
        "--schedule",
        "constant:8",
        "--batch",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--autotune",
        "off",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["timing"].as_str().unwrap().contains("forward"), "{v}");
    let how = v["timing_end_to_end"].as_str().unwrap();
    assert!(how.contains("encode + submit + wait + readback"), "{how}");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    for row in rows {
        for f in OLD_FIELDS {
            assert!(!row[f].is_null(), "{f} missing in {row}");
        }
        assert_eq!(row["iters"], 2);
        let (device, e2e, encode) = (
            row["latency_ms"].as_f64().unwrap(),
            row["e2e_ms"].as_f64().unwrap(),
            row["encode_ms"].as_f64().unwrap(),
        );
        assert!(device > 0.0 && e2e.is_finite() && encode > 0.0, "{row}");
        // Each encoding is the first part of its end-to-end forward, so the medians keep the
        // order too.
        assert!(encode <= e2e, "{row}");
    }

    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(
        &header[..11],
        OLD_FIELDS,
        "old columns first, in their order"
    );
    assert_eq!(&header[11..], ["e2e_ms", "encode_ms"]);
    assert_eq!(lines.len(), 1 + rows.len());
    for (line, row) in lines[1..].iter().zip(rows) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        assert_eq!(cells[0], row["schedule"].as_str().unwrap());
        for (i, f) in [(11, "e2e_ms"), (12, "encode_ms")] {
            let cell: f64 = cells[i].parse().unwrap();
            assert!(
                (cell - row[f].as_f64().unwrap()).abs() < 1e-3,
                "{f}: {line} vs {row}"
            );
        }
    }

    let header = r
        .stdout
        .lines()
        .find(|l| l.starts_with("schedule"))
        .unwrap_or_else(|| panic!("no table header in:\n{}", r.stdout));
    for h in ["img/s", "PAM MB", "e2e ms", "enc ms", "e2e img/s"] {
        assert!(header.contains(h), "{header}");
    }
    for row in rows {
        let e2e = format!("{:.2}", row["e2e_ms"].as_f64().unwrap());
        let schedule = row["schedule"].as_str().unwrap();
        let batch = row["batch"].to_string();
        assert!(
            r.stdout.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() > 12 && cells[0] == schedule && cells[2] == batch && cells[12] == e2e
            }),
            "{schedule} at {batch}: e2e {e2e} ms not in the table:\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("e2e: wall clock on the host"),
        "{}",
        r.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_counts_of_zero_and_repeated_values_are_clear_errors() {
    let bench = |extra: &[&'static str]| {
        let mut v = vec!["bench", "--model", MODEL, "--schedule", "none"];
        v.extend_from_slice(extra);
        v
    };
    // The case of the issue: it used to panic in `bench::median`.
    assert_refused(
        &bench(&["--batch", "1", "--iters", "0"]),
        2,
        &["--iters", "at least 1"],
    );
    assert_refused(
        &bench(&["--batch", "1", "--warmup", "0"]),
        2,
        &["--warmup", "at least 1"],
    );
    assert_refused(&bench(&["--batch", "0"]), 2, &["--batch", "at least 1"]);
    assert_refused(&bench(&["--batch", "1,0"]), 2, &["--batch", "at least 1"]);
    assert_refused(&bench(&["--batch", "1,,2"]), 2, &["--batch"]);
    assert_refused(&bench(&["--batch", "two"]), 2, &["--batch", "'two'"]);
    assert_refused(
        &bench(&["--batch", "2,1,2"]),
        1,
        &["batch '2'", "listed twice"],
    );
    assert_refused(
        &bench(&["--batch", "1", "--schedule", "none"]),
        1,
        &["schedule 'none'", "listed twice"],
    );
}

#[test]
fn sweep_counts_of_zero_and_repeated_values_are_clear_errors() {
    let dir = temp_dir("sweep");
    let out = dir.join("out");
    let out = out.to_str().unwrap().to_string();
    let sweep = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "sweep",
            "--model",
            MODEL,
            "--synthetic",
            "1",
            "--rinit",
            "0.25",
            "--alpha",
            "0",
            "--out-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(out.clone());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let refused = |extra: &[&str], code: i32, needles: &[&str]| {
        let args = sweep(extra);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        assert_refused(&args, code, needles);
    };
    // The case of the issue: it used to panic after the whole quality pass.
    refused(
        &["--bench-batch", "1", "--iters", "0"],
        2,
        &["--iters", "at least 1"],
    );
    refused(
        &["--bench-batch", "1", "--warmup", "0"],
        2,
        &["--warmup", "at least 1"],
    );
    refused(&["--bench-batch", "0"], 2, &["--bench-batch", "at least 1"]);
    refused(
        &["--bench-batch", "1,1"],
        1,
        &["bench-batch '1'", "listed twice"],
    );
    refused(&["--batch", "0"], 2, &["--batch", "at least 1"]);
    refused(&["--resident", "0"], 2, &["--resident", "at least 1"]);
    refused(
        &["--pareto-batch", "0"],
        2,
        &["--pareto-batch", "at least 1"],
    );
    refused(
        &["--bench-batch", "1,4", "--pareto-batch", "8"],
        1,
        &["pareto-batch '8'", "not a timed batch", "1,4"],
    );
    refused(
        &["--no-bench", "--pareto-batch", "1"],
        1,
        &["pareto-batch '1'", "--no-bench"],
    );
    // Nothing was written for any of them.
    assert!(!std::path::Path::new(&out).join("sweep.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_library_refuses_zero_timed_forwards_before_any_work() {
    use sret_tome::bench::{bench_one, BenchOptions};
    let gpu = sret_tome::gpu::Gpu::new(&sret_tome::AdapterChoice::default()).unwrap();
    let model = std::sync::Arc::new(sret_tome::Model::synthetic(MODEL).unwrap());
    let opts = BenchOptions {
        warmup: 1,
        iters: Some(0),
        budget_secs: 1.0,
        end_to_end: true,
    };
    let images = sret_tome::model::synthetic_images(&model.cfg, 1, 1);
    let e = bench_one(
        &gpu,
        &sret_tome::PipelineCache::default(),
        &model,
        &"none".parse().unwrap(),
        sret_tome::Precision::F32,
        1,
        &images,
        &opts,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("iters") && e.contains("at least 1"), "{e}");
}
