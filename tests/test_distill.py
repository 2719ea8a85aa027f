"""distill: both modes end to end on tiny real models, a proven export, kill -9 + resume, run identity."""

from __future__ import annotations

import hashlib
import json
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
from typer.testing import CliRunner

from aprtool import open_apr, verify_file, write_apr
from aprtool.cli import app
from aprtool.data.prepare import prepare_corpus
from aprtool.distill import DistillConfig, distill
from aprtool.distill.config import parse_keys
from aprtool.distill.losses import logit_kd_loss
from aprtool.distill.models import LoadedModel, build_student, freeze, plan_student
from aprtool.errors import IntegrityError, UsageError
from aprtool.model.llama import PRESETS, LlamaForCausalLM
from aprtool.train.loop import pretrain

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TEXT_FILES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "fnmatch.py", "glob.py",
              "colorsys.py", "bisect.py", "keyword.py", "heapq.py", "getopt.py", "this.py"]  # fmt: skip
SMALL = {"batch_size": 4, "eval_tokens": 512, "eval_every": 10, "log_every": 5, "warmup_steps": 5}
SMALL_ARGS = ["--batch-size", "4", "--eval-tokens", "512", "--eval-every", "10", "--log-every", "5",
              "--warmup-steps", "5"]  # fmt: skip
QUIET = {"log": lambda _m: None}


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name in TEXT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / name, root / name)
    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(root, out, tokenizer="bytes")
    return out


@pytest.fixture(scope="session")
def teacher(tmp_path_factory, shards) -> Path:
    """A tiny Llama (2 layers, hidden 64, FFN 172, 4 heads, 2 KV heads) trained by pretrain for 20 steps."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = {"size": "tiny", "tokenizer": "bytes", "seq_len": 32, "batch_size": 4, "steps": 20, "eval_tokens": 512,
           "corpus": str(shards)}  # fmt: skip
    pretrain(run, cfg, **QUIET)
    return run / "model.apr"


def tensors(path: Path) -> dict[str, np.ndarray]:
    with open_apr(path) as f:
        return {n: np.array(f.numpy(n)) for n in f.names()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def teacher_counterpart(name: str, t: dict[str, np.ndarray], layer_map: list[int], shape: tuple) -> np.ndarray:
    """The value the student's tensor started from, computed from the teacher file alone."""
    if name.startswith("model.layers."):
        index, rest = name[len("model.layers.") :].split(".", 1)
        name = f"model.layers.{layer_map[int(index)]}.{rest}"
    value = t[name]
    if name.endswith("down_proj.weight"):
        return value[:, : shape[1]]
    return value[: shape[0]] if value.ndim == 2 else value


def invoke(*args):
    """The command in this process (where monkeypatching reaches), through Typer and its error handling."""
    return CliRunner().invoke(app, ["distill", *map(str, args)])


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aprtool", "distill", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, **kwargs)  # fmt: skip


# --- end to end, both modes


