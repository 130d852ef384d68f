//! sret-tome: Sliced Recursive Transformers with Token Merging, planned once and run resident
//! on the GPU through wgpu.
//!
//! # As a library
//!
//! An [`Engine`] is one forward (model, merging schedule, batch size) planned once on a device:
//! the device of its own, or one a wgpu application already has. Its input is a host slice, a
//! GPU buffer, or textures that a WGSL kernel preprocesses on the GPU exactly like the CPU path
//! ([`preprocess`]); its logits stay in a GPU buffer, come back asynchronously, or through a
//! blocking helper. See [`api`] for the whole picture.
//!
//! ```
//! # fn main() -> sret_tome::Result<()> {
//! use sret_tome::{Engine, Input};
//!
//! // Synthetic weights here; `.weights("SReT_T_distill.pth")` for the published ones.
//! let engine = Engine::builder()
//!     .schedule("constant:10".parse()?)
//!     .build()?;
//! let image = vec![0.1f32; engine.input_len()]; // or sret_tome::load_image(path)?
//! let logits = engine.run(Input::Host(&image))?;
//! println!("class {}", logits.argmax(0));
//! # Ok(())
//! # }
//! ```
//!
//! In an application that owns a `wgpu::Device`, build with
//! `Engine::builder().device(&device, &queue)` and record the forward into the application's
//! own command encoder with [`Engine::encode_forward`]; the `examples/` directory has a headless
//! renderer that classifies its own frames without leaving the GPU, a throughput loop with
//! double-buffered inputs, and a 20-line image classifier.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cli` | yes | the `sret-tome` command line (`sret_tome::cli`), benchmarks and evaluation; turns on `images` and `pth` |
//! | `images` | with `cli` | decoding JPEG and PNG files: `sret_tome::load_image`, `io::load_image_with` |
//! | `pth` | with `cli` | reading PyTorch `.pth` checkpoints in [`EngineBuilder::weights`] (safetensors need no feature) |
//! | `counters` | no | wgpu's live object counters (`Device::get_internal_counters`), for tests |
//! | `fuzzing` | no | entry points of the fuzz targets; turns on `images`, `pth` and `counters` |
//!
//! A library build for an application: `default-features = false`, adding `images` and `pth`
//! where it reads image files or checkpoints. On wasm32 build with `--no-default-features`.
//!
//! # The first build on an adapter
//!
//! The first [`EngineBuilder::build`] of a plan on a new adapter measures the kernel variants
//! ([`api::Autotune::Measure`]: up to three rounds of an engine build and three forwards) and
//! checks the chosen non-portable variants against the portable kernels ([`api::validate`]),
//! then caches both in `autotune.tsv` ([`api::TuneCache::default_dir`]); both are logged at
//! `info` level as they run and handed to [`EngineBuilder::on_progress`]. On a CPU adapter
//! (Mesa llvmpipe on 2 shared AMD EPYC cores) that first build of `sret_t_distill` took 11 to
//! 16 s, the kernel check about 1 s of it, where a build that reads the cache takes 2 to 3 s
//! (`examples/first_build.rs` measures it). An application that cannot wait pins the variants:
//! `EngineBuilder::autotune(Autotune::Pin(..))`, `SRET_TOME_AUTOTUNE=subgroup` or `--kernels`
//! on the command line (pinned variants are still checked once per adapter unless
//! `EngineBuilder::validate_kernels(false)` or `SRET_TOME_VALIDATE=off`).

#![warn(missing_docs)]

// Layers, lowest first; a module uses only those above it in this list:
// error, rng -> model (leaf types) -> tome (schedules, trajectory, permutations) ->
// preprocess (the ImageNet transform) -> io (files) and reference (the CPU twin) ->
// gpu (device, recorder, pipeline cache) -> kernels -> runtime (planned forward) -> api;
// bench, eval and cli (the `cli` feature) use the public API like any application.
pub mod error;
pub mod rng;

pub mod os_limits;

pub mod model;
pub mod tome;

pub mod preprocess;

pub mod io;
pub mod reference;

pub mod gpu;
pub mod kernels;
pub mod runtime;

pub mod api;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod eval;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use error::{Error, Result};

pub use api::{Engine, EngineBuilder, Input, Logits, PendingLogits};
pub use gpu::AdapterChoice;
/// The `image` crate this crate decodes with ([`io::decode_rgb8`] returns its `RgbImage`).
#[cfg(feature = "images")]
pub use image;
#[cfg(feature = "images")]
pub use io::load_image;
pub use kernels::preprocess::Preprocessor;
pub use kernels::PipelineCache;
pub use model::{imagenet_class, Model, Precision};
pub use tome::Schedule;
/// The wgpu this crate is built against, so applications can name the same types.
pub use wgpu;
