"""`compress --budget` against uniform widths on the same model, scored on the same held-out tokens.

    .venv/bin/python benchmarks/bench_budget.py [--model PATH --corpus PREPARED_DIR] [--eval-tokens 30000]

The model is bench_qat.py's no-QAT `tiny` run (train it with bench_qat.py or bench_gptq.py first), the
matrices of >= 4,096 elements quantized (`--min-elements 4096`; `--budget` may also quantize the smaller
k/v projections). Rows: uniform int6 and int5 with the fixed clip std:12.85 (the
default before per-tensor clips) and with the per-tensor clip (today's default); then `--budget` at the
size of uniform int6 std:12.85, of uniform int5 std:12.85 and at 75 % of int6, with calibration, and
once without; and an ample budget (the float file's size) against uniform int8. `eval` scores every
file on the same held-out tokens; results go to benchmarks/_work/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aprtool.evaluate.bpb import evaluate_bpb
from aprtool.ops.compress import CompressOptions, compress_file

WORK = Path(__file__).resolve().parent / "_work"
MODEL = WORK / "qat" / "seed0" / "no_qat" / "model.apr"
CORPUS = WORK / "stdlib-bpe"


def run(model: Path, corpus: Path, label: str, eval_tokens: int, **options) -> dict:
    out = WORK / "budget" / model.parent.name / f"{label}.apr"
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = compress_file(model, out, CompressOptions(force=True, min_elements=4096, **options))
    seconds = time.perf_counter() - start
    bpb = evaluate_bpb(out, corpus=corpus, max_tokens=eval_tokens)["bits_per_byte"]
    row = {"label": label, "bytes": report["output_bytes"], "bpb": bpb, "seconds": round(seconds, 1)}
    if report["budget"]:
        row |= {k: report["budget"].get(k) for k in ("widths", "clips", "methods", "refine_steps", "fill_steps")}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="prepared data in the model's tokenizer")
    parser.add_argument("--eval-tokens", type=int, default=30_000)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: train it first (benchmarks/bench_gptq.py)")
    float_bpb = evaluate_bpb(args.model, corpus=args.corpus, max_tokens=args.eval_tokens)["bits_per_byte"]
    rows = [{"label": "float", "bytes": args.model.stat().st_size, "bpb": float_bpb}]
    print(json.dumps(rows[0]), flush=True)
    for bits in (6, 5):
        rows.append(
            run(args.model, args.corpus, f"int{bits}-std12.85", args.eval_tokens, bits=str(bits), clip="std:12.85")
        )
        rows.append(run(args.model, args.corpus, f"int{bits}-auto", args.eval_tokens, bits=str(bits)))
    rows.append(run(args.model, args.corpus, "int8-auto", args.eval_tokens, bits="8"))
    int6, int5, ample = rows[1]["bytes"], rows[3]["bytes"], rows[0]["bytes"]
    budgets = [("budget-int6", int6, True), ("budget-int5", int5, True), ("budget-75pct", int6 * 3 // 4, True),
               ("budget-int6-uncalibrated", int6, False), ("budget-ample", ample, True)]  # fmt: skip
    for label, budget, calibrate in budgets:
        rows.append(run(args.model, args.corpus, label, args.eval_tokens, budget=budget, calibrate=calibrate))
    (WORK / "budget" / args.model.parent.name / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
