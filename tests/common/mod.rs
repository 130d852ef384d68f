//! Shared by the GPU tests: one device per test binary, random data, and a tiny runner for
//! single-kernel programs with poisoned outputs.
#![allow(dead_code)]

use std::sync::OnceLock;

use sret_tome::gpu::read_buffer;
use sret_tome::gpu::{AdapterChoice, Gpu};
use sret_tome::kernels::{PipelineCache, ProgramBuilder, TensorId};
use sret_tome::reference::{Matching, SplitMix64};
use sret_tome::tome::Split;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        // RUST_LOG=sret_tome=debug shows every pipeline compiled and how long it took.
        let _ = env_logger::builder().is_test(true).try_init();
        Gpu::new(&AdapterChoice::default())
            .expect("GPU tests need an adapter; on Linux without a GPU install mesa-vulkan-drivers")
    })
}

/// The engine of `model` for `spec` on `gpu`, made through the public builder as the command
/// line makes it, with the kernel variants of `spec` pinned (tests are deterministic).
pub fn engine(
    gpu: &Gpu,
    cache: &PipelineCache,
    model: &sret_tome::Model,
    spec: &sret_tome::runtime::ForwardSpec,
) -> sret_tome::Result<sret_tome::Engine> {
    sret_tome::EngineBuilder::new()
        .gpu(gpu)
        .pipeline_cache(cache)
        .with_model(model.clone())
        .spec(spec)
        .autotune(sret_tome::api::Autotune::Pin(spec.kernels))
        .build()
}

pub fn cache() -> &'static PipelineCache {
    static CACHE: OnceLock<PipelineCache> = OnceLock::new();
    CACHE.get_or_init(PipelineCache::default)
}

/// Pipelines built without runtime bounds checks ([`PipelineCache::trusted`]).
pub fn trusted_cache() -> &'static PipelineCache {
    static CACHE: OnceLock<PipelineCache> = OnceLock::new();
    CACHE.get_or_init(PipelineCache::trusted)
}

/// Uniform values in [-scale, scale], never all zero.
pub fn random(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.symmetric() * scale).collect()
}

/// Build a program with `build`, fill every output with NaN (u32: 0xFFFF_FFFF), run it once and
/// read the outputs back as raw 32-bit words.
#[track_caller]
pub fn run(build: impl FnOnce(&mut ProgramBuilder) -> Vec<TensorId>) -> Vec<Vec<u32>> {
    run_opts(true, build)
}

/// As [`run`]; `poison: false` keeps the outputs' initial contents (for in-place kernels whose
/// output starts as an input).
#[track_caller]
pub fn run_opts(
    poison: bool,
    build: impl FnOnce(&mut ProgramBuilder) -> Vec<TensorId>,
) -> Vec<Vec<u32>> {
    run_planned_for(&gpu().limits, poison, build)
}

/// As [`run_opts`], planned as for a device with `limits` (at most the adapter's), e.g. to make
/// grids wrap into a second dimension.
#[track_caller]
pub fn run_planned_for(
    limits: &wgpu::Limits,
    poison: bool,
    build: impl FnOnce(&mut ProgramBuilder) -> Vec<TensorId>,
) -> Vec<Vec<u32>> {
    let mut b = ProgramBuilder::new(limits);
    let outs = build(&mut b);
    for &o in &outs {
        b.pin(o);
    }
    // Every kernel runs twice: with wgpu's runtime bounds checks and without (trusted
    // modules). Checks only change what out-of-bounds accesses do, so the two must agree bit
    // for bit; a difference means some index left its binding.
    let kernels: Vec<String> = (0..b.dispatch_count())
        .map(|i| b.step(i).0.to_string())
        .collect();
    let checked = run_program(b.clone(), cache(), &outs, poison);
    let trusted = run_program(b, trusted_cache(), &outs, poison);
    for (o, (c, t)) in checked.iter().zip(&trusted).enumerate() {
        if let Some(i) = (0..c.len()).find(|&i| c[i] != t[i]) {
            panic!(
                "output {o} differs with and without runtime bounds checks at word {i} of {} \
                 ({:#010x} checked, {:#010x} trusted): an index leaves its binding in one of \
                 {kernels:?}",
                c.len(),
                c[i],
                t[i]
            );
        }
    }
    checked
}

