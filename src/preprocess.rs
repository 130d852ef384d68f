//! The ImageNet evaluation transform, bit-compatible with torchvision + PIL:
//!
//! ```text
//! Image.open(path).convert("RGB")
//! Resize(256)            # shorter side to 256, PIL antialiased bilinear
//! CenterCrop(224)
//! ToTensor()             # u8 / 255
//! Normalize(IMAGENET_MEAN, IMAGENET_STD)
//! ```
//!
//! The resize reproduces Pillow's `ImagingResample` (`src/libImaging/Resample.c`) exactly: the
//! separable triangle filter whose support grows with the downscale factor, the coefficients
//! computed in `f64`, normalised, converted to 22-bit fixed point, and an 8-bit rounding between
//! the two passes, run in Pillow 13's order (see [`pillow_vertical_first`]). For an RGB8 image the
//! output is bit-identical to `PIL.Image.resize(size, Image.BILINEAR)` of Pillow 13.0, and with
//! [`Filter::Bicubic`] (Pillow's cubic with `a = -0.5`, support 2) to `Image.BICUBIC`, which
//! timm's eval transform uses for its ViT family.
//!
//! Since every output pixel depends only on its own coefficients, [`preprocess_rgb8`] computes
//! only the 224x224 window that survives the centre crop. That gives the same bytes as resizing
//! the whole image and cropping, and keeps the work and memory bounded even for extreme aspect
//! ratios (a 1x50M image would otherwise resize to 256x12.8G).

#[cfg(feature = "images")]
use std::ops::Range;

#[cfg(feature = "images")]
use image::RgbImage;

/// torchvision's ImageNet channel means (`Normalize(mean=...)`), RGB order.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet channel standard deviations (`Normalize(std=...)`), RGB order.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `Resize(256)`: the shorter side after resizing.
pub const RESIZE_SHORTER: u32 = 256;
/// `CenterCrop(224)`: the model's input side.
pub const CROP_SIZE: u32 = 224;

/// Pillow's resampling filter of a resize (antialiased: the support grows with the downscale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (the triangle filter): torchvision's default, the paper's eval.
    Bilinear,
    /// `Image.BICUBIC` (Keys' cubic, `a = -0.5`): timm's eval of DeiT and the AugReg ViTs.
    Bicubic,
}

impl Filter {
    /// Half-width of the filter at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's `bilinear_filter` / `bicubic_filter`.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// An evaluation transform: `Resize(resize)` (shorter side, PIL antialiased, with `filter`),
/// `CenterCrop(crop)`, `ToTensor`, `Normalize(mean, std)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    /// The resize's filter.
    pub filter: Filter,
    /// The shorter side after resizing (`floor(crop / crop_pct)`).
    pub resize: u32,
    /// The side of the centre crop: the model's input side.
    pub crop: u32,
    /// Channel means, RGB.
    pub mean: [f32; 3],
    /// Channel standard deviations, RGB.
    pub std: [f32; 3],
}

