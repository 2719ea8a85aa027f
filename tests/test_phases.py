"""Wall-clock-aware phases: warmdown, SWA/EMA, late QAT, each triggering inside a short budget."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aprtool import open_apr
from aprtool.codecs.quant import Clip, quantize
from aprtool.data.prepare import prepare_corpus
from aprtool.model.llama import PRESETS, LlamaForCausalLM
from aprtool.ops.compress import AUTO_CLIPS
from aprtool.train.loop import pretrain
from aprtool.train.phases import Phases

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY = {"size": "tiny", "seq_len": 32, "batch_size": 4, "eval_tokens": 512, "log_every": 10, "eval_every": 25,
        "qat_min_elements": 4096}  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name in ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "heapq.py", "this.py"]:
        shutil.copyfile(STDLIB / name, root / name)
    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(root, out, tokenizer="bytes")
    return out


def test_warmup_stable_warmdown_schedule_and_phase_windows():
    ph = Phases(steps=100, time_budget=None, warmup_steps=10, warmdown_frac=0.3, swa_frac=0.1, ema=0.0,
                qat_frac=0.2)  # fmt: skip
    assert ph.lr_scale(0, 0.0, 0.1) == pytest.approx(0.1)
    assert ph.lr_scale(50, 0.5, 0.1) == 1.0
    assert ph.lr_scale(85, 0.85, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert ph.lr_scale(99, 1.0, 0.1) == pytest.approx(0.1)
    assert ph.active(0.75) == {"warmdown"}
    assert ph.active(0.85) == {"warmdown", "qat"}
    assert ph.active(0.95) == {"warmdown", "qat", "swa"}
    timed = Phases(steps=10**9, time_budget=10.0, warmup_steps=0, warmdown_frac=0.3, swa_frac=0, ema=0, qat_frac=0)
    assert timed.progress(step=5, elapsed=7.5) == 0.75 and timed.done(5, 10.0) and not timed.done(5, 9.9)
    assert Phases(100, None, 0, 0.0, 0.0, 0.0, 0.0).lr_scale(5, 0.05, 0.1) is None  # classic schedule


def test_phases_that_cannot_fit_are_reported():
    assert Phases(50, None, 0, 0.3, 0.0, 0.0, 0.001).fit_problems(None) == [
        "phase qat (0% of 50 steps) gets less than one step"
    ]
    timed = Phases(10**9, 2.0, 0, 0.3, 0.0, 0.0, 0.01)
    assert "shorter than one step" in timed.fit_problems(0.5)[0]
    assert "starts before warmdown" in Phases(100, None, 0, 0.1, 0.5, 0.0, 0.0).fit_problems(None)[0]


def test_every_configured_phase_triggers_within_a_short_time_budget(tmp_path, shards):
    summary = pretrain(tmp_path / "run", {**TINY, "corpus": str(shards), "time_budget": 6.0, "warmdown_frac": 0.4,
                                          "swa_frac": 0.2, "qat_frac": 0.3}, log=lambda _m: None)  # fmt: skip
    assert summary["wall_seconds"] >= 6.0 and summary["steps"] < 10**9
    phases = summary["phases"]
    assert set(phases) == {"warmdown", "swa", "qat"}
    assert phases["warmdown"]["step"] <= phases["qat"]["step"] <= phases["swa"]["step"] <= summary["steps"]
    assert summary["averaged"] == {"kind": "swa", "steps": summary["steps"] - phases["swa"]["step"] + 1}
    with open_apr(summary["model"]) as f:
        recorded = f.metadata["training_summary"]
        assert recorded["phases"] == phases and recorded["averaged"] == summary["averaged"]
        assert not [n for n in f.names() if n.startswith("__training__")]


def test_ema_averaging_and_step_budget(tmp_path, shards):
    summary = pretrain(tmp_path / "run", {**TINY, "corpus": str(shards), "steps": 40, "warmdown_frac": 0.5,
                                          "swa_frac": 0.25, "ema": 0.9}, log=lambda _m: None)  # fmt: skip
    assert summary["phases"] == {"warmdown": {"step": 21, "seconds": summary["phases"]["warmdown"]["seconds"]},
                                 "ema": {"step": 31, "seconds": summary["phases"]["ema"]["seconds"]}}  # fmt: skip
    assert summary["averaged"] == {"kind": "ema", "steps": 10}


def test_strict_refuses_a_phase_that_cannot_fit(tmp_path, shards):
    args = [sys.executable, "-m", "aprtool", "pretrain", "--corpus", str(shards), "--size", "tiny", "--seq-len", "32",
            "--batch-size", "4", "--steps", "20", "--qat-frac", "0.01", "--eval-tokens", "512"]  # fmt: skip
    strict = subprocess.run([*args, "--run-dir", str(tmp_path / "a"), "--strict"], capture_output=True, text=True)
    assert strict.returncode == 2 and "qat" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "a" / "model.apr").exists()
    lenient = subprocess.run([*args, "--run-dir", str(tmp_path / "b")], capture_output=True, text=True)
    assert lenient.returncode == 0 and "WARNING: phase qat" in lenient.stderr


def test_qat_forward_uses_compress_quantizer():
    # Seeded: torch's std and numpy's one-pass std can differ by an ulp, and on a rare draw that moves one
    # row's fp16 scale (what the suite's RNG state happened to give after the runs before this test).
    torch.manual_seed(0)
    model = LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=300))
    clip = Clip.parse("std:12.85")
    assert "model.layers.0.mlp.up_proj.weight" in model.set_qat(clip, 4096)
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(3, 64)
    want = F.linear(x, torch.from_numpy(quantize(layer.weight.detach().numpy(), clip).dequantize()))
    assert torch.allclose(layer(x), want, atol=1e-6)
    assert model.set_qat(None, 0) == [] and torch.allclose(layer(x), F.linear(x, layer.weight))


def test_kill_9_resume_is_bitwise_with_warmdown_swa_and_qat(tmp_path, shards):
    args = ["--corpus", str(shards), "--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "512",
            "--steps", "120", "--checkpoint-every", "10", "--warmdown-frac", "0.5", "--swa-frac", "0.3",
            "--qat-frac", "0.4", "--qat-min-elements", "4096"]  # fmt: skip
    cmd = [sys.executable, "-m", "aprtool", "pretrain"]
    whole = subprocess.run([*cmd, "--run-dir", str(tmp_path / "whole"), *args], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--run-dir", str(run), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "ckpt" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill inside the QAT + SWA window
        if latest.is_file() and latest.read_text().strip() >= "step-000090.apr":
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*cmd, "--run-dir", str(run), "--resume", "latest"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    with open_apr(tmp_path / "whole" / "model.apr") as a, open_apr(run / "model.apr") as b:
        for name in a.names():
            assert np.array_equal(a.numpy(name), b.numpy(name)), name
        assert a.metadata["training_summary"]["averaged"] == b.metadata["training_summary"]["averaged"]


def test_compress_keeps_the_clip_late_qat_trained_the_model_for(tmp_path, shards, cli):
    run = tmp_path / "run"
    pretrain(run, {**TINY, "corpus": str(shards), "steps": 10, "qat_frac": 0.5, "qat_clip": "std:9"},
             log=lambda _m: None)  # fmt: skip
    with open_apr(run / "model.apr") as f:
        qat = f.metadata["qat"]
    assert qat["clip"] == "std:9" and qat["min_elements"] == 4096 and qat["bits"] == 6 and 1 <= qat["from_step"] <= 10
    kept = cli("compress", run / "model.apr", "-o", tmp_path / "a.apr", "--min-elements", "4096", "--json").json()
    assert kept["clip"] == "std:9" and kept["clip_source"].startswith("late QAT")
    assert {t["clip"] for t in kept["tensors"] if t["action"] == "int6"} == {"std:9"}
    given = cli("compress", run / "model.apr", "-o", tmp_path / "b.apr", "--clip", "absmax", "--json").json()
    assert given["clip"] == "absmax" and given["clip_source"] == "--clip"

    plain = tmp_path / "plain"
    pretrain(plain, {**TINY, "corpus": str(shards), "steps": 4}, log=lambda _m: None)
    with open_apr(plain / "model.apr") as f:
        assert "qat" not in f.metadata
    default = cli("compress", plain / "model.apr", "-o", tmp_path / "c.apr", "--json").json()
    assert default["clip"] == "auto" and default["clip_source"] == "default: per tensor, the least squared error"
    assert {t["clip"] for t in default["tensors"] if t["action"] == "int6"} <= set(AUTO_CLIPS)


def test_a_malformed_qat_clip_in_metadata_is_exit_4(tmp_path, cli):
    from aprtool import write_apr

    with open_apr(ROOT / "fixtures" / "models" / "tiny-bytes.apr") as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    bad = tmp_path / "bad.apr"
    write_apr(bad, tensors, {**metadata, "qat": {"clip": "std:banana\x1b[31m"}})
    r = cli("compress", bad, "-o", tmp_path / "o.apr")
    assert r.code == 4 and "metadata.qat.clip" in r.stderr and "\x1b" not in r.stderr
    assert not (tmp_path / "o.apr").exists()


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_budgeted_runs_learning_rate_ends_at_its_floor(tmp_path, shards, schedule):
    """Under --time-budget alone the decay follows the budget used: it once ran over 10^9 planned steps, so the
    last lr was the peak. The last step began at wall[-2] at the latest, so it is at most one step from the end."""
    logs: list[str] = []
    cfg = {**TINY, "corpus": str(shards), "time_budget": 3.0, "log_every": 1, "eval_every": 10**6,
           "schedule": schedule, "lr": 0.003, "min_lr_ratio": 0.1, "warmup_steps": 0}  # fmt: skip
    pretrain(tmp_path / "run", cfg, log=logs.append)
    steps = [r for r in _metrics(tmp_path / "run") if "lr" in r and "loss" in r]
    floor, peak, last = 0.0003, 0.003, steps[-1]
    left = (last["wall_seconds"] - steps[-2]["wall_seconds"]) / 3.0  # the budget's share the last step may start in
    reach = (math.pi**2 / 4) * left**2 if schedule == "cosine" else left
    assert floor <= last["lr"] <= floor + (peak - floor) * reach + 1e-12
    assert any("schedule: cosine decay" in m or "schedule: linear decay" in m for m in logs)
    assert any("over the 3 s time budget" in m for m in logs)


def test_the_schedule_line_names_what_ends_the_run():
    from aprtool.train.config import UNBOUNDED_STEPS, LoopConfig
    from aprtool.train.engine import schedule_text

    assert "over 300 steps" in schedule_text(LoopConfig())
    assert "time budget" in schedule_text(LoopConfig(time_budget=60.0, steps=UNBOUNDED_STEPS))
    assert "whichever ends the run first: 500 steps or 60 s" in schedule_text(LoopConfig(time_budget=60.0, steps=500))
    assert "warmup-stable-warmdown" in schedule_text(LoopConfig(warmdown_frac=0.3))


def test_budget_progress_counts_steps_done_not_a_billion(tmp_path):
    from aprtool.train.config import UNBOUNDED_STEPS
    from aprtool.train.progress import RunProgress, log_line

    budgeted = RunProgress(UNBOUNDED_STEPS, 40.0, step=10, wall=4.0)
    assert budgeted.steps_text == "10"
    assert log_line({"step": 10}, budgeted).startswith("step 10  10% of 0:00:40")
    assert RunProgress(300, None, step=10).steps_text == "10/300"


def test_checkpoint_minutes_0_turns_periodic_checkpoints_off(tmp_path, shards):
    cfg = {**TINY, "corpus": str(shards), "steps": 30, "checkpoint_every": 0, "checkpoint_minutes": 0}
    pretrain(tmp_path / "off", cfg, log=lambda _m: None)
    pretrain(tmp_path / "on", {**cfg, "checkpoint_minutes": 1e-9}, log=lambda _m: None)  # every step is due
    step_files = lambda run: sorted(p.name for p in (run / "ckpt").glob("step-*.apr"))  # noqa: E731
    assert len(step_files(tmp_path / "on")) > 1
    assert step_files(tmp_path / "off") == step_files(tmp_path / "off")[-1:]  # the final checkpoint alone
    assert (tmp_path / "off" / "model.apr").is_file()


def test_a_budgeted_run_warns_when_it_has_wrapped_the_corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("this.py", "colorsys.py"):  # a few kB: an epoch is a few steps
        shutil.copyfile(STDLIB / name, root / name)
    prepare_corpus(root, tmp_path / "shards", tokenizer="bytes", val_fraction=0.5)
    logs: list[str] = []
    cfg = {**TINY, "corpus": str(tmp_path / "shards"), "steps": 60, "time_budget": 3600.0, "eval_tokens": 64}
    pretrain(tmp_path / "run", cfg, log=logs.append)
    warned = [m for m in logs if "read the training split" in m]
    assert len(warned) == 1 and "within --time-budget" in warned[0]


def test_every_held_out_measurement_feeds_one_best(tmp_path):
    """Epoch-end losses once bypassed the best tracker: every epoch said best, and best.apr was worse than
    an epoch's file. On a small corpus read many times the held-out loss rises again (memorization)."""
    import json

    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("this.py", "colorsys.py"):
        shutil.copyfile(STDLIB / name, root / name)
    prepare_corpus(root, tmp_path / "shards", tokenizer="bytes", val_fraction=0.5)
    cfg = {**TINY, "corpus": str(tmp_path / "shards"), "steps": 160, "eval_every": 10**6, "eval_tokens": 64,
           "lr": 0.01, "warmup_steps": 5, "keep_epochs": 1}  # fmt: skip
    summary = pretrain(tmp_path / "run", cfg, log=lambda _m: None)
    ckpt = tmp_path / "run" / "ckpt"
    records = sorted((json.loads(p.read_text()) for p in ckpt.glob("epoch-*.metadata.json")), key=lambda r: r["epoch"])
    assert len(records) >= 5
    low = math.inf
    for r in records:
        assert r["best"] == (r["val_loss"] < low), r
        low = min(low, r["val_loss"])
    assert not all(r["best"] for r in records)  # the loss rose at least once: the flags are not all true
    with open_apr(ckpt / "best.apr") as f:
        best = f.metadata["training"]
    assert best["val_loss"] == summary["best_val_loss"] <= low
    best_epoch = min(records, key=lambda r: r["val_loss"])["epoch"]
    if best["val_loss"] == low:
        assert best["step"] == next(r["step"] for r in records if r["epoch"] == best_epoch)
    kept = sorted(p.name for p in ckpt.glob("epoch-*.apr"))
    assert f"epoch-{best_epoch:03d}.apr" in kept and f"epoch-{records[-1]['epoch']:03d}.apr" in kept
