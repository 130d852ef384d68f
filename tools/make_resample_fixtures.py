#!/usr/bin/env python3
"""Writes tests/fixtures/resample/pos_embed.json: timm's resample_abs_pos_embed (bicubic,
antialias=False, the prefix tokens kept) on random position embeddings, up- and downsampling,
for tests/vit_parity.rs's check of src/io/safetensors/resample.rs. Run from the repository root
with the tools venv (tools/requirements.txt: torch 2.15, timm 1.0.31)."""
import json
import os

import torch
from timm.layers import resample_abs_pos_embed

torch.manual_seed(0)
cases = []
for lead, dim, g_in, g_out in [(1, 5, 4, 6), (2, 3, 7, 5), (1, 4, 14, 24), (1, 2, 24, 14), (2, 3, 3, 8)]:
    pos = torch.randn(1, lead + g_in * g_in, dim, dtype=torch.float32)
    out = resample_abs_pos_embed(
        pos, new_size=(g_out, g_out), old_size=(g_in, g_in), num_prefix_tokens=lead, interpolation="bicubic", antialias=False
    )
    assert out.shape == (1, lead + g_out * g_out, dim)
    cases.append(
        {
            "lead": lead,
            "dim": dim,
            "g_in": g_in,
            "g_out": g_out,
            "input": pos.flatten().tolist(),
            "output": out.flatten().tolist(),
        }
    )
os.makedirs("tests/fixtures/resample", exist_ok=True)
with open("tests/fixtures/resample/pos_embed.json", "w") as f:
    json.dump({"torch": torch.__version__, "cases": cases}, f)
print(f"wrote {len(cases)} cases")
