//! Convolutions: the three stem layers (BN folded, ReLU, positional embedding fused into the
//! last) and the grouped pooling between stages.

use crate::kernels::linear::sg_tile_columns;
use crate::kernels::merge::Unmerge;
use crate::kernels::params::ConvParams;
use crate::kernels::{Family, Kernel, KernelKey, KernelKind, ProgramBuilder, TensorId};
use crate::model::weights::Conv;

/// Output channels of the dense kernel's tile.
const DENSE_TILE: usize = 16;

/// Upload a convolution's weights and bias in the layout its kernel reads: dense convolutions
/// (groups = 1, the stem) as `W^T [cin * k * k, cout_pad]` for `conv_dense.wgsl`, grouped ones
/// as PyTorch's `[cout, cin / groups, k, k]` for `conv.wgsl`.
pub fn upload(b: &mut ProgramBuilder, name: &str, c: &Conv) -> (TensorId, TensorId) {
    let weight = if c.groups == 1 {
        let taps = c.in_channels * c.kernel * c.kernel;
        let pad = c.out_channels.div_ceil(DENSE_TILE) * DENSE_TILE;
        let mut wt = vec![0.0f32; taps * pad];
        for o in 0..c.out_channels {
            for t in 0..taps {
                wt[t * pad + o] = c.weight[o * taps + t];
            }
        }
        b.weights(format!("{name}.weight^T"), &wt)
    } else {
        b.weights(format!("{name}.weight"), &c.weight)
    };
    (weight, b.weights(format!("{name}.bias"), &c.bias))
}

/// Tensor layout on either side of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, h, w]`, the image layout (PyTorch's default).
    Nchw,
    /// `[batch, h * w, channels]`, the transformer's layout.
    Tokens,
    /// Input only: a merged sequence `[batch, tokens, channels]` read at the grid's positions
    /// through the stage's unmerge map: the unmerge stack folded into the convolution's loads,
    /// so the restored grid is never written.
    Unmerged(Unmerge),
}

/// Sizes of one 2-D convolution over a batch of `cin x h x w` inputs with a square kernel.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height, in pixels or tokens.
    pub h: usize,
    /// Input width, in pixels or tokens.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Side of the square kernel.
    pub k: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Channel groups (1 for dense, `cin` for depthwise).
    pub groups: usize,
}

impl ConvShape {
    /// Output `(height, width)`: `(h + 2 pad - k) / stride + 1`, likewise for `w`.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }
}

/// The tensors of one convolution; `weight` and `bias` as [`upload`] lays them out.
pub struct ConvIo {
    /// Input tensor, in layout `input`.
    pub x: TensorId,
    /// Kernel weights.
    pub weight: TensorId,
    /// Bias, `[cout]`.
    pub bias: TensorId,
    /// Positional embedding `[cout, oh, ow]` added after the activation.
    pub pos: Option<TensorId>,
    /// Output tensor, in layout `output`.
    pub y: TensorId,
    /// Layout of `x`.
    pub input: Layout,
    /// Layout of `y`.
    pub output: Layout,
    /// Apply ReLU after the bias (NaN is kept, as `torch.relu` does).
    pub relu: bool,
}

/// Rows a banded convolution computes and the rows its buffers hold (all logical rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// Output rows computed: `out_rows.0 .. out_rows.1`.
    pub out_rows: (usize, usize),
    /// First logical row held by the input buffer, and how many it holds.
    pub in_buf: (usize, usize),
    /// First logical row held by the output buffer, and how many it holds.
    pub out_buf: (usize, usize),
}

impl ConvShape {
    /// Input rows needed for output rows `rows` (clipped to the image; padding covers the rest).
    pub fn input_rows(&self, rows: (usize, usize)) -> (usize, usize) {
        let first = (rows.0 * self.stride).saturating_sub(self.pad);
        let last = ((rows.1 - 1) * self.stride + self.k - 1).saturating_sub(self.pad);
        (first, (last + 1).min(self.h))
    }
}

/// A whole-image convolution.
pub fn record(b: &mut ProgramBuilder, family: Family, s: ConvShape, io: ConvIo) {
    let (oh, _) = s.out_hw();
    record_band(
        b,
        family,
        s,
        io,
        Band {
            out_rows: (0, oh),
            in_buf: (0, s.h),
            out_buf: (0, oh),
        },
    );
}

