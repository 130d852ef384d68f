//! `--vector-width`: the CLI (never the library) sets llvmpipe's LP_NATIVE_VECTOR_WIDTH, only
//! when the user has not.

use std::process::Command;

use sret_tome::cli::{vector_width_decision, VectorWidth, LP_VECTOR_WIDTH_VAR};

#[test]
fn decision_sets_the_variable_only_when_unset() {
    use VectorWidth::*;
    // No flag: the environment is left alone, whatever the CPU.
    assert_eq!(vector_width_decision(None, None, true).0, None);
    assert_eq!(vector_width_decision(None, None, false).0, None);
    assert_eq!(
        vector_width_decision(Some(Bits512), None, false).0,
        Some("512")
    );
    assert_eq!(
        vector_width_decision(Some(Bits256), None, true).0,
        Some("256")
    );
    assert_eq!(vector_width_decision(Some(Auto), None, true).0, Some("512"));
    assert_eq!(vector_width_decision(Some(Auto), None, false).0, None);
    // The user's own setting wins.
    for choice in [Auto, Bits256, Bits512] {
        let (set, why) = vector_width_decision(Some(choice), Some("128"), true);
        assert_eq!(set, None, "{choice:?}");
        assert!(
            why.contains("LP_NATIVE_VECTOR_WIDTH=128 already set"),
            "{why}"
        );
    }
    let (_, why) = vector_width_decision(Some(Auto), None, false);
    assert!(why.contains("no AVX-512F"), "{why}");
}

/// `sret-tome adapters` with `args`, LP_NATIVE_VECTOR_WIDTH as `env` (removed when `None`).
fn adapters(args: &[&str], env: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sret-tome"));
    cmd.arg("adapters").args(args);
    match env {
        Some(v) => cmd.env(LP_VECTOR_WIDTH_VAR, v),
        None => cmd.env_remove(LP_VECTOR_WIDTH_VAR),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The width lavapipe reports in its adapter name ("llvmpipe (LLVM 15.0.6, 256 bits)"), if
/// lavapipe is listed.
fn llvmpipe_bits(listing: &str) -> Option<u32> {
    let line = listing.lines().find(|l| l.contains("llvmpipe"))?;
    let at = line.find(" bits)")?;
    line[..at].rsplit(' ').next()?.parse().ok()
}

#[test]
fn the_cli_sets_the_width_lavapipe_reports() {
    // The test process itself (a library user) never gets the variable set.
    let before = std::env::var(LP_VECTOR_WIDTH_VAR).ok();
    let (plain, _) = adapters(&[], None);
    let Some(default_bits) = llvmpipe_bits(&plain) else {
        eprintln!("no lavapipe adapter listed; skipping:\n{plain}");
        return;
    };
    assert_eq!(default_bits, 256, "llvmpipe's default: {plain}");
    let (wide, err) = adapters(&["--vector-width", "512"], None);
    assert_eq!(llvmpipe_bits(&wide), Some(512), "{wide}\n{err}");
    assert!(err.contains("LP_NATIVE_VECTOR_WIDTH=512"), "{err}");
    // The flag is global: after the subcommand too.
    let (narrow, err) = adapters(&["--vector-width", "256"], None);
    assert_eq!(llvmpipe_bits(&narrow), Some(256), "{narrow}\n{err}");
    // A user's LP_NATIVE_VECTOR_WIDTH is kept.
    let (kept, err) = adapters(&["--vector-width", "512"], Some("256"));
    assert_eq!(llvmpipe_bits(&kept), Some(256), "{kept}\n{err}");
    assert!(err.contains("already set by the user"), "{err}");
    // auto: 512 only with AVX-512F.
    let (auto, err) = adapters(&["--vector-width", "auto"], None);
    let want = if sret_tome::cli::cpu_has_avx512f() {
        512
    } else {
        256
    };
    assert_eq!(llvmpipe_bits(&auto), Some(want), "{auto}\n{err}");
    assert_eq!(std::env::var(LP_VECTOR_WIDTH_VAR).ok(), before);
}
