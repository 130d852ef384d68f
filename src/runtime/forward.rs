//! A planned, resident forward pass: buffers, pipelines and bind groups are made once; each
//! forward is one command buffer, one submission and one readback.

use super::record::{self, ForwardProgram, TraceTensors};
use super::spec::ForwardSpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::PipelineCache;
use crate::model::{Model, ModelConfig, ModelWeights};

/// Where a forward reads its batch of normalised images (`[batch, 3, H, W]` f32) from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The engine's own input buffer ([`PlannedForward::input_buffer`]), filled by
    /// [`Engine::set_input`](crate::Engine::set_input) or by preprocessing into
    /// [`PlannedForward::preprocess_target`].
    Input,
    /// A buffer of the caller's (`BufferUsages::COPY_SRC`), from a byte offset (a multiple of 4).
    Buffer(&'a wgpu::Buffer, wgpu::BufferAddress),
    /// The images are already in the program's image buffer (only with one micro-batch; see
    /// [`PlannedForward::preprocess_target`]).
    InPlace,
}

/// One forward (model, schedule, batch size) planned once on a device: its program, its input
/// and output buffers and its micro-batching. [`crate::Engine`] wraps one.
pub struct PlannedForward {
    gpu: Gpu,
    cfg: ModelConfig,
    forward: ForwardProgram,
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
    /// Trace tensors gathered per chunk (one readback buffer each).
    trace_readback: Vec<wgpu::Buffer>,
    /// Images and logits are f16 on the device (see [`ForwardSpec::f16`]).
    f16: bool,
    /// The words 0 to 255, copied from to write a forward's stamp without the queue.
    stamp_bytes: wgpu::Buffer,
    /// The stamp of the last forward whose commands ran ([`STAMP_BYTES`]): written by the
    /// forward's last commands, read back beside the logits.
    stamp: wgpu::Buffer,
    /// The stamp of the last forward recorded (never 0).
    seq: std::sync::atomic::AtomicU32,
    /// This plan's id among the process's planned forwards (keys the per-thread stamps).
    id: u64,
}

/// Bytes of a forward's stamp: the four bytes of its sequence number, one per word (copies
/// move whole words).
pub const STAMP_BYTES: u64 = 16;

/// The stamp a forward with sequence number `seq` writes.
pub fn stamp_words(seq: u32) -> [u32; 4] {
    seq.to_le_bytes().map(u32::from)
}

/// Whether `bytes` (a read-back stamp) are the stamp of forward `seq`: if not, the logits read
/// beside it are another forward's (the commands of `seq` did not run). No forward has the
/// number 0, the stamp of a new buffer and of a profiled run: it never matches.
pub fn stamp_matches(bytes: &[u8], seq: u32) -> bool {
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    seq != 0 && words == stamp_words(seq)
}