/// The rows `band.out_rows` of a convolution, between row-banded buffers.
pub fn record_band(b: &mut ProgramBuilder, family: Family, s: ConvShape, io: ConvIo, band: Band) {
    let (_, ow) = s.out_hw();
    let (map, n_in) = match io.input {
        Layout::Unmerged(Unmerge { map, tokens }) => {
            assert!(
                band.in_buf == (0, s.h) && io.output != io.input,
                "an unmerged input is read whole and is no output layout"
            );
            (Some(map), tokens)
        }
        _ => (None, 0),
    };
    let flags = (io.relu as u32)
        | ((io.input != Layout::Nchw) as u32) << 1
        | ((io.output == Layout::Tokens) as u32) << 2
        | (io.pos.is_some() as u32) << 3
        | (map.is_some() as u32) << 4;
    let rows = band.out_rows.1 - band.out_rows.0;
    let p = band_params(s, band, flags, n_in);
    // Dense convolutions from NCHW (the stem) take 16 output channels per invocation, or a
    // 32-pixel x `sg_tile_columns`-channel tile per SG-lane workgroup where subgroups allow.
    let dense = s.groups == 1 && io.input == Layout::Nchw;
    let pixels = s.batch * rows * ow;
    let (key, grid) = match b.subgroup_for(KernelKind::Conv) {
        Some(sg) if dense => {
            let cout_pad = s.cout.div_ceil(DENSE_TILE) * DENSE_TILE;
            let tiles = pixels.div_ceil(32) * cout_pad.div_ceil(sg_tile_columns(sg));
            (
                KernelKey::with_sg(Kernel::ConvSg, sg),
                b.grid(tiles * sg as usize, sg),
            )
        }
        _ if dense => (
            KernelKey::plain(Kernel::ConvDense),
            b.grid(pixels * s.cout.div_ceil(DENSE_TILE), 64),
        ),
        _ => (
            KernelKey::plain(Kernel::Conv),
            b.grid(pixels * s.cout.div_ceil(4), 64),
        ),
    };
    // The dense kernels bind no map (their input is NCHW); where a kernel reads no positional
    // embedding or map, the bias or the input stands in for it.
    let mut tensors = vec![io.x, io.weight, io.bias, io.pos.unwrap_or(io.bias), io.y];
    if key.kernel == Kernel::Conv {
        tensors.push(map.unwrap_or(io.x));
    }
    b.dispatch(family, key, &p, &tensors, grid);
}

/// Bytes of WGSL binding `binding` (`bytes` bound) that one convolution dispatch touches, for
/// the cost figures: a band of output rows reads only the input rows under it (with the
/// kernel's halo) and writes only its own rows, and the positional embedding only those rows'
/// part; a binding the flags leave unread (the bias standing in for `pos`, the input for the
/// unmerge map) costs nothing; everything else is read whole.
pub fn traffic(p: &ConvParams, binding: u32, bytes: u64) -> u64 {
    let part = |rows: u32, of: u32| {
        if of == 0 || rows >= of {
            bytes
        } else {
            (bytes as u128 * rows as u128 / of as u128) as u64
        }
    };
    let pos = p.flags & 8 != 0;
    let mapped = p.flags & 16 != 0;
    match binding {
        // A merged sequence read through the unmerge map: any token may be read.
        1 if mapped => bytes,
        1 => {
            let first = (p.oy0 * p.stride).saturating_sub(p.pad).max(p.iy_off);
            let last = ((p.oy0 + p.oh_run.max(1) - 1) * p.stride + p.k).saturating_sub(p.pad);
            let end = last.min(p.h).min(p.iy_off + p.h_buf);
            part(end.saturating_sub(first), p.h_buf)
        }
        4 if !pos => 0,
        4 => part(p.oh_run, p.oh),
        5 => part(p.oh_run, p.oh_buf),
        6 if !mapped => 0,
        _ => bytes,
    }
}

