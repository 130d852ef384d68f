//! The library API as a wgpu application uses it: an engine on the application's device (created
//! here with WebGPU's default limits and no optional feature but subgroups), textures preprocessed on the GPU
//! against the CPU path, forwards recorded into the application's encoder next to its render
//! pass, logits consumed in place or read back through futures, callbacks and polling, several
//! engines on one device, errors found before recording, and the examples.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use image::RgbImage;
use sret_tome::preprocess::{preprocess_rgb8, IMAGENET_MEAN, IMAGENET_STD};
use sret_tome::reference::SplitMix64;
use sret_tome::{Engine, EngineBuilder, Input, Logits, PendingLogits, Preprocessor, Schedule};

#[allow(dead_code)]
#[path = "../examples/classify.rs"]
mod classify_example;
#[allow(dead_code)]
#[path = "../examples/render_classify.rs"]
mod render_example;
#[allow(dead_code)]
#[path = "../examples/throughput.rs"]
mod throughput_example;

// ---------------------------------------------------------------------------------------------
// The "application": its own instance, adapter and device, WebGPU's default limits.

struct App {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let instance = {
            // GL only when asked: wgpu's EGL probe panics when test threads race on it.
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
            wgpu::Instance::new(desc)
        };
        let adapter = pollster::block_on(instance.request_adapter(&Default::default())).expect(
            "GPU tests need an adapter; on Linux without a GPU install mesa-vulkan-drivers",
        );
        // WebGPU's default limits; of the optional features only subgroups, which the engine
        // uses where the adapter has them (it is several times faster with them on lavapipe).
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("application"),
            required_features: adapter.features() & wgpu::Features::SUBGROUP,
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        }))
        .expect("device");
        App {
            adapter,
            device,
            queue,
        }
    })
}

/// SReT-T without merging, one image per forward.
fn engine_t1() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        EngineBuilder::new()
            .model("sret_t")
            .batch(1)
            .device(&app().device, &app().queue)
            .build()
            .expect("engine sret_t")
    })
}

/// SReT-T-distill with the paper's exponential schedule, two images per forward; shares the
/// first engine's pipelines.
fn engine_d2() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        EngineBuilder::new()
            .model("sret_t_distill")
            .schedule("exp:0.10,0.6".parse().unwrap())
            .seed(7)
            .batch(2)
            .device(&app().device, &app().queue)
            .pipeline_cache(engine_t1().pipeline_cache())
            .build()
            .expect("engine sret_t_distill")
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// An RGBA8 picture with structure (waves, a disc) and noise, so that every rounding matters.
fn picture(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let f: Vec<f32> = (0..9).map(|_| rng.unit()).collect();
    let mut out = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let disc = ((u - 0.5).powi(2) + (v - 0.5).powi(2)) < 0.08;
            for c in 0..3 {
                let wave =
                    (u * (3.0 + 20.0 * f[c]) + v * (2.0 + 15.0 * f[c + 3]) + 6.0 * f[c + 6]).sin();
                let base = if disc {
                    200.0 - 60.0 * c as f32
                } else {
                    128.0 + 90.0 * wave
                };
                let noise = 30.0 * rng.symmetric();
                out.push((base + noise).clamp(0.0, 255.0) as u8);
            }
            out.push((rng.unit() * 255.0) as u8); // alpha: ignored, as PIL's convert("RGB")
        }
    }
    out
}

fn is_bgra(format: wgpu::TextureFormat) -> bool {
    matches!(
        format,
        wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb
    )
}

/// The RGB image a texture of `format` holding bytes `texels` shows.
fn rgb_of(texels: &[u8], w: u32, h: u32, format: wgpu::TextureFormat) -> RgbImage {
    let rgb = texels
        .chunks_exact(4)
        .flat_map(|p| {
            if is_bgra(format) {
                [p[2], p[1], p[0]]
            } else {
                [p[0], p[1], p[2]]
            }
        })
        .collect();
    RgbImage::from_raw(w, h, rgb).unwrap()
}

