//! A planned, resident forward pass: buffers, pipelines and bind groups are made once; each
//! forward is one command buffer, one submission and one readback.

use super::config::ModelConfig;
use super::plan::{self, ModelProgram, PlanSpec};
use super::weights::ModelWeights;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, PipelineCache};

/// One merge of a traced forward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeTrace {
    pub stage: usize,
    pub exec: usize,
    /// `[batch * n_in]`: incoming position -> outgoing slot.
    pub slots: Vec<u32>,
    /// `[batch * n_out]`: the outgoing tokens' masses.
    pub masses: Vec<f32>,
    pub n_in: usize,
    pub n_out: usize,
}

/// Per-merge and per-stage maps read back with `--trace`.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub merges: Vec<MergeTrace>,
    /// `(stage, map [batch * n_grid], n_grid)`: original grid position -> final merged slot.
    pub stage_maps: Vec<(usize, Vec<u32>, usize)>,
}

/// Seconds one forward took.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Submission to idle, measured on the host.
    pub wall: f64,
    /// Between timestamps written at the start and end of the forward, where supported.
    pub gpu: Option<f64>,
}

/// Timestamp queries for [`Engine::time_forward`]; made once, reused for every forward.
pub struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl Timer {
    /// `None` when the device lacks `TIMESTAMP_QUERY`.
    pub fn new(gpu: &Gpu) -> Option<Timer> {
        if !gpu.has_timestamps() {
            return None;
        }
        Some(Timer {
            queries: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("forward timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: staging(gpu, "timer readback", 16),
        })
    }
}

pub struct ForwardOutput {
    /// `[batch, classes]`
    pub logits: Vec<f32>,
    pub trace: Option<Trace>,
}

/// Where one forward's time goes: seconds per kernel family, and per kernel (shader) with the
/// number of dispatches, slowest first.
#[derive(Clone, Debug)]
pub struct Profile {
    pub families: Vec<(crate::gpu::Family, f64)>,
    pub kernels: Vec<(&'static str, f64, usize)>,
}

/// Counts of what an engine has asked of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub submissions: u64,
    /// Buffer mappings for reading results back (a traced forward maps its trace buffers too).
    pub readbacks: u64,
}

/// What to plan besides model and weights.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    /// Images per forward.
    pub batch: usize,
    pub safe_r: Vec<Vec<usize>>,
    pub perms: Vec<Vec<Option<Vec<u32>>>>,
    pub trace: bool,
    /// Store activations, weights, images and logits as f16 (needs `Features::SHADER_F16`);
    /// arithmetic stays f32.
    pub f16: bool,
}

/// Where a forward reads its batch of normalised images (`[batch, 3, H, W]` f32) from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The engine's own input buffer ([`Engine::input_buffer`]), filled by
    /// [`Engine::set_input`] or by preprocessing into [`Engine::preprocess_target`].
    Input,
    /// A buffer of the caller's (`BufferUsages::COPY_SRC`), from a byte offset (a multiple of 4).
    Buffer(&'a wgpu::Buffer, wgpu::BufferAddress),
    /// The images are already in the program's image buffer (only with one micro-batch; see
    /// [`Engine::preprocess_target`]).
    InPlace,
}

pub struct Engine {
    gpu: Gpu,
    cfg: ModelConfig,
    plan: ModelProgram,
    batch: usize,
    chunks: usize,
    /// The user's whole batch of images, `[batch, 3, H, W]`.
    input: wgpu::Buffer,
    /// One micro-batch of images, bound by the program.
    images: wgpu::Buffer,
    /// One micro-batch of logits, written by the program.
    logits: wgpu::Buffer,
    /// All logits of the batch, `[batch, classes]`: `logits` itself when the batch runs as one
    /// micro-batch, otherwise a buffer each micro-batch's logits are copied into.
    output: wgpu::Buffer,
    /// `output`, mapped by [`Engine::forward`].
    readback: wgpu::Buffer,
    /// Host images for [`Engine::forward`]: mappable, kept mapped for writing between forwards
    /// (re-mapped by the forward's own submission), so uploading allocates nothing, where
    /// `Queue::write_buffer` would stage through a new buffer every call.
    upload: wgpu::Buffer,
    /// Whether `upload` is mapped (set by the mapping callback).
    upload_mapped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Serialises [`Engine::forward`]: `upload` and `readback` are one per engine.
    forward_lock: std::sync::Mutex<()>,
    /// Submissions and readbacks made so far (see [`Engine::stats`]).
    submissions: std::sync::atomic::AtomicU64,
    readbacks: std::sync::atomic::AtomicU64,
    /// Trace tensors gathered per chunk (one readback buffer each).
    trace_readback: Vec<wgpu::Buffer>,
    /// Images and logits are f16 on the device (see [`EngineSpec::f16`]).
    f16: bool,
}

