//! Image decoding and the ImageNet evaluation transform, bit-compatible with torchvision + PIL:
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
//! output is bit-identical to `PIL.Image.resize(size, Image.BILINEAR)` of Pillow 13.0.
//!
//! Since every output pixel depends only on its own coefficients, [`preprocess_rgb8`] computes
//! only the 224x224 window that survives the centre crop. That gives the same bytes as resizing
//! the whole image and cropping, and keeps the work and memory bounded even for extreme aspect
//! ratios (a 1x50M image would otherwise resize to 256x12.8G).

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

mod jpeg;

/// torchvision's ImageNet channel means (`Normalize(mean=...)`), RGB order.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet channel standard deviations (`Normalize(std=...)`), RGB order.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `Resize(256)`: the shorter side after resizing.
pub const RESIZE_SHORTER: u32 = 256;
/// `CenterCrop(224)`: the model's input side.
pub const CROP_SIZE: u32 = 224;
/// Decoding refuses images with more pixels than this (50 megapixels).
pub const MAX_PIXELS: u64 = 50_000_000;
/// Decoder allocation limit (a 50-megapixel RGBA16 image needs 400 MB).
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

const CLASSES_TXT: &str = include_str!("../assets/imagenet_classes.txt");

/// The ImageNet-1k class name for a class index (0..1000), or `None` out of range.
pub fn imagenet_class(i: usize) -> Option<&'static str> {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            CLASSES_TXT
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .get(i)
        .copied()
}

/// Decode (bounded: refuse images with more than 50 megapixels or zero size with a clear error;
/// grayscale, alpha, 16-bit, CMYK-jpeg all converted to RGB8 as PIL's .convert('RGB') would) and
/// preprocess to [3, 224, 224] f32.
pub fn load_image(path: &Path) -> Result<Vec<f32>> {
    let img = decode_rgb8(path)?;
    Ok(preprocess_rgb8(&img))
}

/// Decode a JPEG or PNG file (format detected from its content, not its name) into RGB8, with
/// the same pixel values as `PIL.Image.open(path).convert("RGB")`:
///
/// * grayscale is replicated into R, G and B; alpha is dropped (not composited);
/// * 16-bit RGB(A) and gray+alpha keep the high byte of each sample (PIL's `;16B` raw modes);
/// * 16-bit grayscale becomes PIL mode `I;16`, whose conversion to RGB *clips* values above 255
///   to 255 (not a rescale): reproduced as is, so the result matches the PyTorch pipeline;
/// * JPEGs are decoded bit-exactly like Pillow's libjpeg-turbo (accurate integer IDCT, fancy
///   upsampling, libjpeg's colour conversion; CMYK/YCCK through PIL's inverted-CMYK path), with
///   the `image` crate as a fallback for the rare JPEG kinds this decoder does not reproduce;
/// * EXIF orientation is ignored, as PIL's `open` ignores it.
///
/// Refuses images of zero size or more than [`MAX_PIXELS`] pixels before decoding them.
pub fn decode_rgb8(path: &Path) -> Result<RgbImage> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8_from(BufReader::new(file), path)
}

/// [`decode_rgb8`] of an image already in memory; `name` is the path its errors name.
pub fn decode_rgb8_bytes(data: &[u8], name: &Path) -> Result<RgbImage> {
    decode_rgb8_from(Cursor::new(data), name)
}

/// A reader of `input` from its start, with its format guessed from its content.
fn open_image<'a, R: BufRead + Seek>(
    input: &'a mut R,
    path: &Path,
) -> Result<ImageReader<&'a mut R>> {
    input.rewind().map_err(|e| Error::io(path, e))?;
    let reader = ImageReader::new(input)
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::BadImage {
            path: path.to_path_buf(),
            why: "not a recognised image format (supported: JPEG, PNG)".to_string(),
        });
    }
    Ok(reader)
}

