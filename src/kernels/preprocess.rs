//! The ImageNet evaluation transform on the GPU, from a texture: `Resize(256)` with Pillow's
//! antialiased bilinear filter, `CenterCrop(224)`, `ToTensor`, `Normalize(mean, std)`, written as
//! `[3, 224, 224]` f32 into a storage buffer, recorded into the caller's command encoder.
//!
//! Its CPU twin is [`crate::preprocess::preprocess_rgb8`]: the kernel runs Pillow's fixed-point
//! resampler with the same per-axis taps (computed here on the CPU, exactly as the CPU path does,
//! and uploaded once per texture size), the same 8-bit rounding between the two passes and the
//! same pass order, so the crop it produces is bit-identical; only the final normalisation is
//! floating point (at most an ulp apart). Unlike [`crate::kernels::Program`]s, this binds a texture,
//! so it is its own small pipeline, recorded in its own compute pass before the forward.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kernels::params::PreprocessParams;
use crate::kernels::{Kernel, KernelKey, KernelParams, PipelineCache};
use crate::preprocess::{
    center_crop_offset, pillow_vertical_first, resize_output_size, Coeffs, Filter, CROP_SIZE,
    RESIZE_SHORTER,
};

/// Side of the preprocessed image.
pub const OUT_SIDE: u32 = CROP_SIZE;
/// Bytes of one preprocessed image, `[3, 224, 224]` f32.
pub const IMAGE_BYTES: u64 = 3 * (OUT_SIDE as u64) * (OUT_SIDE as u64) * 4;
/// Pillow's 8-bit resampler's fixed-point scale.
const ONE: i32 = 1 << 22;
/// How many texture sizes keep their tables before the cache starts over.
const MAX_CACHED_SIZES: usize = 32;

/// The texture formats the kernel reads: 8-bit RGBA or BGRA, linear or sRGB.
pub const SUPPORTED_FORMATS: [wgpu::TextureFormat; 4] = [
    wgpu::TextureFormat::Rgba8Unorm,
    wgpu::TextureFormat::Rgba8UnormSrgb,
    wgpu::TextureFormat::Bgra8Unorm,
    wgpu::TextureFormat::Bgra8UnormSrgb,
];

/// One axis's taps as the kernel reads them: per output index `[first input, count, w0, ..]`,
/// padded to `stride = 2 + max taps` words. An axis that keeps its size gets one tap of weight
/// 1.0 (Pillow skips that pass; the result is the same).
fn axis_table(in_size: u32, out_size: u32, start: u32) -> (usize, Vec<i32>) {
    if in_size == out_size {
        let rows = (0..OUT_SIDE)
            .flat_map(|i| [(start + i) as i32, 1, ONE])
            .collect();
        return (3, rows);
    }
    let c = Coeffs::new(Filter::Bilinear, in_size, out_size, start, OUT_SIDE);
    let ksize = (0..c.len()).map(|i| c.taps(i).1.len()).max().unwrap_or(0);
    let stride = 2 + ksize;
    let mut rows = vec![0i32; c.len() * stride];
    for (i, row) in rows.chunks_exact_mut(stride).enumerate() {
        let (first, taps) = c.taps(i);
        row[0] = first as i32;
        row[1] = taps.len() as i32;
        row[2..2 + taps.len()].copy_from_slice(taps);
    }
    (stride, rows)
}

/// The block's words padded to 16 bytes (a uniform buffer's size granularity).
fn uniform_words(params: &PreprocessParams) -> Vec<u32> {
    let mut words = params.words();
    words.resize(words.len().next_multiple_of(4), 0);
    words
}

/// The uniform block and the coefficient tables of a `width` x `height` texture.
fn tables(width: u32, height: u32, srgb: bool) -> (PreprocessParams, Vec<i32>) {
    let (rw, rh) = resize_output_size(width, height, RESIZE_SHORTER);
    let x0 = center_crop_offset(rw, CROP_SIZE);
    let y0 = center_crop_offset(rh, CROP_SIZE);
    let (h_stride, mut coeffs) = axis_table(width, rw, x0);
    let (v_stride, v) = axis_table(height, rh, y0);
    let v_off = coeffs.len();
    coeffs.extend_from_slice(&v);
    let params = PreprocessParams {
        h_off: 0,
        h_stride: h_stride as u32,
        v_off: v_off as u32,
        v_stride: v_stride as u32,
        vertical_first: pillow_vertical_first(width, height, rw, rh) as u32,
        srgb: srgb as u32,
    };
    (params, coeffs)
}

