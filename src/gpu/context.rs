//! The device the engine runs on: either one we create (CLI use) or one borrowed from a host
//! application (its `Device` and `Queue` are cheap handles; we never create an `Instance` then).

use crate::error::{Error, Result};

/// How to pick an adapter when the engine creates its own device.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Backends to consider, e.g. "vulkan", "metal", "dx12", "gl" (comma separated). `None` reads
    /// `WGPU_BACKEND` and otherwise allows all.
    pub backends: Option<String>,
    /// Index into the list of adapters (as `sret-tome adapters` prints it). `None`: the
    /// highest-performance adapter.
    pub index: Option<usize>,
}

/// A device plus what the planner needs to know about it.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// The device every buffer and pipeline of a plan lives on.
    pub device: wgpu::Device,
    /// The device's queue.
    pub queue: wgpu::Queue,
    /// The adapter's name, backend and subgroup sizes.
    pub info: wgpu::AdapterInfo,
    /// Features enabled on `device` (what the planner may use).
    pub features: wgpu::Features,
    /// Limits of `device` (buffer sizes, workgroup sizes) the planner checks against.
    pub limits: wgpu::Limits,
    /// Set when the device is lost (for devices this crate created; a borrowed device keeps
    /// its application's lost-device callback), so errors can say so.
    lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// A 4-byte mappable buffer that [`Gpu::check_alive`] asks to map (made on first use; no
    /// object is made per check).
    probe: std::sync::Arc<std::sync::OnceLock<wgpu::Buffer>>,
    /// Serialises [`Gpu::check_alive`]'s use of `probe` between this process's threads.
    probing: std::sync::Arc<std::sync::Mutex<()>>,
    /// The device is an application's ([`Gpu::from_device`]), not one this crate created.
    borrowed: bool,
}

fn parse_backends(spec: &str) -> Result<wgpu::Backends> {
    let mut b = wgpu::Backends::empty();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        b |= match part.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" => wgpu::Backends::all(),
            other => {
                return Err(Error::arg(
                    "backend",
                    other,
                    "expected vulkan, metal, dx12, gl or all",
                ))
            }
        };
    }
    if b.is_empty() {
        return Err(Error::arg("backend", spec, "no backend named"));
    }
    Ok(b)
}

/// The backends to open: `choice.backends`, else `WGPU_BACKEND`, else the primary ones
/// (Vulkan, Metal, DX12). GL is opt-in: wgpu's EGL instance panics (`BadAccess`) when two
/// threads probe it at once, and GL is only ever a fallback for compute.
fn backends(choice: &AdapterChoice) -> Result<wgpu::Backends> {
    match &choice.backends {
        Some(spec) => parse_backends(spec),
        None => Ok(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)),
    }
}

