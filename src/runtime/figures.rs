//! Hardware-independent cost figures of a planned forward, and roofline estimates from them.
//!
//! [`cost_figures`] records the forward for a batch exactly as [`super::forward::memory_plan`]
//! does (no device: `wgpu::Limits` given, synthetic weights will do, the portable kernel
//! variants without 8-lane subgroups) and reads every dispatch of the recorded program:
//!
//! * **dispatches** and **compute passes**: a forward runs its program once per micro-batch,
//!   each run in one compute pass (`bench --profile` instead times every dispatch of the first
//!   micro-batch in a pass of its own); the copies between micro-batches are not counted;
//! * **global-memory bytes**, the *bound-tensor estimate*: per dispatch, the bytes of every
//!   distinct tensor bound read-only (read) and of every distinct tensor bound `read_write`
//!   (written), each counted once per dispatch, or the part the catalogue entry says one
//!   dispatch touches (a band of the stem: its rows and their halo, [`crate::kernels::Kernel::traffic`]). It
//!   is an upper bound on the traffic where a kernel touches only part of a tensor it binds
//!   otherwise (the keys of `qkv`) and
//!   a lower bound where a kernel re-reads (tiles of a matrix product that miss the caches) or
//!   reads what it writes (a residual read-modify-write is counted as written only). Uniform
//!   blocks are not counted;
//! * **FLOPs**, every arithmetic operation the kernel performs, from its parameters: a
//!   multiply-accumulate is 2, an epilogue (bias, GELU at 10, residual at 3) per output, a
//!   LayerNorm's statistics 4 and its application 4 per element, a comparison or a move 1 per
//!   element (the matching's `O(na^2)` rank included, as the kernel does it). This follows
//!   [`super::cost::FlopBreakdown`]'s conventions, so the total stays close to
//!   [`super::cost::flops_total`] (a test keeps it within a few per cent);
//! * **arithmetic intensity**: FLOPs per byte of that estimate.
//!
//! [`roofline`] turns the figures into a time on a [`DeviceProfile`] (peak FLOP/s, memory
//! bandwidth, a fixed cost per dispatch): per dispatch `max(flops / peak, bytes / bandwidth)`,
//! plus `dispatches x per-dispatch cost`. It is an estimate, never a measurement: real kernels
//! reach a fraction of either peak, caches change the traffic, and launches overlap.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::forward::split_batch;
use super::record;
use super::ForwardSpec;
use crate::error::{Error, Result};
use crate::kernels::program::ProgramBuilder;
use crate::kernels::Family;
use crate::model::{ModelConfig, ModelWeights};

/// What one dispatch costs, by the conventions of the module docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DispatchCost {
    /// The part of the network.
    #[serde(serialize_with = "family_name")]
    pub family: Family,
    /// The kernel's name ([`crate::kernels::Kernel::name`]).
    pub kernel: &'static str,
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes of the bound tensors the dispatch reads.
    pub bytes_read: u64,
    /// Bytes of the bound tensors the dispatch writes.
    pub bytes_written: u64,
}

impl DispatchCost {
    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}

fn family_name<S: serde::Serializer>(f: &Family, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

/// Sums over a set of dispatches (a family, or the whole forward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Number of dispatches.
    pub dispatches: u64,
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

impl Totals {
    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }

    /// FLOPs per byte of the bound-tensor estimate (0 without bytes).
    pub fn intensity(&self) -> f64 {
        if self.bytes() == 0 {
            0.0
        } else {
            self.flops as f64 / self.bytes() as f64
        }
    }

    /// Adds `times` runs of `d`, saturating at `u64::MAX` (which [`CostFigures::overflowed`]
    /// reports) instead of wrapping.
    fn add(&mut self, d: &DispatchCost, times: u64) {
        let add = |sum: &mut u64, v: u64| *sum = sum.saturating_add(times.saturating_mul(v));
        add(&mut self.dispatches, 1);
        add(&mut self.flops, d.flops);
        add(&mut self.bytes_read, d.bytes_read);
        add(&mut self.bytes_written, d.bytes_written);
    }

    /// Whether a sum reached `u64::MAX` (it saturated: the true figure is larger).
    pub fn saturated(&self) -> bool {
        [
            self.dispatches,
            self.flops,
            self.bytes_read,
            self.bytes_written,
        ]
        .contains(&u64::MAX)
            || self.bytes_read.checked_add(self.bytes_written).is_none()
    }
}

