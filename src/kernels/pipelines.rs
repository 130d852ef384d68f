//! Pipelines: a kernel with its substitutions ([`KernelKey`], the pipeline cache key) and the
//! cache of compiled pipelines shared by every plan on one device.
//!
//! A kernel's text ([`Kernel::source`]) takes at most these one-line substitutions, all part of
//! the key:
//! - the attention head size: a file may declare `const HEAD_DIM: u32 = 32u;` and a plan that
//!   needs another size gets that line rewritten;
//! - the storage element type: a file whose first declaration is `alias elem = f32;` keeps its
//!   activations and weights in `array<elem>` / `array<vec4<elem>>`, converts every load to f32
//!   and every store back to `elem`. The f16 variant rewrites that line to
//!   `enable f16; alias elem = f16;` (half the bytes moved and stored; arithmetic, accumulation
//!   and workgroup memory stay f32). Token masses, LayerNorm statistics, matching scores and
//!   indices are always 32-bit.
//! - the subgroup width: the `*_sg` kernels (those using subgroup broadcasts) declare
//!   `const SG: u32 = 8u;` and derive their workgroup size, tile shape and every broadcast lane
//!   from it; a plan for an adapter whose smallest subgroup is another power of two in 4..=64
//!   gets that line rewritten ([`crate::kernels::program::subgroup_width`]). A workgroup of SG
//!   lanes with SG at most the adapter's minimum subgroup size lies within one subgroup whatever
//!   size the compiler picks, so broadcasts from lanes below SG are always defined.
//!
//! A generated kernel's tile height (`rows`) is a parameter of its generator, not a
//! substitution: the key names it, and [`Kernel::source`] makes the text once per height.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::catalogue::{Kernel, ELEM_LINE, ELEM_LINE_F16, HEAD_DIM_LINE, SG_LINE, SG_WIDTHS};

/// A kernel with its substitutions: the pipeline cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelKey {
    /// The kernel.
    pub kernel: Kernel,
    /// Head size for kernels that declare `HEAD_DIM`; 0 otherwise.
    pub head_dim: u32,
    /// Activations and weights stored as f16 (only for kernels with [`ELEM_LINE`]).
    pub f16: bool,
    /// Subgroup width for kernels that declare `SG` ([`SG_LINE`]); 0 otherwise.
    pub sg: u32,
    /// Tile height of a generated kernel that has one ([`Kernel::tile_rows`]); 0 otherwise.
    pub rows: u32,
}

impl KernelKey {
    /// `kernel` with no substitution (f32 storage, no head size, no subgroup width, its
    /// default tile height).
    pub fn plain(kernel: Kernel) -> Self {
        KernelKey {
            kernel,
            head_dim: 0,
            f16: false,
            sg: 0,
            rows: 0,
        }
    }
    /// `kernel` with its `HEAD_DIM` set to `head_dim` when the kernel declares it (ignored
    /// otherwise).
    pub fn with_head_dim(kernel: Kernel, head_dim: usize) -> Self {
        KernelKey {
            head_dim: if kernel.has_head_dim() {
                head_dim as u32
            } else {
                0
            },
            ..KernelKey::plain(kernel)
        }
    }
    /// A `*_sg` kernel for subgroups of `width` lanes (one of [`SG_WIDTHS`]).
    pub fn with_sg(kernel: Kernel, width: u32) -> Self {
        debug_assert!(SG_WIDTHS.contains(&width), "subgroup width {width}");
        KernelKey {
            sg: if kernel.has_sg() { width } else { 0 },
            ..KernelKey::plain(kernel)
        }
    }
    /// This key with tiles of `rows` rows where the kernel has a tile height (one of its
    /// [`Kernel::tile_rows`]; ignored otherwise).
    pub fn with_rows(self, rows: u32) -> Self {
        debug_assert!(
            rows == 0
                || self.kernel.tile_rows().is_empty()
                || self.kernel.tile_rows().contains(&rows),
            "{} has no {rows}-row tile",
            self.kernel.name()
        );
        KernelKey {
            rows: if self.kernel.tile_rows().is_empty() {
                0
            } else {
                rows
            },
            ..self
        }
    }
    /// This key with f16 storage when `on` and the kernel has an element type to substitute.
    pub fn with_f16(self, on: bool) -> Self {
        KernelKey {
            f16: on && self.kernel.has_elem(),
            ..self
        }
    }
    /// The WGSL text after substitution.
    pub fn wgsl(&self) -> String {
        let mut src = self.kernel.source(self.rows).to_string();
        if self.head_dim != 0 {
            src = src.replace(
                HEAD_DIM_LINE,
                &format!("const HEAD_DIM: u32 = {}u;", self.head_dim),
            );
        }
        if self.sg != 0 {
            src = src.replace(SG_LINE, &format!("const SG: u32 = {}u;", self.sg));
        }
        if self.f16 {
            src = src.replace(ELEM_LINE, ELEM_LINE_F16);
        }
        src
    }
}