/// [`decode_rgb8`] of whatever `input` reads (from its start), naming `path` in errors.
fn decode_rgb8_from<R: BufRead + Seek>(mut input: R, path: &Path) -> Result<RgbImage> {
    let bad = |why: String| Error::BadImage {
        path: path.to_path_buf(),
        why,
    };
    let io = |e| Error::io(path, e);
    if let Some((w, h)) = png_header_size(&mut input) {
        check_dimensions(w, h).map_err(bad)?;
    }
    let (w, h) = open_image(&mut input, path)?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
    check_dimensions(w, h).map_err(bad)?;

    if open_image(&mut input, path)?.format() == Some(ImageFormat::Jpeg) {
        let mut bytes = Vec::new();
        input.rewind().map_err(io)?;
        input.read_to_end(&mut bytes).map_err(io)?;
        match jpeg::decode(&bytes) {
            Ok(img) if img.dimensions() == (w, h) => return Ok(img),
            Ok(img) => {
                return Err(bad(format!(
                    "decoded size {}x{} differs from the header's {w}x{h}",
                    img.width(),
                    img.height()
                )))
            }
            Err(jpeg::JpegError::Corrupt(why)) => return Err(bad(why)),
            Err(jpeg::JpegError::Unsupported(why)) => log::warn!(
                "{}: {why}: decoding with the image crate instead, pixels may differ slightly from PIL's",
                path.display()
            ),
        }
    }
    let mut reader = open_image(&mut input, path)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if (img.width(), img.height()) != (w, h) {
        return Err(bad(format!(
            "decoded size {}x{} differs from the header's {w}x{h}",
            img.width(),
            img.height()
        )));
    }
    Ok(to_rgb8_like_pil(img))
}

/// The size a PNG's IHDR declares (read directly so that a zero size gets a clear message
/// rather than the decoder's), or `None` for anything else.
fn png_header_size(input: &mut (impl Read + Seek)) -> Option<(u32, u32)> {
    let mut head = [0u8; 24];
    input.rewind().ok()?;
    input.read_exact(&mut head).ok()?;
    if &head[..8] != b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&head[16..20]), be(&head[20..24])))
}

fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has zero size ({w}x{h})"));
    }
    let pixels = w as u64 * h as u64;
    if pixels > MAX_PIXELS {
        return Err(format!(
            "image is {w}x{h} = {pixels} pixels, more than the limit of {MAX_PIXELS} (50 megapixels)"
        ));
    }
    Ok(())
}

/// Convert any decoded image to RGB8 the way PIL's `.convert("RGB")` would (see [`decode_rgb8`]).
fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let map = |n: usize, ch: usize, f: &dyn Fn(&[u16]) -> [u8; 3], data: &[u16]| -> RgbImage {
        let mut out = Vec::with_capacity(n * 3);
        for px in data.chunks_exact(ch) {
            out.extend_from_slice(&f(px));
        }
        RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
    };
    let n = w as usize * h as usize;
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageRgba8(im) => {
            let out = im
                .as_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
        }
        DynamicImage::ImageLuma8(im) => {
            let out = im.as_raw().iter().flat_map(|&v| [v, v, v]).collect();
            RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
        }
        DynamicImage::ImageLumaA8(im) => {
            let out = im
                .as_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0]])
                .collect();
            RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
        }
        // PIL: mode I;16, and I;16 -> RGB clips to 255.
        DynamicImage::ImageLuma16(im) => map(
            n,
            1,
            &|p| {
                let v = p[0].min(255) as u8;
                [v, v, v]
            },
            im.as_raw(),
        ),
        // PIL: LA;16B / RGB;16B / RGBA;16B raw modes keep the most significant byte.
        DynamicImage::ImageLumaA16(im) => map(
            n,
            2,
            &|p| {
                let v = hi(p[0]);
                [v, v, v]
            },
            im.as_raw(),
        ),
        DynamicImage::ImageRgb16(im) => map(n, 3, &|p| [hi(p[0]), hi(p[1]), hi(p[2])], im.as_raw()),
        DynamicImage::ImageRgba16(im) => {
            map(n, 4, &|p| [hi(p[0]), hi(p[1]), hi(p[2])], im.as_raw())
        }
        // Not produced by the JPEG and PNG decoders; the crate's own conversion is fine.
        other => other.to_rgb8(),
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

