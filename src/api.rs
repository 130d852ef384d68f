//! The library's front door: an [`Engine`] built by an [`EngineBuilder`], fed an [`Input`]
//! (host slice, GPU buffer or textures preprocessed on the GPU), leaving [`Logits`] in a GPU
//! buffer or reading them back asynchronously ([`PendingLogits`]).
//!
//! An engine is a forward planned once for a model, a merging schedule and a batch size: its
//! pipelines, buffers and bind groups are made at [`EngineBuilder::build`]; a forward records a
//! few copies and compute passes and allocates nothing but the optional readback.
//!
//! # Living inside a wgpu application
//!
//! * **Shared device.** [`EngineBuilder::device`] takes the application's `Device` and `Queue`;
//!   the engine creates no `Instance`, adapter or device then, and uses only the features and
//!   limits the device was created with (a batch whose tensors would pass the device's
//!   storage-binding limit runs as several micro-batches). Several engines (models, schedules,
//!   batch sizes) live on one device side by side; give them one [`PipelineCache`](crate::PipelineCache) to compile
//!   each kernel once. There is no global state.
//! * **Own command stream.** [`Engine::encode_forward`] records the forward into the
//!   application's `CommandEncoder`, next to its own passes. In that mode the engine never
//!   submits and never writes through the queue: host data is staged in a mappable buffer
//!   from a small pool (the submission that uses it maps it again for the next forward, so
//!   steady-state forwards allocate nothing), preprocessing tables are made once per image
//!   size. Recording is ordered like any other command, so
//!   several forwards (of one engine or several) may go into one encoder, each followed by what
//!   consumes its logits.
//! * **GPU-resident data.** An input can be a `wgpu::Buffer` of normalised f32 or textures
//!   (RGBA8/BGRA8, linear or sRGB, any size) that a WGSL kernel resizes, crops and normalises
//!   exactly like the CPU path ([`crate::preprocess`]). The logits stay in
//!   [`Engine::logits_buffer`] (`STORAGE | COPY_SRC`) for the application's own kernels, or are
//!   copied out with [`Engine::encode_readback`] and delivered by `map_async` to a callback or a
//!   future; the library never blocks except in the helpers that say so ([`Engine::run`],
//!   [`PendingLogits::wait`]).
//!
//! wgpu delivers mapping callbacks from `Device::poll` (and `Queue::submit`): an application
//! that submits every frame or polls its device with `PollType::Poll` pumps them. Awaiting a
//! [`PendingLogits`] (`pollster::block_on(pending)`) while nothing polls the device waits
//! forever; [`PendingLogits::wait`] polls it itself.
//!
//! # What is checked, and what cannot be
//!
//! Every limit the planned forward needs is compared with `device.limits()` before anything is
//! made ([`crate::Error::DeviceLimit`] names the limit, the value needed and the value there);
//! a feature a mode needs and the device lacks is [`crate::Error::MissingFeature`], worded for
//! the adapter or for the application's device.
//!
//! **Right logits or an error.** Every forward writes a stamp (its sequence number) after its
//! logits, and every readback copies it beside them: logits whose stamp is not their forward's
//! (its commands did not run: a validation error of the command buffer, an encoder never
//! submitted) are [`crate::Error::NotRun`], never an earlier forward's. [`Engine::run`],
//! [`Engine::forward_async`] and [`Engine::run_async`] capture the device's errors around their
//! own submission, so an input buffer of another device, or a destroyed buffer or texture, is
//! an [`crate::Error::Gpu`] there; recorded into the application's encoder
//! ([`Engine::encode_forward`]) it is reported by wgpu when the application submits, and the
//! readback is `NotRun`. A texture of another device of the same `wgpu::Instance` is refused
//! when its bind group is made; on a buffer or texture of another `Instance` (another engine's
//! own device) wgpu-core panics, which the engine catches and returns as an error (the panic
//! message is still printed). wgpu gives no way to ask which device a buffer belongs to, and a
//! buffer of another `Instance` can carry the id of one of this device's buffers, so pass
//! buffers and textures of the engine's device.
//!
//! **Device loss.** After `device.destroy()` or a lost device, every call (building, each
//! forward path, a texture of a new size, a readback) returns [`crate::Error::DeviceLost`],
//! on the engine's own device and on an application's alike (a request to map a small buffer
//! of the engine's fails at once on a lost device; nothing is created per forward for it).
//!
//! **Kernels that check themselves.** On an adapter, driver and precision not seen before, the
//! non-portable kernel variants the engine would run are compared with the portable kernels
//! on the device ([`validate`]); one that disagrees does not run, with a warning, and
//! [`Engine::kernels`] says so.
//!
//! # Weights
//!
//! The published SReT checkpoints (`SReT_T_distill.pth` and its siblings) are released by the
//! SReT authors with their code (the `szq0214/SReT` repository on GitHub); DeiT's come with
//! DeiT and timm, PiT's with NAVER's PiT. [`EngineBuilder::weights`] reads them as published.
//! Without weights the engine runs deterministic synthetic ones (said with `log::warn!`): the
//! numbers are exact and merging behaves, but the classes are meaningless.
//!
//! # Merge decisions and kernel variants
//!
//! Which kernel variant runs is chosen per adapter (subgroup width, features). The variants
//! compute the same function in a different order, so their f32 results differ by rounding
//! (about 1e-7 relative). Where two candidate merges score equally up to that rounding (a
//! near-tie, < 1e-5 apart), variants may take different decisions, and the merged logits then
//! differ by more (2e-3 to 9e-3 relative in our tests, same top-1). Unmerged forwards are not
//! affected. For bit-reproducible merged runs, run on the same adapter and driver with the same
//! variant choice.
//!
//! `Engine`, `EngineBuilder`, [`Preprocessor`](crate::Preprocessor) and [`PendingLogits`] are `Send + Sync` on native
//! targets (as wgpu's handles are; on the web wgpu's handles are not `Send`).

mod builder;
mod encode;
mod engine;
mod host;
mod logits;
mod pending;
// On wasm32 nothing measures (its measurements block): the measuring half is unused there.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
mod tune;
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub mod validate;

pub use builder::EngineBuilder;
pub use engine::{Engine, Input};
pub use host::{EngineStats, ForwardOutput, MergeTrace, Profile, Timer, Timing, Trace};
pub use logits::Logits;
pub use pending::PendingLogits;
pub use tune::{
    shape_tag, Autotune, ChoiceSource, KernelChoice, Measurements, Progress, TuneCache,
};
pub use validate::{Rejected, Validation};

/// Optional device features the engine uses when the device it is given has them enabled:
/// `SUBGROUP` (the subgroup kernels: several times faster on CPU adapters), `TIMESTAMP_QUERY`
/// (+ `_INSIDE_PASSES`, for timing) and `SHADER_F16`. None is required. An application creating
/// its device can request `adapter.features() & sret_tome::api::useful_features()`, or let
/// [`request_device`] do it.
pub fn useful_features() -> wgpu::Features {
    crate::gpu::context::wanted_features()
}

pub use crate::gpu::context::request_device;