fn run_program(
    b: ProgramBuilder,
    cache: &PipelineCache,
    outs: &[TensorId],
    poison: bool,
) -> Vec<Vec<u32>> {
    let g = gpu();
    // Constants (an in-place output's initial contents) keep theirs.
    let poisoned: Vec<TensorId> = outs
        .iter()
        .copied()
        .filter(|&o| poison && !b.is_constant(o))
        .collect();
    let program = b.finish(g, cache, &[]).expect("plan");
    for &o in &poisoned {
        let size = program.tensor_size(o) as usize;
        let (buf, offset) = program.location(o);
        g.queue.write_buffer(buf, offset, &vec![0xFFu8; size]);
    }
    let mut enc = g.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        program.encode(&mut pass);
    }
    let staging: Vec<wgpu::Buffer> = outs
        .iter()
        .map(|&o| {
            let size = program.tensor_size(o);
            let s = g.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let (buf, offset) = program.location(o);
            enc.copy_buffer_to_buffer(buf, offset, &s, 0, size);
            s
        })
        .collect();
    g.queue.submit(Some(enc.finish()));
    staging
        .iter()
        .map(|s| read_buffer::<u32>(g, s).expect("readback"))
        .collect()
}

pub fn as_f32(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&u| f32::from_bits(u)).collect()
}

/// How far a GPU output is from its CPU twin: the largest `|got - want| / max(1, |want|)`,
/// where it is, and the outputs that are not finite (a poisoned output never written, or a
/// NaN). Compares with a tolerance as a number (`diff <= tol`); a non-finite output is
/// infinitely far. Displayed with the index and both values of the worst and first non-finite
/// elements, so a failing assert says where, beside the kernel and shape its message names.
#[derive(Clone, Copy, Debug)]
pub struct Diff {
    /// The largest relative error over the finite outputs, or infinity if any is not finite.
    pub max: f32,
    /// Index of the largest error, with the value got and wanted there.
    pub worst: (usize, f32, f32),
    /// Number of outputs that are not finite, and the first of them (index, got, want).
    pub non_finite: (usize, Option<(usize, f32, f32)>),
    /// Number of outputs compared.
    pub len: usize,
}

impl PartialEq<f32> for Diff {
    fn eq(&self, other: &f32) -> bool {
        self.max == *other
    }
}

impl PartialOrd<f32> for Diff {
    fn partial_cmp(&self, other: &f32) -> Option<std::cmp::Ordering> {
        self.max.partial_cmp(other)
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (i, g, w) = self.worst;
        write!(
            f,
            "max relative error {:e} at [{i}] of {} (got {g}, want {w})",
            self.max, self.len
        )?;
        if let (count, Some((i, g, w))) = self.non_finite {
            write!(
                f,
                "; {count} non-finite outputs, the first at [{i}] (got {g}, want {w})"
            )?;
        }
        Ok(())
    }
}

/// [`Diff`] of `got` against `want`; panics (at the caller) on a length mismatch.
#[track_caller]
pub fn max_rel_err(got: &[f32], want: &[f32]) -> Diff {
    assert_eq!(got.len(), want.len(), "output length (got, want)");
    let mut d = Diff {
        max: 0.0,
        worst: (
            0,
            got.first().copied().unwrap_or(0.0),
            want.first().copied().unwrap_or(0.0),
        ),
        non_finite: (0, None),
        len: got.len(),
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() {
            d.non_finite.0 += 1;
            d.non_finite.1.get_or_insert((i, g, w));
            continue;
        }
        let e = (g - w).abs() / w.abs().max(1.0);
        if e > d.max {
            d.max = e;
            d.worst = (i, g, w);
        }
    }
    if d.non_finite.0 > 0 {
        d.max = f32::INFINITY;
    }
    d
}