thread_local! {
    /// Per planned forward (by its id), the stamp of the last forward this thread recorded.
    static RECORDED: std::cell::RefCell<Vec<(u64, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Everything a plan of `spec` needs checked before anything is made on `gpu`: the batch, the
/// device's compute, the weights, the trajectory's shape, the precision and the input buffer's
/// size; and how the batch splits into micro-batches `(count, images each)`.
fn check_spec(
    gpu: &Gpu,
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &ForwardSpec,
) -> Result<(usize, usize)> {
    if spec.batch == 0 {
        return Err(Error::arg("batch", 0, "must be at least 1"));
    }
    // A device without compute (WebGL2-class) is said as such first, before the plan's
    // tensors are held against its zero binding sizes.
    if gpu.limits.max_compute_workgroups_per_dimension == 0 {
        crate::gpu::limits::check(&wgpu::Limits::default(), &gpu.limits, gpu.is_borrowed())?;
    }
    // Weights may come from code (`EngineBuilder::with_model`), not only from a checked file.
    crate::io::safetensors::check_weights(weights, cfg)?;
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
    let (chunks, mb) = split_batch(cfg, weights, spec, &gpu.limits);
    if chunks > 1 {
        log::info!(
            "batch {} runs as {chunks} micro-batches of {mb} (device binding limit {} bytes)",
            spec.batch,
            gpu.limits.max_storage_buffer_binding_size
        );
    }
    if spec.f16() && !gpu.features.contains(wgpu::Features::SHADER_F16) {
        return Err(gpu.missing_feature("SHADER_F16", "f16 storage needs it; use f32"));
    }
    let es = elem_size(spec.f16());
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
    Ok((chunks, mb))
}

impl Drop for PlannedForward {
    /// Forget this plan's stamp on the dropping thread (other threads' entries are 12 bytes
    /// each and go with the thread).
    fn drop(&mut self) {
        let _ = RECORDED.try_with(|r| r.borrow_mut().retain(|(id, _)| *id != self.id));
    }
}

/// Ids of planned forwards, for [`RECORDED`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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

/// Largest number of images per micro-batch whose every tensor fits one storage binding (at
/// most [`MAX_MICRO_BATCH`], at least 1), from two device-free recordings of the forward at one
/// and two images (every activation is `fixed + per_image * batch` bytes). Weights do not
/// scale with the batch; one over the limit is refused by the limit check when the forward is
/// made.
pub fn max_micro_batch(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
) -> usize {
    let at = |batch| {
        let micro = ForwardSpec {
            batch,
            ..spec.clone()
        };
        record::tensor_sizes(cfg, weights, &micro, limits)
    };
    let (one, two) = (at(1), at(2));
    let limit = limits.max_storage_buffer_binding_size;
    let mut fit = MAX_MICRO_BATCH as u64;
    for ((_, b1, per_batch), (_, b2, _)) in one.iter().zip(&two) {
        let per_image = b2.saturating_sub(*b1);
        if !per_batch || per_image == 0 {
            continue;
        }
        let fixed = b1.saturating_sub(per_image);
        fit = fit.min(limit.saturating_sub(fixed) / per_image);
    }
    fit.max(1) as usize
}

/// How a batch runs: `(micro-batches, images per micro-batch)`, the fewest micro-batches whose
/// tensors all fit the device's storage-binding limit, as even as possible.
pub fn split_batch(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
) -> (usize, usize) {
    let batch = spec.batch.max(1);
    let chunks = batch.div_ceil(max_micro_batch(cfg, weights, spec, limits));
    (chunks, batch.div_ceil(chunks))
}

/// The memory plan of a forward at `spec.batch` images, computed without a device: the
/// micro-batch it would run as and where its activations would go (`arena.buffer_sizes` sum to
/// the peak activation memory), with the kernels a device with `limits` and subgroups of
/// `subgroup_width` lanes runs (`None`: the portable ones).
pub fn memory_plan(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
    subgroup_width: Option<u32>,
) -> (usize, crate::kernels::arena::ArenaLayout) {
    let (_, mb) = split_batch(cfg, weights, spec, limits);
    let micro = ForwardSpec {
        batch: mb,
        ..spec.clone()
    };
    (
        mb,
        record::record(cfg, weights, &micro, limits, subgroup_width)
            .builder
            .arena_layout(),
    )
}

/// The words 0 to 255 a stamp is copied from, and the stamp itself.
fn stamp_buffers(dev: &wgpu::Device) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    let words: Vec<u32> = (0..256).collect();
    let bytes = crate::gpu::context::buffer_with(
        dev,
        "stamp bytes",
        bytemuck::cast_slice(&words),
        wgpu::BufferUsages::COPY_SRC,
    )?;
    let stamp = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("forward stamp"),
        size: STAMP_BYTES,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    Ok((bytes, stamp))
}

fn staging(gpu: &Gpu, label: &str, size: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

impl PlannedForward {
    /// Plans `model` for `spec` on `gpu`: every buffer, pipeline and bind group of the forward
    /// is made here.
    pub fn new(
        gpu: &Gpu,
        cache: &PipelineCache,
        model: &Model,
        spec: &ForwardSpec,
    ) -> Result<PlannedForward> {
        gpu.scoped("building the forward", || {
            PlannedForward::build(gpu, cache, &model.cfg, &model.weights, spec)
        })
    }

    fn build(
        gpu: &Gpu,
        cache: &PipelineCache,
        cfg: &ModelConfig,
        weights: &ModelWeights,
        spec: &ForwardSpec,
    ) -> Result<PlannedForward> {
        let (chunks, mb) = check_spec(gpu, cfg, weights, spec)?;
        let es = elem_size(spec.f16());
        let img_bytes = (image_elems(cfg) * es) as u64;
        let cls_bytes = (cfg.num_classes * es) as u64;
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
        let micro = ForwardSpec {
            batch: mb,
            ..spec.clone()
        };
        let forward = record::build(gpu, cache, cfg, weights, &micro, &images, &logits)?;
        let trace_tensors: Vec<u64> = forward
            .trace
            .merges
            .iter()
            .flat_map(|m| [m.2, m.3])
            .chain(forward.trace.stage_maps.iter().map(|m| m.1))
            .map(|t| forward.program.tensor_size(t))
            .collect();
        let trace_readback = trace_tensors
            .iter()
            .map(|&size| staging(gpu, "trace readback", size * chunks as u64))
            .collect();
        let (stamp_bytes, stamp) = stamp_buffers(dev)?;
        Ok(PlannedForward {
            stamp_bytes,
            stamp,
            seq: std::sync::atomic::AtomicU32::new(0),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            gpu: gpu.clone(),
            cfg: cfg.clone(),
            forward,
            batch: spec.batch,
            chunks,
            input,
            images,
            logits,
            output,
            trace_readback,
            f16: spec.f16(),
        })
    }

    /// Whether images and logits (and every activation) are f16 on the device.
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Images per forward.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Images per run of the program (at most [`PlannedForward::batch`]).
    pub fn micro_batch(&self) -> usize {
        self.forward.batch
    }
    /// The planned program of one micro-batch.
    pub fn program(&self) -> &crate::kernels::Program {
        &self.forward.program
    }
    /// Peak activation memory of a forward: the planned arena of one micro-batch.
    pub fn activation_bytes(&self) -> u64 {
        self.forward.program.arena_bytes
    }

    /// The device the engine runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// The model's configuration.
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
                let end = offset.checked_add(need);
                if offset % 4 != 0 || end.is_none_or(|end| end > buf.size()) {
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
    /// [`PlannedForward::logits_buffer`]. Nothing is submitted or written through the queue.
    pub fn encode_forward(&self, enc: &mut wgpu::CommandEncoder, source: Source<'_>) -> Result<()> {
        self.encode_stamped(enc, source).map(|_| ())
    }

    /// [`PlannedForward::encode_forward`], returning the stamp the forward writes into
    /// [`PlannedForward::stamp_buffer`] when its commands run.
    pub fn encode_stamped(
        &self,
        enc: &mut wgpu::CommandEncoder,
        source: Source<'_>,
    ) -> Result<u32> {
        self.check_source(source)?;
        Ok(self.encode(enc, source, None))
    }

    /// The stamp of the last forward recorded on this thread (see
    /// [`PlannedForward::stamp_buffer`]), so a readback recorded after its forward on one thread
    /// expects that forward even while other threads record theirs; the last forward recorded
    /// on any thread where this one has recorded none (0, which never matches, before any).
    pub fn last_stamp(&self) -> u32 {
        RECORDED
            .with(|r| {
                r.borrow()
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|&(_, seq)| seq)
            })
            .unwrap_or_else(|| self.seq.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// [`STAMP_BYTES`] bytes that the last forward whose commands ran wrote after its logits
    /// ([`stamp_words`] of its sequence number): a readback that copies them beside the logits
    /// can tell the logits of the forward it expects from an earlier forward's.
    pub fn stamp_buffer(&self) -> &wgpu::Buffer {
        &self.stamp
    }

    /// A new sequence number (never 0, which a new buffer's zeros would match) and the copies
    /// that write its stamp.
    fn encode_stamp(&self, enc: &mut wgpu::CommandEncoder) -> u32 {
        use std::sync::atomic::Ordering::SeqCst;
        let mut seq = self.seq.fetch_add(1, SeqCst).wrapping_add(1);
        while seq == 0 {
            seq = self.seq.fetch_add(1, SeqCst).wrapping_add(1);
        }
        for (i, byte) in stamp_words(seq).into_iter().enumerate() {
            enc.copy_buffer_to_buffer(
                &self.stamp_bytes,
                4 * byte as u64,
                &self.stamp,
                4 * i as u64,
                4,
            );
        }
        RECORDED.with(|r| {
            let mut r = r.borrow_mut();
            match r.iter_mut().find(|(id, _)| *id == self.id) {
                Some(entry) => entry.1 = seq,
                None => r.push((self.id, seq)),
            }
        });
        seq
    }

    /// Record a whole forward (all micro-batches) into `enc`, reading `source` (checked) and
    /// leaving the logits in `self.output` (and the trace in its readback buffers).
    fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        source: Source<'_>,
        timer: Option<&wgpu::QuerySet>,
    ) -> u32 {
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
            .forward
            .trace
            .merges
            .iter()
            .flat_map(|m| [m.2, m.3])
            .chain(self.forward.trace.stage_maps.iter().map(|m| m.1))
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
                self.forward.program.encode(&mut pass);
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
                let (buf, offset) = self.forward.program.location(t as usize);
                let size = self.forward.program.tensor_size(t as usize);
                enc.copy_buffer_to_buffer(
                    buf,
                    offset,
                    &self.trace_readback[i],
                    c as u64 * size,
                    size,
                );
            }
        }
        self.encode_stamp(enc)
    }

    /// Record a forward from `source` whose first pass writes timestamp 0 of `queries` at its
    /// start and whose last writes timestamp 1 at its end.
    pub fn encode_timed(
        &self,
        enc: &mut wgpu::CommandEncoder,
        source: Source<'_>,
        queries: &wgpu::QuerySet,
    ) -> Result<()> {
        self.check_source(source)?;
        self.encode(enc, source, Some(queries));
        Ok(())
    }

    /// Record the first micro-batch of a forward from the input buffer with every dispatch in
    /// its own pass, timestamps `2i` and `2i + 1` of `queries` around dispatch `i` (of
    /// [`PlannedForward::dispatch_count`]).
    pub fn encode_profile(&self, enc: &mut wgpu::CommandEncoder, queries: &wgpu::QuerySet) {
        // A profiled run overwrites the first micro-batch's logits only: its stamp is 0, which
        // no readback accepts.
        enc.clear_buffer(&self.stamp, 0, None);
        let len = self.images.size().min(self.input.size());
        enc.copy_buffer_to_buffer(&self.input, 0, &self.images, 0, len);
        for (i, d) in self.forward.program.dispatches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.key.kernel.name()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Dispatches of one micro-batch's forward.
    pub fn dispatch_count(&self) -> usize {
        self.forward.program.dispatches.len()
    }

    /// Kernel family and shader name of every dispatch, in order.
    pub fn dispatch_names(
        &self,
    ) -> impl Iterator<Item = (crate::kernels::Family, &'static str)> + '_ {
        self.forward
            .program
            .dispatches
            .iter()
            .map(|d| (d.family, d.key.kernel.name()))
    }

    /// What a traced forward keeps: merges and stage maps, in the order of
    /// [`PlannedForward::trace_buffers`] (each merge's slot map, then its masses; then the stage
    /// maps), one micro-batch after another in each buffer.
    pub fn trace_tensors(&self) -> &TraceTensors {
        &self.forward.trace
    }

    /// Mappable buffers every forward of a traced plan copies its trace tensors into.
    pub fn trace_buffers(&self) -> &[wgpu::Buffer] {
        &self.trace_readback
    }
}
