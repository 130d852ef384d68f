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
//!
//! Memory stays bounded whatever one file does: a worker starts sample `i` only once the
//! consumer has reached `i - window` (the window is `2 * batch + workers`), so at most `window`
//! decoded images wait to be put back in order; and a sample whose result has not come after
//! the timeout (60 s, `SRET_TOME_LOAD_TIMEOUT_S` to change it; a file that blocks on read)
//! becomes a failure ("no result after ...") and the batches go on; its worker is left behind.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dataset::{Problem, Sample, SampleItem};
use crate::error::Error;
use crate::model::ModelConfig;

/// One batch: `samples.len()` images (at most the batch size), zero-padded to the full batch.
#[derive(Debug)]
pub struct Batch {
    /// The samples of the batch, in order.
    pub samples: Vec<Sample>,
    /// `[batch, 3, size, size]`; images past `samples.len()` are zeros.
    pub images: Vec<f32>,
    /// Samples skipped while assembling this batch.
    pub failures: Vec<Problem>,
}

type Decoded = (usize, Result<Vec<f32>, String>);

/// What decodes one sample (the loader's is [`load_sample`]).
pub type Decoder = Arc<dyn Fn(&Sample) -> Result<Vec<f32>, String> + Send + Sync>;

/// How long the consumer waits for one sample by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The consumer's position, which workers wait on to stay inside the window.
type Progress = Arc<(Mutex<usize>, Condvar)>;

/// Decodes samples on worker threads, a bounded window ahead, and hands them out as batches
/// in data-set order.
pub struct Loader {
    samples: Arc<Vec<Sample>>,
    batch: usize,
    per_image: usize,
    next_pos: usize,
    pending: HashMap<usize, Result<Vec<f32>, String>>,
    rx: Option<Receiver<Decoded>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    progress: Progress,
    window: usize,
    timeout: Duration,
    /// Most results ever held waiting for their turn (at most the window).
    peak_pending: usize,
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
            let transform = crate::preprocess::EvalTransform::for_model(cfg);
            match catch_unwind(AssertUnwindSafe(|| {
                crate::io::load_image_with(path, &transform)
            })) {
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
    /// Start `workers` threads (at least one) decoding `samples` for batches of `batch`, with
    /// the timeout of `SRET_TOME_LOAD_TIMEOUT_S` (seconds) or [`DEFAULT_TIMEOUT`].
    pub fn new(samples: Vec<Sample>, cfg: &ModelConfig, batch: usize, workers: usize) -> Loader {
        let timeout = std::env::var("SRET_TOME_LOAD_TIMEOUT_S")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
        let c = cfg.clone();
        let decoder: Decoder = Arc::new(move |s: &Sample| load_sample(s, &c));
        Self::with_decoder(samples, cfg, batch, workers, timeout, decoder)
    }

    /// [`Loader::new`] with another decoder and timeout (tests give one that blocks).
    pub fn with_decoder(
        samples: Vec<Sample>,
        cfg: &ModelConfig,
        batch: usize,
        workers: usize,
        timeout: Duration,
        decoder: Decoder,
    ) -> Loader {
        let batch = batch.max(1);
        let samples = Arc::new(samples);
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = workers.max(1).min(samples.len().max(1));
        let window = 2 * batch + workers;
        let progress: Progress = Arc::new((Mutex::new(0), Condvar::new()));
        let (tx, rx) = sync_channel::<Decoded>(window);
        let handles = (0..workers)
            .map(|w| {
                let (samples, stop, next, tx, decoder, progress) = (
                    samples.clone(),
                    stop.clone(),
                    next.clone(),
                    tx.clone(),
                    decoder.clone(),
                    progress.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("sret-tome loader {w}"))
                    .spawn(move || loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(s) = samples.get(i) else { break };
                        // Stay inside the window: start `i` once the consumer is at
                        // `i + 1 - window` or later.
                        {
                            let (pos, cv) = &*progress;
                            let mut p = pos.lock().unwrap_or_else(|e| e.into_inner());
                            while *p + window <= i && !stop.load(Ordering::Relaxed) {
                                p = cv
                                    .wait_timeout(p, Duration::from_millis(100))
                                    .unwrap_or_else(|e| e.into_inner())
                                    .0;
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = match catch_unwind(AssertUnwindSafe(|| decoder(s))) {
                            Ok(r) => r,
                            Err(_) => Err("the image decoder panicked on this file".into()),
                        };
                        if tx.send((i, r)).is_err() {
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
            progress,
            window,
            timeout,
            peak_pending: 0,
        }
    }

    /// The most decoded images that waited for their turn at once (never above the window).
    pub fn peak_pending(&self) -> usize {
        self.peak_pending
    }

    /// How far workers may run ahead of the consumer, in samples.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Total samples this loader goes through.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn take(&mut self, pos: usize) -> Result<Vec<f32>, String> {
        let start = Instant::now();
        let r = loop {
            if let Some(r) = self.pending.remove(&pos) {
                break r;
            }
            let left = self.timeout.saturating_sub(start.elapsed());
            match self.rx.as_ref().map(|rx| rx.recv_timeout(left)) {
                // Late results of samples already given up on are dropped.
                Some(Ok((i, _))) if i < pos => {}
                Some(Ok((i, r))) => {
                    self.pending.insert(i, r);
                    self.peak_pending = self.peak_pending.max(self.pending.len());
                }
                Some(Err(RecvTimeoutError::Timeout)) => {
                    break Err(format!(
                        "no result after {:.0} s (a file that blocks on read?); skipped",
                        self.timeout.as_secs_f64()
                    ))
                }
                _ => break Err("the loader's worker threads stopped".into()),
            }
        };
        let (p, cv) = &*self.progress;
        *p.lock().unwrap_or_else(|e| e.into_inner()) = pos + 1;
        cv.notify_all();
        r
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
        self.progress.1.notify_all();
        // Dropping the receiver unblocks workers waiting to send.
        self.rx = None;
        // Workers stuck in a read that never returns are left behind (detached) after a
        // short grace period; the others are joined.
        let deadline = Instant::now() + Duration::from_secs(1);
        for h in self.workers.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}
