//! Preprocessing against torchvision + PIL (fixtures made by tools/make_preprocess_fixtures.py),
//! the exact PIL resize, decoding errors, and the class names.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use sret_tome::imagenet_class;
use sret_tome::io::{decode_rgb8, decode_rgb8_bytes, load_image};
use sret_tome::preprocess::{
    preprocess_rgb8, resize_bilinear_antialias, IMAGENET_MEAN, IMAGENET_STD,
};
use sret_tome::Error;

const PLANE: usize = 224 * 224;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn expected_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("expected.safetensors")).unwrap()
}

fn u8_tensor<'a>(st: &'a SafeTensors, name: &str, shape: &[usize]) -> &'a [u8] {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
}

fn f32_tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// torchvision's ToTensor + Normalize of 8-bit pixels, [3, 224, 224].
fn normalize_pixels(px: &[u8]) -> Vec<f32> {
    px.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / PLANE;
            (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        })
        .collect()
}

/// Every fixture image through `load_image`, compared with torchvision's output in [0, 1] pixel
/// units (normalised difference times std): at most 1/255 everywhere.
#[test]
fn load_image_matches_torchvision() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = manifest();
    let images = m["images"].as_array().unwrap();
    assert!(images.len() >= 5);
    let mut worst = 0f32;
    for img in images {
        let name = img["name"].as_str().unwrap();
        let file = img["file"].as_str().unwrap();
        let ours = load_image(fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(ours.len(), 3 * PLANE, "{name}");
        let theirs = normalize_pixels(u8_tensor(&st, &format!("pixels.{name}"), &[3, 224, 224]));
        let mut max = 0f32;
        let mut differing = 0usize;
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let d = (a - b).abs() * IMAGENET_STD[i / PLANE];
            if d > 1e-6 {
                differing += 1;
            }
            max = max.max(d);
        }
        println!(
            "{name:10} {file:14} {:5} max |diff| = {:.3}/255, {differing} of {} values differ",
            img["pil_mode"].as_str().unwrap(),
            max * 255.0,
            3 * PLANE
        );
        assert!(
            max <= 1.0 / 255.0 + 1e-6,
            "{name}: max pixel difference {:.3}/255 exceeds 1/255",
            max * 255.0
        );
        worst = worst.max(max);
    }
    println!(
        "worst max |diff| over all images = {:.3}/255",
        worst * 255.0
    );
}

/// Lossless sources give bit-identical pixels, so the f32 tensor matches torchvision's f32 tensor
/// exactly (the Normalize arithmetic is torch's).
#[test]
fn normalization_is_bitwise_torch() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let theirs = f32_tensor(&st, "normalized.landscape");
    let from_pixels = normalize_pixels(u8_tensor(&st, "pixels.landscape", &[3, 224, 224]));
    assert_eq!(
        theirs, from_pixels,
        "ToTensor+Normalize differs from torch's f32 arithmetic"
    );

    let ours = load_image(fixtures().join("landscape.jpg")).unwrap();
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("landscape.jpg: max |ours - torchvision| = {max:e} (normalised units)");
    assert!(max <= 1.0 / 255.0 / 0.224 + 1e-5);

    for name in [
        "small", "rgba", "palette", "rgb16", "gray16", "tall", "wide",
    ] {
        let file = manifest()["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["file"]
            .as_str()
            .unwrap()
            .to_string();
        let ours = load_image(fixtures().join(&file)).unwrap();
        let theirs = normalize_pixels(u8_tensor(&st, &format!("pixels.{name}"), &[3, 224, 224]));
        assert_eq!(
            ours, theirs,
            "{file}: a lossless source must match torchvision bit for bit"
        );
    }
}

/// `resize_bilinear_antialias` is bit-identical to PIL's `Image.resize(.., BILINEAR)`.
#[test]
fn resize_is_bit_identical_to_pil() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = manifest()["resize"].as_array().unwrap().clone();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let file = case["file"].as_str().unwrap();
        let w = case["size"][0].as_u64().unwrap() as u32;
        let h = case["size"][1].as_u64().unwrap() as u32;
        let src = decode_rgb8(&fixtures().join(file)).unwrap();
        let ours = resize_bilinear_antialias(&src, w, h);
        let theirs = u8_tensor(
            &st,
            &format!("resize.{name}.{w}x{h}"),
            &[h as usize, w as usize, 3],
        );
        let differing = ours
            .as_raw()
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a != b)
            .count();
        let max = ours
            .as_raw()
            .iter()
            .zip(theirs)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        println!(
            "{file} {}x{} -> {w}x{h}: {differing} values differ, max |diff| {max}",
            src.width(),
            src.height()
        );
        assert_eq!(differing, 0, "{file} -> {w}x{h}: differs from PIL");
    }
}