fn instance_for(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn instance(choice: &AdapterChoice) -> Result<wgpu::Instance> {
    Ok(instance_for(backends(choice)?))
}

/// Every adapter visible with `choice.backends`, in the order `--adapter` indexes them.
pub fn list_adapters(choice: &AdapterChoice) -> Result<Vec<wgpu::AdapterInfo>> {
    let inst = instance(choice)?;
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    Ok(adapters.iter().map(|a| a.get_info()).collect())
}

/// The Mesa release `(major, minor)` in an adapter's driver description, as `sret-tome
/// adapters` prints it ("llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"), if it names one.
pub fn mesa_version(driver: &str) -> Option<(u32, u32)> {
    let at = driver.find("Mesa ")? + "Mesa ".len();
    let mut parts = driver[at..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// An error, before a device is opened, where the driver would crash under the process's
/// file-size limit (`ulimit -f`, `file_size_limit` in bytes; `None`: unlimited). The driver is
/// named as [`wgpu::AdapterInfo`]'s `driver` and `driver_info` name it.
///
/// lavapipe of Mesa 25 backs every allocation of GPU memory with a memory file
/// (`memfd_create("allocation fd")`) and `ftruncate`s it to the allocation's size without
/// checking the result: past the limit the call fails with `EFBIG`, the mapping has no pages
/// behind it, and the first write kills the process with `SIGBUS` (strace of `infer` under
/// `ulimit -f 1`, Mesa 25.0.7). Mesa 22.3.6 allocates plain memory and runs under any limit.
/// Mesa 23 and 24 were not tried: they are refused too, since the refusal names the fix and the
/// crash would not. `max_buffer_size` is the adapter's limit: a limit at least that large
/// cannot be reached by one allocation.
pub fn check_driver_file_size(
    (driver, driver_info): (&str, &str),
    max_buffer_size: u64,
    file_size_limit: Option<u64>,
) -> Result<()> {
    let Some(limit) = file_size_limit.filter(|&l| l < max_buffer_size) else {
        return Ok(());
    };
    let Some(mesa) = mesa_version(driver_info).filter(|_| driver == "llvmpipe") else {
        return Ok(());
    };
    if mesa < (23, 0) {
        return Ok(());
    }
    Err(Error::arg(
        "file-size limit",
        format!("ulimit -f {} (RLIMIT_FSIZE, {limit} bytes)", limit / 1024),
        format!(
            "lavapipe of Mesa {}.{} backs GPU memory with files that this limit cuts short, \
             which crashes the driver (SIGBUS) instead of failing; raise the limit \
             (ulimit -f unlimited), choose another adapter, or install Debian 12's Mesa 22.3 \
             (SRET_TOME_MESA=distribution scripts/setup-vulkan), which runs under any limit",
            mesa.0, mesa.1
        ),
    ))
}

/// Optional features the engine uses when present; none is required.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
}

/// Open a device on `adapter` as the engine's own [`Gpu`] does: with the [`wanted_features`]
/// the adapter has and the adapter's own limits (storage binding size, workgroup sizes), so
/// plans can use what the hardware offers. wgpu's default handler panics on an error nobody
/// captured; this device logs it instead (everything the engine does runs inside error scopes,
/// `Gpu::scoped`, so what reaches the handler escaped them).
pub async fn request_device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue)> {
    let info = adapter.get_info();
    check_driver_file_size(
        (&info.driver, &info.driver_info),
        adapter.limits().max_buffer_size,
        crate::os_limits::file_size_limit(),
    )?;
    let features = adapter.features() & wanted_features();
    log::info!(
        "adapter: {} ({:?}, {}), features {:?}, subgroups {}..{}",
        info.name,
        info.backend,
        info.driver,
        features,
        info.subgroup_min_size,
        info.subgroup_max_size
    );
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("sret-tome"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
    device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
        log::error!("uncaptured GPU error: {e}");
    }));
    Ok((device, queue))
}

