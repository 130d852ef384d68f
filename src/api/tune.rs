//! Kernel variant selection by measurement ("autotune").
//!
//! For a plan (model, schedule, batch, precision) on an adapter, every candidate variant of
//! each [`KernelKind`] is timed and the fastest recorded into the plan: one engine per round
//! of candidates (round `i` prefers each kind's `i`-th candidate, its last one past the end:
//! round 0 subgroup kernels everywhere and the fused MLP (the fixed default but for the MLP,
//! which it runs unfused), round 1 workgroup-tiled linear layers,
//! vec4 attention, portable convolutions and matching and the MLP as two linear layers, round 2
//! the portable kernels only, the MLP unfused; a round whose
//! kernels repeat an earlier round's is skipped), a warm-up forward, then two per-dispatch
//! profiles (timestamp queries) whose per-kind minimum decides, kind by kind.
//! Without timestamp queries the round whose whole forward is fastest by wall clock wins.
//! A variant replaces the default only when it is at least [`MARGIN`] faster, so noise does
//! not flip choices between runs.
//!
//! Choices are cached in a small text file (`autotune.tsv`: one `key<TAB>variants` line per
//! plan and adapter), hand-written because the lean library has no serialisation crate; it is
//! replaced atomically, and malformed lines are ignored with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{Kernel, KernelKind, Variant, Variants};
use crate::model::ModelConfig;
use crate::runtime::ForwardSpec;

/// How an [`Engine`](super::Engine) picks its kernel variants
/// ([`EngineBuilder::autotune`](super::EngineBuilder::autotune)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Autotune {
    /// Time the candidates at build, or reuse the cached choice for this adapter and plan.
    #[default]
    Measure,
    /// No measurement: the fixed default, [`Variants::default`] (subgroup kernels where the
    /// adapter has them, else vec4 attention, else the portable kernels).
    Off,
    /// Exactly these preferences, for bit-reproducible runs across machines and builds
    /// (merge decisions at f32 near-ties can differ between variants).
    Pin(Variants),
}

impl Autotune {
    /// The default of [`EngineBuilder`](super::EngineBuilder): `SRET_TOME_AUTOTUNE` (`on`,
    /// `off`, or a variant list as `--kernels` takes it) where set and valid, else
    /// [`Autotune::Measure`].
    pub fn from_env() -> Autotune {
        match std::env::var("SRET_TOME_AUTOTUNE") {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                log::warn!("SRET_TOME_AUTOTUNE ignored: {e}");
                Autotune::Measure
            }),
            Err(_) => Autotune::Measure,
        }
    }
}

/// `on`, `off`, or a pinned variant list ([`Variants`]' syntax).
impl std::str::FromStr for Autotune {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "on" | "measure" => Ok(Autotune::Measure),
            "off" | "default" => Ok(Autotune::Off),
            pin => Ok(Autotune::Pin(pin.parse()?)),
        }
    }
}

/// A variant replaces the default only when its time is below `(1 - MARGIN)` of the default's.
pub const MARGIN: f64 = 0.05;

/// Where the variants of an engine came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceSource {
    /// [`Autotune::Off`]: the fixed default.
    Default,
    /// [`Autotune::Pin`].
    Pinned,
    /// Measured while this engine was built.
    Measured,
    /// Measured before, read from the autotune cache.
    Cached,
}

impl fmt::Display for ChoiceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChoiceSource::Default => "default (autotune off)",
            ChoiceSource::Pinned => "pinned",
            ChoiceSource::Measured => "measured",
            ChoiceSource::Cached => "measured earlier (autotune cache)",
        })
    }
}

/// The kernel variants of an engine ([`Engine::kernels`](super::Engine::kernels)).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelChoice {
    /// The preferences the plan was recorded with.
    pub preferred: Variants,
    /// Where they came from.
    pub source: ChoiceSource,
    /// What each kind actually runs in the plan (a preference falls back where its variant
    /// cannot run); kinds the model does not use are absent.
    pub used: Vec<(KernelKind, Variant)>,
    /// Per round measured: the preferences and, per kind, seconds (per-dispatch profile) or,
    /// without timestamps, the whole forward's wall time under [`None`].
    pub measurements: Measurements,
    /// How the variants were checked against the portable kernels ([`super::validate`]).
    pub validation: super::Validation,
    /// The variants that disagreed with the portable kernels and do not run (the portable
    /// kernel runs instead; `preferred` and `used` say what runs).
    pub rejected: Vec<super::Rejected>,
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used: Vec<String> = self
            .used
            .iter()
            .map(|(k, v)| format!("{} {}", k.name(), v.name()))
            .collect();
        write!(
            f,
            "{} ({}; {}",
            used.join(", "),
            self.source,
            self.validation
        )?;
        for r in &self.rejected {
            write!(f, "; {} {} rejected", r.kind.name(), r.variant.name())?;
        }
        f.write_str(")")
    }
}

