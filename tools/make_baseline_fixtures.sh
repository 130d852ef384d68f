#!/usr/bin/env bash
# Regenerate tests/fixtures/baselines/: logits of timm's DeiT-Tiny(-Distill) and PiT-Ti(-Distill)
# for the engine's synthetic weights and two synthetic images (seed 5), without merging (timm
# itself) and with merging (the official ToMe patch for DeiT, the paper's PiT_ToMe.py for PiT).
# tests/baseline_parity.rs compares the engine with them.
#
# Needs checkouts of facebookresearch/ToMe and junseokm/sret-tome (arguments) and tools/.venv with
# torch, timm, einops and safetensors (see tools/README.md). Nothing of either is copied here.
set -euo pipefail
tome_repo=${1:?usage: tools/make_baseline_fixtures.sh PATH/TO/ToMe PATH/TO/sret-tome}
sret_tome_repo=${2:?usage: tools/make_baseline_fixtures.sh PATH/TO/ToMe PATH/TO/sret-tome}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/sret-tome
py=$here/tools/.venv/bin/python
out=$here/tests/fixtures/baselines
work=$(mktemp -d)
mkdir -p "$out"
cargo build --release --manifest-path "$here/Cargo.toml"
run() {
  local model=$1; shift
  "$bin" synthetic --model "$model" --weights-out "$work/$model.safetensors" \
    --images-out "$work/x.safetensors" --batch 2 --seed 5
  for s in "$@"; do
    "$py" "$here/tools/timm_logits.py" --model "$model" --schedule "$s" \
      --weights "$work/$model.safetensors" --images "$work/x.safetensors" \
      --tome-repo "$tome_repo" --sret-tome-repo "$sret_tome_repo" \
      --out "$out/${model}_$(echo "$s" | tr ':,' '__').safetensors"
  done
}
run deit_tiny none constant:8 tome:16,-1
run deit_tiny_distill none constant:8 tome:13,-0.5
run pit_ti none exp:0.25,0
run pit_ti_distill none exp:0.25,0 exp:0.4,0.5 constant:16
rm -rf "$work"