def test_logit_kd_end_to_end_exports_every_tensor_trained(tmp_path, teacher, shards):
    run = tmp_path / "kd"
    opts = {**SMALL, "corpus": str(shards), "steps": 20, "student_layers": 1, "student_intermediate_size": 96,
            "checkpoint_every": 10}  # fmt: skip
    summary = distill(teacher, run, opts, **QUIET)
    assert summary["steps"] == summary["trained_steps"] == 20 and summary["init"] == "teacher"
    assert summary["params"] < summary["teacher_params"] and summary["learned_params"] == summary["params"]

    out = tensors(run / "model.apr")
    with torch.device("meta"):
        names = set(LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=257, num_layers=1)).weights())
    assert set(out) == names and summary["exported_tensors"] == len(names)
    assert verify_file(run / "model.apr", strict=True, expect_tensors=len(names)).valid
    t = tensors(teacher)
    for name, value in out.items():  # every tensor moved away from the teacher slice it started as
        start = teacher_counterpart(name, t, [0], value.shape)
        assert start.shape == value.shape and not np.array_equal(start, value), name
    final = tensors(run / "ckpt" / "ckpt-step-000020.apr")  # the export is the trained student, bit for bit
    assert all(np.array_equal(final[n], out[n]) for n in out)

    with open_apr(run / "model.apr") as f, open_apr(teacher) as g:
        meta, teacher_meta = dict(f.metadata), dict(g.metadata)
    assert set(teacher_meta) - {"training_summary"} <= set(meta)  # pretrain's model keys, all of them
    assert meta["architecture"] == "LlamaForCausalLM" and meta["name"] == "aprtool-distill"
    assert meta["num_layers"] == 1 and meta["intermediate_size"] == 96 and meta["vocab_size"] == 257
    assert meta["tokenizer"] == teacher_meta["tokenizer"] and meta["param_count"] == summary["params"]
    d = meta["distillation"]
    assert d["mode"] == "logits" and d["layer_map"] == [0] and d["init"] == "teacher"
    assert d["teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert d["fingerprint"] == summary["fingerprint"] and d["steps"] == 20 and d["val_loss"] == summary["val_loss"]

    lines = metrics(run)
    assert [r["step"] for r in lines] == [5, 10, 15, 20]
    assert all({"kd_loss", "ce_loss", "loss"} <= set(r) for r in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "completed" and state["fingerprint"] == summary["fingerprint"]
    assert state["checkpoints"] == {"latest": "ckpt-step-000020.apr", "final": "ckpt-step-000020.apr"}


def test_blockwise_end_to_end_logs_each_block_and_trains_only_the_blocks(tmp_path, teacher, shards):
    run = tmp_path / "bw"
    opts = {**SMALL, "corpus": str(shards), "steps": 20, "mode": "blockwise", "student_intermediate_size": 96,
            "student_kv_heads": 1, "checkpoint_every": 0}  # fmt: skip
    summary = distill(teacher, run, opts, **QUIET)
    assert summary["mode"] == "blockwise" and summary["keys_to_learn"] == ["entire_block"]
    lines = metrics(run)
    for r in lines:
        assert len(r["block_losses"]) == 2 and all(np.isfinite(r["block_losses"]))
        assert r["loss"] == pytest.approx(sum(r["block_losses"]), rel=1e-5)
    assert all(b < a for a, b in zip(lines[0]["block_losses"], lines[-1]["block_losses"], strict=True))
    assert summary["block_losses"] == lines[-1]["block_losses"]

    out, t = tensors(run / "model.apr"), tensors(teacher)
    for name in ("model.embed_tokens.weight", "model.norm.weight"):  # copied from the teacher, never trained
        assert np.array_equal(out[name], t[name]), name
    for name, value in out.items():
        if name.startswith("model.layers.") and "k_proj" not in name and "v_proj" not in name:
            start = teacher_counterpart(name, t, [0, 1], value.shape)
            assert not np.array_equal(start, value), name
    assert out["model.layers.0.self_attn.k_proj.weight"].shape == (16, 64)  # one KV head of 16
    # --checkpoint-every 0 (wall-time cadence, 10 min): only the final checkpoint, and the best one
    assert sorted(p.name for p in (run / "ckpt").glob("*.apr")) == ["best.apr", "ckpt-step-000020.apr"]


@pytest.mark.parametrize(
    ("mode", "keys", "learned"),
    [
        ("blockwise", "attention", ("self_attn.", "input_layernorm.")),
        ("blockwise", "ffn", ("mlp.", "post_attention_layernorm.")),
        ("logits", "ffn", ("mlp.", "post_attention_layernorm.")),
    ],
)
def test_keys_to_learn_freezes_exactly_the_other_parameters(tmp_path, teacher, shards, mode, keys, learned):
    opts = {**SMALL, "corpus": str(shards), "steps": 6, "mode": mode, "keys_to_learn": keys}
    summary = distill(teacher, tmp_path / "run", opts, **QUIET)
    out, t = tensors(tmp_path / "run" / "model.apr"), tensors(teacher)  # same shape: the init is the teacher
    changed = {n for n in out if not np.array_equal(out[n], t[n])}
    expected = {n for n in out if n.startswith("model.layers.") and n.split(".", 3)[3].startswith(learned)}
    assert changed == expected
    assert summary["learned_params"] == sum(out[n].size for n in expected)


def test_freeze_sets_requires_grad_and_entire_block_cannot_be_mixed():
    model = LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=300))
    learned = freeze(model, parse_keys("ffn,attention"))
    assert learned == [n for n, p in model.named_parameters() if n.startswith("model.layers.")]
    assert not model.model.embed_tokens.weight.requires_grad and not model.model.norm.weight.requires_grad
    assert len(freeze(model, None)) == len(list(model.parameters()))
    with pytest.raises(UsageError, match="do not mix"):
        parse_keys("entire_block,ffn")
    with pytest.raises(UsageError, match="choose from"):
        parse_keys("mlp")


