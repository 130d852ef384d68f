//! `scripts/demo` as a newcomer runs it: it must finish, print its four parts in order, write its
//! picture outside the repository, and print no stderr line starting with `error` (the Vulkan
//! loader's window-system probe prints one when XDG_RUNTIME_DIR is unset, which the script
//! handles). The test runs the script itself, so the commands and their arguments are the ones
//! in scripts/demo; only the binary (this build's, which skips the script's setup and build) and
//! the bench's iteration count (low, for CI's two cores) are set from here. XDG_RUNTIME_DIR is
//! removed from the script's environment, as on a bare server.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn demo_runs_clean_and_shows_its_four_parts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/demo"))
        .current_dir(root)
        .env_remove("XDG_RUNTIME_DIR")
        .env("SRET_TOME", env!("CARGO_BIN_EXE_sret-tome"))
        .env("SRET_DEMO_ITERS", "3")
        .output()
        .expect("run bash scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "demo failed: {}\n{shown}", out.status);

    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
        .collect();
    assert!(
        errors.is_empty(),
        "error lines on stderr: {errors:?}\n{shown}"
    );

    // The four parts, in order.
    let mut from = 0;
    for header in ["== 1/4 ", "== 2/4 ", "== 3/4 ", "== 4/4 "] {
        let at = stdout[from..]
            .find(header)
            .unwrap_or_else(|| panic!("no '{header}' after byte {from}\n{shown}"));
        from += at + header.len();
    }
    let part = |n: usize| -> &str {
        let start = stdout.find(&format!("== {n}/4 ")).unwrap();
        let end = stdout[start + 1..]
            .find("\n== ")
            .map_or(stdout.len(), |e| start + 1 + e);
        &stdout[start..end]
    };
    // 1: the trajectory.
    assert!(part(1).contains("total removed: 264"), "{shown}");
    // 2: the picture, written outside the repository.
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("output files go to "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no output dir printed\n{shown}"));
    assert!(
        dir.is_absolute() && !dir.starts_with(root),
        "output dir {} is inside the repository",
        dir.display()
    );
    let png = dir.join("merges.png");
    assert!(
        part(2).contains(&format!("wrote {}", png.display())),
        "{shown}"
    );
    let bytes = std::fs::read(&png).expect("the picture was written");
    assert!(
        bytes.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        png.display()
    );
    // 3: one bench row per schedule.
    for schedule in ["none ", "exp:0.25,0 "] {
        assert!(
            part(3).lines().any(|l| l.starts_with(schedule)),
            "no bench row for '{schedule}'\n{shown}"
        );
    }
    // 4: classes, and where real weights come from.
    for needle in [
        "assets/sample.jpg:",
        "github.com/szq0214/SReT",
        "--weights SReT_T_distill.pth",
    ] {
        assert!(part(4).contains(needle), "no '{needle}' in part 4\n{shown}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
