"""Run facts both trainers record (issue #13): clipping counted per log interval, each checkpoint's own
save time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aprtool import open_apr
from aprtool.distill import distill
from aprtool.train.loop import pretrain
from fixtures.corpora import materialize

TEACHER = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-bytes.apr"
COMMON = {"seq_len": 32, "batch_size": 2, "eval_tokens": 256, "eval_every": 100, "log_every": 2, "steps": 4,
          "checkpoint_every": 2}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return materialize("tiny", tmp_path_factory.mktemp("corpus"))


def _train(kind: str, out: Path, corpus: Path, **options) -> list[dict]:
    options = {**COMMON, "corpus": str(corpus), **options}
    if kind == "pretrain":
        pretrain(out, {"size": "tiny", "tokenizer": "bytes", **options}, log=lambda _m: None)
    else:
        distill(TEACHER, out, {"student_layers": 1, **options}, log=lambda _m: None)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_clip_count_counts_the_steps_whose_norm_exceeded_the_limit(tmp_path, corpus, kind):
    always = [r["clip_count"] for r in _train(kind, tmp_path / "a", corpus, grad_clip=1e-9) if "loss" in r]
    never = [r["clip_count"] for r in _train(kind, tmp_path / "b", corpus, grad_clip=1e9) if "loss" in r]
    assert always == [2, 2] and never == [0, 0]


def test_every_checkpoint_carries_its_own_save_time(tmp_path, corpus):
    _train("pretrain", tmp_path / "r", corpus)
    stamps = []
    for name in ("step-000002.apr", "step-000004.apr"):
        with open_apr(tmp_path / "r" / "ckpt" / name) as f:
            stamps.append(f.metadata["training"]["saved_at"])
    assert all(s.endswith("Z") and len(s) == 20 for s in stamps) and stamps[0] <= stamps[1]


def test_the_fingerprint_is_of_the_resolved_options(tmp_path, corpus):
    options = {**COMMON, "corpus": str(corpus), "mode": "blockwise", "student_intermediate_size": 86}
    first = distill(TEACHER, tmp_path / "bw", options, log=lambda _m: None)
    again = distill(TEACHER, tmp_path / "bw", options | {"keys_to_learn": "entire_block"}, log=lambda _m: None)
    assert again["skipped"] and again["fingerprint"] == first["fingerprint"]
    other = distill(TEACHER, tmp_path / "attn", options | {"keys_to_learn": "attention"}, log=lambda _m: None)
    assert other["fingerprint"] != first["fingerprint"]
