//! Issue 17, "nothing lost, nothing unbounded": each numbered case of the issue is a test that
//! runs the command line as a child and checks the error (or warning), the exit code (1, never
//! 101 or a signal), the child's peak resident memory (from `wait4`) and that an earlier output
//! is still intact.
//!
//! A child's `ru_maxrss` includes the memory of this test process when it was spawned (Linux
//! carries the high-water mark across `exec`), so the tests here never hold large buffers:
//! files are generated and compared in chunks. Every run also reports this process's own
//! high-water mark (`parent_mib`), the floor of what a child can show.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sret-tome");

/// What a child did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    /// Peak resident set of the child, in MiB.
    peak_mib: f64,
    /// This test process's high-water mark when the child was spawned (the floor of the above).
    parent_mib: f64,
    secs: f64,
}

impl Run {
    /// Exit code 1, no panic, `needle` in stderr.
    fn refused(&self, needle: &str) -> &Self {
        assert_eq!(self.code, Some(1), "expected exit code 1: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "panicked: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "expected '{needle}' in: {self:#?}"
        );
        self
    }
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        self
    }
    fn under_mib(&self, mib: f64) -> &Self {
        assert!(
            self.peak_mib < mib,
            "peak RSS {:.1} MiB >= {mib} MiB: {self:#?}",
            self.peak_mib
        );
        self
    }
    fn within_secs(&self, s: f64) -> &Self {
        assert!(self.secs < s, "took {:.1} s >= {s} s: {self:#?}", self.secs);
        self
    }
}

