//! Batches of preprocessed images, decoded on CPU worker threads while the caller runs the GPU on
//! the previous batch.
//!
//! Workers take samples in order from a shared counter, decode and preprocess them
//! ([`crate::io::load_image`]: PIL-exact resize to 256, centre crop 224, ImageNet
//! normalisation) and send them through a bounded channel, which caps how far they run ahead
//! (about two batches). The consumer puts results back in sample order, so batches are the same
//! whatever the number of workers. A sample that cannot be read or decoded (or whose decoder
//! panics) becomes a [`Problem`] in the batch's `failures` and its place goes to the next sample:
//! every batch but the last is full.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::dataset::{Problem, Sample, SampleItem};
use crate::error::Error;
use crate::model::ModelConfig;

/// One batch: `samples.len()` images (at most the batch size), zero-padded to the full batch.
#[derive(Debug)]
pub struct Batch {
    pub samples: Vec<Sample>,
    /// `[batch, 3, size, size]`; images past `samples.len()` are zeros.
    pub images: Vec<f32>,
    /// Samples skipped while assembling this batch.
    pub failures: Vec<Problem>,
}

type Decoded = (usize, Result<Vec<f32>, String>);

pub struct Loader {
    samples: Arc<Vec<Sample>>,
    batch: usize,
    per_image: usize,
    next_pos: usize,
    pending: HashMap<usize, Result<Vec<f32>, String>>,
    rx: Option<Receiver<Decoded>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// The reason of a load error without the path (which the [`Problem`] names already).
pub fn reason(e: &Error) -> String {
    match e {
        Error::BadImage { why, .. } => why.clone(),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Decode and preprocess one sample into `[3, size, size]`.
pub fn load_sample(sample: &Sample, cfg: &ModelConfig) -> Result<Vec<f32>, String> {
    let per = 3 * cfg.image_size * cfg.image_size;
    let out = match &sample.item {
        SampleItem::File(path) => {
            match catch_unwind(AssertUnwindSafe(|| crate::io::load_image(path))) {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(reason(&e)),
                Err(_) => return Err("the image decoder panicked on this file".into()),
            }
        }
        SampleItem::Synthetic { seed } => crate::model::synthetic_images(cfg, 1, *seed),
    };
    if out.len() != per {
        return Err(format!(
            "preprocessing gave {} values, the model takes {per} ({}x{} RGB)",
            out.len(),
            cfg.image_size,
            cfg.image_size
        ));
    }
    Ok(out)
}

impl Loader {
    /// Start `workers` threads (at least one) decoding `samples` for batches of `batch`.
    pub fn new(samples: Vec<Sample>, cfg: &ModelConfig, batch: usize, workers: usize) -> Loader {
        let batch = batch.max(1);
        let samples = Arc::new(samples);
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = workers.max(1).min(samples.len().max(1));
        let (tx, rx) = sync_channel::<Decoded>(2 * batch + workers);
        let handles = (0..workers)
            .map(|w| {
                let (samples, stop, next, tx, cfg) = (
                    samples.clone(),
                    stop.clone(),
                    next.clone(),
                    tx.clone(),
                    cfg.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("sret-tome loader {w}"))
                    .spawn(move || loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(s) = samples.get(i) else { break };
                        if tx.send((i, load_sample(s, &cfg))).is_err() {
                            break;
                        }
                    })
                    .expect("spawn loader thread")
            })
            .collect();
        Loader {
            samples,
            batch,
            per_image: 3 * cfg.image_size * cfg.image_size,
            next_pos: 0,
            pending: HashMap::new(),
            rx: Some(rx),
            stop,
            workers: handles,
        }
    }

    /// Total samples this loader goes through.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn take(&mut self, pos: usize) -> Result<Vec<f32>, String> {
        loop {
            if let Some(r) = self.pending.remove(&pos) {
                return r;
            }
            match self.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok((i, r))) => {
                    self.pending.insert(i, r);
                }
                _ => return Err("the loader's worker threads stopped".into()),
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next_pos >= self.samples.len() {
            return None;
        }
        let mut out = Batch {
            samples: Vec::with_capacity(self.batch),
            images: Vec::with_capacity(self.batch * self.per_image),
            failures: Vec::new(),
        };
        while out.samples.len() < self.batch && self.next_pos < self.samples.len() {
            let pos = self.next_pos;
            self.next_pos += 1;
            let sample = self.samples[pos].clone();
            match self.take(pos) {
                Ok(img) => {
                    out.images.extend_from_slice(&img);
                    out.samples.push(sample);
                }
                Err(why) => out.failures.push(Problem {
                    path: sample.describe(),
                    why,
                }),
            }
        }
        out.images.resize(self.batch * self.per_image, 0.0);
        Some(out)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks workers waiting to send.
        self.rx = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
