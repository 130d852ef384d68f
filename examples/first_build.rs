//! What the first build of an engine on an adapter costs: kernel measurement (autotune) with
//! and without the kernel check against the portable kernels, cold (an empty autotune cache)
//! and cached, interleaved so that load on the machine hits both alike.
//!
//! `cargo run --release --example first_build -- [ROUNDS] [MODEL]`
//!
//! Run with `RUST_LOG=info` to see what the build does meanwhile.

use std::time::Instant;

use sret_tome::api::Autotune;
use sret_tome::Engine;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let model = args.next().unwrap_or_else(|| "sret_t_distill".into());
    let mut times: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, check) in [false, true].into_iter().enumerate() {
            let dir = std::env::temp_dir().join(format!(
                "sret-first-build-{}-{round}-{check}",
                std::process::id()
            ));
            std::fs::remove_dir_all(&dir).ok();
            let build = || {
                Engine::builder()
                    .model(model.as_str())
                    .synthetic_weights()
                    .autotune(Autotune::Measure)
                    .autotune_cache(&dir)
                    .validate_kernels(check)
                    .build()
            };
            let start = Instant::now();
            let engine = build()?;
            let cold = start.elapsed().as_secs_f64();
            drop(engine);
            let start = Instant::now();
            let engine = build()?;
            let cached = start.elapsed().as_secs_f64();
            println!(
                "round {round}: kernel check {:3}: cold {cold:6.1} s, cached {cached:5.1} s  ({})",
                if check { "on" } else { "off" },
                engine.kernels()
            );
            times[i].push((cold, cached));
            std::fs::remove_dir_all(&dir).ok();
        }
    }
    let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    };
    let (off, on) = (&times[0], &times[1]);
    let (cold_off, cold_on) = (mean(off, |t| t.0), mean(on, |t| t.0));
    println!(
        "mean over {rounds} rounds: cold {cold_off:.1} s without the check, {cold_on:.1} s with it \
         ({:+.0}%); cached {:.1} s and {:.1} s",
        100.0 * (cold_on / cold_off - 1.0),
        mean(off, |t| t.1),
        mean(on, |t| t.1)
    );
    Ok(())
}
