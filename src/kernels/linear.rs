//! `nn.Linear` as a tiled matrix multiply with its epilogue fused, in three kernels chosen by
//! [`Variant`]: register tiles sharing loads through subgroup broadcasts (`linear_sg`),
//! workgroup tiles staged through workgroup memory (`linear_tiled.wgsl`, the classic GPU
//! tiling), and plain 8 x 8 register tiles (`linear.wgsl`, runs everywhere).
//!
//! The GPU keeps the weights transposed and padded (`W^T` as `[in, out_pad]`, `out_pad` a
//! multiple of 8, bias padded alike) so a tile's output columns are aligned vector loads;
//! [`gpu_layout`] makes that layout from PyTorch's `[out, in]`.

use crate::kernels::norm::{self, RowStats};
use crate::kernels::params::LinearParams;
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId, Variant};
use crate::model::weights::{LayerNorm, Linear};

/// What happens to `x W^T + b` before it is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `y = x W^T + b`
    Bias,
    /// `y = gelu(x W^T + b)` (exact, erf-based)
    Gelu,
    /// `y = ca * y + cb * (x W^T + b)`: SReT's residual with its learnable coefficients, in place.
    Residual {
        /// Scale of the stored `y` (the residual stream).
        ca: f32,
        /// Scale of the layer's output.
        cb: f32,
    },
}

/// Output columns rounded up to the kernel's tile width.
pub fn padded(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// `(W^T [in, out_pad], bias [out_pad])`, zero padded.
pub fn gpu_layout(l: &Linear) -> (Vec<f32>, Vec<f32>) {
    let (n, k) = (l.out_features, l.in_features);
    let np = padded(n);
    let mut wt = vec![0.0f32; k * np];
    for o in 0..n {
        for i in 0..k {
            wt[i * np + o] = l.weight[o * k + i];
        }
    }
    let mut bias = vec![0.0f32; np];
    bias[..n].copy_from_slice(&l.bias);
    (wt, bias)
}

/// Weights of a linear layer once uploaded in the GPU layout.
#[derive(Clone, Copy, Debug)]
pub struct LinearWeights {
    /// Transposed, padded weights `W^T [in_features, padded(out_features)]`.
    pub wt: TensorId,
    /// Bias padded to `padded(out_features)`.
    pub bias: TensorId,
    /// Input width.
    pub in_features: usize,
    /// Output width (before padding).
    pub out_features: usize,
}

/// Upload `l` in the GPU layout of [`gpu_layout`], naming the tensors after `name`.
pub fn upload(b: &mut ProgramBuilder, name: &str, l: &Linear) -> LinearWeights {
    let (wt, bias) = gpu_layout(l);
    LinearWeights {
        wt: b.weights(format!("{name}.weight^T"), &wt),
        bias: b.weights(format!("{name}.bias"), &bias),
        in_features: l.in_features,
        out_features: l.out_features,
    }
}

/// `Linear(LayerNorm(x))` as one linear layer on normalised rows: `W' = W diag(gamma)` and
/// `b' = b + W beta` (accumulated in f64), so the kernel needs only each row's mean and
/// 1 / std ([`crate::kernels::norm::ln_stats`]) and [`record_normalized`].
pub fn fold_layer_norm(l: &Linear, ln: &LayerNorm) -> Linear {
    let k = l.in_features;
    let mut folded = l.clone();
    for (o, row) in folded.weight.chunks_exact_mut(k).enumerate() {
        let shift: f64 = (0..k)
            .map(|i| l.weight[o * k + i] as f64 * ln.bias[i] as f64)
            .sum();
        folded.bias[o] = (l.bias[o] as f64 + shift) as f32;
        for (w, g) in row.iter_mut().zip(&ln.weight) {
            *w *= g;
        }
    }
    folded
}

/// `y[m, out] = epilogue(x[m, in] W^T + b)`.
pub fn record(
    b: &mut ProgramBuilder,
    family: Family,
    m: usize,
    w: &LinearWeights,
    epilogue: Epilogue,
    x: TensorId,
    y: TensorId,
) {
    record_with(b, family, m, w, epilogue, x, None, None, y);
}

/// [`record`], and the LayerNorm statistics of the rows it stores, for a linear layer that
/// normalises them next ([`record_normalized`]): written beside the rows by the same dispatch
/// (a part per [`stats_part_width`] columns) where the output width is a multiple of 8, else by
/// an [`norm::ln_stats`] dispatch after it. The statistics' tensor is named after `label`.
#[allow(clippy::too_many_arguments)]
pub fn record_with_stats(
    b: &mut ProgramBuilder,
    family: Family,
    m: usize,
    w: &LinearWeights,
    epilogue: Epilogue,
    x: TensorId,
    y: TensorId,
    label: &str,
) -> RowStats {
    let n = w.out_features;
    if !n.is_multiple_of(8) {
        record(b, family, m, w, epilogue, x, y);
        return norm::ln_stats(b, family, m, n, y, label);
    }
    let width = stats_part_width(route(b));
    let stats = RowStats {
        tensor: b.activation_words(format!("{label} stats"), m * n.div_ceil(width) * 2),
        width,
    };
    record_with(b, family, m, w, epilogue, x, None, Some(stats), y);
    stats
}

/// The residual linear layer closing a block half, `x = ca * x + cb * (h W^T + b)`, leaving the
/// statistics of the new `x` for the next LayerNorm when `stats_after` ([`record_with_stats`],
/// named after `label`).
#[allow(clippy::too_many_arguments)]
pub fn record_residual(
    b: &mut ProgramBuilder,
    family: Family,
    rows: usize,
    w: &LinearWeights,
    (ca, cb): (f32, f32),
    h: TensorId,
    x: TensorId,
    stats_after: bool,
    label: &str,
) -> Option<RowStats> {
    let epilogue = Epilogue::Residual { ca, cb };
    if stats_after {
        return Some(record_with_stats(b, family, rows, w, epilogue, h, x, label));
    }
    record(b, family, rows, w, epilogue, h, x);
    None
}

/// `y = epilogue(x' W^T + b)` with every row of x normalised as it is loaded,
/// `x' = (x - mean) / sqrt(var + eps)` from the rows' statistics `stats`: with weights from
/// [`fold_layer_norm`], `Linear(LayerNorm(x))` without the normalised tensor.
#[allow(clippy::too_many_arguments)]
pub fn record_normalized(
    b: &mut ProgramBuilder,
    family: Family,
    m: usize,
    w: &LinearWeights,
    epilogue: Epilogue,
    x: TensorId,
    stats: RowStats,
    eps: f32,
    y: TensorId,
) {
    record_with(b, family, m, w, epilogue, x, Some((stats, eps)), None, y);
}

/// Which linear kernel runs: the variant the builder chose, where the device runs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Route {
    /// `linear.wgsl`.
    Portable,
    /// `linear_tiled.wgsl`.
    Tiled,
    /// `linear_sg` at this subgroup width.
    Subgroup(u32),
}

