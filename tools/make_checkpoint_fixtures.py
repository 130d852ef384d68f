#!/usr/bin/env python3
"""Make the fixtures of tests/checkpoint.rs: small real ``torch.save`` checkpoints and what they hold.

Writes into tests/fixtures/checkpoint/ (or --out):

* ``dtypes.pth``: a flat dict of tensors covering what the reader must convert: f32, f16, bf16
  and f64 storages, a 0-d tensor, views that are not contiguous (a transpose, a column, a
  permutation, a stride-0 expand) or start at a storage offset (slices) and share one storage,
  an empty tensor, torch's lazy negation bit, an ``nn.Parameter`` (``_rebuild_parameter``), a
  tensor carrying a Python attribute (``_rebuild_from_type_v2``), f16 subnormals/infinity and
  -0.0, and entries the reader skips: int64, bool, uint16 (``_rebuild_tensor_v3`` on an
  ``UntypedStorage``), an int and a nested dict. ``dtypes.expected.safetensors`` holds every
  float entry as torch loads it, converted to f32 and made contiguous.
* ``dtypes_big_endian.pth``: the same archive with ``byteorder`` = ``big`` and every storage
  byte-swapped (what ``torch.save`` writes on a big-endian machine; checked with ``torch.load``).
* ``dtypes_deflated.pth``: the same archive with its entries deflate-compressed.
* ``protocol4.pth``: a few of the same tensors saved with ``pickle_protocol=4`` (FRAME,
  SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, ...).
* ``wrapped_model.pth``: the layout of the official SReT/DeiT training checkpoints:
  ``{'model': state_dict, 'optimizer': AdamW state, 'lr_scheduler': ..., 'epoch': 3,
  'args': argparse.Namespace(...), 'scaler': ..., 'max_accuracy': ...}`` for a small network
  (conv, BatchNorm, LayerNorm, linear) after one training step;
  ``wrapped_state_dict.pth``: ``{'state_dict': the same with 'module.' prefixes, 'epoch': 1,
  'best_acc1': tensor}``; ``wrapped_model_state.pth``: ``{'model_state': ..., 'meta': ...}``;
  ``small.expected.safetensors``: that network's float tensors (f32).
* ``legacy.pth``: ``_use_new_zipfile_serialization=False`` (the reader refuses it clearly).
* ``sret_t_distill_views.pth``: a checkpoint of the reference's own ``SReT_T_distill`` module in
  the official layout (``{'model': ..., 'optimizer': ..., 'epoch', 'args', ...}``), with its real
  ``state_dict()`` names, order, shared-block aliases and int64 BatchNorm counters, but every
  float tensor replaced by a strided view (offset, per-dimension strides, overlapping) of one of
  four small pools (f32, f16, bf16, and a positive f32 pool for ``running_var``), so that the
  full 4.8 M-parameter model fits in ~100 KB. ``sret_t_distill_views.pools.safetensors`` holds
  the pools (as f32) and ``sret_t_distill_views.manifest.json`` each tensor's pool, shape, offset
  and strides; this script checks that ``torch.load`` returns exactly those values.

Usage (the reference repository is imported for the SReT fixture, as by reference_logits.py):

    git -C /work/.mirror/junseokm+sret-tome/repo archive HEAD | (mkdir -p /tmp/sret-tome-ref && tar -x -C /tmp/sret-tome-ref)
    tools/.venv/bin/python tools/make_checkpoint_fixtures.py --reference-repo /tmp/sret-tome-ref [--out DIR]
"""

import argparse
import collections
import io
import json
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

POOL = 8192


def as_expected(t):
    """What the reader must return for a float tensor: f32, negation resolved, contiguous."""
    return t.detach().resolve_neg().to(torch.float32).contiguous().clone()


def save_expected(tensors, path):
    save_file({k: as_expected(v) for k, v in tensors.items()}, str(path))


def torch_load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def raw_bytes(t):
    """The tensor's values as bytes (row-major), to compare bit for bit (NaN, -0.0)."""
    t = t.detach().resolve_neg()
    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def assert_same(a, b, what):
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(raw_bytes(a), raw_bytes(b)):
        raise SystemExit(f"error: {what}: torch.load does not give back the saved tensor")


# ------------------------------------------------------------------------------------------------
# dtypes.pth and its rewrites
# ------------------------------------------------------------------------------------------------