/// What each kind runs in a plan whose dispatches run `shaders`.
pub(super) fn used(shaders: impl Iterator<Item = &'static str>) -> Vec<(KernelKind, Variant)> {
    let mut out: Vec<(KernelKind, Variant)> = Vec::new();
    for name in shaders {
        let Some(s) = Kernel::ALL.into_iter().find(|s| s.name() == name) else {
            continue;
        };
        if let Some((k, v)) = s.variant() {
            if !out.iter().any(|(kk, _)| *kk == k) {
                out.push((k, v));
            }
        }
    }
    // Every model has MLPs: without the fused kernel they ran as two linear layers.
    if !out.iter().any(|(k, _)| *k == KernelKind::Mlp) {
        out.push((KernelKind::Mlp, Variant::Portable));
    }
    out.sort();
    out
}

/// The candidate preferences of round `i` (see the module docs).
pub(super) fn round(i: usize) -> Variants {
    let mut v = Variants::default();
    for k in KernelKind::ALL {
        let c = k.candidates();
        v.set(k, c[i.min(c.len() - 1)]);
    }
    v
}

/// Rounds measured: as many as the kind with the most candidates has.
pub(super) const ROUNDS: usize = 3;

/// Per kind, the fastest round's variant; the default (round 0) unless another round is
/// faster by [`MARGIN`]. `times[r]` holds per-kind seconds of round `r`.
pub(super) fn pick(rounds: &Measurements) -> Variants {
    let time = |r: usize, k: Option<KernelKind>| {
        rounds[r].1.iter().find(|(kk, _)| *kk == k).map(|&(_, t)| t)
    };
    let mut out = rounds.first().map_or_else(Variants::default, |r| r.0);
    let per_kind = rounds.iter().all(|r| r.1.iter().all(|(k, _)| k.is_some()));
    if per_kind {
        for k in KernelKind::ALL {
            let Some(mut best_t) = time(0, Some(k)) else {
                continue;
            };
            for (r, (variants, _)) in rounds.iter().enumerate().skip(1) {
                if let Some(t) = time(r, Some(k)) {
                    if t < best_t * (1.0 - MARGIN) {
                        best_t = t;
                        out.set(k, variants.get(k));
                    }
                }
            }
        }
    } else {
        let mut best = (0, time(0, None).unwrap_or(f64::INFINITY));
        for r in 1..rounds.len() {
            if let Some(t) = time(r, None) {
                if t < best.1 * (1.0 - MARGIN) {
                    best = (r, t);
                }
            }
        }
        out = rounds[best.0].0;
    }
    out
}

/// The part of a cache key that names the model and its token counts (what `plan` matches).
pub fn shape_tag(cfg: &ModelConfig, spec: &ForwardSpec) -> (String, String) {
    let tokens: Vec<String> = spec
        .trajectory
        .executions
        .iter()
        .map(|e| e.tokens_in.to_string())
        .collect();
    (
        format!("{}@{}", cfg.name, cfg.image_size),
        format!("tokens {}", tokens.join(",")),
    )
}

/// The cache key of a plan on an adapter: adapter, driver, backend, precision, shape and the
/// candidate variants.
pub(super) fn key(gpu: &Gpu, cfg: &ModelConfig, spec: &ForwardSpec, trusted: bool) -> String {
    let (model, tokens) = shape_tag(cfg, spec);
    // The candidate lists too, and a fingerprint of their code: a build with other variants to
    // try, or with changed kernels, measures again.
    let candidates: Vec<String> = KernelKind::ALL
        .iter()
        .map(|&k| {
            let names: Vec<String> = k
                .candidates()
                .iter()
                .map(|&v| {
                    let code = crate::kernels::catalogue::variant_fingerprint(k, v);
                    format!("{}#{:04x}", v.name(), code & 0xffff)
                })
                .collect();
            format!("{}={}", k.name(), names.join("/"))
        })
        .collect();
    let raw = format!(
        "{} | {:?} | {} {} | sg {:?} | {:?} | {model} | batch {} | {tokens} | {} | {}",
        gpu.info.name,
        gpu.info.backend,
        gpu.info.driver,
        gpu.info.driver_info,
        crate::kernels::program::subgroup_width(gpu),
        spec.precision,
        spec.batch,
        if trusted { "unchecked" } else { "checked" },
        candidates.join(","),
    );
    raw.replace(['\t', '\n', '\r'], " ")
}

