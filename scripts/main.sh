#!/usr/bin/env bash
# The main job on the built-in defaults: pretrain a small Llama on this Python's standard library,
# compress it to int6 + rANS, verify both (decoding every encoded tensor), inspect the artifact,
# compare float and int6 bits per byte, export the artifact (dequantized) as a HF directory and GGUF.
set -euo pipefail
APRTOOL_EXTRAS="${APRTOOL_EXTRAS:-[plot]}"  # matplotlib: the run draws its curves.png
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/out}"
mkdir -p "$OUT"
rm -rf "$OUT/run"  # the demo always starts a fresh run; `aprtool pretrain --resume latest` continues one
"$VENV/bin/aprtool" pretrain --run-dir "$OUT/run"
"$VENV/bin/aprtool" runs "$OUT/run"      # its checkpoints, verified; the curves are in out/run/curves.png
"$VENV/bin/aprtool" compress "$OUT/run/model.apr" -o "$OUT/model.int6.apr" --force
"$VENV/bin/aprtool" verify "$OUT/run/model.apr" "$OUT/model.int6.apr" --deep --require architecture=LlamaForCausalLM
"$VENV/bin/aprtool" inspect "$OUT/model.int6.apr"
# the cost of quantization, in bits per byte of held-out text: float model vs the int6 artifact
"$VENV/bin/aprtool" eval "$OUT/run/model.apr" --max-tokens 20000
"$VENV/bin/aprtool" eval "$OUT/model.int6.apr" --max-tokens 20000
"$VENV/bin/aprtool" export "$OUT/model.int6.apr" -o "$OUT/hf" --to hf --force        # loads with transformers
"$VENV/bin/aprtool" export "$OUT/model.int6.apr" -o "$OUT/model.gguf" --to gguf --dtype f16 --force