impl EvalTransform {
    /// torchvision's ImageNet transform: 256, 224, ImageNet mean and std (SReT, DeiT, PiT).
    pub const IMAGENET: EvalTransform = EvalTransform {
        filter: Filter::Bilinear,
        resize: RESIZE_SHORTER,
        crop: CROP_SIZE,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    /// The transform of `cfg` at its image size. The paper's models (SReT, DeiT-Tiny, PiT-Ti:
    /// [`crate::model::MODEL_NAMES`]) get the paper's eval, [`EvalTransform::IMAGENET`]
    /// (bilinear). The ViT family gets timm's: bicubic, ImageNet's mean and std with `crop_pct`
    /// 0.875 (DeiT), and for the AugReg `vit_*` models mean and std 0.5 with `crop_pct` 0.9 at
    /// 224 pixels and 1.0 above.
    pub fn for_model(cfg: &crate::model::ModelConfig) -> EvalTransform {
        let size = cfg.image_size as u32;
        if crate::model::MODEL_NAMES.contains(&cfg.name) {
            return EvalTransform {
                resize: (size as f64 / 0.875).floor() as u32,
                crop: size,
                ..EvalTransform::IMAGENET
            };
        }
        let augreg = cfg.name.starts_with("vit_");
        let (crop_pct, mean, std) = match (augreg, size > 224) {
            (true, false) => (0.9, [0.5; 3], [0.5; 3]),
            (true, true) => (1.0, [0.5; 3], [0.5; 3]),
            (false, _) => (0.875, IMAGENET_MEAN, IMAGENET_STD),
        };
        EvalTransform {
            filter: Filter::Bicubic,
            resize: (size as f64 / crop_pct).floor() as u32,
            crop: size,
            mean,
            std,
        }
    }
}

/// torchvision's `Resize(size)` output size for an image of `w`x`h`: the shorter side becomes
/// `size`, the longer one `int(size * long / short)` (Python float division, truncated).
pub fn resize_output_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((len - crop) / 2.0))`, Python's round half to
/// even. `len >= crop`.
pub fn center_crop_offset(len: u32, crop: u32) -> u32 {
    let d = len - crop;
    let q = d / 2;
    if d.is_multiple_of(2) || q.is_multiple_of(2) {
        q
    } else {
        q + 1
    }
}

#[cfg(feature = "images")]
/// The ImageNet eval transform of an RGB8 image: `Resize(256)`, `CenterCrop(224)`, `ToTensor`,
/// `Normalize`; returns [3, 224, 224] f32, channel-major.
pub fn preprocess_rgb8(img: &RgbImage) -> Vec<f32> {
    preprocess_rgb8_with(img, &EvalTransform::IMAGENET)
}

#[cfg(feature = "images")]
/// An RGB8 image through `t`: `[3, t.crop, t.crop]` f32, channel-major.
pub fn preprocess_rgb8_with(img: &RgbImage, t: &EvalTransform) -> Vec<f32> {
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0, "preprocess_rgb8: empty image");
    let (rw, rh) = resize_output_size(w, h, t.resize);
    // The shorter side is `resize >= crop`, so the crop never needs padding.
    let x0 = center_crop_offset(rw, t.crop);
    let y0 = center_crop_offset(rh, t.crop);
    let crop = resample_window(img, t.filter, rw, rh, (x0, y0, t.crop, t.crop));
    normalize_chw_with(&crop, &t.mean, &t.std)
}

#[cfg(feature = "images")]
/// `ToTensor` then `Normalize(IMAGENET_MEAN, IMAGENET_STD)` in f32, as torch computes it:
/// `(v / 255 - mean) / std`, laid out [3, h, w].
pub fn normalize_chw(img: &RgbImage) -> Vec<f32> {
    normalize_chw_with(img, &IMAGENET_MEAN, &IMAGENET_STD)
}

#[cfg(feature = "images")]
/// [`normalize_chw`] with other channel statistics.
pub fn normalize_chw_with(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

#[cfg(feature = "images")]
/// Resize with PIL-compatible antialiased bilinear: exposed for tests and for a later GPU port.
///
/// Bit-identical to `PIL.Image.resize((w, h), Image.BILINEAR)` on an RGB image.
pub fn resize_bilinear_antialias(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_antialias(img, Filter::Bilinear, w, h)
}

#[cfg(feature = "images")]
/// Resize with Pillow's antialiased `filter`: bit-identical to `PIL.Image.resize((w, h), F)` on
/// an RGB image, `F` the filter's Pillow name.
pub fn resize_antialias(img: &RgbImage, filter: Filter, w: u32, h: u32) -> RgbImage {
    assert!(w > 0 && h > 0, "resize_antialias: empty output size");
    resample_window(img, filter, w, h, (0, 0, w, h))
}

// ---------------------------------------------------------------------------------------------
// Pillow's Resample.c, for an 8-bit-per-channel image.

/// `32 - 8 - 2`: fixed-point fraction bits of the 8-bit resampler.
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input index, the tap count, and `ksize` fixed-point weights.
pub(crate) struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

impl Coeffs {
    /// `precompute_coeffs(in_size, 0, in_size, out_size, filter)` followed by
    /// `normalize_coeffs_8bpc`, for the output indices `start..start + len` only.
    pub(crate) fn new(filter: Filter, in_size: u32, out_size: u32, start: u32, len: u32) -> Coeffs {
        if in_size == 0 || out_size == 0 || len == 0 {
            // Nothing to resample (an empty side): no taps, rather than an infinite kernel.
            return Coeffs {
                ksize: 0,
                bounds: vec![(0, 0); len as usize],
                kk: Vec::new(),
            };
        }
        // The box reaches C as floats: in0 = 0.0f, in1 = (float)in_size.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(len as usize);
        let mut kk = vec![0i32; len as usize * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in (start..start + len).enumerate() {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            // C's (int) casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0f64;
            for (x, kx) in k.iter_mut().enumerate().take(count) {
                let w = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut kk[i * ksize..(i + 1) * ksize];
            for x in 0..count {
                let mut v = k[x];
                if ww != 0.0 {
                    v /= ww;
                }
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                row[x] = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, count));
        }
        Coeffs { ksize, bounds, kk }
    }

    pub(crate) fn len(&self) -> usize {
        self.bounds.len()
    }

    /// The input indices read by any of the outputs.
    #[cfg(feature = "images")]
    fn span(&self) -> std::ops::Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        first..end.max(first)
    }

    pub(crate) fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (xmin, count) = self.bounds[i];
        (xmin, &self.kk[i * self.ksize..i * self.ksize + count])
    }
}

#[cfg(feature = "images")]
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow 13's choice of pass order (`ImagingResampleInner`): the vertical pass goes first when
/// the height shrinks by more than twice as many pixels as the width does. (Pillow 12 and older
/// always ran the horizontal pass first; the two orders can differ by 1 in some pixels, because
/// of the 8-bit rounding between the passes. For `Resize(256)` they differ only for portraits
/// taller than about 2:1.)
pub fn pillow_vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

#[cfg(feature = "images")]
/// One pass along rows: every row of `rows` of `src` (`src_w` pixels wide, the first column being
/// input column `col_off`) filtered into `c.len()` pixels.
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    rows: Range<usize>,
    col_off: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let out_w = c.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (r, drow) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let srow = &src[r * src_w * 3..(r + 1) * src_w * 3];
        for (xx, d) in drow.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = c.taps(xx);
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let i = (xmin - col_off + x) * 3;
                acc[0] += srow[i] as i32 * kx;
                acc[1] += srow[i + 1] as i32 * kx;
                acc[2] += srow[i + 2] as i32 * kx;
            }
            d[0] = clip8(acc[0]);
            d[1] = clip8(acc[1]);
            d[2] = clip8(acc[2]);
        }
    }
    out
}

#[cfg(feature = "images")]
/// One pass along columns: the columns `cols` of `src` (`src_w` pixels wide, the first row being
/// input row `row_off`) filtered into `c.len()` rows.
fn vertical_pass(
    src: &[u8],
    src_w: usize,
    row_off: usize,
    cols: Range<usize>,
    c: &Coeffs,
) -> Vec<u8> {
    let stride = cols.len() * 3;
    let mut out = vec![0u8; c.len() * stride];
    let mut acc = vec![0i32; stride];
    for (yy, drow) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = c.taps(yy);
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let r = ymin - row_off + y;
            let srow = &src[(r * src_w + cols.start) * 3..(r * src_w + cols.end) * 3];
            for (a, &p) in acc.iter_mut().zip(srow) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in drow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(feature = "images")]
/// The pixels `rows` x `cols` of `src` (`src_w` pixels wide).
fn crop(src: &[u8], src_w: usize, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for r in rows {
        out.extend_from_slice(&src[(r * src_w + cols.start) * 3..(r * src_w + cols.end) * 3]);
    }
    out
}

#[cfg(feature = "images")]
/// The window `[x0, x0 + w) x [y0, y0 + h)` of the image resized to `out_w`x`out_h` with Pillow's
/// antialiased `filter`: two separable passes (either skipped when that side keeps its size) in
/// Pillow 13's order ([`pillow_vertical_first`]), with 8-bit rounding after each.
fn resample_window(
    img: &RgbImage,
    filter: Filter,
    out_w: u32,
    out_h: u32,
    window: (u32, u32, u32, u32),
) -> RgbImage {
    let vertical_first = pillow_vertical_first(img.width(), img.height(), out_w, out_h);
    resample_window_ordered(img, filter, out_w, out_h, window, vertical_first)
}

#[cfg(feature = "images")]
fn resample_window_ordered(
    img: &RgbImage,
    filter: Filter,
    out_w: u32,
    out_h: u32,
    (x0, y0, w, h): (u32, u32, u32, u32),
    vertical_first: bool,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    assert!(in_w > 0 && in_h > 0, "resample: empty input image");
    assert!(
        x0 + w <= out_w && y0 + h <= out_h,
        "resample: window outside the output"
    );
    let src = img.as_raw();
    let in_w_us = in_w as usize;
    let win_cols = x0 as usize..(x0 + w) as usize;
    let win_rows = y0 as usize..(y0 + h) as usize;
    let hc = (out_w != in_w).then(|| Coeffs::new(filter, in_w, out_w, x0, w));
    let vc = (out_h != in_h).then(|| Coeffs::new(filter, in_h, out_h, y0, h));

    let out = if !vertical_first {
        // Horizontal pass over the input rows the vertical pass reads, then vertical pass.
        let rows = vc.as_ref().map_or(win_rows.clone(), Coeffs::span);
        let tmp = match &hc {
            Some(hc) => horizontal_pass(src, in_w_us, rows.clone(), 0, hc),
            None => crop(src, in_w_us, rows.clone(), win_cols),
        };
        match &vc {
            Some(vc) => vertical_pass(&tmp, w as usize, rows.start, 0..w as usize, vc),
            None => tmp,
        }
    } else {
        // Vertical pass over the input columns the horizontal pass reads, then horizontal pass.
        let cols = hc.as_ref().map_or(win_cols.clone(), Coeffs::span);
        let tmp = match &vc {
            Some(vc) => vertical_pass(src, in_w_us, 0, cols.clone(), vc),
            None => crop(src, in_w_us, win_rows, cols.clone()),
        };
        match &hc {
            Some(hc) => horizontal_pass(&tmp, cols.len(), 0..h as usize, cols.start, hc),
            None => tmp,
        }
    };
    RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
}

#[cfg(all(test, feature = "images"))]
mod tests {
    use super::*;

    #[test]
    fn coefficients_of_an_empty_side_have_no_taps() {
        // An output (or input) side of 0 made an infinite kernel ("capacity overflow").
        for (input, out, len) in [(100, 0, 3), (0, 10, 2), (100, 0, 0)] {
            let c = Coeffs::new(Filter::Bicubic, input, out, 0, len);
            assert_eq!(c.len(), len as usize);
            for i in 0..c.len() {
                assert!(c.taps(i).1.is_empty());
            }
        }
    }

    #[test]
    fn output_size_matches_torchvision() {
        assert_eq!(resize_output_size(640, 427, 256), (383, 256));
        assert_eq!(resize_output_size(300, 456, 256), (256, 389));
        assert_eq!(resize_output_size(100, 80, 256), (320, 256));
        assert_eq!(resize_output_size(256, 256, 256), (256, 256));
    }

    #[test]
    fn crop_offset_rounds_half_to_even() {
        assert_eq!(center_crop_offset(256, 224), 16);
        assert_eq!(center_crop_offset(383, 224), 80); // 79.5 -> 80
        assert_eq!(center_crop_offset(389, 224), 82); // 82.5 -> 82
        assert_eq!(center_crop_offset(225, 224), 0); // 0.5 -> 0
        assert_eq!(center_crop_offset(227, 224), 2); // 1.5 -> 2
    }

    #[test]
    fn window_equals_full_resize_then_crop() {
        let img = RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x * 2) as u8])
        });
        for &(ow, oh) in &[
            (40u32, 30u32),
            (200, 130),
            (97, 20),
            (33, 61),
            (97, 61),
            (150, 9),
            (20, 200),
        ] {
            let (x0, y0, w, h) = (ow / 5, oh / 3, ow / 2, oh / 2);
            for f in [Filter::Bilinear, Filter::Bicubic] {
                let full = resize_antialias(&img, f, ow, oh);
                for vertical_first in [false, true] {
                    let full =
                        resample_window_ordered(&img, f, ow, oh, (0, 0, ow, oh), vertical_first);
                    let win =
                        resample_window_ordered(&img, f, ow, oh, (x0, y0, w, h), vertical_first);
                    for y in 0..h {
                        for x in 0..w {
                            assert_eq!(win.get_pixel(x, y), full.get_pixel(x0 + x, y0 + y));
                        }
                    }
                }
                let win = resample_window(&img, f, ow, oh, (x0, y0, w, h));
                assert_eq!(win.get_pixel(0, 0), full.get_pixel(x0, y0));
            }
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        assert!(!pillow_vertical_first(100, 80, 37, 23)); // 57 <= 2 * 63
        assert!(pillow_vertical_first(57, 83, 51, 63)); // 20 > 2 * 6
        assert!(pillow_vertical_first(100, 80, 250, 61)); // width grows
        assert!(!pillow_vertical_first(100, 80, 250, 90)); // height grows
        assert!(!pillow_vertical_first(300, 456, 256, 389)); // 67 <= 2 * 44
        assert!(pillow_vertical_first(300, 700, 256, 597)); // portrait taller than 2:1
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(13, 7, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        assert_eq!(resize_bilinear_antialias(&img, 13, 7), img);
    }
}

#[cfg(test)]
mod transform_tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn each_model_gets_timm_crop_and_normalisation() {
        let t = |name: &str| EvalTransform::for_model(&ModelConfig::by_name(name).unwrap());
        assert_eq!(t("sret_t"), EvalTransform::IMAGENET);
        assert_eq!(t("deit_tiny_distill"), EvalTransform::IMAGENET);
        assert_eq!(
            t("deit_small_patch16_224"),
            EvalTransform {
                filter: Filter::Bicubic,
                ..EvalTransform::IMAGENET
            }
        );
        let vit = t("vit_base_patch16_224");
        assert_eq!((vit.resize, vit.crop, vit.mean), (248, 224, [0.5; 3]));
        assert_eq!(vit.filter, Filter::Bicubic);
        let big = t("vit_small_patch16_384");
        assert_eq!((big.resize, big.crop), (384, 384));
        let deit384 = t("deit_base_patch16_384");
        assert_eq!((deit384.resize, deit384.crop), (438, 384));
    }

    #[cfg(feature = "images")]
    #[test]
    fn the_imagenet_transform_is_the_default_and_sizes_follow_the_crop() {
        let img = RgbImage::from_fn(300, 260, |x, y| {
            image::Rgb([x as u8, y as u8, (x ^ y) as u8])
        });
        assert_eq!(
            preprocess_rgb8_with(&img, &EvalTransform::IMAGENET),
            preprocess_rgb8(&img)
        );
        let t = EvalTransform::for_model(&ModelConfig::by_name("vit_small_patch16_384").unwrap());
        assert_eq!(preprocess_rgb8_with(&img, &t).len(), 3 * 384 * 384);
    }
}