/// Measure the rounds for `spec` with engines made from `base` (pinned per round), or reuse the
/// choice cached in `dir`: the preferences, where they came from, and the measurements.
pub(super) fn measure(
    base: super::EngineBuilder,
    gpu: &Gpu,
    cache: &crate::kernels::PipelineCache,
    cfg: &ModelConfig,
    spec: &ForwardSpec,
    dir: Option<&Path>,
    progress: Option<&Progress>,
) -> Result<(Variants, ChoiceSource, Measurements)> {
    let key = key(gpu, cfg, spec, cache.is_trusted());
    let store = dir.map(TuneCache::in_dir);
    if let Some(v) = store.as_ref().and_then(|s| s.get(&key)) {
        log::info!("autotune: {v} (cached) for {key}");
        return Ok((v, ChoiceSource::Cached, Vec::new()));
    }
    let start = std::time::Instant::now();
    say(
        progress,
        format!(
        "autotune: measuring kernel variants for this adapter, first time only: {ROUNDS} rounds \
         of an engine build and three forwards (pin the variants with Autotune::Pin, \
         SRET_TOME_AUTOTUNE or --kernels to skip this; the choice is cached in {})",
        store
            .as_ref()
            .map_or("no file: no cache directory".to_string(), |s| s
                .path()
                .display()
                .to_string())
        ),
    );
    let mut rounds: Measurements = Vec::new();
    let mut seen: Vec<Vec<&'static str>> = Vec::new();
    for r in 0..ROUNDS {
        let v = round(r);
        say(
            progress,
            format!(
                "autotune: round {}/{ROUNDS} ({v}), {:.1} s so far",
                r + 1,
                start.elapsed().as_secs_f64()
            ),
        );
        let engine = base.clone().autotune(Autotune::Pin(v)).build()?;
        let shaders: Vec<&'static str> = engine.inner.dispatch_names().map(|(_, n)| n).collect();
        if seen.contains(&shaders) {
            continue; // the same kernels as an earlier round (its preferences fell back)
        }
        // What ran, not what was preferred, is what a measurement says something about (a
        // preference that fell back would otherwise be cached as if it had run).
        let mut ran = v;
        for (kind, variant) in used(shaders.iter().copied()) {
            ran.set(kind, variant);
        }
        seen.push(shaders);
        engine.time_forward()?; // warm-up: first use of the pipelines
        let times = if gpu.has_timestamps() {
            let mut best: BTreeMap<KernelKind, f64> = BTreeMap::new();
            for _ in 0..2 {
                let mut sums: BTreeMap<KernelKind, f64> = BTreeMap::new();
                let profile = engine.profile()?;
                // The MLP kind is the MLP family's time, fused or not (the MLPs, the attention
                // projections before them where no merge comes between and the next blocks'
                // qkv layers after them: the fused kernel runs those too); unfused, its linear
                // layers are taken out of the linear kind's time, so that every round's linear
                // figure covers the same layers.
                let mlp = profile
                    .families
                    .iter()
                    .find(|(f, _)| *f == crate::kernels::Family::Mlp)
                    .map_or(0.0, |&(_, t)| t);
                if ran.mlp != Variant::Fused {
                    *sums.entry(KernelKind::Linear).or_default() -= mlp;
                }
                for (name, t, _) in profile.kernels {
                    let kind = Kernel::ALL
                        .into_iter()
                        .find(|s| s.name() == name)
                        .and_then(Kernel::variant);
                    if let Some((k, _)) = kind {
                        *sums.entry(k).or_default() += t;
                    }
                }
                sums.insert(KernelKind::Mlp, mlp);
                for (k, t) in sums {
                    let e = best.entry(k).or_insert(f64::INFINITY);
                    *e = e.min(t);
                }
            }
            best.into_iter().map(|(k, t)| (Some(k), t)).collect()
        } else {
            let mut walls = (0..3)
                .map(|_| engine.time_forward().map(|t| t.wall))
                .collect::<Result<Vec<f64>>>()?;
            walls.sort_by(f64::total_cmp);
            vec![(None, walls[1])]
        };
        rounds.push((ran, times));
    }
    let chosen = pick(&rounds);
    say(
        progress,
        format!(
            "autotune: {chosen} (measured in {:.1} s) for {key}",
            start.elapsed().as_secs_f64()
        ),
    );
    if let Some(s) = &store {
        if let Err(e) = s.put(&key, chosen) {
            log::warn!("autotune cache not written ({e}); the next build measures again");
        }
    }
    Ok((chosen, ChoiceSource::Measured, rounds))
}