impl Gpu {
    /// Create an instance, pick an adapter and open a device with the adapter's own limits
    /// (storage binding size, workgroup sizes), so plans can use what the hardware offers.
    ///
    /// Blocks on wgpu's futures (`pollster`): in a browser use [`Gpu::new_async`].
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        pollster::block_on(Gpu::new_async(choice))
    }

    /// [`Gpu::new`] awaiting wgpu's futures instead of blocking on them: the way to create a
    /// device in a browser (wasm32, WebGPU), where nothing may block.
    pub async fn new_async(choice: &AdapterChoice) -> Result<Gpu> {
        let inst = instance(choice)?;
        let adapter = match choice.index {
            Some(i) => {
                let all = inst.enumerate_adapters(wgpu::Backends::all()).await;
                let n = all.len();
                all.into_iter().nth(i).ok_or_else(|| Error::NoAdapter {
                    detail: format!(" at index {i} ({n} adapters found; see `sret-tome adapters`)"),
                })?
            }
            None => {
                let options = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                };
                let found = inst.request_adapter(&options).await;
                let chosen = backends(choice)?;
                match found {
                    Err(_) if !chosen.contains(wgpu::Backends::GL) => {
                        log::warn!(
                            "no adapter on {chosen:?}; trying GL (pass --backend gl to choose it)"
                        );
                        instance_for(wgpu::Backends::GL)
                            .request_adapter(&options)
                            .await
                    }
                    found => found,
                }
            }
            .map_err(|e| Error::NoAdapter {
                detail: format!(
                    ": {e}. On Linux without a GPU install Mesa's software Vulkan (apt-get install mesa-vulkan-drivers)"
                ),
            })?,
        };
        let info = adapter.get_info();
        let (device, queue) = request_device(&adapter).await?;
        let (features, limits) = (device.features(), device.limits());
        let lost = std::sync::Arc::new(std::sync::Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                log::error!("GPU device lost ({reason:?}): {message}");
            }
            let why = if message.is_empty() {
                format!("{reason:?}")
            } else {
                format!("{reason:?}: {message}")
            };
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        Ok(Gpu {
            lost,
            probe: Default::default(),
            probing: Default::default(),
            borrowed: false,
            device,
            queue,
            info,
            features,
            limits,
        })
    }

    /// Borrow a host application's device. The engine uses only the features and limits the
    /// device was created with.
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue, info: wgpu::AdapterInfo) -> Gpu {
        Gpu {
            lost: Default::default(),
            probe: Default::default(),
            probing: Default::default(),
            borrowed: true,
            features: device.features(),
            limits: device.limits(),
            device: device.clone(),
            queue: queue.clone(),
            info,
        }
    }

    /// Whether the device is an application's ([`Gpu::from_device`]).
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }

    /// The error for a feature `feature` that `purpose` needs and the device has not enabled:
    /// the adapter lacks it (a device this crate made enables every useful feature the adapter
    /// has), or the application created its device without it.
    pub fn missing_feature(&self, feature: &'static str, purpose: &str) -> Error {
        if self.borrowed {
            Error::MissingFeature {
                feature,
                on: format!("the application's GPU device (on {})", self.info.name),
                hint: format!(
                    "{purpose}; request wgpu::Features::{feature} in the DeviceDescriptor if the \
                     adapter has it (adapter.features() & sret_tome::api::useful_features())"
                ),
            }
        } else {
            Error::MissingFeature {
                feature,
                on: format!(
                    "the GPU adapter {} ({:?})",
                    self.info.name, self.info.backend
                ),
                hint: purpose.to_string(),
            }
        }
    }

    /// Whether the device can write GPU timestamps (`Features::TIMESTAMP_QUERY`), for
    /// per-family timing.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// One line naming the adapter, backend and driver, for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {} {})",
            self.info.name, self.info.backend, self.info.driver, self.info.driver_info
        )
    }

    /// Run `f` with the device's validation and out-of-memory errors captured (error scopes on
    /// this thread): the first error becomes [`Error::Gpu`] naming `during`, instead of reaching
    /// the device's uncaptured-error handler (wgpu's default one panics).
    ///
    /// On wasm32 (a browser's WebGPU) an error scope can only be awaited, so `f` runs without
    /// scopes of its own: its errors reach the scopes its async caller pushed
    /// ([`crate::EngineBuilder::build_async`], [`crate::Engine::run_async`]) or the device's
    /// uncaptured-error handler.
    #[cfg(target_arch = "wasm32")]
    pub fn scoped<T>(&self, during: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _ = during;
        f()
    }

    /// Run `f` with the device's validation and out-of-memory errors captured (error scopes on
    /// this thread): the first error becomes [`Error::Gpu`] naming `during`, instead of reaching
    /// the device's uncaptured-error handler (wgpu's default one panics).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scoped<T>(&self, during: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let invalid = pollster::block_on(validation.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        if let Some(detail) = self.lost_reason().filter(|_| out.is_err()) {
            return Err(Error::DeviceLost {
                during: during.into(),
                detail: format!(" ({detail})"),
            });
        }
        let out = out?;
        match (out_of_memory, invalid) {
            (Some(e), _) => Err(Error::Gpu {
                during: during.into(),
                why: format!("out of GPU memory ({e}); try a smaller batch"),
            }),
            (None, Some(e)) => Err(Error::Gpu {
                during: during.into(),
                why: error_text(&e),
            }),
            (None, None) => Ok(out),
        }
    }

    /// Why the device was lost, if it was known to be: reported by the lost-device callback
    /// (devices this crate created) or found by [`Gpu::check_alive`].
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`Error::DeviceLost`] when the device was destroyed or lost, found without waiting and
    /// without creating anything after the first call: a request to map a small buffer of the
    /// engine's fails at once on such a device (wgpu otherwise drops a lost device's errors
    /// silently, and some calls on it panic). Safe to call from any number of threads while
    /// others poll. Works on an application's device too, whose
    /// lost-device callback stays the application's.
    pub fn check_alive(&self, during: &str) -> Result<()> {
        let lost = |detail: String| Error::DeviceLost {
            during: during.into(),
            detail: format!(" ({detail})"),
        };
        if let Some(why) = self.lost_reason() {
            return Err(lost(why));
        }
        let probe = self.probe.get_or_init(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("device-loss probe"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        // Another thread's `poll` can take our pending mapping out of the buffer's state and
        // only then mark it mapped (wgpu-core's `Buffer::map`), so our `unmap` may find nothing
        // to unmap and the buffer stay mapped. Each try therefore unmaps first, and a failed
        // request is retried: on a lost device every request fails at once. The validation
        // errors of unmapping an unmapped buffer stay in this scope (this thread's only).
        let _scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let _one_at_a_time = self.probing.lock().unwrap_or_else(|p| p.into_inner());
        let mut dead = true;
        for _ in 0..3 {
            probe.unmap();
            let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = failed.clone();
            probe.map_async(wgpu::MapMode::Read, .., move |r| {
                if r.is_err() {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
            // A live device has only queued the mapping (or, from another thread's poll,
            // completed it): read the verdict before `unmap` cancels it, which calls back
            // with an error.
            dead = failed.load(std::sync::atomic::Ordering::SeqCst);
            probe.unmap();
            if !dead {
                break;
            }
        }
        if dead {
            let why = "the device was destroyed or lost".to_string();
            *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            return Err(lost(why));
        }
        Ok(())
    }

    /// Block until the queue is idle, turning a lost device into an error instead of a hang.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu {
                during: "wait".into(),
                why: e.to_string(),
            })
    }
}

/// A wgpu error on one line: wgpu writes "Validation Error", then "Caused by:" and the chain
/// of causes (the call, the object's label, the rule broken), one per line.
pub fn error_text(e: &wgpu::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect::<Vec<_>>()
        .join(": ")
}

/// A buffer holding `contents` (`create_buffer_init` without its panic): on a destroyed or
/// lost device the mapping wgpu writes through fails, and that is [`Error::DeviceLost`].
pub fn buffer_with(
    device: &wgpu::Device,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    // Mapped at creation, the size must be a multiple of 4 (COPY_BUFFER_ALIGNMENT).
    let size = (contents.len() as u64).div_ceil(4).max(1) * 4;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| Error::DeviceLost {
                during: format!("creating {label}"),
                detail: format!(
                    " (its memory could not be mapped: {e}; the device was destroyed or lost)"
                ),
            })?;
        view.slice(..contents.len()).copy_from_slice(contents);
    }
    buffer.unmap();
    Ok(buffer)
}

