"""Late QAT vs none at equal wall-clock budget: the float-vs-int6 bits-per-byte gap of each.

    .venv/bin/python benchmarks/bench_qat.py [--budget 240] [--size tiny] [--qat-frac 0.25] [--seeds 0 1]

For each seed, two `aprtool pretrain` runs on the default corpus with the same --time-budget and
warmup-stable-warmdown schedule, one with --qat-frac and one without. The two runs of a pair train at
the same time, each on half the cores, so a slower or busier machine slows both alike (running them one
after the other let machine noise decide the step counts). Each model is compressed to int6 with the
clip QAT trains for (std:12.85, also given to the no-QAT model; tensors of >= 65,536 elements) and both
files are scored by `eval` on the same held-out tokens. The int6 gap only shows once a model is trained
well enough to be sensitive to rounding, so on a 2-core CPU the benchmark trains the `tiny` preset for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from aprtool.container.constants import DEFAULT_CLIP
from aprtool.data.prepare import prepare_corpus
from aprtool.evaluate.bpb import evaluate_bpb
from aprtool.ops.compress import CompressOptions, compress_file

WORK = Path(__file__).resolve().parent / "_work" / "qat"


def train_pair(corpus: Path, seed: int, args: argparse.Namespace) -> dict[str, Path]:
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    procs = {}
    for label, qat in (("no_qat", 0.0), ("late_qat", args.qat_frac)):
        run = WORK / f"seed{seed}" / label
        cmd = [sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), "--corpus", str(corpus),
               "--size", args.size, "--seed", str(seed), "--time-budget", str(args.budget),
               "--warmdown-frac", str(args.warmdown_frac), "--qat-frac", str(qat),
               "--eval-every", "1000000000", "--json"]  # fmt: skip
        procs[label] = (run, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    runs = {}
    for label, (run, proc) in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{label} (seed {seed}) exited {proc.returncode}")
        runs[label] = (run, json.loads(out))
    return runs


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the pair `train_pair` trains and of how its models are scored (bench_gptq.py too)."""
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--qat-frac", type=float, default=0.25)
    parser.add_argument("--warmdown-frac", type=float, default=0.3)
    parser.add_argument("--eval-tokens", type=int, default=30000)


def main() -> None:
    parser = argparse.ArgumentParser()
    add_pair_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    corpus = prepare_corpus(None, WORK.parent / "stdlib-bpe").directory
    results: dict[str, object] = {"budget_s": args.budget, "size": args.size, "qat_frac": args.qat_frac}
    reductions = []
    for seed in args.seeds:
        row = {}
        for label, (run, summary) in train_pair(corpus, seed, args).items():
            compress_file(
                run / "model.apr", run / "model.int6.apr", CompressOptions(clip=DEFAULT_CLIP, compare=False, force=True)
            )
            f = evaluate_bpb(run / "model.apr", corpus=corpus, max_tokens=args.eval_tokens)["bits_per_byte"]
            q = evaluate_bpb(run / "model.int6.apr", corpus=corpus, max_tokens=args.eval_tokens)["bits_per_byte"]
            row[label] = {"steps": summary["steps"], "phases": summary["phases"], "float_bpb": round(f, 5),
                          "int6_bpb": round(q, 5), "gap_bpb": round(q - f, 5)}  # fmt: skip
        row["gap_reduction"] = round(row["no_qat"]["gap_bpb"] - row["late_qat"]["gap_bpb"], 5)
        row["int6_bpb_gain"] = round(row["no_qat"]["int6_bpb"] - row["late_qat"]["int6_bpb"], 5)
        reductions.append(row["gap_reduction"])
        results[f"seed{seed}"] = row
        print(json.dumps({f"seed{seed}": row}), flush=True)
    results["median_gap_reduction"] = round(statistics.median(reductions), 5)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
