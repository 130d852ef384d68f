//! The blocking host path every tool shares: a forward of host images read back with its
//! trace, timed forwards and per-kernel profiles, and the counts of what was asked of the
//! device. The command line, `eval` and `bench` use these like any application.

use std::sync::atomic::Ordering::Relaxed;

use super::{Engine, Input};
use crate::error::{Error, Result};
use crate::gpu::{read_buffer, Gpu};
use crate::runtime::Source;

/// One merge of a traced forward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeTrace {
    /// Stage index, 0-based.
    pub stage: usize,
    /// Execution index within the stage, 0-based.
    pub exec: usize,
    /// `[batch * n_in]`: incoming position -> outgoing slot.
    pub slots: Vec<u32>,
    /// `[batch * n_out]`: the outgoing tokens' masses.
    pub masses: Vec<f32>,
    /// Tokens per image entering the merge.
    pub n_in: usize,
    /// Tokens per image after it.
    pub n_out: usize,
}

/// Per-merge and per-stage maps read back with `--trace`.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Every merge of the forward, in run order.
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
            readback: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        })
    }
}

/// What [`Engine::forward`] returns: the logits, and the trace when one was asked for.
pub struct ForwardOutput {
    /// `[batch, classes]`
    pub logits: Vec<f32>,
    /// The merges and stage maps, when the engine was built with tracing on.
    pub trace: Option<Trace>,
}

/// Where one forward's time goes: seconds per kernel family, and per kernel (shader) with the
/// number of dispatches, slowest first.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Seconds per kernel family, in [`crate::kernels::Family::ALL`] order.
    pub families: Vec<(crate::kernels::Family, f64)>,
    /// Per kernel: `(shader name, seconds, dispatches)`, slowest first.
    pub kernels: Vec<(&'static str, f64, usize)>,
}

/// Counts of what an engine has asked of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Command-buffer submissions to the queue.
    pub submissions: u64,
    /// Buffer mappings for reading results back (a traced forward maps its trace buffers too).
    pub readbacks: u64,
}

impl Engine {
    /// A blocking forward of host images (`[batch, 3, H, W]` f32, normalised): logits as one
    /// vector and, for an engine built with [`super::EngineBuilder::trace`], every merge's
    /// slot map and masses and every stage's unmerge map. One submission, one wait.
    pub fn forward(&self, images: &[f32]) -> Result<ForwardOutput> {
        // Trace buffers are one per engine: a traced forward runs alone.
        let _alone = self.trace_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.trace_awaited.load(Relaxed) {
            return Err(Error::Busy {
                what: "an awaited traced forward of this engine".into(),
            });
        }
        let logits = self.run(Input::Host(images))?.into_vec();
        let traced = !self.inner.trace_buffers().is_empty();
        let trace = if traced {
            Some(self.read_trace()?)
        } else {
            None
        };
        Ok(ForwardOutput { logits, trace })
    }

    /// Write a batch of host images into the engine's input buffer, for
    /// [`Engine::time_forward`] (through the queue: not a per-forward path).
    pub fn set_input(&self, images: &[f32]) -> Result<()> {
        self.check_host(images)?;
        let bytes = crate::runtime::forward::encode_elems(images, self.inner.is_f16());
        self.queue()
            .write_buffer(self.inner.input_buffer(), 0, &bytes);
        Ok(())
    }

    /// One forward of the images in the input buffer ([`Engine::set_input`]), timed: GPU time
    /// between timestamps at the start and end of the whole forward where the device has
    /// `TIMESTAMP_QUERY`, and wall time from submission to idle.
    pub fn time_forward(&self) -> Result<Timing> {
        self.gpu()
            .scoped("a timed forward", || self.run_timed_forward())
    }

