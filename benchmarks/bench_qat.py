"""Late QAT vs none at equal wall-clock budget: the float-vs-int6 bits-per-byte gap of each.

    .venv/bin/python benchmarks/bench_qat.py [--budget 90] [--qat-frac 0.25]

Two `pretrain` runs of the `small` preset on the default corpus with the same --time-budget and
warmup-stable-warmdown schedule, one with --qat-frac and one without; each model is compressed to int6
(std:12.85, the clip QAT used) and both files are scored by `eval` on the same held-out tokens.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from aprtool.codecs.compress import CompressOptions, compress_file
from aprtool.data.prepare import prepare_corpus
from aprtool.evaluate.bpb import evaluate_bpb
from aprtool.train.loop import pretrain

WORK = Path(__file__).resolve().parent / "_work" / "qat"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=90.0)
    parser.add_argument("--qat-frac", type=float, default=0.25)
    parser.add_argument("--eval-tokens", type=int, default=30000)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    corpus = prepare_corpus(None, WORK.parent / "stdlib-bpe")
    results = {}
    for label, qat in (("no_qat", 0.0), ("late_qat", args.qat_frac)):
        run = WORK / label
        over = {"corpus": str(corpus.directory), "time_budget": args.budget, "warmdown_frac": 0.3, "qat_frac": qat,
                "eval_every": 10**6}  # fmt: skip
        summary = pretrain(run, over, log=lambda _m: None)
        compress_file(run / "model.apr", run / "model.int6.apr", CompressOptions(compare=False))
        f = evaluate_bpb(run / "model.apr", corpus=corpus.directory, max_tokens=args.eval_tokens)
        q = evaluate_bpb(run / "model.int6.apr", corpus=corpus.directory, max_tokens=args.eval_tokens)
        results[label] = {
            "steps": summary["steps"],
            "phases": summary["phases"],
            "float_bpb": round(f["bits_per_byte"], 5),
            "int6_bpb": round(q["bits_per_byte"], 5),
            "gap_bpb": round(q["bits_per_byte"] - f["bits_per_byte"], 5),
        }
    results["gap_reduction"] = round(results["no_qat"]["gap_bpb"] - results["late_qat"]["gap_bpb"], 5)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