/// Host values in the device's storage precision: f32 as they are (no copy), or rounded to f16.
pub fn encode_elems(values: &[f32], f16: bool) -> std::borrow::Cow<'_, [u8]> {
    if f16 {
        values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    } else {
        bytemuck::cast_slice(values).into()
    }
}

/// Device values in storage precision back to f32 (a trailing odd byte is ignored).
pub fn decode_elems(bytes: &[u8], f16: bool) -> Vec<f32> {
    if f16 {
        bytes
            .chunks_exact(2)
            .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }
}

/// Bytes per stored activation element.
fn elem_size(f16: bool) -> usize {
    if f16 {
        2
    } else {
        4
    }
}

fn image_elems(cfg: &ModelConfig) -> usize {
    3 * cfg.image_size * cfg.image_size
}

/// Images per micro-batch at most: enough rows (64 x 784 tokens) to fill a large GPU, while
/// the activations of a forward stay bounded whatever the batch.
pub const MAX_MICRO_BATCH: usize = 64;

/// Largest number of images whose biggest tensor still fits one storage binding (at most
/// [`MAX_MICRO_BATCH`]).
pub fn max_micro_batch(cfg: &ModelConfig, limits: &wgpu::Limits) -> usize {
    if cfg.vit().is_some() {
        // No banded stem: the image, the sequences' widest tensors (qkv or the MLP's hidden).
        let per_image = cfg
            .stages
            .iter()
            .enumerate()
            .map(|(s, st)| (cfg.lead() + cfg.tokens(s)) * (3 * st.dim).max(st.mlp_hidden))
            .chain([image_elems(cfg)])
            .max()
            .unwrap_or(1)
            * 4;
        return ((limits.max_storage_buffer_binding_size as usize) / per_image)
            .clamp(1, MAX_MICRO_BATCH);
    }
    let s0 = &cfg.stages[0];
    let half = cfg.image_size / 2;
    let quarter = cfg.image_size / 4;
    let n0 = cfg.tokens(0);
    // conv1 runs in bands of about 1/STEM_BANDS of its rows, plus a halo.
    let band_rows = 2 * quarter.div_ceil(plan::STEM_BANDS) + 1;
    let per_image = [
        image_elems(cfg),
        cfg.stem_mid * band_rows * half,
        s0.dim * quarter * quarter,
        n0 * 3 * s0.dim,
    ]
    .into_iter()
    .chain(
        cfg.stages
            .iter()
            .enumerate()
            .map(|(s, st)| cfg.tokens(s) * (3 * st.dim).max(st.mlp_hidden).max(st.np_hidden)),
    )
    .max()
    .unwrap_or(1)
        * 4;
    ((limits.max_storage_buffer_binding_size as usize) / per_image).clamp(1, MAX_MICRO_BATCH)
}

/// How a batch runs: `(micro-batches, images per micro-batch)`, the fewest micro-batches whose
/// tensors all fit the device's storage-binding limit, as even as possible.
pub fn split_batch(cfg: &ModelConfig, limits: &wgpu::Limits, batch: usize) -> (usize, usize) {
    let chunks = batch.max(1).div_ceil(max_micro_batch(cfg, limits));
    (chunks, batch.max(1).div_ceil(chunks))
}