    fn run_timed_forward(&self) -> Result<Timing> {
        let gpu = self.gpu();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timed forward"),
            });
        match &self.timer {
            Some(t) => {
                self.inner
                    .encode_timed(&mut enc, Source::Input, &t.queries)?;
                enc.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
                enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
            }
            None => self.inner.encode_forward(&mut enc, Source::Input)?,
        }
        let start = std::time::Instant::now();
        self.submit(enc)?;
        gpu.wait()?;
        let wall = start.elapsed().as_secs_f64();
        let gpu_time = match &self.timer {
            Some(t) => {
                let ticks: Vec<u64> = self.read(&t.readback)?;
                let period = gpu.queue.get_timestamp_period() as f64;
                Some(ticks[1].saturating_sub(ticks[0]) as f64 * period * 1e-9)
            }
            None => None,
        };
        Ok(Timing {
            wall,
            gpu: gpu_time,
        })
    }

    /// Time every dispatch of one forward (first micro-batch, images from the input buffer) in
    /// its own timestamped pass and sum per kernel family. Each pass adds the driver's
    /// per-pass overhead, so the families' total exceeds a normal forward; the split is what
    /// this is for. Needs `TIMESTAMP_QUERY`.
    pub fn profile(&self) -> Result<Profile> {
        self.gpu().scoped("profiling", || self.run_profile())
    }

    fn run_profile(&self) -> Result<Profile> {
        let gpu = self.gpu();
        if !gpu.has_timestamps() {
            return Err(gpu.missing_feature("TIMESTAMP_QUERY", "profiling per kernel needs it"));
        }
        let count = (2 * self.inner.dispatch_count()) as u32;
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = 8 * count as u64;
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        self.inner.encode_profile(&mut enc, &queries);
        enc.resolve_query_set(&queries, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        self.submit(enc)?;
        let ticks: Vec<u64> = self.read(&readback)?;
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut profile = Profile {
            families: crate::kernels::Family::ALL
                .iter()
                .map(|&f| (f, 0.0))
                .collect(),
            kernels: Vec::new(),
        };
        for (i, (family, name)) in self.inner.dispatch_names().enumerate() {
            let t = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            if let Some(e) = profile.families.iter_mut().find(|(f, _)| *f == family) {
                e.1 += t;
            }
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

    /// Submissions and buffer mappings this engine has made (forwards, timed forwards,
    /// profiles; a traced forward maps its trace buffers too).
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            submissions: self.submissions.load(Relaxed),
            readbacks: self.readbacks.load(Relaxed),
        }
    }

    /// Finish `enc` and submit it, with the device's validation and out-of-memory errors
    /// returned (an input of another device or a destroyed one is reported here, not left to
    /// the device's uncaptured-error handler), wgpu's own panic on a resource of another wgpu
    /// `Instance` caught, and a destroyed or lost device as [`Error::DeviceLost`].
    pub(super) fn submit(&self, enc: wgpu::CommandEncoder) -> Result<()> {
        let during = "submitting the forward";
        #[cfg(not(target_arch = "wasm32"))]
        let (oom, validation) = (
            self.device()
                .push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            self.device()
                .push_error_scope(wgpu::ErrorFilter::Validation),
        );
        let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.queue().submit(Some(enc.finish()));
        }));
        #[cfg(not(target_arch = "wasm32"))]
        let error = {
            let invalid = pollster::block_on(validation.pop());
            pollster::block_on(oom.pop()).or(invalid)
        };
        #[cfg(target_arch = "wasm32")]
        let error: Option<wgpu::Error> = None;
        self.gpu().check_alive(during)?;
        if submitted.is_err() {
            return Err(Error::Gpu {
                during: during.into(),
                why: "wgpu panicked on the commands: an input of another wgpu Instance (another \
                      engine's own device, say)? Pass buffers and textures of this engine's device"
                    .into(),
            });
        }
        if let Some(e) = error {
            return Err(Error::Gpu {
                during: during.into(),
                why: crate::gpu::context::error_text(&e),
            });
        }
        self.submissions.fetch_add(1, Relaxed);
        Ok(())
    }

    fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer) -> Result<Vec<T>> {
        self.readbacks.fetch_add(1, Relaxed);
        read_buffer(self.gpu(), buf)
    }

    fn read_trace(&self) -> Result<Trace> {
        let words = self
            .inner
            .trace_buffers()
            .iter()
            .map(|buf| self.read(buf))
            .collect::<Result<Vec<_>>>()?;
        self.assemble_trace(words)
    }

    /// [`Engine::forward`] awaited (a traced forward in a browser): logits and, for an engine
    /// built with [`super::EngineBuilder::trace`], the trace. Natively something must poll the
    /// device meanwhile, as for [`Engine::run_async`]. One traced forward at a time, as they
    /// share buffers: this one, or a blocking [`Engine::forward`], while it is in flight is
    /// refused ([`Error::Busy`]) rather than waited for (a wait could deadlock the thread that
    /// drives this future).
    pub async fn forward_traced_async<'a>(
        &self,
        input: impl Into<Input<'a>>,
    ) -> Result<ForwardOutput> {
        let _alone = self.claim_trace_buffers()?;
        let logits = self.run_async(input).await?.into_vec();
        let trace = if self.inner.trace_buffers().is_empty() {
            None
        } else {
            let mut words = Vec::new();
            for buf in self.inner.trace_buffers() {
                self.readbacks.fetch_add(1, Relaxed);
                words.push(crate::gpu::context::read_buffer_async(buf).await?);
            }
            Some(self.assemble_trace(words)?)
        };
        Ok(ForwardOutput { logits, trace })
    }

    /// Mark the trace buffers as used by an awaited forward until the guard drops (also when
    /// the future is dropped unfinished). Never waits: a traced forward in flight is `Busy`.
    fn claim_trace_buffers(&self) -> Result<impl Drop + '_> {
        struct Claim<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.store(false, Relaxed);
            }
        }
        let busy = || Error::Busy {
            what: "a traced forward of this engine".into(),
        };
        let _lock = self.trace_lock.try_lock().map_err(|_| busy())?;
        if self.trace_awaited.swap(true, Relaxed) {
            return Err(busy());
        }
        Ok(Claim(&self.trace_awaited))
    }

    /// The trace from the words of the trace buffers, in the engine's order.
    fn assemble_trace(&self, words: Vec<Vec<u32>>) -> Result<Trace> {
        let batch = self.batch();
        let mut bufs = words.into_iter();
        let mut next_u32 = |keep: usize| -> Result<Vec<u32>> {
            let mut v = bufs.next().ok_or_else(|| Error::Gpu {
                during: "trace".into(),
                why: "missing readback buffer".into(),
            })?;
            v.truncate(keep);
            Ok(v)
        };
        let layout = self.inner.trace_tensors();
        let mut trace = Trace::default();
        for &(stage, exec, _, _, n_in, n_out) in &layout.merges {
            let slots = next_u32(batch * n_in)?;
            let masses = next_u32(batch * n_out)?
                .into_iter()
                .map(f32::from_bits)
                .collect();
            trace.merges.push(MergeTrace {
                stage,
                exec,
                slots,
                masses,
                n_in,
                n_out,
            });
        }
        for &(stage, _, n_grid) in &layout.stage_maps {
            trace
                .stage_maps
                .push((stage, next_u32(batch * n_grid)?, n_grid));
        }
        Ok(trace)
    }
}
