"""Model files and checkpoints whose metadata lies (issue #11 items 3 and 6).

Metadata is checked before anything is built: a wrong type, a value out of range, a size that would
allocate terabytes or a tensor that does not fit the architecture is exit 4 naming the field. A path
written inside a file (a tokenizer file, a corpus directory) is never opened: a FIFO is planted at
each such path, so a reader that opened it would hang the test instead of passing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import one_line_error, snapshot

import aprtool
from aprtool.container.tokenizer_text import embedded_text
from aprtool.data.tokenizer import BpeTokenizer
from aprtool.errors import EXIT_FAILED, EXIT_INVALID, AprError
from aprtool.evaluate.bpb import evaluate_bpb
from aprtool.interop.export import export_file
from aprtool.model.llama import PRESETS, LlamaForCausalLM

TINY = PRESETS["tiny"].with_overrides(vocab_size=300)


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory) -> bytes:
    text = Path(json.__file__).read_text()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    BpeTokenizer.train([text], 300).save(path)
    return path.read_bytes()


def write_model(directory: Path, tokenizer_json: bytes | None = None, *, tensors=None, **changes) -> Path:
    """A tiny Llama model file as pretrain writes it (bytes tokenizer, or BPE with tokenizer.json beside)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY)
    if tokenizer_json is None:
        tok = {"kind": "bytes", "vocab_size": 257, "eos_id": 256, "file": None}
    else:
        (directory / "tokenizer.json").write_bytes(tokenizer_json)
        tok = {"kind": "bpe", "vocab_size": 300, "eos_id": 0, "file": "tokenizer.json",
               "sha256": hashlib.sha256(tokenizer_json).hexdigest()}  # fmt: skip
    metadata = {"architecture": "LlamaForCausalLM", "model_type": "llama", **TINY.to_metadata(), "tokenizer": tok}
    for key, value in changes.items():
        if value is ...:
            metadata.pop(key)
        else:
            metadata[key] = value
    path = directory / "model.apr"
    aprtool.write_apr(path, model.weights() if tensors is None else tensors, metadata)
    return path


# ---------------------------------------------------------------- 3. no path from a file is opened


@pytest.fixture
def trap(tmp_path) -> Path:
    """A FIFO: opening it for reading blocks forever, so any reader that follows the path hangs."""
    path = tmp_path / "trap"
    os.mkfifo(path)
    return path