/// The memory plan of a forward at `spec.batch` images, computed without a device: the
/// micro-batch it would run as and where its activations would go (`arena.buffer_sizes` sum to
/// the peak activation memory).
pub fn memory_plan(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &EngineSpec,
    limits: &wgpu::Limits,
) -> (usize, crate::gpu::program::ArenaPlan) {
    let (_, mb) = split_batch(cfg, limits, spec.batch);
    let plan_spec = PlanSpec {
        batch: mb,
        safe_r: spec.safe_r.clone(),
        perms: spec.perms.clone(),
        trace: spec.trace,
        f16: spec.f16,
    };
    (
        mb,
        plan::record(cfg, weights, &plan_spec, limits, None)
            .builder
            .arena_plan(),
    )
}

fn staging(gpu: &Gpu, label: &str, size: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

impl Engine {
    pub fn new(
        gpu: &Gpu,
        cache: &PipelineCache,
        cfg: &ModelConfig,
        weights: &ModelWeights,
        spec: &EngineSpec,
    ) -> Result<Engine> {
        gpu.scoped("building the forward", || {
            Engine::build(gpu, cache, cfg, weights, spec)
        })
    }

    fn build(
        gpu: &Gpu,
        cache: &PipelineCache,
        cfg: &ModelConfig,
        weights: &ModelWeights,
        spec: &EngineSpec,
    ) -> Result<Engine> {
        if spec.batch == 0 {
            return Err(Error::arg("batch", 0, "must be at least 1"));
        }
        // Weights may come from code (`EngineBuilder::with_model`), not only from a checked file.
        super::load::check_weights(weights, cfg)?;
        if spec.safe_r.len() != cfg.stages.len()
            || spec
                .safe_r
                .iter()
                .zip(&cfg.stages)
                .any(|(r, st)| r.len() != st.depth)
            || spec.perms.len() != cfg.stages.len()
            || spec
                .perms
                .iter()
                .zip(&cfg.stages)
                .any(|(p, st)| p.len() != st.depth)
        {
            return Err(Error::arg(
                "plan",
                cfg.name,
                "the merge counts and permutations were not planned for this model",
            ));
        }
        let (chunks, mb) = split_batch(cfg, &gpu.limits, spec.batch);
        if chunks > 1 {
            log::info!(
                "batch {} runs as {chunks} micro-batches of {mb} (device binding limit {} bytes)",
                spec.batch,
                gpu.limits.max_storage_buffer_binding_size
            );
        }
        if spec.f16 && !gpu.features.contains(wgpu::Features::SHADER_F16) {
            return Err(Error::MissingCapability {
                what: format!(
                    "SHADER_F16 on {} (needed for f16 precision; use f32)",
                    gpu.info.name
                ),
            });
        }
        let es = elem_size(spec.f16);
        if !(cfg.num_classes * es).is_multiple_of(4) {
            return Err(Error::arg(
                "precision",
                "f16",
                format!(
                    "{} classes: f16 logits need an even number of classes",
                    cfg.num_classes
                ),
            ));
        }
        let img_bytes = (image_elems(cfg) * es) as u64;
        let cls_bytes = (cfg.num_classes * es) as u64;
        // The whole batch's images live in one buffer (micro-batches copy from it).
        let max_images = gpu.limits.max_buffer_size / img_bytes;
        if spec.batch as u64 > max_images {
            return Err(Error::arg(
                "batch",
                spec.batch,
                format!(
                    "its images need {} bytes in one buffer, over the device's max_buffer_size of {} bytes: at most {max_images} images per forward (run larger sets as several forwards)",
                    img_bytes * spec.batch as u64,
                    gpu.limits.max_buffer_size
                ),
            ));
        }
        let dev = &gpu.device;
        // STORAGE: GPU preprocessing may write it (one image per binding).
        let input = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("input batch"),
            size: img_bytes * spec.batch as u64,
            usage: wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let images = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("images"),
            size: img_bytes * mb as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let logits = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits"),
            size: cls_bytes * mb as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let output = if chunks == 1 {
            logits.clone()
        } else {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("logits (whole batch)"),
                size: cls_bytes * spec.batch as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let readback = staging(gpu, "logits readback", cls_bytes * spec.batch as u64);
        let upload = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host images"),
            size: input.size(),
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        let plan_spec = PlanSpec {
            batch: mb,
            safe_r: spec.safe_r.clone(),
            perms: spec.perms.clone(),
            trace: spec.trace,
            f16: spec.f16,
        };
        let plan = plan::build(gpu, cache, cfg, weights, &plan_spec, &images, &logits)?;
        let trace_tensors: Vec<u64> = plan
            .trace
            .merges
            .iter()
            .flat_map(|m| [m.2, m.3])
            .chain(plan.trace.stage_maps.iter().map(|m| m.1))
            .map(|t| plan.program.tensor_size(t))
            .collect();
        let trace_readback = trace_tensors
            .iter()
            .map(|&size| staging(gpu, "trace readback", size * chunks as u64))
            .collect();
        Ok(Engine {
            gpu: gpu.clone(),
            cfg: cfg.clone(),
            plan,
            batch: spec.batch,
            chunks,
            input,
            images,
            logits,
            output,
            readback,
            upload,
            upload_mapped: std::sync::Arc::new(true.into()),
            forward_lock: std::sync::Mutex::new(()),
            submissions: Default::default(),
            readbacks: Default::default(),
            trace_readback,
            f16: spec.f16,
        })
    }

    /// Whether images and logits (and every activation) are f16 on the device.
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Logits read back from the device (storage precision) as f32, `batch * classes` of them.
    pub fn decode_logits(&self, bytes: &[u8]) -> Vec<f32> {
        let mut v = decode_elems(bytes, self.f16);
        v.truncate(self.batch * self.cfg.num_classes);
        v
    }

    /// Submissions and readbacks this engine has made (forwards, timed forwards, profiles).
    pub fn stats(&self) -> EngineStats {
        use std::sync::atomic::Ordering::Relaxed;
        EngineStats {
            submissions: self.submissions.load(Relaxed),
            readbacks: self.readbacks.load(Relaxed),
        }
    }

    fn submit(&self, enc: wgpu::CommandEncoder) {
        self.gpu.queue.submit(Some(enc.finish()));
        self.submissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer) -> Result<Vec<T>> {
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        read_buffer(&self.gpu, buf)
    }

    /// Write `images` into the mapped upload buffer and unmap it for the copy. The buffer is
    /// normally mapped already (the previous forward's submission re-mapped it); after a forward
    /// that failed before submitting it is mapped again here.
    fn stage_upload(&self, images: &[f32]) -> Result<()> {
        let gpu_err = |why: String| Error::Gpu {
            during: "uploading the images".into(),
            why,
        };
        use std::sync::atomic::Ordering::SeqCst;
        if !self.upload_mapped.load(SeqCst) {
            let (tx, rx) = std::sync::mpsc::channel();
            self.upload
                .slice(..)
                .map_async(wgpu::MapMode::Write, move |r| {
                    let _ = tx.send(r);
                });
            self.gpu.wait()?;
            rx.recv()
                .map_err(|e| gpu_err(e.to_string()))?
                .map_err(|e| gpu_err(e.to_string()))?;
        }
        {
            let encoded = encode_elems(images, self.f16);
            let bytes: &[u8] = &encoded;
            let mut view = self
                .upload
                .get_mapped_range_mut(..bytes.len() as u64)
                .map_err(|e| gpu_err(e.to_string()))?;
            view.copy_from_slice(bytes);
        }
        self.upload.unmap();
        self.upload_mapped.store(false, SeqCst);
        Ok(())
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn micro_batch(&self) -> usize {
        self.plan.batch
    }
    pub fn program(&self) -> &crate::gpu::Program {
        &self.plan.program
    }
    /// Peak activation memory of a forward: the planned arena of one micro-batch.
    pub fn activation_bytes(&self) -> u64 {
        self.plan.program.arena_bytes
    }

    /// The device the engine runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Number of micro-batches a forward runs as.
    pub fn micro_batches(&self) -> usize {
        self.chunks
    }
    /// Bytes of one normalised image, `[3, H, W]` in storage precision (f32, or f16).
    pub fn image_bytes(&self) -> u64 {
        (image_elems(&self.cfg) * elem_size(self.f16)) as u64
    }
    /// The engine's input buffer, `[batch, 3, H, W]` in storage precision (f32, or f16 for an
    /// f16 engine; `COPY_DST | COPY_SRC | STORAGE`): what [`Source::Input`] reads.
    pub fn input_buffer(&self) -> &wgpu::Buffer {
        &self.input
    }
    /// The logits of the last forward recorded, `[batch, classes]` in storage precision (f32,
    /// or f16 for an f16 engine) from byte 0
    /// (`STORAGE | COPY_SRC`; the buffer may be longer than `batch * classes * 4` bytes).
    pub fn logits_buffer(&self) -> &wgpu::Buffer {
        &self.output
    }
    /// Where to write a whole batch of preprocessed images, and the [`Source`] that reads it
    /// from there: the program's own image buffer when the batch runs as one micro-batch (no
    /// copy), otherwise the input buffer.
    pub fn preprocess_target(&self) -> (&wgpu::Buffer, Source<'static>) {
        if self.chunks == 1 {
            (&self.images, Source::InPlace)
        } else {
            (&self.input, Source::Input)
        }
    }

    /// Check that `source` holds a whole batch.
    pub fn check_source(&self, source: Source<'_>) -> Result<()> {
        match source {
            Source::Input => Ok(()),
            Source::InPlace if self.chunks == 1 => Ok(()),
            Source::InPlace => Err(Error::arg(
                "input",
                "in place",
                format!(
                    "this engine runs its batch of {} as {} micro-batches; use its input buffer",
                    self.batch, self.chunks
                ),
            )),
            Source::Buffer(buf, offset) => {
                let need = self.input.size();
                if !buf.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                    return Err(Error::arg(
                        "input buffer",
                        format!("usage {:?}", buf.usage()),
                        "needs BufferUsages::COPY_SRC",
                    ));
                }
                if offset % 4 != 0 || offset + need > buf.size() {
                    return Err(Error::arg(
                        "input buffer",
                        format!("{} bytes, read from offset {offset}", buf.size()),
                        format!(
                            "needs {need} bytes ([{}, 3, {s}, {s}] {}) from an offset that is a multiple of 4",
                            self.batch,
                            if self.f16 { "f16" } else { "f32" },
                            s = self.cfg.image_size
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Record a whole forward into `enc`: images from `source`, logits left in
    /// [`Engine::logits_buffer`]. Nothing is submitted or written through the queue.
    pub fn encode_forward(&self, enc: &mut wgpu::CommandEncoder, source: Source<'_>) -> Result<()> {
        self.check_source(source)?;
        self.encode(enc, source, None);
        Ok(())
    }

    /// Record a whole forward (all micro-batches) into `enc`, reading `source` (checked) and
    /// leaving the logits in `self.output` (and the trace in its readback buffers).
    fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        source: Source<'_>,
        timer: Option<&wgpu::QuerySet>,
    ) {
        let img_bytes = self.images.size();
        let total_in = self.input.size();
        let cls_bytes = self.logits.size();
        let out_bytes = (self.batch * self.cfg.num_classes * elem_size(self.f16)) as u64;
        let (src, src_offset) = match source {
            Source::Input => (Some(&self.input), 0),
            Source::Buffer(b, o) => (Some(b), o),
            Source::InPlace => (None, 0),
        };
        let tracing: Vec<wgpu::BufferAddress> = self
            .plan
            .trace
            .merges
            .iter()
            .flat_map(|m| [m.2, m.3])
            .chain(self.plan.trace.stage_maps.iter().map(|m| m.1))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t as u64)
            .collect();
        for c in 0..self.chunks {
            let offset = c as u64 * img_bytes;
            // The last micro-batch may be partial; the rest of `images` keeps stale data whose
            // logits are never read.
            let len = img_bytes.min(total_in - offset.min(total_in));
            if let Some(src) = src.filter(|_| len > 0) {
                enc.copy_buffer_to_buffer(src, src_offset + offset, &self.images, 0, len);
            }
            {
                // With a timer, the first pass stamps its start and the last its end.
                let first = c == 0;
                let last = c + 1 == self.chunks;
                let timestamp_writes =
                    timer
                        .filter(|_| first || last)
                        .map(|q| wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: first.then_some(0),
                            end_of_pass_write_index: last.then_some(1),
                        });
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("forward"),
                    timestamp_writes,
                });
                self.plan.program.record(&mut pass);
            }
            if self.chunks > 1 {
                // The last micro-batch may be partial: copy only the batch's rows.
                let at = c as u64 * cls_bytes;
                let len = cls_bytes.min(out_bytes - at.min(out_bytes));
                if len > 0 {
                    enc.copy_buffer_to_buffer(&self.logits, 0, &self.output, at, len);
                }
            }
            for (i, &t) in tracing.iter().enumerate() {
                let (buf, offset) = self.plan.program.location(t as usize);
                let size = self.plan.program.tensor_size(t as usize);
                enc.copy_buffer_to_buffer(
                    buf,
                    offset,
                    &self.trace_readback[i],
                    c as u64 * size,
                    size,
                );
            }
        }
    }

    /// Run a forward on `images` (`[batch, 3, 224, 224]`, normalised): one submission, one wait.
    pub fn forward(&self, images: &[f32]) -> Result<ForwardOutput> {
        self.gpu.scoped("a forward", || self.run_forward(images))
    }

    fn run_forward(&self, images: &[f32]) -> Result<ForwardOutput> {
        let expected = self.batch * image_elems(&self.cfg);
        if images.len() != expected {
            return Err(Error::arg(
                "images",
                format!("{} values", images.len()),
                format!(
                    "expected {} ([{}, 3, {s}, {s}])",
                    expected,
                    self.batch,
                    s = self.cfg.image_size
                ),
            ));
        }
        let _one_at_a_time = self.forward_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.stage_upload(images)?;
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        enc.copy_buffer_to_buffer(&self.upload, 0, &self.input, 0, self.input.size());
        self.encode(&mut enc, Source::Input, None);
        enc.copy_buffer_to_buffer(&self.output, 0, &self.readback, 0, self.readback.size());
        // Ready for the next forward's images once this one's copy has run.
        let mapped = self.upload_mapped.clone();
        enc.map_buffer_on_submit(&self.upload, wgpu::MapMode::Write, .., move |r| {
            mapped.store(r.is_ok(), std::sync::atomic::Ordering::SeqCst);
        });
        self.submit(enc);
        let all: Vec<u8> = self.read(&self.readback)?;
        let logits = self.decode_logits(&all);
        let trace = if self.plan.trace.merges.is_empty() && self.plan.trace.stage_maps.is_empty() {
            None
        } else {
            Some(self.read_trace()?)
        };
        Ok(ForwardOutput { logits, trace })
    }

    /// Upload a batch of images for [`Engine::time_forward`].
    pub fn set_input(&self, images: &[f32]) -> Result<()> {
        let expected = self.batch * image_elems(&self.cfg);
        if images.len() != expected {
            return Err(Error::arg(
                "images",
                format!("{} values", images.len()),
                format!("expected {expected}"),
            ));
        }
        self.gpu
            .queue
            .write_buffer(&self.input, 0, &encode_elems(images, self.f16));
        Ok(())
    }

    /// Run one forward on the uploaded input and time it: GPU time from timestamp queries around
    /// the whole forward where `timer` is given, and wall time of submit-to-idle.
    pub fn time_forward(&self, timer: Option<&Timer>) -> Result<Timing> {
        self.gpu
            .scoped("a timed forward", || self.run_timed_forward(timer))
    }

    fn run_timed_forward(&self, timer: Option<&Timer>) -> Result<Timing> {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timed forward"),
            });
        self.encode(&mut enc, Source::Input, timer.map(|t| &t.queries));
        if let Some(t) = timer {
            enc.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
        }
        let start = std::time::Instant::now();
        self.submit(enc);
        self.gpu.wait()?;
        let wall = start.elapsed().as_secs_f64();
        let gpu = match timer {
            Some(t) => {
                let ticks: Vec<u64> = self.read(&t.readback)?;
                let period = self.gpu.queue.get_timestamp_period() as f64;
                Some(ticks[1].saturating_sub(ticks[0]) as f64 * period * 1e-9)
            }
            None => None,
        };
        Ok(Timing { wall, gpu })
    }

    /// Time every dispatch of one forward (first micro-batch) in its own timestamped pass and
    /// sum per kernel family. Each pass adds the driver's per-pass overhead, so the families'
    /// total exceeds a normal forward; the split is what this is for. Needs TIMESTAMP_QUERY.
    pub fn profile(&self) -> Result<Profile> {
        self.gpu.scoped("profiling", || self.run_profile())
    }

    fn run_profile(&self) -> Result<Profile> {
        if !self.gpu.has_timestamps() {
            return Err(Error::MissingCapability {
                what: "TIMESTAMP_QUERY (needed by --profile)".into(),
            });
        }
        let dispatches = &self.plan.program.dispatches;
        let count = (2 * dispatches.len()) as u32;
        let queries = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = 8 * count as u64;
        let resolve = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = staging(&self.gpu, "profile readback", bytes);
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        let len = self.images.size().min(self.input.size());
        enc.copy_buffer_to_buffer(&self.input, 0, &self.images, 0, len);
        for (i, d) in dispatches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.key.shader.name()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        enc.resolve_query_set(&queries, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        self.submit(enc);
        let ticks: Vec<u64> = self.read(&readback)?;
        let period = self.gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut profile = Profile {
            families: crate::gpu::Family::ALL.iter().map(|&f| (f, 0.0)).collect(),
            kernels: Vec::new(),
        };
        for (i, d) in dispatches.iter().enumerate() {
            let t = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            if let Some(e) = profile.families.iter_mut().find(|(f, _)| *f == d.family) {
                e.1 += t;
            }
            let name = d.key.shader.name();
            match profile.kernels.iter_mut().find(|k| k.0 == name) {
                Some(k) => {
                    k.1 += t;
                    k.2 += 1;
                }
                None => profile.kernels.push((name, t, 1)),
            }
        }
        profile.kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(profile)
    }

    fn read_trace(&self) -> Result<Trace> {
        let mut bufs = self.trace_readback.iter();
        let mut next_u32 = |keep: usize| -> Result<Vec<u32>> {
            let buf = bufs.next().ok_or_else(|| Error::Gpu {
                during: "trace".into(),
                why: "missing readback buffer".into(),
            })?;
            let mut v: Vec<u32> = self.read(buf)?;
            v.truncate(keep);
            Ok(v)
        };
        let mut trace = Trace::default();
        for &(s, e, _, _, n_in, n_out) in &self.plan.trace.merges {
            let slots = next_u32(self.batch * n_in)?;
            let mass: Vec<f32> = next_u32(self.batch * n_out)?
                .into_iter()
                .map(f32::from_bits)
                .collect();
            trace.merges.push(MergeTrace {
                stage: s,
                exec: e,
                slots,
                masses: mass,
                n_in,
                n_out,
            });
        }
        for &(s, _, n_grid) in &self.plan.trace.stage_maps {
            trace
                .stage_maps
                .push((s, next_u32(self.batch * n_grid)?, n_grid));
        }
        Ok(trace)
    }
}

/// Map a staging buffer and copy it out; a lost device is an error, not a hang.
pub fn read_buffer<T: bytemuck::Pod>(gpu: &Gpu, buf: &wgpu::Buffer) -> Result<Vec<T>> {
    let slice = buf.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|e| Error::Gpu {
            during: "readback".into(),
            why: e.to_string(),
        })?
        .map_err(|e| Error::Gpu {
            during: "readback".into(),
            why: e.to_string(),
        })?;
    let data = {
        let view = slice.get_mapped_range().map_err(|e| Error::Gpu {
            during: "readback".into(),
            why: e.to_string(),
        })?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    buf.unmap();
    Ok(data)
}
