#!/usr/bin/env python3
"""Make tests/fixtures/preprocess/bicubic.safetensors: what Pillow's BICUBIC resize makes of the
preprocess fixtures' images (timm's eval transform of DeiT and the AugReg ViTs resizes with it).

For every resize case of manifest.json (lossless PNG sources):
    resize.NAME.WxH   u8 [H, W, 3]  Image.open(file).convert("RGB").resize((W, H), Image.BICUBIC)
and for a few images of manifest.json and transforms (EVAL_CASES):
    eval.T.NAME       u8 [C, C, 3]  timm's eval resize + centre crop, before ToTensor:
                      shorter side to R with BICUBIC (torchvision's Resize size rule), crop C
where T is "deit" (R 256, C 224: crop_pct 0.875) or "vit" (R 248, C 224: crop_pct 0.9).

Needs only Pillow 13.0, numpy and safetensors (no torch): torchvision's Resize of a PIL image is
Image.resize with the size computed as below, and CenterCrop rounds the offset half to even.

Usage: python3 tools/make_bicubic_fixtures.py [--dir tests/fixtures/preprocess]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

TRANSFORMS = {"deit": (256, 224), "vit": (248, 224)}
# (transform, image): a landscape and a portrait JPEG (the fixture stays small).
EVAL_CASES = [("deit", "landscape"), ("vit", "landscape"), ("vit", "portrait")]


def resized_size(w, h, size):
    """torchvision's Resize(size) output for a w x h image: the shorter side becomes size."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="tests/fixtures/preprocess")
    d = Path(ap.parse_args().dir)
    manifest = json.loads((d / "manifest.json").read_text())
    out = {}
    for case in manifest["resize"]:
        w, h = case["size"]
        img = Image.open(d / case["file"]).convert("RGB")
        out[f"resize.{case['name']}.{w}x{h}"] = np.asarray(img.resize((w, h), Image.BICUBIC))
    files = {e["name"]: e["file"] for e in manifest["images"]}
    for t, name in EVAL_CASES:
        img = Image.open(d / files[name]).convert("RGB")
        for r, c in [TRANSFORMS[t]]:
            rw, rh = resized_size(*img.size, r)
            big = img.resize((rw, rh), Image.BICUBIC)
            x0, y0 = int(round((rw - c) / 2.0)), int(round((rh - c) / 2.0))
            out[f"eval.{t}.{name}"] = np.ascontiguousarray(
                np.asarray(big.crop((x0, y0, x0 + c, y0 + c)))
            )
    save_file(out, str(d / "bicubic.safetensors"), metadata={"pillow": PIL.__version__})
    print(f"{len(out)} tensors, Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
