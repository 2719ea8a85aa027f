#!/usr/bin/env bash
# The main job on the built-in default: write a demo model, verify it, inspect it.
# (Grows into pretrain -> compress -> verify -> export as those commands land.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/out}"
mkdir -p "$OUT"
"$VENV/bin/python" -m aprtool.demo "$OUT/demo.apr"
"$VENV/bin/aprtool" compress "$OUT/demo.apr" -o "$OUT/demo.int6.apr" --min-elements 4096
"$VENV/bin/aprtool" verify "$OUT/demo.apr" "$OUT/demo.int6.apr" --deep --expect-tensors 20 \
  --require architecture=LlamaForCausalLM
"$VENV/bin/aprtool" inspect "$OUT/demo.int6.apr" --tensors
