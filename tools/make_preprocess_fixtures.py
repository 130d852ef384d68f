#!/usr/bin/env python3
"""Make the fixtures of tests/preprocess.rs: test images and what torchvision + PIL make of them.

Writes into tests/fixtures/preprocess/ (or --out):

* the source images (JPEG and PNG files of several sizes, aspect ratios and modes), made from
  photographs that ship with scikit-image (CC0 / public domain, see assets/README.md);
* expected.safetensors with, for each image NAME,
    - ``pixels.NAME``   u8 [3, 224, 224]: the output of the torchvision ImageNet eval transform
      ``Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)`` on
      ``Image.open(path).convert("RGB")``, stored losslessly as the 8-bit pixel values it was made
      of (this script checks that renormalising them gives back torchvision's f32 tensor exactly);
    - ``normalized.NAME`` f32 [3, 224, 224]: torchvision's tensor itself, for a few images;
  and, for the exact resize test,
    - ``resize.NAME.WxH`` u8 [H, W, 3]: ``Image.open(path).convert("RGB").resize((W, H),
      Image.BILINEAR)`` for the lossless (PNG) sources;
    - ``decoded.NAME`` u8 [H, W, 3]: ``Image.open(path).convert("RGB")`` of small JPEGs covering
      the JPEG decoder (progressive, 4:2:2, restart markers, optimised tables, grayscale, CMYK,
      images narrower than a chroma block);
* manifest.json: the list of images and resize cases with their sizes and PIL modes.

Usage: tools/.venv/bin/python tools/make_preprocess_fixtures.py [--out DIR]
"""

import argparse
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from safetensors.numpy import save_file

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SKIMAGE_DATA = Path(skimage.data.__file__).parent