/// The cost figures of one forward of `batch` images (see the module docs).
#[derive(Clone, Debug)]
pub struct CostFigures {
    /// Images in the forward.
    pub batch: usize,
    /// Images per run of the program, and runs per forward.
    pub micro_batch: usize,
    /// Runs of the program per forward.
    pub micro_batches: usize,
    /// Compute passes of a forward (one per micro-batch).
    pub passes: usize,
    /// The dispatches of one run of the program, in order.
    pub program: Vec<DispatchCost>,
    /// Per family (in [`Family::ALL`] order) and in all, for the whole forward.
    pub families: Vec<(Family, Totals)>,
    /// Sums over the whole forward.
    pub total: Totals,
}

impl CostFigures {
    /// Whether a total passed `u64::MAX` (a batch too large to count): the figures are then
    /// not to be printed.
    pub fn overflowed(&self) -> bool {
        self.total.saturated() || self.families.iter().any(|(_, t)| t.saturated())
    }
}

/// Records the forward of `spec.batch` images for `limits` (as [`super::forward::memory_plan`])
/// with the kernel variants `spec.kernels` prefers, the subgroup kernels at `subgroup_width`
/// lanes (`None`: a device without subgroups), and reads its cost figures.
pub fn cost_figures(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    spec: &ForwardSpec,
    limits: &wgpu::Limits,
    subgroup_width: Option<u32>,
) -> CostFigures {
    let (chunks, mb) = split_batch(cfg, weights, spec, limits);
    let micro = ForwardSpec {
        batch: mb,
        ..spec.clone()
    };
    let recorded = record::record(cfg, weights, &micro, limits, subgroup_width);
    let program = dispatch_costs(&recorded.builder);
    let mut families: Vec<(Family, Totals)> = Family::ALL
        .iter()
        .map(|&f| (f, Totals::default()))
        .collect();
    let mut total = Totals::default();
    for d in &program {
        if let Some((_, t)) = families.iter_mut().find(|(f, _)| *f == d.family) {
            t.add(d, chunks as u64);
        }
        total.add(d, chunks as u64);
    }
    CostFigures {
        batch: spec.batch,
        micro_batch: mb,
        micro_batches: chunks,
        passes: chunks,
        program,
        families,
        total,
    }
}

/// The cost of every dispatch recorded in `b`.
pub fn dispatch_costs(b: &ProgramBuilder) -> Vec<DispatchCost> {
    let mut writable = HashMap::new();
    (0..b.dispatch_count())
        .map(|i| {
            let (key, family, params, bindings, _grid) = b.step(i);
            let writes = writable
                .entry(key.kernel)
                .or_insert_with(|| key.kernel.writable_bindings());
            // Per tensor, the most any of its bindings touches (a tensor bound twice is
            // read once).
            let mut read: HashMap<usize, u64> = HashMap::new();
            let mut written: HashMap<usize, u64> = HashMap::new();
            for (k, &t) in bindings.iter().enumerate() {
                if b.is_unwritten(t) {
                    continue;
                }
                let binding = k as u32 + 1;
                let touched = key.kernel.traffic(params, binding, b.tensor_bytes(t));
                let side = if writes.contains(&binding) {
                    &mut written
                } else {
                    &mut read
                };
                let e = side.entry(t).or_insert(0);
                *e = (*e).max(touched);
            }
            let bound: Vec<u64> = bindings.iter().map(|&t| b.tensor_bytes(t)).collect();
            DispatchCost {
                family,
                kernel: key.kernel.name(),
                flops: key.kernel.flops(&key, params, &bound),
                bytes_read: read.values().sum(),
                bytes_written: written.values().sum(),
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Device profiles and the roofline estimate.
// ------------------------------------------------------------------------------------------------

/// Named device profiles (`assets/devices.json`), compiled into the binary.
pub const DEVICES_JSON: &str = include_str!("../../assets/devices.json");

/// A device as the roofline sees it: peak fp32 arithmetic, memory bandwidth and a fixed cost
/// per dispatch; `note` says where each number comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Short name, as `--device-profile` takes it.
    pub name: String,
    /// What device this is.
    pub description: String,
    /// Global-memory bandwidth, GB/s (10^9 bytes per second).
    pub bandwidth_gb_s: f64,
    /// Peak fp32 arithmetic, TFLOP/s (10^12 per second).
    pub fp32_tflop_s: f64,
    /// Fixed cost of one dispatch (launch, barrier between dependent dispatches), microseconds.
    pub dispatch_us: f64,
    /// Where the numbers come from.
    pub note: String,
}

#[derive(Deserialize)]
struct DevicesFile {
    profiles: Vec<DeviceProfile>,
}

/// The profiles of `assets/devices.json`.
pub fn device_profiles() -> Vec<DeviceProfile> {
    serde_json::from_str::<DevicesFile>(DEVICES_JSON)
        .map(|f| f.profiles)
        .unwrap_or_default()
}

/// The profile called `name`; an unknown name is an error listing the known ones.
pub fn device_profile(name: &str) -> Result<DeviceProfile> {
    let all = device_profiles();
    all.iter().find(|p| p.name == name).cloned().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        Error::arg(
            "device profile",
            name,
            format!("unknown; known profiles: {}", known.join(", ")),
        )
    })
}

/// Which term of the roofline takes most of the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The arithmetic term is the largest.
    Compute,
    /// The memory-traffic term is the largest.
    Memory,
    /// The fixed per-dispatch cost is the largest.
    DispatchOverhead,
}

