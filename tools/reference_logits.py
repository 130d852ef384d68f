#!/usr/bin/env python3
"""Run the paper's own PyTorch code (junseokm/sret-tome) on given weights, images and token
permutations, and write its logits, so the Rust engine can be checked against the reference.

The reference is imported from a checkout given on the command line (nothing of it is copied
into this project):

    <reference-repo>/integration/SReT_ToMe.py   SReT with Token Merging (used for every schedule)
    <reference-repo>/sret/SReT.py               the original SReT (also run for --schedule none,
                                                 and required to agree with the ToMe model)

The reference draws ``torch.randperm(N)`` for every recursive pass of a sliced (grouped)
attention, so no two of its runs agree. While the models run, ``torch.randperm`` is replaced by a
function that returns the permutations of --trace in execution order (stage ascending, then exec
ascending, numerically), checking that each requested length N matches, and that every traced
permutation is used. Like the reference, one permutation serves the whole batch.

Inputs (safetensors):
  --weights  the reference's state_dict names (``transformers.0.blocks.0.attn.qkv.weight``, ...).
             A shared (recursive) block appears under several names in the reference's
             state_dict; the file may hold all of them (they must then be equal) or only some
             (e.g. the first): the missing aliases are filled from the present ones. A missing
             ``*.num_batches_tracked`` (unused in eval) is filled with 0. Everything else must
             match exactly: load_state_dict(strict=True).
  --images   tensor ``images`` f32 [B, 3, 224, 224] (already normalised).
  --trace    tensors ``perm.<stage>.<exec>`` (any integer dtype, 1-D), torch semantics
             ``x[:, perm, :]``. Other tensors in the file are ignored.
Output:
  --out      tensor ``logits`` f32 [B, num_classes]; metadata records the model, schedule and
             versions.

Schedules (--schedule), mapped onto the reference's SReT arguments:
  none            no merging: schedule_type="constant", constant_r=0; sret/SReT.py is run too
  constant:R      schedule_type="constant", constant_r=R
  linear:R        schedule_type="linear", linear_r=R
  exp:RINIT,ALPHA schedule_type="exponential", initial_r=RINIT (a fraction of the stage's
                  tokens), alpha=ALPHA

Models (--model): sret_t, sret_lt, sret_s, sret_t_distill, sret_lt_distill, sret_s_distill
(the reference's SReT_* constructors, matched case-insensitively).

Example:
  tools/.venv/bin/python tools/reference_logits.py --reference-repo /tmp/sret-tome-ref \\
      --weights w.safetensors --images x.safetensors --trace t.safetensors \\
      --schedule constant:8 --model sret_t_distill --out logits.safetensors
"""

import argparse
import contextlib
import importlib
import re
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class HarnessError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Arguments


def parse_number(text, what):
    try:
        v = float(text)
    except ValueError:
        raise HarnessError(f"{what}: '{text}' is not a number") from None
    return int(v) if v.is_integer() and re.fullmatch(r"[+-]?\d+", text.strip()) else v


def parse_schedule(spec):
    """-> (kwargs for the reference's SReT constructor, canonical spec string)."""
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "none" and not rest:
        return {"schedule_type": "constant", "constant_r": 0}, "none"
    if kind == "constant" and rest:
        r = parse_number(rest, "constant:R")
        return {"schedule_type": "constant", "constant_r": r}, f"constant:{r}"
    if kind == "linear" and rest:
        r = parse_number(rest, "linear:R")
        return {"schedule_type": "linear", "linear_r": r}, f"linear:{r}"
    if kind in ("exp", "exponential") and rest.count(",") == 1:
        a, b = rest.split(",")
        rinit, alpha = parse_number(a, "exp:RINIT"), parse_number(b, "exp:ALPHA")
        return (
            {"schedule_type": "exponential", "initial_r": float(rinit), "alpha": float(alpha)},
            f"exp:{rinit},{alpha}",
        )
    raise HarnessError(f"bad --schedule '{spec}' (expected none | constant:R | linear:R | exp:RINIT,ALPHA)")


# --------------------------------------------------------------------------------------------
# The reference code