def dtypes_dict():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    half_base = torch.randn(3, 5, generator=g).half()
    cube = torch.randn(2, 3, 4, generator=g)
    attr = torch.tensor([7.0, 8.0])
    attr.note = "a Python attribute: pickled through _rebuild_from_type_v2"
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "scalar": torch.tensor(2.5),
        "base": base,
        "transposed": base.t(),
        "sliced": base[1:3],
        "column": base[:, 2],
        "every_other": base[::2, 1::2],
        "expanded": torch.arange(3.0).expand(2, 3),
        "permuted": cube.permute(2, 0, 1),
        "half_transposed": half_base.t(),
        "half_row": half_base[2],
        "empty": torch.zeros(0, 3),
        "neg": torch._neg_view(torch.tensor([1.0, -2.0, 3.0])),
        "param": torch.nn.Parameter(torch.tensor([0.5, -0.5])),
        "attr": attr,
        "f16_special": torch.tensor([6e-8, -6e-8, 65504.0, float("inf"), -0.0]).half(),
        "count": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "u16": torch.zeros(3, dtype=torch.uint16),
        "not_a_tensor": 3,
        "nested": {"x": torch.ones(2)},
    }


def float_entries(d):
    return {
        k: v
        for k, v in d.items()
        if isinstance(v, torch.Tensor) and v.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    }


class _StorageSizes(pickle.Unpickler):
    """Reads data.pkl without building tensors, to learn each storage's element size."""

    def __init__(self, f):
        super().__init__(f)
        self.sizes = {}

    def find_class(self, module, name):
        if module in ("torch._utils", "torch._tensor"):
            return lambda *args: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        _, storage_type, key, _, _ = pid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated
            self.sizes[key] = 1 if storage_type is torch.UntypedStorage else storage_type.dtype.itemsize
        return None


def rewrite(src, dst, big_endian=False, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        prefix = infos[0].filename.split("/")[0] + "/"
        r = _StorageSizes(io.BytesIO(zin.read(prefix + "data.pkl")))
        r.load()
        with zipfile.ZipFile(dst, "w", compression=compression) as zout:
            for info in infos:
                data = zin.read(info.filename)
                rel = info.filename[len(prefix):]
                if big_endian and rel == "byteorder":
                    data = b"big"
                elif big_endian and rel.startswith("data/"):
                    size = r.sizes[rel[len("data/"):]]
                    if size > 1:
                        data = np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()
                zout.writestr(info.filename, data, compress_type=compression)


def make_dtypes(out):
    d = dtypes_dict()
    torch.save(d, out / "dtypes.pth")
    save_expected(float_entries(d), out / "dtypes.expected.safetensors")
    back = torch_load(out / "dtypes.pth")
    for k, v in float_entries(d).items():
        assert_same(back[k], v, f"dtypes.pth {k}")

    rewrite(out / "dtypes.pth", out / "dtypes_big_endian.pth", big_endian=True)
    back = torch_load(out / "dtypes_big_endian.pth")
    for k, v in float_entries(d).items():
        assert_same(back[k], v, f"dtypes_big_endian.pth {k}")

    rewrite(out / "dtypes.pth", out / "dtypes_deflated.pth", compression=zipfile.ZIP_DEFLATED)

    small = {k: d[k] for k in ("f32", "f16", "transposed", "sliced", "scalar", "param", "count")}
    torch.save(small, out / "protocol4.pth", pickle_protocol=4)
    back = torch_load(out / "protocol4.pth")
    for k, v in float_entries(small).items():
        assert_same(back[k], v, f"protocol4.pth {k}")


# ------------------------------------------------------------------------------------------------
# Training-checkpoint layouts of a small network
# ------------------------------------------------------------------------------------------------


def make_wrapped(out):
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.LayerNorm(4),
        torch.nn.Linear(4, 2),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    net.train()
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    sched.step()
    sd = net.state_dict()
    args = argparse.Namespace(
        model="tiny", lr=1e-3, epochs=300, input_size=224, betas=(0.9, 0.999), opt_eps=1e-8,
        distillation_type="soft", teacher_path="", smoothing=0.1, resume="", device="cuda",
        classes=list(range(3)), huge=2**70, flag=True, none=None,
    )
    torch.save(
        {
            "model": sd,
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "epoch": 3,
            "args": args,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
            "max_accuracy": 12.5,
        },
        out / "wrapped_model.pth",
    )
    torch.save(
        {
            "state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items()),
            "epoch": 1,
            "best_acc1": torch.tensor(0.25),
        },
        out / "wrapped_state_dict.pth",
    )
    torch.save({"model_state": sd, "meta": {"version": 2}}, out / "wrapped_model_state.pth")
    save_expected(float_entries(sd), out / "small.expected.safetensors")
    torch.save(sd, out / "legacy.pth", _use_new_zipfile_serialization=False)
    back = torch_load(out / "wrapped_model.pth")["model"]
    for k, v in float_entries(sd).items():
        assert_same(back[k], v, f"wrapped_model.pth {k}")


# ------------------------------------------------------------------------------------------------
# The full SReT-T (distilled) layout as views of small pools
# ------------------------------------------------------------------------------------------------


def import_sret(repo):
    if not (repo / "sret" / "SReT.py").is_file():
        raise SystemExit(f"error: --reference-repo {repo}: sret/SReT.py not found")
    sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sret.SReT as sret_mod
    if not Path(sret_mod.__file__).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"error: sret.SReT was imported from {sret_mod.__file__}, not from {repo}")
    return sret_mod


