//! Kernels that check themselves: before an engine runs a non-portable kernel variant
//! (subgroup, tiled, vec4; chosen by autotune, pinned, or the default) on an adapter, driver and
//! precision not seen before, that variant's results are compared on the device with the
//! portable kernel's.
//!
//! One engine runs the model's unmerged forward with every kind portable (the reference), one
//! with the non-portable variants, on fixed pseudo-random images at the model's own shapes
//! (batch 1, every token: no merging, so merge near-ties cannot blur a difference); only when
//! they disagree does one engine per kind find which variant is wrong. The matching kernel does
//! not run in an unmerged forward: it is checked at kernel level instead (the metric and
//! matching step 1 on fixed pseudo-random keys at the first stage's shape, `compare_matching`).
//! A kind whose logits differ from
//! the reference's by more than [`tolerance`] (relative to the reference's largest logit) is
//! rejected: a `warn` log names the kernel, the shapes, how far off it was and what runs
//! instead, the engine runs the portable kernel for it, and [`Engine::kernels`] lists it under
//! `rejected`. The verdicts are cached in the autotune cache file (`autotune.tsv`, one line per
//! kind and variant, keyed by the adapter, driver, precision and model), so each is paid once
//! per adapter, whatever the schedule, batch and the other kinds' variants.
//!
//! [`EngineBuilder::validate_kernels`] (`false`) or `SRET_TOME_VALIDATE=off` skip it.
//!
//! [`Engine::kernels`]: super::Engine::kernels
//! [`EngineBuilder::validate_kernels`]: super::EngineBuilder::validate_kernels

use std::fmt;
use std::path::Path;
use std::time::Instant;

use super::{Autotune, EngineBuilder, TuneCache};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::merge::{record_match, record_metric, MergeShape};
use crate::kernels::{KernelKind, PipelineCache, ProgramBuilder, Variant, Variants};
use crate::model::{ModelConfig, Precision};
use crate::runtime::ForwardSpec;
use crate::tome::Schedule;

/// How the kernel variants of an engine were checked ([`super::KernelChoice::validation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Not checked: [`EngineBuilder::validate_kernels`]`(false)`, `SRET_TOME_VALIDATE=off`, or
    /// a browser (whose build cannot block on the checks).
    Off,
    /// Every kind prefers its portable kernel: nothing to check.
    NothingToCheck,
    /// Checked while this engine was built.
    Checked,
    /// Checked before on this adapter, driver and plan: the verdict came from the autotune cache.
    Cached,
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Validation::Off => "not checked",
            Validation::NothingToCheck => "portable kernels only",
            Validation::Checked => "checked against the portable kernels",
            Validation::Cached => "checked before (autotune cache)",
        })
    }
}

/// A kernel variant that disagreed with the portable kernel and does not run.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The kernel kind.
    pub kind: KernelKind,
    /// The variant that disagreed.
    pub variant: Variant,
    /// Largest difference from the portable kernel's logits, relative to the largest portable
    /// logit (`NaN` when the variant's logits were not finite, or for a verdict read from the
    /// cache).
    pub error: f64,
    /// The tolerance it was held to.
    pub tolerance: f64,
}

/// Largest relative difference of a variant's logits from the portable kernels' accepted: the
/// variants compute the same sums in another order, which moves f32 logits by about 1e-6
/// relative and f16 ones by about 1e-3.
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-3,
        Precision::F16 => 2e-2,
    }
}

/// The default of [`EngineBuilder::validate_kernels`]: `SRET_TOME_VALIDATE` (`off`, `0`,
/// `false` or `no` turn it off), else on.
pub fn from_env() -> bool {
    !matches!(
        std::env::var("SRET_TOME_VALIDATE").as_deref(),
        Ok("off" | "0" | "false" | "no")
    )
}

/// What [`check`] needs of the engine being built.
pub(super) struct Check<'a> {
    /// A builder of the engine's model on its device and pipeline cache (autotune off).
    pub base: EngineBuilder,
    pub gpu: &'a Gpu,
    /// The engine's pipeline cache.
    pub cache: &'a PipelineCache,
    pub cfg: &'a ModelConfig,
    pub spec: &'a ForwardSpec,
    pub trusted: bool,
    pub dir: Option<&'a Path>,
    /// Test hook: the kind whose variant's logits are perturbed before the comparison.
    pub fault: Option<KernelKind>,
    pub progress: Option<&'a super::Progress>,
}