def test_a_tokenizer_path_in_the_metadata_is_never_opened(cli, tmp_path, bpe_json, trap):
    model = write_model(tmp_path / "m", bpe_json)
    with aprtool.open_apr(model) as f:
        tensors = {n: f.numpy(n) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    metadata["tokenizer"]["file"] = str(trap)  # and the real one stays beside the model, by its fixed name
    aprtool.write_apr(model, tensors, metadata)
    r = cli("export", model, "-o", tmp_path / "hf", "--to", "hf", timeout=60)
    assert r.code == 0, r.stderr
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == bpe_json
    (tmp_path / "out").mkdir()
    r = cli("compress", model, "-o", tmp_path / "out" / "m.int6.apr", timeout=60)
    assert r.code == 0, r.stderr
    with aprtool.open_apr(tmp_path / "out" / "m.int6.apr") as f:  # embedded from the sidecar, not the path
        assert embedded_text(f.metadata["tokenizer"]).encode() == bpe_json
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    (tmp_path / "m" / "tokenizer.json").unlink()  # now only the metadata's path would lead to a tokenizer
    for args in (["eval", model], ["export", model, "-o", tmp_path / "hf2", "--to", "hf"]):
        one_line_error(cli(*args, timeout=60), 3, "tokenizer.json")
    assert not (tmp_path / "hf2").exists()


def test_a_tokenizer_that_does_not_match_its_sha256_is_refused(cli, tmp_path, bpe_json):
    model = write_model(tmp_path / "m", bpe_json)
    (tmp_path / "m" / "tokenizer.json").write_bytes(bpe_json.replace(b'"<|endoftext|>"', b'"<|endoftexT|>"'))
    one_line_error(cli("eval", model), 4, "sha256")


def test_distill_shows_but_never_reads_the_corpus_a_teacher_records(cli, tmp_path, trap):
    corpus = tmp_path / "secret-corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("private text " * 100)
    (corpus / "b.txt").write_text("more private text " * 100)
    teacher = write_model(tmp_path / "teacher", training_summary={"config": {"corpus": str(corpus), "seq_len": 32}})
    r = cli("distill", "--teacher", teacher, "--out", tmp_path / "student", "--steps", "1")
    one_line_error(r, 2, "secret-corpus", "--corpus", "never opens")
    assert not (tmp_path / "student" / "data").exists()


def test_pretrain_resume_does_not_read_the_corpus_its_checkpoint_names(cli, tmp_path):
    import shutil
    import sysconfig

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py"):
        shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / name, corpus / name)
    run = tmp_path / "run"
    args = ["--size", "tiny", "--tokenizer", "bytes", "--seq-len", "32", "--batch-size", "2", "--eval-tokens", "256"]
    first = cli("pretrain", "--run-dir", run, "--corpus", corpus, "--steps", "2", "--checkpoint-every", "1", *args)
    assert first.code == 0, first.stderr
    shutil.rmtree(run / "data")  # the run's own copy is gone: only the checkpoint still names the corpus
    r = cli("pretrain", "--run-dir", run, "--resume", "latest", "--steps", "3")
    one_line_error(r, 2, str(corpus), "--corpus")
    assert not (run / "data").exists()
    again = cli("pretrain", "--run-dir", run, "--resume", "latest", "--steps", "3", "--corpus", corpus)
    assert again.code == 0, again.stderr


def test_a_manifest_cannot_point_at_other_files(cli, tmp_path, trap):
    from aprtool.data.prepare import prepare_corpus

    text = tmp_path / "text"
    text.mkdir()
    for i in range(3):
        (text / f"{i}.txt").write_text(f"document {i} " * 200)
    prepared = prepare_corpus(text, tmp_path / "prepared", tokenizer="bytes", val_fraction=0.4)
    manifest = json.loads((prepared.directory / "manifest.json").read_text())
    model = write_model(tmp_path / "m")
    for bad in (str(trap), "../trap", "train-0000.tok/../../trap"):
        manifest["splits"]["val"][0]["file"] = bad
        (prepared.directory / "manifest.json").write_text(json.dumps(manifest))
        one_line_error(cli("eval", model, "--corpus", prepared.directory, timeout=60), 4, "shard name")


def test_shard_tokens_outside_the_vocabulary_are_refused(cli, tmp_path):
    from aprtool.data.prepare import prepare_corpus

    text = tmp_path / "text"
    text.mkdir()
    for i in range(3):
        (text / f"{i}.txt").write_text(f"document {i} " * 200)
    prepared = prepare_corpus(text, tmp_path / "prepared", tokenizer="bytes", val_fraction=0.4)
    shard = prepared.shard_paths("val")[0]
    data = bytearray(shard.read_bytes())
    data[40:42] = (60000).to_bytes(2, "little")
    shard.write_bytes(bytes(data))
    one_line_error(cli("eval", write_model(tmp_path / "m"), "--corpus", prepared.directory), 4, "vocabulary")


# ---------------------------------------------------------------- 6. malformed model metadata: exit 4 naming the field