def pool_of(name):
    if name.endswith("running_var"):
        return "f32pos"
    if ".mlp." in name:
        return "f16"
    if ".attn." in name:
        return "bf16"
    return "f32"


def make_sret_views(out, repo):
    sret_mod = import_sret(repo)
    torch.manual_seed(3)
    model = sret_mod.SReT_T_distill()
    sd = model.state_dict()

    g = torch.Generator().manual_seed(4)
    pools = {
        "f32": torch.randn(POOL, generator=g),
        "f16": torch.randn(POOL, generator=g).half(),
        "bf16": torch.randn(POOL, generator=g).bfloat16(),
        "f32pos": torch.rand(POOL, generator=g) + 0.5,
    }

    views = {}  # data_ptr of the module's tensor -> (view, manifest entry): shared blocks share
    new_sd = collections.OrderedDict()
    manifest = []
    for i, (name, t) in enumerate(sd.items()):
        if not t.is_floating_point():
            new_sd[name] = t
            manifest.append({"name": name, "skipped": str(t.dtype)})
            continue
        key = t.data_ptr()
        if key not in views:
            pool = pool_of(name)
            shape = list(t.shape)
            # Overlapping strided views: strides 1..3 (0 for size-1 dimensions), offsets spread.
            stride = [0 if n == 1 else 1 + (i + d) % 3 for d, n in enumerate(shape)]
            offset = (37 * i) % 1024
            last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
            assert last < POOL, (name, last)
            v = torch.as_strided(pools[pool], shape, stride, offset)
            views[key] = (v, {"pool": pool, "shape": shape, "offset": offset, "stride": stride})
        v, entry = views[key]
        new_sd[name] = v
        manifest.append({"name": name, **entry})
    new_sd._metadata = sd._metadata

    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    opt_sd = opt.state_dict()
    for p in list(opt_sd["param_groups"][0]["params"])[:3]:
        opt_sd["state"][p] = {
            "step": torch.tensor(1000.0),
            "exp_avg": torch.as_strided(pools["f32"], (16, 16), (3, 1), p),
            "exp_avg_sq": torch.as_strided(pools["f32pos"], (16, 16), (3, 1), p),
        }
    args = argparse.Namespace(
        batch_size=128, epochs=300, model="SReT_T_distill", input_size=224, drop=0.0, drop_path=0.1,
        model_ema=False, opt="adamw", opt_eps=1e-8, opt_betas=None, clip_grad=None, momentum=0.9,
        weight_decay=0.05, sched="cosine", lr=5e-4, warmup_lr=1e-6, min_lr=1e-5, smoothing=0.1,
        train_interpolation="bicubic", repeated_aug=True, reprob=0.25, mixup=0.8, cutmix=1.0,
        distillation_type="soft", distillation_alpha=0.5, distillation_tau=1.0,
        data_path="/data/imagenet", data_set="IMNET", output_dir="output", device="cuda", seed=0,
        resume="", start_epoch=0, eval=False, dist_eval=False, num_workers=10, pin_mem=True,
        world_size=8, dist_url="env://", rank=0, gpu=0, distributed=True, dist_backend="nccl",
    )
    ckpt = {
        "model": new_sd,
        "optimizer": opt_sd,
        "lr_scheduler": {"base_lrs": [5e-4], "last_epoch": 299, "T_max": 300},
        "epoch": 299,
        "args": args,
        "scaler": {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5},
    }
    torch.save(ckpt, out / "sret_t_distill_views.pth")
    save_file({k: v.float().contiguous() for k, v in pools.items()}, str(out / "sret_t_distill_views.pools.safetensors"))
    (out / "sret_t_distill_views.manifest.json").write_text(
        "[\n" + ",\n".join(json.dumps(m) for m in manifest) + "\n]\n"
    )

    # torch.load must give exactly the manifest's values.
    back = torch_load(out / "sret_t_distill_views.pth")["model"]
    assert list(back.keys()) == [m["name"] for m in manifest]
    for m in manifest:
        if "skipped" in m:
            continue
        want = torch.as_strided(pools[m["pool"]], m["shape"], m["stride"], m["offset"])
        assert_same(back[m["name"]], want, f"sret_t_distill_views.pth {m['name']}")
    # And the module accepts it.
    model.load_state_dict(back, strict=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/checkpoint")
    ap.add_argument("--reference-repo", type=Path, required=True, help="checkout of junseokm/sret-tome")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    make_dtypes(a.out)
    make_wrapped(a.out)
    make_sret_views(a.out, a.reference_repo)
    total = 0
    for p in sorted(a.out.iterdir()):
        total += p.stat().st_size
        print(f"{p.stat().st_size:>9}  {p.name}")
    print(f"{total:>9}  total (torch {torch.__version__})")


if __name__ == "__main__":
    main()