/// The ImageNet eval transform of an RGB8 image: `Resize(256)`, `CenterCrop(224)`, `ToTensor`,
/// `Normalize`; returns [3, 224, 224] f32, channel-major.
pub fn preprocess_rgb8(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0, "preprocess_rgb8: empty image");
    let (rw, rh) = resize_output_size(w, h, RESIZE_SHORTER);
    // The shorter side is 256 >= 224, so the crop never needs padding.
    let x0 = center_crop_offset(rw, CROP_SIZE);
    let y0 = center_crop_offset(rh, CROP_SIZE);
    let crop = resample_window(img, rw, rh, x0, y0, CROP_SIZE, CROP_SIZE);
    normalize_chw(&crop)
}

/// `ToTensor` then `Normalize(IMAGENET_MEAN, IMAGENET_STD)` in f32, as torch computes it:
/// `(v / 255 - mean) / std`, laid out [3, h, w].
pub fn normalize_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// Resize with PIL-compatible antialiased bilinear: exposed for tests and for a later GPU port.
///
/// Bit-identical to `PIL.Image.resize((w, h), Image.BILINEAR)` on an RGB image.
pub fn resize_bilinear_antialias(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    assert!(
        w > 0 && h > 0,
        "resize_bilinear_antialias: empty output size"
    );
    resample_window(img, w, h, 0, 0, w, h)
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

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl Coeffs {
    /// `precompute_coeffs(in_size, 0, in_size, out_size, BILINEAR)` followed by
    /// `normalize_coeffs_8bpc`, for the output indices `start..start + len` only.
    pub(crate) fn new(in_size: u32, out_size: u32, start: u32, len: u32) -> Coeffs {
        // The box reaches C as floats: in0 = 0.0f, in1 = (float)in_size.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = 1.0 * filterscale;
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
                let w = bilinear_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
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
    fn span(&self) -> Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        first..end.max(first)
    }

    pub(crate) fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (xmin, count) = self.bounds[i];
        (xmin, &self.kk[i * self.ksize..i * self.ksize + count])
    }
}

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

/// The pixels `rows` x `cols` of `src` (`src_w` pixels wide).
fn crop(src: &[u8], src_w: usize, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for r in rows {
        out.extend_from_slice(&src[(r * src_w + cols.start) * 3..(r * src_w + cols.end) * 3]);
    }
    out
}

/// The window `[x0, x0 + w) x [y0, y0 + h)` of the image resized to `out_w`x`out_h` with Pillow's
/// antialiased bilinear filter: two separable passes (either skipped when that side keeps its
/// size) in Pillow 13's order ([`pillow_vertical_first`]), with 8-bit rounding after each.
fn resample_window(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    x0: u32,
    y0: u32,
    w: u32,
    h: u32,
) -> RgbImage {
    let vertical_first = pillow_vertical_first(img.width(), img.height(), out_w, out_h);
    resample_window_ordered(img, out_w, out_h, (x0, y0, w, h), vertical_first)
}

fn resample_window_ordered(
    img: &RgbImage,
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
    let hc = (out_w != in_w).then(|| Coeffs::new(in_w, out_w, x0, w));
    let vc = (out_h != in_h).then(|| Coeffs::new(in_h, out_h, y0, h));

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

#[cfg(test)]
mod tests {
    use super::*;

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
            let full = resize_bilinear_antialias(&img, ow, oh);
            let (x0, y0, w, h) = (ow / 5, oh / 3, ow / 2, oh / 2);
            for vertical_first in [false, true] {
                let full = resample_window_ordered(&img, ow, oh, (0, 0, ow, oh), vertical_first);
                let win = resample_window_ordered(&img, ow, oh, (x0, y0, w, h), vertical_first);
                for y in 0..h {
                    for x in 0..w {
                        assert_eq!(win.get_pixel(x, y), full.get_pixel(x0 + x, y0 + y));
                    }
                }
            }
            let win = resample_window(&img, ow, oh, x0, y0, w, h);
            assert_eq!(win.get_pixel(0, 0), full.get_pixel(x0, y0));
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
