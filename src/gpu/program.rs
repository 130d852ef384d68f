//! A planned GPU program: a fixed list of dispatches over tensors whose sizes are known up front.
//!
//! The model planner declares tensors and dispatches in execution order; [`ProgramBuilder::finish`]
//! then computes every activation's live range, packs them into as few device buffers as it can
//! (a buffer is reused once its previous occupant is dead), creates the uniform blocks and bind
//! groups, and hands back a [`Program`] whose recording allocates nothing.

use wgpu::util::DeviceExt;

use super::context::Gpu;
use super::shaders::{KernelKey, PipelineCache};
use crate::error::{Error, Result};

pub type TensorId = usize;

/// Which part of the network a dispatch belongs to, for per-family timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Stem,
    Attention,
    Mlp,
    Matching,
    Merge,
    Unmerge,
    Pooling,
    Head,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Stem,
        Family::Attention,
        Family::Mlp,
        Family::Matching,
        Family::Merge,
        Family::Unmerge,
        Family::Pooling,
        Family::Head,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Family::Stem => "conv stem",
            Family::Attention => "attention",
            Family::Mlp => "mlp",
            Family::Matching => "matching",
            Family::Merge => "merge",
            Family::Unmerge => "unmerge",
            Family::Pooling => "pooling",
            Family::Head => "head",
        }
    }
}

enum Storage {
    /// An activation: lives in the arena between its first and last use.
    Arena,
    /// A buffer made elsewhere (weights, constants, inputs, outputs).
    Owned(wgpu::Buffer),
}

struct TensorInfo {
    label: String,
    bytes: u64,
    storage: Storage,
    first: usize,
    last: usize,
    pinned: bool,
}

struct StepDecl {
    key: KernelKey,
    family: Family,
    params: Vec<u32>,
    bindings: Vec<TensorId>,
    workgroups: [u32; 3],
}

pub struct ProgramBuilder<'a> {
    gpu: &'a Gpu,
    cache: &'a PipelineCache,
    tensors: Vec<TensorInfo>,
    steps: Vec<StepDecl>,
}

/// One dispatch, ready to record.
pub struct Dispatch {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    pub family: Family,
    pub key: KernelKey,
}

pub struct Program {
    pub dispatches: Vec<Dispatch>,
    /// Device buffers backing the activations.
    arena: Vec<wgpu::Buffer>,
    /// For every tensor, the buffer holding it.
    homes: Vec<Home>,
    /// Sum of the arena buffers' sizes: the peak activation memory of one run of the program.
    pub arena_bytes: u64,
    /// Sizes of the tensors declared (for reports and the cross-check against allocation).
    pub tensor_bytes: Vec<(String, u64)>,
}

enum Home {
    Arena(usize),
    Owned(wgpu::Buffer),
}

impl<'a> ProgramBuilder<'a> {
    pub fn new(gpu: &'a Gpu, cache: &'a PipelineCache) -> Self {
        ProgramBuilder {
            gpu,
            cache,
            tensors: Vec::new(),
            steps: Vec::new(),
        }
    }

    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    /// An activation of `elems` 4-byte elements (f32 or u32).
    pub fn activation(&mut self, label: impl Into<String>, elems: usize) -> TensorId {
        self.push(label.into(), (elems.max(1) * 4) as u64, Storage::Arena)
    }