/// Pillow's BICUBIC resize (timm's eval of DeiT and the AugReg ViTs) bit for bit:
/// `resize_antialias(.., Filter::Bicubic, ..)` on the resize cases, and the whole eval transform
/// of `EvalTransform::for_model` on JPEG sources (bicubic `Resize`, `CenterCrop`), made by
/// tools/make_bicubic_fixtures.py.
#[test]
fn bicubic_resize_and_timm_eval_are_bit_identical_to_pil() {
    use sret_tome::model::ModelConfig;
    use sret_tome::preprocess::{
        normalize_chw_with, preprocess_rgb8_with, resize_antialias, EvalTransform, Filter,
    };
    let bytes = std::fs::read(fixtures().join("bicubic.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = manifest();
    for case in m["resize"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let file = case["file"].as_str().unwrap();
        let w = case["size"][0].as_u64().unwrap() as u32;
        let h = case["size"][1].as_u64().unwrap() as u32;
        let src = decode_rgb8(&fixtures().join(file)).unwrap();
        let ours = resize_antialias(&src, Filter::Bicubic, w, h);
        let theirs = u8_tensor(
            &st,
            &format!("resize.{name}.{w}x{h}"),
            &[h as usize, w as usize, 3],
        );
        assert!(
            ours.as_raw() == theirs,
            "{file} -> {w}x{h}: differs from PIL's BICUBIC"
        );
    }
    let mut checked = 0;
    for (t, model) in [
        ("deit", "deit_small_patch16_224"),
        ("vit", "vit_base_patch16_224"),
    ] {
        let transform = EvalTransform::for_model(&ModelConfig::by_name(model).unwrap());
        assert_eq!(transform.filter, Filter::Bicubic);
        for img in m["images"].as_array().unwrap() {
            let name = img["name"].as_str().unwrap();
            let Ok(theirs) = st.tensor(&format!("eval.{t}.{name}")) else {
                continue;
            };
            let src = decode_rgb8(&fixtures().join(img["file"].as_str().unwrap())).unwrap();
            let ours = preprocess_rgb8_with(&src, &transform);
            let c = transform.crop;
            let theirs =
                sret_tome::image::RgbImage::from_raw(c, c, theirs.data().to_vec()).unwrap();
            let want = normalize_chw_with(&theirs, &transform.mean, &transform.std);
            assert!(
                ours == want,
                "{model} eval of {name} differs from timm's (PIL BICUBIC)"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "the fixture's eval cases");
}

/// The JPEG decoder reproduces Pillow's (libjpeg-turbo) pixels exactly: progressive, 4:2:2,
/// restart markers, optimised Huffman tables, grayscale, CMYK, and images narrower than a chroma
/// block.
#[test]
fn jpeg_decoding_is_bit_identical_to_pil() {
    let bytes = expected_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = manifest()["decode"].as_array().unwrap().clone();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let file = case["file"].as_str().unwrap();
        let w = case["size"][0].as_u64().unwrap() as usize;
        let h = case["size"][1].as_u64().unwrap() as usize;
        let ours = decode_rgb8(&fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let theirs = u8_tensor(&st, &format!("decoded.{name}"), &[h, w, 3]);
        let differing = ours
            .as_raw()
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "{file} ({}, {w}x{h}): {differing} values differ",
            case["pil_mode"].as_str().unwrap()
        );
        assert_eq!(differing, 0, "{file}: decoded pixels differ from PIL's");
    }
}

#[test]
fn sample_asset_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.jpg");
    let x = load_image(&path).unwrap();
    assert_eq!(x.len(), 3 * PLANE);
    assert!(x.iter().all(|v| v.is_finite() && v.abs() < 3.0));
    // Same as preprocessing the decoded image directly.
    assert_eq!(x, preprocess_rgb8(&decode_rgb8(&path).unwrap()));
}

/// An image in memory decodes exactly as the same bytes in a file, and its errors name the
/// given path.
#[test]
fn bytes_decode_like_files() {
    for file in [
        "landscape.jpg",
        "jpeg_cmyk_prog.jpg",
        "palette.png",
        "gray16.png",
    ] {
        let path = fixtures().join(file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            decode_rgb8_bytes(&bytes, &path).unwrap(),
            decode_rgb8(&path).unwrap(),
            "{file}"
        );
    }
    let name = Path::new("in-memory.jpg");
    match decode_rgb8_bytes(b"\xFF\xD8\xFF", name) {
        Err(Error::BadImage { path, why }) => {
            assert_eq!(path, name);
            println!("{why}");
        }
        Err(e) => panic!("expected BadImage, got {e}"),
        Ok(_) => panic!("three bytes decoded"),
    }
}

#[test]
fn class_names() {
    assert_eq!(imagenet_class(0), Some("tench"));
    assert_eq!(imagenet_class(281), Some("tabby"));
    assert_eq!(imagenet_class(285), Some("Egyptian cat"));
    assert_eq!(imagenet_class(999), Some("toilet tissue"));
    assert_eq!(imagenet_class(1000), None);
    assert!((0..1000).all(|i| imagenet_class(i).is_some_and(|n| !n.is_empty())));
}

// ---------------------------------------------------------------------------------------------
// Errors

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("preprocess-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(tag: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = tag.to_vec();
    body.extend_from_slice(data);
    c.extend_from_slice(&body);
    c.extend_from_slice(&crc32(&body).to_be_bytes());
    c
}

/// A PNG whose header claims `w`x`h` RGB8, with a tiny (stored, empty) zlib stream as its data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn bad_image_why(r: sret_tome::Result<Vec<f32>>, path: &Path) -> String {
    match r {
        Err(Error::BadImage { path: p, why }) => {
            assert_eq!(p, path);
            println!("{}: {why}", path.file_name().unwrap().to_string_lossy());
            why
        }
        Err(e) => panic!("expected BadImage, got {e}"),
        Ok(_) => panic!("expected an error for {}", path.display()),
    }
}

#[test]
fn missing_file_is_io_error() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-image.jpg");
    match load_image(&path) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("no-such-image.jpg"), "{e}"),
        Err(e) => panic!("expected Io, got {e}"),
        Ok(_) => panic!("missing file loaded"),
    }
}

