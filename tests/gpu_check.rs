//! `scripts/gpu-check` keeps working: run it the CI way (small batches, two schedules, no test
//! suite) against the built binary, and read its summary.

use std::path::Path;
use std::process::Command;

#[test]
fn gpu_check_runs_on_the_adapter_at_hand() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("sret-gpu-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = std::time::Instant::now();
    let run = Command::new("bash")
        .arg(root.join("scripts/gpu-check"))
        .arg("--skip-tests")
        .arg(&out)
        .env("SRET_TOME", env!("CARGO_BIN_EXE_sret-tome"))
        .env("GPU_CHECK_BATCHES", "1,2")
        .env("GPU_CHECK_ITERS", "2")
        .env("GPU_CHECK_WARMUP", "1")
        .env("GPU_CHECK_SCHEDULES", "none exp:0.25,0")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    let summary = std::fs::read_to_string(out.join("summary.json"))
        .unwrap_or_else(|e| panic!("summary.json: {e}\n{log}"));
    let v: serde_json::Value = serde_json::from_str(&summary).expect("valid JSON");
    assert!(run.status.success(), "gpu-check failed: {log}\n{summary}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["tests"], "skipped (--skip-tests)");
    assert!(!v["adapters"].as_array().unwrap().is_empty());
    // Both schedules at both batches, measured and profiled.
    let results = v["bench"]["results"].as_array().unwrap();
    for schedule in ["none", "exp:0.25,0"] {
        for batch in [1, 2] {
            assert!(
                results
                    .iter()
                    .any(|r| r["schedule"] == schedule && r["batch"] == batch),
                "{schedule} at {batch} in {results:?}"
            );
            let plan = &v["plan"][format!("{schedule}@{batch}")];
            assert!(plan["dispatches"].as_u64().unwrap() > 0, "{plan}");
            assert_eq!(
                plan["roofline"]["label"],
                "estimate (roofline, not a measurement)"
            );
        }
    }
    assert_eq!(v["bench"]["profiles"].as_array().unwrap().len(), 4);
    for f in ["bench.json", "bench.txt", "adapters.txt", "compare.txt"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let compare = std::fs::read_to_string(out.join("compare.txt")).unwrap();
    assert!(compare.contains("223.58"), "{compare}");
    eprintln!("gpu-check took {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&out);
}