struct Tables {
    params: wgpu::Buffer,
    coeffs: wgpu::Buffer,
}

/// GPU preprocessing of textures into normalised `[3, 224, 224]` f32 images.
///
/// Everything is recorded into the caller's encoder; nothing is submitted or written through the
/// queue (tables are created initialised), so it can sit next to the caller's own passes.
/// Inputs: 2D textures of any size in one of [`SUPPORTED_FORMATS`], with
/// `TextureUsages::TEXTURE_BINDING`; mip level 0 and array layer 0 are read. A texture or
/// buffer of another device is reported as an error before anything is recorded (a texture of
/// another wgpu `Instance` too: wgpu-core panics on it, which is caught).
///
/// An [`Engine`](crate::Engine) uses one for texture inputs; on its own it preprocesses into
/// any buffer of the application's, e.g. to assemble a batch from several sources:
///
/// ```
/// # fn main() -> sret_tome::Result<()> {
/// use sret_tome::kernels::preprocess::IMAGE_BYTES;
/// use sret_tome::Preprocessor;
/// # let gpu = sret_tome::gpu::Gpu::new(&Default::default())?;
/// # let (device, queue) = (&gpu.device, &gpu.queue);
/// let camera = device.create_texture(&wgpu::TextureDescriptor {
///     label: Some("camera frame"),
///     size: wgpu::Extent3d { width: 1280, height: 720, depth_or_array_layers: 1 },
///     mip_level_count: 1,
///     sample_count: 1,
///     dimension: wgpu::TextureDimension::D2,
///     format: wgpu::TextureFormat::Rgba8Unorm,
///     usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
///     view_formats: &[],
/// });
/// let batch = device.create_buffer(&wgpu::BufferDescriptor {
///     label: Some("batch"),
///     size: 4 * IMAGE_BYTES, // [4, 3, 224, 224] f32
///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
///     mapped_at_creation: false,
/// });
/// let pre = Preprocessor::new(device);
/// let mut encoder = device.create_command_encoder(&Default::default());
/// pre.encode(&mut encoder, &[&camera], &batch, 2 * IMAGE_BYTES)?; // image 2 of the batch
/// queue.submit([encoder.finish()]);
/// # Ok(())
/// # }
/// ```
pub struct Preprocessor {
    device: wgpu::Device,
    pipeline: wgpu::ComputePipeline,
    alignment: u64,
    /// Bytes of one output image: [`IMAGE_BYTES`], or half that for f16 output.
    image_bytes: u64,
    tables: Mutex<HashMap<(u32, u32, bool), Arc<Tables>>>,
    /// Bind groups of recently seen (texture, output buffer, offset), most recent last, so
    /// that a frame loop over a few textures (a swap chain's, say) binds nothing new per frame.
    /// An entry keeps its texture alive until it falls out ([`Preprocessor::forget_textures`]
    /// drops them all).
    bind_groups: Mutex<Vec<BoundTexture>>,
}

/// Textures whose bind groups are kept (see `Preprocessor::bind_groups`).
const MAX_BOUND_TEXTURES: usize = 16;

struct BoundTexture {
    texture: wgpu::Texture,
    dst: wgpu::Buffer,
    offset: wgpu::BufferAddress,
    group: wgpu::BindGroup,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor").finish_non_exhaustive()
    }
}

impl Preprocessor {
    /// Compile the kernel on `device`.
    pub fn new(device: &wgpu::Device) -> Preprocessor {
        Preprocessor::with_cache(device, &PipelineCache::default())
    }

    /// As [`Preprocessor::new`], taking the pipeline from (and leaving it in) `cache`.
    pub fn with_cache(device: &wgpu::Device, cache: &PipelineCache) -> Preprocessor {
        Preprocessor::with_precision(device, cache, false)
    }

    /// As [`Preprocessor::with_cache`]; with `f16` the images are written as f16 (for an f16
    /// engine; `[3, 224, 224]` f16, [`IMAGE_BYTES`] / 2 bytes each; the device needs
    /// `SHADER_F16`).
    pub fn with_precision(device: &wgpu::Device, cache: &PipelineCache, f16: bool) -> Preprocessor {
        Preprocessor {
            device: device.clone(),
            pipeline: cache.get(device, KernelKey::plain(Kernel::Preprocess).with_f16(f16)),
            alignment: device.limits().min_storage_buffer_offset_alignment as u64,
            image_bytes: if f16 { IMAGE_BYTES / 2 } else { IMAGE_BYTES },
            tables: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(Vec::new()),
        }
    }