impl Bound {
    /// `"compute"`, `"memory"` or `"dispatch overhead"`, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
            Bound::DispatchOverhead => "dispatch overhead",
        }
    }
}

/// The roofline time of a set of dispatches, split by what bounds each: the dispatches where
/// the arithmetic term is larger (`compute_s`), those where the memory term is (`memory_s`),
/// and the fixed per-dispatch cost (`overhead_s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Total estimated time, seconds.
    pub seconds: f64,
    /// Time of the compute-bound dispatches, seconds.
    pub compute_s: f64,
    /// Time of the memory-bound dispatches, seconds.
    pub memory_s: f64,
    /// Fixed per-dispatch cost, seconds.
    pub overhead_s: f64,
}

impl Estimate {
    /// The term that takes the most time (dispatch overhead wins ties).
    pub fn bound(&self) -> Bound {
        if self.overhead_s >= self.compute_s && self.overhead_s >= self.memory_s {
            Bound::DispatchOverhead
        } else if self.compute_s >= self.memory_s {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }
}

/// The roofline estimate of a forward on a profile.
#[derive(Clone, Debug)]
pub struct Roofline {
    /// The device profile the estimate uses.
    pub profile: DeviceProfile,
    /// The estimate per family, in [`Family::ALL`] order.
    pub families: Vec<(Family, Estimate)>,
    /// The estimate of the whole forward.
    pub total: Estimate,
    /// Throughput the estimate implies, images per second.
    pub images_per_s: f64,
}

/// Always shown with a roofline figure.
pub const ROOFLINE_LABEL: &str = "estimate (roofline, not a measurement)";

/// Per dispatch `max(flops / peak, bytes / bandwidth)`, plus the per-dispatch cost, summed per
/// family and over the forward; images/s = batch / time.
pub fn roofline(fig: &CostFigures, profile: &DeviceProfile) -> Roofline {
    let peak = profile.fp32_tflop_s * 1e12;
    let bandwidth = profile.bandwidth_gb_s * 1e9;
    let overhead = profile.dispatch_us * 1e-6;
    let runs = fig.micro_batches as f64;
    let mut families: Vec<(Family, Estimate)> = Family::ALL
        .iter()
        .map(|&f| (f, Estimate::default()))
        .collect();
    let mut total = Estimate::default();
    for d in &fig.program {
        let compute = d.flops as f64 / peak;
        let memory = d.bytes() as f64 / bandwidth;
        let mut e = Estimate {
            seconds: runs * (compute.max(memory) + overhead),
            compute_s: 0.0,
            memory_s: 0.0,
            overhead_s: runs * overhead,
        };
        if compute >= memory {
            e.compute_s = runs * compute;
        } else {
            e.memory_s = runs * memory;
        }
        for acc in families
            .iter_mut()
            .filter(|(f, _)| *f == d.family)
            .map(|(_, e)| e)
            .chain([&mut total])
        {
            acc.seconds += e.seconds;
            acc.compute_s += e.compute_s;
            acc.memory_s += e.memory_s;
            acc.overhead_s += e.overhead_s;
        }
    }
    let images_per_s = if total.seconds > 0.0 {
        fig.batch as f64 / total.seconds
    } else {
        0.0
    };
    Roofline {
        profile: profile.clone(),
        families,
        total,
        images_per_s,
    }
}

/// The figures as JSON: `dispatches`, `passes`, `global_bytes` (`read`, `written`, `total`),
/// `flops`, `intensity`, and per family the same under `families`.
pub fn figures_json(fig: &CostFigures) -> serde_json::Value {
    let totals = |t: &Totals| {
        serde_json::json!({
            "dispatches": t.dispatches,
            "global_bytes": {
                "read": t.bytes_read,
                "written": t.bytes_written,
                "total": t.bytes(),
            },
            "flops": t.flops,
            "intensity": t.intensity(),
        })
    };
    let mut families = serde_json::Map::new();
    for (f, t) in &fig.families {
        families.insert(f.name().to_string(), totals(t));
    }
    let mut v = totals(&fig.total);
    v["passes"] = fig.passes.into();
    v["micro_batch"] = fig.micro_batch.into();
    v["micro_batches"] = fig.micro_batches.into();
    v["bytes_convention"] = "bound-tensor estimate: each distinct tensor bound read-only counts as read, each bound read_write as written, once per dispatch".into();
    v["families"] = families.into();
    // Dispatches per kernel in one forward, which say the variants counted.
    let mut kernels = std::collections::BTreeMap::<&str, u64>::new();
    for d in &fig.program {
        *kernels.entry(d.kernel).or_default() += fig.micro_batches as u64;
    }
    v["kernels"] = serde_json::json!(kernels);
    v
}

/// The roofline as JSON, labelled.
pub fn roofline_json(r: &Roofline) -> serde_json::Value {
    let est = |e: &Estimate| {
        serde_json::json!({
            "seconds": e.seconds,
            "compute_bound_s": e.compute_s,
            "memory_bound_s": e.memory_s,
            "dispatch_overhead_s": e.overhead_s,
            "bound": e.bound().name(),
        })
    };
    let mut families = serde_json::Map::new();
    for (f, e) in &r.families {
        families.insert(f.name().to_string(), est(e));
    }
    let mut v = est(&r.total);
    v["label"] = ROOFLINE_LABEL.into();
    v["profile"] = serde_json::to_value(&r.profile).unwrap_or_default();
    v["images_per_s"] = r.images_per_s.into();
    v["families"] = families.into();
    v
}

fn si(x: f64, unit: &str) -> String {
    let (v, p) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{v:.2} {p}{unit}")
}

/// The figures as a table, one row per family that has dispatches, then the total.
pub fn render_figures(fig: &CostFigures) -> String {
    let mut s = format!(
        "cost figures at batch {} ({} micro-batch{} of {}): {} dispatches in {} compute pass{} \
         (bench --profile: one pass per dispatch); bytes are the bound-tensor estimate\n",
        fig.batch,
        fig.micro_batches,
        if fig.micro_batches == 1 { "" } else { "es" },
        fig.micro_batch,
        fig.total.dispatches,
        fig.passes,
        if fig.passes == 1 { "" } else { "es" },
    );
    s += &format!(
        "  {:<10} {:>10} {:>12} {:>12} {:>12} {:>10}\n",
        "family", "dispatches", "FLOPs", "bytes read", "written", "FLOP/byte"
    );
    let row = |name: &str, t: &Totals| {
        format!(
            "  {:<10} {:>10} {:>12} {:>12} {:>12} {:>10.2}\n",
            name,
            t.dispatches,
            si(t.flops as f64, ""),
            si(t.bytes_read as f64, "B"),
            si(t.bytes_written as f64, "B"),
            t.intensity()
        )
    };
    for (f, t) in fig.families.iter().filter(|(_, t)| t.dispatches > 0) {
        s += &row(f.name(), t);
    }
    s += &row("total", &fig.total);
    s
}

/// The roofline as a table, labelled as an estimate.
pub fn render_roofline(r: &Roofline, batch: usize) -> String {
    let p = &r.profile;
    let mut s = format!(
        "{ROOFLINE_LABEL} on {} ({}: {} GB/s, {} TFLOP/s fp32, {} us per dispatch)\n",
        p.name, p.description, p.bandwidth_gb_s, p.fp32_tflop_s, p.dispatch_us
    );
    s += &format!(
        "  {:<10} {:>11} {:>11} {:>11} {:>11}  {}\n",
        "family", "time ms", "compute ms", "memory ms", "dispatch ms", "bound"
    );
    let row = |name: &str, e: &Estimate| {
        format!(
            "  {:<10} {:>11.3} {:>11.3} {:>11.3} {:>11.3}  {}\n",
            name,
            e.seconds * 1e3,
            e.compute_s * 1e3,
            e.memory_s * 1e3,
            e.overhead_s * 1e3,
            e.bound().name()
        )
    };
    for (f, e) in r.families.iter().filter(|(_, e)| e.seconds > 0.0) {
        s += &row(f.name(), e);
    }
    s += &row("total", &r.total);
    s += &format!(
        "  {:.1} images/s at batch {batch} ({ROOFLINE_LABEL})\n",
        r.images_per_s
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_have_notes() {
        let all = device_profiles();
        assert!(all.len() >= 4);
        for p in &all {
            assert!(p.bandwidth_gb_s > 0.0 && p.fp32_tflop_s > 0.0 && p.dispatch_us >= 0.0);
            assert!(!p.note.is_empty(), "{}", p.name);
        }
    }
}
