#!/usr/bin/env python3
"""Throughput of the paper's own PyTorch code (junseokm/sret-tome, imported from a checkout
given on the command line; nothing of it is copied here) on the CPU, to set beside
`sret-tome bench` on the same machine in the same session.

  tools/.venv/bin/python tools/pytorch_bench.py --repo /path/to/sret-tome \
      --threads 2 --batch 1 --iters 20 --schedule none --schedule exp:0.25,0

Prints one line per schedule: median images/s over the timed forwards after two warm-up ones
(eval mode, torch.no_grad, fp32, random normal inputs). The reference draws torch.randperm at
every recursive pass, as it does in the paper's measurements.
"""

import argparse
import statistics
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--schedule", action="append", default=[])
    a = ap.parse_args()
    sys.path.insert(0, a.repo)
    import integration.SReT_ToMe as ref  # noqa: E402

    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, 3, 224, 224)
    for s in a.schedule or ["none"]:
        if s == "none":
            kw = dict(schedule_type="constant", constant_r=0)
        elif s.startswith("exp:"):
            r, al = s[4:].split(",")
            kw = dict(schedule_type="exponential", initial_r=float(r), alpha=float(al))
        elif s.startswith("constant:"):
            kw = dict(schedule_type="constant", constant_r=int(s[9:]))
        else:
            raise SystemExit(f"unknown schedule {s}")
        model = ref.SReT_T_distill(**kw).eval()
        times = []
        with torch.no_grad():
            for i in range(a.iters + 2):
                t = time.perf_counter()
                model(x)
                if i >= 2:
                    times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"pytorch {s:<12} batch {a.batch:>3} threads {a.threads}: {a.batch / med:8.2f} img/s")


if __name__ == "__main__":
    main()
