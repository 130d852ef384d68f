//! A planned GPU program: a fixed list of dispatches over tensors whose sizes are known up front.
//!
//! The model planner declares tensors and dispatches in execution order; [`ProgramBuilder::finish`]
//! then computes every activation's live range, packs them into as few device buffers as it can
//! (a buffer is reused once its previous occupant is dead), creates the uniform blocks and bind
//! groups, and hands back a [`Program`] whose recording allocates nothing.

use super::arena::{pack_arena, ArenaLayout, Interval};
use super::catalogue::SG_WIDTHS;
use super::pipelines::{KernelKey, PipelineCache};
use super::uniform::KernelParams;
use super::variants::{KernelKind, Variant, Variants};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Index of a tensor declared on a [`ProgramBuilder`], valid in the [`Program`] it finishes into.
pub type TensorId = usize;

/// Which part of the network a dispatch belongs to, for per-family timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// The convolutional stem (and the DeiT/PiT patch convolution).
    Stem,
    /// Attention: qkv projection, fused sliced attention, output projection.
    Attention,
    /// The block MLPs and the `Non_proj` MLPs.
    Mlp,
    /// Bipartite matching: the metric, each A token's best match and the ranking.
    Matching,
    /// Output slots, the mass-weighted merge and the unmerge-map update.
    Merge,
    /// The convolutional pooling between stages.
    Pooling,
    /// Final norm, token pooling and the classifier heads.
    Head,
}

impl Family {
    /// Every family, in network order.
    pub const ALL: [Family; 7] = [
        Family::Stem,
        Family::Attention,
        Family::Mlp,
        Family::Matching,
        Family::Merge,
        Family::Pooling,
        Family::Head,
    ];
    /// Human-readable name, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Stem => "conv stem",
            Family::Attention => "attention",
            Family::Mlp => "mlp",
            Family::Matching => "matching",
            Family::Merge => "merge",
            Family::Pooling => "pooling",
            Family::Head => "head",
        }
    }
}

#[derive(Clone)]
enum Storage {
    /// An activation: lives in the arena between its first and last use.
    Arena,
    /// Data uploaded once when the program is made (weights, permutations).
    Constant(Vec<u8>),
    /// A buffer the caller hands to [`ProgramBuilder::finish`] (inputs, outputs).
    External,
    /// A small buffer of its own that kernels bind writable where their parameters say they
    /// write nothing there ([`ProgramBuilder::unwritten`]).
    Sink,
}

#[derive(Clone)]
struct TensorInfo {
    label: String,
    bytes: u64,
    storage: Storage,
    first: usize,
    last: usize,
    pinned: bool,
}

#[derive(Clone)]
struct StepDecl {
    key: KernelKey,
    family: Family,
    params: Vec<u32>,
    bindings: Vec<TensorId>,
    workgroups: [u32; 3],
}

/// Records a program without a device, so its memory plan can be read for any batch size;
/// [`ProgramBuilder::finish`] makes it real on a device.
#[derive(Clone)]
pub struct ProgramBuilder {
    limits: wgpu::Limits,
    /// Subgroup width the `*_sg` kernel variants are built for (they share loads through
    /// subgroup broadcasts), or `None` for the portable kernels only; see [`subgroup_width`].
    subgroup_width: Option<u32>,
    /// The variant each kernel kind prefers.
    variants: Variants,
    /// Activations and weights are stored as f16 (the kernels' `elem` type; see
    /// [`crate::kernels::pipelines`]); masses, statistics, scores and indices stay 32-bit.
    f16: bool,
    tensors: Vec<TensorInfo>,
    steps: Vec<StepDecl>,
    /// Constants are sized, not stored ([`ProgramBuilder::sizes_only`]).
    sizes_only: bool,
    /// The [`Storage::Sink`] tensors, once something asked for them.
    sinks: Vec<TensorId>,
}

/// One dispatch, ready to record.
pub struct Dispatch {
    /// The compiled pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// The bind group of its tensors and uniform parameters.
    pub bind_group: wgpu::BindGroup,
    /// Workgroup counts in x, y and z.
    pub workgroups: [u32; 3],
    /// The part of the network it belongs to.
    pub family: Family,
    /// The kernel and its substitutions.
    pub key: KernelKey,
}

