#!/usr/bin/env python3
"""Make assets/imagenet_classes.txt and assets/sample.jpg from packages installed in tools/.venv.

* imagenet_classes.txt: the 1000 ImageNet-1k class names in class-index order, one per line,
  taken from torchvision (``torchvision.models._meta._IMAGENET_CATEGORIES``, the list behind
  ``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``; torchvision is BSD-3-Clause).
* sample.jpg: scikit-image's ``skimage/data/chelsea.png`` (Chelsea the cat, 451x300, CC0 by the
  photographer Stefan van der Walt) re-encoded as a JPEG (quality 92, 4:2:0).

Usage: tools/.venv/bin/python tools/make_assets.py [--out assets]
"""

import argparse
from pathlib import Path

import skimage.data
from PIL import Image
from torchvision.models import ResNet50_Weights


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(categories) == 1000 and all(c and "\n" not in c for c in categories)
    (args.out / "imagenet_classes.txt").write_text("\n".join(categories) + "\n", encoding="utf-8")

    src = Path(skimage.data.__file__).parent / "chelsea.png"
    Image.open(src).convert("RGB").save(args.out / "sample.jpg", quality=92)
    print(f"wrote {args.out / 'imagenet_classes.txt'} ({len(categories)} classes), {args.out / 'sample.jpg'}")


if __name__ == "__main__":
    main()
