"""Calibrated (GPTQ) int6 vs round-to-nearest int6 on the same models, scored on the same held-out tokens.

    .venv/bin/python benchmarks/bench_gptq.py [--budget 240] [--size tiny] [--seed 0] [--eval-tokens 30000]

Trains the pair of bench_qat.py (no QAT and late QAT, the same --time-budget, side by side), then
compresses each model twice at the fixed clip std:12.85 (compress's default before per-tensor clips;
tensors of >= 65,536 elements, rANS): round-to-nearest, and `--calibrate` (GPTQ on the run's own
training data; for a tied embedding as small as `tiny`'s, GPTQ then AdaRound, about 3 minutes per model;
the result keys say `gptq` for all of it). `eval` scores the float model and both artifacts on the same
held-out tokens; the result is the float->int6 gap of each and how much of it GPTQ removes (with a 95 %
bootstrap interval over the held-out windows), with the artifact sizes (GPTQ changes which symbols are written, so the
coded size moves a little). Also times calibration + GPTQ of the `small` preset (a 2-step model: the
cost does not depend on training); `--only-small` times only that, and `--calibrate --budget` at the
size of its uniform int6 file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_qat import WORK, add_pair_arguments, train_pair  # noqa: E402

from aprtool.container.constants import DEFAULT_CLIP  # noqa: E402
from aprtool.data.prepare import prepare_corpus  # noqa: E402
from aprtool.evaluate.bpb import evaluate_bpb  # noqa: E402
from aprtool.ops.compress import CompressOptions, compress_file  # noqa: E402


def gap_removed_ci(float_bits, rtn_bits, gptq_bits, resamples: int = 4000) -> list[float]:
    """95 % bootstrap interval of the share of the rounding gap GPTQ removes, resampling held-out windows
    (each artifact scored on the same windows, so the resample is paired)."""
    f, r, g = (np.asarray(x, np.float64) for x in (float_bits, rtn_bits, gptq_bits))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(f), size=(resamples, len(f)))
    removed = (r[picks].sum(1) - g[picks].sum(1)) / (r[picks].sum(1) - f[picks].sum(1))
    return [round(100 * float(q), 1) for q in np.quantile(removed, [0.025, 0.975])]


def compare(run: Path, corpus: Path, eval_tokens: int) -> dict:
    model = run / "model.apr"
    out: dict = {}
    windows: dict = {}
    for label, options in (
        ("rtn", CompressOptions(force=True, clip=DEFAULT_CLIP)),
        ("gptq", CompressOptions(force=True, clip=DEFAULT_CLIP, calibrate=True)),
    ):
        start = time.perf_counter()
        report = compress_file(model, run / f"model.{label}.apr", options)
        out[f"{label}_seconds"] = round(time.perf_counter() - start, 2)
        out[f"{label}_bytes"] = report["output_bytes"]
        scored = evaluate_bpb(run / f"model.{label}.apr", corpus=corpus, max_tokens=eval_tokens, per_window=True)
        out[f"{label}_bpb"], windows[label] = scored["bits_per_byte"], scored["window_bits"]
    scored = evaluate_bpb(model, corpus=corpus, max_tokens=eval_tokens, per_window=True)
    out["float_bpb"], windows["float"] = scored["bits_per_byte"], scored["window_bits"]
    out["rtn_gap"] = out["rtn_bpb"] - out["float_bpb"]
    out["gptq_gap"] = out["gptq_bpb"] - out["float_bpb"]
    out["gap_removed_pct"] = round(100 * (1 - out["gptq_gap"] / out["rtn_gap"]), 1) if out["rtn_gap"] else None
    if out["rtn_gap"]:
        out["gap_removed_ci95_pct"] = gap_removed_ci(windows["float"], windows["rtn"], windows["gptq"])
    out["bytes_ratio"] = round(out["gptq_bytes"] / out["rtn_bytes"], 4)
    return out


def small_timing(corpus: Path, with_budget: bool = False) -> dict:
    run = WORK / "gptq-small"
    if not (run / "model.apr").is_file():
        cmd = [sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), "--corpus", str(corpus),
               "--size", "small", "--steps", "2", "--eval-every", "1000", "--eval-tokens", "4096"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
    start = time.perf_counter()
    compress_file(
        run / "model.apr", run / "model.gptq.apr", CompressOptions(force=True, clip=DEFAULT_CLIP, calibrate=True)
    )
    calibrated = time.perf_counter() - start
    start = time.perf_counter()
    uniform = compress_file(run / "model.apr", run / "model.rtn.apr", CompressOptions(force=True, clip=DEFAULT_CLIP))
    result = {"small_calibrate_gptq_compress_s": round(calibrated, 1),
              "small_rtn_compress_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    if with_budget:  # --calibrate --budget at the uniform file's size: about 8 minutes on 2 cores
        start = time.perf_counter()
        report = compress_file(run / "model.apr", run / "model.budget.apr",
                               CompressOptions(force=True, calibrate=True, budget=uniform["output_bytes"]))  # fmt: skip
        result |= {"small_calibrate_budget_s": round(time.perf_counter() - start, 1),
                   "small_budget_file_bytes": report["output_bytes"],
                   "small_uniform_bytes": uniform["output_bytes"]}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    add_pair_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="use the models a previous run trained")
    parser.add_argument("--only-small", action="store_true",
                        help="only the small preset's timings, --calibrate --budget included")  # fmt: skip
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(None, WORK.parent / "stdlib-bpe").directory  # the one bench_qat uses
    if args.only_small:
        print(json.dumps(small_timing(corpus, with_budget=True), indent=2))
        return
    runs = {label: WORK / f"seed{args.seed}" / label for label in ("no_qat", "late_qat")}
    if not (args.reuse and all((r / "model.apr").is_file() for r in runs.values())):
        for run in runs.values():
            shutil.rmtree(run, ignore_errors=True)
        train_pair(corpus, args.seed, args)
    result = {"size": args.size, "budget_s": args.budget, "seed": args.seed}
    for label, run in runs.items():
        result[label] = compare(run, corpus, args.eval_tokens)
    result |= small_timing(corpus)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
