//! The command line with bad input: every case exits with a non-zero code that is not a panic's
//! (101), prints one `error: ...` line naming what is wrong, and no backtrace.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sret-tome"))
        .args(args)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the binary");
    let code = out.status.code().expect("exited, not killed by a signal");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_refused(args: &[&str], needle: &str) {
    let (code, stderr) = run(args);
    assert!(
        code != 0 && code != 101,
        "{args:?}: exit code {code}\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{args:?} panicked:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: expected '{needle}' in:\n{stderr}"
    );
}

fn temp(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("sret-tome-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn bad_arguments_are_clear_errors() {
    assert_refused(&["plan", "--schedule", "exp:1.5,0"], "exp:1.5,0");
    assert_refused(&["plan", "--schedule", "exp:0.25,2"], "exp:0.25,2");
    assert_refused(&["plan", "--schedule", "bogus:3"], "bogus:3");
    assert_refused(&["plan", "--model", "resnet50"], "unknown model 'resnet50'");
    assert_refused(&["plan", "--batch", "0"], "batch");
    assert_refused(&["bench", "--batch", "0"], "batch");
    assert_refused(&["plan", "--batch", "many"], "many");
    assert_refused(&["adapters", "--backend", "glide"], "glide");
    assert_refused(&["no-such-command"], "no-such-command");
}

#[test]
fn bad_files_are_clear_errors() {
    let missing = "/nonexistent/weights.safetensors";
    let (code, stderr) = run(&[
        "infer",
        "--weights",
        missing,
        "--images",
        "assets/sample.jpg",
        "--out",
        "/tmp/unused.safetensors",
    ]);
    assert!(
        code != 0 && code != 101 && stderr.contains(missing),
        "{code}: {stderr}"
    );

    let garbage = temp(
        "garbage.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}....",
    );
    assert_refused(
        &[
            "infer",
            "--weights",
            &garbage,
            "--images",
            "assets/sample.jpg",
            "--out",
            "/tmp/unused.safetensors",
        ],
        "garbage.safetensors",
    );
    let truncated = temp("truncated.pth", b"PK\x03\x04\x14\x00\x00\x00");
    assert_refused(
        &["convert", &truncated, "/tmp/unused.safetensors"],
        "truncated.pth",
    );
    let not_image = temp("not_an_image.jpg", b"this is text, not a JPEG");
    assert_refused(
        &[
            "infer",
            "--images",
            &not_image,
            "--out",
            "/tmp/unused.safetensors",
        ],
        "not_an_image.jpg",
    );
    let empty = temp("empty.png", b"");
    assert_refused(
        &[
            "infer",
            "--images",
            &empty,
            "--out",
            "/tmp/unused.safetensors",
        ],
        "empty.png",
    );
}

/// `--model auto` reads the architecture off the weights and gives the named model's output;
/// without weights, or with `--kernels` and `--autotune on` together, it is a clear error.
#[test]
fn model_auto_and_kernel_flags() {
    let dir = std::env::temp_dir().join(format!("sret-tome-auto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = dir.join("pit.safetensors").to_string_lossy().into_owned();
    let (code, err) = run(&[
        "synthetic",
        "--model",
        "pit_ti_distill",
        "--weights-out",
        &w,
    ]);
    assert_eq!(code, 0, "{err}");
    let outs: Vec<Vec<u8>> = ["auto", "pit_ti_distill"]
        .iter()
        .map(|model| {
            let out = dir
                .join(format!("{model}.bin"))
                .to_string_lossy()
                .into_owned();
            let (code, err) = run(&[
                "--kernels",
                "portable",
                "infer",
                "--model",
                model,
                "--weights",
                &w,
                "--images",
                concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.jpg"),
                "--out",
                &out,
            ]);
            assert_eq!(code, 0, "{model}: {err}");
            std::fs::read(&out).unwrap()
        })
        .collect();
    assert_eq!(
        outs[0], outs[1],
        "--model auto differs from the named model"
    );
    assert_refused(
        &[
            "infer", "--model", "auto", "--images", "x.jpg", "--out", "y",
        ],
        "--weights",
    );
    assert_refused(
        &["--autotune", "on", "--kernels", "portable", "plan"],
        "pins the kernels",
    );
    assert_refused(&["--kernels", "linear=warp", "plan"], "warp");
    std::fs::remove_dir_all(&dir).ok();
}

/// Models at 384 pixels take their own input size in `infer` and `visualize`.
#[test]
fn a_384_pixel_model_runs_infer_and_visualize() {
    let dir = std::env::temp_dir().join(format!("sret-tome-384-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.jpg");
    let model = "vit_small_patch16_384@depth=1";
    for (cmd, out) in [("infer", "o.bin"), ("visualize", "v.png")] {
        let out = dir.join(out).to_string_lossy().into_owned();
        let input = if cmd == "infer" {
            "--images"
        } else {
            "--image"
        };
        let (code, err) = run(&[
            "--autotune",
            "off",
            cmd,
            "--model",
            model,
            input,
            image,
            "--out",
            &out,
        ]);
        assert_eq!(code, 0, "{cmd}: {err}");
        assert!(std::fs::metadata(&out).unwrap().len() > 0, "{cmd}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