#[test]
fn not_an_image() {
    let path = tmp(
        "text.jpg",
        b"this is not an image, whatever its name says\n",
    );
    let why = bad_image_why(load_image(&path), &path);
    assert!(why.contains("not a recognised image format"), "{why}");
    let empty = tmp("empty.png", b"");
    bad_image_why(load_image(&empty), &empty);
}

#[test]
fn zero_size_is_refused() {
    for (w, h) in [(0, 5), (7, 0)] {
        let path = tmp(&format!("zero-{w}x{h}.png"), &png_claiming(w, h));
        let why = bad_image_why(load_image(&path), &path);
        assert!(why.contains(&format!("zero size ({w}x{h})")), "{why}");
    }
}

#[test]
fn huge_declared_size_is_refused_before_decoding() {
    let path = tmp("huge.png", &png_claiming(100_000, 100_000));
    let why = bad_image_why(load_image(&path), &path);
    assert!(
        why.contains("100000x100000") && why.contains("50 megapixels"),
        "{why}"
    );
    // Just over the limit.
    let path = tmp("over.png", &png_claiming(10_000, 5_001));
    let why = bad_image_why(load_image(&path), &path);
    assert!(why.contains("50 megapixels"), "{why}");
}

#[test]
fn truncated_image_is_an_error() {
    let bytes = std::fs::read(fixtures().join("small.png")).unwrap();
    let path = tmp("truncated.png", &bytes[..bytes.len() / 2]);
    bad_image_why(load_image(&path), &path);
    // Truncated inside the headers and inside the entropy-coded data: PIL refuses both
    // ("image file is truncated").
    let bytes = std::fs::read(fixtures().join("portrait.jpg")).unwrap();
    for cut in [300, 600, bytes.len() / 2, bytes.len() - 100] {
        let path = tmp(&format!("truncated-{cut}.jpg"), &bytes[..cut]);
        bad_image_why(load_image(&path), &path);
    }
    // A JPEG that merely lacks its EOI marker still decodes, as in PIL.
    let path = tmp("no-eoi.jpg", &bytes[..bytes.len() - 2]);
    assert_eq!(
        load_image(&path).unwrap(),
        load_image(fixtures().join("portrait.jpg")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs found by fuzzing (`cargo +nightly fuzz run image`, minimised with `cargo fuzz tmin`)
// that once made the decoder panic: each is now refused with an error saying what is wrong.

/// `tests/fixtures/fuzz/<file>` through `load_image` (and from memory) is a `BadImage` whose
/// message contains `expected`.
fn fuzz_input_is_refused(file: &str, expected: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(file);
    let why = bad_image_why(load_image(&path), &path);
    assert!(why.contains(expected), "{file}: {why}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(decode_rgb8_bytes(&bytes, &path).is_err(), "{file}");
}

/// A DHT segment declaring more codes of one length than that many bits can hold (4 of length
/// 2, then 2 of length 3) overran the 9-bit lookahead table while it was being built.
#[test]
fn jpeg_huffman_table_with_too_many_codes() {
    fuzz_input_is_refused(
        "jpeg_huffman_overfull.jpg",
        "bad Huffman table: more codes of length 3 than fit in 3 bits",
    );
}

/// A JPEG with a restart interval of one MCU whose entropy-coded data stops after 40 bytes
/// (then EOI, no more restart markers): libjpeg leaves every MCU after the data runs out empty
/// (mid-grey) instead of decoding zero bits into each, and stops visiting them, which also keeps
/// a tiny file that claims 50 megapixels cheap. Pixels as PIL's (`.pil.rgb`, made by Pillow 13).
#[test]
fn jpeg_missing_restart_markers_decode_like_pil() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let ours = decode_rgb8(&dir.join("jpeg_missing_restart_markers.jpg")).unwrap();
    let pil = std::fs::read(dir.join("jpeg_missing_restart_markers.pil.rgb")).unwrap();
    assert_eq!(ours.dimensions(), (48, 32));
    let differing = ours
        .as_raw()
        .iter()
        .zip(&pil)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "pixels differ from PIL's");
}
