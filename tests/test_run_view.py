"""Seeing a run (issue #12 §4): progress lines without a terminal, ETA from the resumed step, a resolved
config.json, `aprtool plot` (a real PNG), TensorBoard event files."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from test_hostile import one_line_error

from aprtool.train.config import TrainConfig
from aprtool.train.progress import RunProgress, log_line
from fixtures.corpora import materialize

TINY = ("--size", "tiny", "--tokenizer", "bytes", "--seq-len", "32", "--batch-size", "2", "--eval-tokens", "256")


def pretrain(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aprtool", "pretrain", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return materialize("tiny", tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus) -> tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """10 steps, then resumed to 20: both processes' stderr kept."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    first = pretrain("--run-dir", run_dir, "--corpus", corpus, *TINY, "--steps", "10", "--log-every", "5",
                     "--eval-every", "10", "--checkpoint-every", "10")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = pretrain("--run-dir", run_dir, "--resume", "latest", "--steps", "20")
    assert second.returncode == 0, second.stderr
    return run_dir, first, second


def test_rate_and_eta_count_from_the_resumed_step():
    p = RunProgress.from_start({"step": 100, "total_steps": 200, "time_budget": None, "wall_seconds": 1000.0})
    assert p.eta_seconds is None and p.fraction == 0.5
    p.update(110, 1010.0)  # 10 steps in 10 s since this process started: 90 left
    assert p.eta_seconds == pytest.approx(90.0) and p.fraction == pytest.approx(0.55)


def test_under_a_time_budget_the_clock_decides():
    p = RunProgress.from_start({"step": 0, "total_steps": 10**9, "time_budget": 60.0, "wall_seconds": 0.0})
    p.update(50, 15.0)
    assert p.fraction == pytest.approx(0.25) and p.eta_seconds == pytest.approx(45.0)
    p = RunProgress.from_start({"step": 0, "total_steps": 100, "time_budget": 600.0, "wall_seconds": 0.0})
    p.update(50, 10.0)  # the steps end first
    assert p.fraction == pytest.approx(0.5) and p.eta_seconds == pytest.approx(10.0)
    line = log_line({"step": 50, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.0}, p)
    assert line.startswith("step 50/100") and "ETA 0:00:10" in line and "1,234 tok/s" in line


def _progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[aprtool] step ") and "ETA" in line]


def test_without_a_terminal_a_plain_line_every_log_interval(run):
    _, first, second = run
    lines = _progress_lines(first.stderr)
    assert [line.split()[2] for line in lines] == ["5/10", "10/10"]
    assert all("loss" in line and "lr" in line and "tok/s" in line for line in lines)
    resumed = _progress_lines(second.stderr)
    assert [line.split()[2] for line in resumed] == ["15/20", "20/20"]  # counts on from the checkpoint


def test_config_json_has_every_option_resolved(run):
    run_dir, _, _ = run
    doc = json.loads((run_dir / "config.json").read_text())
    assert doc["command"] == "pretrain" and doc["resumed_from"] == "step-000010.apr"
    assert set(doc["config"]) == {f.name for f in fields(TrainConfig)}
    assert doc["config"]["steps"] == 20 and doc["config"]["lr"] == TrainConfig.lr  # given, and defaulted
    assert doc["model"]["hidden_size"] == 64 and doc["model"]["vocab_size"] == 257
    assert doc["argv"][:3] == ["pretrain", "--run-dir", str(run_dir)]


def test_the_run_draws_its_curves_and_plot_compares_runs(cli, run, tmp_path):
    run_dir, first, second = run
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(run_dir / "curves.png") in second.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    out = tmp_path / "both.png"
    r = cli("plot", run_dir, run_dir, "-o", out, "--json")
    assert r.code == 0, r.stderr
    info = r.json()
    assert info["file"] == str(out) and out.read_bytes()[:4] == b"\x89PNG"
    assert info["runs"][0]["records"] == 4 and info["runs"][0]["evaluations"] == 2  # steps 5,10,15,20
    one_line_error(cli("plot", run_dir, "-o", out), 2, "--force")


def test_plot_marks_the_step_each_phase_began(cli, corpus, tmp_path):
    run_dir = tmp_path / "wsd"
    r = pretrain("--run-dir", run_dir, "--corpus", corpus, *TINY, "--steps", "10", "--log-every", "2",
                 "--warmup-steps", "2", "--warmdown-frac", "0.5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert cli("plot", run_dir, "--json").json()["runs"][0]["phases"] == {"warmdown": 6}


def test_plot_skips_a_torn_line_and_refuses_a_dir_without_metrics(cli, run, tmp_path):
    run_dir, _, _ = run
    copy = tmp_path / "copy"
    copy.mkdir()
    text = (run_dir / "metrics.jsonl").read_text()
    (copy / "metrics.jsonl").write_text(text + '{"step": 25, "loss": 1.')
    r = cli("plot", copy, "--json")
    assert r.code == 0 and r.json()["runs"][0]["skipped_lines"] == 1
    one_line_error(cli("plot", tmp_path / "empty-dir-that-is-missing"), 4, "metrics.jsonl")


def test_plot_without_matplotlib_is_exit_9_with_the_install_hint(run):
    run_dir, _, _ = run
    code = "import sys; sys.modules['matplotlib'] = None; from aprtool.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "plot", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9 and "pip install 'aprtool[plot]'" in r.stderr and r.stderr.count("\n") == 1


def test_tensorboard_events_match_metrics_and_resume_purges(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    args = ("--run-dir", run_dir, "--corpus", corpus, *TINY, "--log-every", "2", "--eval-every", "4",
            "--checkpoint-every", "4", "--tensorboard")  # fmt: skip
    assert pretrain(*args, "--steps", "6").returncode == 0
    r = pretrain(
        "--run-dir", run_dir, "--resume", run_dir / "ckpt" / "step-000004.apr", "--steps", "8", "--tensorboard"
    )
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    logged = {rec["step"]: rec["loss"] for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in rec}  # fmt: skip
    assert sorted(loss) == sorted(logged) == [2, 4, 6, 8]  # steps 5-6 re-run after resuming at 4: drawn once
    for step, value in logged.items():
        assert loss[step] == pytest.approx(value, rel=1e-6)
    assert {e.step for e in events.Scalars("train/val_loss")} == {4, 8}


def test_tensorboard_missing_is_exit_9_before_training(tmp_path, corpus):
    code = "import sys; sys.modules['tensorboard'] = None; from aprtool.cli import main; main()"
    args = ["pretrain", "--run-dir", str(tmp_path / "r"), "--corpus", str(corpus), *TINY, "--tensorboard"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9 and "aprtool[tensorboard]" in r.stderr
    assert not (tmp_path / "r").exists()