/// `preferred` with every kind whose variant disagrees with the portable kernel set to
/// portable, how that was found, and the rejections. Verdicts are per kind and variant, so a
/// variant checked once on an adapter is not checked again for another choice.
pub(super) fn check(
    c: Check<'_>,
    preferred: Variants,
) -> Result<(Variants, Validation, Vec<Rejected>)> {
    let kinds: Vec<KernelKind> = KernelKind::ALL
        .into_iter()
        .filter(|&k| preferred.get(k) != Variant::Portable)
        .collect();
    if kinds.is_empty() {
        return Ok((preferred, Validation::NothingToCheck, Vec::new()));
    }
    let tol = tolerance(c.spec.precision);
    // A fault injected for a test is neither read from the cache nor written to it.
    let store = c.dir.filter(|_| c.fault.is_none()).map(TuneCache::in_dir);
    let cached = store.as_ref().map(TuneCache::entries).unwrap_or_default();
    let key = |kind: KernelKind| key(&c, kind, preferred.get(kind));
    let mut out = preferred;
    let mut rejected = Vec::new();
    let mut unchecked = Vec::new();
    for &kind in &kinds {
        match cached.get(&key(kind)).map(|v| v.get(kind)) {
            Some(verdict) if verdict == preferred.get(kind) => {}
            Some(_) => {
                out.set(kind, Variant::Portable);
                rejected.push(Rejected {
                    kind,
                    variant: preferred.get(kind),
                    error: f64::NAN,
                    tolerance: tol,
                });
            }
            None => unchecked.push(kind),
        }
    }
    if unchecked.is_empty() {
        log::info!("kernel check: {out} (cached verdicts)");
        return Ok((out, Validation::Cached, rejected));
    }
    let start = Instant::now();
    let msg = format!(
        "checking the kernel variants {} against the portable kernels on this adapter, first \
         time only: two unmerged forwards of {} at batch 1 (skip with SRET_TOME_VALIDATE=off)",
        unchecked
            .iter()
            .map(|k| format!("{} {}", k.name(), preferred.get(*k).name()))
            .collect::<Vec<_>>()
            .join(", "),
        c.cfg.name
    );
    super::tune::say(c.progress, msg);
    let mut errors = compare(&c, preferred, &unchecked, tol)?;
    for (kind, error) in errors
        .iter_mut()
        .filter(|(k, _)| *k == KernelKind::Matching)
    {
        *error = compare_matching(&c, preferred.get(*kind), tol)?;
    }
    for (kind, error) in errors {
        let verdict = if error.is_some_and(|e| e.is_nan() || e > tol) {
            out.set(kind, Variant::Portable);
            rejected.push(Rejected {
                kind,
                variant: preferred.get(kind),
                error: error.unwrap_or(f64::NAN),
                tolerance: tol,
            });
            Variant::Portable
        } else {
            preferred.get(kind)
        };
        if let Some(s) = &store {
            let mut line = Variants::portable();
            line.set(kind, verdict);
            if let Err(e) = s.put(&key(kind), line) {
                log::warn!("kernel check verdict not cached ({e}); the next build checks again");
            }
        }
    }
    let msg = format!(
        "kernel check done in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        if rejected.is_empty() {
            "every variant agrees with the portable kernels".to_string()
        } else {
            format!("{} rejected", rejected.len())
        }
    );
    super::tune::say(c.progress, msg);
    Ok((out, Validation::Checked, rejected))
}