/// The linear kernel `b` records.
pub fn route(b: &ProgramBuilder) -> Route {
    // Where the tiled kernel does not fit, the portable one runs (the engine logs the fallback
    // once).
    if b.variant(KernelKind::Linear) == Variant::Tiled && tiled_fits(b.limits()) {
        return Route::Tiled;
    }
    match b.subgroup_for(KernelKind::Linear) {
        Some(sg) => Route::Subgroup(sg),
        None => Route::Portable,
    }
}

/// Columns per part of the row statistics the linear kernel of `route` writes: the columns
/// one invocation stores in `linear.wgsl` (8) and in `linear_sg` (8, 8, 4, 4, 2 at 4, 8, 16,
/// 32, 64 lanes), a workgroup tile's in `linear_tiled.wgsl` (64, reduced through workgroup
/// memory).
pub fn stats_part_width(route: Route) -> usize {
    match route {
        Route::Portable => 8,
        Route::Tiled => TILED_TILE,
        // A tile's columns over its lanes (each column stored by one lane).
        Route::Subgroup(sg) => sg_tile_columns(sg) / sg as usize,
    }
}

#[allow(clippy::too_many_arguments)]
fn record_with(
    b: &mut ProgramBuilder,
    family: Family,
    m: usize,
    w: &LinearWeights,
    epilogue: Epilogue,
    x: TensorId,
    norm: Option<(RowStats, f32)>,
    stats_out: Option<RowStats>,
    y: TensorId,
) {
    let (k, n) = (w.in_features, w.out_features);
    let (mode, ca, cb) = match epilogue {
        Epilogue::Bias => (0, 0.0f32, 0.0f32),
        Epilogue::Gelu => (1, 0.0, 0.0),
        Epilogue::Residual { ca, cb } => (2, ca, cb),
    };
    let params = LinearParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        n_pad: padded(n) as u32,
        mode,
        ca,
        cb,
        norm: norm.map_or(0, |(s, _)| s.width as u32),
        m_base: 0,
        eps: norm.map_or(0.0, |(_, eps)| eps),
        stats_out: stats_out.is_some() as u32,
    };
    // Unused bindings get stand-ins: the bias for the statistics read (binding 5), the
    // builder's unwritten sink for the statistics written (binding 6).
    let sink = b.unwritten();
    let tensors = [
        x,
        w.wt,
        w.bias,
        y,
        norm.map_or(w.bias, |(s, _)| s.tensor),
        stats_out.map_or(sink, |s| s.tensor),
    ];
    let sg = match route(b) {
        Route::Tiled => {
            let tiles = m.div_ceil(TILED_TILE) * padded(n).div_ceil(TILED_TILE);
            let grid = b.grid(tiles * TILED_INVOCATIONS as usize, TILED_INVOCATIONS);
            let key = KernelKey::plain(Kernel::LinearTiled);
            b.dispatch(family, key, &params, &tensors, grid);
            return;
        }
        Route::Portable => {
            // 8 x 8 outputs per invocation.
            let grid = b.grid(m.div_ceil(8) * padded(n) / 8, 64);
            let key = KernelKey::plain(Kernel::Linear);
            b.dispatch(family, key, &params, &tensors, grid);
            return;
        }
        Route::Subgroup(sg) => sg,
    };
    // `SG_TILE_ROWS` x `sg_tile_columns` tiles per SG-lane workgroup ([`sg_tiles`]).
    let tiles_n = padded(n).div_ceil(sg_tile_columns(sg));
    let (full, last) = sg_tiles(m);
    let with_base = |b: &mut ProgramBuilder, rows: usize, tiles: usize, base: usize| {
        let p = LinearParams {
            m_base: base as u32,
            ..params
        };
        let grid = b.grid(tiles * tiles_n * sg as usize, sg);
        let key = KernelKey::with_sg(Kernel::LinearSg, sg).with_rows(rows as u32);
        b.dispatch(family, key, &p, &tensors, grid);
    };
    if full > 0 {
        with_base(b, SG_TILE_ROWS, full, 0);
    }
    if let Some(rows) = last {
        with_base(b, rows, 1, SG_TILE_ROWS * full);
    }
}

