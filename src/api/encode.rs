//! Recording and running forwards: [`Engine::encode_forward`] into the application's encoder,
//! [`Engine::encode_readback`], and the helpers that submit ([`Engine::forward_async`],
//! [`Engine::run`], [`Engine::run_async`]).

use super::engine::MAX_POOLED_READBACKS;
use super::{Engine, Input, Logits, PendingLogits};
use crate::error::{Error, Result};
use crate::runtime::Source;

impl Engine {
    /// Record a forward of `input` into the application's `encoder`: preprocessing (for
    /// textures), the forward's passes, logits left in [`Engine::logits_buffer`]. Nothing is
    /// submitted and nothing goes through the queue. Errors (a batch of the wrong size, a
    /// texture the kernel cannot read, a buffer too small) are found before anything is
    /// recorded.
    ///
    /// ```
    /// # fn main() -> sret_tome::Result<()> {
    /// # let engine = sret_tome::Engine::builder().build()?;
    /// # let (device, queue) = (engine.device().clone(), engine.queue().clone());
    /// // A frame the application rendered (here: just created), any size, RGBA8 or BGRA8.
    /// let frame = device.create_texture(&wgpu::TextureDescriptor {
    ///     label: Some("frame"),
    ///     size: wgpu::Extent3d { width: 320, height: 240, depth_or_array_layers: 1 },
    ///     mip_level_count: 1,
    ///     sample_count: 1,
    ///     dimension: wgpu::TextureDimension::D2,
    ///     format: wgpu::TextureFormat::Bgra8UnormSrgb,
    ///     usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
    ///     view_formats: &[],
    /// });
    /// let mut encoder = device.create_command_encoder(&Default::default());
    /// // ... the application's render passes into `frame` ...
    /// engine.encode_forward(&mut encoder, &frame)?;
    /// let pending = engine.encode_readback(&mut encoder);
    /// queue.submit([encoder.finish()]);
    /// let logits = pending.wait()?; // or .await, .on_ready(..), .try_take()
    /// assert_eq!(logits.image(0).len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn encode_forward<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: impl Into<Input<'a>>,
    ) -> Result<()> {
        self.encode_checked(encoder, input.into()).map(|_| ())
    }

    /// [`Engine::encode_forward`], returning the forward's stamp (see
    /// [`PlannedForward::stamp_buffer`](crate::runtime::PlannedForward::stamp_buffer)).
    fn encode_checked(&self, encoder: &mut wgpu::CommandEncoder, input: Input<'_>) -> Result<u32> {
        // What checks cannot see (say, a texture of another device) is a validation error of
        // the device: returned here rather than left to its uncaptured-error handler.
        //
        // On wasm32 a scope can only be awaited: there errors reach the caller's scopes (those
        // of [`Engine::run_async`]) or the device's uncaptured-error handler.
        #[cfg(target_arch = "wasm32")]
        {
            self.record(encoder, input)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self
                .device()
                .push_error_scope(wgpu::ErrorFilter::Validation);
            let recorded = self.record(encoder, input);
            let error = pollster::block_on(scope.pop());
            let seq = recorded?;
            match error {
                Some(e) => Err(Error::Gpu {
                    during: "recording the forward".into(),
                    why: crate::gpu::context::error_text(&e),
                }),
                None => Ok(seq),
            }
        }
    }

    /// Record a forward (after checking that the device is alive); its stamp. wgpu-core
    /// panics on a resource of another wgpu `Instance` (another engine's own device): caught,
    /// and an error.
    fn record(&self, encoder: &mut wgpu::CommandEncoder, input: Input<'_>) -> Result<u32> {
        self.gpu().check_alive("recording the forward")?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.record_alive(encoder, input)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Gpu {
                during: "recording the forward".into(),
                why: "wgpu panicked on the input: a buffer or texture of another wgpu Instance \
                      (another engine's own device, say)? Pass one of this engine's device"
                    .into(),
            })
        })
    }

    fn record_alive(&self, encoder: &mut wgpu::CommandEncoder, input: Input<'_>) -> Result<u32> {
        let staged;
        let source = match input {
            Input::Host(values) => {
                self.check_host(values)?;
                staged = self.stage_host(encoder, values)?;
                Source::Buffer(&staged, 0)
            }
            Input::Buffer { buffer, offset } => Source::Buffer(buffer, offset),
            Input::Texture(t) => self.preprocess(encoder, std::slice::from_ref(&t))?,
            Input::Textures(ts) => self.preprocess(encoder, ts)?,
        };
        self.inner.encode_stamped(encoder, source)
    }

    /// Copy host images into a pooled staging buffer (mapped for writing while pooled) and
    /// have the submission of `encoder` map it again and return it to the pool once its copy
    /// has run. Concurrent forwards each take their own buffer.
    fn stage_host(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        values: &[f32],
    ) -> Result<wgpu::Buffer> {
        let encoded = crate::runtime::forward::encode_elems(values, self.inner.is_f16());
        let bytes: &[u8] = &encoded;
        let buffer = self
            .upload_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| {
                self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("host input"),
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                })
            });
        buffer
            .get_mapped_range_mut(..)
            .map_err(|e| {
                self.gpu()
                    .check_alive("staging host images")
                    .err()
                    .unwrap_or_else(|| Error::Gpu {
                        during: "staging host images".into(),
                        why: e.to_string(),
                    })
            })?
            .copy_from_slice(bytes);
        buffer.unmap();
        let pool = self.upload_pool.clone();
        let remapped = buffer.clone();
        encoder.map_buffer_on_submit(&buffer, wgpu::MapMode::Write, .., move |r| {
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_ok() && pool.len() < MAX_POOLED_READBACKS {
                pool.push(remapped);
            }
        });
        Ok(buffer)
    }

    pub(crate) fn check_host(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.input_len() {
            return Err(Error::arg(
                "images",
                format!("{} values", values.len()),
                format!(
                    "expected {} ([{}, 3, {s}, {s}])",
                    self.input_len(),
                    self.batch(),
                    s = self.image_size()
                ),
            ));
        }
        Ok(())
    }

    fn preprocess(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        textures: &[&wgpu::Texture],
    ) -> Result<Source<'static>> {
        if textures.len() != self.batch() {
            return Err(Error::arg(
                "textures",
                format!("{} textures", textures.len()),
                format!("this engine's batch is {}", self.batch()),
            ));
        }
        let transform = crate::preprocess::EvalTransform::for_model(self.inner.config());
        if transform != crate::preprocess::EvalTransform::IMAGENET {
            return Err(Error::arg(
                "textures",
                self.model_name,
                format!(
                    "the GPU preprocessing is the ImageNet transform (256, 224, ImageNet mean and std) and this model takes {}x{} images cropped from {} with mean {:?}: pass host or buffer input (io::load_image_with)",
                    transform.crop, transform.crop, transform.resize, transform.mean
                ),
            ));
        }
        if self.image_size() != crate::kernels::preprocess::OUT_SIDE as usize {
            return Err(Error::arg(
                "textures",
                self.model_name,
                format!(
                    "the GPU preprocessing makes {s}x{s} images and this model takes {}x{}: pass host or buffer input",
                    self.image_size(),
                    self.image_size(),
                    s = crate::kernels::preprocess::OUT_SIDE
                ),
            ));
        }
        let (dst, source) = self.inner.preprocess_target();
        self.preprocessor.encode(encoder, textures, dst, 0)?;
        Ok(source)
    }

    /// Record a copy of the logits into a mappable buffer, and their mapping once `encoder` is
    /// submitted (`CommandEncoder::map_buffer_on_submit`). Record it after the forward whose
    /// logits it should read. The buffer comes from a small pool and returns to it when the
    /// logits have been read.
    ///
    /// The logits are those of the last forward recorded, or an error: the forward's stamp is
    /// copied beside them, and logits whose stamp is not that forward's (its commands did not
    /// run: a validation error, an encoder never submitted) are [`Error::NotRun`], never an
    /// earlier forward's logits.
    pub fn encode_readback(&self, encoder: &mut wgpu::CommandEncoder) -> PendingLogits {
        self.encode_readback_of(encoder, self.inner.last_stamp())
    }

    /// [`Engine::encode_readback`] of the forward stamped `seq`.
    fn encode_readback_of(&self, encoder: &mut wgpu::CommandEncoder, seq: u32) -> PendingLogits {
        use crate::runtime::forward::{stamp_matches, STAMP_BYTES};
        let bytes = self.logits_bytes();
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let buffer = self
            .readback_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| {
                self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("logits readback"),
                    size: bytes + STAMP_BYTES,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
        encoder.copy_buffer_to_buffer(self.logits_buffer(), 0, &buffer, 0, bytes);
        encoder.copy_buffer_to_buffer(self.inner.stamp_buffer(), 0, &buffer, bytes, STAMP_BYTES);
        let (pending, done) = PendingLogits::waiting(self.device());
        let (batch, classes) = (self.batch(), self.classes());
        let f16 = self.inner.is_f16();
        let pool = self.readback_pool.clone();
        let mapped = buffer.clone();
        encoder.map_buffer_on_submit(&buffer, wgpu::MapMode::Read, .., move |r| {
            // The engine never destroys its buffers, so a mapping that fails means the device
            // was destroyed or lost (a borrowed device keeps its own lost-device callback).
            let mut ran = true;
            let read = r
                .map_err(crate::gpu::context::lost_in_readback)
                .and_then(|()| {
                    let view = mapped.get_mapped_range(..).map_err(|e| Error::Gpu {
                        during: "readback".into(),
                        why: e.to_string(),
                    })?;
                    let split = bytes as usize;
                    ran = stamp_matches(&view[split..], seq);
                    let mut values = crate::runtime::forward::decode_elems(&view[..split], f16);
                    values.truncate(batch * classes);
                    Ok(values)
                });
            if read.is_ok() {
                mapped.unmap();
                let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < MAX_POOLED_READBACKS {
                    pool.push(mapped);
                }
            }
            let read = read.and_then(|values| {
                if ran {
                    Ok(values)
                } else {
                    Err(Error::NotRun {
                        why: "the logits in the readback are an earlier forward's (a validation \
                              error of its command buffer: an input of another device or a \
                              destroyed one; or the encoder of the forward was not submitted \
                              before the readback's)"
                            .into(),
                    })
                }
            });
            done.complete(read.map(|values| Logits::new(values, batch, classes)));
        });
        pending
    }

    /// Submit a forward of `input` with its readback, without waiting: one command buffer, one
    /// submission. Host data is staged in a buffer of its own, so concurrent calls (the engine
    /// is `Sync`) never see each other's images. A validation error of the commands (an input
    /// of another device, a destroyed one) is returned here.
    pub fn forward_async<'a>(&self, input: impl Into<Input<'a>>) -> Result<PendingLogits> {
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sret-tome forward"),
            });
        let seq = self.encode_checked(&mut encoder, input.into())?;
        let pending = self.encode_readback_of(&mut encoder, seq);
        self.submit(encoder)?;
        Ok(pending)
    }

    /// Run a forward and wait for its logits (a blocking helper for simple programs).
    pub fn run<'a>(&self, input: impl Into<Input<'a>>) -> Result<Logits> {
        self.forward_async(input)?.wait()
    }

    /// A forward of `input` and its logits, awaited: validation errors of the recording are
    /// awaited from an error scope, the forward is submitted, and the logits arrive when their
    /// mapping completes. Nothing blocks, so this is the forward for wasm32 in a browser (whose
    /// event loop drives the mapping); natively something must poll the device meanwhile
    /// (`device.poll(PollType::Poll)` on another thread, or [`Engine::run`]).
    pub async fn run_async<'a>(&self, input: impl Into<Input<'a>>) -> Result<Logits> {
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sret-tome forward"),
            });
        let validation = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let recorded = self.record(&mut encoder, input.into());
        let errors = [oom.pop().await, validation.pop().await];
        let seq = recorded?;
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Gpu {
                during: "recording the forward".into(),
                why: crate::gpu::context::error_text(&e),
            });
        }
        let pending = self.encode_readback_of(&mut encoder, seq);
        self.submit(encoder)?;
        pending.await
    }
}