    /// A constant uploaded once at plan time.
    pub fn constant<T: bytemuck::Pod>(&mut self, label: impl Into<String>, data: &[T]) -> TensorId {
        let label = label.into();
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded;
        let contents = if bytes.is_empty() {
            padded = vec![0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        let buffer = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let size = contents.len() as u64;
        self.push(label, size, Storage::Owned(buffer))
    }

    /// A buffer owned by the caller (inputs, outputs).
    pub fn external(&mut self, label: impl Into<String>, buffer: &wgpu::Buffer) -> TensorId {
        let size = buffer.size();
        self.push(label.into(), size, Storage::Owned(buffer.clone()))
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
    pub fn dispatch(
        &mut self,
        family: Family,
        key: KernelKey,
        params: &[u32],
        bindings: &[TensorId],
        workgroups: [u32; 3],
    ) {
        let step = self.steps.len();
        for &t in bindings {
            let info = &mut self.tensors[t];
            info.first = info.first.min(step);
            info.last = info.last.max(step);
        }
        self.steps.push(StepDecl {
            key,
            family,
            params: params.to_vec(),
            bindings: bindings.to_vec(),
            workgroups,
        });
    }

    /// Number of workgroups for `items` invocations in groups of `size`, spread over x and y so
    /// that neither exceeds the device's per-dimension limit. Shaders recover the flat index as
    /// `gid.x + gid.y * num_workgroups.x * size`.
    pub fn grid(&self, items: usize, size: u32) -> [u32; 3] {
        let groups = items.div_ceil(size as usize).max(1) as u64;
        let max = self.gpu.limits.max_compute_workgroups_per_dimension as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }

    pub fn finish(self) -> Result<Program> {
        let limit = self.gpu.limits.max_storage_buffer_binding_size as u64;
        for t in &self.tensors {
            if t.bytes > limit {
                return Err(Error::Gpu {
                    during: "planning".into(),
                    why: format!(
                        "tensor '{}' needs {} bytes, over the device's max_storage_buffer_binding_size of {} bytes; use a smaller batch",
                        t.label, t.bytes, limit
                    ),
                });
            }
        }
        let end = self.steps.len();
        // Arena tensors in order of first use; each takes the smallest dead buffer that fits, or
        // grows the largest dead one, or opens a new buffer.
        let mut order: Vec<TensorId> = (0..self.tensors.len())
            .filter(|&t| {
                matches!(self.tensors[t].storage, Storage::Arena)
                    && self.tensors[t].first != usize::MAX
            })
            .collect();
        order.sort_by_key(|&t| self.tensors[t].first);
        let mut sizes: Vec<u64> = Vec::new();
        let mut busy_until: Vec<usize> = Vec::new();
        let mut slot_of = vec![usize::MAX; self.tensors.len()];
        for &t in &order {
            let info = &self.tensors[t];
            let last = if info.pinned { end } else { info.last };
            let free: Vec<usize> = (0..sizes.len())
                .filter(|&b| busy_until[b] < info.first)
                .collect();
            let fit = free
                .iter()
                .copied()
                .filter(|&b| sizes[b] >= info.bytes)
                .min_by_key(|&b| sizes[b]);
            let chosen = match fit {
                Some(b) => b,
                None => match free.iter().copied().max_by_key(|&b| sizes[b]) {
                    Some(b) => {
                        sizes[b] = info.bytes;
                        b
                    }
                    None => {
                        sizes.push(info.bytes);
                        busy_until.push(0);
                        sizes.len() - 1
                    }
                },
            };
            busy_until[chosen] = last;
            slot_of[t] = chosen;
        }
        let device = &self.gpu.device;
        let arena: Vec<wgpu::Buffer> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("arena {i}")),
                    size,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let arena_bytes = sizes.iter().sum();
        let mut tensor_bytes = Vec::with_capacity(self.tensors.len());
        let homes: Vec<Home> = self
            .tensors
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                tensor_bytes.push((t.label, t.bytes));
                match t.storage {
                    Storage::Owned(b) => Home::Owned(b),
                    Storage::Arena => Home::Arena(slot_of[i]),
                }
            })
            .collect();
        let buffer_of = |t: TensorId| -> Option<&wgpu::Buffer> {
            match &homes[t] {
                Home::Owned(b) => Some(b),
                Home::Arena(s) => arena.get(*s),
            }
        };
        let mut dispatches = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let pipeline = self.cache.get(device, step.key);
            let mut params = step.params.clone();
            if params.is_empty() {
                params.push(0);
            }
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(step.key.shader.name()),
                contents: bytemuck::cast_slice(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }];
            for (i, &t) in step.bindings.iter().enumerate() {
                let buffer = buffer_of(t).ok_or_else(|| Error::Gpu {
                    during: "planning".into(),
                    why: format!("tensor {t} has no buffer"),
                })?;
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(tensor_bytes[t].1),
                    }),
                });
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(step.key.shader.name()),
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
            tensor_bytes,
        })
    }
}

impl Program {
    /// Record every dispatch into one compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// The device buffer holding tensor `t` (shared with other tensors if it is an activation).
    pub fn buffer(&self, t: TensorId) -> &wgpu::Buffer {
        match &self.homes[t] {
            Home::Owned(b) => b,
            Home::Arena(s) => &self.arena[*s],
        }
    }

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
