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
use std::io::BufReader;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

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
    let bad = |why: String| Error::BadImage {
        path: path.to_path_buf(),
        why,
    };
    let open = || -> Result<ImageReader<BufReader<File>>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = ImageReader::new(BufReader::new(file))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?;
        if reader.format().is_none() {
            return Err(bad(
                "not a recognised image format (supported: JPEG, PNG)".to_string()
            ));
        }
        Ok(reader)
    };

    if let Some((w, h)) = png_header_size(path) {
        check_dimensions(w, h).map_err(bad)?;
    }
    let (w, h) = open()?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
    check_dimensions(w, h).map_err(bad)?;

    let mut reader = open()?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
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
fn png_header_size(path: &Path) -> Option<(u32, u32)> {
    use std::io::Read;
    let mut head = [0u8; 24];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..8] != b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
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

// ---------------------------------------------------------------------------------------------
// JPEG decoding bit-compatible with libjpeg-turbo as Pillow drives it.

/// Huffman-coded JPEG (baseline, extended sequential and progressive, 8-bit) decoded exactly as
/// libjpeg-turbo does with its defaults, which is what Pillow uses: the accurate integer IDCT
/// (`jidctint.c`), "fancy" (triangle) chroma upsampling (`jdsample.c`), the fixed-point
/// YCbCr->RGB tables (`jdcolor.c`), libjpeg's colour-space guesses (`jdapimin.c`), then PIL's
/// `convert("RGB")` (CMYK via Adobe-inverted values and `cmyk2rgb`).
///
/// The `image` crate's decoder (zune-jpeg) rounds differently and differs by up to 3 levels in
/// some pixels, which survives the resize; this one matches Pillow bit for bit. What it does not
/// handle (arithmetic coding, lossless or 12-bit JPEG, unusual sampling ratios, progressive
/// files whose AC bands are incomplete, which libjpeg smooths) is reported as
/// [`JpegError::Unsupported`] and the caller falls back to the `image` crate.
mod jpeg {
    use image::RgbImage;

    #[derive(Debug)]
    pub(super) enum JpegError {
        /// Valid JPEG outside what this decoder reproduces: decode it some other way.
        Unsupported(String),
        /// Broken or truncated data (Pillow refuses these too).
        Corrupt(String),
    }
    use JpegError::{Corrupt, Unsupported};
    type R<T> = std::result::Result<T, JpegError>;

