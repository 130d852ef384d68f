#!/usr/bin/env python3
"""Logits of the paper's baselines as their own code computes them, for tests/baseline_parity.rs.

* DeiT-Tiny(-Distill): timm's ``deit_tiny[_distilled]_patch16_224``; with merging, patched by the
  official ToMe (``tome.patch.timm.apply_patch``: proportional attention, class and distillation
  tokens protected) and ``model.r`` set from the schedule.
* PiT-Ti(-Distill): timm's ``pit_ti[_distilled]_224`` without merging; with merging, the paper's
  ``integration/PiT_ToMe.py`` (which keeps timm's computation and adds ToMe with the unmerge
  stack), given the same weights under its original ``pools.{s}`` names.

Both reference repositories are imported from checkouts given on the command line; nothing of
them is copied here.

Inputs (safetensors): --weights with timm's state_dict names (``sret-tome synthetic`` writes
them), --images tensor ``images`` f32 [B, 3, 224, 224]. Output: --out tensor ``logits`` f32.

Schedules: none | constant:R | tome:R,INFLECT (ToMe's ``(r, inflection)``; DeiT only) |
exp:RINIT,ALPHA (the paper's per-stage exponential schedule; PiT only).

Example:
  tools/.venv/bin/python tools/timm_logits.py --model deit_tiny_distill --schedule constant:8 \\
      --tome-repo /tmp/ToMe --sret-tome-repo /tmp/sret-tome --weights w.safetensors \\
      --images x.safetensors --out logits.safetensors
"""

import argparse
import re
import sys

import timm
import torch
from safetensors.torch import load_file, save_file

TIMM_NAMES = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_tiny_distill": "deit_tiny_distilled_patch16_224",
    "pit_ti": "pit_ti_224",
    "pit_ti_distill": "pit_ti_distilled_224",
}


def deit(args, weights, images, schedule):
    model = timm.create_model(TIMM_NAMES[args.model], pretrained=False)
    model.load_state_dict(weights, strict=True)
    model.eval()
    kind, value = schedule
    if kind != "none":
        sys.path.insert(0, args.tome_repo)
        import tome

        tome.patch.timm(model)
        model.r = value
    with torch.no_grad():
        return model(images)


def pit(args, weights, images, schedule):
    kind, value = schedule
    if kind == "none":
        model = timm.create_model(TIMM_NAMES[args.model], pretrained=False)
        model.load_state_dict(weights, strict=True)
        model.eval()
        with torch.no_grad():
            return model(images)
    sys.path.insert(0, args.sret_tome_repo)
    sys.path.insert(0, f"{args.sret_tome_repo}/integration")
    import PiT_ToMe

    original = {}
    for k, v in weights.items():
        m = re.match(r"transformers\.(\d)\.pool\.(.*)", k)
        original[f"pools.{int(m.group(1)) - 1}.{m.group(2)}" if m else k] = v
    distilled = args.model.endswith("_distill")
    cls = PiT_ToMe.DistilledPoolingTransformer if distilled else PiT_ToMe.PoolingTransformer
    kw = dict(image_size=224, patch_size=16, stride=8, base_dims=[32, 32, 32], depth=[2, 6, 4],
              heads=[2, 4, 8], mlp_ratio=4)
    if kind == "constant":
        kw.update(schedule_type="constant", constant_r=value)
    else:
        kw.update(schedule_type="exponential", initial_r=value[0], alpha=value[1])
    model = cls(**kw)
    model.load_state_dict(original, strict=True)
    model.eval()
    with torch.no_grad():
        return model(images)


def parse_schedule(spec):
    if spec == "none":
        return ("none", 0)
    kind, _, rest = spec.partition(":")
    if kind == "constant":
        return ("constant", int(rest))
    if kind == "tome":
        r, inflect = rest.split(",")
        return ("tome", (int(r), float(inflect)))
    if kind == "exp":
        r_init, alpha = rest.split(",")
        return ("exp", (float(r_init), float(alpha)))
    raise SystemExit(f"unsupported schedule {spec!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted(TIMM_NAMES))
    p.add_argument("--schedule", default="none")
    p.add_argument("--weights", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tome-repo", help="checkout of facebookresearch/ToMe (DeiT with merging)")
    p.add_argument("--sret-tome-repo", help="checkout of junseokm/sret-tome (PiT with merging)")
    args = p.parse_args()
    torch.manual_seed(0)
    weights = load_file(args.weights)
    images = load_file(args.images)["images"]
    schedule = parse_schedule(args.schedule)
    run = deit if args.model.startswith("deit") else pit
    logits = run(args, weights, images, schedule).float().contiguous()
    meta = {"model": args.model, "schedule": args.schedule, "timm": timm.__version__,
            "torch": torch.__version__}
    save_file({"logits": logits}, args.out, metadata=meta)
    print(args.model, args.schedule, "top-1", logits.argmax(-1).tolist())


if __name__ == "__main__":
    main()