/// `name:head_dim[:sgW][:rR][:f16]`, the pipeline's label (e.g. `linear_sg:0:sg8:r40`).
impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kernel.name(), self.head_dim)?;
        if self.sg != 0 {
            write!(f, ":sg{}", self.sg)?;
        }
        if self.rows != 0 {
            write!(f, ":r{}", self.rows)?;
        }
        if self.f16 {
            f.write_str(":f16")?;
        }
        Ok(())
    }
}

/// Compiled pipelines, shared by every plan built on one device.
///
/// By default shader modules keep wgpu's runtime checks (every array index clamped or
/// checked). [`PipelineCache::trusted`] builds them without: the kernels' index arithmetic is
/// what the kernel tests exercise, on ragged shapes and with every output poisoned, and each of
/// them runs both ways there with bitwise-identical results required.
#[derive(Clone, Default)]
pub struct PipelineCache {
    map: Arc<Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>>,
    trusted: bool,
}

/// Whether pipelines on `backend` have their workgroup memory zero-filled before the kernel
/// runs, as WebGPU requires by default: everywhere but on GL. Every kernel writes the
/// workgroup memory it reads first (tiles, chunks, ranks and slots all stored before the
/// barrier that publishes them), so the fill is dead work; on GL, naga writes it as one array
/// constructor per variable (`uint[1020](0u, ...)`), which Mesa's GLSL compiler takes over a
/// minute for: `tome_merge_fused` compiled in 70 s with it and 0.55 s without, `tome_match` in
/// 13.8 s and 0.37 s (llvmpipe, Mesa 22.3.6, Intel Xeon with AVX-512), and CI's GL pass ran
/// out of time in it. Elsewhere the fill costs nothing to compile and stays as a guard.
pub fn zero_fills_workgroup_memory(backend: wgpu::Backend) -> bool {
    backend != wgpu::Backend::Gl
}

impl PipelineCache {
    /// A cache whose modules are created without runtime bounds checks
    /// (`Device::create_shader_module_trusted` with `ShaderRuntimeChecks::unchecked()`): faster
    /// kernels, and the project's promise that its shaders index only within their bindings for
    /// every shape a plan accepts. Only this crate's own WGSL ever goes through a cache.
    pub fn trusted() -> Self {
        PipelineCache {
            map: Default::default(),
            trusted: true,
        }
    }

    /// Whether modules are built without runtime checks.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// The pipeline for `key`, compiled on `device` the first time and cloned from the cache after.
    pub fn get(&self, device: &wgpu::Device, key: KernelKey) -> wgpu::ComputePipeline {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let label = key.to_string();
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(key.wgsl().into()),
                };
                let module = if self.trusted {
                    // SAFETY: the source is one of this crate's kernels (never user input), whose
                    // indexing stays within the bindings for every shape the planner emits;
                    // tests/kernels.rs runs each kernel with and without checks on ragged
                    // shapes and requires bitwise-identical outputs.
                    unsafe {
                        device.create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    }
                } else {
                    device.create_shader_module(desc)
                };
                #[cfg(not(target_arch = "wasm32"))]
                let started = std::time::Instant::now();
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        zero_initialize_workgroup_memory: zero_fills_workgroup_memory(
                            device.adapter_info().backend,
                        ),
                        ..Default::default()
                    },
                    cache: None,
                });
                // Software drivers compile at pipeline creation: say what took how long.
                #[cfg(not(target_arch = "wasm32"))]
                log::debug!("pipeline {label}: {:.0?}", started.elapsed());
                pipeline
            })
            .clone()
    }
    /// Number of compiled pipelines.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Whether nothing has been compiled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