/// Options of a child run.
#[derive(Default)]
struct Opts {
    /// RLIMIT_FSIZE in bytes.
    fsize: Option<u64>,
    /// RLIMIT_AS in bytes (`ulimit -v`).
    address_space: Option<u64>,
    /// Run as this uid/gid (for unreadable directories when the tests run as root).
    uid: Option<u32>,
    env: Vec<(&'static str, String)>,
    /// Killed after this long (the test then fails on the signal).
    timeout: Option<Duration>,
}

fn run_opts(args: &[&str], o: Opts) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        );
    for (k, v) in &o.env {
        cmd.env(k, v);
    }
    for (resource, limit) in [
        (libc::RLIMIT_FSIZE, o.fsize),
        (libc::RLIMIT_AS, o.address_space),
    ] {
        let Some(limit) = limit else { continue };
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if let Some(uid) = o.uid {
        cmd.uid(uid).gid(uid).env("HOME", std::env::temp_dir());
    }
    let parent_mib = own_hwm_mib();
    let start = Instant::now();
    // Reaped below with wait4 (for its rusage), not Child::wait.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("spawn the binary");
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let done = Arc::new(AtomicBool::new(false));
    if let Some(t) = o.timeout {
        let done = done.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + t;
            while Instant::now() < end {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !done.load(Ordering::Relaxed) {
                // SAFETY: plain kill of our own child's pid (not yet reaped: `done` is unset).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for this child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, Ordering::Relaxed);
    assert_eq!(r, pid, "wait4");
    let secs = start.elapsed().as_secs_f64();
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    Run {
        code,
        signal,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        peak_mib: ru.ru_maxrss as f64 / 1024.0,
        parent_mib,
        secs,
    }
}

/// VmHWM of this process, in MiB.
fn own_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A checksum of a file, read in chunks (never the whole file in memory).
fn digest(path: &Path) -> (u64, u64) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut h, mut n) = (0xcbf29ce484222325u64, 0u64);
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        for &b in &buf[..k] {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        n += k as u64;
    }
    (h, n)
}

fn run(args: &[&str]) -> Run {
    run_opts(
        args,
        Opts {
            timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sret-tome-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|x| x.as_str()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// No `.NAME.tmp-*` file left in `dir`.
fn no_temporaries(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        left.is_empty(),
        "temporaries left in {}: {left:?}",
        dir.display()
    );
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(s(p)).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn png(p: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([x as u8 * 7 + seed, y as u8 * 5, seed.wrapping_mul(31)])
    });
    img.save(p).unwrap();
}

// --- Checkpoints built by hand (as torch.save writes them) ---------------------------------

fn binunicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn int(v: u64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// `(name, storage key, storage numel, size, stride)` of one tensor.
type TensorSpec<'a> = (&'a str, &'a str, u64, &'a [u64], &'a [u64]);

/// A state dict pickle of `tensors`.
fn pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    for (name, key, numel, size, stride) in tensors {
        p.extend(binunicode(name));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        p.extend(binunicode("storage"));
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend(binunicode(key));
        p.extend(binunicode("cpu"));
        p.extend(int(*numel));
        p.extend(b"tQ");
        p.extend(int(0));
        for dims in [*size, *stride] {
            p.push(b'(');
            for &d in dims {
                p.extend(int(d));
            }
            p.push(b't');
        }
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

/// A zip of `entries`; `deflate` compresses the storages. An empty entry with a name ending
/// in `#zeros=N` is written as N zero bytes, in chunks.
fn zip_file(path: &Path, entries: &[(String, Vec<u8>)], deflate: bool) {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let f = std::fs::File::create(path).unwrap();
    let mut w = zip::ZipWriter::new(f);
    for (name, data) in entries {
        let method = if deflate && name.contains("/data/") {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = SimpleFileOptions::default().compression_method(method);
        match name.split_once("#zeros=") {
            Some((name, n)) => {
                w.start_file(name, opts).unwrap();
                let chunk = vec![0u8; 1 << 20];
                let mut left: u64 = n.parse().unwrap();
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    w.write_all(&chunk[..k]).unwrap();
                    left -= k as u64;
                }
            }
            None => {
                w.start_file(name.as_str(), opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
    }
    w.finish().unwrap();
}

fn good_checkpoint(path: &Path, numel: u64) {
    let data: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    zip_file(
        path,
        &[
            (
                "a/data.pkl".into(),
                pickle(&[("w", "0", numel, &[numel], &[1])]),
            ),
            ("a/data/0".into(), data),
        ],
        false,
    );
}

// --- 1. Small checkpoints, large memory ----------------------------------------------------

#[test]
fn deflated_storages_past_the_budget_are_refused_before_inflating() {
    let d = tmpdir("c1a");
    // Three storages of 64 MiB of zeros each, deflated to ~64 KiB each: 192 MiB declared by a
    // file of ~200 KiB, over the budget of 4 x 200 KiB + 64 MiB.
    let n: u64 = 16 << 20;
    let pth = d.join("bomb.pth");
    zip_file(
        &pth,
        &[
            (
                "a/data.pkl".into(),
                pickle(&[
                    ("a", "0", n, &[n], &[1]),
                    ("b", "1", n, &[n], &[1]),
                    ("c", "2", n, &[n], &[1]),
                ]),
            ),
            (format!("a/data/0#zeros={}", n * 4), vec![]),
            (format!("a/data/1#zeros={}", n * 4), vec![]),
            (format!("a/data/2#zeros={}", n * 4), vec![]),
        ],
        true,
    );
    let size = std::fs::metadata(&pth).unwrap().len();
    assert!(size < 2 << 20, "the test file is small ({size} bytes)");
    let out = d.join("out.safetensors");
    std::fs::write(&out, b"earlier output").unwrap();
    let r = run(&["convert", s(&pth), s(&out)]);
    r.refused("reading budget").under_mib(100.0);
    eprintln!(
        "case 1a: {size}-byte checkpoint declaring 201326592 bytes: exit {:?}, peak {:.1} MiB (this process: {:.1}), {}",
        r.code,
        r.peak_mib,
        r.parent_mib,
        r.stderr.trim()
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier output");
    // The same file as weights.
    let r = run(&[
        "infer",
        "--weights",
        s(&pth),
        "--images",
        s(&pth),
        "--out",
        s(&d.join("o")),
    ]);
    r.refused("reading budget").under_mib(100.0);
}

#[test]
fn broadcast_view_past_the_budget_is_refused() {
    let d = tmpdir("c1b");
    // One element of storage viewed 2^30 times through stride 0 (a 4 GiB tensor as f32).
    let pth = d.join("stride0.pth");
    zip_file(
        &pth,
        &[
            (
                "a/data.pkl".into(),
                pickle(&[("w", "0", 1, &[1 << 30], &[0])]),
            ),
            ("a/data/0".into(), 1f32.to_le_bytes().to_vec()),
        ],
        false,
    );
    let size = std::fs::metadata(&pth).unwrap().len();
    let out = d.join("out.safetensors");
    std::fs::write(&out, b"earlier output").unwrap();
    let r = run(&["convert", s(&pth), s(&out)]);
    r.refused("broadcast view").under_mib(100.0);
    eprintln!(
        "case 1b: {size}-byte checkpoint, stride 0 over 2^30 elements: exit {:?}, peak {:.1} MiB (this process: {:.1}), {}",
        r.code,
        r.peak_mib,
        r.parent_mib,
        r.stderr.trim()
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier output");
    no_temporaries(&d);
    // A real conversion still works and replaces the file.
    let good = d.join("good.pth");
    good_checkpoint(&good, 1000);
    run(&["convert", s(&good), s(&out)]).ok();
    assert_ne!(std::fs::read(&out).unwrap(), b"earlier output");
    // A 32 MiB checkpoint (stored, as torch.save writes) converts within a few times its size:
    // the storage, the f32 tensor and its safetensors form.
    let big = d.join("big.pth");
    let n: u64 = 8 << 20;
    zip_file(
        &big,
        &[
            ("a/data.pkl".into(), pickle(&[("w", "0", n, &[n], &[1])])),
            (format!("a/data/0#zeros={}", n * 4), vec![]),
        ],
        false,
    );
    let r = run(&["convert", s(&big), s(&out)]);
    r.ok().under_mib(4.0 * 32.0 + 16.0);
    eprintln!(
        "case 1: converting a 32 MiB checkpoint: peak {:.1} MiB (this process: {:.1})",
        r.peak_mib, r.parent_mib
    );
}

// --- 2. A stuck file in the data folder ----------------------------------------------------

#[test]
fn eval_with_a_fifo_in_the_data_folder_finishes() {
    let d = tmpdir("c2");
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    mkfifo(&data.join("0000.jpg"));
    for i in 1..=3u8 {
        png(&data.join(format!("{i:04}.png")), i);
    }
    let json = d.join("eval.json");
    let r = run_opts(
        &[
            "eval",
            "--data",
            s(&data),
            "--batch",
            "2",
            "--workers",
            "2",
            "--json",
            s(&json),
        ],
        Opts {
            timeout: Some(Duration::from_secs(100)),
            ..Default::default()
        },
    );
    r.ok().under_mib(1500.0);
    assert!(
        r.stdout.contains("unreadable images (not counted): 1"),
        "{r:#?}"
    );
    assert!(r.stdout.contains("FIFO"), "{r:#?}");
    assert!(r.stdout.contains("3 images"), "{r:#?}");
    eprintln!(
        "case 2: eval with a FIFO and 3 images: exit {:?} in {:.1} s, peak {:.1} MiB",
        r.code, r.secs, r.peak_mib
    );
}

#[test]
fn loader_window_and_timeout_bound_a_stuck_sample() {
    use sret_tome::eval::dataset::{Sample, SampleItem};
    use sret_tome::eval::loader::{Decoder, Loader};
    let cfg = sret_tome::model::ModelConfig::by_name("sret_t").unwrap();
    let per = 3 * cfg.image_size * cfg.image_size;
    let samples: Vec<Sample> = (0..120)
        .map(|i| Sample {
            index: i,
            item: SampleItem::Synthetic { seed: i as u64 },
            label: None,
        })
        .collect();
    let release = Arc::new(AtomicBool::new(false));
    let r2 = release.clone();
    // Sample 0 blocks (like a read that never returns) until the test ends.
    let decoder: Decoder = Arc::new(move |s: &Sample| {
        if s.index == 0 {
            while !r2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(vec![0.5; per])
    });
    let start = Instant::now();
    let mut loader = Loader::with_decoder(samples, &cfg, 4, 3, Duration::from_millis(300), decoder);
    let (mut good, mut failures) = (0, Vec::new());
    for b in &mut loader {
        good += b.samples.len();
        failures.extend(b.failures);
    }
    assert_eq!(good, 119);
    assert_eq!(failures.len(), 1);
    assert!(failures[0].why.contains("no result after"), "{failures:?}");
    assert!(
        loader.peak_pending() <= loader.window(),
        "{}",
        loader.peak_pending()
    );
    eprintln!(
        "case 2: loader with one stuck sample: 119 of 120 in {:.2} s, at most {} decoded images waiting (window {})",
        start.elapsed().as_secs_f64(),
        loader.peak_pending(),
        loader.window()
    );
    release.store(true, Ordering::Relaxed);
}

// --- 3. Outputs written atomically, validated before work ---------------------------------

#[test]
fn a_write_past_the_file_size_limit_keeps_the_earlier_file() {
    let d = tmpdir("c3a");
    let good = d.join("big.pth");
    good_checkpoint(&good, 64 << 10); // 256 KiB of f32
    let out = d.join("out.safetensors");
    std::fs::write(&out, b"earlier output").unwrap();
    // `ulimit -f 64`: 64 KiB files at most.
    let r = run_opts(
        &["convert", s(&good), s(&out)],
        Opts {
            fsize: Some(64 << 10),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    assert_eq!(r.signal, None, "killed by a signal: {r:#?}");
    r.refused("cannot write");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier output");
    no_temporaries(&d);
    eprintln!(
        "case 3: convert under ulimit -f 64: exit {:?}, {}",
        r.code,
        r.stderr.trim()
    );
    // A directory that does not accept the output: refused before the input is read (as
    // nobody when the tests run as root, to whom every directory is writable).
    use std::os::unix::fs::PermissionsExt;
    let ro = d.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("out.safetensors"), b"earlier output").unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let r = run_opts(
        &["convert", s(&good), s(&ro.join("out.safetensors"))],
        Opts {
            uid: root.then_some(65534),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    r.refused("cannot create a file in").within_secs(5.0);
    assert_eq!(
        std::fs::read(ro.join("out.safetensors")).unwrap(),
        b"earlier output"
    );
    eprintln!("case 3: read-only output directory: {}", r.stderr.trim());
    // synthetic likewise (its weights are megabytes).
    let w = d.join("w.safetensors");
    std::fs::write(&w, b"earlier weights").unwrap();
    let r = run_opts(
        &["synthetic", "--model", "sret_t", "--weights-out", s(&w)],
        Opts {
            fsize: Some(64 << 10),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    assert_eq!(r.signal, None, "killed by a signal: {r:#?}");
    r.refused("cannot write");
    assert_eq!(std::fs::read(&w).unwrap(), b"earlier weights");
    no_temporaries(&d);
}

#[test]
fn infer_under_a_file_size_limit_and_bad_outputs_before_any_work() {
    let d = tmpdir("c3b");
    let w = d.join("w.safetensors");
    let imgs = d.join("i.safetensors");
    run(&[
        "synthetic",
        "--model",
        "sret_t",
        "--weights-out",
        s(&w),
        "--images-out",
        s(&imgs),
        "--batch",
        "1",
    ])
    .ok();
    let w_before = digest(&w);
    let i_before = digest(&imgs);
    let base = [
        "infer",
        "--model",
        "sret_t",
        "--weights",
        s(&w),
        "--images",
        s(&imgs),
    ];
    let with = |out: &Path| {
        let mut v = base.to_vec();
        v.extend(["--out", s(out)]);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // The output is one of the inputs: refused before anything is loaded.
    for target in [&w, &imgs] {
        let v = with(target);
        run(&args(&v))
            .refused("same file as the input")
            .within_secs(10.0);
    }
    assert_eq!(digest(&w), w_before);
    assert_eq!(digest(&imgs), i_before);
    // A missing directory: refused at once, not after the forward.
    let v = with(&d.join("missing/out.safetensors"));
    run(&args(&v)).refused("is not there").within_secs(10.0);
    // The logits (4 KiB) past `ulimit -f 1`: an error, and the earlier logits kept.
    let out = d.join("logits.safetensors");
    std::fs::write(&out, b"earlier logits").unwrap();
    let v = with(&out);
    let r = run_opts(
        &args(&v),
        Opts {
            fsize: Some(1024),
            timeout: Some(Duration::from_secs(100)),
            ..Default::default()
        },
    );
    assert_eq!(r.signal, None, "killed by a signal: {r:#?}");
    // lavapipe of Mesa 23 and later backs GPU memory with files the limit cuts short (SIGBUS
    // in the driver): refused before the device opens. Elsewhere the forward runs and the
    // write is refused. Either way the error names the limit.
    let adapters = run(&["adapters"]);
    let mesa = adapters
        .stdout
        .lines()
        .filter(|l| l.contains("llvmpipe"))
        .find_map(sret_tome::gpu::context::mesa_version);
    if mesa.is_some_and(|m| m >= (23, 0)) {
        r.refused("backs GPU memory with files");
    } else {
        r.refused("cannot write");
    }
    r.refused("ulimit -f");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier logits");
    no_temporaries(&d);
}

#[test]
fn concurrent_writers_leave_one_whole_file() {
    let d = tmpdir("c3c");
    // Each run alone, then four at once to one path: the result is exactly one of them.
    let mut alone = Vec::new();
    for seed in 0..4 {
        let p = d.join(format!("alone{seed}.safetensors"));
        run(&[
            "synthetic",
            "--model",
            "sret_t",
            "--weights-out",
            s(&d.join(format!("w{seed}"))),
            "--images-out",
            s(&p),
            "--batch",
            "2",
            "--seed",
            &seed.to_string(),
        ])
        .ok();
        alone.push(digest(&p));
    }
    let shared = d.join("shared.safetensors");
    let threads: Vec<_> = (0..4)
        .map(|seed| {
            let (d, shared) = (d.clone(), shared.clone());
            std::thread::spawn(move || {
                run(&[
                    "synthetic",
                    "--model",
                    "sret_t",
                    "--weights-out",
                    s(&d.join(format!("v{seed}"))),
                    "--images-out",
                    s(&shared),
                    "--batch",
                    "2",
                    "--seed",
                    &seed.to_string(),
                ])
                .ok();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = digest(&shared);
    assert!(
        alone.contains(&got),
        "the shared output is not one whole run's"
    );
    no_temporaries(&d);
}

// --- 4. Sizes checked before allocation ----------------------------------------------------

#[test]
fn counts_are_checked_before_allocating() {
    let d = tmpdir("c4");
    let max = u64::MAX.to_string();
    for (args, needle) in [
        (
            vec![
                "synthetic",
                "--weights-out",
                "/tmp/x",
                "--images-out",
                "/tmp/y",
                "--batch",
                "100000",
            ],
            "at most 3566",
        ),
        (
            vec![
                "synthetic",
                "--weights-out",
                "/tmp/x",
                "--images-out",
                "/tmp/y",
                "--batch",
                &max,
            ],
            "at most 3566",
        ),
        (
            vec![
                "synthetic",
                "--weights-out",
                "/tmp/x",
                "--images-out",
                "/tmp/y",
                "--batch",
                "0",
            ],
            "at least 1",
        ),
        (
            vec!["eval", "--synthetic", "10000000000"],
            "at most 4000000",
        ),
        (
            vec!["bench", "--model", "sret_t", "--batch", "100000"],
            "at most",
        ),
        (
            vec!["bench", "--model", "sret_t", "--batch", &max],
            "at most",
        ),
        (
            vec![
                "sweep",
                "--model",
                "sret_t",
                "--synthetic",
                "1",
                "--bench-batch",
                "100000",
                "--out-dir",
                s(&d),
            ],
            "at most",
        ),
    ] {
        let r = run(&args);
        r.refused(needle).under_mib(400.0);
        eprintln!(
            "case 4: {:?}: peak {:.1} MiB: {}",
            &args[..2],
            r.peak_mib,
            r.stderr.lines().last().unwrap_or("")
        );
    }
    // 5,000 image files (one file named 5,000 times): refused before any is decoded.
    let img = d.join("a.png");
    png(&img, 1);
    let mut args = vec![
        "infer",
        "--model",
        "sret_t",
        "--out",
        "/tmp/sret-tome-never.safetensors",
        "--images",
    ];
    args.extend(std::iter::repeat_n(s(&img), 5000));
    let r = run(&args);
    r.refused("at most").under_mib(400.0);
    eprintln!(
        "case 4: infer on 5000 files: peak {:.1} MiB: {}",
        r.peak_mib,
        r.stderr.lines().last().unwrap_or("")
    );
}

// --- 5. Regular files only, size from the metadata -------------------------------------------

#[test]
fn special_files_are_refused_without_reading_or_blocking() {
    let d = tmpdir("c5");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let img = d.join("a.png");
    png(&img, 1);
    let out = d.join("o.safetensors");
    let (m, vp) = (d.join("m"), d.join("v.png"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "infer",
                "--weights",
                "/dev/zero",
                "--images",
                s(&img),
                "--out",
                s(&out),
            ],
            "a character device",
        ),
        (
            vec![
                "infer",
                "--weights",
                s(&fifo),
                "--images",
                s(&img),
                "--out",
                s(&out),
            ],
            "a FIFO",
        ),
        (
            vec![
                "infer",
                "--weights",
                s(&d),
                "--images",
                s(&img),
                "--out",
                s(&out),
            ],
            "a directory",
        ),
        (
            vec!["infer", "--images", s(&fifo), "--out", s(&out)],
            "a FIFO",
        ),
        (vec!["convert", s(&fifo), s(&out)], "a FIFO"),
        (vec!["convert", "/dev/zero", s(&out)], "a character device"),
        (
            vec!["merge-results", "/dev/zero", "--out-dir", s(&m)],
            "a character device",
        ),
        (
            vec!["merge-results", s(&fifo), "--out-dir", s(&m)],
            "a FIFO",
        ),
        (
            vec!["visualize", "--image", s(&fifo), "--out", s(&vp)],
            "a FIFO",
        ),
    ];
    for (args, needle) in cases {
        let r = run_opts(
            &args,
            Opts {
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        );
        r.refused(needle).under_mib(400.0).within_secs(50.0);
        eprintln!(
            "case 5: {:?}: {:.1} s, peak {:.1} MiB: {}",
            &args[..3],
            r.secs,
            r.peak_mib,
            r.stderr.lines().last().unwrap_or("")
        );
    }
}

// --- 6. merge-results validates the shards ---------------------------------------------------

#[test]
fn merge_results_refuses_inconsistent_counts() {
    let d = tmpdir("c6");
    // Two real shards of a run over 2 images, one image each.
    let json = |k: u64| -> serde_json::Value {
        let p = d.join(format!("shard{k}.json"));
        run(&[
            "eval",
            "--model",
            "sret_t",
            "--synthetic",
            "2",
            "--shard",
            &format!("{k}/2"),
            "--json",
            s(&p),
        ])
        .ok();
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let real = [json(1), json(2)];
    let shard = |k: u64, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = real[k as usize - 1].clone();
        edit(&mut v);
        let p = d.join(format!("s{k}-{}.json", rand_tag()));
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    };
    let nothing = |_: &mut serde_json::Value| {};
    let out = d.join("merged");
    // Whole shards merge.
    let (a, b) = (shard(1, &nothing), shard(2, &nothing));
    run(&["merge-results", s(&a), s(&b), "--out-dir", s(&out)]).ok();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                let q = &mut v["results"][0]["quality"];
                q["images"] = serde_json::json!(u64::MAX);
            }),
            "images = 18446744073709551615 is more than the shard's 1 images",
        ),
        (
            Box::new(|v| v["results"][0]["quality"]["agree"] = serde_json::json!(5)),
            "agree = 5 is more than compared = 1",
        ),
        (
            Box::new(|v| v["results"][0]["quality"]["kl_sum"] = serde_json::json!(-1.0)),
            "kl_sum = -1",
        ),
        (
            Box::new(|v| {
                let r = v["results"][0].clone();
                v["results"].as_array_mut().unwrap().push(r);
            }),
            "appears twice in this shard",
        ),
    ];
    for (edit, needle) in cases {
        let a = shard(1, &*edit);
        let r = run(&["merge-results", s(&a), s(&b), "--out-dir", s(&out)]);
        r.refused(needle);
        eprintln!("case 6: {}", r.stderr.trim());
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// --- 7. Data folders: unreadable directories, links out of the folder ------------------------

/// Scans the data folder of `SRET_TOME_SCAN_HELPER_DIR` through the library (what `eval` and
/// `sweep` do first) and prints what it found; run as a child by the test below, as nobody
/// when the tests run as root (to whom every directory is readable). Does nothing otherwise.
#[test]
fn scan_helper_run_as_a_child_on_the_folder_in_env() {
    use sret_tome::eval::dataset::{ClassMap, DataSource, Layout};
    let Some(root) = std::env::var_os("SRET_TOME_SCAN_HELPER_DIR") else {
        return;
    };
    let ds = DataSource::Folder {
        root: root.into(),
        layout: Layout::Auto,
        class_map: ClassMap::Auto,
    }
    .open(1000)
    .expect("the scan succeeds");
    println!("samples: {}", ds.samples.len());
    for p in &ds.skipped {
        println!("skipped: {}: {}", p.path, p.why);
    }
}

#[test]
fn unreadable_directories_and_outside_links_are_skipped() {
    let d = tmpdir("c7");
    let data = d.join("data");
    for c in ["a", "b"] {
        std::fs::create_dir_all(data.join(c)).unwrap();
    }
    png(&data.join("a/1.png"), 1);
    png(&data.join("b/2.png"), 2);
    std::fs::create_dir_all(data.join("a/locked")).unwrap();
    png(&data.join("a/locked/3.png"), 3);
    std::os::unix::fs::symlink("/", data.join("a/root")).unwrap();
    // A link inside the folder is still followed.
    std::os::unix::fs::symlink(data.join("b"), data.join("a/inside")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("a/locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "scan_helper_run_as_a_child_on_the_folder_in_env",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("SRET_TOME_SCAN_HELPER_DIR", &data);
    if root {
        cmd.uid(65534).gid(65534);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::fs::set_permissions(
        data.join("a/locked"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("samples: 3"),
        "1.png, 2.png and inside/2.png: {stdout}"
    );
    assert!(
        stdout.contains("locked: directory not readable"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "root: symbolic link to a directory outside the data folder (/), not followed"
        ),
        "{stdout}"
    );
    assert!(secs < 20.0, "{secs} s");
    eprintln!(
        "case 7: scan over an unreadable directory and a link to / in {secs:.2} s:\n{stdout}"
    );
}

// --- 8. Non-finite inputs and weights --------------------------------------------------------

/// Sets the first `count` f32 values of tensor `name` in a safetensors file to NaN (in place).
fn poison(path: &Path, name: &str, count: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let n = u64::from_le_bytes(len);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).unwrap();
    let h: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let start = h[name]["data_offsets"][0].as_u64().expect(name) + 8 + n;
    f.seek(SeekFrom::Start(start)).unwrap();
    for _ in 0..count {
        f.write_all(&f32::NAN.to_le_bytes()).unwrap();
    }
}

#[test]
fn non_finite_images_and_weights_are_reported_or_refused() {
    let d = tmpdir("c8");
    let w = d.join("w.safetensors");
    let imgs = d.join("i.safetensors");
    run(&[
        "synthetic",
        "--model",
        "sret_t",
        "--weights-out",
        s(&w),
        "--images-out",
        s(&imgs),
        "--batch",
        "1",
    ])
    .ok();
    poison(&imgs, "images", 10);
    poison(&w, "patch_embed.conv1.weight", 3);
    let out = d.join("o.safetensors");
    let base = [
        "infer",
        "--model",
        "sret_t",
        "--weights",
        s(&w),
        "--images",
        s(&imgs),
        "--out",
        s(&out),
    ];
    let r = run(&base);
    r.ok();
    assert!(
        r.stderr
            .contains("tensor 'images' has 10 non-finite value(s)"),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains("'patch_embed.conv1.weight' has 3 non-finite"),
        "{r:#?}"
    );
    let mut refuse = base.to_vec();
    refuse.push("--refuse-non-finite");
    let r = run(&refuse);
    r.refused("tensor 'patch_embed.conv1.weight' has 3 non-finite value(s)");
    // Clean weights, NaN images: refused too.
    let w2 = d.join("w2.safetensors");
    run(&["synthetic", "--model", "sret_t", "--weights-out", s(&w2)]).ok();
    let r = run(&[
        "infer",
        "--model",
        "sret_t",
        "--weights",
        s(&w2),
        "--images",
        s(&imgs),
        "--out",
        s(&out),
        "--refuse-non-finite",
    ]);
    r.refused("tensor 'images' has 10 non-finite value(s)");
}

// --- 9. Small ones ---------------------------------------------------------------------------

#[test]
fn synthetic_batch_zero_is_refused_and_writes_nothing() {
    let d = tmpdir("c9a");
    let imgs = d.join("i.safetensors");
    run(&[
        "synthetic",
        "--weights-out",
        s(&d.join("w")),
        "--images-out",
        s(&imgs),
        "--batch",
        "0",
    ])
    .refused("must be at least 1");
    assert!(!imgs.exists());
}

#[test]
fn a_rank3_images_tensor_is_refused_naming_the_expected_shape() {
    let d = tmpdir("c9b");
    let imgs = d.join("i.safetensors");
    let data = vec![0u8; 3 * 224 * 224 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 224, 224], &data)
            .unwrap();
    let bytes = safetensors::serialize([("images", view)], None).unwrap();
    std::fs::write(&imgs, bytes).unwrap();
    run(&[
        "infer",
        "--model",
        "sret_t",
        "--images",
        s(&imgs),
        "--out",
        s(&d.join("o")),
    ])
    .refused("expected [1, 3, 224, 224]");
}

#[test]
fn sweep_says_what_it_replaces_and_what_it_leaves_from_an_earlier_run() {
    let d = tmpdir("c9c");
    let out = d.join("sweep");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("sweep.json"), b"{}").unwrap();
    std::fs::write(out.join("alpha_effect_bs128.png"), b"old").unwrap();
    let r = run(&[
        "sweep",
        "--model",
        "sret_t",
        "--synthetic",
        "1",
        "--rinit",
        "0.1",
        "--alpha",
        "0",
        "--no-bench",
        "--out-dir",
        s(&out),
    ]);
    r.ok();
    assert!(
        r.stdout.contains("note: replaced") && r.stdout.contains("sweep.json"),
        "{r:#?}"
    );
    assert!(
        r.stdout.contains("note: left 1 earlier file(s)")
            && r.stdout.contains("alpha_effect_bs128.png"),
        "{r:#?}"
    );
}

#[test]
fn sigkill_at_any_moment_leaves_the_old_or_the_new_file() {
    let d = tmpdir("c3d");
    let w = d.join("w.safetensors");
    let args = ["synthetic", "--model", "sret_t", "--weights-out", s(&w)];
    run(&args).ok();
    let new = digest(&w);
    let old = (0xdead, 3);
    for delay_ms in [5u64, 20, 40, 80, 160, 320] {
        std::fs::write(&w, b"old").unwrap();
        let old_now = digest(&w);
        assert_eq!(old_now.1, old.1);
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let got = digest(&w);
        assert!(
            got == old_now || got == new,
            "after SIGKILL at {delay_ms} ms: a damaged file"
        );
    }
}

// --- Issue 29: hostile files and arguments, round two ----------------------------------------

/// A safetensors file whose header claims `len` bytes and holds `{"0":0,"1":0,...` (entries that
/// are no tensor description) up to that length, written in chunks.
fn key_flood(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&len.to_le_bytes()).unwrap();
    let mut written = 1u64;
    f.write_all(b"{").unwrap();
    let mut i = 0u64;
    while written + 32 < len {
        let e = format!("\"{i}\":0,");
        f.write_all(e.as_bytes()).unwrap();
        written += e.len() as u64;
        i += 1;
    }
    f.write_all(b"\"end\":0}").unwrap();
    written += 8;
    f.write_all(&vec![b' '; (len - written) as usize]).unwrap();
}

#[test]
fn a_safetensors_header_is_bounded_before_it_is_parsed() {
    let d = tmpdir("i29-1");
    let out = d.join("o.safetensors");
    // Past the format's 100 MB header rule: refused before any of it is parsed (it took
    // 966 MB and seconds for a 119 MB header); under it, a header of non-tensor entries stops
    // at its first entry instead of collecting every name.
    for (len, needle, mib) in [
        (120_000_000u64, "more than the format's limit", 400.0),
        (60_000_000, "not a valid safetensors file", 300.0),
    ] {
        let w = d.join(format!("flood{len}.safetensors"));
        key_flood(&w, len);
        let r = run(&[
            "infer",
            "--model",
            "sret_t",
            "--weights",
            s(&w),
            "--images",
            "assets/sample.jpg",
            "--out",
            s(&out),
        ]);
        r.refused(needle).under_mib(mib).within_secs(20.0);
        std::fs::remove_file(&w).unwrap();
    }
    assert!(!out.exists());
}

/// Synthetic `vit_tiny_patch16_224` weights with `patch_embed.proj.weight` replaced by an
/// empty `[192, 3, 0, 0]` tensor.
fn zero_patch_weights(d: &Path) -> PathBuf {
    let full = d.join("vit.safetensors");
    run(&[
        "synthetic",
        "--model",
        "vit_tiny_patch16_224",
        "--weights-out",
        s(&full),
    ])
    .ok();
    let bytes = std::fs::read(&full).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .iter()
        .filter(|(n, _)| *n != "patch_embed.proj.weight")
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    views.push((
        "patch_embed.proj.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![192, 3, 0, 0], &[])
            .unwrap(),
    ));
    let w = d.join("zero-patch.safetensors");
    std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    w
}

#[test]
fn model_auto_with_a_zero_size_patch_is_refused_by_every_command() {
    let d = tmpdir("i29-2");
    let w = zero_patch_weights(&d);
    let model = ["--model", "auto", "--weights", s(&w)];
    let out = d.join("out");
    let png = d.join("v.png");
    let commands: Vec<Vec<&str>> = vec![
        vec!["infer", "--images", "assets/sample.jpg", "--out", s(&out)],
        vec!["eval", "--synthetic", "1"],
        vec!["bench", "--batch", "1"],
        vec![
            "sweep",
            "--synthetic",
            "1",
            "--rinit",
            "0.1",
            "--alpha",
            "0",
            "--no-bench",
            "--out-dir",
            s(&out),
        ],
        vec![
            "visualize",
            "--image",
            "assets/sample.jpg",
            "--out",
            s(&png),
        ],
    ];
    for mut c in commands {
        c.extend(model);
        run(&c).refused("a patch of 0 pixels").within_secs(60.0);
    }
    assert!(!out.exists() && !png.exists());
}

#[test]
fn model_overrides_and_plan_sizes_are_bounded_before_any_work() {
    for (spec, needle) in [
        (
            "vit_tiny_patch16_224@depth=1000000",
            "depth 1000000 is outside",
        ),
        ("vit_tiny_patch16_224@depth=10000", "depth 10000 is outside"),
        (
            "vit_tiny_patch16_224@depth=18446744073709551615",
            "depth 18446744073709551615 is outside",
        ),
        (
            "vit_tiny_patch16_224@img_size=1600000",
            "image size 1600000",
        ),
        (
            "vit_tiny_patch16_224@img_size=18446744073709551600",
            "image size 18446744073709551600",
        ),
        ("vit_huge_patch14_224@depth=200", "parameters, more than"),
    ] {
        run(&["plan", "--model", spec])
            .refused(needle)
            .under_mib(200.0)
            .within_secs(10.0);
        // Every command that builds the model takes the same bound.
        run(&[
            "synthetic",
            "--model",
            spec,
            "--weights-out",
            "/tmp/never-written",
        ])
        .refused(needle)
        .under_mib(200.0);
    }
    for batch in ["18446744073709551615", "1000000000000", "0"] {
        run(&["plan", "--model", "vit_tiny_patch16_224", "--batch", batch])
            .refused("invalid batch");
    }
    // The largest batch allowed prints figures that add up.
    let r = run(&["plan", "--model", "sret_t", "--batch", "1048576", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let fams = v["cost"]["families"].as_object().unwrap();
    let sum = |k: &str| fams.values().map(|f| f[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("dispatches"), v["cost"]["dispatches"].as_u64().unwrap());
    assert_eq!(sum("flops"), v["cost"]["flops"].as_u64().unwrap());
    assert!(
        v["cost"]["flops"].as_u64().unwrap() > 1 << 40,
        "{}",
        v["cost"]
    );
}

#[test]
fn the_library_refuses_an_unbounded_override_before_allocating() {
    let e = sret_tome::Engine::builder()
        .model("vit_tiny_patch16_224@depth=100000000")
        .build()
        .expect_err("refused");
    assert!(e.to_string().contains("depth 100000000 is outside"), "{e}");
    let e = sret_tome::model::ModelConfig::by_name("vit_tiny_patch16_224@img_size=1600000")
        .unwrap_err();
    assert!(e.to_string().contains("image size 1600000"), "{e}");
}

/// Every output flag of every command, writing to `out` (`png` for visualize's PNG).
fn every_output(d: &Path, out: &Path, png: &Path) -> Vec<Vec<String>> {
    let w = d.join("w.safetensors");
    if !w.exists() {
        run(&["synthetic", "--model", "sret_t", "--weights-out", s(&w)]).ok();
        good_checkpoint(&d.join("c.pth"), 8);
    }
    let o = s(out).to_string();
    let other = s(&d.join("other")).to_string();
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ws = s(&w).to_string();
    let image = "assets/sample.jpg";
    vec![
        v(&["synthetic", "--model", "sret_t", "--weights-out", &o]),
        v(&[
            "synthetic",
            "--model",
            "sret_t",
            "--weights-out",
            &other,
            "--images-out",
            &o,
        ]),
        v(&[
            "infer",
            "--model",
            "sret_t",
            "--weights",
            &ws,
            "--images",
            image,
            "--out",
            &o,
        ]),
        v(&[
            "eval",
            "--model",
            "sret_t",
            "--synthetic",
            "1",
            "--json",
            &o,
        ]),
        v(&["eval", "--model", "sret_t", "--synthetic", "1", "--csv", &o]),
        v(&[
            "visualize",
            "--model",
            "sret_t",
            "--image",
            image,
            "--out",
            s(png),
        ]),
        v(&["convert", s(&d.join("c.pth")), &o]),
    ]
}

#[test]
fn special_files_as_outputs_are_refused_and_kept() {
    use std::os::unix::fs::FileTypeExt;
    let d = tmpdir("i29-5");
    let (fifo, fifo_png) = (d.join("fifo"), d.join("fifo.png"));
    mkfifo(&fifo);
    mkfifo(&fifo_png);
    let (sock, sock_png) = (d.join("sock"), d.join("sock.png"));
    let _l1 = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&sock_png).unwrap();
    // Links to this process's stdout (a pipe here), as /dev/stdout is one.
    let (link, link_png) = (d.join("stdout"), d.join("stdout.png"));
    std::os::unix::fs::symlink("/proc/self/fd/1", &link).unwrap();
    std::os::unix::fs::symlink("/proc/self/fd/1", &link_png).unwrap();
    let dash = PathBuf::from("-");
    for (out, png, needle) in [
        (&dash, &dash, "standard output"),
        (&fifo, &fifo_png, "FIFO"),
        (&sock, &sock_png, "socket"),
        (&link, &link_png, "not a regular file"),
    ] {
        for c in every_output(&d, out, png) {
            // visualize's own check comes first: `-` does not end in .png.
            let needle = if c[0] == "visualize" && out == &dash {
                "ending in .png"
            } else {
                needle
            };
            run(&args(&c)).refused(needle).within_secs(30.0);
        }
    }
    for p in [&fifo, &fifo_png] {
        assert!(std::fs::metadata(p).unwrap().file_type().is_fifo());
    }
    for p in [&sock, &sock_png] {
        assert!(std::fs::metadata(p).unwrap().file_type().is_socket());
    }
    for p in [&link, &link_png] {
        assert!(std::fs::symlink_metadata(p)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    no_temporaries(&d);
}

#[test]
fn a_symlinked_output_is_written_at_its_target_and_the_link_kept() {
    let d = tmpdir("i29-5b");
    let targets = d.join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    let target = targets.join("w.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink("targets/w.safetensors", &link).unwrap();
    run(&["synthetic", "--model", "sret_t", "--weights-out", s(&link)]).ok();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_ne!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&link).unwrap()
    );
    // A dangling link: the file is created where it points.
    let dangling = d.join("dangling.safetensors");
    std::os::unix::fs::symlink("targets/new.safetensors", &dangling).unwrap();
    run(&[
        "synthetic",
        "--model",
        "sret_t",
        "--weights-out",
        s(&dangling),
    ])
    .ok();
    assert!(targets.join("new.safetensors").is_file());
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    // Two outputs that are one file through a link are refused.
    run(&[
        "synthetic",
        "--model",
        "sret_t",
        "--weights-out",
        s(&link),
        "--images-out",
        s(&target),
    ])
    .refused("same file as --weights-out");
    no_temporaries(&d);
    no_temporaries(&targets);
}

#[test]
fn an_output_is_never_an_image_of_the_data_set() {
    let d = tmpdir("i29-6");
    let data = d.join("data");
    std::fs::create_dir_all(data.join("c1")).unwrap();
    std::fs::create_dir_all(data.join("c2")).unwrap();
    png(&data.join("c1/a.png"), 1);
    png(&data.join("c2/b.png"), 2);
    let before = digest(&data.join("c1/a.png"));
    // By path, through a link and through a hard link: the same file.
    let link = d.join("link.json");
    std::os::unix::fs::symlink(data.join("c1/a.png"), &link).unwrap();
    let hard = d.join("hard.json");
    std::fs::hard_link(data.join("c1/a.png"), &hard).unwrap();
    for flag in ["--json", "--csv"] {
        for out in [data.join("c1/a.png"), link.clone(), hard.clone()] {
            run(&[
                "eval",
                "--model",
                "sret_t",
                "--data",
                s(&data),
                flag,
                s(&out),
            ])
            .refused("same file as the input");
        }
    }
    assert_eq!(digest(&data.join("c1/a.png")), before);
    // --json and --csv one file.
    let j = d.join("r.json");
    run(&[
        "eval",
        "--model",
        "sret_t",
        "--synthetic",
        "1",
        "--json",
        s(&j),
        "--csv",
        s(&j),
    ])
    .refused("same file as --json");
}

#[test]
fn merge_results_bounds_and_cross_checks_shard_data() {
    let d = tmpdir("i29-7");
    let p = d.join("s1.json");
    run(&[
        "eval",
        "--model",
        "sret_t",
        "--synthetic",
        "4",
        "--shard",
        "1/2",
        "--json",
        s(&p),
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        edit(&mut v);
        let f = d.join(name);
        std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
        f
    };
    let out = d.join("merged");
    // A shard count of 2^64 - 1: refused at once, in little memory (it built text for every
    // missing shard).
    let huge = write("huge.json", &|v| {
        v["shards"] = serde_json::json!([{"index": 1, "count": u64::MAX}])
    });
    run(&[
        "merge-results",
        s(&huge),
        "--out-dir",
        s(&out),
        "--allow-partial",
    ])
    .refused("huge.json")
    .under_mib(100.0)
    .within_secs(10.0);
    // Impossible shards: 1 of 0, 0 of 2.
    for (name, shard, needle) in [
        (
            "zero-count.json",
            serde_json::json!({"index": 1, "count": 0}),
            "N must be at least 1",
        ),
        (
            "zero-index.json",
            serde_json::json!({"index": 0, "count": 2}),
            "numbered from 1",
        ),
    ] {
        let f = write(name, &|v| v["shards"] = serde_json::json!([shard.clone()]));
        run(&["merge-results", s(&f), "--out-dir", s(&out)])
            .refused(name)
            .refused(needle);
    }
    // Shards that disagree on images_total.
    let a = write("a.json", &|v| {
        v["data"]["images_total"] = serde_json::json!(u64::MAX)
    });
    let b = write("b.json", &|v| {
        v["shards"] = serde_json::json!([{"index": 2, "count": 2}])
    });
    run(&["merge-results", s(&a), s(&b), "--out-dir", s(&out)]).refused("images_total");
    let a = write("a.json", &|v| {
        v["data"]["images_total"] = serde_json::json!(8);
        v["data"]["images_selected"] = serde_json::json!(8);
    });
    run(&["merge-results", s(&a), s(&b), "--out-dir", s(&out)]).refused("images_total");
    // A shard holding more images than the run selects, or a whole run that adds up to fewer.
    let big = write("big.json", &|v| {
        v["data"]["images_selected"] = serde_json::json!(5)
    });
    run(&["merge-results", s(&big), s(&b), "--out-dir", s(&out)])
        .refused("big.json")
        .refused("holds 5 images, but the run selects 4");
    let alone = write("alone.json", &|v| {
        v["shards"] = serde_json::json!([{"index": 1, "count": 1}])
    });
    run(&["merge-results", s(&alone), "--out-dir", s(&out)])
        .refused("hold 2 images together, but the run selects 4");
    // More schedules than any run has: refused before the quadratic frontier.
    let rows = write("rows.json", &|v| {
        let r = v["results"][0].clone();
        v["results"] = (0..20_000)
            .map(|i| {
                let mut r = r.clone();
                r["schedule"] = serde_json::json!(format!("constant:{i}"));
                r
            })
            .collect();
    });
    run(&["merge-results", s(&rows), s(&b), "--out-dir", s(&out)])
        .refused("more than a run has")
        .within_secs(20.0);
    assert!(!out.join("eval.json").exists());
}

#[test]
fn outputs_naming_a_directory_are_refused_before_any_work() {
    let d = tmpdir("i29-10");
    let new_dir = format!("{}/", s(&d.join("newdir")));
    let png_dir = format!("{}/", s(&d.join("x.png")));
    for c in [
        vec![
            "infer",
            "--model",
            "sret_t",
            "--images",
            "assets/sample.jpg",
            "--out",
            &new_dir,
        ],
        vec![
            "eval",
            "--model",
            "sret_t",
            "--synthetic",
            "1",
            "--json",
            &new_dir,
        ],
        vec![
            "eval",
            "--model",
            "sret_t",
            "--synthetic",
            "1",
            "--csv",
            &new_dir,
        ],
        vec![
            "visualize",
            "--model",
            "sret_t",
            "--image",
            "assets/sample.jpg",
            "--out",
            &png_dir,
        ],
        vec!["synthetic", "--model", "sret_t", "--weights-out", &new_dir],
    ] {
        run(&c).refused("names a directory").within_secs(10.0);
    }
    assert!(!d.join("newdir").exists());
}

#[test]
fn a_tight_address_space_limit_is_an_error_not_a_crash() {
    let d = tmpdir("i29-11");
    let out = d.join("o.safetensors");
    // It crashed inside Mesa's vkCreateDevice (double free, segfault, bad_alloc) at these.
    for kib in [262_144u64, 400_000, 700_000, 1_000_000] {
        let r = run_opts(
            &[
                "infer",
                "--model",
                "sret_t",
                "--images",
                "assets/sample.jpg",
                "--out",
                s(&out),
            ],
            Opts {
                address_space: Some(kib * 1024),
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        );
        assert_eq!(r.signal, None, "killed by a signal at {kib} KiB: {r:#?}");
        r.refused("address space");
    }
    assert!(!out.exists());
}

/// A 1-bit grayscale PNG of `side` x `side` pixels (stored, uncompressed deflate blocks),
/// written in chunks.
fn big_png(path: &Path, side: u32) {
    use std::io::Write;
    fn crc32(data: &[&[u8]]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for d in data {
            for &b in *d {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
        }
        !c
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"\x89PNG\r\n\x1a\n").unwrap();
    let chunk = |f: &mut std::io::BufWriter<std::fs::File>, kind: &[u8], body: &[u8]| {
        f.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        f.write_all(kind).unwrap();
        f.write_all(body).unwrap();
        f.write_all(&crc32(&[kind, body]).to_be_bytes()).unwrap();
    };
    let mut ihdr = Vec::new();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]); // 1-bit grayscale
    chunk(&mut f, b"IHDR", &ihdr);
    // zlib: header, stored blocks of one row each (filter byte + packed bits), Adler-32.
    let row_len = 1 + side.div_ceil(8) as usize;
    let row = vec![0u8; row_len];
    let (mut a, mut b) = (1u32, 0u32);
    let mut z = vec![0x78, 0x01];
    for r in 0..side {
        let last = r + 1 == side;
        z.push(last as u8);
        z.extend((row_len as u16).to_le_bytes());
        z.extend((!(row_len as u16)).to_le_bytes());
        z.extend(&row);
        for &x in &row {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        if z.len() > 1 << 20 || last {
            if last {
                z.extend(((b << 16) | a).to_be_bytes());
            }
            chunk(&mut f, b"IDAT", &z);
            z.clear();
        }
    }
    chunk(&mut f, b"IEND", &[]);
}

#[test]
fn image_decoding_is_bounded_by_the_address_space_left() {
    let d = tmpdir("i29-11b");
    let img = d.join("big.png");
    big_png(&img, 7000); // 49 megapixels, under the pixel limit
    let r = run_opts(
        &[
            "visualize",
            "--model",
            "sret_t",
            "--image",
            s(&img),
            "--out",
            s(&d.join("v.png")),
        ],
        Opts {
            address_space: Some(700_000 * 1024),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    assert_eq!(r.signal, None, "killed by a signal: {r:#?}");
    r.refused("decoding a 7000x7000 image needs about");
}

#[test]
fn zero_workers_and_zero_resident_schedules_are_refused() {
    for (flag, needle) in [
        ("--workers", "invalid workers '0'"),
        ("--resident", "invalid resident '0'"),
        ("--batch", "invalid batch '0'"),
    ] {
        run(&["eval", "--model", "sret_t", "--synthetic", "1", flag, "0"])
            .refused(needle)
            .within_secs(10.0);
    }
}
