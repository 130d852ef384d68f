//! `cargo bench`: the project's own measurement (`sret_tome::bench`, as `sret-tome bench` runs it)
//! on a small set: SReT-T without merging and with the paper's best schedule, at batch 1 and 8.
//! Throughput is the median of timed forwards (GPU timestamps where the adapter has them); the
//! end-to-end time (encode + submit + wait + readback, on the host) and encoding are medians too.

use sret_tome::bench::{bench_one, BenchOptions};
use sret_tome::gpu::{AdapterChoice, Gpu};
use sret_tome::kernels::PipelineCache;
use sret_tome::model::synthetic_images;
use sret_tome::model::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new(&AdapterChoice::default())?;
    let cache = PipelineCache::default();
    let model = std::sync::Arc::new(Model::synthetic("sret_t_distill")?);
    let opts = BenchOptions {
        warmup: 2,
        iters: None,
        budget_secs: 5.0,
        end_to_end: true,
    };
    println!("{} on {}", model.cfg.name, gpu.describe());
    for batch in [1, 8] {
        let images = synthetic_images(&model.cfg, batch, 1);
        let mut base = None;
        for schedule in ["none", "exp:0.25,0"] {
            let row = bench_one(
                &gpu,
                &cache,
                &model,
                &schedule.parse()?,
                sret_tome::Precision::F32,
                batch,
                &images,
                &opts,
            )?;
            let b = *base.get_or_insert(row.throughput_img_s);
            println!(
                "{schedule:<12} batch {batch:>3}: {:>8.2} img/s ({:+.1}%), {:>7.2} ms, end to end {:>7.2} ms (encode {:.2}), PAM {:.2} MB, {} iters",
                row.throughput_img_s,
                100.0 * (row.throughput_img_s / b - 1.0),
                row.latency_ms,
                row.e2e_ms.unwrap_or(f64::NAN),
                row.encode_ms.unwrap_or(f64::NAN),
                row.pam_bytes as f64 / 1048576.0,
                row.iters
            );
        }
    }
    Ok(())
}
