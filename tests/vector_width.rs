//! `--vector-width`: the CLI (never the library) sets llvmpipe's LP_NATIVE_VECTOR_WIDTH, only
//! when the user has not.

use std::process::Command;

use sret_tome::cli::{vector_width_decision, VectorWidth, LP_VECTOR_WIDTH_VAR};
use sret_tome::gpu::context::mesa_version;

/// The decision, with lavapipe's Mesa release given (`None`: no lavapipe).
fn decide(
    choice: Option<VectorWidth>,
    current: Option<&str>,
    avx512f: bool,
    mesa: Option<(u32, u32)>,
) -> (Option<&'static str>, String) {
    vector_width_decision(choice, current, avx512f, || mesa)
}

#[test]
fn decision_sets_the_variable_only_when_unset() {
    use VectorWidth::*;
    let m22 = Some((22, 3));
    // No flag: the environment is left alone, whatever the CPU.
    assert_eq!(decide(None, None, true, m22).0, None);
    assert_eq!(decide(None, None, false, m22).0, None);
    assert_eq!(decide(Some(Bits512), None, false, m22).0, Some("512"));
    assert_eq!(decide(Some(Bits256), None, true, m22).0, Some("256"));
    assert_eq!(decide(Some(Auto), None, true, m22).0, Some("512"));
    assert_eq!(decide(Some(Auto), None, true, None).0, Some("512"));
    assert_eq!(decide(Some(Auto), None, false, m22).0, None);
    // The user's own setting wins.
    for choice in [Auto, Bits256, Bits512] {
        let (set, why) = decide(Some(choice), Some("128"), true, m22);
        assert_eq!(set, None, "{choice:?}");
        assert!(
            why.contains("LP_NATIVE_VECTOR_WIDTH=128 already set"),
            "{why}"
        );
    }
    let (_, why) = decide(Some(Auto), None, false, m22);
    assert!(why.contains("no AVX-512F"), "{why}");
}

#[test]
fn auto_keeps_256_bits_on_mesa_25() {
    use VectorWidth::*;
    for mesa in [(25, 0), (25, 2), (26, 1)] {
        let (set, why) = decide(Some(Auto), None, true, Some(mesa));
        assert_eq!(set, None, "{mesa:?}: {why}");
        assert!(
            why.contains(&format!("Mesa {}.{}", mesa.0, mesa.1)),
            "{why}"
        );
    }
    // Asked for explicitly, 512 bits it is.
    assert_eq!(
        decide(Some(Bits512), None, true, Some((25, 0))).0,
        Some("512")
    );
    // The release is asked only where it decides something.
    let asked = std::cell::Cell::new(0);
    let count = || {
        asked.set(asked.get() + 1);
        Some((25, 0))
    };
    vector_width_decision(Some(Auto), None, false, count);
    vector_width_decision(Some(Bits512), None, true, count);
    vector_width_decision(Some(Auto), Some("256"), true, count);
    vector_width_decision(None, None, true, count);
    assert_eq!(asked.get(), 0);
    vector_width_decision(Some(Auto), None, true, count);
    assert_eq!(asked.get(), 1);
}

#[test]
fn mesa_versions_read_from_driver_descriptions() {
    assert_eq!(
        mesa_version("llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"),
        Some((25, 0))
    );
    assert_eq!(
        mesa_version("llvmpipe Mesa 22.3.6 (LLVM 15.0.6)"),
        Some((22, 3))
    );
    assert_eq!(
        mesa_version("0: llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu, llvmpipe Mesa 24.2.8-1ubuntu1~24.04.1 (LLVM 19.1.1)), subgroups of 8..8 lanes"),
        Some((24, 2))
    );
    for bad in [
        "",
        "NVIDIA 550.54",
        "Mesa ",
        "Mesa x.1",
        "Mesa 25",
        "Mesa 99999999999.1",
    ] {
        assert_eq!(mesa_version(bad), None, "{bad:?}");
    }
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
    // auto: 512 only with AVX-512F, and not on Mesa 25 or later.
    let (auto, err) = adapters(&["--vector-width", "auto"], None);
    let mesa = plain
        .lines()
        .find(|l| l.contains("llvmpipe"))
        .and_then(mesa_version);
    let want = if sret_tome::cli::cpu_has_avx512f() && mesa.is_some_and(|(m, _)| m < 25) {
        512
    } else {
        256
    };
    assert_eq!(llvmpipe_bits(&auto), Some(want), "{auto}\n{err}");
    assert_eq!(std::env::var(LP_VECTOR_WIDTH_VAR).ok(), before);
}
