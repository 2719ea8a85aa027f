"""Logit KD against the same student trained from scratch, on the default corpus.

  .venv/bin/python benchmarks/bench_distill.py [--teacher-steps 800] [--student-steps 200]

1. A teacher is pretrained by `pretrain` on the default corpus (the stdlib's sources; bytes by default):
   hidden 128, 4 layers, 4 heads / 2 KV heads, FFN 344.
2. A student with half the layers and half the FFN (2 layers, FFN 172) is trained by `distill` for the
   same steps on the same batches (same seed, loader order, schedule), five ways:
     scratch              random init, cross-entropy only (alpha 0): the baseline
     kd-scratch           the same random init, logit KD with distill's defaults (T 1, alpha 0.5)
     kd-scratch-pure      the same random init, logit KD only (T 1, alpha 1)
     teacher-init         initialized from the teacher (layers 0 and 2, first 172 FFN channels), cross-entropy only
     kd-teacher-init      the same teacher init, logit KD with the defaults
   so "kd-scratch vs scratch" isolates the loss and "kd-teacher-init vs teacher-init" the loss on top of
   the teacher's weights.
Every model is scored on the same fixed held-out tokens (the first --eval-tokens of the held-out split).
Takes about 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aprtool.data.prepare import prepare_corpus
from aprtool.distill import distill
from aprtool.train.loop import pretrain

WORK = Path(__file__).resolve().parent / "_work"
TEACHER = {"size": "tiny", "hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
           "intermediate_size": 344}  # fmt: skip
STUDENT = {"student_layers": 2, "student_intermediate_size": 172}


def quiet(_message: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--tokenizer", default="bytes", help="bytes, or bpe (vocab 4096: KD costs ~3x more per step)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    started = time.perf_counter()
    corpus = prepare_corpus(None, WORK / f"stdlib-{args.tokenizer}", tokenizer=args.tokenizer)  # the default corpus
    common = {"corpus": str(corpus.directory), "seq_len": args.seq_len, "batch_size": args.batch_size,
              "eval_tokens": args.eval_tokens}  # fmt: skip

    run = WORK / "distill" / "teacher"
    if (run / "model.apr").is_file():  # a teacher from an earlier run with other settings is not reused
        import shutil

        shutil.rmtree(run)
    t0 = time.perf_counter()
    teacher = pretrain(
        run,
        {**common, **TEACHER, "steps": args.teacher_steps, "warmup_steps": args.teacher_steps // 10,
         "eval_every": args.teacher_steps},
        log=quiet,
    )  # fmt: skip
    teacher_s = time.perf_counter() - t0

    budget = {**common, "steps": args.student_steps, "warmup_steps": args.student_steps // 10,
              "eval_every": args.student_steps, "checkpoint_every": 0}  # fmt: skip
    kd = {"alpha": args.alpha, "temperature": args.temperature}
    variants = {
        "scratch": {**STUDENT, "init": "scratch", "alpha": 0.0},
        "kd-scratch": {**STUDENT, "init": "scratch", **kd},
        "kd-scratch-pure": {**STUDENT, "init": "scratch", **kd, "alpha": 1.0},
        "teacher-init": {**STUDENT, "init": "teacher", "alpha": 0.0},
        "kd-teacher-init": {**STUDENT, "init": "teacher", **kd},
    }
    students = {}
    for name, options in variants.items():
        t0 = time.perf_counter()
        s = distill(run / "model.apr", WORK / "distill" / name, {**budget, **options}, force=True, log=quiet)
        students[name] = {"val_loss": round(s["val_loss"], 4), "params": s["params"],
                          "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    result = {
        "teacher": {
            "params": teacher["params"],
            "steps": teacher["steps"],
            "val_loss": round(teacher["val_loss"], 4),
            "seconds": round(teacher_s, 1),
        },  # fmt: skip
        "tokenizer": args.tokenizer,
        "student_steps": args.student_steps,
        "tokens_per_step": args.batch_size * args.seq_len,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "students": students,
        "kd_gain_from_scratch": round(students["scratch"]["val_loss"] - students["kd-scratch"]["val_loss"], 4),
        "pure_kd_gain_from_scratch": round(
            students["scratch"]["val_loss"] - students["kd-scratch-pure"]["val_loss"], 4
        ),
        "kd_gain_from_teacher_init": round(
            students["teacher-init"]["val_loss"] - students["kd-teacher-init"]["val_loss"], 4
        ),
        "kd_teacher_init_vs_scratch": round(
            students["scratch"]["val_loss"] - students["kd-teacher-init"]["val_loss"], 4
        ),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
