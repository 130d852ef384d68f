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
//! let image = vec![0.1f32; engine.input_len()]; // or preprocess::load_image(path)?
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

pub mod api;
pub mod error;
pub mod eval;
pub mod fuzzing;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod preprocess;
pub mod reference;
pub mod rng;
pub mod tome;

pub use error::{Error, Result};

pub use api::{Engine, EngineBuilder, Input, Logits, PendingLogits, Precision};
pub use gpu::{AdapterChoice, PipelineCache};
pub use kernels::preprocess::Preprocessor;
pub use model::session::Model;
pub use preprocess::{imagenet_class, load_image};
pub use tome::Schedule;
/// The wgpu this crate is built against, so applications can name the same types.
pub use wgpu;
pub mod bench;
pub mod cli;
