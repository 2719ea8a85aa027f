"""Data-parallel pretrain and distill under torchrun with 2 gloo processes on CPU."""

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


# --- distill is the same engine: data parallel too


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("ddp-teacher") / "run"
    cmd = [sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run), "--corpus", str(corpus), *ARGS,
           "--steps", "10"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr
    return run / "model.apr"


def distill_args(teacher: Path, run: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--run-dir", str(run), "--student-intermediate-size", "96",
            "--steps", "10", "--eval-tokens", "512", "--eval-every", "5", "--log-every", "5", "--warmup-steps", "2",
            *extra]  # fmt: skip


def tensors(path: Path) -> dict[str, np.ndarray]:
    with open_apr(path) as f:
        return {n: np.array(f.numpy(n)) for n in f.names()}


def test_distill_with_two_ranks_equals_one_process_with_their_global_batch(tmp_path, teacher):
    """The engine averages the gradients across ranks, so 2 ranks x 4 sequences train what 1 x 8 does
    (logit KD is a mean over tokens; blockwise's normalized MSE is a ratio of sums, not a mean)."""
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aprtool",
           *distill_args(teacher, two, "--batch-size", "4", "--checkpoint-every", "5"),
           "--json"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one JSON document: rank 1 prints nothing
    assert summary["world_size"] == 2 and summary["steps"] == 10 and summary["tokens_seen"] == 10 * 4 * 32 * 2
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]  # a single writer
    assert json.loads((two / "state.json").read_text())["status"] == "completed"

    one = tmp_path / "one"
    cmd = [sys.executable, "-m", "aprtool", *distill_args(teacher, one, "--batch-size", "8")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = tensors(two / "model.apr"), tensors(one / "model.apr")
    assert a.keys() == b.keys()
    start = tensors(teacher)
    moved = [n for n in a if n in start and a[n].shape == start[n].shape and not np.array_equal(a[n], start[n])]
    assert moved  # training happened
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_blockwise_distill_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path, teacher):
    """Blockwise runs each block on its own, which DDP's wrapper cannot follow; the engine's all-reduce can."""
    run = tmp_path / "run"
    args = distill_args(teacher, run, "--mode", "blockwise", "--batch-size", "4", "--checkpoint-every", "5")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aprtool", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = run / "ckpt" / "ckpt-step-000005.apr"
    cmd = [sys.executable, "-m", "aprtool", *distill_args(teacher, run, "--mode", "blockwise", "--batch-size", "4"),
           "--resume", str(ckpt), "--json"]  # fmt: skip
    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from ckpt-step-000005.apr at step 5" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["world_size"] == 1 and summary["steps"] == 10 and summary["trained_steps"] == 5
