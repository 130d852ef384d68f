//! The cluster recipes, run without a scheduler: Slurm's array script with the variables Slurm
//! sets for each task (`SLURM_ARRAY_TASK_ID`, `_MIN`, `_COUNT`), then its merge step; and the
//! Kubernetes Indexed Job's `--shard auto` with `JOB_COMPLETION_INDEX` and `SRET_SHARD_COUNT`.
//! Both must give what one unsharded `eval` gives. And the Slurm recipe submitted to a real
//! scheduler (ignored by default; scripts/test runs it on a one-node Slurm).

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sret-tome");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sret-cluster-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) {
    let out = cmd
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .env("SRET_TOME_AUTOTUNE", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const EVAL: [&str; 10] = [
    "eval",
    "--model",
    "sret_t",
    "--synthetic",
    "7",
    "--batch",
    "2",
    "--schedule",
    "none",
    "--schedule=constant:8",
];

/// Per schedule: (schedule, images, compared, agree, kl_sum).
fn quality(path: &Path) -> Vec<(String, u64, u64, u64, f64)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let q = &r["quality"];
            (
                r["schedule"].as_str().unwrap().to_string(),
                q["images"].as_u64().unwrap(),
                q["compared"].as_u64().unwrap(),
                q["agree"].as_u64().unwrap(),
                q["kl_sum"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_same(got: &Path, want: &Path) {
    let (g, w) = (quality(got), quality(want));
    assert_eq!(g.len(), w.len());
    for (a, b) in g.iter().zip(&w) {
        assert_eq!((&a.0, a.1, a.2, a.3), (&b.0, b.1, b.2, b.3), "{got:?}");
        assert!(
            (a.4 - b.4).abs() <= 1e-9 * b.4.abs().max(1.0),
            "{a:?} vs {b:?}"
        );
    }
    assert_eq!(g[0].1, 7, "every image counted once");
}

fn whole(dir: &Path) -> PathBuf {
    let out = dir.join("whole.json");
    run(Command::new(BIN).args(EVAL).arg("--json").arg(&out));
    out
}

#[test]
fn slurm_array_then_merge_equals_one_eval() {
    let dir = scratch("slurm");
    let out = dir.join("results");
    // An array numbered from 1 (--array=1-3), its tasks in any order.
    for task in [3, 1, 2] {
        run(Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/cluster/slurm-eval.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SRET_TOME", BIN)
            .env("OUT", &out)
            .env("MODEL", "sret_t")
            .env("SYNTHETIC", "7")
            .env("BATCH", "2")
            .env("SCHEDULES", "none constant:8"));
    }
    for k in 1..=3 {
        assert!(out.join(format!("shard-{k}-of-3.json")).exists());
    }
    run(Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/cluster/slurm-merge"))
        .env("SRET_TOME", BIN)
        .env("OUT", &out));
    assert_same(&out.join("merged/eval.json"), &whole(&dir));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kubernetes_indexed_job_shards_merge_to_one_eval() {
    let manifest =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/k8s/eval-indexed-job.yaml")).unwrap();
    assert!(manifest.contains("completionMode: Indexed"));
    assert!(manifest.contains("completions: 8") && manifest.contains("value: \"8\""));
    assert!(manifest.contains("--shard auto") && manifest.contains("nvidia.com/gpu: 1"));
    let dir = scratch("k8s");
    let mut shards = Vec::new();
    for index in 0..2 {
        let json = dir.join(format!("shard-{}-of-2.json", index + 1));
        run(Command::new(BIN)
            .args(EVAL)
            .args(["--shard", "auto", "--json"])
            .arg(&json)
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("SRET_SHARD_COUNT", "2"));
        shards.push(json);
    }
    let merged = dir.join("merged");
    run(Command::new(BIN)
        .arg("merge-results")
        .arg("--out-dir")
        .arg(&merged)
        .args(&shards));
    assert_same(&merged.join("eval.json"), &whole(&dir));
    // Without the count the pod fails with a clear error, not a wrong split.
    let out = Command::new(BIN)
        .args(EVAL)
        .args(["--shard", "auto"])
        .env("JOB_COMPLETION_INDEX", "0")
        .env_remove("SRET_SHARD_COUNT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    // (clap's usage error: exit code 2, never a panic's 101)
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SRET_SHARD_COUNT"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The array script and its merge job submitted to a real Slurm (`scripts/cluster/slurm-submit`:
/// an array of 3 and a merge job that waits on it with `afterok`). scripts/test starts a
/// one-node Slurm from Debian's packages (scripts/setup-slurm) and runs this with `--ignored` and
/// `SRET_SLURM_REQUIRED=1`; elsewhere it skips, saying why, where no Slurm answers. The GPU and
/// memory requests of the script are overridden for the CPU-only test node.
#[test]
#[ignore = "needs a running Slurm: scripts/test starts one (scripts/setup-slurm) and runs it"]
fn slurm_array_job_runs_on_a_real_scheduler() {
    let answers = Command::new("timeout")
        .args(["10", "sinfo", "-h"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !answers {
        assert!(
            std::env::var_os("SRET_SLURM_REQUIRED").is_none(),
            "SRET_SLURM_REQUIRED is set but no Slurm answers (sinfo)"
        );
        eprintln!("skipped: no Slurm answers (sinfo); scripts/setup-slurm starts one");
        return;
    }
    let dir = scratch("real-slurm");
    let out = dir.join("results");
    let submitted = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/cluster/slurm-submit"))
        .args([
            "3",
            "--gres=none",
            "--cpus-per-task=1",
            "--mem=0",
            "--time=10",
        ])
        .current_dir(&dir)
        .env("SRET_TOME", BIN)
        .env("OUT", &out)
        .env("MODEL", "sret_t")
        .env("SYNTHETIC", "7")
        .env("BATCH", "2")
        .env("SCHEDULES", "none constant:8")
        .env("SRET_TOME_AUTOTUNE", "off")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "slurm-submit: {said}{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    // "array job A (3 shards), merge job M; ..."
    let merge_job = said
        .split("merge job ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no merge job id in {said:?}"))
        .trim()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let q = Command::new("timeout")
            .args(["10", "squeue", "-h", "-j", &merge_job])
            .output()
            .unwrap();
        if q.status.success() && q.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the merge job {merge_job} did not finish in 10 minutes"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let logs = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for k in 1..=3 {
        assert!(
            out.join(format!("shard-{k}-of-3.json")).exists(),
            "shard {k} missing; job logs:\n{}",
            logs()
        );
    }
    let merged = out.join("merged/eval.json");
    assert!(merged.exists(), "no merged result; job logs:\n{}", logs());
    assert_same(&merged, &whole(&dir));
    std::fs::remove_dir_all(&dir).ok();
}