    /// Drop the cached bind groups, and with them the references they hold to the textures
    /// preprocessed so far.
    pub fn forget_textures(&self) {
        self.bind_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The bind group reading `t` and writing `dst` at `offset`: cached, or made and cached.
    fn bind_group(
        &self,
        t: &wgpu::Texture,
        dst: &wgpu::Buffer,
        offset: wgpu::BufferAddress,
    ) -> Result<wgpu::BindGroup> {
        let mut cached = self.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cached
            .iter()
            .position(|b| &b.texture == t && &b.dst == dst && b.offset == offset)
        {
            let hit = cached.remove(i);
            let group = hit.group.clone();
            cached.push(hit);
            return Ok(group);
        }
        let tables = self.tables(t.width(), t.height(), t.format().is_srgb())?;
        // A texture of another wgpu `Instance` (another engine's own device, say) is an id
        // wgpu-core looks up in this device's registry, where it panics: caught, and an error.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.make_bind_group(t, &tables, dst, offset)
        }));
        let group = made.map_err(|_| {
            Error::arg(
                "texture",
                describe(t),
                "belongs to another wgpu Instance (e.g. another engine's own device): pass a texture of this engine's device",
            )
        })?;
        if cached.len() >= MAX_BOUND_TEXTURES {
            cached.remove(0);
        }
        cached.push(BoundTexture {
            texture: t.clone(),
            dst: dst.clone(),
            offset,
            group: group.clone(),
        });
        Ok(group)
    }

    fn make_bind_group(
        &self,
        t: &wgpu::Texture,
        tables: &Tables,
        dst: &wgpu::Buffer,
        offset: wgpu::BufferAddress,
    ) -> wgpu::BindGroup {
        let view = t.create_view(&wgpu::TextureViewDescriptor {
            label: Some("preprocess input"),
            dimension: Some(wgpu::TextureViewDimension::D2),
            base_mip_level: 0,
            mip_level_count: Some(1),
            base_array_layer: 0,
            array_layer_count: Some(1),
            ..Default::default()
        });
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("preprocess"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: tables.params.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: tables.coeffs.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: dst,
                        offset,
                        size: wgpu::BufferSize::new(self.image_bytes),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::TextureView(&view),
                },
            ],
        })
    }

    /// Whether the kernel can read `texture`; the error says what is wrong with it.
    pub fn check(texture: &wgpu::Texture) -> Result<()> {
        let bad = |why: String| Err(Error::arg("texture", describe(texture), why));
        if !SUPPORTED_FORMATS.contains(&texture.format()) {
            return bad(format!(
                "format {:?} is not supported (expected one of {SUPPORTED_FORMATS:?})",
                texture.format()
            ));
        }
        if texture.dimension() != wgpu::TextureDimension::D2 {
            return bad("must be a 2D texture".into());
        }
        if texture.sample_count() != 1 {
            return bad("must not be multisampled (resolve it first)".into());
        }
        if !texture
            .usage()
            .contains(wgpu::TextureUsages::TEXTURE_BINDING)
        {
            return bad("needs TextureUsages::TEXTURE_BINDING".into());
        }
        if texture.width() == 0 || texture.height() == 0 {
            return bad("is empty".into());
        }
        Ok(())
    }

    /// The resampling tables of a texture size: cached, or made (on a destroyed or lost
    /// device that is [`Error::DeviceLost`]).
    fn tables(&self, width: u32, height: u32, srgb: bool) -> Result<Arc<Tables>> {
        let mut map = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(&(width, height, srgb)) {
            return Ok(t.clone());
        }
        if map.len() >= MAX_CACHED_SIZES {
            map.clear();
        }
        let (params, coeffs) = tables(width, height, srgb);
        let made = Arc::new(Tables {
            params: crate::gpu::context::buffer_with(
                &self.device,
                "preprocess params",
                bytemuck::cast_slice(&uniform_words(&params)),
                wgpu::BufferUsages::UNIFORM,
            )?,
            coeffs: crate::gpu::context::buffer_with(
                &self.device,
                "preprocess taps",
                bytemuck::cast_slice(&coeffs),
                wgpu::BufferUsages::STORAGE,
            )?,
        });
        map.insert((width, height, srgb), made.clone());
        Ok(made)
    }

    /// Record the preprocessing of `textures` into `dst`: image `i` goes to bytes
    /// `dst_offset + i * IMAGE_BYTES ..` as `[3, 224, 224]` f32 (f16 and half the bytes for a
    /// [`Preprocessor::with_precision`] one). `dst` needs
    /// `BufferUsages::STORAGE`, and every image's offset must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment` (any multiple of 256 bytes is).
    pub fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        textures: &[&wgpu::Texture],
        dst: &wgpu::Buffer,
        dst_offset: wgpu::BufferAddress,
    ) -> Result<()> {
        if !dst.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::arg(
                "preprocessing output",
                format!("buffer of usage {:?}", dst.usage()),
                "needs BufferUsages::STORAGE",
            ));
        }
        let end = (textures.len() as u64)
            .checked_mul(self.image_bytes)
            .and_then(|n| n.checked_add(dst_offset));
        if end.is_none_or(|e| e > dst.size()) {
            return Err(Error::arg(
                "preprocessing output",
                format!("buffer of {} bytes", dst.size()),
                format!(
                    "{} images of {} bytes from offset {dst_offset} do not fit",
                    textures.len(),
                    self.image_bytes
                ),
            ));
        }
        if !dst_offset.is_multiple_of(self.alignment)
            || !self.image_bytes.is_multiple_of(self.alignment)
        {
            return Err(Error::arg(
                "preprocessing offset",
                dst_offset,
                format!(
                    "must be a multiple of the device's min_storage_buffer_offset_alignment ({})",
                    self.alignment
                ),
            ));
        }
        for t in textures {
            Preprocessor::check(t)?;
        }
        // Whatever the checks above cannot see (a texture or buffer of another device) fails
        // here, before anything is recorded.
        // On wasm32 a scope can only be awaited: errors reach the caller's scopes there
        // (`Engine::run_async`).
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let groups: Result<Vec<wgpu::BindGroup>> = textures
            .iter()
            .enumerate()
            .map(|(i, t)| self.bind_group(t, dst, dst_offset + i as u64 * self.image_bytes))
            .collect();
        #[cfg(not(target_arch = "wasm32"))]
        let error = pollster::block_on(scope.pop());
        let groups = groups?;
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = error {
            // An invalid bind group may have been cached: start afresh.
            self.forget_textures();
            return Err(Error::Gpu {
                during: "binding the preprocessing's input and output".into(),
                why: crate::gpu::context::error_text(&e),
            });
        }
        if groups.is_empty() {
            return Ok(());
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("preprocess"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        let groups_per_side = OUT_SIDE.div_ceil(8);
        for g in &groups {
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(groups_per_side, groups_per_side, 1);
        }
        Ok(())
    }
}

