#!/usr/bin/env python3
"""End-to-end test of tools/reference_logits.py on the reference's own randomly initialised model.

For each schedule it builds the reference model (integration/SReT_ToMe.py) with random weights,
runs it once while *recording* the permutations torch.randperm hands out (named
perm.<stage>.<exec>, exec = transformer-block execution index within the stage), saves weights,
images and that trace to safetensors, runs the harness on them and checks that the harness
reproduces the recorded logits exactly. It also checks first-name-only weight files, disagreeing
shared copies, and traces with wrong lengths or counts, and that other permutations change the
logits.

Usage: tools/.venv/bin/python tools/test_reference_logits.py --reference-repo /tmp/sret-tome-ref
"""

import argparse
import contextlib
import io
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_logits as H  # noqa: E402

MODEL = "sret_t_distill"
SCHEDULES = ["none", "constant:8", "linear:8", "exp:0.25,0.9", "constant:40"]


def random_model(tome_mod, seed, schedule="none"):
    kwargs, _ = H.parse_schedule(schedule)
    torch.manual_seed(seed)
    model = H.build_model(tome_mod, MODEL, **kwargs)
    with torch.no_grad():  # make the BatchNorm statistics and coefficients non-trivial
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("coefficient3.bias") or name.endswith("coefficient4.bias"):
                t.uniform_(0.8, 1.2)
    return model


def state_dict_files(model, tmp):
    """-> (file with every name, file with the first name of each shared tensor only)."""
    sd = model.state_dict(keep_vars=True)
    both = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    seen, first = set(), {}
    for k, v in sd.items():
        if id(v) not in seen:
            seen.add(id(v))
            first[k] = v.detach().clone().contiguous()
    assert len(first) < len(both), "the reference model should have shared blocks"
    save_file(both, str(tmp / "weights_both.safetensors"))
    save_file(first, str(tmp / "weights_first.safetensors"))
    return tmp / "weights_both.safetensors", tmp / "weights_first.safetensors", both, first


def record(model, images, seed):
    """Run the model, recording torch.randperm's draws as perm.<stage>.<exec>. -> (logits, perms)."""
    gen = torch.Generator().manual_seed(seed)
    state = {"stage": -1, "exec": -1}
    hooks = []
    for s, tr in enumerate(model.transformers):
        hooks.append(tr.register_forward_pre_hook(lambda m, a, s=s: state.update(stage=s, exec=-1)))
    for blk in {m for m in model.modules() if type(m).__name__ == "Transformer_Block"}:
        hooks.append(blk.register_forward_pre_hook(lambda m, a: state.update(exec=state["exec"] + 1)))
    perms = {}
    original = torch.randperm

    def recording(n, *args, **kwargs):
        p = original(n, generator=gen)
        key = f"perm.{state['stage']}.{state['exec']}"
        assert key not in perms, key
        perms[key] = p.clone()
        return p

    torch.randperm = recording
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        torch.randperm = original
        for h in hooks:
            h.remove()
    return logits, perms