/// The error for a mapping of one of the engine's buffers that failed: the engine never
/// destroys its buffers while it lives, so the device was destroyed or lost.
pub fn lost_in_readback(e: wgpu::BufferAsyncError) -> Error {
    Error::DeviceLost {
        during: "readback".into(),
        detail: format!(" (mapping the results failed: {e}; the device was destroyed or lost)"),
    }
}

/// A value a wgpu callback delivers once (a buffer mapping, say), as a future: [`OneShot::new`]
/// gives the future and the callback that completes it. Awaiting it blocks nothing; natively
/// something must poll the device meanwhile, in a browser the event loop runs the callback.
pub struct OneShot<T>(std::sync::Arc<std::sync::Mutex<(Option<T>, Option<std::task::Waker>)>>);

impl<T: Send + 'static> OneShot<T> {
    /// The future and the callback that fills it.
    pub fn new() -> (OneShot<T>, impl FnOnce(T) + Send + 'static) {
        let cell =
            std::sync::Arc::new(std::sync::Mutex::new((None::<T>, None::<std::task::Waker>)));
        let fill = cell.clone();
        let callback = move |v: T| {
            let waker = {
                let mut c = fill.lock().unwrap_or_else(|p| p.into_inner());
                c.0 = Some(v);
                c.1.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        };
        (OneShot(cell), callback)
    }
}

