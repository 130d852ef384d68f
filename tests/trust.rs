//! Right answers or an error: every forward returns the logits of that forward or an `Err`,
//! whatever an application hands the engine (a buffer or texture of another engine's device,
//! an offset near `u64::MAX`, destroyed inputs), and a destroyed device is
//! [`Error::DeviceLost`] on every call after it, never a panic.

use sret_tome::api::{Autotune, TuneCache, Validation};
use sret_tome::gpu::Gpu;
use sret_tome::kernels::{KernelKind, Variant, Variants};
use sret_tome::{Engine, EngineBuilder, Error, Input, PipelineCache};

fn builder() -> EngineBuilder {
    Engine::builder()
        .synthetic_weights()
        .autotune(Autotune::Off)
        .validate_kernels(false)
}

fn new_engine() -> Engine {
    builder().build().expect("engine")
}

fn images(engine: &Engine, value: f32) -> Vec<f32> {
    (0..engine.input_len())
        .map(|i| value * ((i % 97) as f32 / 97.0 - 0.5))
        .collect()
}

fn texture(device: &wgpu::Device, side: u32) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: side,
            height: side,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    })
}

fn input_buffer(engine: &Engine, device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("images"),
        size: 4 * engine.input_len() as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// An application's own submission of `encoder`, with whatever wgpu raises about it (its
/// uncaptured-error handler, or a panic on a resource of another `Instance`) swallowed: what
/// the engine's readback then says is what is tested.
fn app_submit(engine: &Engine, encoder: wgpu::CommandEncoder) {
    let scope = engine
        .device()
        .push_error_scope(wgpu::ErrorFilter::Validation);
    let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.queue().submit([encoder.finish()]);
    }));
    let error = pollster::block_on(scope.pop());
    eprintln!(
        "application's submit: panicked {}, error {:?}",
        submitted.is_err(),
        error.map(|e| e.to_string())
    );
}

/// A forward whose commands never ran (its encoder was dropped) is not the readback's: the
/// logits in the engine's buffer are the previous forward's, and the readback says so.
#[test]
fn a_readback_of_a_forward_that_never_ran_is_an_error_not_old_logits() {
    let engine = new_engine();
    let first = engine.run(&images(&engine, 1.0)).expect("a first forward");
    let mut lost = engine.device().create_command_encoder(&Default::default());
    engine
        .encode_forward(&mut lost, &images(&engine, 2.0))
        .expect("recorded");
    drop(lost); // never submitted
    let mut encoder = engine.device().create_command_encoder(&Default::default());
    let pending = engine.encode_readback(&mut encoder);
    engine.queue().submit([encoder.finish()]);
    let err = pending
        .wait()
        .expect_err("the logits in the buffer are the first forward's");
    assert!(matches!(err, Error::NotRun { .. }), "{err}");
    // The engine still works, and a readback of a forward that ran is that forward's.
    let mut encoder = engine.device().create_command_encoder(&Default::default());
    engine
        .encode_forward(&mut encoder, &images(&engine, 1.0))
        .unwrap();
    let pending = engine.encode_readback(&mut encoder);
    engine.queue().submit([encoder.finish()]);
    assert_eq!(pending.wait().expect("logits"), first);
}

#[test]
fn an_offset_near_u64_max_is_an_argument_error() {
    let engine = new_engine();
    let buffer = input_buffer(&engine, engine.device());
    for offset in [u64::MAX - 3, u64::MAX - 4095, 4 * engine.input_len() as u64] {
        let input = Input::Buffer {
            buffer: &buffer,
            offset,
        };
        let err = engine.run(input).expect_err("out of the buffer");
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    what: "input buffer",
                    ..
                }
            ),
            "{offset}: {err}"
        );
        let mut encoder = engine.device().create_command_encoder(&Default::default());
        let err = engine
            .encode_forward(&mut encoder, input)
            .expect_err("out of the buffer");
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
}