    /// `jpeg_natural_order`, with libjpeg's 16 extra entries guarding corrupt run lengths.
    const NATURAL: [usize; 80] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63,
        63, 63, 63, 63, 63, 63, 63, 63, 63,
    ];

    struct Huffman {
        /// 9-bit lookahead: `len << 8 | value`, 0 when the code is longer.
        fast: Vec<u16>,
        maxcode: [i32; 18],
        valoffset: [i32; 17],
        values: Vec<u8>,
    }

    impl Huffman {
        fn new(counts: &[u8; 16], values: Vec<u8>) -> R<Huffman> {
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if total != values.len() || total > 256 {
                return Err(Corrupt("bad Huffman table".into()));
            }
            let mut fast = vec![0u16; 512];
            let mut maxcode = [-1i32; 18];
            let mut valoffset = [0i32; 17];
            let mut code = 0i32;
            let mut k = 0usize;
            for l in 1..=16 {
                let n = counts[l - 1] as usize;
                valoffset[l] = k as i32 - code;
                for _ in 0..n {
                    if l <= 9 {
                        let shift = 9 - l;
                        let first = (code as usize) << shift;
                        for e in &mut fast[first..first + (1 << shift)] {
                            *e = (l as u16) << 8 | values[k] as u16;
                        }
                    }
                    code += 1;
                    k += 1;
                }
                if n > 0 {
                    maxcode[l] = code - 1;
                }
                if code > (1 << l) {
                    return Err(Corrupt("bad Huffman table".into()));
                }
                code <<= 1;
            }
            maxcode[17] = i32::MAX;
            Ok(Huffman {
                fast,
                maxcode,
                valoffset,
                values,
            })
        }
    }

    /// Entropy-coded data reader: removes stuffed zero bytes, feeds zero bits after a marker
    /// (as libjpeg does) and notes running out of data.
    struct Bits<'a> {
        data: &'a [u8],
        pos: usize,
        acc: u64,
        n: u32,
        marker_hit: bool,
        eof: bool,
        real_bits: u64,
        used_bits: u64,
    }

    impl<'a> Bits<'a> {
        fn new(data: &'a [u8], pos: usize) -> Self {
            Bits {
                data,
                pos,
                acc: 0,
                n: 0,
                marker_hit: false,
                eof: false,
                real_bits: 0,
                used_bits: 0,
            }
        }

        fn fill(&mut self) {
            while self.n <= 56 {
                let mut byte = 0u8;
                let mut real = false;
                if !self.marker_hit && !self.eof {
                    match self.data.get(self.pos) {
                        None => self.eof = true,
                        Some(&0xFF) => {
                            let mut p = self.pos + 1;
                            while p < self.data.len() && self.data[p] == 0xFF {
                                p += 1;
                            }
                            match self.data.get(p) {
                                None => self.eof = true,
                                Some(0) => {
                                    byte = 0xFF;
                                    real = true;
                                    self.pos = p + 1;
                                }
                                Some(_) => self.marker_hit = true,
                            }
                        }
                        Some(&b) => {
                            byte = b;
                            real = true;
                            self.pos += 1;
                        }
                    }
                }
                if real {
                    self.real_bits += 8;
                }
                self.acc |= (byte as u64) << (56 - self.n);
                self.n += 8;
            }
        }

        #[inline]
        fn bits(&mut self, n: u32) -> u32 {
            if n == 0 {
                return 0;
            }
            if self.n < n {
                self.fill();
            }
            let v = (self.acc >> (64 - n)) as u32;
            self.acc <<= n;
            self.n -= n;
            self.used_bits += n as u64;
            v
        }

        #[inline]
        fn receive_extend(&mut self, s: u32) -> i32 {
            if s == 0 {
                return 0;
            }
            let s = s.min(16);
            let v = self.bits(s) as i32;
            if v < 1 << (s - 1) {
                v - (1 << s) + 1
            } else {
                v
            }
        }

        #[inline]
        fn huff(&mut self, t: &Huffman) -> u8 {
            if self.n < 16 {
                self.fill();
            }
            let e = t.fast[(self.acc >> 55) as usize];
            if e != 0 {
                let len = (e >> 8) as u32;
                self.acc <<= len;
                self.n -= len;
                self.used_bits += len as u64;
                return e as u8;
            }
            let mut code = 0i32;
            for l in 1..=16 {
                code = code << 1 | self.bits(1) as i32;
                if code <= t.maxcode[l] {
                    return t.values[(t.valoffset[l] + code) as usize];
                }
            }
            0 // libjpeg: "Corrupt JPEG data: bad Huffman code", use 0
        }

        /// Ran past the end of the file (not into a marker): the file is truncated.
        fn truncated(&self) -> bool {
            self.eof && self.used_bits > self.real_bits
        }

        /// libjpeg's `process_restart`: drop the buffered bits, find and skip the RSTn marker.
        fn restart(&mut self) {
            self.acc = 0;
            self.n = 0;
            self.used_bits = self.real_bits;
            let d = self.data;
            let mut p = self.pos;
            while p + 1 < d.len() {
                if d[p] == 0xFF && (0xD0..=0xD7).contains(&d[p + 1]) {
                    p += 2;
                    break;
                }
                if d[p] == 0xFF && d[p + 1] != 0 && d[p + 1] != 0xFF {
                    break; // some other marker: leave it (libjpeg resyncs the same way)
                }
                p += 1;
            }
            self.pos = p;
            self.marker_hit = false;
        }
    }

    struct Component {
        id: u8,
        h: usize,
        v: usize,
        tq: usize,
        /// Blocks per row / column, padded to whole MCUs.
        bw: usize,
        bh: usize,
        /// Size of the downsampled component (libjpeg's `downsampled_width/height`).
        dw: usize,
        dh: usize,
        coefs: Vec<i16>,
        qt: Option<[u16; 64]>,
        dc_pred: i32,
        coef_bits: [i32; 64],
    }

    struct Frame {
        width: usize,
        height: usize,
        progressive: bool,
        hmax: usize,
        vmax: usize,
        mcux: usize,
        mcuy: usize,
        comps: Vec<Component>,
    }

    fn be16(d: &[u8], p: usize) -> R<usize> {
        match d.get(p..p + 2) {
            Some(b) => Ok((b[0] as usize) << 8 | b[1] as usize),
            None => Err(Corrupt("truncated marker segment".into())),
        }
    }

    pub(super) fn decode(data: &[u8]) -> R<RgbImage> {
        if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
            return Err(Corrupt("missing SOI marker".into()));
        }
        let mut pos = 2;
        let mut qts: [Option<[u16; 64]>; 4] = [None; 4];
        let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
        let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
        let mut restart_interval = 0usize;
        let mut frame: Option<Frame> = None;
        let mut saw_jfif = false;
        let mut adobe: Option<u8> = None;
        let mut scans = 0usize;

        loop {
            // next_marker: skip garbage, then fill bytes.
            while pos < data.len() && data[pos] != 0xFF {
                pos += 1;
            }
            while pos < data.len() && data[pos] == 0xFF {
                pos += 1;
            }
            let Some(&marker) = data.get(pos) else {
                if scans > 0 {
                    break; // missing EOI after complete scans
                }
                return Err(Corrupt("no image data (file truncated?)".into()));
            };
            pos += 1;
            match marker {
                0xD9 => break,
                0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => {}
                _ => {
                    let len = be16(data, pos)?;
                    if len < 2 || pos + len > data.len() {
                        return Err(Corrupt(format!(
                            "truncated segment (marker 0x{marker:02X})"
                        )));
                    }
                    let seg = &data[pos + 2..pos + len];
                    pos += len;
                    match marker {
                        0xC0..=0xC2 => {
                            if frame.is_some() {
                                return Err(Unsupported("more than one frame".into()));
                            }
                            frame = Some(parse_sof(seg, marker == 0xC2)?);
                        }
                        0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                            return Err(Unsupported(format!(
                                "JPEG process SOF{} (only Huffman baseline/sequential/progressive)",
                                marker - 0xC0
                            )));
                        }
                        0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
                        0xDB => parse_dqt(seg, &mut qts)?,
                        0xDD => restart_interval = be16(seg, 0)?,
                        0xDC => return Err(Unsupported("DNL marker".into())),
                        0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => saw_jfif = true,
                        0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                            adobe = Some(seg[11])
                        }
                        0xDA => {
                            let f = frame
                                .as_mut()
                                .ok_or_else(|| Corrupt("scan before frame header".into()))?;
                            pos = decode_scan(
                                data,
                                pos,
                                seg,
                                f,
                                &qts,
                                &dc_tables,
                                &ac_tables,
                                restart_interval,
                            )?;
                            scans += 1;
                        }
                        _ => {}
                    }
                }
            }
        }
        let frame = frame.ok_or_else(|| Corrupt("no frame header".into()))?;
        if scans == 0 {
            return Err(Corrupt("no scans".into()));
        }
        finish(frame, saw_jfif, adobe)
    }

    fn parse_sof(seg: &[u8], progressive: bool) -> R<Frame> {
        if seg.len() < 6 {
            return Err(Corrupt("short SOF".into()));
        }
        if seg[0] != 8 {
            return Err(Unsupported(format!("{}-bit samples", seg[0])));
        }
        let height = be16(seg, 1)?;
        let width = be16(seg, 3)?;
        let nc = seg[5] as usize;
        if width == 0 || height == 0 {
            return Err(Unsupported("zero or DNL-defined size".into()));
        }
        if !matches!(nc, 1 | 3 | 4) || seg.len() < 6 + 3 * nc {
            return Err(Unsupported(format!("{nc} components")));
        }
        let mut comps = Vec::with_capacity(nc);
        for i in 0..nc {
            let c = &seg[6 + 3 * i..9 + 3 * i];
            let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return Err(Corrupt("bad sampling factors or table".into()));
            }
            comps.push(Component {
                id: c[0],
                h,
                v,
                tq: c[2] as usize,
                bw: 0,
                bh: 0,
                dw: 0,
                dh: 0,
                coefs: Vec::new(),
                qt: None,
                dc_pred: 0,
                coef_bits: [-1; 64],
            });
        }
        let hmax = comps.iter().map(|c| c.h).max().unwrap();
        let vmax = comps.iter().map(|c| c.v).max().unwrap();
        let mcux = width.div_ceil(8 * hmax);
        let mcuy = height.div_ceil(8 * vmax);
        for c in &mut comps {
            c.bw = mcux * c.h;
            c.bh = mcuy * c.v;
            c.dw = (width * c.h).div_ceil(hmax);
            c.dh = (height * c.v).div_ceil(vmax);
            c.coefs = vec![0i16; c.bw * c.bh * 64];
        }
        Ok(Frame {
            width,
            height,
            progressive,
            hmax,
            vmax,
            mcux,
            mcuy,
            comps,
        })
    }

    fn parse_dht(
        mut seg: &[u8],
        dc: &mut [Option<Huffman>; 4],
        ac: &mut [Option<Huffman>; 4],
    ) -> R<()> {
        while !seg.is_empty() {
            if seg.len() < 17 {
                return Err(Corrupt("short DHT".into()));
            }
            let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
            let counts: [u8; 16] = seg[1..17].try_into().unwrap();
            let n: usize = counts.iter().map(|&c| c as usize).sum();
            if class > 1 || id > 3 || seg.len() < 17 + n {
                return Err(Corrupt("bad DHT".into()));
            }
            let t = Huffman::new(&counts, seg[17..17 + n].to_vec())?;
            if class == 0 {
                dc[id] = Some(t)
            } else {
                ac[id] = Some(t)
            }
            seg = &seg[17 + n..];
        }
        Ok(())
    }

    fn parse_dqt(mut seg: &[u8], qts: &mut [Option<[u16; 64]>; 4]) -> R<()> {
        while !seg.is_empty() {
            let (pq, tq) = (seg[0] >> 4, (seg[0] & 15) as usize);
            let size = if pq == 0 { 64 } else { 128 };
            if tq > 3 || pq > 1 || seg.len() < 1 + size {
                return Err(Corrupt("bad DQT".into()));
            }
            let mut q = [0u16; 64];
            for k in 0..64 {
                q[NATURAL[k]] = if pq == 0 {
                    seg[1 + k] as u16
                } else {
                    (seg[1 + 2 * k] as u16) << 8 | seg[2 + 2 * k] as u16
                };
            }
            qts[tq] = Some(q);
            seg = &seg[1 + size..];
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_scan(
        data: &[u8],
        pos: usize,
        seg: &[u8],
        f: &mut Frame,
        qts: &[Option<[u16; 64]>; 4],
        dc_tables: &[Option<Huffman>; 4],
        ac_tables: &[Option<Huffman>; 4],
        restart_interval: usize,
    ) -> R<usize> {
        let ns = *seg.first().ok_or_else(|| Corrupt("short SOS".into()))? as usize;
        if ns == 0 || ns > 4 || seg.len() < 4 + 2 * ns {
            return Err(Corrupt("bad SOS".into()));
        }
        let mut sc = Vec::with_capacity(ns); // (component index, dc table, ac table)
        for i in 0..ns {
            let id = seg[1 + 2 * i];
            let t = seg[2 + 2 * i];
            let ci = f
                .comps
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| Corrupt(format!("scan names unknown component {id}")))?;
            sc.push((ci, (t >> 4) as usize & 3, (t & 15) as usize & 3));
        }
        let ss = seg[1 + 2 * ns] as usize;
        let se = seg[2 + 2 * ns] as usize;
        let ah = (seg[3 + 2 * ns] >> 4) as u32;
        let al = (seg[3 + 2 * ns] & 15) as u32;
        // (Sequential scans with other Ss/Se/Ah/Al only draw a warning from libjpeg.)
        if f.progressive
            && (se > 63 || ss > se || (ss == 0 && se != 0) || (ss > 0 && ns != 1) || al > 13)
        {
            return Err(Corrupt("bad progressive scan parameters".into()));
        }
        // Latch quantisation tables at the first scan of each component, like libjpeg.
        for &(ci, _, _) in &sc {
            let c = &mut f.comps[ci];
            if c.qt.is_none() {
                c.qt = Some(
                    qts[c.tq]
                        .ok_or_else(|| Corrupt(format!("quantisation table {} missing", c.tq)))?,
                );
            }
            c.dc_pred = 0;
        }
        let need_dc = !f.progressive || (ss == 0 && ah == 0);
        let need_ac = !f.progressive || ss > 0;
        for &(_, td, ta) in &sc {
            if need_dc && dc_tables[td].is_none() {
                return Err(Corrupt(format!("DC Huffman table {td} missing")));
            }
            if need_ac && ac_tables[ta].is_none() {
                return Err(Corrupt(format!("AC Huffman table {ta} missing")));
            }
        }
        // coef_bits bookkeeping (used to detect incomplete progressive files).
        if f.progressive {
            for &(ci, _, _) in &sc {
                for k in ss..=se {
                    f.comps[ci].coef_bits[k] = al as i32;
                }
            }
        } else {
            for &(ci, _, _) in &sc {
                f.comps[ci].coef_bits = [0; 64];
            }
        }

        let mut bits = Bits::new(data, pos);
        let mut eobrun = 0u32;
        let mut insufficient = false;

        // The units of the scan: MCUs for interleaved scans, single blocks otherwise.
        let (units_x, units_y) = if ns > 1 {
            (f.mcux, f.mcuy)
        } else {
            let c = &f.comps[sc[0].0];
            (c.dw.div_ceil(8), c.dh.div_ceil(8))
        };
        let total = units_x * units_y;
        let mut restarts_to_go = restart_interval;
        for unit in 0..total {
            if restart_interval > 0 {
                if restarts_to_go == 0 {
                    bits.restart();
                    for &(ci, _, _) in &sc {
                        f.comps[ci].dc_pred = 0;
                    }
                    eobrun = 0;
                    insufficient = false;
                    restarts_to_go = restart_interval;
                }
                restarts_to_go -= 1;
            }
            if insufficient {
                continue;
            }
            let (ux, uy) = (unit % units_x, unit / units_x);
            for &(ci, td, ta) in &sc {
                let (h, v) = if ns > 1 {
                    (f.comps[ci].h, f.comps[ci].v)
                } else {
                    (1, 1)
                };
                for by in 0..v {
                    for bx in 0..h {
                        let c = &mut f.comps[ci];
                        let (row, col) = if ns > 1 {
                            (uy * v + by, ux * h + bx)
                        } else {
                            (uy, ux)
                        };
                        let off = (row * c.bw + col) * 64;
                        let block = &mut c.coefs[off..off + 64];
                        if !f.progressive {
                            let dc = dc_tables[td].as_ref().unwrap();
                            let ac = ac_tables[ta].as_ref().unwrap();
                            let s = bits.huff(dc) as u32;
                            let diff = bits.receive_extend(s);
                            c.dc_pred = c.dc_pred.wrapping_add(diff);
                            block[0] = c.dc_pred as i16;
                            let mut k = 1;
                            while k < 64 {
                                let rs = bits.huff(ac);
                                let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                                if s != 0 {
                                    k += r;
                                    block[NATURAL[k]] = bits.receive_extend(s) as i16;
                                } else if r == 15 {
                                    k += 15;
                                } else {
                                    break;
                                }
                                k += 1;
                            }
                        } else if ss == 0 {
                            if ah == 0 {
                                let s = bits.huff(dc_tables[td].as_ref().unwrap()) as u32;
                                let diff = bits.receive_extend(s);
                                c.dc_pred = c.dc_pred.wrapping_add(diff);
                                block[0] = (c.dc_pred << al) as i16;
                            } else if bits.bits(1) != 0 {
                                block[0] |= (1i32 << al) as i16;
                            }
                        } else if ah == 0 {
                            ac_first(
                                &mut bits,
                                ac_tables[ta].as_ref().unwrap(),
                                block,
                                ss,
                                se,
                                al,
                                &mut eobrun,
                            );
                        } else {
                            ac_refine(
                                &mut bits,
                                ac_tables[ta].as_ref().unwrap(),
                                block,
                                ss,
                                se,
                                al,
                                &mut eobrun,
                            );
                        }
                    }
                }
            }
            if bits.truncated() {
                return Err(Corrupt("image file is truncated".into()));
            }
            if bits.marker_hit && bits.used_bits > bits.real_bits {
                // libjpeg ran into a marker and fed zeros: the rest of this restart interval
                // stays empty.
                insufficient = true;
            }
        }
        // Position after the entropy-coded data: the next marker.
        let mut p = bits.pos;
        while p + 1 < data.len()
            && !(data[p] == 0xFF && data[p + 1] != 0 && !(0xD0..=0xD7).contains(&data[p + 1]))
        {
            p += 1;
        }
        Ok(p)
    }

    fn ac_first(
        bits: &mut Bits,
        t: &Huffman,
        block: &mut [i16],
        ss: usize,
        se: usize,
        al: u32,
        eobrun: &mut u32,
    ) {
        if *eobrun > 0 {
            *eobrun -= 1;
            return;
        }
        let mut k = ss;
        while k <= se {
            let rs = bits.huff(t);
            let (r, s) = ((rs >> 4) as u32, (rs & 15) as u32);
            if s != 0 {
                k += r as usize;
                block[NATURAL[k]] = (bits.receive_extend(s) << al) as i16;
            } else if r == 15 {
                k += 15;
            } else {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += bits.bits(r);
                }
                *eobrun -= 1;
                break;
            }
            k += 1;
        }
    }

    fn ac_refine(
        bits: &mut Bits,
        t: &Huffman,
        block: &mut [i16],
        ss: usize,
        se: usize,
        al: u32,
        eobrun: &mut u32,
    ) {
        let p1 = 1i32 << al;
        let m1 = -1i32 << al;
        let refine = |bits: &mut Bits, coef: &mut i16| {
            if bits.bits(1) != 0 && (*coef as i32 & p1) == 0 {
                *coef = if *coef >= 0 {
                    (*coef as i32 + p1) as i16
                } else {
                    (*coef as i32 + m1) as i16
                };
            }
        };
        let mut k = ss;
        if *eobrun == 0 {
            while k <= se {
                let rs = bits.huff(t);
                let mut r = (rs >> 4) as i32;
                let mut s = (rs & 15) as i32;
                if s != 0 {
                    s = if bits.bits(1) != 0 { p1 } else { m1 };
                } else if r != 15 {
                    *eobrun = 1 << r;
                    if r > 0 {
                        *eobrun += bits.bits(r as u32);
                    }
                    break;
                }
                loop {
                    let coef = &mut block[NATURAL[k]];
                    if *coef != 0 {
                        refine(bits, coef);
                    } else {
                        r -= 1;
                        if r < 0 {
                            break;
                        }
                    }
                    k += 1;
                    if k > se {
                        break;
                    }
                }
                if s != 0 {
                    block[NATURAL[k]] = s as i16;
                }
                k += 1;
            }
        }
        if *eobrun > 0 {
            while k <= se {
                let coef = &mut block[NATURAL[k]];
                if *coef != 0 {
                    refine(bits, coef);
                }
                k += 1;
            }
            *eobrun -= 1;
        }
    }

    /// `jpeg_idct_islow` of one dequantised block into 8x8 samples.
    fn idct_islow(coef: &[i16], q: &[u16; 64], out: &mut [u8], stride: usize) {
        const CONST_BITS: i64 = 13;
        const PASS1_BITS: i64 = 2;
        const F0_298: i64 = 2446;
        const F0_390: i64 = 3196;
        const F0_541: i64 = 4433;
        const F0_765: i64 = 6270;
        const F0_899: i64 = 7373;
        const F1_175: i64 = 9633;
        const F1_501: i64 = 12299;
        const F1_847: i64 = 15137;
        const F1_961: i64 = 16069;
        const F2_053: i64 = 16819;
        const F2_562: i64 = 20995;
        const F3_072: i64 = 25172;
        #[inline]
        fn descale(x: i64, n: i64) -> i64 {
            (x + (1 << (n - 1))) >> n
        }
        #[inline]
        fn range_limit(x: i64) -> u8 {
            // IDCT_range_limit[x & RANGE_MASK]: x as a 10-bit two's complement value, + 128, clamped.
            let i = (x & 0x3FF) as i32;
            let s = if i >= 512 { i - 1024 } else { i };
            (s + 128).clamp(0, 255) as u8
        }
        let mut ws = [0i32; 64];
        for col in 0..8 {
            let dq = |r: usize| coef[r * 8 + col] as i64 * q[r * 8 + col] as i64;
            if (1..8).all(|r| coef[r * 8 + col] == 0) {
                let dc = (dq(0) << PASS1_BITS) as i32;
                for r in 0..8 {
                    ws[r * 8 + col] = dc;
                }
                continue;
            }
            let (z2, z3) = (dq(2), dq(6));
            let z1 = (z2 + z3) * F0_541;
            let tmp2 = z1 + z3 * -F1_847;
            let tmp3 = z1 + z2 * F0_765;
            let (z2, z3) = (dq(0), dq(4));
            let tmp0 = (z2 + z3) << CONST_BITS;
            let tmp1 = (z2 - z3) << CONST_BITS;
            let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
            let (t0, t1, t2, t3) = (dq(7), dq(5), dq(3), dq(1));
            let (o0, o1, o2, o3) = odd_part(t0, t1, t2, t3);
            let d = CONST_BITS - PASS1_BITS;
            ws[col] = descale(tmp10 + o3, d) as i32;
            ws[7 * 8 + col] = descale(tmp10 - o3, d) as i32;
            ws[8 + col] = descale(tmp11 + o2, d) as i32;
            ws[6 * 8 + col] = descale(tmp11 - o2, d) as i32;
            ws[2 * 8 + col] = descale(tmp12 + o1, d) as i32;
            ws[5 * 8 + col] = descale(tmp12 - o1, d) as i32;
            ws[3 * 8 + col] = descale(tmp13 + o0, d) as i32;
            ws[4 * 8 + col] = descale(tmp13 - o0, d) as i32;
        }
        #[inline]
        fn odd_part(t0: i64, t1: i64, t2: i64, t3: i64) -> (i64, i64, i64, i64) {
            let z1 = t0 + t3;
            let z2 = t1 + t2;
            let z3 = t0 + t2;
            let z4 = t1 + t3;
            let z5 = (z3 + z4) * F1_175;
            let t0 = t0 * F0_298;
            let t1 = t1 * F2_053;
            let t2 = t2 * F3_072;
            let t3 = t3 * F1_501;
            let z1 = z1 * -F0_899;
            let z2 = z2 * -F2_562;
            let z3 = z3 * -F1_961 + z5;
            let z4 = z4 * -F0_390 + z5;
            (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4)
        }
        for row in 0..8 {
            let w = &ws[row * 8..row * 8 + 8];
            let o = &mut out[row * stride..row * stride + 8];
            let d = CONST_BITS + PASS1_BITS + 3;
            if w[1..].iter().all(|&x| x == 0) {
                o.fill(range_limit(descale(w[0] as i64, PASS1_BITS + 3)));
                continue;
            }
            let (z2, z3) = (w[2] as i64, w[6] as i64);
            let z1 = (z2 + z3) * F0_541;
            let tmp2 = z1 + z3 * -F1_847;
            let tmp3 = z1 + z2 * F0_765;
            let tmp0 = (w[0] as i64 + w[4] as i64) << CONST_BITS;
            let tmp1 = (w[0] as i64 - w[4] as i64) << CONST_BITS;
            let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
            let (o0, o1, o2, o3) = odd_part(w[7] as i64, w[5] as i64, w[3] as i64, w[1] as i64);
            o[0] = range_limit(descale(tmp10 + o3, d));
            o[7] = range_limit(descale(tmp10 - o3, d));
            o[1] = range_limit(descale(tmp11 + o2, d));
            o[6] = range_limit(descale(tmp11 - o2, d));
            o[2] = range_limit(descale(tmp12 + o1, d));
            o[5] = range_limit(descale(tmp12 - o1, d));
            o[3] = range_limit(descale(tmp13 + o0, d));
            o[4] = range_limit(descale(tmp13 - o0, d));
        }
    }

    /// One component upsampled to the image size, as `jdsample.c` does with fancy upsampling.
    fn upsample(c: &Component, plane: &[u8], stride: usize, f: &Frame) -> R<Vec<u8>> {
        let (w, h) = (f.width, f.height);
        let (dw, dh) = (c.dw, c.dh);
        let mut out = vec![0u8; w * h];
        let row = |y: usize| &plane[y * stride..y * stride + dw];
        if c.h == f.hmax && c.v == f.vmax {
            for y in 0..h {
                out[y * w..(y + 1) * w].copy_from_slice(&row(y)[..w]);
            }
        } else if c.h * 2 == f.hmax && c.v == f.vmax {
            let mut tmp = vec![0u8; 2 * dw];
            for y in 0..h {
                h2v1(row(y), &mut tmp);
                out[y * w..(y + 1) * w].copy_from_slice(&tmp[..w]);
            }
        } else if c.h == f.hmax && c.v * 2 == f.vmax {
            for y in 0..h {
                let inrow = y / 2;
                let (other, bias) = if y % 2 == 0 {
                    (inrow.saturating_sub(1), 1)
                } else {
                    ((inrow + 1).min(dh - 1), 2)
                };
                let (a, b) = (row(inrow), row(other));
                for x in 0..w {
                    out[y * w + x] = ((a[x] as u32 * 3 + b[x] as u32 + bias) >> 2) as u8;
                }
            }
        } else if c.h * 2 == f.hmax && c.v * 2 == f.vmax {
            let mut tmp = vec![0u8; 2 * dw];
            let mut colsum = vec![0i32; dw];
            for y in 0..h {
                let inrow = y / 2;
                if dw > 2 {
                    let other = if y % 2 == 0 {
                        inrow.saturating_sub(1)
                    } else {
                        (inrow + 1).min(dh - 1)
                    };
                    let (a, b) = (row(inrow), row(other));
                    for x in 0..dw {
                        colsum[x] = a[x] as i32 * 3 + b[x] as i32;
                    }
                    h2v2_row(&colsum, &mut tmp);
                } else {
                    for (x, &p) in row(inrow).iter().enumerate() {
                        tmp[2 * x] = p;
                        tmp[2 * x + 1] = p;
                    }
                }
                out[y * w..(y + 1) * w].copy_from_slice(&tmp[..w]);
            }
        } else if f.hmax.is_multiple_of(c.h) && f.vmax.is_multiple_of(c.v) {
            let (he, ve) = (f.hmax / c.h, f.vmax / c.v);
            for y in 0..h {
                let r = &plane[(y / ve) * stride..];
                for x in 0..w {
                    out[y * w + x] = r[x / he];
                }
            }
        } else {
            return Err(Unsupported(format!(
                "sampling factors {}x{} of {}x{}",
                c.h, c.v, f.hmax, f.vmax
            )));
        }
        Ok(out)
    }

    /// `h2v1_fancy_upsample` (or plain replication for rows of at most 2 samples).
    fn h2v1(inp: &[u8], out: &mut [u8]) {
        let n = inp.len();
        if n <= 2 {
            for (i, &p) in inp.iter().enumerate() {
                out[2 * i] = p;
                out[2 * i + 1] = p;
            }
            return;
        }
        let p = |i: usize| inp[i] as u32;
        out[0] = inp[0];
        out[1] = ((p(0) * 3 + p(1) + 2) >> 2) as u8;
        for i in 1..n - 1 {
            out[2 * i] = ((p(i) * 3 + p(i - 1) + 1) >> 2) as u8;
            out[2 * i + 1] = ((p(i) * 3 + p(i + 1) + 2) >> 2) as u8;
        }
        out[2 * n - 2] = ((p(n - 1) * 3 + p(n - 2) + 1) >> 2) as u8;
        out[2 * n - 1] = inp[n - 1];
    }

    /// The horizontal half of `h2v2_fancy_upsample` on column sums `3 * near + far`.
    fn h2v2_row(cs: &[i32], out: &mut [u8]) {
        let n = cs.len();
        out[0] = ((cs[0] * 4 + 8) >> 4) as u8;
        out[1] = ((cs[0] * 3 + cs[1] + 7) >> 4) as u8;
        for i in 1..n - 1 {
            out[2 * i] = ((cs[i] * 3 + cs[i - 1] + 8) >> 4) as u8;
            out[2 * i + 1] = ((cs[i] * 3 + cs[i + 1] + 7) >> 4) as u8;
        }
        out[2 * n - 2] = ((cs[n - 1] * 3 + cs[n - 2] + 8) >> 4) as u8;
        out[2 * n - 1] = ((cs[n - 1] * 4 + 7) >> 4) as u8;
    }

    /// libjpeg's YCbCr->RGB tables (`build_ycc_rgb_table`).
    struct YccTables {
        cr_r: [i32; 256],
        cb_b: [i32; 256],
        cr_g: [i64; 256],
        cb_g: [i64; 256],
    }

    impl YccTables {
        fn new() -> Self {
            const SCALEBITS: i64 = 16;
            const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
            let fix = |x: f64| (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64;
            let mut t = YccTables {
                cr_r: [0; 256],
                cb_b: [0; 256],
                cr_g: [0; 256],
                cb_g: [0; 256],
            };
            for i in 0..256 {
                let x = i as i64 - 128;
                t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
                t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
                t.cr_g[i] = -fix(0.71414) * x;
                t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
            }
            t
        }

        #[inline]
        fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
            let y = y as i32;
            let (cb, cr) = (cb as usize, cr as usize);
            [
                y + self.cr_r[cr],
                y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16) as i32,
                y + self.cb_b[cb],
            ]
        }
    }

    fn clamp8(v: i32) -> u8 {
        v.clamp(0, 255) as u8
    }

    fn finish(mut f: Frame, saw_jfif: bool, adobe: Option<u8>) -> R<RgbImage> {
        if f.progressive {
            // libjpeg smooths blocks whose first AC coefficients were never fully received.
            for c in &f.comps {
                if c.coef_bits[..10].iter().any(|&b| b != 0) {
                    return Err(Unsupported(
                        "progressive JPEG with incomplete coefficients (block smoothing)".into(),
                    ));
                }
            }
        }
        // Inverse DCT of every block into per-component sample planes.
        let mut planes = Vec::with_capacity(f.comps.len());
        for c in &mut f.comps {
            let q =
                c.qt.ok_or_else(|| Corrupt(format!("component {} has no scan", c.id)))?;
            let stride = c.bw * 8;
            let mut plane = vec![0u8; stride * c.bh * 8];
            for by in 0..c.bh {
                for bx in 0..c.bw {
                    let off = (by * c.bw + bx) * 64;
                    idct_islow(
                        &c.coefs[off..off + 64],
                        &q,
                        &mut plane[by * 8 * stride + bx * 8..],
                        stride,
                    );
                }
            }
            c.coefs = Vec::new();
            planes.push(plane);
        }
        let mut up = Vec::with_capacity(f.comps.len());
        for (c, p) in f.comps.iter().zip(&planes) {
            up.push(upsample(c, p, c.bw * 8, &f)?);
        }
        drop(planes);
        let n = f.width * f.height;
        let mut rgb = vec![0u8; n * 3];
        match f.comps.len() {
            1 => {
                for (o, &y) in rgb.chunks_exact_mut(3).zip(&up[0]) {
                    o.fill(y);
                }
            }
            3 => {
                let ids = [f.comps[0].id, f.comps[1].id, f.comps[2].id];
                let is_rgb = if saw_jfif {
                    false
                } else if let Some(t) = adobe {
                    t == 0
                } else {
                    ids == [82, 71, 66]
                };
                if is_rgb {
                    for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                        o.copy_from_slice(&[up[0][i], up[1][i], up[2][i]]);
                    }
                } else {
                    let t = YccTables::new();
                    for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                        let v = t.rgb(up[0][i], up[1][i], up[2][i]);
                        o.copy_from_slice(&[clamp8(v[0]), clamp8(v[1]), clamp8(v[2])]);
                    }
                }
            }
            4 => {
                let ycck = matches!(adobe, Some(t) if t != 0);
                let t = YccTables::new();
                for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                    // libjpeg's CMYK output (YCCK converted by ycck_cmyk_convert)...
                    let (c, m, y) = if ycck {
                        let v = t.rgb(up[0][i], up[1][i], up[2][i]);
                        (clamp8(255 - v[0]), clamp8(255 - v[1]), clamp8(255 - v[2]))
                    } else {
                        (up[0][i], up[1][i], up[2][i])
                    };
                    let k = up[3][i];
                    // ...read by PIL as "CMYK;I" (inverted), then Convert.c's cmyk2rgb.
                    let nk = 255 - (255 - k as i32);
                    let muldiv255 = |a: i32, b: i32| {
                        let t = a * b + 128;
                        ((t >> 8) + t) >> 8
                    };
                    let conv = |v: u8| clamp8(nk - muldiv255(255 - v as i32, nk));
                    o.copy_from_slice(&[conv(c), conv(m), conv(y)]);
                }
            }
            _ => unreachable!("checked in parse_sof"),
        }
        Ok(RgbImage::from_raw(f.width as u32, f.height as u32, rgb)
            .expect("buffer size matches dimensions"))
    }
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