impl<T> std::future::Future for OneShot<T> {
    type Output = T;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match c.0.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                c.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

/// The contents of a buffer whose mapping for reading has completed; unmaps it.
fn copy_mapped<T: bytemuck::Pod>(buf: &wgpu::Buffer) -> Result<Vec<T>> {
    let data = {
        let view = buf.slice(..).get_mapped_range().map_err(|e| Error::Gpu {
            during: "readback".into(),
            why: e.to_string(),
        })?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    buf.unmap();
    Ok(data)
}

/// [`read_buffer`] awaited instead of waited for (see [`OneShot`] on polling).
pub async fn read_buffer_async<T: bytemuck::Pod>(buf: &wgpu::Buffer) -> Result<Vec<T>> {
    let (mapped, callback) = OneShot::new();
    buf.slice(..).map_async(wgpu::MapMode::Read, callback);
    mapped.await.map_err(lost_in_readback)?;
    copy_mapped(buf)
}

/// Map a staging buffer and copy it out; a lost device is an error, not a hang.
pub fn read_buffer<T: bytemuck::Pod>(gpu: &Gpu, buf: &wgpu::Buffer) -> Result<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|e| Error::Gpu {
            during: "readback".into(),
            why: e.to_string(),
        })?
        .map_err(lost_in_readback)?;
    copy_mapped(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        assert_eq!(parse_backends("vulkan").unwrap(), wgpu::Backends::VULKAN);
        assert_eq!(
            parse_backends("Vulkan, metal").unwrap(),
            wgpu::Backends::VULKAN | wgpu::Backends::METAL
        );
        let e = parse_backends("cuda").unwrap_err().to_string();
        assert!(e.contains("cuda"), "{e}");
    }

    #[test]
    fn lavapipe_of_mesa_25_is_refused_under_a_file_size_limit_others_are_not() {
        let mesa25 = ("llvmpipe", "Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)");
        let mesa22 = ("llvmpipe", "Mesa 22.3.6 (LLVM 15.0.6)");
        let other = ("NVIDIA", "580.82");
        let max = 1 << 31;
        let e = check_driver_file_size(mesa25, max, Some(1024))
            .unwrap_err()
            .to_string();
        for part in [
            "ulimit -f 1 ",
            "1024 bytes",
            "Mesa 25.0",
            "SIGBUS",
            "unlimited",
        ] {
            assert!(e.contains(part), "{part:?} missing from {e}");
        }
        // No limit, or one no allocation can reach: nothing to refuse.
        assert!(check_driver_file_size(mesa25, max, None).is_ok());
        assert!(check_driver_file_size(mesa25, max, Some(max)).is_ok());
        // Mesa 22.3 allocates plain memory; other drivers name no Mesa release.
        assert!(check_driver_file_size(mesa22, max, Some(1024)).is_ok());
        assert!(check_driver_file_size(other, max, Some(1024)).is_ok());
    }
}