# --- the student's initialization and the losses


def test_student_from_teacher_takes_every_other_layer_first_ffn_channels_and_pooled_kv_heads():
    torch.manual_seed(1)
    cfg = PRESETS["tiny"].with_overrides(vocab_size=300, num_layers=4)
    t = LoadedModel(Path("t.apr"), LlamaForCausalLM(cfg), {"tokenizer": {"kind": "bytes"}}, "0" * 64)
    opts = DistillConfig(student_layers=2, student_intermediate_size=100, student_kv_heads=1, init="teacher")
    plan = plan_student(opts, t)
    assert plan.layer_map == [0, 2]  # N = L/2: every other layer
    s = build_student(plan, t, "logits", lambda _m: None).state_dict()
    ts = t.model.state_dict()
    for i, j in enumerate(plan.layer_map):
        p, q = f"model.layers.{i}.", f"model.layers.{j}."
        assert torch.equal(s[p + "mlp.gate_proj.weight"], ts[q + "mlp.gate_proj.weight"][:100])
        assert torch.equal(s[p + "mlp.down_proj.weight"], ts[q + "mlp.down_proj.weight"][:, :100])
        assert torch.equal(s[p + "self_attn.q_proj.weight"], ts[q + "self_attn.q_proj.weight"])
        pooled = ts[q + "self_attn.k_proj.weight"].view(2, 16, 64).mean(0)
        assert torch.allclose(s[p + "self_attn.k_proj.weight"], pooled)
    assert torch.equal(s["model.embed_tokens.weight"], ts["model.embed_tokens.weight"])
    with pytest.raises(UsageError, match="blockwise"):
        plan_student(DistillConfig(student_layers=2, mode="blockwise", init="teacher"), t)
    with pytest.raises(UsageError, match="wider than the teacher"):
        plan_student(DistillConfig(student_intermediate_size=400, init="teacher"), t)


def test_logit_kd_loss_is_the_documented_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(2, 3, 11), torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
    loss, kd, ce = logit_kd_loss(s, t, y, temperature=3.0, alpha=0.25)
    pt, ps = torch.softmax(t / 3, -1), torch.softmax(s / 3, -1)
    manual_kd = (pt * (pt.log() - ps.log())).sum(-1).mean() * 9
    manual_ce = torch.nn.functional.cross_entropy(s.flatten(0, 1), y.flatten())
    assert torch.allclose(kd, manual_kd, atol=1e-5) and torch.allclose(ce, manual_ce)
    assert torch.allclose(loss, 0.25 * manual_kd + 0.75 * manual_ce, atol=1e-5)
    assert float(logit_kd_loss(s, s, y, 2.0, 1.0)[1]) == pytest.approx(0.0, abs=1e-6)


# --- the export can never be empty, a placeholder, or other than the trained student