/// Inputs of another engine's device (another wgpu `Instance`): an error from every path,
/// never a panic and never the previous forward's logits.
#[test]
fn inputs_of_another_engines_device_are_errors_not_old_logits() {
    let engine = new_engine();
    let other = new_engine();
    let previous = engine.run(&images(&engine, 1.0)).expect("a forward");
    let buffer = input_buffer(&other, other.device());
    let frame = texture(other.device(), 64);
    let inputs: [(&str, Input<'_>); 2] =
        [("buffer", (&buffer).into()), ("texture", (&frame).into())];
    for (what, input) in inputs {
        let err = engine.run(input).expect_err(what);
        eprintln!("run with a {what} of another engine: {err}");
        assert!(
            matches!(err, Error::Gpu { .. } | Error::InvalidArgument { .. }),
            "{err}"
        );
        let err = pollster::block_on(async {
            let pending = engine.run_async(input);
            // run_async needs the device polled: it fails before submitting here.
            pending.await
        })
        .expect_err(what);
        assert!(
            matches!(err, Error::Gpu { .. } | Error::InvalidArgument { .. }),
            "{err}"
        );
        // Recorded into the application's encoder: an error now, or at the latest from the
        // readback, never the previous logits.
        let mut encoder = engine.device().create_command_encoder(&Default::default());
        match engine.encode_forward(&mut encoder, input) {
            Err(e) => eprintln!("encode_forward with a {what} of another engine: {e}"),
            Ok(()) => {
                let pending = engine.encode_readback(&mut encoder);
                app_submit(&engine, encoder);
                match pending.wait() {
                    Ok(logits) => panic!(
                        "a {what} of another device gave logits (the previous forward's: {})",
                        logits == previous
                    ),
                    Err(e) => eprintln!("readback after a {what} of another engine: {e}"),
                }
            }
        }
    }
    // Both engines still work.
    assert_eq!(engine.run(&images(&engine, 1.0)).unwrap(), previous);
    other.run(&images(&other, 1.0)).unwrap();
}

#[test]
fn destroyed_inputs_are_errors_not_old_logits() {
    let engine = new_engine();
    let previous = engine.run(&images(&engine, 1.0)).expect("a forward");
    let buffer = input_buffer(&engine, engine.device());
    let frame = texture(engine.device(), 300);
    engine
        .run(&frame)
        .expect("a texture forward before the destroy");
    buffer.destroy();
    frame.destroy();
    let inputs: [(&str, Input<'_>); 2] =
        [("buffer", (&buffer).into()), ("texture", (&frame).into())];
    for (what, input) in inputs {
        let err = engine.run(input).expect_err(what);
        eprintln!("run with a destroyed {what}: {err}");
        assert!(matches!(err, Error::Gpu { .. }), "{err}");
        let mut encoder = engine.device().create_command_encoder(&Default::default());
        match engine.encode_forward(&mut encoder, input) {
            Err(e) => assert!(matches!(e, Error::Gpu { .. }), "{e}"),
            Ok(()) => {
                let pending = engine.encode_readback(&mut encoder);
                app_submit(&engine, encoder);
                let err = pending.wait().expect_err("a destroyed input ran");
                assert!(matches!(err, Error::NotRun { .. }), "{err}");
            }
        }
    }
    assert_eq!(engine.run(&images(&engine, 1.0)).unwrap(), previous);
}

/// After `device.destroy()`, every call is `DeviceLost`: building, every forward path, a
/// texture of a size not seen before, a readback. On the engine's own device and on an
/// application's (whose lost-device callback the engine does not own).
#[test]
fn every_call_after_a_device_is_destroyed_is_device_lost() {
    for borrowed in [false, true] {
        let engine = if borrowed {
            let gpu = sret_tome::gpu::Gpu::new(&Default::default()).expect("adapter");
            builder()
                .device(&gpu.device, &gpu.queue)
                .build()
                .expect("engine")
        } else {
            new_engine()
        };
        let x = images(&engine, 1.0);
        engine.run(&x).expect("a forward before the loss");
        engine
            .run(&texture(engine.device(), 100))
            .expect("a texture");
        let buffer = input_buffer(&engine, engine.device());
        let seen = texture(engine.device(), 100);
        let new_size = texture(engine.device(), 123);
        let mut kept = engine.device().create_command_encoder(&Default::default());
        engine.device().destroy();
        let lost = |what: &str, r: sret_tome::Result<()>| match r {
            Err(Error::DeviceLost { .. }) => {}
            other => panic!("borrowed {borrowed}, {what}: {other:?}"),
        };
        lost("build", builder().gpu(engine.gpu()).build().map(|_| ()));
        lost("run host", engine.run(&x).map(|_| ()));
        lost("run buffer", engine.run(&buffer).map(|_| ()));
        lost("run texture", engine.run(&seen).map(|_| ()));
        lost(
            "run texture of a new size",
            engine.run(&new_size).map(|_| ()),
        );
        lost(
            "preprocessor, new size",
            engine.preprocessor().encode(
                &mut kept,
                &[&new_size],
                engine.planned().input_buffer(),
                0,
            ),
        );
        lost(
            "run_async",
            pollster::block_on(engine.run_async(&x)).map(|_| ()),
        );
        lost("forward_async", engine.forward_async(&x).map(|_| ()));
        lost("forward", engine.forward(&x).map(|_| ()));
        lost("time_forward", engine.time_forward().map(|_| ()));
        let mut encoder = engine.device().create_command_encoder(&Default::default());
        lost("encode_forward", engine.encode_forward(&mut encoder, &x));
        let pending = engine.encode_readback(&mut encoder);
        engine.queue().submit([encoder.finish()]);
        lost("readback", pending.wait().map(|_| ()));
    }
}

/// A live device is never taken for a lost one, however many threads ask while others poll:
/// a probe buffer shared between calls once raced with another thread's `poll` (which takes a
/// pending mapping out of the buffer before marking it mapped), was left mapped, and from then
/// on every check said "lost" on a healthy device (a kernel-test run failed so).
#[test]
fn checking_the_device_while_other_threads_poll_never_says_lost() {
    let gpu = Gpu::new(&Default::default()).expect("adapter");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    gpu.device.poll(wgpu::PollType::Poll).expect("poll");
                }
            });
        }
        let checkers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..5000 {
                        gpu.check_alive("a stress test")
                            .unwrap_or_else(|e| panic!("check {i} on a live device: {e}"));
                    }
                })
            })
            .collect();
        let results: Vec<_> = checkers.into_iter().map(|c| c.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in results {
            r.expect("a checker panicked");
        }
    });
    assert_eq!(gpu.lost_reason(), None);
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sret-trust-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// The kernel check can fail: a variant made wrong (the test hook perturbs what the check sees
/// of it) is rejected, said in `Engine::kernels`, and the engine runs the portable kernel, so
/// its logits are exactly those of an engine pinned to the portable kernel for that kind.
/// Without the fault every variant passes, the verdict is cached and read back.
#[test]
fn a_wrong_kernel_variant_is_rejected_and_the_portable_kernel_runs() {
    let gpu = Gpu::new(&Default::default()).expect("adapter");
    let cache = PipelineCache::default();
    let dir = scratch("validate");
    let on = |b: EngineBuilder| {
        b.gpu(&gpu)
            .pipeline_cache(&cache)
            .validate_kernels(true)
            .autotune_cache(&dir)
    };
    let preferred = Variants::default();
    let linear = preferred.get(KernelKind::Linear);
    if linear == Variant::Portable || !gpu.features.contains(wgpu::Features::SUBGROUP) {
        eprintln!("no subgroups on this adapter: the default linear kernel is portable already");
        return;
    }
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = said.clone();
    let wrong = on(builder())
        .validation_fault(KernelKind::Linear)
        .on_progress(move |line| log.lock().unwrap().push(line.to_string()))
        .build()
        .expect("engine");
    let said = said.lock().unwrap().clone();
    assert!(
        said.len() == 2
            && said[0].starts_with("checking the kernel variants")
            && said[1].starts_with("kernel check done in"),
        "{said:?}"
    );
    let k = wrong.kernels();
    eprintln!("with a wrong linear variant: {k}");
    assert_eq!(k.validation, Validation::Checked);
    assert_eq!(k.rejected.len(), 1, "{:?}", k.rejected);
    let r = &k.rejected[0];
    assert_eq!((r.kind, r.variant), (KernelKind::Linear, linear));
    assert!(r.error > r.tolerance, "{r:?}");
    assert_eq!(k.preferred.get(KernelKind::Linear), Variant::Portable);
    let runs = |e: &Engine, kind| {
        e.kernels()
            .used
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|u| u.1)
    };
    assert_eq!(runs(&wrong, KernelKind::Linear), Some(Variant::Portable));
    // The other kinds keep their variants.
    for kind in [KernelKind::Attention, KernelKind::Matching] {
        assert_eq!(k.preferred.get(kind), preferred.get(kind), "{kind:?}");
    }
    // A fault is never cached.
    assert!(TuneCache::in_dir(&dir).entries().is_empty());
    // The matching kernel, which an unmerged forward does not run, is checked at kernel level
    // (metric and matching step 1 at the first stage's shape): a wrong one is rejected too.
    if preferred.get(KernelKind::Matching) != Variant::Portable {
        let wrong = on(builder())
            .validation_fault(KernelKind::Matching)
            .build()
            .expect("engine");
        let k = wrong.kernels();
        eprintln!("with a wrong matching variant: {k}");
        let r = k
            .rejected
            .iter()
            .find(|r| r.kind == KernelKind::Matching)
            .unwrap_or_else(|| panic!("matching not rejected: {k}"));
        assert!(r.error > r.tolerance, "{r:?}");
        assert_eq!(k.preferred.get(KernelKind::Matching), Variant::Portable);
        assert_eq!(k.rejected.len(), 1, "{k}");
    }
    let mut pins = preferred;
    pins.set(KernelKind::Linear, Variant::Portable);
    let portable = builder()
        .gpu(&gpu)
        .pipeline_cache(&cache)
        .autotune(Autotune::Pin(pins))
        .build()
        .expect("engine");
    let x = images(&wrong, 1.0);
    assert_eq!(wrong.run(&x).unwrap(), portable.run(&x).unwrap());

    // Without the fault the variants agree; the verdict is cached, for every schedule.
    let good = on(builder()).build().expect("engine");
    assert_eq!(
        good.kernels().validation,
        Validation::Checked,
        "{}",
        good.kernels()
    );
    assert!(good.kernels().rejected.is_empty(), "{}", good.kernels());
    assert_eq!(good.kernels().preferred, preferred);
    // One verdict per kind and variant checked.
    let checked = KernelKind::ALL
        .into_iter()
        .filter(|&k| preferred.get(k) != Variant::Portable)
        .count();
    assert_eq!(TuneCache::in_dir(&dir).entries().len(), checked);
    let again = on(builder())
        .schedule("constant:8".parse().unwrap())
        .build()
        .expect("engine");
    assert_eq!(again.kernels().validation, Validation::Cached);
    assert!(again.kernels().rejected.is_empty());
    // Pinned and default choices are checked too; only the opt-out skips it.
    let off = builder().gpu(&gpu).pipeline_cache(&cache).build().unwrap();
    assert_eq!(off.kernels().validation, Validation::Off);
    let all_portable = on(builder())
        .autotune(Autotune::Pin(Variants::portable()))
        .build()
        .unwrap();
    assert_eq!(
        all_portable.kernels().validation,
        Validation::NothingToCheck
    );
    std::fs::remove_dir_all(&dir).ok();
}
