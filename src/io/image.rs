//! Decoding images from files or memory, bounded and converted to RGB8 as PIL's
//! `.convert("RGB")` would; [`load_image`] adds the ImageNet evaluation transform
//! ([`crate::preprocess`]). JPEG goes through our own decoder ([`super::jpeg`], see its module
//! doc for why), PNG through the `image` crate.

use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use super::jpeg;
use crate::error::{Error, Result};
use crate::preprocess::{preprocess_rgb8, preprocess_rgb8_with, EvalTransform};

/// Largest image file opened (regular files only).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Decoding refuses images with more pixels than this (50 megapixels).
pub const MAX_PIXELS: u64 = 50_000_000;
/// Decoder allocation limit (a 50-megapixel RGBA16 image needs 400 MB).
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;
/// Bytes per pixel that decoding and preprocessing may hold at once, at most: the decoded
/// image (up to RGBA16, 8), its RGB8 conversion (3), a resize pass (3) and the decoder's
/// planes; checked against the address space left before decoding.
pub const DECODE_BYTES_PER_PIXEL: u64 = 16;

/// Decode (bounded: refuse images with more than 50 megapixels or zero size with a clear error;
/// grayscale, alpha, 16-bit, CMYK-jpeg all converted to RGB8 as PIL's .convert('RGB') would) and
/// preprocess to [3, 224, 224] f32.
pub fn load_image(path: impl AsRef<Path>) -> Result<Vec<f32>> {
    let path = path.as_ref();
    let img = decode_rgb8(path)?;
    Ok(preprocess_rgb8(&img))
}

/// [`load_image`] with the evaluation transform `t` (e.g. [`EvalTransform::for_model`]):
/// `[3, t.crop, t.crop]` f32.
pub fn load_image_with(path: impl AsRef<Path>, t: &EvalTransform) -> Result<Vec<f32>> {
    Ok(preprocess_rgb8_with(&decode_rgb8(path.as_ref())?, t))
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
    let (file, _) = super::files::open_regular(path, MAX_IMAGE_FILE_BYTES, "image file")?;
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
    // Bounded by the address space the process may still use (ulimit -v), not only by pixels.
    crate::os_limits::check_address_space(
        w as u64 * h as u64 * DECODE_BYTES_PER_PIXEL,
        &format!("decoding a {w}x{h} image"),
    )
    .map_err(|e| bad(e.to_string()))?;

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

pub(crate) fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
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