def import_reference(repo):
    repo = Path(repo).resolve()
    for rel in ("integration/SReT_ToMe.py", "sret/SReT.py", "tome/merge.py"):
        if not (repo / rel).is_file():
            raise HarnessError(f"--reference-repo {repo}: {rel} not found (expected a checkout of junseokm/sret-tome)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        # Both files register SReT_* in timm's registry under the same names, and import
        # timm.models.layers (deprecated).
        warnings.simplefilter("ignore")
        tome_mod = importlib.import_module("integration.SReT_ToMe")
        sret_mod = importlib.import_module("sret.SReT")
    for mod in (tome_mod, sret_mod):
        if not str(Path(mod.__file__).resolve()).startswith(str(repo)):
            raise HarnessError(f"{mod.__name__} was imported from {mod.__file__}, not from {repo}")
    return tome_mod, sret_mod


def constructor(module, model_name):
    table = {name.lower(): getattr(module, name) for name in dir(module) if name.startswith("SReT_")}
    fn = table.get(model_name.lower())
    if fn is None:
        raise HarnessError(f"unknown --model '{model_name}' (known: {', '.join(sorted(table))})")
    return fn


def build_model(module, model_name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = constructor(module, model_name)(pretrained=False, **kwargs)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Weights


def complete_state_dict(model, sd, path):
    """Fill the aliases of shared parameters/buffers the file leaves out; check stored copies agree.

    Returns (state dict for load_state_dict, number of aliases filled)."""
    groups = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    out = dict(sd)
    filled = 0
    for names in groups.values():
        present = [n for n in names if n in sd]
        if present:
            first = sd[present[0]]
            for other in present[1:]:
                if sd[other].shape != first.shape or not torch.equal(sd[other], first):
                    raise HarnessError(
                        f"{path}: the shared tensor is stored as '{present[0]}' and '{other}', and the copies differ"
                    )
            for n in names:
                if n not in sd:
                    out[n] = first
                    filled += 1
        elif all(n.endswith(".num_batches_tracked") for n in names):
            for n in names:
                out[n] = torch.zeros((), dtype=torch.long)
    return out, filled


def load_weights(model, sd, path):
    full, filled = complete_state_dict(model, sd, path)
    expected = model.state_dict()
    for name, t in full.items():
        if name in expected and tuple(t.shape) != tuple(expected[name].shape):
            raise HarnessError(
                f"{path}: tensor '{name}' has shape {list(t.shape)}, expected {list(expected[name].shape)}"
            )
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as e:
        raise HarnessError(f"{path}: load_state_dict(strict=True) failed: {e}") from None
    return filled


# --------------------------------------------------------------------------------------------
# Permutations


def load_trace(path):
    """-> list of (key, LongTensor) in execution order."""
    tensors = load_file(str(path))
    perms = []
    for key, t in tensors.items():
        m = re.fullmatch(r"perm\.(\d+)\.(\d+)", key)
        if not m:
            continue
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.dim() != 1:
            raise HarnessError(f"{path}: '{key}' must be a 1-D integer tensor, got {t.dtype} {list(t.shape)}")
        t = t.to(torch.long)
        n = t.numel()
        if not torch.equal(torch.sort(t).values, torch.arange(n)):
            raise HarnessError(f"{path}: '{key}' is not a permutation of 0..{n - 1}")
        perms.append(((int(m.group(1)), int(m.group(2))), key, t))
    perms.sort(key=lambda p: p[0])
    return [(key, t) for _, key, t in perms]


class PermutationReplay:
    """Stands in for torch.randperm: returns the traced permutations in order."""

    def __init__(self, perms, trace_path):
        self.perms = perms
        self.trace_path = trace_path
        self.used = 0

    def __call__(self, n, *args, **kwargs):
        if args or set(kwargs) - {"device", "dtype", "generator", "layout", "pin_memory", "requires_grad"}:
            raise HarnessError(f"torch.randperm called with unexpected arguments {args} {kwargs}")
        n = int(n)
        if self.used >= len(self.perms):
            raise HarnessError(
                f"{self.trace_path}: the reference drew permutation #{self.used + 1} (length {n}) "
                f"but the trace holds only {len(self.perms)}"
            )
        key, p = self.perms[self.used]
        if p.numel() != n:
            raise HarnessError(
                f"{self.trace_path}: '{key}' (permutation #{self.used + 1} in execution order) has length "
                f"{p.numel()}, the reference asks for {n}"
            )
        self.used += 1
        p = p.clone()
        if kwargs.get("dtype") is not None:
            p = p.to(kwargs["dtype"])
        if kwargs.get("device") is not None:
            p = p.to(kwargs["device"])
        return p

    def check_all_used(self):
        if self.used != len(self.perms):
            raise HarnessError(
                f"{self.trace_path}: the reference drew {self.used} permutations, the trace holds {len(self.perms)}"
            )


@contextlib.contextmanager
def replaced_randperm(replay):
    original = torch.randperm
    torch.randperm = replay
    try:
        yield replay
    finally:
        torch.randperm = original


class DecisionRecorder:
    """Wraps the reference's bipartite matching to record, for every merge in call order, the
    decisions it takes: the A tokens ordered by their best similarity (descending, torch's
    argsort) and each A token's best B token. The wrapper recomputes them with the same torch
    operations on the same inputs (bitwise the same on CPU) and leaves the merge untouched."""

    def __init__(self, merge_module):
        self.module = merge_module
        self.original = merge_module.bipartite_soft_matching
        self.calls = []

    def __call__(self, metric, r, *args, **kwargs):
        with torch.no_grad():
            m = metric / metric.norm(dim=-1, keepdim=True)
            scores = m[..., ::2, :] @ m[..., 1::2, :].transpose(-1, -2)
            row_max, dst = scores.max(dim=-1)
            order = row_max.argsort(dim=-1, descending=True)
            self.calls.append((int(r), order.clone(), dst.clone(), row_max.clone()))
        return self.original(metric, r, *args, **kwargs)

    def __enter__(self):
        self.module.bipartite_soft_matching = self
        return self

    def __exit__(self, *exc):
        self.module.bipartite_soft_matching = self.original

    def tensors(self):
        out = {}
        for k, (r, order, dst, row_max) in enumerate(self.calls):
            out[f"match.{k}.order"] = order.to(torch.int64).contiguous()
            out[f"match.{k}.dst"] = dst.to(torch.int64).contiguous()
            out[f"match.{k}.row_max"] = row_max.to(torch.float32).contiguous()
            out[f"match.{k}.r"] = torch.tensor([r], dtype=torch.int64)
        return out


def run(model, images, perms, trace_path, recorder=None):
    replay = PermutationReplay(perms, trace_path)
    with torch.no_grad(), replaced_randperm(replay), (recorder or contextlib.nullcontext()):
        logits = model(images)
    replay.check_all_used()
    return logits


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", required=True, type=Path, help="checkout of junseokm/sret-tome")
    ap.add_argument("--weights", required=True, type=Path, help="state_dict (reference names), .safetensors")
    ap.add_argument("--images", required=True, type=Path, help="tensor 'images' f32 [B,3,224,224], .safetensors")
    ap.add_argument("--trace", required=True, type=Path, help="tensors 'perm.<stage>.<exec>', .safetensors")
    ap.add_argument("--schedule", required=True, help="none | constant:R | linear:R | exp:RINIT,ALPHA")
    ap.add_argument("--model", default="sret_t_distill", help="reference constructor, e.g. sret_t_distill")
    ap.add_argument("--out", required=True, type=Path, help="output .safetensors with tensor 'logits'")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--decisions",
        action="store_true",
        help="also write every merge's decisions: match.<k>.order / .dst / .row_max / .r (k = merge in call order)",
    )
    ap.add_argument(
        "--none-tolerance",
        type=float,
        default=1e-4,
        help="for --schedule none: max |ToMe - SReT| logit difference allowed (default 1e-4)",
    )
    args = ap.parse_args(argv)

    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        kwargs, canonical = parse_schedule(args.schedule)
        tome_mod, sret_mod = import_reference(args.reference_repo)

        images = load_file(str(args.images)).get("images")
        if images is None:
            raise HarnessError(f"{args.images}: tensor 'images' is missing")
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 224, 224):
            raise HarnessError(f"{args.images}: 'images' has shape {list(images.shape)}, expected [B, 3, 224, 224]")
        images = images.to(torch.float32).contiguous()
        perms = load_trace(args.trace)
        sd = load_file(str(args.weights))

        model = build_model(tome_mod, args.model, **kwargs)
        filled = load_weights(model, sd, args.weights)
        recorder = DecisionRecorder(sys.modules["tome.merge"]) if args.decisions else None
        logits = run(model, images, perms, args.trace, recorder)
        print(
            f"{args.model} {canonical}: {images.shape[0]} image(s), {len(perms)} permutation(s) replayed, "
            f"{filled} shared alias(es) filled"
        )

        if canonical == "none":
            plain = build_model(sret_mod, args.model)
            load_weights(plain, sd, args.weights)
            plain_logits = run(plain, images, perms, args.trace)
            diff = (plain_logits - logits).abs().max().item()
            print(f"none: max |SReT_ToMe - SReT| = {diff:.3e}")
            if not diff <= args.none_tolerance:
                raise HarnessError(
                    f"integration/SReT_ToMe.py and sret/SReT.py disagree without merging: max |diff| = {diff:.3e} "
                    f"> {args.none_tolerance:.1e}"
                )

        args.out.parent.mkdir(parents=True, exist_ok=True)
        outputs = {"logits": logits.to(torch.float32).contiguous()}
        if recorder is not None:
            outputs.update(recorder.tensors())
        save_file(
            outputs,
            str(args.out),
            metadata={
                "model": args.model,
                "schedule": canonical,
                "images": str(images.shape[0]),
                "permutations": str(len(perms)),
                "torch": torch.__version__,
            },
        )
        top = logits.argmax(dim=-1).tolist()
        print(f"wrote {args.out}: logits {list(logits.shape)}, argmax {top[:8]}{' ...' if len(top) > 8 else ''}")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
