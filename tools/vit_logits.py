#!/usr/bin/env python3
"""Logits of timm's VisionTransformer family as timm and the official ToMe compute them, for
tests/vit_parity.rs.

* Without merging: timm's own model, ``timm.create_model(name, pretrained=False, **overrides)``.
* With merging, ``global_pool='token'``: the same model patched by ``tome.patch.timm``
  (proportional attention, class and distillation tokens protected) and ``model.r`` set.
* With merging, ``global_pool='avg'`` (MAE fine-tuning): patched by ``tome.patch.mae``
  (``prop_attn=False``, size-weighted global pool, ``fc_norm``). That patch replaces
  ``forward_features`` with MAE's, which already pools and applies ``fc_norm``; as in MAE's own
  ``models_vit`` the head then reads that vector (timm's ``forward_head`` would pool again).

The model is a timm name with the engine's overrides (``ModelConfig::by_name``):
``vit_base_patch16_224@depth=2,global_pool=avg,img_size=384,prop_attn=false``; ``depth``,
``img_size`` and ``global_pool`` go to ``create_model`` as keyword arguments, ``prop_attn`` to the
ToMe patch.

Inputs (safetensors): --weights with timm's state_dict names (``sret-tome synthetic`` writes
them), --images tensor ``images`` f32 [B, 3, S, S]. Output: --out tensors ``logits`` f32 and, with
merging, ``min_gap`` f32 [1]: the smallest margin of any merge decision (between the r-th and
(r+1)-th best A-token score, and between a merged token's best and second-best destination), so
the test can tell a near-tie from a bug.

Schedules: none | constant:R | tome:R,INFLECT (ToMe's ``(r, inflection)``) | list:R1,R2,...

The ToMe repository is imported from a checkout given on the command line; nothing of it is
copied here.
"""

import argparse
import sys

import timm
import torch
from safetensors.torch import load_file, save_file


def parse_model(spec):
    name, _, rest = spec.partition("@")
    kwargs, prop_attn = {}, None
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        if k in ("depth", "img_size"):
            kwargs[k] = int(v)
        elif k == "global_pool":
            kwargs[k] = v
            prop_attn = v == "token"
        elif k == "prop_attn":
            prop_attn = v in ("true", "1")
        else:
            raise SystemExit(f"unknown override {k}")
    if prop_attn is None:
        prop_attn = True
    return name, kwargs, prop_attn


def parse_schedule(spec):
    if spec == "none":
        return None
    kind, _, rest = spec.partition(":")
    if kind == "constant":
        return int(rest)
    if kind == "tome":
        r, inflect = rest.split(",")
        return (int(r), float(inflect))
    if kind == "list":
        return [int(x) for x in rest.split(",")]
    raise SystemExit(f"unsupported schedule {spec!r}")


GAPS = []


def record_gaps(merge_module):
    """Wrap tome.merge.bipartite_soft_matching to note each decision's margin (same math)."""
    original = merge_module.bipartite_soft_matching

    def wrapped(metric, r, class_token=False, distill_token=False):
        t = metric.shape[1]
        protected = int(class_token) + int(distill_token)
        rr = min(r, (t - protected) // 2)
        if rr > 0:
            with torch.no_grad():
                m = metric / metric.norm(dim=-1, keepdim=True)
                a, b = m[..., ::2, :], m[..., 1::2, :]
                scores = a @ b.transpose(-1, -2)
                if class_token:
                    scores[..., 0, :] = -float("inf")
                if distill_token:
                    scores[..., :, 0] = -float("inf")
                top2 = scores.topk(2, dim=-1).values
                node_max = top2[..., 0]
                order = node_max.sort(dim=-1, descending=True).values
                if order.shape[-1] > rr:
                    cut = (order[..., rr - 1] - order[..., rr]).abs().min().item()
                else:
                    cut = float("inf")
                src = node_max.argsort(dim=-1, descending=True)[..., :rr]
                sec = (top2[..., 0] - top2[..., 1]).gather(-1, src).min().item()
                GAPS.append(min(cut, sec))
        return original(metric, r, class_token, distill_token)

    merge_module.bipartite_soft_matching = wrapped
    return wrapped


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--schedule", default="none")
    p.add_argument("--weights", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tome-repo", help="checkout of facebookresearch/ToMe")
    args = p.parse_args()
    torch.manual_seed(0)
    name, kwargs, prop_attn = parse_model(args.model)
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(load_file(args.weights), strict=True)
    model.eval()
    images = load_file(args.images)["images"]
    r = parse_schedule(args.schedule)
    out = {}
    if r is not None:
        sys.path.insert(0, args.tome_repo)
        import tome
        import tome.merge

        # The patch module imported the function by name: wrap it there (``tome.patch.timm`` is
        # the apply_patch function, the module is in sys.modules).
        sys.modules["tome.patch.timm"].bipartite_soft_matching = record_gaps(tome.merge)
        if kwargs.get("global_pool") == "avg":
            tome.patch.mae(model, prop_attn=prop_attn)
            # timm 1.0.31's forward passes attn_mask / is_causal, which MAE's forward_features
            # (as ToMe's patch defines it) does not take; neither is used here.
            features = model.forward_features
            model.forward_features = lambda x, **_: features(x)
            model.forward_head = lambda x, pre_logits=False: model.head(x)
        else:
            tome.patch.timm(model, prop_attn=prop_attn)
        model.r = r
    with torch.no_grad():
        logits = model(images).float().contiguous()
    out["logits"] = logits
    if r is not None:
        out["min_gap"] = torch.tensor([min(GAPS) if GAPS else float("inf")])
    meta = {"model": args.model, "schedule": args.schedule, "timm": timm.__version__,
            "torch": torch.__version__,
            "params": str(sum(p.numel() for p in model.parameters()))}
    save_file(out, args.out, metadata=meta)
    print(args.model, args.schedule, "top-1", logits.argmax(-1).tolist(),
          "min_gap", out.get("min_gap", torch.tensor([0.0])).item())


if __name__ == "__main__":
    main()