/// Relative L2 error ||a - b|| / ||b||; panics (at the caller) on a length mismatch or a
/// non-finite output, naming its index.
#[track_caller]
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "output length (got, want)");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite(),
            "non-finite output {g} at [{i}] of {} (want {w})",
            got.len()
        );
        num += ((g - w) as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// A matching that reproduces a merge's slot map under `split` (the rank order among merged
/// tokens only changes the order of a float sum; a sorted split's slots keep no rank, and any
/// ranks that put the same tokens below `r` give the same map).
pub fn matching_from_slots(slots: &[u32], n: usize, r: usize, split: Split) -> Matching {
    let na = split.na(n);
    let unmerged = (na - r) as u32;
    let lead = split.lead as u32;
    let mut rank = vec![0u32; na];
    let mut dst = vec![0u32; na];
    let mut next_merged = 0u32;
    for a in 0..na {
        let s = slots[split.a_pos(a)] - lead;
        if s < unmerged {
            rank[a] = s + r as u32;
        } else {
            rank[a] = next_merged;
            next_merged += 1;
            dst[a] = s - unmerged;
        }
    }
    Matching {
        rank,
        dst,
        row_max: vec![0.0; na],
    }
}

/// The GPU's order of A tokens may differ from the twin's only among row maxima that agree to
/// 1e-5 (the twin's f64 similarities rounded to f32 against the GPU's f32 dot products). With
/// a sorted split only the merged set is visible: a token merged by one side only must sit at
/// the twin's boundary between merged and kept.
#[track_caller]
pub fn assert_near_tie(
    gpu_slots: &[u32],
    twin: &Matching,
    n: usize,
    r: usize,
    split: Split,
    at: (usize, usize, usize),
) {
    let na = split.na(n);
    let unmerged = (na - r) as u32;
    let lead = split.lead as u32;
    let mut by_rank = vec![0.0f32; na];
    for a in 0..na {
        by_rank[twin.rank[a] as usize] = twin.row_max[a];
    }
    for a in 0..na {
        let s = gpu_slots[split.a_pos(a)] - lead;
        let t = twin.rank[a] as usize;
        let gpu_merged = s >= unmerged;
        // Where the GPU put this token: an exact rank if unmerged (rank order), somewhere below
        // r if merged; with a sorted split, just on its side of the boundary.
        let gpu_rank = if gpu_merged {
            t.min(r - 1)
        } else if split.sorted {
            t.max(r)
        } else {
            s as usize + r
        };
        let gap = (twin.row_max[a] - by_rank[gpu_rank]).abs();
        assert!(gap <= 1e-5, "{at:?}: A token {a} ranked {gpu_rank} on the GPU and {t} on the CPU, row maxima differ by {gap}");
    }
}

/// Storage precisions to test kernels in: f32, and f16 where the device has `SHADER_F16`.
pub fn precisions() -> Vec<bool> {
    let f16 = gpu().features.contains(wgpu::Features::SHADER_F16);
    if !f16 {
        eprintln!("note: the adapter has no SHADER_F16; f16 kernel variants not run here");
    }
    if f16 {
        vec![false, true]
    } else {
        vec![false]
    }
}

/// Tolerance of [`max_rel_err`] for a kernel in the storage precision: f32 against f64
/// accumulation on the CPU (2e-5), or with f16 storage 2e-3: the CPU twin runs on the same
/// f16-rounded inputs, so what remains is the output's own rounding to f16 (WGSL lets it round
/// either way: up to one ulp, 2^-10 relative in [1, 2)) plus f32 accumulation.
pub fn tol(f16: bool) -> f32 {
    if f16 {
        2e-3
    } else {
        2e-5
    }
}

/// `v` rounded to f16 and back (the values an f16 program stores), or `v` itself.
pub fn rounded(v: &[f32], f16: bool) -> Vec<f32> {
    if f16 {
        v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
    } else {
        v.to_vec()
    }
}

/// A readback of `len` storage elements (32-bit words of two f16 each in an f16 program).
#[track_caller]
pub fn decode(words: &[u32], f16: bool, len: usize) -> Vec<f32> {
    let bytes: &[u8] = bytemuck::cast_slice(words);
    let mut v = sret_tome::runtime::forward::decode_elems(bytes, f16);
    assert!(
        v.len() >= len,
        "readback of {} values, {len} expected",
        v.len()
    );
    v.truncate(len);
    v
}

/// The CPU twin of a forward whose merges the GPU traced (`merges`), and how many of the
/// `batch` images the GPU resolved a near-tie of differently.
///
/// Every merge decision is compared. Before an image's first disagreement the GPU and the twin
/// are in the same state, so that disagreement must be a near-tie of the twin's own row maxima
/// ([`assert_near_tie`]); after it the states differ and later disagreements are consequences.
/// Where any image disagreed, the twin is re-run on the GPU's decisions, so its logits are those
/// the GPU must match.
pub fn twin_replaying(
    cfg: &sret_tome::model::ModelConfig,
    weights: &sret_tome::model::ModelWeights,
    images: &[f32],
    batch: usize,
    spec: &sret_tome::runtime::ForwardSpec,
    merges: &[sret_tome::api::MergeTrace],
) -> (sret_tome::reference::ReferenceOutput, usize) {
    use sret_tome::reference::{self as cpu, ReferenceSpec};
    let safe_r = spec.trajectory.per_stage_safe_r();
    let rspec = ReferenceSpec {
        safe_r: &safe_r,
        perms: &spec.perms,
        forced: None,
    };
    let want = cpu::forward(cfg, weights, images, batch, &rspec);
    let mut forced: Vec<Vec<Vec<Option<Matching>>>> = safe_r
        .iter()
        .map(|s| vec![vec![None; batch]; s.len()])
        .collect();
    let split = Split::of(cfg);
    let mut diverged = vec![false; batch];
    let mut total = 0;
    for m in merges {
        let (s, e, slots, n_in) = (&m.stage, &m.exec, &m.slots, &m.n_in);
        let r = safe_r[*s][*e];
        for i in 0..batch {
            total += 1;
            let gpu_slots = &slots[i * n_in..(i + 1) * n_in];
            let twin = &want.matchings[*s][*e][i];
            if !diverged[i] && gpu_slots != &cpu::merge_slot_map_split(*n_in, r, twin, split)[..] {
                diverged[i] = true;
                assert_near_tie(gpu_slots, twin, *n_in, r, split, (*s, *e, i));
            }
            forced[*s][*e][i] = Some(matching_from_slots(gpu_slots, *n_in, r, split));
        }
    }
    assert_eq!(
        total,
        batch * safe_r.iter().flatten().filter(|&&r| r > 0).count(),
        "one traced merge per image and merging execution"
    );
    let differing = diverged.iter().filter(|&&d| d).count();
    if differing == 0 {
        return (want, 0);
    }
    let rspec = ReferenceSpec {
        forced: Some(&forced),
        ..rspec
    };
    (cpu::forward(cfg, weights, images, batch, &rspec), differing)
}

thread_local! {
    /// The failing cases of the table test running on this thread (see [`Cases`]).
    static CASES: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// A table test's collector of failing cases: while it lives, [`expect`] records a failing
/// case instead of stopping at it, and when it drops at the end of the test it fails with every
/// case that failed. Without one, [`expect`] panics at once.
pub struct Cases(());

impl Cases {
    /// Start collecting this thread's failing cases.
    pub fn new() -> Cases {
        CASES.with(|c| *c.borrow_mut() = Some(Vec::new()));
        Cases(())
    }
}

impl Drop for Cases {
    fn drop(&mut self) {
        let failed = CASES.with(|c| c.borrow_mut().take()).unwrap_or_default();
        if !failed.is_empty() && !std::thread::panicking() {
            panic!("{} failing cases:\n{}", failed.len(), failed.join("\n"));
        }
    }
}

/// Check one case of a table test: `what` describes it (kernel, shape, variant, error) when
/// `ok` is false.
#[track_caller]
pub fn expect(ok: bool, what: impl FnOnce() -> String) {
    if ok {
        return;
    }
    let msg = what();
    let collected = CASES.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|v| v.push(msg.clone()))
            .is_some()
    });
    if !collected {
        panic!("{msg}");
    }
}
