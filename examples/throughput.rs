//! A throughput loop with double-buffered inputs: while the GPU runs frame `i` from one input
//! buffer, the host writes frame `i + 1` straight into the other (a mappable buffer the engine
//! reads as `Input::Buffer`, no staging copy), and the logits come back asynchronously.
//!
//! `cargo run --release --example throughput -- [FRAMES] [BATCH] [SCHEDULE]`
//!
//! Each input buffer is `MAP_WRITE | COPY_SRC`. After a forward is submitted, its buffer is
//! mapped again (`map_buffer_on_submit`); the mapping completes when that forward has read it,
//! so the host never overwrites images the GPU still needs and never waits for the frame in
//! flight, only for the one before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sret_tome::model::ModelConfig;
use sret_tome::{Engine, Logits, PendingLogits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames = args.first().map_or(Ok(6), |a| a.parse())?;
    let batch = args.get(1).map_or(Ok(2), |a| a.parse())?;
    let schedule = args.get(2).map_or("constant:10", |s| s.as_str()).parse()?;
    let engine = Engine::builder().batch(batch).schedule(schedule).build()?;
    let start = Instant::now();
    let logits = run(&engine, frames, frame_images)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} on {}: {frames} frames of {batch} images in {secs:.2} s, {:.2} images/s",
        engine.model_name(),
        engine.gpu().describe(),
        (frames * batch) as f64 / secs,
    );
    println!(
        "last frame's top-1 classes: {:?}",
        (0..batch)
            .map(|i| logits[frames - 1].argmax(i))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The images of frame `i` (normalised `[batch, 3, 224, 224]`): the host's work per frame
/// (decoding, preprocessing, ...), here synthetic.
pub fn frame_images(engine: &Engine, i: usize) -> Vec<f32> {
    let cfg = ModelConfig::by_name(engine.model_name()).expect("the engine's model");
    sret_tome::model::synthetic_images(&cfg, engine.batch(), 1000 + i as u64)
}

struct Slot {
    buffer: wgpu::Buffer,
    /// Set when `buffer` is mapped for writing (by the map callback).
    writable: Arc<AtomicBool>,
    /// The submission that last read `buffer`.
    last_use: Option<wgpu::SubmissionIndex>,
}

/// Run `frames` forwards through two alternating input buffers; the logits of every frame, in
/// order.
pub fn run(
    engine: &Engine,
    frames: usize,
    produce: impl Fn(&Engine, usize) -> Vec<f32>,
) -> Result<Vec<Logits>, Box<dyn std::error::Error>> {
    let device = engine.device();
    let bytes = (engine.input_len() * 4) as u64;
    let mut slots: Vec<Slot> = (0..2)
        .map(|k| Slot {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(if k == 0 { "input A" } else { "input B" }),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            }),
            writable: Arc::new(AtomicBool::new(true)),
            last_use: None,
        })
        .collect();
    let mut pending: Vec<(usize, PendingLogits)> = Vec::new();
    let mut done: Vec<Option<Logits>> = vec![None; frames];

    for i in 0..frames {
        // The host's work for this frame overlaps the GPU's work on the previous one.
        let images = produce(engine, i);
        let slot = &mut slots[i % 2];
        // Wait (if at all) only for the forward that last read this buffer, two frames back.
        while !slot.writable.load(Ordering::Acquire) {
            let until = slot.last_use.clone().expect("a slot in use was submitted");
            device.poll(wgpu::PollType::Wait {
                submission_index: Some(until),
                timeout: None,
            })?;
        }
        slot.buffer
            .get_mapped_range_mut(..)?
            .copy_from_slice(bytemuck::cast_slice(&images));
        slot.buffer.unmap();
        slot.writable.store(false, Ordering::Release);

        let mut encoder = device.create_command_encoder(&Default::default());
        engine.encode_forward(&mut encoder, &slot.buffer)?;
        pending.push((i, engine.encode_readback(&mut encoder)));
        let writable = slot.writable.clone();
        encoder.map_buffer_on_submit(&slot.buffer, wgpu::MapMode::Write, .., move |r| {
            if r.is_ok() {
                writable.store(true, Ordering::Release);
            }
        });
        slot.last_use = Some(engine.queue().submit([encoder.finish()]));

        // Collect whatever has arrived, without waiting.
        device.poll(wgpu::PollType::Poll)?;
        collect(&mut pending, &mut done)?;
    }
    // The rest: `wait` polls until each has arrived (with a device shared between threads,
    // another thread's poll may be delivering a frame just as ours returns).
    for (i, p) in pending.drain(..) {
        done[i] = Some(p.wait()?);
    }
    Ok(done
        .into_iter()
        .map(|l| l.expect("every frame's logits"))
        .collect())
}

fn collect(
    pending: &mut Vec<(usize, PendingLogits)>,
    done: &mut [Option<Logits>],
) -> sret_tome::Result<()> {
    let mut still = Vec::new();
    for (i, mut p) in pending.drain(..) {
        match p.try_take() {
            Some(r) => done[i] = Some(r?),
            None => still.push((i, p)),
        }
    }
    *pending = still;
    Ok(())
}
