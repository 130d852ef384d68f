#!/usr/bin/env bash
# Regenerate tests/fixtures/vit/: logits of timm's VisionTransformer family (reduced depth, the
# real widths, patch and image sizes) for the engine's synthetic weights and two synthetic images
# (seed 5), without merging (timm itself) and with merging (the official ToMe patch:
# tome.patch.timm, or tome.patch.mae for global_pool='avg'). tests/vit_parity.rs compares the
# engine with them. Each fixture is tagged TAG_SCHEDULE; TAG stands for the model spec below.
#
# Needs a checkout of facebookresearch/ToMe (argument) and tools/.venv with torch, timm and
# safetensors (see tools/README.md). Nothing of ToMe is copied here.
set -euo pipefail
tome_repo=${1:?usage: tools/make_vit_fixtures.sh PATH/TO/ToMe}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/sret-tome
py=$here/tools/.venv/bin/python
out=$here/tests/fixtures/vit
work=$(mktemp -d)
mkdir -p "$out"
[ -n "${NO_BUILD:-}" ] || cargo build --release --manifest-path "$here/Cargo.toml"
run() {
  local tag=$1 model=$2; shift 2
  "$bin" synthetic --model "$model" --weights-out "$work/$tag.safetensors" \
    --images-out "$work/$tag.x.safetensors" --batch 2 --seed 5
  for s in "$@"; do
    "$py" "$here/tools/vit_logits.py" --model "$model" --schedule "$s" \
      --weights "$work/$tag.safetensors" --images "$work/$tag.x.safetensors" \
      --tome-repo "$tome_repo" --out "$out/${tag}_$(echo "$s" | tr ':,.' '__p').safetensors"
  done
}
# Keep in step with CASES in tests/vit_parity.rs.
run deit_s_d3 "deit_small_patch16_224@depth=3" none constant:13 tome:16,-1
run deit_s_dist_d2 "deit_small_distilled_patch16_224@depth=2" none constant:13
run vit_b_d2 "vit_base_patch16_224@depth=2" none constant:16 list:40,8
run vit_s384_d2 "vit_small_patch16_384@depth=2" none constant:48 tome:64,-0.5
run vit_b32_d2 "vit_base_patch32_224@depth=2" none constant:8
run mae_b_d2 "vit_base_patch16_224@depth=2,global_pool=avg" none constant:16
# Merging in the last block cannot move a class-token model's logits (the MLP is per token): 2 blocks.
run vit_l384_d2 "vit_large_patch16_384@depth=2" none constant:100
rm -rf "$work"
