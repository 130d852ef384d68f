//! [`Engine`]: a planned forward on a device, what it was built with, and its [`Input`]s.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::{EngineBuilder, KernelChoice, Timer};
use crate::gpu::Gpu;
use crate::kernels::preprocess::Preprocessor;
use crate::kernels::PipelineCache;
use crate::model::Precision;
use crate::runtime::PlannedForward;
use crate::tome::Schedule;

/// A batch of images for one forward.
///
/// `From` conversions let the forward methods take `&Vec<f32>`, `&[f32]`, `&wgpu::Buffer`,
/// `&wgpu::Texture` or `&[&wgpu::Texture]` directly.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Normalised images on the host, `[batch, 3, S, S]` f32 with `S` the model's
    /// [`Engine::image_size`] (e.g. from [`crate::io::load_image_with`]).
    Host(&'a [f32]),
    /// Normalised images in a GPU buffer, `[batch, 3, S, S]` f32 from byte `offset` (a
    /// multiple of 4). The buffer needs `BufferUsages::COPY_SRC`; it is copied when the forward
    /// runs, so it may be rewritten as soon as the forward's commands are submitted.
    Buffer {
        /// The buffer holding the images.
        buffer: &'a wgpu::Buffer,
        /// Byte offset of the first image, a multiple of 4.
        offset: wgpu::BufferAddress,
    },
    /// One texture (batch 1), preprocessed on the GPU. See [`Preprocessor`] for the formats.
    Texture(&'a wgpu::Texture),
    /// One texture per image of the batch, preprocessed on the GPU; sizes may differ.
    Textures(&'a [&'a wgpu::Texture]),
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(v: &'a [f32]) -> Self {
        Input::Host(v)
    }
}
impl<'a> From<&'a Vec<f32>> for Input<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        Input::Host(v)
    }
}
impl<'a> From<&'a wgpu::Buffer> for Input<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Input::Buffer { buffer, offset: 0 }
    }
}
impl<'a> From<&'a wgpu::Texture> for Input<'a> {
    fn from(t: &'a wgpu::Texture) -> Self {
        Input::Texture(t)
    }
}
impl<'a> From<&'a [&'a wgpu::Texture]> for Input<'a> {
    fn from(t: &'a [&'a wgpu::Texture]) -> Self {
        Input::Textures(t)
    }
}
impl<'a> From<&'a Vec<&'a wgpu::Texture>> for Input<'a> {
    fn from(t: &'a Vec<&'a wgpu::Texture>) -> Self {
        Input::Textures(t)
    }
}

/// Readback buffers kept for reuse per engine.
pub(super) const MAX_POOLED_READBACKS: usize = 8;

/// A planned forward of one model, schedule and batch size on one device.
///
/// ```
/// # fn main() -> sret_tome::Result<()> {
/// use sret_tome::Engine;
///
/// let engine = Engine::builder().build()?;          // synthetic weights, own device
/// let images = vec![0.0f32; engine.input_len()];    // [1, 3, 224, 224], normalised
/// let logits = engine.run(&images)?;                // blocking helper
/// let (class, p) = logits.top_k(0, 1)[0];
/// println!("{} ({:.1}%)", sret_tome::imagenet_class(class).unwrap(), 100.0 * p);
/// # Ok(())
/// # }
/// ```
pub struct Engine {
    pub(super) inner: PlannedForward,
    /// The kernel variants of the plan and how they were chosen.
    pub(super) kernels: KernelChoice,
    pub(super) cache: PipelineCache,
    pub(super) preprocessor: Preprocessor,
    pub(super) readback_pool: Arc<Mutex<Vec<wgpu::Buffer>>>,
    /// Host-input staging buffers, each mapped for writing while in the pool.
    pub(super) upload_pool: Arc<Mutex<Vec<wgpu::Buffer>>>,
    /// Timestamp queries of [`Engine::time_forward`] (where the device has them).
    pub(super) timer: Option<Timer>,
    /// Serialises traced forwards (their trace buffers are one per engine).
    pub(super) trace_lock: Mutex<()>,
    /// An awaited traced forward is in flight (set and checked under `trace_lock`, which the
    /// awaited forward never holds across an await).
    pub(super) trace_awaited: std::sync::atomic::AtomicBool,
    /// Submissions and buffer mappings so far ([`Engine::stats`]).
    pub(super) submissions: std::sync::atomic::AtomicU64,
    pub(super) readbacks: std::sync::atomic::AtomicU64,
    pub(super) model_name: &'static str,
    pub(super) synthetic: bool,
    pub(super) schedule: Schedule,
    pub(super) seed: u64,
    pub(super) tokens_removed: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model_name)
            .field("synthetic_weights", &self.synthetic)
            .field("schedule", &self.schedule)
            .field("batch", &self.batch())
            .field("micro_batches", &self.micro_batches())
            .field("adapter", &self.inner.gpu().info.name)
            .finish()
    }
}

