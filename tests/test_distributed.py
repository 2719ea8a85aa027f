"""Data-parallel pretraining under torchrun with 2 gloo processes on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from aprtool import open_apr, verify_file
from aprtool.data.loader import BatchLoader, LoaderState

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
ARGS = ["--tokenizer", "bytes", "--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "512"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-corpus")
    for name in ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "heapq.py", "this.py"]:
        shutil.copyfile(STDLIB / name, root / name)
    return root


def torchrun(*args: str | Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "aprtool", "pretrain", *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)


def test_ranks_read_disjoint_slices_of_one_global_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    whole = BatchLoader(tokens, 16, 8, 0, LoaderState())
    ranks = [BatchLoader(tokens, 16, 4, 0, LoaderState(), rank=r, world=2) for r in range(2)]
    for _ in range(30):  # crosses epoch boundaries too
        x, _ = whole.next_batch()
        parts = [loader.next_batch()[0] for loader in ranks]
        assert torch.equal(torch.cat(parts), x)
        assert not set(parts[0][:, 0].tolist()) & set(parts[1][:, 0].tolist())
    assert ranks[0].state == ranks[1].state == whole.state


def test_two_gloo_processes_train_and_only_rank_0_writes(tmp_path, corpus):
    run = tmp_path / "run"
    result = torchrun("--run-dir", run, "--corpus", corpus, *ARGS, "--steps", "20", "--checkpoint-every", "10",
                      "--eval-every", "10", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one JSON document: rank 1 prints nothing
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert summary["tokens_seen"] == 20 * 4 * 32 * 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # a single writer: no line twice
    assert verify_file(run / "model.apr", expect_tensors=20).valid
    assert (run / "ckpt" / "latest").read_text().strip() == "step-000020.apr"


def test_a_run_checkpointed_with_two_ranks_resumes_with_one_and_back(tmp_path, corpus):
    run = tmp_path / "run"
    first = torchrun("--run-dir", run, "--corpus", corpus, *ARGS, "--steps", "20", "--checkpoint-every", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    cmd = [sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), "--resume", "latest", "--steps", "30"]
    one = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert one.returncode == 0, one.stderr
    assert "resumed from step-000020.apr at step 20" in one.stderr
    assert json.loads(one.stdout)["world_size"] == 1
    again = torchrun("--run-dir", run, "--resume", "latest", "--steps", "40", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["steps"] == 40 and summary["world_size"] == 2
    with open_apr(run / "model.apr") as f:
        assert f.metadata["training_summary"]["step"] == 40


def test_all_ranks_agree_on_early_stopping(tmp_path, corpus):
    run = tmp_path / "run"
    result = torchrun("--run-dir", run, "--corpus", corpus, *ARGS, "--steps", "200", "--eval-every", "5",
                      "--patience", "1", "--min-evals", "2", "--min-delta", "100", "--warmup-steps", "2",
                      "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # a rank left behind would hang, then time out
    summary = json.loads(result.stdout)
    assert summary["stopped_early"] and summary["steps"] == 10