@pytest.mark.parametrize(
    ("tamper", "said"),
    [
        (lambda w: {}, "0 tensors"),
        (lambda w: {k: torch.zeros_like(v) for k, v in w.items()}, "every value is zero"),
        (lambda w: {k: v + 1e-3 for k, v in w.items()}, "differ from the trained student"),
        (lambda w: dict(list(w.items())[:-1]), "tensor_count"),
    ],
    ids=["empty", "zeros", "not-the-trained-values", "a-tensor-missing"],
)
def test_an_export_that_is_not_the_trained_student_fails_with_exit_5(
    tmp_path, teacher, shards, monkeypatch, tamper, said
):
    import aprtool.train.export as export

    real = export.model_weights
    monkeypatch.setattr(export, "model_weights", lambda model: tamper(real(model)))
    run = tmp_path / "run"
    result = invoke("--teacher", teacher, "--out", run, "--corpus", shards, "--steps", "4", *SMALL_ARGS)
    assert result.exit_code == 5, result.output
    assert "EXPORT REJECTED" in result.stderr and said in result.stderr
    assert not (run / "model.apr").exists()  # nothing bad under the final name
    assert json.loads((run / "state.json").read_text())["status"] == "failed"
    assert verify_file(run / "ckpt" / "ckpt-step-000004.apr").valid  # the trained student is safe


def test_a_run_that_trained_cannot_export_its_initial_weights(tmp_path, teacher, shards, monkeypatch):
    """The 200-byte-placeholder case: steps ran, but the weights that would be exported never changed."""
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    result = invoke("--teacher", teacher, "--out", tmp_path / "run", "--corpus", shards, "--steps", "3", *SMALL_ARGS)
    assert result.exit_code == 5, result.output
    assert "still holds its initial value" in result.stderr and "placeholder" in result.stderr
    assert not (tmp_path / "run" / "model.apr").exists()


