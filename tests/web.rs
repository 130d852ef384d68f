//! The browser page (web/, the library on wasm32 with wgpu's WebGPU backend) in headless
//! Chromium: `scripts/web --build-only` builds it, `web/serve.py` serves it, and Chromium loads
//! `?auto=1&schedule=S`, which classifies assets/sample.jpg with synthetic weights and logs the
//! logits (`SRET_RESULT {json}` on the console, which `--enable-logging=stderr` prints). They
//! are compared with the CPU twin's and the native engine's on the same image and weights. The
//! native engine is planned without subgroups as the browser's device is (wgpu's WebGPU backend
//! enables no `subgroups`), so the same kernels run. The page also logs every merge decision:
//! where one differs from the twin's it must be a near-tie, and the twin is replayed with the
//! page's decisions (as tests/model.rs does for the native GPU), so merged and unmerged logits
//! alike are within relative L2 1e-4 of the twin. The stage maps the page draws are checked
//! against the native engine's trace. Saves a screenshot (`SRET_WEB_SCREENSHOT=path` keeps
//! it; docs/browser.md shows web/screenshot.png).
//!
//! Ignored by plain `cargo test` (it builds web/ for wasm32: minutes); scripts/test installs
//! what it needs (scripts/setup-web: Debian's `chromium`, the wasm32 target, wasm-bindgen-cli of
//! web/Cargo.lock's version) and runs it with `--ignored` and `SRET_WEB_REQUIRED=1`. Without
//! that variable a missing `chromium` or wasm32 target skips it, saying why; with it, fails.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sret_tome::api::{Autotune, MergeTrace};
use sret_tome::gpu::Gpu;
use sret_tome::preprocess::{preprocess_rgb8_with, EvalTransform};
use sret_tome::runtime::ForwardSpec;
use sret_tome::{AdapterChoice, EngineBuilder, Model, Schedule};