/// The uniform block of the convolution `s` over `band`, with `flags` and `n_in` tokens of an
/// unmerged input (0 otherwise), as [`record_band`] dispatches it.
pub fn band_params(s: ConvShape, band: Band, flags: u32, n_in: usize) -> ConvParams {
    let (oh, ow) = s.out_hw();
    let u = |v: usize| v as u32;
    ConvParams {
        batch: u(s.batch),
        cin: u(s.cin),
        h: u(s.h),
        w: u(s.w),
        cout: u(s.cout),
        oh: u(oh),
        ow: u(ow),
        k: u(s.k),
        stride: u(s.stride),
        pad: u(s.pad),
        groups: u(s.groups),
        flags,
        h_buf: u(band.in_buf.1),
        iy_off: u(band.in_buf.0),
        oy0: u(band.out_rows.0),
        oh_run: u(band.out_rows.1 - band.out_rows.0),
        oh_buf: u(band.out_buf.1),
        oy_off: u(band.out_buf.0),
        n_in: u(n_in),
    }
}

/// Arithmetic of one convolution dispatch over its band of `oh_run` output rows: `2 cin/groups
/// k^2` per output, plus 1 each for the bias, the ReLU (flag 1) and the positional embedding
/// (flag 8).
pub fn flops(p: &ConvParams, _key: &KernelKey, _bound: &[u64]) -> u64 {
    let groups = p.groups.max(1) as u64;
    let k = p.k as u64;
    let per_out =
        2 * (p.cin as u64 / groups) * k * k + 1 + (p.flags & 1) as u64 + (p.flags >> 3 & 1) as u64;
    p.batch as u64 * p.oh_run as u64 * p.ow as u64 * p.cout as u64 * per_out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stem's first convolution (224 px, 3x3, stride 2, pad 1) in `bands` bands of
    /// output rows, as `stem` records it: the image whole, each band's output in a buffer of
    /// its own rows.
    fn bands(bands: usize) -> Vec<ConvParams> {
        let s = ConvShape {
            batch: 2,
            cin: 3,
            h: 224,
            w: 224,
            cout: 16,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 1,
        };
        let (oh, _) = s.out_hw();
        let rows = oh.div_ceil(bands);
        (0..oh)
            .step_by(rows)
            .map(|first| {
                let end = (first + rows).min(oh);
                let band = Band {
                    out_rows: (first, end),
                    in_buf: (0, s.h),
                    out_buf: (first, end - first),
                };
                band_params(s, band, 1 | 8, 0)
            })
            .collect()
    }

    #[test]
    fn a_band_touches_its_rows_and_their_halo() {
        let img = 2 * 3 * 224 * 224 * 4u64;
        let pos = 16 * 112 * 112 * 4u64;
        for n in [1, 3, 4, 7, 8] {
            let ps = bands(n);
            let mut read = 0;
            let mut posed = 0;
            for p in &ps {
                // The input rows under the band, as `ConvShape::input_rows` computes them.
                let first = (p.oy0 * 2).saturating_sub(1);
                let end = ((p.oy0 + p.oh_run - 1) * 2 + 2).min(224);
                let want = img * (end - first) as u64 / 224;
                assert_eq!(traffic(p, 1, img), want, "{n} bands, rows from {}", p.oy0);
                read += traffic(p, 1, img);
                // The output buffer holds the band's rows only: written whole.
                let out = 2 * 16 * p.oh_run as u64 * 112 * 4;
                assert_eq!(traffic(p, 5, out), out);
                posed += traffic(p, 4, pos);
                // Weights and bias are read whole; no map is bound.
                assert_eq!(traffic(p, 2, 1728), 1728);
                assert_eq!(traffic(p, 6, img), 0);
            }
            // Each band reads its own rows and one halo row: the image once, plus at most a
            // row per band (integer division may lose a byte per band).
            assert!(read + n as u64 >= img, "{n} bands read {read} of {img}");
            assert!(
                read <= img + n as u64 * img / 224,
                "{n} bands read {read} of {img}"
            );
            assert!(
                posed <= pos && posed + n as u64 >= pos,
                "{n} bands read {posed} of {pos}"
            );
        }
        // A band written into a buffer of the whole output writes its share of it.
        let mut p = bands(4)[1];
        p.oh_buf = 112;
        p.oy_off = 0;
        assert_eq!(traffic(&p, 5, 112 * 1000), p.oh_run as u64 * 1000);
        // Without a positional embedding, the bias standing in for it costs nothing; through
        // an unmerge map any token may be read, so the input counts whole.
        p.flags = 1 | 16;
        assert_eq!(traffic(&p, 4, 64), 0);
        assert_eq!(traffic(&p, 1, 5000), 5000);
        assert_eq!(traffic(&p, 6, 800), 800);
    }
}