# --- crash safety and run identity, through the real command line


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, teacher, shards):
    args = ["--teacher", teacher, "--corpus", shards, "--steps", "150", "--checkpoint-every", "10",
            "--student-layers", "1", *SMALL_ARGS, "--eval-every", "50"]  # fmt: skip
    whole = run_cli("--out", tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "aprtool", "distill", "--out", str(run), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    latest = run / "ckpt" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "ckpt-step-000030.apr":
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert killed_at != "ckpt-step-000150.apr" and not (run / "model.apr").exists()
    assert json.loads((run / "state.json").read_text())["status"] == "running"

    refused = invoke("--out", run, *args)  # a fresh start must not silently mix with the killed run
    assert refused.exit_code == 2 and "--resume latest" in refused.stderr
    resumed = run_cli("--out", run, *args, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from ckpt-step-" in resumed.stderr
    a, b = tensors(tmp_path / "whole" / "model.apr"), tensors(run / "model.apr")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name  # bitwise
    strip = ("tokens_per_s", "wall_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in metrics(tmp_path / "whole")] == [
        {k: v for k, v in r.items() if k not in strip} for r in metrics(run)
    ]


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, teacher, shards):
    run = tmp_path / "run"
    args = ["--teacher", teacher, "--out", run, "--corpus", shards, "--steps", "100000", "--checkpoint-every", "0",
            *SMALL_ARGS]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "aprtool", "distill", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume latest" in err and "Traceback" not in err
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "interrupted" and "SIGTERM" in state["reason"] and state["step"] > 0
    assert state["resume"].endswith(f"--run-dir {run} --resume latest")
    assert verify_file(run / "ckpt" / state["checkpoints"]["latest"]).valid


def test_a_completed_run_is_skipped_force_reruns_and_another_run_is_refused(tmp_path, teacher, shards):
    run = tmp_path / "run"
    args = ["--teacher", teacher, "--out", run, "--corpus", shards, "--steps", "4", *SMALL_ARGS]
    first = distill(teacher, run, {**SMALL, "corpus": str(shards), "steps": 4}, **QUIET)
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "completed" and state["fingerprint"] == first["fingerprint"]
    before = (run / "model.apr").read_bytes()

    again = run_cli(*args, "--log-every", "1", "--checkpoint-every", "2")  # housekeeping: still the same run
    assert again.returncode == 0, again.stderr
    assert f"already completed (fingerprint {first['fingerprint'][:16]}" in again.stdout and "--force" in again.stdout
    assert "teacher held-out loss" not in again.stderr and (run / "model.apr").read_bytes() == before

    other = invoke(*args, "--temperature", "4")
    assert other.exit_code == 2 and "holds another run" in other.stderr and "--force" in other.stderr
    resumed = invoke(*args, "--resume", "latest", "--temperature", "4")
    assert resumed.exit_code == 2 and "temperature: checkpoint has 1.0, requested 4.0" in resumed.stderr

    forced = invoke(*args, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    summary = json.loads(forced.stdout)
    assert not summary["skipped"] and summary["trained_steps"] == 4 and summary["fingerprint"] == first["fingerprint"]
    assert "starting over" in forced.stderr

    (run / "model.apr").write_bytes(before[: len(before) // 2])  # a damaged export is not "completed"
    redone = invoke(*args)
    assert redone.exit_code == 0 and "exporting it again" in redone.stderr
    assert verify_file(run / "model.apr", strict=True).valid


def test_tokenizer_mismatches_are_clear_errors(tmp_path, teacher, shards):
    with open_apr(teacher) as f:
        weights = {n: np.array(f.numpy(n)) for n in f.names()}
        meta = dict(f.metadata)
    meta["tokenizer"] = {"kind": "bpe", "vocab_size": 257, "eos_id": 256, "file": "tokenizer.json", "sha256": "ab"}
    write_apr(tmp_path / "student.apr", weights, meta)
    result = run_cli("--teacher", teacher, "--out", tmp_path / "r1", "--corpus", shards,
                     "--student", tmp_path / "student.apr")  # fmt: skip
    assert result.returncode == 2 and "tokenizer kind: teacher 'bytes', student 'bpe'" in result.stderr

    text = tmp_path / "text"
    text.mkdir()
    for name in ("textwrap.py", "shlex.py", "glob.py", "this.py"):
        shutil.copyfile(STDLIB / name, text / name)
    bpe = tmp_path / "bpe-shards"
    prepare_corpus(text, bpe, tokenizer="bpe", vocab_size=300)
    result = invoke("--teacher", teacher, "--out", tmp_path / "r2", "--corpus", bpe)
    assert result.exit_code == 2 and "not the teacher's" in result.stderr and "kind" in result.stderr
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()  # a refused run leaves nothing
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "notes.txt").write_text("mine")
    result = invoke("--teacher", teacher, "--out", tmp_path / "r3", "--corpus", bpe)
    assert result.exit_code == 2 and [p.name for p in (tmp_path / "r3").iterdir()] == ["notes.txt"]


def test_a_bpe_teacher_tokenizes_plain_text_with_its_own_tokenizer(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for name in ("textwrap.py", "shlex.py", "glob.py", "this.py"):
        shutil.copyfile(STDLIB / name, text / name)
    pretrain(tmp_path / "t", {"size": "tiny", "tokenizer": "bpe", "vocab_size": 300, "seq_len": 32, "batch_size": 2,
                              "steps": 2, "eval_tokens": 256, "corpus": str(text)}, **QUIET)  # fmt: skip
    alone = tmp_path / "alone"  # no run directory beside it: the corpus must be tokenized from text
    alone.mkdir()
    shutil.copyfile(tmp_path / "t" / "model.apr", alone / "teacher.apr")
    with open_apr(alone / "teacher.apr") as f:
        recorded = f.metadata["tokenizer"]
    other = tmp_path / "other"  # the user's own text, not the teacher's
    other.mkdir()
    for name in ("fnmatch.py", "bisect.py", "heapq.py"):
        shutil.copyfile(STDLIB / name, other / name)
    out = tmp_path / "s"
    summary = distill(alone / "teacher.apr", out, {**SMALL, "corpus": str(other), "steps": 2, "seq_len": 32},
                      **QUIET)  # fmt: skip
    assert summary["steps"] == 2
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == recorded["sha256"] and manifest["tokenizer"]["kind"] == "bpe"
    assert hashlib.sha256((out / "data" / "tokenizer.json").read_bytes()).hexdigest() == recorded["sha256"]
    with open_apr(out / "model.apr") as f:
        assert f.metadata["tokenizer"]["sha256"] == recorded["sha256"]
    assert verify_file(out / "model.apr", strict=True).valid


def test_students_from_a_file_and_from_scratch(tmp_path, teacher, shards):
    opts = {**SMALL, "corpus": str(shards), "steps": 4}
    from_file = distill(teacher, tmp_path / "file", {**opts, "student": str(teacher)}, **QUIET)
    assert from_file["init"] == "file" and from_file["params"] == from_file["teacher_params"]
    scratch = distill(teacher, tmp_path / "scratch", {**opts, "student_size": "tiny", "student_layers": 1}, **QUIET)
    assert scratch["init"] == "scratch" and scratch["steps"] == 4
    with open_apr(scratch["model"]) as f:
        assert f.metadata["num_layers"] == 1 and f.metadata["distillation"]["layer_map"] is None


def test_a_non_finite_block_loss_is_reported_by_block(tmp_path, teacher, shards):
    """A teacher whose second block overflows: the error names block 1 and only block 1."""
    with open_apr(teacher) as f:
        weights = {n: np.array(f.numpy(n)) for n in f.names()}
        meta = dict(f.metadata)
    weights["model.layers.1.mlp.down_proj.weight"] *= np.float32(1e38)
    bad = tmp_path / "teacher" / "model.apr"
    bad.parent.mkdir()
    write_apr(bad, weights, meta)
    opts = {**SMALL, "corpus": str(shards), "steps": 4, "mode": "blockwise"}
    with pytest.raises(IntegrityError, match=r"non-finite loss in block 1 \(") as info:
        distill(bad, tmp_path / "run", opts, **QUIET)
    assert "block 0" not in str(info.value)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "failed"


def test_option_errors_exit_2_before_any_work(tmp_path, teacher):
    for extra, said in [
        (["--keys-to-learn", "entire_block,ffn"], "do not mix"),
        (["--mode", "bypass"], "'bypass' is not one of 'logits', 'blockwise'"),
        (["--alpha", "1.5"], "between 0 and 1"),
        (["--student-size", "tiny", "--init", "teacher"], "from scratch"),
        (["--student", teacher, "--student-layers", "1"], "drop --student-layers"),
        (["--resume", "latest", "--force"], "choose one"),
    ]:
        invoked = invoke("--teacher", teacher, "--out", tmp_path / "r", *extra)
        assert invoked.exit_code == 2 and said in invoked.stderr, (extra, invoked.output)
    assert not (tmp_path / "r").exists()
    missing = run_cli("--teacher", tmp_path / "nope.apr", "--out", tmp_path / "r")
    assert missing.returncode == 3 and "no such file" in missing.stderr and missing.stderr.count("\n") == 1


def test_spellings_that_train_the_same_parameters_are_one_run():
    from aprtool.distill.config import DistillConfig, identity

    whole = identity(DistillConfig(mode="blockwise"))
    for keys in ("entire_block", "attention,ffn", "ffn, attention"):
        assert identity(DistillConfig(mode="blockwise", keys_to_learn=keys)) == whole, keys
    assert identity(DistillConfig(mode="blockwise", keys_to_learn="attention")) != whole
    assert identity(DistillConfig(mode="logits", keys_to_learn="attention,ffn")) != identity(DistillConfig())
