#!/usr/bin/env bash
# Regenerate tests/fixtures/reference/: logits of the paper's own PyTorch code (junseokm/sret-tome)
# for the engine's synthetic SReT-T weights, two synthetic images (seed 5) and the permutations
# of `--seed 0`, under every schedule of the paper. tests/reference_parity.rs compares the engine
# with them.
#
# Needs: a checkout of junseokm/sret-tome (first argument) and tools/.venv with torch, timm,
# einops and safetensors (see tools/README.md). Nothing of the reference is copied here.
set -euo pipefail
ref_repo=${1:?usage: tools/make_reference_fixtures.sh PATH/TO/sret-tome-checkout}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/sret-tome
py=$here/tools/.venv/bin/python
work=$(mktemp -d)
cargo build --release --manifest-path "$here/Cargo.toml"
"$bin" synthetic --model sret_t_distill --weights-out "$work/w.safetensors" --images-out "$work/x.safetensors" --batch 2 --seed 5
for s in none constant:10 linear:10 exp:0.25,0 exp:0.10,0.6 exp:0.40,0.2; do
  name=$(echo "$s" | tr ':,' '__')
  "$bin" infer --images "$work/x.safetensors" --schedule "$s" --seed 0 --trace --out "$work/ours.safetensors" >/dev/null
  "$py" "$here/tools/reference_logits.py" --reference-repo "$ref_repo" --model sret_t_distill \
    --weights "$work/w.safetensors" --images "$work/x.safetensors" --trace "$work/ours.safetensors" \
    --schedule "$s" --decisions --out "$here/tests/fixtures/reference/sret_t_distill_$name.safetensors"
done