def png16(path, arr):
    """Write a 16-bit PNG (gray if 2-D, RGB if [H, W, 3]) without depending on a 16-bit writer."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    )


def make_images(out: Path):
    """Create the source images; returns [(name, file)]."""
    rocket = SKIMAGE_DATA / "rocket.jpg"  # 640x427 JPEG, public domain (SpaceX)
    coffee = Image.open(SKIMAGE_DATA / "coffee.png").convert("RGB")  # 600x400, CC0
    chelsea = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")  # 451x300, CC0
    astronaut = Image.open(SKIMAGE_DATA / "astronaut.png").convert("RGB")  # 512x512, public domain
    camera = Image.open(SKIMAGE_DATA / "camera.png").convert("L")  # 512x512 gray, CC0

    images = []

    def add(name, fname):
        images.append((name, fname))

    # Landscape, a real camera JPEG as it ships (4:2:0). 640x427 -> 383x256, crop x offset 79.5 -> 80.
    (out / "landscape.jpg").write_bytes(rocket.read_bytes())
    add("landscape", "landscape.jpg")

    # Portrait JPEG, 4:4:4. 300x456 -> 256x389, crop y offset 82.5 -> 82 (round half to even).
    astronaut.crop((150, 20, 450, 476)).save(out / "portrait.jpg", quality=92, subsampling=0)
    add("portrait", "portrait.jpg")

    # Small lossless RGB: upscaled 100x80 -> 320x256.
    coffee.resize((100, 80), Image.LANCZOS).save(out / "small.png")
    add("small", "small.png")

    # Grayscale JPEG (mode L).
    camera.crop((90, 100, 423, 400)).save(out / "gray.jpg", quality=90)
    add("gray", "gray.jpg")

    # RGBA PNG with an alpha gradient (alpha is dropped by convert("RGB"), not composited).
    rgba = chelsea.resize((226, 150), Image.BICUBIC).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 226).astype(np.uint8), (150, 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(out / "rgba.png")
    add("rgba", "rgba.png")

    # Palette PNG with a transparent entry.
    pal = chelsea.resize((150, 100), Image.BICUBIC).quantize(colors=64)
    pal.save(out / "palette.png", transparency=3)
    add("palette", "palette.png")

    # 16-bit RGB PNG (PIL keeps the high byte of each sample).
    c = np.asarray(coffee.crop((200, 100, 320, 190)), dtype=np.uint32)
    rng = np.random.default_rng(0)
    png16(out / "rgb16.png", c * 256 + rng.integers(0, 256, c.shape))  # high byte = c
    add("rgb16", "rgb16.png")

    # 16-bit grayscale PNG (PIL mode I;16, whose conversion to RGB clips at 255).
    g = np.add.outer(np.arange(48) * 5, np.arange(64) * 4).astype(np.uint16)
    png16(out / "gray16.png", g)
    add("gray16", "gray16.png")

    # CMYK JPEG (Adobe, inverted, as PIL and Photoshop write it).
    coffee.resize((150, 100), Image.BICUBIC).convert("CMYK").save(out / "cmyk.jpg", quality=95)
    add("cmyk", "cmyk.jpg")

    # Portrait taller than 2:1 in the resize sense: 270x600 -> 256x568, where Pillow 13 runs the
    # vertical pass first (height shrinks by 32 > 2 * 14 pixels). Palette PNG to keep it small.
    astronaut.crop((120, 0, 390, 512)).resize((270, 600), Image.BICUBIC).quantize(colors=256).save(out / "tall.png")
    add("tall", "tall.png")

    # Extreme aspect ratio: 1000x3 -> 85333x256, lossless.
    Image.fromarray(np.asarray(coffee.resize((1000, 3), Image.BILINEAR))).save(out / "wide.png")
    add("wide", "wide.png")

    return images


RESIZE_CASES = {
    # lossless sources only: name -> list of (w, h)
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    # pixels as the width: (160, 40), (90, 30), (300, 20) below.
    "small": [(37, 23), (100, 200), (7, 80), (160, 40), (90, 30)],
    "rgba": [(60, 149), (113, 75), (300, 20)],
    "palette": [(33, 250)],
}
NORMALIZED = ["landscape"]


def make_jpeg_variants(out: Path):
    """Small JPEGs covering the decoder's paths; returns [(name, file)]."""
    coffee = Image.open(SKIMAGE_DATA / "coffee.png").convert("RGB")
    chelsea = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    cases = [
        ("prog420", coffee.crop((211, 90, 368, 183)), dict(quality=83, progressive=True)),
        ("seq422_restart", chelsea.crop((150, 60, 281, 137)), dict(quality=71, subsampling=1, restart_marker_blocks=3)),
        ("prog444_optimized", coffee.crop((31, 200, 108, 251)), dict(quality=95, subsampling=0, progressive=True, optimize=True)),
        ("gray_prog_restart", chelsea.crop((0, 0, 90, 61)).convert("L"), dict(quality=60, progressive=True, restart_marker_rows=1)),
        ("cmyk_prog", coffee.crop((300, 150, 364, 195)).convert("CMYK"), dict(quality=90, progressive=True)),
        ("tiny420", coffee.crop((100, 100, 103, 105)), dict(quality=50)),
        ("single_pixel", coffee.crop((10, 10, 11, 11)), dict(quality=75, progressive=True)),
    ]
    files = []
    for name, im, kw in cases:
        fname = f"jpeg_{name}.jpg"
        im.save(out / fname, **kw)
        files.append((name, fname))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "tests" / "fixtures" / "preprocess")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)

    tensors = {}
    manifest = {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": Image.__version__,
        },
        "transform": "Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std) on Image.open(p).convert('RGB')",
        "images": [],
        "resize": [],
    }
    for name, fname in make_images(out):
        with open(out / fname, "rb") as f:
            src = Image.open(f)
            mode, size = src.mode, src.size
            img = src.convert("RGB")  # torchvision.datasets.folder.pil_loader
        t = transform(img)
        assert t.shape == (3, 224, 224) and t.dtype == torch.float32
        pixels = torch.round((t * std + mean) * 255).clamp(0, 255).to(torch.uint8)
        renorm = (pixels.float() / 255 - mean) / std
        err = (renorm - t).abs().max().item()
        assert err == 0.0, f"{name}: torchvision's tensor is not exactly 8-bit pixels renormalised ({err})"
        tensors[f"pixels.{name}"] = pixels.numpy()
        if name in NORMALIZED:
            tensors[f"normalized.{name}"] = t.numpy()
        manifest["images"].append({"name": name, "file": fname, "pil_mode": mode, "size": list(size)})
        for w, h in RESIZE_CASES.get(name, []):
            r = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8)
            assert r.shape == (h, w, 3)
            tensors[f"resize.{name}.{w}x{h}"] = np.ascontiguousarray(r)
            manifest["resize"].append({"name": name, "file": fname, "size": [w, h]})
        print(f"{name:10s} {fname:12s} {mode:5s} {size[0]}x{size[1]}")

    manifest["decode"] = []
    for name, fname in make_jpeg_variants(out):
        with open(out / fname, "rb") as f:
            src = Image.open(f)
            mode, size = src.mode, src.size
            rgb = np.asarray(src.convert("RGB"), dtype=np.uint8)
        tensors[f"decoded.{name}"] = np.ascontiguousarray(rgb)
        manifest["decode"].append({"name": name, "file": fname, "pil_mode": mode, "size": list(size)})
        print(f"{name:18s} {fname:28s} {mode:5s} {size[0]}x{size[1]} (decode only)")

    save_file(tensors, str(out / "expected.safetensors"))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(tensors)} tensors; {out} holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