def harness(ref, weights, images, trace, schedule, out, expect_ok=True):
    argv = ["--reference-repo", str(ref), "--weights", str(weights), "--images", str(images), "--trace", str(trace),
            "--schedule", schedule, "--model", MODEL, "--out", str(out)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = H.main(argv)
    if expect_ok:
        assert rc == 0, f"harness failed: {err.getvalue()}"
        return load_file(str(out))["logits"]
    assert rc != 0, "harness should have failed"
    return err.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", required=True, type=Path)
    args = ap.parse_args()
    ref = args.reference_repo
    torch.set_num_threads(2)
    tome_mod, _ = H.import_reference(ref)
    tmp = Path(tempfile.mkdtemp(prefix="reference-logits-test-"))

    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    save_file({"images": images}, str(tmp / "images.safetensors"))
    base = random_model(tome_mod, 0)
    w_both, w_first, both, first = state_dict_files(base, tmp)
    print(f"random {MODEL}: {len(both)} state_dict names, {len(first)} distinct tensors")

    results = {"passed": 0, "failed": 0}

    def check(name, fn):
        try:
            fn()
            results["passed"] += 1
            print(f"ok   {name}")
        except Exception:
            results["failed"] += 1
            print(f"FAIL {name}")
            traceback.print_exc()

    traces = {}
    for schedule in SCHEDULES:
        def replay(schedule=schedule):
            model = random_model(tome_mod, 0, schedule)
            model.load_state_dict(both)
            expected, perms = record(model, images, seed=10 + SCHEDULES.index(schedule))
            trace = tmp / f"trace_{schedule.replace(':', '_').replace(',', '_')}.safetensors"
            save_file(perms, str(trace))
            traces[schedule] = (trace, perms, expected)
            for weights in (w_both, w_first):
                got = harness(ref, weights, tmp / "images.safetensors", trace, schedule, tmp / "out.safetensors")
                assert got.shape == (2, 1000), got.shape
                diff = (got - expected).abs().max().item()
                assert diff == 0.0, f"{schedule} {weights.name}: max |diff| {diff}"
            lens = {k: v.numel() for k, v in perms.items()}
            print(f"     {schedule}: trace {lens}, logits[0,:3] {expected[0, :3].tolist()}")
        check(f"replay reproduces the recorded logits ({schedule}, both-names and first-name-only weights)", replay)

    def perm_names():
        _, perms, _ = traces["none"]
        # SReT-T: groups2 = [2, 1, 1], so only stage 0's second passes (execs 1 and 3) permute.
        assert sorted(perms) == ["perm.0.1", "perm.0.3"], sorted(perms)
        assert all(p.numel() == 784 for p in perms.values())
        _, perms, _ = traces["constant:8"]
        assert [perms[k].numel() for k in ("perm.0.1", "perm.0.3")] == [776, 760], {k: v.numel() for k, v in perms.items()}
    check("trace names and lengths", perm_names)

    def other_perms_change_logits():
        trace, perms, expected = traces["constant:8"]
        g = torch.Generator().manual_seed(12345)
        other = {k: torch.randperm(v.numel(), generator=g) for k, v in perms.items()}
        save_file(other, str(tmp / "other.safetensors"))
        got = harness(ref, w_first, tmp / "images.safetensors", tmp / "other.safetensors", "constant:8", tmp / "o.safetensors")
        assert (got - expected).abs().max().item() > 1e-4, "permutations had no effect"
    check("different permutations give different logits", other_perms_change_logits)

    def trace_errors():
        trace, perms, _ = traces["constant:8"]
        bad = dict(perms)
        asked = perms["perm.0.3"].numel()
        bad["perm.0.3"] = torch.arange(784)  # the reference asks for fewer tokens here
        save_file(bad, str(tmp / "bad_len.safetensors"))
        msg = harness(ref, w_both, tmp / "images.safetensors", tmp / "bad_len.safetensors", "constant:8", tmp / "x", False)
        assert f"has length 784, the reference asks for {asked}" in msg, msg
        save_file({"perm.0.1": perms["perm.0.1"]}, str(tmp / "short.safetensors"))
        msg = harness(ref, w_both, tmp / "images.safetensors", tmp / "short.safetensors", "constant:8", tmp / "x", False)
        assert "holds only 1" in msg, msg
        extra = dict(perms)
        extra["perm.2.5"] = torch.arange(49)
        save_file(extra, str(tmp / "extra.safetensors"))
        msg = harness(ref, w_both, tmp / "images.safetensors", tmp / "extra.safetensors", "constant:8", tmp / "x", False)
        assert "drew 2 permutations, the trace holds 3" in msg, msg
        notperm = dict(perms)
        notperm["perm.0.1"] = torch.zeros(perms["perm.0.1"].numel(), dtype=torch.int32)
        save_file(notperm, str(tmp / "notperm.safetensors"))
        msg = harness(ref, w_both, tmp / "images.safetensors", tmp / "notperm.safetensors", "constant:8", tmp / "x", False)
        assert "is not a permutation" in msg, msg
    check("trace errors: wrong length, too few, too many, not a permutation", trace_errors)

    def weight_errors():
        trace = traces["none"][0]
        bad = dict(both)
        bad["transformers.0.blocks.2.attn.qkv.weight"] = bad["transformers.0.blocks.2.attn.qkv.weight"] + 1
        save_file(bad, str(tmp / "bad_shared.safetensors"))
        msg = harness(ref, tmp / "bad_shared.safetensors", tmp / "images.safetensors", trace, "none", tmp / "x", False)
        assert "copies differ" in msg, msg
        missing = {k: v for k, v in first.items() if k != "head.weight"}
        save_file(missing, str(tmp / "missing.safetensors"))
        msg = harness(ref, tmp / "missing.safetensors", tmp / "images.safetensors", trace, "none", tmp / "x", False)
        assert "head.weight" in msg and "Missing" in msg, msg
        extra = dict(first)
        extra["bogus.weight"] = torch.zeros(3)
        save_file(extra, str(tmp / "extra_w.safetensors"))
        msg = harness(ref, tmp / "extra_w.safetensors", tmp / "images.safetensors", trace, "none", tmp / "x", False)
        assert "bogus.weight" in msg and "Unexpected" in msg, msg
        msg = harness(ref, w_both, tmp / "images.safetensors", trace, "quadratic:3", tmp / "x", False)
        assert "bad --schedule" in msg, msg
    check("weight and argument errors", weight_errors)

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