impl Engine {
    /// A builder with defaults: `sret_t_distill` with synthetic weights, no merging, batch 1,
    /// f32, on a device of its own.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// The wgpu device the engine runs on (its own, or the application's).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.gpu().device
    }
    /// The queue the engine submits to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.gpu().queue
    }
    /// The device with what the planner knew about it.
    pub fn gpu(&self) -> &Gpu {
        self.inner.gpu()
    }
    /// Compiled pipelines; hand to [`EngineBuilder::pipeline_cache`] of another engine on the
    /// same device to share them.
    pub fn pipeline_cache(&self) -> &PipelineCache {
        &self.cache
    }
    /// The texture preprocessing this engine uses, for recording it on its own.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }
    /// The planned forward underneath (timing, profiling, the program).
    pub fn planned(&self) -> &PlannedForward {
        &self.inner
    }

    /// The model's canonical name, e.g. `"sret_t_distill"`.
    pub fn model_name(&self) -> &'static str {
        self.model_name
    }
    /// Whether the weights are synthetic (no weight file was given).
    pub fn weights_are_synthetic(&self) -> bool {
        self.synthetic
    }
    /// The token-merging schedule the forward was planned with.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// Seed of the recursive passes' token permutations.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Storage precision of the forward.
    pub fn precision(&self) -> Precision {
        if self.inner.is_f16() {
            Precision::F16
        } else {
            Precision::F32
        }
    }
    /// The kernel variant each kernel kind runs, and how it was chosen ([`Autotune`](super::Autotune)).
    pub fn kernels(&self) -> &KernelChoice {
        &self.kernels
    }
    /// Tokens the schedule removes over the whole forward (per image).
    pub fn tokens_removed(&self) -> usize {
        self.tokens_removed
    }
    /// Images per forward.
    pub fn batch(&self) -> usize {
        self.inner.batch()
    }
    /// Micro-batches a forward runs as (more than one where a tensor of the whole batch would
    /// pass the device's storage-binding limit).
    pub fn micro_batches(&self) -> usize {
        self.inner.micro_batches()
    }
    /// Logits per image.
    pub fn classes(&self) -> usize {
        self.inner.config().num_classes
    }
    /// Side of the (square) input images.
    pub fn image_size(&self) -> usize {
        self.inner.config().image_size
    }
    /// Values of a host input, `batch * 3 * image_size^2`.
    pub fn input_len(&self) -> usize {
        self.batch() * 3 * self.image_size() * self.image_size()
    }
    /// Bytes of the logits, `batch * classes * 4` (`* 2` in f16).
    pub fn logits_bytes(&self) -> u64 {
        let size = if self.inner.is_f16() { 2 } else { 4 };
        (self.batch() * self.classes() * size) as u64
    }
    /// Peak activation memory of a forward (the planned arena).
    pub fn activation_bytes(&self) -> u64 {
        self.inner.activation_bytes()
    }

    /// The logits of the last forward recorded, `[batch, classes]` f32 (f16 for an
    /// [`Precision::F16`] engine) from byte 0
    /// (`BufferUsages::STORAGE | COPY_SRC`), for the application's own kernels or copies. The
    /// next forward of this engine overwrites them (commands run in recording order, so
    /// whatever is recorded in between reads this forward's).
    pub fn logits_buffer(&self) -> &wgpu::Buffer {
        self.inner.logits_buffer()
    }
}