/// How the subgroup kernel tiles `m` rows: `(full, last)`, `full` tiles of [`SG_TILE_ROWS`]
/// rows (the last of them clamped at `m`) and a last tile of `last` rows after them, which
/// costs a dispatch of its own. All rows go in one dispatch of 32-row tiles where the idle rows
/// of the last tile are at most an eighth of the rows computed: a dispatch costs microseconds
/// on a GPU, more than those rows. Otherwise a rest of up to 16 rows joins the last full tile
/// (a 40- or 48-row tile: the weights it loads serve 8 or 16 more rows), or runs as an 8- or
/// 16-row tile where there is no full tile to join.
pub fn sg_tiles(m: usize) -> (usize, Option<usize>) {
    let big = SG_TILE_ROWS;
    match (m / big, m % big) {
        (0, 1..=8) => (0, Some(8)),
        (0, 9..=16) => (0, Some(16)),
        (f, r @ 1..=16) if (big - r) * 8 <= (f + 1) * big => (f + 1, None),
        (f, r @ 1..=16) => (f - 1, Some(big + r.next_multiple_of(8))),
        (f, r) => (f + (r > 0) as usize, None),
    }
}

/// Rows and columns of a `linear_tiled.wgsl` workgroup tile (its `TM` and `TN`).
pub const TILED_TILE: usize = 64;
/// Depth of one staged step of `linear_tiled.wgsl` (its `TK`).
pub const TILED_DEPTH: usize = 16;
/// Invocations of a `linear_tiled.wgsl` workgroup (16 x 16, 4 x 4 outputs each).
pub const TILED_INVOCATIONS: u32 = 256;
/// Workgroup memory of `linear_tiled.wgsl`: a tile x depth block of x and of W (f32) and the
/// tile's row statistics (two f32 per row).
pub const TILED_WORKGROUP_BYTES: u32 = ((2 * TILED_TILE * TILED_DEPTH + 2 * TILED_TILE) * 4) as u32;