fn texture(w: u32, h: u32, format: wgpu::TextureFormat, texels: &[u8]) -> wgpu::Texture {
    let App { device, queue, .. } = app();
    let size = wgpu::Extent3d {
        width: w,
        height: h,
        depth_or_array_layers: 1,
    };
    let t = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("test image"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        t.as_image_copy(),
        texels,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * w),
            rows_per_image: None,
        },
        size,
    );
    t
}

fn read(buffer: &wgpu::Buffer, offset: u64, size: u64) -> Vec<u8> {
    let App { device, queue, .. } = app();
    read_on(device, queue, buffer, offset, size)
}

fn read_on(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Vec<u8> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let bytes = staging.get_mapped_range(..).unwrap().to_vec();
    staging.unmap();
    bytes
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// The 8-bit code a normalised value came from.
fn code(v: f32, c: usize) -> i32 {
    ((v * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255.0).round() as i32
}

/// How long a test waits for results before calling it a hang. Not a timing: the tests share one
/// device, whose queue runs their submissions one after another (lavapipe has one queue thread),
/// and a cold forward compiles every pipeline at its first dispatch, so a result may wait behind
/// other tests' cold forwards for minutes on a slow 2-core machine (CI once took more than 120 s).
const HANG_GUARD: Duration = Duration::from_secs(1200);

/// A waker that records that it was woken.
struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Drive `fut` as an executor would: poll it, and while it is pending let the device make
/// progress without blocking (`PollType::Poll`) until the waker fires.
fn drive<F: Future>(device: &wgpu::Device, fut: F) -> (usize, F::Output) {
    let mut fut = std::pin::pin!(fut);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + HANG_GUARD;
    let mut pendings = 0;
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return (pendings, r),
            Poll::Pending => pendings += 1,
        }
        flag.0.store(false, Ordering::SeqCst);
        while !flag.0.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the logits never arrived");
            device.poll(wgpu::PollType::Poll).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU preprocessing against the CPU path.

#[test]
fn gpu_preprocessing_is_the_cpu_preprocessing() {
    let App { device, .. } = app();
    let pre = Preprocessor::new(device);
    use wgpu::TextureFormat::*;
    let cases: &[(u32, u32, wgpu::TextureFormat)] = &[
        (256, 256, Rgba8Unorm),     // crop only
        (224, 224, Bgra8Unorm),     // upscale to 256
        (640, 480, Rgba8Unorm),     // landscape, both axes shrink
        (640, 480, Rgba8UnormSrgb), // the same bytes as sRGB
        (640, 480, Bgra8Unorm),
        (640, 480, Bgra8UnormSrgb),
        (480, 640, Rgba8UnormSrgb), // portrait
        (400, 1200, Bgra8Unorm),    // tall: Pillow runs the vertical pass first
        (1200, 400, Rgba8Unorm),    // wide
        (257, 3000, Rgba8Unorm),    // tall, width almost kept
        (97, 61, Bgra8UnormSrgb),   // tiny, upscaled
        (1920, 1080, Bgra8UnormSrgb),
    ];
    let textures: Vec<(wgpu::Texture, RgbImage)> = cases
        .iter()
        .enumerate()
        .map(|(i, &(w, h, f))| {
            let texels = picture(w, h, 40 + i as u64);
            (texture(w, h, f, &texels), rgb_of(&texels, w, h, f))
        })
        .collect();
    let image_bytes = 3 * 224 * 224 * 4u64;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("preprocessed"),
        size: image_bytes * cases.len() as u64 + 256,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    // All of them in one pass, after a 256-byte offset.
    let refs: Vec<&wgpu::Texture> = textures.iter().map(|t| &t.0).collect();
    let mut enc = device.create_command_encoder(&Default::default());
    pre.encode(&mut enc, &refs, &out, 256).unwrap();
    app().queue.submit([enc.finish()]);
    let got: Vec<f32> =
        bytemuck::cast_slice(&read(&out, 256, image_bytes * cases.len() as u64)).to_vec();

    for (i, ((w, h, f), (_, rgb))) in cases.iter().zip(&textures).enumerate() {
        let want = preprocess_rgb8(rgb);
        let gpu = &got[i * want.len()..(i + 1) * want.len()];
        let plane = 224 * 224;
        let mut codes_differ = 0;
        let mut bit_exact = 0;
        for (j, (g, c)) in gpu.iter().zip(&want).enumerate() {
            codes_differ += (code(*g, j / plane) != code(*c, j / plane)) as usize;
            bit_exact += (g.to_bits() == c.to_bits()) as usize;
        }
        let d = max_abs_diff(gpu, &want);
        println!(
            "{w}x{h} {f:?}: max |gpu - cpu| = {d:.2e} (normalised), {bit_exact}/{} values bit-exact, {codes_differ} 8-bit codes differ",
            want.len()
        );
        // The requirement is 1/255 per pixel; the resampler is integer arithmetic shared with
        // the CPU, so the 8-bit crop is identical and only the normalisation may round apart.
        assert_eq!(
            codes_differ, 0,
            "{w}x{h} {f:?}: resampled pixels differ from the CPU path"
        );
        assert!(d <= 1e-5, "{w}x{h} {f:?}: normalised values differ by {d}");
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs: textures, host data and GPU buffers give the same logits.

#[test]
fn texture_input_gives_the_logits_of_the_cpu_preprocessed_buffer() {
    let engine = engine_d2();
    let App { device, queue, .. } = app();
    let shapes = [
        (640, 480, wgpu::TextureFormat::Rgba8Unorm),
        (333, 500, wgpu::TextureFormat::Bgra8UnormSrgb),
    ];
    let mut textures = Vec::new();
    let mut host = Vec::new();
    for (i, &(w, h, f)) in shapes.iter().enumerate() {
        let texels = picture(w, h, 7 + i as u64);
        textures.push(texture(w, h, f, &texels));
        host.extend(preprocess_rgb8(&rgb_of(&texels, w, h, f)));
    }
    let refs: Vec<&wgpu::Texture> = textures.iter().collect();
    let from_textures = engine.run(&refs).unwrap();

    // The CPU-preprocessed images, already on the GPU, at an offset inside a larger buffer of
    // the application's.
    let offset = 1024u64;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app images"),
        size: offset + (host.len() * 4) as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, offset, bytemuck::cast_slice(&host));
    let from_buffer = engine
        .run(Input::Buffer {
            buffer: &buffer,
            offset,
        })
        .unwrap();

    assert_eq!((from_textures.batch(), from_textures.classes()), (2, 1000));
    let err = rel_l2(from_textures.as_slice(), from_buffer.as_slice());
    println!(
        "texture vs CPU-preprocessed buffer input: relative L2 {err:.2e}, max |diff| {:.2e}",
        max_abs_diff(from_textures.as_slice(), from_buffer.as_slice())
    );
    assert!(
        err <= 1e-5,
        "texture input logits differ: relative L2 {err}"
    );
    // The two images are different pictures: their logits must differ (the batch is not
    // collapsed to one image).
    assert!(max_abs_diff(from_buffer.image(0), from_buffer.image(1)) > 1e-3);

    // The same engine planned for a device whose storage bindings hold only one image's largest
    // tensor runs the batch as two micro-batches; the textures are then preprocessed into its
    // input buffer and copied per micro-batch.
    let mut small = sret_tome::gpu::Gpu::from_device(device, queue, device.adapter_info());
    let model = sret_tome::Model::synthetic("sret_t_distill").unwrap();
    let spec =
        sret_tome::runtime::ForwardSpec::new(&model.cfg, &"exp:0.10,0.6".parse().unwrap(), 7)
            .unwrap()
            .with_batch(2);
    let (mut lo, mut hi) = (1u64, small.limits.max_storage_buffer_binding_size);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        small.limits.max_storage_buffer_binding_size = mid;
        if sret_tome::runtime::forward::max_micro_batch(
            &model.cfg,
            &model.weights,
            &spec,
            &small.limits,
        ) >= 2
        {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    small.limits.max_storage_buffer_binding_size = lo - 1;
    let split = EngineBuilder::new()
        .model("sret_t_distill")
        .schedule("exp:0.10,0.6".parse().unwrap())
        .seed(7)
        .batch(2)
        .gpu(&small)
        .pipeline_cache(engine.pipeline_cache())
        .build()
        .unwrap();
    assert_eq!(split.micro_batches(), 2);
    let from_split = split.run(&refs).unwrap();
    let err = rel_l2(from_split.as_slice(), from_textures.as_slice());
    println!("two micro-batches vs one: relative L2 {err:.2e}");
    assert!(
        err <= 1e-6,
        "micro-batched texture input: relative L2 {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Recording into the application's encoder, next to its render pass.

const SCENE: &str = r#"
struct VsOut { @builtin(position) pos: vec4<f32>, @location(0) uv: vec2<f32> };
@vertex
fn vs(@builtin(vertex_index) i: u32) -> VsOut {
    let xy = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u));
    return VsOut(vec4<f32>(xy * 2.0 - 1.0, 0.0, 1.0), xy);
}
@fragment
fn fs(v: VsOut) -> @location(0) vec4<f32> {
    let r = length(v.uv - vec2<f32>(0.4, 0.6));
    return vec4<f32>(0.5 + 0.5 * sin(30.0 * r), v.uv.x, v.uv.y * v.uv.x, 1.0);
}
"#;

#[test]
fn encode_forward_runs_in_the_callers_command_stream() {
    let engine = engine_t1();
    let App { device, queue, .. } = app();
    let (w, h) = (300u32, 200u32);
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let frame = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT
            | wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scene"),
        source: wgpu::ShaderSource::Wgsl(SCENE.into()),
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("scene"),
        layout: None,
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs"),
            compilation_options: Default::default(),
            targets: &[Some(format.into())],
        }),
        primitive: Default::default(),
        depth_stencil: None,
        multisample: Default::default(),
        multiview_mask: None,
        cache: None,
    });
    let row = (4 * w).div_ceil(256) * 256;
    let frame_copy = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("frame copy"),
        size: (row * h) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let app_logits = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app's copy of the logits"),
        size: engine.logits_bytes(),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });

    let mut enc = device.create_command_encoder(&Default::default());
    {
        let view = frame.create_view(&Default::default());
        let mut pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::RED),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&pipeline);
        pass.draw(0..3, 0..1);
    }
    engine.encode_forward(&mut enc, &frame).unwrap();
    enc.copy_buffer_to_buffer(
        engine.logits_buffer(),
        0,
        &app_logits,
        0,
        engine.logits_bytes(),
    );
    let pending = engine.encode_readback(&mut enc);
    enc.copy_texture_to_buffer(
        frame.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &frame_copy,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row),
                rows_per_image: None,
            },
        },
        frame.size(),
    );

    // Nothing has run yet: the engine neither submitted nor mapped anything on its own.
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    assert!(!pending.is_ready());

    queue.submit([enc.finish()]);
    // Asynchronous readback: a future, woken by the map callback while the "event loop" polls.
    let (pendings, logits) = drive(device, pending);
    let logits = logits.unwrap();
    assert!(
        pendings >= 1,
        "the future was ready before the GPU could have finished"
    );

    // The copy the app recorded after the forward holds the same logits.
    let copied: Vec<f32> =
        bytemuck::cast_slice(&read(&app_logits, 0, engine.logits_bytes())).to_vec();
    assert_eq!(copied, logits.as_slice());

    // The forward saw the rendered frame: the CPU path on the frame's pixels gives its logits.
    let bytes = read(&frame_copy, 0, (row * h) as u64);
    let texels: Vec<u8> = bytes
        .chunks_exact(row as usize)
        .flat_map(|r| r[..(4 * w) as usize].to_vec())
        .collect();
    let want = engine
        .run(&preprocess_rgb8(&rgb_of(&texels, w, h, format)))
        .unwrap();
    let err = rel_l2(logits.as_slice(), want.as_slice());
    println!("rendered frame vs CPU path: relative L2 {err:.2e}");
    assert!(err <= 1e-5, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Several engines on one device, several forwards in one encoder, several threads.

#[test]
fn several_engines_share_one_device_and_one_encoder() {
    let (t1, d2) = (engine_t1(), engine_d2());
    let App { device, queue, .. } = app();
    assert!(t1.device() == device && d2.device() == device);
    let x1 = sret_tome::model::synthetic_images(&cfg("sret_t"), 1, 1);
    let x2 = sret_tome::model::synthetic_images(&cfg("sret_t"), 1, 2);
    let y = sret_tome::model::synthetic_images(&cfg("sret_t_distill"), 2, 3);

    // Three forwards in one command buffer: the same engine twice (each readback recorded right
    // after its forward), then the other engine.
    let mut enc = device.create_command_encoder(&Default::default());
    t1.encode_forward(&mut enc, &x1).unwrap();
    let r1 = t1.encode_readback(&mut enc);
    t1.encode_forward(&mut enc, &x2).unwrap();
    let mut r2 = t1.encode_readback(&mut enc);
    d2.encode_forward(&mut enc, &y).unwrap();
    let r3 = d2.encode_readback(&mut enc);
    queue.submit([enc.finish()]);

    // Three ways to take them. A callback, run by whichever thread polls the device (here a
    // thread playing the application's poll loop)...
    let (tx, rx) = mpsc::channel();
    r1.on_ready(move |l| tx.send((l, std::thread::current().id())).unwrap());
    let poll_loop = {
        let device = device.clone();
        std::thread::spawn(move || {
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            std::thread::current().id()
        })
    };
    // The callback runs on whichever thread polls the device first (here the poll loop, or
    // another test's poll of a shared device); that it runs without our blocking is the point.
    let (got1, _callback_thread) = rx.recv_timeout(HANG_GUARD).unwrap();
    let got1 = got1.unwrap();
    poll_loop.join().unwrap();
    // ...polling without blocking, and blocking.
    let deadline = Instant::now() + HANG_GUARD;
    let got2 = loop {
        if let Some(l) = r2.try_take() {
            break l.unwrap();
        }
        assert!(Instant::now() < deadline);
        device.poll(wgpu::PollType::Poll).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    };
    let got3 = r3.wait().unwrap();
    assert_ne!(got1, got2);

    // The same forwards on their own: one engine used from two threads at once (each call
    // stages its own input, so neither sees the other's images)...
    let (want1, want2) = std::thread::scope(|s| {
        let a = s.spawn(|| t1.run(&x1).unwrap());
        let b = s.spawn(|| t1.run(&x2).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(got1, want1);
    assert_eq!(got2, want2);
    // ...and submitted without waiting: the call returns with the forward in flight.
    let start = Instant::now();
    let pending = d2.forward_async(&y).unwrap();
    let submitted = start.elapsed();
    assert!(
        !pending.is_ready(),
        "a mapping completes only in a later poll"
    );
    let want3 = pending.wait().unwrap();
    println!(
        "forward_async returned after {submitted:?}, the logits came {:?} later",
        start.elapsed() - submitted
    );
    assert_eq!(got3, want3);
}

fn cfg(name: &str) -> sret_tome::model::ModelConfig {
    sret_tome::model::ModelConfig::by_name(name).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Errors are found before anything is recorded.

#[test]
fn bad_inputs_are_errors_before_recording() {
    let engine = engine_d2(); // batch 2
    let App { device, queue, .. } = app();
    let good = texture(64, 48, wgpu::TextureFormat::Rgba8Unorm, &picture(64, 48, 1));
    let err = |r: sret_tome::Result<()>| r.expect_err("must fail").to_string();
    let mut enc = device.create_command_encoder(&Default::default());

    let e = err(engine.encode_forward(&mut enc, &good));
    assert!(e.contains("batch is 2"), "{e}");

    let r16 = device.create_texture(&wgpu::TextureDescriptor {
        label: None,
        size: wgpu::Extent3d {
            width: 8,
            height: 8,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba16Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let e = err(engine.encode_forward(&mut enc, &vec![&good, &r16]));
    assert!(e.contains("Rgba16Float"), "{e}");

    let unbindable = device.create_texture(&wgpu::TextureDescriptor {
        label: None,
        size: wgpu::Extent3d {
            width: 8,
            height: 8,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Bgra8Unorm,
        usage: wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let e = err(engine.encode_forward(&mut enc, &vec![&good, &unbindable]));
    assert!(e.contains("TEXTURE_BINDING"), "{e}");

    let e = err(engine.encode_forward(&mut enc, &vec![0.0f32; 10]));
    assert!(e.contains("[2, 3, 224, 224]"), "{e}");

    let small = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let e = err(engine.encode_forward(&mut enc, &small));
    assert!(e.contains("needs"), "{e}");
    let no_copy = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (engine.input_len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = err(engine.encode_forward(&mut enc, &no_copy));
    assert!(e.contains("COPY_SRC"), "{e}");

    // A texture of another device (of the same instance): wgpu's validation error, returned.
    let other = pollster::block_on(app().adapter.request_device(&Default::default()))
        .unwrap()
        .0;
    let foreign = other.create_texture(&wgpu::TextureDescriptor {
        label: Some("foreign"),
        size: wgpu::Extent3d {
            width: 8,
            height: 8,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let e = err(engine.encode_forward(&mut enc, &vec![&good, &foreign]));
    println!("foreign texture: {e}");
    assert!(e.contains("GPU error"), "{e}");

    // The encoder is still clean and usable.
    queue.submit([enc.finish()]);
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();

    // A readback whose encoder is never submitted is an error, not a hang.
    let mut enc = device.create_command_encoder(&Default::default());
    let pending = engine.encode_readback(&mut enc);
    drop(enc);
    let e = pending.wait().expect_err("never submitted").to_string();
    assert!(e.contains("submit"), "{e}");

    // Building: unknown model, empty batch.
    let e = EngineBuilder::new()
        .model("sret_xl")
        .device(device, queue)
        .build()
        .expect_err("unknown model")
        .to_string();
    assert!(e.contains("sret_xl"), "{e}");
    let e = EngineBuilder::new()
        .batch(0)
        .device(device, queue)
        .build()
        .expect_err("batch 0")
        .to_string();
    assert!(e.contains("batch"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Thread safety, checked by the compiler.

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<EngineBuilder>();
    send_sync::<Preprocessor>();
    send_sync::<PendingLogits>();
    send_sync::<Logits>();
    send_sync::<Input<'static>>();
    send_sync::<Schedule>();
    send_sync::<sret_tome::Error>();
}

// ---------------------------------------------------------------------------------------------
// The examples, run as CI runs them.

#[test]
fn example_classify_an_image_file() {
    let top5 = classify_example::classify(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.jpg"),
        None,
    )
    .unwrap();
    assert_eq!(top5.len(), 5);
    assert!(top5.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(top5.iter().map(|t| t.1).sum::<f32>() <= 1.0 + 1e-5);
}

#[test]
fn example_render_and_classify_without_leaving_the_gpu() {
    let out = render_example::render_and_classify(320, 240).unwrap();
    // The application's own top-1 kernel over the engine's logits buffer agrees with the
    // logits read back.
    assert_eq!(out.class as usize, out.logits.argmax(0));
    assert_eq!(
        out.logit.to_bits(),
        out.logits.image(0)[out.class as usize].to_bits()
    );
}

#[test]
fn example_throughput_with_double_buffered_inputs() {
    let engine = engine_t1();
    let frames = 3;
    let got = throughput_example::run(engine, frames, throughput_example::frame_images).unwrap();
    assert_eq!(got.len(), frames);
    // Frames 0 and 2 went through input A (refilled once frame 0 had read it), frame 1 through
    // input B: each frame has its own logits.
    assert_ne!(got[0], got[1]);
    assert_ne!(got[1], got[2]);
    for i in [1, 2] {
        let want = engine
            .run(&throughput_example::frame_images(engine, i))
            .unwrap();
        assert_eq!(got[i], want, "frame {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// f16 storage.

/// An engine in f16 (`Precision::F16`) on its own device (which enables `SHADER_F16` where the
/// adapter has it): host data, a GPU buffer of f16 images and textures all work, its logits
/// agree with the f32 engine's (relative L2 <= 3e-2, same top-1), its buffers are half the size,
/// and the application's device without `SHADER_F16` gets a clear error instead.
#[test]
fn an_f16_engine_runs_every_input_and_agrees_with_f32() {
    use sret_tome::Precision;
    let build = |p: Precision| {
        EngineBuilder::new()
            .model("sret_t_distill")
            .schedule("exp:0.10,0.6".parse().unwrap())
            .seed(7)
            .batch(2)
            .precision(p)
    };
    let half = match build(Precision::F16).build() {
        Ok(e) => e,
        Err(e) => {
            // Only an adapter without f16 support may refuse, and it must say so.
            assert!(e.to_string().contains("SHADER_F16"), "{e}");
            eprintln!("note: no SHADER_F16 on this adapter; f16 engine not tested");
            return;
        }
    };
    assert_eq!(half.precision(), Precision::F16);
    let full = build(Precision::F32)
        .device(half.device(), half.queue())
        .pipeline_cache(half.pipeline_cache())
        .build()
        .unwrap();
    assert_eq!(half.logits_bytes() * 2, full.logits_bytes());
    assert!(half.activation_bytes() * 10 < full.activation_bytes() * 6);

    let shapes = [
        (640, 480, wgpu::TextureFormat::Rgba8Unorm),
        (333, 500, wgpu::TextureFormat::Bgra8UnormSrgb),
    ];
    let (device, queue) = (half.device(), half.queue());
    let mut textures = Vec::new();
    let mut host = Vec::new();
    for (i, &(w, h, f)) in shapes.iter().enumerate() {
        let texels = picture(w, h, 7 + i as u64);
        let t = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("picture"),
            size: wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: f,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        queue.write_texture(
            t.as_image_copy(),
            &texels,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(4 * w),
                rows_per_image: None,
            },
            t.size(),
        );
        textures.push(t);
        host.extend(preprocess_rgb8(&rgb_of(&texels, w, h, f)));
    }
    let from_host = half.run(&host).unwrap();
    let reference = full.run(&host).unwrap();
    let err = rel_l2(from_host.as_slice(), reference.as_slice());
    println!("f16 vs f32 engine, host input: relative L2 {err:.2e}");
    // The bound of tests/model.rs for a merging schedule: f16 keys may resolve a near-tie of
    // the matching differently, which moves a whole token.
    assert!(err <= 3e-2, "f16 logits: relative L2 {err} against f32");
    for i in 0..2 {
        assert_eq!(
            from_host.argmax(i),
            reference.argmax(i),
            "top-1 of image {i}"
        );
    }

    // Textures through the f16 preprocessing kernel: the same images as the host path up to the
    // last bit of an f16 (the GPU's f32 normalisation may round apart by 1e-6 before that).
    let refs: Vec<&wgpu::Texture> = textures.iter().collect();
    let from_textures = half.run(&refs).unwrap();
    let err = rel_l2(from_textures.as_slice(), from_host.as_slice());
    println!("f16 engine, texture vs host input: relative L2 {err:.2e}");
    assert!(err <= 1e-3, "f16 texture input: relative L2 {err}");

    // A buffer of the application's holding f16 images.
    let halves = sret_tome::runtime::forward::encode_elems(&host, true);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("f16 images"),
        size: 512 + halves.len() as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 512, &halves);
    let from_buffer = half
        .run(Input::Buffer {
            buffer: &buffer,
            offset: 512,
        })
        .unwrap();
    assert_eq!(from_buffer.as_slice(), from_host.as_slice());
    // The logits buffer holds f16 values: exactly what the readback decoded.
    let raw = read_on(device, queue, half.logits_buffer(), 0, half.logits_bytes());
    let decoded = sret_tome::runtime::forward::decode_elems(&raw, true);
    assert_eq!(decoded, from_buffer.as_slice());

    // The application's device was created without SHADER_F16.
    if !app().device.features().contains(wgpu::Features::SHADER_F16) {
        let Err(err) = build(Precision::F16)
            .device(&app().device, &app().queue)
            .build()
        else {
            panic!("an f16 engine on a device without SHADER_F16 was built");
        };
        assert!(err.to_string().contains("SHADER_F16"), "{err}");
    }
}

/// The GPU preprocessing is the ImageNet transform: models with another input size or
/// normalisation (AugReg ViTs: mean and std 0.5) refuse textures instead of misreading them.
#[test]
fn textures_are_refused_where_the_model_needs_another_transform() {
    let engine = EngineBuilder::new()
        .model("vit_tiny_patch16_224@depth=1")
        .synthetic_weights()
        .device(&app().device, &app().queue)
        .autotune(sret_tome::api::Autotune::Off)
        .build()
        .unwrap();
    let texels = vec![128u8; 64 * 48 * 4];
    let t = texture(64, 48, wgpu::TextureFormat::Rgba8Unorm, &texels);
    let e = engine.run(&[&t][..]).unwrap_err().to_string();
    assert!(e.contains("ImageNet transform") && e.contains("0.5"), "{e}");
}

/// A traced forward awaited (the browser's path) gives the blocking one's logits and trace, and
/// a second traced forward while one is in flight is refused, not interleaved nor waited for.
#[test]
fn traced_forward_awaited_equals_the_blocking_one() {
    let App { device, queue, .. } = app();
    let engine = EngineBuilder::new()
        .model("sret_t")
        .synthetic_weights()
        .schedule("exp:0.25,0".parse().unwrap())
        .device(device, queue)
        .autotune(sret_tome::api::Autotune::Off)
        .trace(true)
        .build()
        .unwrap();
    let cfg = engine.planned().config().clone();
    let images = sret_tome::model::synthetic_images(&cfg, 1, 17);
    let blocking = engine.forward(&images).unwrap();

    let mut first = std::pin::pin!(engine.forward_traced_async(images.as_slice()));
    let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
    assert!(first
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let (_, second) = drive(device, engine.forward_traced_async(images.as_slice()));
    let e = second
        .err()
        .expect("a second traced forward in flight is refused");
    assert!(matches!(e, sret_tome::Error::Busy { .. }), "{e}");
    // A blocking traced forward meanwhile is refused too, not waited for (no deadlock).
    let e = engine
        .forward(&images)
        .err()
        .expect("refused while one is awaited");
    assert!(matches!(e, sret_tome::Error::Busy { .. }), "{e}");

    let (_, awaited) = drive(device, first);
    let awaited = awaited.unwrap();
    assert_eq!(awaited.logits, blocking.logits);
    let (a, b) = (awaited.trace.unwrap(), blocking.trace.unwrap());
    assert!(
        a.merges.iter().any(|m| m.n_out < m.n_in),
        "the schedule merges"
    );
    assert_eq!(a.merges, b.merges);
    assert_eq!(a.stage_maps, b.stage_maps);
}