fn describe(t: &wgpu::Texture) -> String {
    format!("{}x{} {:?}", t.width(), t.height(), t.format())
}

/// Moves of the transform: one per element of the output binding (its bytes / 4).
pub fn flops(_p: &PreprocessParams, _key: &KernelKey, bound: &[u64]) -> u64 {
    bound.last().copied().unwrap_or(0) / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_axes_have_one_unit_tap() {
        // 256 x 300: the width keeps its size, the crop starts at column 16.
        let (params, coeffs) = tables(256, 300, false);
        assert_eq!(params.h_stride, 3);
        assert_eq!(&coeffs[..3], &[16, 1, ONE]);
        assert_eq!(&coeffs[3 * 223..3 * 224], &[16 + 223, 1, ONE]);
        // The height shrinks a little: two or three taps, weights summing to ~1.0.
        let v = &coeffs[params.v_off as usize..];
        let stride = params.v_stride as usize;
        for row in v.chunks_exact(stride) {
            let n = row[1] as usize;
            let sum: i64 = row[2..2 + n].iter().map(|&w| w as i64).sum();
            assert!((sum - ONE as i64).abs() <= n as i64, "{sum}");
        }
    }

    #[test]
    fn tall_images_run_the_vertical_pass_first() {
        assert_eq!(tables(400, 1200, false).0.vertical_first, 1);
        assert_eq!(tables(1200, 400, false).0.vertical_first, 0);
        assert_eq!(tables(640, 480, true).0.srgb, 1);
    }
}