fn chromium() -> Option<String> {
    if let Ok(c) = std::env::var("SRET_CHROMIUM") {
        return Some(c);
    }
    ["chromium", "chromium-browser"].into_iter().find_map(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| c.to_string())
    })
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `SRET_RESULT` JSON the page logged, from Chromium's stderr.
fn result_line(stderr: &str) -> Option<serde_json::Value> {
    let line = stderr.lines().find(|l| l.contains("SRET_RESULT "))?;
    let json = line.split("SRET_RESULT ").nth(1)?;
    let json = json.rsplit_once("\", source:").map_or(json, |(j, _)| j);
    serde_json::from_str(json).ok()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
#[ignore = "builds web/ for wasm32 (minutes) and needs chromium: scripts/test runs it (--ignored)"]
fn page_classifies_like_the_native_engine() {
    let required = std::env::var_os("SRET_WEB_REQUIRED").is_some();
    let skip = |why: &str| {
        assert!(!required, "SRET_WEB_REQUIRED is set but {why}");
        eprintln!("skipped: {why}");
    };
    let Some(chrome) = chromium() else {
        return skip("no chromium on PATH (apt-get install chromium, or set SRET_CHROMIUM)");
    };
    // rustup's targets cannot always be downloaded where the tests run: say so, do not fail.
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !targets
        .lines()
        .any(|t| t.trim() == "wasm32-unknown-unknown")
    {
        return skip("the wasm32-unknown-unknown target is not installed (rustup target add wasm32-unknown-unknown)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new("bash")
        .arg(root.join("scripts/web"))
        .arg("--build-only")
        .status()
        .expect("running scripts/web");
    assert!(built.success(), "scripts/web --build-only failed");

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("python3")
            .arg(root.join("web/serve.py"))
            .arg(port.to_string())
            .arg(root.join("web/dist"))
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 web/serve.py"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));

    let gpu = {
        let mut g = Gpu::new(&AdapterChoice::default()).expect("a native adapter");
        g.features.remove(sret_tome::wgpu::Features::SUBGROUP);
        g
    };
    let model = std::sync::Arc::new(Model::synthetic("sret_t_distill").unwrap());
    let image = sret_tome::io::decode_rgb8(&root.join("assets/sample.jpg")).unwrap();
    let dir = std::env::temp_dir().join(format!("sret-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The same synthetic weights as a safetensors file the page fetches (`?weights=URL`): the
    // page loads them, says so, and computes the same logits.
    let weights_file = "test-weights.safetensors";
    sret_tome::io::safetensors::save_safetensors(
        &model.weights,
        &model.cfg,
        &root.join("web/dist").join(weights_file),
    )
    .unwrap();
    for (i, (schedule, weights)) in [
        ("none", None),
        ("exp:0.25,0", None),
        ("exp:0.25,0", Some(weights_file)),
    ]
    .into_iter()
    .enumerate()
    {
        let shot = dir.join(format!("{i}.png"));
        let mut url = format!("http://127.0.0.1:{port}/?auto=1&schedule={schedule}");
        if let Some(w) = weights {
            url += &format!("&weights={w}");
        }
        let out = Command::new("timeout")
            .arg("400")
            .arg(&chrome)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--enable-unsafe-webgpu",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1000,1000",
                "--hide-scrollbars",
                "--virtual-time-budget=20000",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .output()
            .expect("running chromium");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let Some(r) = result_line(&stderr) else {
            let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
            panic!(
                "no SRET_RESULT from {url}; console:\n{}",
                console.join("\n")
            );
        };
        let web: Vec<f32> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let engine = EngineBuilder::new()
            .with_model(model.clone())
            .schedule(schedule.parse::<Schedule>().unwrap())
            .gpu(&gpu)
            .autotune(Autotune::Off)
            .trace(true)
            .build()
            .unwrap();
        let cfg = &model.cfg;
        let input = preprocess_rgb8_with(&image, &EvalTransform::for_model(cfg));
        let native = engine.forward(&input).unwrap();
        let native_trace = native.trace.unwrap_or_default();

        // The page's merge decisions, replayed by the CPU twin where they differ from its own.
        let merges: Vec<MergeTrace> = r["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| MergeTrace {
                stage: m["stage"].as_u64().unwrap() as usize,
                exec: m["exec"].as_u64().unwrap() as usize,
                n_in: m["n_in"].as_u64().unwrap() as usize,
                n_out: m["n_out"].as_u64().unwrap() as usize,
                slots: m["slots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect(),
                masses: Vec::new(),
            })
            .collect();
        let spec = ForwardSpec::new(cfg, &engine.schedule().clone(), engine.seed()).unwrap();
        let (twin, differing) =
            common::twin_replaying(cfg, &model.weights, &input, 1, &spec, &merges);
        let err = rel_l2(&web, &twin.logits);
        let err_native = rel_l2(&web, &native.logits);
        let web_top = r["top5"][0]["class"].as_u64().unwrap() as usize;
        println!(
            "{schedule}{}: web vs CPU twin relative L2 {err:.3e} ({differing} near-tie decisions \
             replayed), vs native {err_native:.3e}; top-1 web {web_top}; tokens merged {}; \
             forward {:.1} ms ({}) on {}",
            weights.map_or(String::new(), |w| format!(" (weights from {w})")),
            r["tokens_removed"],
            r["forward_ms"].as_f64().unwrap_or(f64::NAN),
            r["forward_clock"].as_str().unwrap_or("?"),
            r["adapter"].as_str().unwrap_or("?"),
        );
        assert_eq!(web.len(), 1000);
        assert_eq!(
            r["tokens_removed"].as_u64(),
            Some(engine.tokens_removed() as u64)
        );
        assert!(err <= 1e-4, "{schedule}: relative L2 to the twin {err:e}");
        if schedule == "none" {
            assert!(merges.is_empty());
            assert!(
                err_native <= 1e-4,
                "unmerged: relative L2 to native {err_native:e}"
            );
        } else {
            assert!(!merges.is_empty(), "the page logged its merges");
        }
        // Where the page took the native engine's decisions, it draws the same stage maps.
        let same = merges
            .iter()
            .zip(&native_trace.merges)
            .all(|(a, b)| a.slots == b.slots);
        if same {
            for (stage, map, n) in &native_trace.stage_maps {
                let page = r["stage_maps"][*stage]["slots"].as_array().unwrap();
                let page: Vec<u32> = page.iter().map(|v| v.as_u64().unwrap() as u32).collect();
                assert_eq!(&page[..], &map[..*n], "stage {stage} map");
            }
        }
        assert!(std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false));
        assert_eq!(r["synthetic"].as_bool(), Some(weights.is_none()), "{url}");
        assert_eq!(r["weights"].as_str(), weights, "{url}");
        if let Ok(keep) = std::env::var("SRET_WEB_SCREENSHOT") {
            if schedule != "none" && weights.is_none() {
                std::fs::copy(&shot, keep).unwrap();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
