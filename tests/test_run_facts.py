"""Run facts both trainers record (issue #13): clipping counted per log interval, each checkpoint's own
save time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize(("kind", "prefix"), [("pretrain", "step-"), ("distill", "ckpt-step-")])
def test_every_checkpoint_carries_its_own_save_time(tmp_path, corpus, kind, prefix):
    _train(kind, tmp_path / "r", corpus)
    stamps = []
    for name in (f"{prefix}000002.apr", f"{prefix}000004.apr"):
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


def _logged(kind: str, out: Path, corpus: Path, **options) -> tuple[dict, list[str]]:
    messages: list[str] = []
    options = {**COMMON, "corpus": str(corpus), **options}
    if kind == "pretrain":
        summary = pretrain(out, {"size": "tiny", "tokenizer": "bytes", **options}, log=messages.append)
    else:
        summary = distill(TEACHER, out, {"student_layers": 1, **options}, log=messages.append)
    return summary, messages


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_a_corpus_wrapped_many_times_and_a_short_held_out_split_are_said_at_start(tmp_path, corpus, kind):
    _, quiet = _logged(kind, tmp_path / "quiet", corpus)
    assert not [m for m in quiet if m.startswith("WARNING")]
    _, loud = _logged(
        kind, tmp_path / "loud", corpus, steps=200, batch_size=4, seq_len=64, eval_tokens=10**6, log_every=100
    )
    wrap = [m for m in loud if "read the training split" in m]
    assert len(wrap) == 1 and "tokens per epoch" in wrap[0] and wrap[0].startswith("WARNING")
    short = [m for m in loud if "fewer than --eval-tokens 1,000,000" in m]
    assert len(short) == 1 and short[0].startswith("WARNING")


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_strict_refuses_a_held_out_split_smaller_than_eval_tokens(tmp_path, corpus, kind):
    from aprtool.errors import UsageError

    with pytest.raises(UsageError, match="--strict: the held-out split holds"):
        _logged(kind, tmp_path / "r", corpus, eval_tokens=10**6, strict=True)


EARLY = {"steps": 200, "eval_every": 1, "patience": 1, "min_evals": 1, "min_delta": 10.0, "lr": 1e-9,
         "warmup_steps": 0, "log_every": 50, "checkpoint_every": 0}  # fmt: skip


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_early_stopping_waits_for_warmup_and_min_epochs(tmp_path, corpus, kind):
    base, _ = _logged(kind, tmp_path / "a", corpus, **EARLY)
    assert base["stopped_early"] and base["steps"] == 2  # no evaluation beats the first by 10 nats
    warm, _ = _logged(kind, tmp_path / "b", corpus, **(EARLY | {"warmup_steps": 5}))
    assert warm["stopped_early"] and warm["steps"] == 6
    epochs, _ = _logged(kind, tmp_path / "c", corpus, **(EARLY | {"min_epochs": 1}))
    assert epochs["stopped_early"] and epochs["epochs_completed"] >= 1 and epochs["steps"] > 6


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_epoch_files_say_their_epoch_and_hold_the_held_out_loss_measured_at_its_end(tmp_path, corpus, kind):
    from aprtool.data.loader import eval_windows
    from aprtool.data.prepare import load_prepared
    from aprtool.model.io import load_model
    from aprtool.train.common import evaluate

    run = tmp_path / "run"
    _train(kind, run, corpus, seq_len=64, batch_size=16, steps=24, eval_every=1000, checkpoint_every=1000,
           keep_epochs=2)  # fmt: skip
    with open_apr(run / "model.apr") as f:
        training = f.metadata.get("training_summary") or f.metadata["distillation"]
    epochs = max(int(p.name[6:9]) for p in (run / "ckpt").glob("epoch-*.metadata.json"))
    assert epochs >= 3 and training["steps" if kind == "distill" else "step"] == 24
    ckpt = run / "ckpt"
    assert sorted(p.name for p in ckpt.glob("epoch-*.apr")) == [f"epoch-{e:03d}.apr" for e in (epochs - 1, epochs)]
    assert sorted(p.name for p in ckpt.glob("epoch-*.metadata.json")) == [
        f"epoch-{e:03d}.metadata.json" for e in range(1, epochs + 1)
    ]  # every epoch's record stays
    val = eval_windows(load_prepared(run / "data").tokens("val"), 64, COMMON["eval_tokens"])
    for e in (epochs - 1, epochs):
        side = json.loads((ckpt / f"epoch-{e:03d}.metadata.json").read_text())
        with open_apr(ckpt / f"epoch-{e:03d}.apr") as f:
            assert f.metadata["training"]["epoch"] == e
        model, _ = load_model(ckpt / f"epoch-{e:03d}.apr")
        assert side["val_loss"] == pytest.approx(evaluate(model, val, 16, "cpu"), rel=1e-6)
        assert side["epoch"] == e and side["tokens"] > 0 and side["epoch_seconds"] > 0 and side["lr"] > 0
        assert isinstance(side["best"], bool)


def test_distill_keeps_best_and_checkpoints_by_wall_time(tmp_path, corpus):
    out = tmp_path / "d"
    options = {**COMMON, "corpus": str(corpus), "steps": 8, "eval_every": 2, "checkpoint_every": 0,
               "checkpoint_minutes": 1e-9, "keep_last": 100}  # fmt: skip
    summary = distill(TEACHER, out, {"student_layers": 1, **options}, log=lambda _m: None)
    evals = [
        r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r
    ]
    with open_apr(out / "ckpt" / "best.apr") as f:
        best = f.metadata["training"]
    assert best["val_loss"] == min(evals) == summary["best_val_loss"] and best["step"] == summary["best_step"]
    steps = sorted(p.name for p in (out / "ckpt").glob("ckpt-step-*.apr"))
    assert steps == [f"ckpt-step-{s:06d}.apr" for s in range(1, 9)]  # every step: the cadence had passed


def test_distill_takes_run_dir_like_pretrain(cli, tmp_path, corpus):
    run = tmp_path / "student"
    r = cli("distill", "--teacher", TEACHER, "--run-dir", run, "--corpus", corpus, "--student-layers", "1",
            "--steps", "2", "--seq-len", "32", "--batch-size", "2", "--eval-tokens", "256", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["model"] == str(run / "model.apr") and (run / "state.json").is_file()


def test_grad_clip_zero_turns_clipping_off_and_a_negative_one_is_refused(tmp_path, corpus):
    from aprtool.errors import UsageError

    off = [r for r in _train("pretrain", tmp_path / "off", corpus, grad_clip=0) if "loss" in r]
    assert [r["clip_count"] for r in off] == [0, 0] and all(r["grad_norm_max"] > 0 for r in off)
    with open_apr(tmp_path / "off" / "model.apr") as a, open_apr(tmp_path / "off" / "ckpt" / "step-000002.apr") as b:
        assert not np.array_equal(a.numpy("model.norm.weight"), b.numpy("model.norm.weight"))  # it trained
    for kind in ("pretrain", "distill"):
        with pytest.raises(UsageError, match="--grad-clip -1"):
            _train(kind, tmp_path / f"neg-{kind}", corpus, grad_clip=-1.0)


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_a_config_json_aprtool_did_not_write_is_never_replaced(tmp_path, corpus, kind):
    from aprtool.errors import UsageError

    run = tmp_path / "hf-like"
    run.mkdir()
    theirs = '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}\n'
    (run / "config.json").write_text(theirs)
    with pytest.raises(UsageError, match="not written by an aprtool run"):
        _train(kind, run, corpus)
    assert (run / "config.json").read_text() == theirs
    assert not (run / "status.json").exists() and not (run / "state.json").exists()
