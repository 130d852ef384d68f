#!/usr/bin/env python3
"""Make tests/fixtures/checkpoint/{deit_tiny_distill,pit_ti_distill}_official.pth: ``torch.save``
checkpoints in the layouts the baselines' authors published, small enough to commit.

* DeiT (facebookresearch/deit releases): ``{'model': state_dict}`` with timm's names.
* PiT (naver-ai/pit releases, and the paper's ``PiT_ToMe.py``): a bare state_dict whose pooling
  layers are ``pools.{s}.conv`` / ``pools.{s}.fc`` (timm renames them ``transformers.{s+1}.pool``).

Every float tensor is a strided view (storage offset, per-dimension strides, overlapping) of one
of two small pools (f32 and f16), so the 5.9 M / 5.1 M-parameter models fit in a few kilobytes
while the files keep the real names, shapes and order. ``<name>_official.logits.safetensors``
holds timm's logits for those weights on ``--images`` (``sret-tome synthetic --images-out``,
batch 2, seed 5), which tests/baseline_parity.rs compares the engine with.

    tools/.venv/bin/python tools/make_official_checkpoints.py --images x.safetensors
"""

import argparse
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file


def viewed(sd, gen):
    """The state dict with every float tensor replaced by a view of a shared pool."""
    pools = {torch.float32: torch.randn(9973, generator=gen) * 0.05,
             torch.float16: (torch.randn(7919, generator=gen) * 0.05).half()}
    out = {}
    for i, (k, v) in enumerate(sd.items()):
        dtype = torch.float16 if i % 3 == 2 else torch.float32
        pool = pools[dtype]
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            out[k] = (1.0 + torch.as_strided(pool, v.shape, (1,), i % 97)).to(dtype)
            continue
        strides, stride = [], 1
        for size in reversed(v.shape):
            strides.insert(0, stride)
            stride = stride % 7 + 1  # overlapping, not contiguous
        extent = sum((s - 1) * st for s, st in zip(v.shape, strides)) + 1
        offset = (i * 131) % max(1, pool.numel() - extent)
        assert offset + extent <= pool.numel(), k
        out[k] = torch.as_strided(pool, v.shape, strides, offset)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/checkpoint"))
    a = p.parse_args()
    images = load_file(a.images)["images"]
    gen = torch.Generator().manual_seed(7)
    for name, timm_name in [("deit_tiny_distill", "deit_tiny_distilled_patch16_224"),
                            ("pit_ti_distill", "pit_ti_distilled_224")]:
        model = timm.create_model(timm_name, pretrained=False).eval()
        sd = viewed(model.state_dict(), gen)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        with torch.no_grad():
            logits = model(images).float().contiguous()
        if name.startswith("deit"):
            ckpt = {"model": sd}
        else:
            ckpt = {re.sub(r"transformers\.(\d)\.pool\.",
                           lambda m: f"pools.{int(m.group(1)) - 1}.", k): v for k, v in sd.items()}
        path = Path(a.out) / f"{name}_official.pth"
        torch.save(ckpt, path)
        back = torch.load(path, weights_only=True)
        back = back.get("model", back)
        assert all(torch.equal(back[k], v) for k, v in ckpt.get("model", ckpt).items())
        save_file({"logits": logits}, Path(a.out) / f"{name}_official.logits.safetensors",
                  metadata={"timm": timm.__version__, "torch": torch.__version__})
        print(path, path.stat().st_size, "bytes; top-1", logits.argmax(-1).tolist())


if __name__ == "__main__":
    main()