/// A callback told what a long build is doing ([`EngineBuilder::on_progress`]).
///
/// [`EngineBuilder::on_progress`]: super::EngineBuilder::on_progress
pub type Progress = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Log `msg` at `info` level and hand it to the progress callback.
pub(super) fn say(progress: Option<&Progress>, msg: String) {
    log::info!("{msg}");
    if let Some(p) = progress {
        p(&msg);
    }
}

/// Per round: its preferences and per-kind seconds (or `None`: the whole forward's wall time).
pub type Measurements = Vec<(Variants, Vec<(Option<KernelKind>, f64)>)>;

/// The autotune cache: `dir/autotune.tsv`.
#[derive(Clone, Debug)]
pub struct TuneCache {
    path: PathBuf,
}

/// Largest cache file read (a line per plan and adapter is ~200 bytes).
const MAX_CACHE_BYTES: u64 = 4 << 20;

impl TuneCache {
    /// The cache in `dir`.
    pub fn in_dir(dir: &Path) -> TuneCache {
        TuneCache {
            path: dir.join("autotune.tsv"),
        }
    }

    /// The default directory: `SRET_TOME_CACHE_DIR`, else `$XDG_CACHE_HOME/sret-tome`, else
    /// `$HOME/.cache/sret-tome`; `None` when none is set.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("SRET_TOME_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("sret-tome")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("sret-tome")))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every cached `(key, variants)`.
    pub fn entries(&self) -> BTreeMap<String, Variants> {
        let text = match crate::io::files::read_regular_text(
            &self.path,
            MAX_CACHE_BYTES,
            "autotune cache",
        ) {
            Ok(t) => t,
            Err(e) => {
                if self.path.exists() {
                    log::warn!("autotune cache unreadable, measuring again: {e}");
                }
                return BTreeMap::new();
            }
        };
        let mut map = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line
                .split_once('\t')
                .map(|(k, v)| (k, v.parse::<Variants>()))
            {
                Some((k, Ok(v))) => {
                    map.insert(k.to_string(), v);
                }
                _ => log::warn!("{}: ignoring malformed line {line:?}", self.path.display()),
            }
        }
        map
    }

    /// The cached choice for `key`.
    pub fn get(&self, key: &str) -> Option<Variants> {
        self.entries().remove(key)
    }

    /// Record `variants` for `key` (atomically replacing the file).
    pub fn put(&self, key: &str, variants: Variants) -> Result<()> {
        let mut map = self.entries();
        map.insert(key.to_string(), variants);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        crate::io::files::write_atomic(&self.path, |w| {
            for (k, v) in &map {
                writeln!(w, "{k}\t{v}")?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_cover_every_candidate() {
        for k in KernelKind::ALL {
            for v in k.candidates() {
                assert!((0..ROUNDS).any(|r| round(r).get(k) == v), "{k:?} {v:?}");
            }
        }
        // Round 0 is the fixed default with the fused MLP, which the default leaves out.
        let first = Variants {
            mlp: Variant::Fused,
            ..Variants::default()
        };
        assert_eq!(round(0), first);
        let longest = KernelKind::ALL.iter().map(|k| k.candidates().len()).max();
        assert_eq!(longest, Some(ROUNDS));
    }

    #[test]
    fn picks_per_kind_with_a_margin() {
        use KernelKind as K;
        let t = |l: f64, a: f64| vec![(Some(K::Linear), l), (Some(K::Attention), a)];
        let rounds = vec![
            (round(0), t(1.0, 1.0)),
            (round(1), t(0.97, 0.5)), // linear within the margin: keeps the default
            (round(2), t(0.5, 0.6)),
        ];
        let v = pick(&rounds);
        assert_eq!(v.linear, Variant::Portable);
        assert_eq!(v.attention, Variant::Vec4);
        assert_eq!(v.matching, Variant::Subgroup);
        let wall = vec![(round(0), vec![(None, 1.0)]), (round(1), vec![(None, 0.9)])];
        assert_eq!(pick(&wall), round(1));
        let close = vec![
            (round(0), vec![(None, 1.0)]),
            (round(1), vec![(None, 0.99)]),
        ];
        assert_eq!(pick(&close), round(0));
    }

    #[test]
    fn cache_round_trips_and_skips_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sret-tune-{}", std::process::id()));
        let cache = TuneCache::in_dir(&dir);
        assert_eq!(cache.get("a"), None);
        cache.put("a", round(1)).unwrap();
        cache.put("b | x", round(2)).unwrap();
        assert_eq!(cache.get("a"), Some(round(1)));
        let mut text = std::fs::read_to_string(cache.path()).unwrap();
        text.push_str("garbage line\nc\tlinear=fast\n");
        std::fs::write(cache.path(), text).unwrap();
        assert_eq!(cache.get("b | x"), Some(round(2)));
        assert_eq!(cache.get("c"), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