def wrong_q_proj() -> dict:
    weights = LlamaForCausalLM(TINY).weights()
    weights["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 32)
    return {"tensors": weights}


def integer_weight() -> dict:
    weights = LlamaForCausalLM(TINY).weights()
    weights["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    return {"tensors": weights}


def missing_tensor() -> dict:
    weights = LlamaForCausalLM(TINY).weights()
    del weights["model.layers.1.mlp.up_proj.weight"]
    return {"tensors": weights}


MALFORMED = {
    "num_heads zero": ({"num_heads": 0}, "num_heads"),
    "num_heads a string": ({"num_heads": "4"}, "num_heads"),
    "hidden_size a float": ({"hidden_size": 64.5}, "hidden_size"),
    "hidden_size a bool": ({"hidden_size": True}, "hidden_size"),
    "vocab_size of 256 TiB": ({"vocab_size": 2**45}, "vocab_size"),
    "max positions 2^40": ({"max_position_embeddings": 2**40}, "max_position_embeddings"),
    "num_layers a list": ({"num_layers": [2]}, "num_layers"),
    "kv heads do not divide": ({"num_kv_heads": 3}, "num_kv_heads"),
    "odd head size": ({"num_heads": 64}, "num_heads"),
    "rms_norm_eps zero": ({"rms_norm_eps": 0}, "rms_norm_eps"),
    "rope_theta negative": ({"rope_theta": -1.0}, "rope_theta"),
    "tie a string": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    "missing field": ({"intermediate_size": ...}, "intermediate_size"),
    "another architecture": ({"architecture": "GPT2LMHeadModel"}, "architecture"),
    "q_proj of the wrong shape": (wrong_q_proj, "q_proj"),
    "integer weight": (integer_weight, "model.norm.weight"),
    "missing tensor": (missing_tensor, "up_proj"),
    "tokenizer not an object": ({"tokenizer": "bytes"}, "tokenizer"),
    "tokenizer kind unknown": ({"tokenizer": {"kind": "sentencepiece", "vocab_size": 300}}, "tokenizer.kind"),
    "tokenizer eos out of range": ({"tokenizer": {"kind": "bytes", "vocab_size": 257, "eos_id": 999}}, "eos_id"),
    "bpe tokenizer without sha256": ({"tokenizer": {"kind": "bpe", "vocab_size": 300, "eos_id": 0}}, "sha256"),
    "tokenizer bigger than the model": ({"tokenizer": {"kind": "bytes", "vocab_size": 4096}}, "vocab_size"),
    "val_fraction a string": ({"training_summary": {"config": {"val_fraction": "0.1"}}}, "val_fraction"),
}


EXPORT_REFUSES = ("another architecture", "missing field")


def malformed_model(tmp_path: Path, case: str) -> tuple[Path, str]:
    change, field = MALFORMED[case]
    change = change() if callable(change) else change
    return write_model(tmp_path / "m", **change), field


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_metadata_is_exit_4_naming_the_field(tmp_path, case):
    path, field = malformed_model(tmp_path, case)
    attempts = {"eval": lambda: evaluate_bpb(path), "export": lambda: export_file(path, tmp_path / "hf", "hf")}
    if field == "val_fraction":
        del attempts["export"]  # only eval reads the training split
    for command, attempt in attempts.items():
        with pytest.raises(AprError) as info:
            attempt()
        # export's documented exit 5: a model it cannot convert (not a Llama, or fields missing)
        expected = EXIT_FAILED if command == "export" and case in EXPORT_REFUSES else EXIT_INVALID
        assert info.value.exit_code == expected, (command, type(info.value).__name__, str(info.value))
        assert field in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("case", ["vocab_size of 256 TiB", "q_proj of the wrong shape", "num_heads zero"])
def test_malformed_model_metadata_through_the_cli(cli, tmp_path, case):
    path, field = malformed_model(tmp_path, case)
    before = snapshot(tmp_path)
    for args in (["eval", path], ["export", path, "-o", tmp_path / "x.gguf", "--to", "gguf"]):
        one_line_error(cli(*args), 4, field)
    r = cli("distill", "--teacher", path, "--out", tmp_path / "student", "--steps", "1")
    one_line_error(r, 4, field)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("student")} == before


def test_a_model_with_no_tokenizer_says_so_for_eval(cli, tmp_path):
    path = write_model(tmp_path / "m", tokenizer=...)
    one_line_error(cli("eval", path), 2, "names no tokenizer")


# ---------------------------------------------------------------- 6. malformed checkpoints (pretrain --resume PATH)


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    from aprtool.train.loop import pretrain

    corpus = tmp_path_factory.mktemp("ckcorpus")
    for i in range(4):
        (corpus / f"{i}.txt").write_text(f"line {i} of some text to learn\n" * 60)
    run = tmp_path_factory.mktemp("ckrun") / "run"
    cfg = {"size": "tiny", "tokenizer": "bytes", "corpus": str(corpus), "steps": 2, "seq_len": 32,
           "batch_size": 2, "eval_tokens": 256, "checkpoint_every": 1, "val_fraction": 0.3}  # fmt: skip
    pretrain(run, cfg, log=lambda _m: None)
    return run


def rewrite_checkpoint(src: Path, dst: Path, edit) -> Path:
    with aprtool.open_apr(src) as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    edit(tensors, metadata["training"])
    aprtool.write_apr(dst, tensors, metadata)
    return dst


CHECKPOINT_CASES = {
    "no config": (lambda t, m: m.pop("config"), "training.config"),
    "seq_len a string": (lambda t, m: m["config"].update(seq_len="32"), "seq_len"),
    "loader cursor a string": (lambda t, m: m["state"]["loader"].update(cursor="x"), "cursor"),
    "moment of the wrong shape": (
        lambda t, m: t.update({"__training__.optim.model.norm.weight.exp_avg": np.zeros(3, np.float32)}),
        "exp_avg",
    ),
    "python rng too short": (lambda t, m: t.update({"__training__.rng.python": np.zeros(5, np.int64)}), "rng.python"),
    "param_groups not a list": (lambda t, m: m["optimizer"].update(param_groups={"lr": 1}), "param_groups"),
    "rng metadata broken": (lambda t, m: m["rng"].update(python={"version": "x"}), "rng"),
    "moment stored as int32": (
        lambda t, m: t.update({k: t[k].astype(np.int32) for k in t if k.endswith("norm.weight.exp_avg")}),
        "int32",
    ),
    "no exp_avg_sq": (lambda t, m: [t.pop(k) for k in list(t) if k.endswith("norm.weight.exp_avg_sq")], "exp_avg_sq"),
    "numpy rng word beyond 32 bits": (lambda t, m: t["__training__.rng.numpy"].__setitem__(3, 1 << 40), "rng.numpy"),
    "python rng position out of range": (lambda t, m: t["__training__.rng.python"].__setitem__(-1, 10**6), "rng"),
    "numpy rng kind": (lambda t, m: m["rng"]["numpy"].update(kind="PCG64"), "rng"),
    "numpy rng pos a float": (lambda t, m: m["rng"]["numpy"].update(pos=1.5), "rng"),
    "numpy cached gaussian NaN": (lambda t, m: m["rng"]["numpy"].update(cached_gaussian="NaN"), "rng"),
    "python gauss_next a list": (lambda t, m: m["rng"]["python"].update(gauss_next=[1]), "rng"),
    "lr a string": (lambda t, m: m["optimizer"]["param_groups"][0].update(lr="0.1"), "param_groups"),
    "betas missing": (lambda t, m: m["optimizer"]["param_groups"][0].pop("betas"), "param_groups"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_malformed_checkpoint_is_refused_at_resume_with_exit_4(cli, tmp_path, checkpoint_run, case):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    edit, field = CHECKPOINT_CASES[case]
    crafted = rewrite_checkpoint(run / "ckpt" / "step-000001.apr", tmp_path / "crafted.apr", edit)
    r = cli("pretrain", "--run-dir", run, "--resume", crafted, "--steps", "3")
    one_line_error(r, 4, field)