/// Per kind of `kinds`, the largest relative difference of the unmerged forward's logits with
/// that kind's variant from those with every kind portable (`None` where the variant does not
/// run: it fell back on this device or for these shapes, or the unmerged forward has no such
/// kernel, as for matching). One engine runs all the variants at once; only when it disagrees
/// does one engine per kind find which. A variant over `tol` is said in a `warn` log.
fn compare(
    c: &Check<'_>,
    preferred: Variants,
    kinds: &[KernelKind],
    tol: f64,
) -> Result<Vec<(KernelKind, Option<f64>)>> {
    let base = c
        .base
        .clone()
        .schedule(Schedule::None)
        .batch(1)
        .trace(false);
    let portable = Variants::portable();
    let reference = base.clone().autotune(Autotune::Pin(portable)).build()?;
    let images = images(reference.input_len());
    let want = reference.run(&images)?.into_vec();
    drop(reference);
    // Logits with `kinds` at their preferred variants (the others portable), and the kinds
    // whose variant runs.
    let run = |kinds: &[KernelKind]| -> Result<(f64, Vec<KernelKind>)> {
        let mut pins = portable;
        for &k in kinds {
            pins.set(k, preferred.get(k));
        }
        let engine = base.clone().autotune(Autotune::Pin(pins)).build()?;
        let ran: Vec<KernelKind> = engine
            .kernels()
            .used
            .iter()
            .filter(|(k, v)| kinds.contains(k) && *v != Variant::Portable)
            .map(|&(k, _)| k)
            .collect();
        if ran.is_empty() {
            return Ok((0.0, ran));
        }
        let mut got = engine.run(&images)?.into_vec();
        if c.fault.is_some_and(|k| ran.contains(&k)) {
            // Test hook: a wrong kernel, seen from outside.
            for (i, g) in got.iter_mut().enumerate() {
                *g += if i % 2 == 0 { 0.5 } else { -0.5 };
            }
        }
        Ok((relative_error(&got, &want), ran))
    };
    let (error, ran) = run(kinds)?;
    let agrees = |e: f64| !e.is_nan() && e <= tol;
    let mut out: Vec<(KernelKind, Option<f64>)> = kinds
        .iter()
        .map(|&k| (k, ran.contains(&k).then_some(error)))
        .collect();
    if !agrees(error) && ran.len() > 1 {
        for (kind, e) in out.iter_mut().filter(|(_, e)| e.is_some()) {
            *e = Some(run(&[*kind])?.0);
        }
    }
    for &(kind, error) in &out {
        let Some(error) = error else { continue };
        log::debug!(
            "kernel check: {} {}: error {error:.2e}",
            kind.name(),
            preferred.get(kind).name()
        );
        if !agrees(error) {
            log::warn!(
                "kernel check: the {} kernel's {} variant disagrees with the portable kernel on \
                 {}'s unmerged forward (batch 1, tokens per stage {}): largest difference \
                 {error:.2e} of the largest logit, over the tolerance {tol:.0e}; the portable {} \
                 kernel runs instead on this adapter ({} {})",
                kind.name(),
                preferred.get(kind).name(),
                c.cfg.name,
                unmerged_tokens(c.cfg),
                kind.name(),
                c.gpu.info.name,
                c.gpu.info.driver
            );
        }
    }
    Ok(out)
}

/// What the matching check reads back: the metric, each A token's best score and its B token.
type MatchReadback = (Vec<f32>, Vec<f32>, Vec<u32>);

/// The matching kernel's `variant` against the portable one, at kernel level: the metric and
/// matching step 1 ([`record_match`]) on fixed pseudo-random keys at the model's first-stage
/// shape (batch 1, every token), once with each matcher. Returns the largest difference of the
/// best scores (cosine similarities, so absolute), and where the two choose different B tokens,
/// how far the variant's choice scores below the portable best (from the shared metric, in
/// f64): a near-tie choosing another B token is no error, a worse token is. `None` where the
/// variant does not run for these shapes (the subgroup matcher needs 32-channel heads). A
/// difference over `tol` is said in a `warn` log.
fn compare_matching(c: &Check<'_>, variant: Variant, tol: f64) -> Result<Option<f64>> {
    let cfg = c.cfg;
    let stage = &cfg.stages[0];
    let split = crate::tome::Split::of(cfg);
    let n = split.lead + cfg.tokens(0);
    let shape = MergeShape {
        batch: 1,
        n,
        r: 0,
        c: stage.dim,
        dim: stage.dim,
        heads: stage.heads,
        n_grid: cfg.tokens(0),
        split,
    };
    let qkv = images(n * 3 * stage.dim);
    let hd = stage.dim / stage.heads;
    // (metric, best scores, best B tokens) with `variant` as the matcher, or `None` where it
    // falls back.
    let run = |variant: Variant| -> Result<Option<MatchReadback>> {
        let mut b = ProgramBuilder::new(&c.gpu.limits);
        b.set_subgroup_width(crate::kernels::program::subgroup_width(c.gpu));
        let mut pins = Variants::portable();
        pins.set(KernelKind::Matching, variant);
        b.set_variants(pins);
        let keys = b.weights("check qkv", &qkv);
        let m = record_match(&mut b, shape, keys, "check");
        let ran = (0..b.dispatch_count())
            .any(|i| b.step(i).0.kernel.variant() == Some((KernelKind::Matching, variant)));
        if !ran {
            return Ok(None);
        }
        // The matchers keep their metric on chip: score with the metric kernel's.
        let metric = record_metric(&mut b, shape, keys, "check");
        let outs = [metric, m.row_max, m.dst];
        for &t in &outs {
            b.pin(t);
        }
        let program = b.finish(c.gpu, c.cache, &[])?;
        let dev = &c.gpu.device;
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            program.encode(&mut pass);
        }
        let staging: Vec<wgpu::Buffer> = outs
            .iter()
            .map(|&t| {
                let size = program.tensor_size(t);
                let s = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kernel check readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let (buf, offset) = program.location(t);
                enc.copy_buffer_to_buffer(buf, offset, &s, 0, size);
                s
            })
            .collect();
        c.gpu.queue.submit(Some(enc.finish()));
        let metric: Vec<f32> = crate::gpu::read_buffer(c.gpu, &staging[0])?;
        let row_max: Vec<f32> = crate::gpu::read_buffer(c.gpu, &staging[1])?;
        let dst: Vec<u32> = crate::gpu::read_buffer(c.gpu, &staging[2])?;
        Ok(Some((metric, row_max, dst)))
    };
    let Some((metric, want_max, want_dst)) = run(Variant::Portable)? else {
        return Ok(None);
    };
    let Some((_, got_max, got_dst)) = run(variant)? else {
        return Ok(None);
    };
    // Token `i` of set A or B (after the lead tokens, alternating; see `tome::Split`).
    let a_token = |a: usize| split.lead + 2 * a + split.a_odd as usize;
    let b_token = |j: usize| split.lead + 2 * j + 1 - split.a_odd as usize;
    let score = |a: usize, j: usize| -> f64 {
        let (x, y) = (a_token(a) * hd, b_token(j) * hd);
        (0..hd)
            .map(|d| {
                metric.get(x + d).copied().unwrap_or(f32::NAN) as f64
                    * metric.get(y + d).copied().unwrap_or(f32::NAN) as f64
            })
            .sum()
    };
    let mut error = 0f64;
    for (a, (&g, &w)) in got_max.iter().zip(&want_max).enumerate() {
        let mut e = (g as f64 - w as f64).abs();
        if got_dst.get(a) != want_dst.get(a) {
            let chosen = got_dst
                .get(a)
                .map(|&j| score(a, j as usize))
                .unwrap_or(f64::NAN);
            e = e.max(w as f64 - chosen);
        }
        if e.is_nan() || !g.is_finite() {
            error = f64::NAN;
            break;
        }
        error = error.max(e);
    }
    if got_max.len() != want_max.len() || got_dst.len() != want_dst.len() {
        error = f64::NAN;
    }
    if c.fault == Some(KernelKind::Matching) {
        // Test hook: a wrong kernel, seen from outside.
        error += 0.5;
    }
    if error.is_nan() || error > tol {
        log::warn!(
            "kernel check: the matching kernel's {} variant disagrees with the portable kernel on \
             {}'s first-stage matching ({n} tokens, {hd}-channel metric): largest difference \
             {error:.2e} of the best scores, over the tolerance {tol:.0e}; the portable matching \
             kernel runs instead on this adapter ({} {})",
            variant.name(),
            cfg.name,
            c.gpu.info.name,
            c.gpu.info.driver
        );
    }
    Ok(Some(error))
}