/// A finished program: its dispatches with their bind groups and the buffers behind every
/// tensor. Recording it allocates nothing.
pub struct Program {
    /// Every dispatch, in execution order.
    pub dispatches: Vec<Dispatch>,
    /// Device buffers backing the activations.
    arena: Vec<wgpu::Buffer>,
    /// For every tensor, the buffer holding it.
    homes: Vec<Home>,
    /// Sum of the arena buffers' sizes: the peak activation memory of one run of the program.
    pub arena_bytes: u64,
    /// Most activation bytes live at once (the arena can't be smaller than this).
    pub peak_live_bytes: u64,
    /// Sizes of the tensors declared (for reports and the cross-check against allocation).
    pub tensor_bytes: Vec<(String, u64)>,
}

enum Home {
    Arena { buffer: usize, offset: u64 },
    Owned(wgpu::Buffer),
}

/// The subgroup width of the `*_sg` kernels for `gpu`: its smallest subgroup size, when
/// `Features::SUBGROUP` is enabled and that size is one the kernels are written for (a power of
/// two in 4..=64); `None` otherwise (the portable kernels run). The minimum, because whatever
/// size in `[min, max]` the compiler picks for a pipeline, a workgroup of `min` lanes then lies
/// within one subgroup, so its lanes `0..min` are all there for `subgroupBroadcast`.
pub fn subgroup_width(gpu: &Gpu) -> Option<u32> {
    subgroup_width_for(gpu.features, &gpu.info)
}

/// [`subgroup_width`] from an adapter's features and info.
///
/// One driver gets fewer lanes than its subgroups hold: lavapipe of Mesa 25 and later at
/// 16-lane subgroups (`LP_NATIVE_VECTOR_WIDTH=512`) runs `subgroupBroadcast` (and
/// `subgroupShuffle`) from a constant lane at about 20 cycles per scalar, which made the
/// subgroup kernels 3-9x slower than at 8 lanes (`attention_sg` on the stage-1 shape: 55.8 ms
/// per dispatch at 16 lanes, 6.0 ms as 8-lane workgroups on the same 512-bit driver, 3.1 ms
/// with the broadcasts taken out; Mesa 25.0.7, Intel Xeon with AVX-512). Its subgroup kernels
/// run as 8-lane workgroups there, which the kernels allow (lanes `0..8` of a 16-lane
/// subgroup). Mesa 22.3.6 runs 16 lanes as fast as 8 and keeps them; Mesa 23 and 24 were not
/// measured and are treated as 25.
pub fn subgroup_width_for(features: wgpu::Features, info: &wgpu::AdapterInfo) -> Option<u32> {
    let min = info.subgroup_min_size;
    if !(features.contains(wgpu::Features::SUBGROUP) && SG_WIDTHS.contains(&min)) {
        return None;
    }
    let slow_broadcasts = info.driver == "llvmpipe"
        && crate::gpu::context::mesa_version(&info.driver_info).is_some_and(|v| v >= (23, 0));
    if slow_broadcasts && min > LAVAPIPE_LANES {
        log::info!(
            "subgroup kernels at {LAVAPIPE_LANES} lanes, not {min}: lavapipe of {} broadcasts \
             within {min}-lane subgroups several times slower",
            info.driver_info
        );
        return Some(LAVAPIPE_LANES);
    }
    Some(min)
}

/// The subgroup width of the kernels on lavapipe of Mesa 23 and later ([`subgroup_width_for`]).
pub const LAVAPIPE_LANES: u32 = 8;

impl ProgramBuilder {
    /// A builder planning for a device with `limits`.
    pub fn new(limits: &wgpu::Limits) -> Self {
        ProgramBuilder {
            limits: limits.clone(),
            subgroup_width: None,
            variants: Variants::default(),
            f16: false,
            tensors: Vec::new(),
            steps: Vec::new(),
            sizes_only: false,
            sinks: Vec::new(),
        }
    }

