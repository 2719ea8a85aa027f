"""`--resume latest` with a missing, empty, garbage or damaged `latest` falls back to the newest step
checkpoint that verifies and says which it used (issue #13, item 8)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aprtool.train.checkpoint import CheckpointDir
from aprtool.train.loop import pretrain
from fixtures.corpora import materialize

CONFIG = {"size": "tiny", "tokenizer": "bytes", "seq_len": 32, "batch_size": 2, "eval_tokens": 256, "eval_every": 100,
          "checkpoint_every": 2, "steps": 6}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    corpus = materialize("tiny", tmp_path_factory.mktemp("corpus"))
    run_dir = tmp_path_factory.mktemp("run") / "run"
    pretrain(run_dir, {**CONFIG, "corpus": str(corpus)}, log=lambda _m: None)
    assert (run_dir / "ckpt" / "latest").read_text().strip() == "step-000006.apr"
    return run_dir


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


CASES = {
    "missing": (lambda c: (c / "latest").unlink(), "step-000006.apr", None),
    "empty": (lambda c: (c / "latest").write_text(""), "step-000006.apr", "does not name a checkpoint"),
    "garbage": (lambda c: (c / "latest").write_bytes(b"\xff\xfe../../etc/passwd\x00"), "step-000006.apr",
                "unreadable"),
    "names a path": (lambda c: (c / "latest").write_text("../model.apr\n"), "step-000006.apr", "does not name"),
    "pointed file gone": (lambda c: (c / "step-000006.apr").unlink(), "step-000004.apr", "missing or does not verify"),
    "pointed file damaged": (lambda c: _flip(c / "step-000006.apr"), "step-000004.apr", "missing or does not verify"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_latest_falls_back_to_the_newest_checkpoint_that_verifies(run, tmp_path, case):
    damage, expected, said = CASES[case]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy / "ckpt")
    messages: list[str] = []
    assert CheckpointDir(copy / "ckpt", 5, messages.append).resolve("latest").name == expected
    if said:
        assert len(messages) == 1 and said in messages[0] and expected in messages[0], messages


def test_the_cli_resumes_and_names_the_checkpoint_it_used(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _flip(copy / "ckpt" / "step-000006.apr")
    r = subprocess.run([sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(copy), "--resume", "latest",
                        "--steps", "8"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "resuming from step-000004.apr" in r.stderr and "resumed from step-000004.apr at step 4" in r.stderr


def test_step_files_are_ordered_by_step_number_not_by_name(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for step in (999_999, 1_000_000, 5):
        (ckpt / f"step-{step:06d}.apr").write_bytes(b"")
    names = [p.name for p in CheckpointDir(ckpt, 5, print).step_files()]
    assert names == ["step-000005.apr", "step-999999.apr", "step-1000000.apr"]
