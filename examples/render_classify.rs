//! A headless wgpu application that renders a frame into a texture and classifies it without the
//! frame leaving the GPU: one command encoder holds the render pass, the engine's preprocessing
//! and forward, and the application's own top-1 kernel reading the engine's logits buffer; only
//! 8 bytes (class and logit) come back, asynchronously.
//!
//! `cargo run --release --example render_classify -- [WIDTH HEIGHT]`
//!
//! The engine runs on the application's device (no Instance or Device of its own), here with
//! WebGPU's default limits. Weights are synthetic, so the class is meaningless; pass
//! `.weights(path)` to the builder for real ones.

use std::sync::mpsc;

use sret_tome::{Engine, Logits};

/// The application's frame: a full-screen triangle with a colourful procedural pattern.
const SCENE: &str = r#"
struct VsOut { @builtin(position) pos: vec4<f32>, @location(0) uv: vec2<f32> };

@vertex
fn vs(@builtin(vertex_index) i: u32) -> VsOut {
    let xy = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u));
    return VsOut(vec4<f32>(xy * 2.0 - 1.0, 0.0, 1.0), xy);
}

@fragment
fn fs(v: VsOut) -> @location(0) vec4<f32> {
    let c = v.uv - vec2<f32>(0.5, 0.45);
    let r = length(c);
    let rings = 0.5 + 0.5 * cos(40.0 * r);
    let sky = mix(vec3<f32>(0.2, 0.4, 0.9), vec3<f32>(0.9, 0.8, 0.5), v.uv.y);
    let sun = vec3<f32>(1.0, 0.5 + 0.5 * sin(9.0 * v.uv.x), 0.1) * rings;
    return vec4<f32>(select(sky, sun, r < 0.3), 1.0);
}
"#;

/// The application's consumer of the logits: the best class and its logit, on the GPU.
const TOP1: &str = r#"
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> best: array<u32, 2>;

@compute @workgroup_size(1)
fn main() {
    var k = 0u;
    for (var c = 1u; c < 1000u; c++) {
        if (logits[c] > logits[k]) { k = c; }
    }
    best[0] = k;
    best[1] = bitcast<u32>(logits[k]);
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (w, h) = (*args.first().unwrap_or(&640), *args.get(1).unwrap_or(&480));
    let out = render_and_classify(w, h)?;
    println!(
        "frame {w}x{h}: class {} ({}), logit {:.3}, computed on the GPU",
        out.class,
        sret_tome::imagenet_class(out.class as usize).unwrap_or("?"),
        out.logit
    );
    Ok(())
}

pub struct Outcome {
    /// What the application's top-1 kernel found.
    pub class: u32,
    pub logit: f32,
    /// The whole logits, read back asynchronously as well (for checking).
    pub logits: Logits,
}

pub fn render_and_classify(width: u32, height: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    // The application's own device, with WebGPU's default limits and whichever of the features
    // the engine can use the adapter has (none is required).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & sret_tome::api::useful_features(),
        ..Default::default()
    }))?;

    let engine = Engine::builder().device(&device, &queue).build()?;

    let format = wgpu::TextureFormat::Rgba8UnormSrgb;
    let frame = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let scene = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scene"),
        source: wgpu::ShaderSource::Wgsl(SCENE.into()),
    });
    let render = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("scene"),
        layout: None,
        vertex: wgpu::VertexState {
            module: &scene,
            entry_point: Some("vs"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        fragment: Some(wgpu::FragmentState {
            module: &scene,
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

    // The top-1 kernel reads the engine's logits buffer where it is.
    let top1 = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("top1"),
        layout: None,
        module: &device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("top1"),
            source: wgpu::ShaderSource::Wgsl(TOP1.into()),
        }),
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let best = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("best"),
        size: 8,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let best_readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("best readback"),
        size: 8,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let top1_bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("top1"),
        layout: &top1.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: engine.logits_buffer().as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: best.as_entire_binding(),
            },
        ],
    });

    // One frame: render, classify, consume, all in one command buffer.
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let view = frame.create_view(&Default::default());
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&render);
        pass.draw(0..3, 0..1);
    }
    engine.encode_forward(&mut encoder, &frame)?;
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&top1);
        pass.set_bind_group(0, &top1_bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&best, 0, &best_readback, 0, 8);
    let (tx, rx) = mpsc::channel();
    encoder.map_buffer_on_submit(&best_readback, wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    let logits = engine.encode_readback(&mut encoder);
    queue.submit([encoder.finish()]);

    // The application's event loop would poll once per frame; here we just wait.
    device.poll(wgpu::PollType::wait_indefinitely())?;
    rx.recv()??;
    let best: [u32; 2] = {
        let view = best_readback.get_mapped_range(..)?;
        bytemuck::pod_read_unaligned(&view[..8])
    };
    best_readback.unmap();
    Ok(Outcome {
        class: best[0],
        logit: f32::from_bits(best[1]),
        logits: logits.wait()?,
    })
}