/// Whether a device with `limits` runs `linear_tiled.wgsl` (its catalogue entry's needs).
pub fn tiled_fits(limits: &wgpu::Limits) -> bool {
    Kernel::LinearTiled.needs().fit(limits)
}

/// Rows of the full `linear_sg` tiles at every subgroup width; the last tile of a matrix may be
/// 40 or 48 rows ([`sg_tiles`]). (64-row tiles, a third
/// fewer loads per output, were faster on one lavapipe CPU and slower on another, and up to 8
/// lanes they hold 512 accumulators per lane, which took llvmpipe 65-105 s to compile.)
pub const SG_TILE_ROWS: usize = 32;

/// Output columns of one `linear_sg` workgroup tile at subgroup width `sg` (its `TN`):
/// each lane owns 8 columns up to 8 lanes and 4 from 16, and at 64 lanes two lanes share 4, so
/// tiles are 32, 64, 64, 128, 128 columns wide at 4, 8, 16, 32, 64 lanes.
pub fn sg_tile_columns(sg: u32) -> usize {
    let cv = if sg <= 8 { 2 } else { 1 };
    let dup = (sg / 32).max(1);
    (4 * cv * sg / dup) as usize
}

/// Arithmetic of one linear dispatch: `2k` per output for the product, the epilogue (bias 1,
/// GELU 11, residual 3), `2k` per row for normalising on load and 3 per output for the
/// statistics written beside them, over the rows the dispatch
/// computes: from `m_base` on, but for a subgroup dispatch of full tiles followed by a last-tile
/// dispatch, only its full tiles' rows ([`sg_tiles`]).
pub fn flops(p: &LinearParams, key: &KernelKey, _bound: &[u64]) -> u64 {
    let mut rows = p.m.saturating_sub(p.m_base) as u64;
    if key.kernel == Kernel::LinearSg && p.m_base == 0 && matches!(key.rows, 0 | 32) {
        if let (full, Some(_)) = sg_tiles(p.m as usize) {
            rows = (full * SG_TILE_ROWS) as u64;
        }
    }
    let (k, n) = (p.k as u64, p.n as u64);
    let epilogue = match p.mode {
        0 => 1,
        1 => 11,
        _ => 3,
    };
    let normalise = if p.norm != 0 { 2 * rows * k } else { 0 };
    let stats = if p.stats_out != 0 { 3 * rows * n } else { 0 };
    rows * n * (2 * k + epilogue) + normalise + stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subgroup_tiles_cover_every_row_once() {
        // SReT-T's rows at batch 1: one dispatch for 784 (16 idle rows of 800) and 196 (28 of
        // 224, an eighth); 69 and 45 rows keep a 40- and a 48-row last tile.
        assert_eq!(sg_tiles(784), (25, None));
        assert_eq!(sg_tiles(196), (7, None));
        assert_eq!(sg_tiles(69), (1, Some(40)));
        assert_eq!(sg_tiles(45), (0, Some(48)));
        assert_eq!(sg_tiles(5), (0, Some(8)));
        assert_eq!(sg_tiles(84), (3, None));
        for m in 1..5000 {
            let (full, last) = sg_tiles(m);
            let covered = full * SG_TILE_ROWS + last.unwrap_or(0);
            let rest = m.saturating_sub(full * SG_TILE_ROWS);
            match last {
                // The last tile starts after the full ones and holds the rest, a multiple of 8.
                Some(rows) => assert!(rows >= rest && rows - rest < 8 && rows % 8 == 0, "{m}"),
                // The full tiles hold every row, the last one clamped.
                None => assert!(covered >= m && covered - m < SG_TILE_ROWS, "{m}"),
            }
            // Idle rows: at most an eighth of the rows computed, except below one full tile or
            // where a rest of more than 16 rows runs as a whole 32-row tile.
            if last.is_none() && m > SG_TILE_ROWS && m % SG_TILE_ROWS <= 16 && m % SG_TILE_ROWS > 0
            {
                assert!((covered - m) * 8 <= covered, "{m}");
            }
        }
    }
}