    /// A builder that keeps only the sizes of constants, not their bytes: for sizing a plan
    /// (micro-batches, memory) without holding a copy of the weights. It cannot be finished.
    pub fn sizes_only(limits: &wgpu::Limits) -> Self {
        ProgramBuilder {
            sizes_only: true,
            ..ProgramBuilder::new(limits)
        }
    }

    /// Bytes of every tensor declared so far, in declaration order, and whether it is an
    /// activation (or an external input/output) rather than a constant or the sink.
    pub fn tensor_sizes(&self) -> impl Iterator<Item = (&str, u64, bool)> + '_ {
        self.tensors.iter().map(|t| {
            let per_batch = matches!(t.storage, Storage::Arena | Storage::External);
            (t.label.as_str(), t.bytes, per_batch)
        })
    }

    /// An activation of `elems` storage elements (the kernels' `elem`: f32, or f16 in an f16
    /// program), rounded up to whole 4-byte words as bindings require.
    pub fn activation(&mut self, label: impl Into<String>, elems: usize) -> TensorId {
        let bytes = self.elem_bytes(elems);
        self.push(label.into(), bytes, Storage::Arena)
    }

    /// An activation of `elems` 32-bit words whatever the precision: token masses, LayerNorm
    /// statistics, matching scores and indices.
    pub fn activation_words(&mut self, label: impl Into<String>, elems: usize) -> TensorId {
        self.push(label.into(), (elems.max(1) * 4) as u64, Storage::Arena)
    }

    /// Store activations and weights as f16 (the device must have `Features::SHADER_F16`);
    /// every dispatch then uses its kernel's f16 variant where it has one.
    pub fn set_f16(&mut self, on: bool) {
        self.f16 = on;
    }

    /// Whether activations and weights are stored as f16.
    pub fn f16(&self) -> bool {
        self.f16
    }

    /// Bytes of `elems` storage elements, whole words.
    pub fn elem_bytes(&self, elems: usize) -> u64 {
        let size = if self.f16 { 2 } else { 4 };
        (elems.max(1) * size).div_ceil(4) as u64 * 4
    }

    /// Weights (or any constant the kernels read as `elem`), converted to the storage precision
    /// and uploaded once when the program is made.
    pub fn weights(&mut self, label: impl Into<String>, data: &[f32]) -> TensorId {
        if self.f16 {
            let mut halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            if halves.len() % 2 == 1 {
                halves.push(half::f16::ZERO);
            }
            self.constant(label, &halves)
        } else {
            self.constant(label, data)
        }
    }

    /// Allow the `*_sg` kernel variants, built for subgroups of `width` lanes (see
    /// [`subgroup_width`]); a width the kernels are not written for means none.
    pub fn set_subgroup_width(&mut self, width: Option<u32>) {
        self.subgroup_width = width.filter(|w| SG_WIDTHS.contains(w));
    }

    /// The width the `*_sg` variants are built for, `None` when only portable kernels run.
    pub fn subgroup_width(&self) -> Option<u32> {
        self.subgroup_width
    }

    /// The limits of the device this program is planned for.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Prefer `variants` (each kind falls back where its preference cannot run).
    pub fn set_variants(&mut self, variants: Variants) {
        self.variants = variants;
    }

    /// The variant `kind` prefers.
    pub fn variant(&self, kind: KernelKind) -> Variant {
        self.variants.get(kind)
    }

    /// The subgroup width for `kind`'s `*_sg` kernel: [`ProgramBuilder::subgroup_width`] when
    /// `kind` prefers [`Variant::Subgroup`], else `None`.
    pub fn subgroup_for(&self, kind: KernelKind) -> Option<u32> {
        self.subgroup_width
            .filter(|_| self.variants.get(kind) == Variant::Subgroup)
    }

    /// A constant uploaded once when the program is made.
    pub fn constant<T: bytemuck::Pod>(&mut self, label: impl Into<String>, data: &[T]) -> TensorId {
        if self.sizes_only {
            let size = (std::mem::size_of_val(data) as u64).max(4);
            return self.push(label.into(), size, Storage::Constant(Vec::new()));
        }
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        if bytes.is_empty() {
            bytes = vec![0u8; 4];
        }
        let size = bytes.len() as u64;
        self.push(label.into(), size, Storage::Constant(bytes))
    }

    /// A buffer of `bytes` the caller owns and hands to [`ProgramBuilder::finish`].
    pub fn external(&mut self, label: impl Into<String>, bytes: u64) -> TensorId {
        self.push(label.into(), bytes, Storage::External)
    }

    /// The tensor to bind at a writable binding a dispatch's parameters leave unwritten (an
    /// optional output): a 16-byte buffer of its own, shared by every such binding. A stand-in
    /// from the dispatch's own tensors would not do: WebGPU refuses two writable bindings of one
    /// buffer range in a dispatch, and a buffer both read and written by it. Plan figures do not
    /// count it.
    pub fn unwritten(&mut self) -> TensorId {
        self.unwritten_nth(0)
    }

    /// The `i`-th such stand-in, for a dispatch that leaves several writable bindings
    /// unwritten (each needs a buffer of its own, for the same reason).
    pub fn unwritten_nth(&mut self, i: usize) -> TensorId {
        while self.sinks.len() <= i {
            let t = self.push("unwritten output".into(), 16, Storage::Sink);
            self.sinks.push(t);
        }
        self.sinks[i]
    }

    /// Whether `t` is an [`ProgramBuilder::unwritten`] stand-in.
    pub fn is_unwritten(&self, t: TensorId) -> bool {
        self.sinks.contains(&t)
    }

    /// Keep an activation alive to the end of the program (outputs read after it, traces).
    pub fn pin(&mut self, t: TensorId) {
        self.tensors[t].pinned = true;
    }

    fn push(&mut self, label: String, bytes: u64, storage: Storage) -> TensorId {
        self.tensors.push(TensorInfo {
            label,
            bytes,
            storage,
            first: usize::MAX,
            last: 0,
            pinned: false,
        });
        self.tensors.len() - 1
    }

    /// Append a dispatch. `bindings[i]` is bound at `@binding(i + 1)`; `@binding(0)` is the
    /// uniform block holding `params`.
    pub fn dispatch<P: KernelParams>(
        &mut self,
        family: Family,
        key: KernelKey,
        params: &P,
        bindings: &[TensorId],
        workgroups: [u32; 3],
    ) {
        assert_eq!(
            key.kernel.params().rust,
            std::any::type_name::<P>(),
            "{} takes the uniform block its catalogue entry names",
            key.kernel.name()
        );
        let writes = key.kernel.writable_bindings();
        for (i, &t) in bindings.iter().enumerate() {
            let writable = writes.contains(&(i as u32 + 1));
            let twice = bindings.iter().enumerate().any(|(j, &u)| j != i && u == t);
            assert!(
                !(writable && twice),
                "{}: tensor '{}' is bound writable at binding {} and again elsewhere (WebGPU \
                 refuses aliased writable bindings; bind ProgramBuilder::unwritten() for an \
                 unused output)",
                key.kernel.name(),
                self.tensors[t].label,
                i + 1
            );
        }
        let step = self.steps.len();
        for &t in bindings {
            let info = &mut self.tensors[t];
            info.first = info.first.min(step);
            info.last = info.last.max(step);
        }
        self.steps.push(StepDecl {
            key: key.with_f16(self.f16),
            family,
            params: params.words(),
            bindings: bindings.to_vec(),
            workgroups,
        });
    }

    /// Number of workgroups for `items` invocations in groups of `size`, spread over x and y so
    /// that neither exceeds the device's per-dimension limit. Shaders recover the flat index as
    /// `gid.x + gid.y * num_workgroups.x * size`.
    pub fn grid(&self, items: usize, size: u32) -> [u32; 3] {
        let groups = items.div_ceil(size as usize).max(1) as u64;
        // A device without compute (0) is refused by `finish`'s limit check, not here.
        let max = (self.limits.max_compute_workgroups_per_dimension as u64).max(1);
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }

    /// Where every activation would go, and the arena's size: the memory plan, without a device.
    pub fn arena_layout(&self) -> ArenaLayout {
        let end = self.steps.len();
        let mut conflicts: Vec<(TensorId, TensorId)> = Vec::new();
        // A dispatch may not bind one buffer both writable and read-only (WebGPU usage rules),
        // so a tensor written by a dispatch must not share a buffer with one it reads.
        for step in &self.steps {
            let writes = step.key.kernel.writable_bindings();
            type Bound = Vec<(usize, TensorId)>;
            let (w, r): (Bound, Bound) = step
                .bindings
                .iter()
                .copied()
                .enumerate()
                .partition(|(i, _)| writes.contains(&(*i as u32 + 1)));
            for &(_, a) in &w {
                for &(_, b) in &r {
                    if a != b {
                        conflicts.push((a, b));
                    }
                }
            }
        }
        pack_arena(
            &self
                .tensors
                .iter()
                .map(|t| match t.storage {
                    Storage::Arena if t.first != usize::MAX => Some(Interval {
                        bytes: t.bytes,
                        first: t.first,
                        last: if t.pinned { end } else { t.last },
                    }),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            &conflicts,
            self.limits.min_storage_buffer_offset_alignment as u64,
            self.limits.max_buffer_size,
        )
    }

    /// Every limit of `gpu` this program depends on, checked before anything is made: the
    /// first one too small is an [`Error::DeviceLimit`] (a tensor over the binding limit is
    /// named).
    fn check_limits(&self, gpu: &Gpu, layout: &ArenaLayout) -> Result<()> {
        let have = &gpu.limits;
        if let Some(t) = self
            .tensors
            .iter()
            .find(|t| t.bytes > have.max_storage_buffer_binding_size)
        {
            log::warn!(
                "tensor '{}' needs {} bytes in one binding, over the device's {}",
                t.label,
                t.bytes,
                have.max_storage_buffer_binding_size
            );
        }
        let mut sizes = std::collections::HashMap::new();
        let mut dispatches = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let workgroup = *sizes
                .entry(step.key)
                .or_insert_with(|| crate::gpu::limits::workgroup_size(&step.key.wgsl()));
            let workgroup = workgroup.ok_or_else(|| Error::Gpu {
                during: "planning".into(),
                why: format!(
                    "kernel {} has no readable @workgroup_size",
                    step.key.kernel.name()
                ),
            })?;
            dispatches.push(crate::gpu::limits::DispatchNeeds {
                storage_buffers: step.bindings.len() as u32,
                uniform_bytes: (4 * step.params.len() as u64).next_multiple_of(16),
                workgroup,
                grid: step.workgroups,
            });
        }
        let largest_binding = self.tensors.iter().map(|t| t.bytes).max().unwrap_or(4);
        let largest_buffer = layout.buffer_sizes.iter().copied().max().unwrap_or(4);
        let needed = crate::gpu::limits::needed(dispatches, largest_binding, largest_buffer, have);
        crate::gpu::limits::check(&needed, have, gpu.is_borrowed())
    }

    /// Make the program on `gpu`: arena buffers, constants, uniforms, pipelines and bind groups.
    /// `externals` gives the buffer of every tensor declared with [`ProgramBuilder::external`].
    pub fn finish(
        self,
        gpu: &Gpu,
        cache: &PipelineCache,
        externals: &[(TensorId, &wgpu::Buffer)],
    ) -> Result<Program> {
        if self.sizes_only {
            return Err(Error::Gpu {
                during: "planning".into(),
                why: "a sizes-only recording cannot be made on a device".into(),
            });
        }
        gpu.check_alive("building the forward")?;
        let layout = self.arena_layout();
        self.check_limits(gpu, &layout)?;
        let device = &gpu.device;
        let arena: Vec<wgpu::Buffer> = layout
            .buffer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("arena {i}")),
                    size: size.max(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let arena_bytes = layout.buffer_sizes.iter().sum();
        let peak_live_bytes = layout.peak_live_bytes;
        let (homes, tensor_bytes) = homes(self.tensors, device, &layout, externals)?;
        let place = |t: TensorId| -> Option<(&wgpu::Buffer, u64)> {
            match &homes[t] {
                Home::Owned(b) => Some((b, 0)),
                Home::Arena { buffer, offset } => arena.get(*buffer).map(|b| (b, *offset)),
            }
        };
        let mut dispatches = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let pipeline = cache.get(device, step.key);
            let mut params = step.params.clone();
            if params.is_empty() {
                params.push(0);
            }
            let uniform = crate::gpu::context::buffer_with(
                device,
                step.key.kernel.name(),
                bytemuck::cast_slice(&params),
                wgpu::BufferUsages::UNIFORM,
            )?;
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }];
            for (i, &t) in step.bindings.iter().enumerate() {
                let (buffer, offset) = place(t).ok_or_else(|| Error::Gpu {
                    during: "planning".into(),
                    why: format!("tensor {t} has no buffer"),
                })?;
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset,
                        size: wgpu::BufferSize::new(tensor_bytes[t].1),
                    }),
                });
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(step.key.kernel.name()),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            dispatches.push(Dispatch {
                pipeline,
                bind_group,
                workgroups: step.workgroups,
                family: step.family,
                key: step.key,
            });
        }
        Ok(Program {
            dispatches,
            arena,
            homes,
            arena_bytes,
            peak_live_bytes,
            tensor_bytes,
        })
    }

    /// Number of dispatches recorded so far.
    pub fn dispatch_count(&self) -> usize {
        self.steps.len()
    }

    /// Dispatch `i` as recorded: kernel, family, uniform parameters, bound tensors
    /// (`bindings[k]` at `@binding(k + 1)`) and workgroup grid.
    pub fn step(&self, i: usize) -> (KernelKey, Family, &[u32], &[TensorId], [u32; 3]) {
        let s = &self.steps[i];
        (s.key, s.family, &s.params, &s.bindings, s.workgroups)
    }

    /// Bytes of tensor `t` as declared (whole words).
    pub fn tensor_bytes(&self, t: TensorId) -> u64 {
        self.tensors[t].bytes
    }

    /// Whether tensor `t` is a constant uploaded once (weights, permutations).
    pub fn is_constant(&self, t: TensorId) -> bool {
        matches!(self.tensors[t].storage, Storage::Constant(_))
    }
}