/// The cache key of the verdict on `kind`'s `variant`: the autotune key's adapter, driver,
/// backend, subgroup width, precision and model, and the kind and variant (its value: every
/// kind set to the variant that runs, the checked one or portable). Not the schedule or the
/// batch: the check runs the unmerged forward at batch 1 whatever they are, so one verdict
/// serves them all.
fn key(c: &Check<'_>, kind: KernelKind, variant: Variant) -> String {
    let gpu = c.gpu;
    let raw = format!(
        "{} | {:?} | {} {} | sg {:?} | {:?} | {}@{} | {} | validated {}={} #{:016x}",
        gpu.info.name,
        gpu.info.backend,
        gpu.info.driver,
        gpu.info.driver_info,
        crate::kernels::program::subgroup_width(gpu),
        c.spec.precision,
        c.cfg.name,
        c.cfg.image_size,
        if c.trusted { "unchecked" } else { "checked" },
        kind.name(),
        variant.name(),
        crate::kernels::catalogue::variant_fingerprint(kind, variant),
    );
    raw.replace(['\t', '\n', '\r'], " ")
}

/// Largest `|got - want|` over the largest `|want|`; `NaN` when `got` is not finite.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|g| !g.is_finite()) {
        return f64::NAN;
    }
    let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    diff / scale.max(1e-6)
}

/// Fixed pseudo-random normalised images.
fn images(len: usize) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64::new(0x5eed_c0de);
    (0..len).map(|_| 2.0 * rng.symmetric()).collect()
}

/// Tokens entering each stage of the unmerged forward.
fn unmerged_tokens(cfg: &ModelConfig) -> String {
    let Ok(spec) = ForwardSpec::new(cfg, &Schedule::None, 0) else {
        return "?".into();
    };
    let mut stages: Vec<String> = Vec::new();
    for e in &spec.trajectory.executions {
        let t = e.tokens_in.to_string();
        if stages.last() != Some(&t) {
            stages.push(t);
        }
    }
    stages.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_and_catches_non_finite() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.2], &[1.0, 2.0]) - 0.1).abs() < 1e-6);
        assert!(relative_error(&[f32::NAN, 2.0], &[1.0, 2.0]).is_nan());
        assert!(relative_error(&[1.0], &[1.0, 2.0]).is_nan());
    }
}
