"""pretrain: real training on real text, real checkpoints, real kill -9 / SIGTERM / full disks."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from aprtool import open_apr, verify_file
from aprtool.data.prepare import prepare_corpus
from aprtool.errors import UsageError
from aprtool.train.loop import pretrain
from fixtures.corpora import materialize

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TEXT_FILES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "fnmatch.py", "glob.py",
              "colorsys.py", "bisect.py", "keyword.py", "heapq.py", "getopt.py", "this.py"]  # fmt: skip
TINY = {"size": "tiny", "seq_len": 32, "batch_size": 4, "eval_tokens": 512, "log_every": 5, "eval_every": 10}
TINY_ARGS = ["--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "512", "--log-every", "5"]


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A dozen real standard-library sources, copied as a plain directory of text files."""
    root = tmp_path_factory.mktemp("corpus")
    for name in TEXT_FILES:
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / name, dst)
    return root


@pytest.fixture(scope="session")
def shards(tmp_path_factory, text_corpus) -> Path:
    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(text_corpus, out, tokenizer="bytes")
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Four small files: a few thousand tokens, so a short run wraps around several times."""
    root = materialize("tiny", tmp_path_factory.mktemp("tiny-corpus"))
    out = tmp_path_factory.mktemp("tiny-shards")
    prepare_corpus(root, out, tokenizer="bytes", val_fraction=0.25)
    return out


def run_cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aprtool", "pretrain", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env, **kwargs,
    )  # fmt: skip


def weights(path: Path) -> dict[str, np.ndarray]:
    with open_apr(path) as f:
        return {n: np.array(f.numpy(n)) for n in f.names()}


def losses(run_dir: Path) -> list[tuple[int, float | None, float | None]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]


def test_loss_decreases_on_the_default_corpus(tmp_path):
    summary = pretrain(tmp_path / "run", {**TINY, "tokenizer": "bytes", "steps": 60, "eval_every": 20})
    curve = losses(tmp_path / "run")
    assert curve[-1][1] < curve[0][1] - 0.5  # bytes start near ln(257) = 5.5
    vals = [v for _, _, v in curve if v is not None]
    assert len(vals) == 3 and vals[-1] < vals[0]
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["source"]["default"] and manifest["split"]["by"] == "file"
    assert not set(manifest["split"]["train_files"]) & set(manifest["split"]["val_files"])
    assert all("site-packages" not in f for f in manifest["split"]["train_files"])
    assert summary["steps"] == 60 and summary["train_loss"] == curve[-1][1]


def test_bpe_tokenizer_is_trained_saved_and_referenced(tmp_path, text_corpus):
    summary = pretrain(tmp_path / "run", {**TINY, "corpus": str(text_corpus), "vocab_size": 400, "steps": 5})
    run = tmp_path / "run"
    assert (run / "tokenizer.json").is_file() and (run / "data" / "tokenizer.json").is_file()
    with open_apr(summary["model"]) as f:
        tok = f.metadata["tokenizer"]
        assert tok["kind"] == "bpe" and tok["vocab_size"] == 400 and tok["file"] == "tokenizer.json"
        assert f.metadata["vocab_size"] == 400
    from aprtool.data.tokenizer import load_tokenizer

    t = load_tokenizer(tok, run)
    text = (text_corpus / "textwrap.py").read_text()
    assert t.decode(t.encode(text)) == text


def test_wraps_around_a_tiny_corpus_and_counts_epochs(tmp_path, tiny_shards):
    summary = pretrain(tmp_path / "run", {**TINY, "corpus": str(tiny_shards), "seq_len": 64, "batch_size": 16,
                                          "steps": 30, "checkpoint_every": 100, "eval_every": 100,
                                          "keep_epochs": 100})  # fmt: skip
    windows = (json.loads((tiny_shards / "manifest.json").read_text())["tokens"]["train"] - 1) // 64
    assert summary["epochs_completed"] == 30 * 16 // windows >= 2
    ckpt = tmp_path / "run" / "ckpt"
    for epoch in range(1, summary["epochs_completed"] + 1):
        assert verify_file(ckpt / f"epoch-{epoch:03d}.apr").valid
        side = json.loads((ckpt / f"epoch-{epoch:03d}.metadata.json").read_text())
        assert side["epoch"] == epoch and side["train_loss"] > 0 and side["grad_norm_max"] > 0
        assert {"val_loss", "tokens_seen", "wall_seconds"} <= set(side)


def test_too_small_or_empty_corpus_is_a_clear_error_before_training(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("--run-dir", tmp_path / "r1", "--corpus", empty, "--tokenizer", "bytes", *TINY_ARGS)
    assert result.returncode == 2 and "at least 2" in result.stderr and "Traceback" not in result.stderr
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("tiny")
    (small / "b.txt").write_text("also tiny")
    result = run_cli("--run-dir", tmp_path / "r2", "--corpus", small, "--tokenizer", "bytes", *TINY_ARGS)
    assert result.returncode == 2 and "too small" in result.stderr
    assert not (tmp_path / "r2" / "model.apr").exists() and not list((tmp_path / "r2" / "ckpt").glob("*.apr"))


def test_retention_keeps_exactly_the_promised_files_and_all_verify(tmp_path, tiny_shards):
    run = tmp_path / "run"
    cfg = {**TINY, "corpus": str(tiny_shards), "batch_size": 16, "steps": 30, "checkpoint_every": 5, "keep_last": 2,
           "keep_epochs": 2}  # fmt: skip
    summary = pretrain(run, cfg)
    assert summary["epochs_completed"] >= 3  # more epochs than are kept
    names = sorted(p.name for p in (run / "ckpt").iterdir())
    epochs = summary["epochs_completed"]
    expected = ["best.apr", "latest", "step-000025.apr", "step-000030.apr"]
    records = [json.loads((run / "ckpt" / f"epoch-{e:03d}.metadata.json").read_text()) for e in range(1, epochs + 1)]
    best_epoch = min(records, key=lambda r: r["val_loss"])["epoch"]
    kept = {*range(epochs - 1, epochs + 1), best_epoch}  # the newest 2, and the best epoch's
    expected += [f"epoch-{e:03d}.apr" for e in sorted(kept)]
    expected += [f"epoch-{e:03d}.metadata.json" for e in range(1, epochs + 1)]
    assert names == sorted(expected)
    assert (run / "ckpt" / "latest").read_text().strip() == "step-000030.apr"
    for p in [*run.glob("ckpt/*.apr"), run / "model.apr"]:
        assert verify_file(p).valid, p
    with open_apr(run / "model.apr") as f:
        assert not [n for n in f.names() if n.startswith("__training__.")]
        assert f.metadata["architecture"] == "LlamaForCausalLM"
    with open_apr(run / "ckpt" / "step-000030.apr") as f:
        training = [n for n in f.names() if n.startswith("__training__.")]
        assert any(".exp_avg_sq" in n for n in training) and "__training__.rng.torch" in training
        assert f.metadata["training"]["step"] == 30 and f.metadata["training"]["config"]["keep_last"] == 2


def test_leftovers_of_a_crash_are_swept_at_start(tmp_path, shards):
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # the temp files of a process that no longer runs are leftovers; a live writer's are not
    leftovers = [
        ckpt / f".step-000010.apr.tmp-{dead.pid}-0123abcd",
        ckpt / ".deleting-step-000005.apr",
        ckpt / f".latest.tmp-{dead.pid}-89abcdef",
    ]
    live = ckpt / f".step-000020.apr.tmp-{os.getpid()}-0123abcd"
    for p in [*leftovers, live]:
        p.write_bytes(b"half-written")
    pretrain(tmp_path / "run", {**TINY, "corpus": str(shards), "steps": 5})
    assert not any(p.exists() for p in leftovers)
    assert live.exists()


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, shards):
    args = [*TINY_ARGS, "--corpus", shards, "--steps", "150", "--checkpoint-every", "10", "--eval-every", "25"]
    whole = run_cli("--run-dir", tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    latest = run / "ckpt" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-000030.apr":
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert killed_at != "step-000150.apr"

    resumed = run_cli("--run-dir", run, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed_at}" in resumed.stderr or "resumed from step-" in resumed.stderr
    a, b = weights(tmp_path / "whole" / "model.apr"), weights(run / "model.apr")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name  # bitwise
    assert losses(tmp_path / "whole") == losses(run)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_a_checkpoint_and_exits_with_128_plus_its_number(tmp_path, shards, signum, code):
    run = tmp_path / "run"
    args = [*TINY_ARGS, "--corpus", shards, "--steps", "100000", "--checkpoint-every", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume latest" in err and "Traceback" not in err
    latest = (run / "ckpt" / "latest").read_text().strip()
    assert verify_file(run / "ckpt" / latest).valid
    with open_apr(run / "ckpt" / latest) as f:
        step = f.metadata["training"]["step"]
        assert step > 0
    status = json.loads((run / "status.json").read_text())  # the run's own status file follows it
    assert status["status"] == "interrupted" and status["step"] == step and status["last_checkpoint"] == latest
    assert status["resume"] == f"aprtool pretrain --run-dir {run} --resume latest"


def test_status_file_says_completed_or_failed_with_the_reason(tmp_path, tiny_shards):
    run = tmp_path / "run"
    pretrain(run, {**TINY, "corpus": str(tiny_shards), "steps": 4, "checkpoint_every": 2})
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["step"] == 4 and status["model"] == "model.apr"
    assert status["last_checkpoint"] == "step-000004.apr"
    with pytest.raises(UsageError):  # a refused start leaves the existing run's status alone
        pretrain(run, {**TINY, "corpus": str(tiny_shards), "steps": 4})
    assert json.loads((run / "status.json").read_text()) == status
    bad = tmp_path / "bad"
    result = run_cli("--run-dir", bad, "--corpus", tiny_shards, *TINY_ARGS, "--steps", "50", "--lr", "1e30")
    assert result.returncode == 5, result.stderr
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "loss became nan" in status["reason"]


def test_a_failing_checkpoint_write_does_not_stop_training(tmp_path, shards):
    """A real 'disk full': RLIMIT_FSIZE makes writes past the limit fail with EFBIG mid-run."""
    run = tmp_path / "run"
    args = [*TINY_ARGS, "--corpus", shards, "--steps", "40", "--checkpoint-every", "10"]
    first = run_cli("--run-dir", run, *args[:-2], "--checkpoint-every", "10", "--steps", "10")
    assert first.returncode == 0
    model_bytes = (run / "model.apr").stat().st_size
    ckpt_bytes = (run / "ckpt" / "step-000010.apr").stat().st_size
    assert model_bytes < ckpt_bytes

    def limit():  # files up to the model's size may be written; checkpoints (3x larger) may not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (model_bytes + 4096, model_bytes + 4096))

    shutil.rmtree(run)
    (run / "data").mkdir(parents=True)
    for p in shards.iterdir():
        shutil.copy(p, run / "data" / p.name)
    result = run_cli("--run-dir", run, *args, preexec_fn=limit)
    assert result.returncode == 0, result.stderr
    assert "FAILED to write" in result.stderr and "training continues" in result.stderr
    assert verify_file(run / "model.apr").valid
    assert not list((run / "ckpt").glob("step-*.apr"))  # nothing half-written under a real name
    assert not [p for p in (run / "ckpt").iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_checkpoint_dir_mid_run_does_not_stop_training(tmp_path, shards):
    run = tmp_path / "run"
    args = [*TINY_ARGS, "--corpus", shards, "--steps", "300", "--checkpoint-every", "10"]
    proc = subprocess.Popen([sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not (run / "ckpt" / "latest").is_file():
        time.sleep(0.01)
    (run / "ckpt").chmod(0o500)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        (run / "ckpt").chmod(0o700)
    assert proc.returncode == 0 and "FAILED to write" in err
    assert verify_file(run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()).valid


def test_resume_refuses_an_incompatible_config_naming_the_field(tmp_path, shards):
    run = tmp_path / "run"
    assert pretrain(run, {**TINY, "corpus": str(shards), "steps": 10, "checkpoint_every": 5})["steps"] == 10
    with pytest.raises(UsageError, match="seq_len: checkpoint has 32, requested 64"):
        pretrain(run, {"seq_len": 64, "steps": 20}, resume="latest")
    result = run_cli("--run-dir", run, "--resume", "latest", "--hidden-size", "128")
    assert result.returncode == 2 and "hidden_size" in result.stderr


def test_resume_latest_with_nothing_to_resume_exits_3(tmp_path):
    result = run_cli("--run-dir", tmp_path / "nothing", "--resume", "latest")
    assert result.returncode == 3 and "nothing to resume" in result.stderr


def test_early_stopping_fires_only_after_min_evals_and_patience(tmp_path, shards):
    # min_delta so large that no evaluation after the first can count as an improvement
    # (warmup ends before the first evaluation: early stopping never fires during warmup)
    cfg = {**TINY, "corpus": str(shards), "steps": 200, "eval_every": 5, "patience": 2, "min_evals": 4,
           "min_delta": 100.0, "warmup_steps": 2}  # fmt: skip
    summary = pretrain(tmp_path / "run", cfg)
    assert summary["stopped_early"] and summary["steps"] == 20  # evals at 5, 10, 15, 20: fires at the 4th
    assert summary["best_step"] == 5
    assert verify_file(tmp_path / "run" / "model.apr").valid


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path, tiny_shards):
    run = tmp_path / "run"
    pretrain(run, {**TINY, "corpus": str(tiny_shards), "steps": 5})
    before = {p.name: p.read_bytes() for p in (run / "ckpt").glob("*.apr")}
    with pytest.raises(UsageError, match="--resume latest"):
        pretrain(run, {**TINY, "corpus": str(tiny_shards), "steps": 5})
    assert {p.name: p.read_bytes() for p in (run / "ckpt").glob("*.apr")} == before