/// A tensor's label and size in bytes.
type Labelled = (String, u64);

/// Where every tensor lives: constants in buffers of their own (made here), externals in the
/// caller's buffers (checked for size), activations at their arena placement; and every
/// tensor's label and size.
fn homes(
    tensors: Vec<TensorInfo>,
    device: &wgpu::Device,
    layout: &ArenaLayout,
    externals: &[(TensorId, &wgpu::Buffer)],
) -> Result<(Vec<Home>, Vec<Labelled>)> {
    let mut tensor_bytes = Vec::with_capacity(tensors.len());
    let mut homes: Vec<Home> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.into_iter().enumerate() {
        let home = match t.storage {
            Storage::Constant(bytes) => Home::Owned(crate::gpu::context::buffer_with(
                device,
                &t.label,
                &bytes,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )?),
            Storage::External => {
                let buffer = externals
                    .iter()
                    .find(|(id, _)| *id == i)
                    .map(|(_, b)| (*b).clone())
                    .ok_or_else(|| Error::Gpu {
                        during: "planning".into(),
                        why: format!("no buffer given for external tensor '{}'", t.label),
                    })?;
                if buffer.size() < t.bytes {
                    return Err(Error::Gpu {
                        during: "planning".into(),
                        why: format!(
                            "buffer for '{}' has {} bytes, needs {}",
                            t.label,
                            buffer.size(),
                            t.bytes
                        ),
                    });
                }
                Home::Owned(buffer)
            }
            Storage::Sink => Home::Owned(crate::gpu::context::buffer_with(
                device,
                &t.label,
                &[0u8; 16],
                wgpu::BufferUsages::STORAGE,
            )?),
            Storage::Arena => {
                let (buffer, offset) = layout.placement[i].unwrap_or((0, 0));
                Home::Arena { buffer, offset }
            }
        };
        tensor_bytes.push((t.label, t.bytes));
        homes.push(home);
    }
    Ok((homes, tensor_bytes))
}

