//! The matrix-multiply ceiling of an adapter: how fast the engine's own linear kernel runs on
//! the model's own linear-layer shapes, alone, with nothing else in the pass. A forward's
//! FLOP rate divided by the best of these rates is the forward's efficiency: how much of what
//! the adapter demonstrably does on a dense product the whole forward (attention, norms,
//! matching, merging, convolutions included) keeps.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::read_buffer;
use crate::gpu::Gpu;
use crate::kernels::linear::{self, Epilogue};
use crate::kernels::{program::subgroup_width, Family, PipelineCache, Program, ProgramBuilder};
use crate::model::weights::Linear;
use crate::model::ModelConfig;
use crate::rng::SplitMix64;

/// One linear-layer shape and the rate the linear kernel reaches on it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MatmulRate {
    /// Rows (`batch x tokens`).
    pub m: usize,
    /// Inner dimension (input features).
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// `2 m k n` per second, in GFLOP/s (the bias add is not counted).
    pub gflops: f64,
}

/// The distinct `(m, k, n)` of the model's linear layers at `batch` without merging: per stage
/// `qkv`, `proj`, `fc1`, `fc2` and the `Non_proj` MLP; the classifier head is left out (one
/// row per image, nothing a ceiling should be set by).
pub fn linear_shapes(cfg: &ModelConfig, batch: usize) -> Vec<(usize, usize, usize)> {
    let mut shapes = Vec::new();
    for (s, st) in cfg.stages.iter().enumerate() {
        let m = batch * (cfg.lead() + cfg.tokens(s));
        let d = st.dim;
        for (k, n) in [
            (d, 3 * d),
            (d, d),
            (d, st.mlp_hidden),
            (st.mlp_hidden, d),
            (d, st.np_hidden),
            (st.np_hidden, d),
        ] {
            // Models without `Non_proj` (DeiT, PiT) have a zero-width one: skip it.
            if k > 0 && n > 0 && !shapes.contains(&(m, k, n)) {
                shapes.push((m, k, n));
            }
        }
    }
    shapes
}

/// Time the linear kernel the plans use on every shape of [`linear_shapes`]: `reps` products
/// per pass (enough for about `target_flops`), the median of `iters` passes after one warm-up.
pub fn measure(
    gpu: &Gpu,
    cache: &PipelineCache,
    cfg: &ModelConfig,
    batch: usize,
    iters: usize,
    precision: crate::model::Precision,
) -> Result<Vec<MatmulRate>> {
    gpu.scoped("measuring the matmul ceiling", || {
        measure_unscoped(gpu, cache, cfg, batch, iters, precision)
    })
}

fn measure_unscoped(
    gpu: &Gpu,
    cache: &PipelineCache,
    cfg: &ModelConfig,
    batch: usize,
    iters: usize,
    precision: crate::model::Precision,
) -> Result<Vec<MatmulRate>> {
    const TARGET_FLOPS: f64 = 2e8;
    let mut rng = SplitMix64::new(0x5eed_ce11);
    let mut rates = Vec::new();
    for (m, k, n) in linear_shapes(cfg, batch) {
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((TARGET_FLOPS / flops).ceil() as usize).clamp(1, 16);
        let mut b = ProgramBuilder::new(&gpu.limits);
        b.set_subgroup_width(subgroup_width(gpu));
        b.set_f16(precision == crate::model::Precision::F16);
        let x: Vec<f32> = (0..m * k).map(|_| rng.symmetric()).collect();
        let lin = Linear {
            weight: (0..n * k).map(|_| 0.1 * rng.symmetric()).collect(),
            bias: (0..n).map(|_| 0.1 * rng.symmetric()).collect(),
            in_features: k,
            out_features: n,
        };
        let xt = b.weights("x", &x);
        let w = linear::upload(&mut b, "w", &lin);
        let y = b.activation("y", m * n);
        b.pin(y);
        for _ in 0..reps {
            linear::record(&mut b, Family::Mlp, m, &w, Epilogue::Bias, xt, y);
        }
        let program = b.finish(gpu, cache, &[])?;
        let mut times = Vec::with_capacity(iters);
        for i in 0..=iters.max(1) {
            let t = time_program(gpu, &program)?;
            if i > 0 {
                times.push(t);
            }
        }
        // `times` holds at least one run (`iters.max(1)` of them).
        let secs = super::median(times)
            .ok_or_else(|| Error::arg("iters", iters, "the ceiling needs at least 1 timed run"))?
            / reps as f64;
        rates.push(MatmulRate {
            m,
            k,
            n,
            gflops: flops / secs * 1e-9,
        });
    }
    Ok(rates)
}

/// Seconds one run of `program` takes: between timestamps written at the start and end of its
/// pass, or submit-to-idle wall clock where the adapter has no timestamp queries.
fn time_program(gpu: &Gpu, program: &Program) -> Result<f64> {
    let timestamps = gpu.has_timestamps();
    let queries = timestamps.then(|| {
        gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("ceiling timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    });
    let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("ceiling resolve"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("ceiling readback"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("ceiling"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("ceiling"),
            timestamp_writes: queries.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        });
        program.encode(&mut pass);
    }
    if let Some(q) = &queries {
        enc.resolve_query_set(q, 0..2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, 16);
    }
    let start = std::time::Instant::now();
    gpu.queue.submit(Some(enc.finish()));
    gpu.wait()?;
    let wall = start.elapsed().as_secs_f64();
    if queries.is_none() {
        return Ok(wall);
    }
    let ticks: Vec<u64> = read_buffer(gpu, &readback)?;
    let ticks_per_ns = gpu.queue.get_timestamp_period() as f64;
    let secs = ticks[1].saturating_sub(ticks[0]) as f64 * ticks_per_ns * 1e-9;
    if secs <= 0.0 {
        return Err(Error::Gpu {
            during: "matmul ceiling".into(),
            why: "the adapter's timestamps did not advance".into(),
        });
    }
    Ok(secs)
}