impl Program {
    /// Encode every dispatch into one compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// The device buffer and byte offset holding tensor `t` (activations share buffers).
    pub fn location(&self, t: TensorId) -> (&wgpu::Buffer, u64) {
        match &self.homes[t] {
            Home::Owned(b) => (b, 0),
            Home::Arena { buffer, offset } => (&self.arena[*buffer], *offset),
        }
    }

    /// Size in bytes of tensor `t` as declared.
    pub fn tensor_size(&self, t: TensorId) -> u64 {
        self.tensor_bytes[t].1
    }

    /// Number of device buffers in the arena.
    pub fn arena_buffers(&self) -> usize {
        self.arena.len()
    }

    /// Bytes actually allocated for the arena, read back from the buffers (cross-check of `arena_bytes`).
    pub fn allocated_arena_bytes(&self) -> u64 {
        self.arena.iter().map(|b| b.size()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::params::NormParams;
    use crate::kernels::Kernel;

    fn stats_of(b: &mut ProgramBuilder, x: TensorId, out: TensorId) {
        let p = NormParams {
            rows: 1,
            c: 4,
            eps: 0.0,
        };
        let key = KernelKey::plain(Kernel::LnStats);
        b.dispatch(Family::Mlp, key, &p, &[x, out], [1, 1, 1]);
    }

    #[test]
    fn lavapipe_of_mesa_23_and_later_runs_8_lane_kernels() {
        let info = |driver: &str, driver_info: &str, lanes: u32| {
            let mut info = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
            info.driver = driver.into();
            info.driver_info = driver_info.into();
            info.subgroup_min_size = lanes;
            info.subgroup_max_size = lanes;
            info
        };
        let sg = wgpu::Features::SUBGROUP;
        let none = wgpu::Features::empty();
        let mesa25 = "Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)";
        let mesa22 = "Mesa 22.3.6 (LLVM 15.0.6)";
        let cases = [
            // 16 lanes: 8 on Mesa 23 and later, all 16 on Mesa 22.3 and on other drivers.
            (sg, "llvmpipe", mesa25, 16, Some(8)),
            (sg, "llvmpipe", "Mesa 23.1.0", 16, Some(8)),
            (sg, "llvmpipe", mesa22, 16, Some(16)),
            (sg, "NVIDIA", "580.82", 32, Some(32)),
            // Narrower subgroups keep their width; no feature or an odd width: no subgroup
            // kernels.
            (sg, "llvmpipe", mesa25, 8, Some(8)),
            (sg, "llvmpipe", mesa25, 4, Some(4)),
            (none, "llvmpipe", mesa25, 16, None),
            (sg, "llvmpipe", mesa25, 12, None),
        ];
        for (features, driver, driver_info, lanes, want) in cases {
            assert_eq!(
                subgroup_width_for(features, &info(driver, driver_info, lanes)),
                want,
                "{driver} {driver_info}, {lanes} lanes, features {features:?}"
            );
        }
    }

    #[test]
    fn the_unwritten_sink_is_one_tensor_outside_the_arena_and_the_figures() {
        let mut b = ProgramBuilder::sizes_only(&wgpu::Limits::default());
        let x = b.activation("x", 4);
        let sink = b.unwritten();
        assert_eq!(b.unwritten(), sink);
        assert!(b.is_unwritten(sink) && !b.is_unwritten(x));
        stats_of(&mut b, x, sink);
        // Only x is packed; the sink is no activation and does not scale with the batch.
        assert_eq!(b.arena_layout().placement[sink], None);
        let sizes: Vec<bool> = b.tensor_sizes().map(|(_, _, per)| per).collect();
        assert_eq!(sizes, [true, false]);
    }

    #[test]
    #[should_panic(expected = "bound writable at binding 2 and again elsewhere")]
    fn a_tensor_bound_writable_twice_in_one_dispatch_is_refused() {
        let mut b = ProgramBuilder::sizes_only(&wgpu::Limits::default());
        let x = b.activation("x", 4);
        // WebGPU refuses this (aliased writable bindings); native backends would not say.
        stats_of(&mut b, x, x);
    }
}
