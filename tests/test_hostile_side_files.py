"""Hostile files, round 3 (issue #26): side-file JSON (one reader for all: size cap, deep nesting, bad UTF-8),
an HF index's weight_map checked before use, non-finite numbers in --json, run files read a line at a time,
and --bits given twice. Each case is crafted here and must be one line with its documented exit code."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures import foreign as F
from tests.test_hostile import one_line_error
from tests.test_real_data import one_line_error as after_progress

DEEP = "[" * 100_000 + "]" * 100_000  # deep enough to exhaust the stack of a recursive parser
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "models" / "tiny-bytes.apr"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return F.hf_folder(tmp_path_factory.mktemp("hf") / "m", "LlamaForCausalLM")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "m"))


@pytest.mark.parametrize("text", [DEEP.encode(), b'{"a": ' * 50_000, b"\xff\xfe not utf-8", b"[1, 2]", b"1" * 5000])
def test_an_hf_config_json_that_is_not_an_object_is_one_line(cli, tmp_path, folder, text):
    m = _copy(folder, tmp_path)
    (m / "config.json").write_bytes(text)
    one_line_error(cli("eval", m), 4, "config.json")
    one_line_error(cli("export", m, "--to", "apr", "-o", tmp_path / "x.apr"), 4, "config.json")
    assert not (tmp_path / "x.apr").exists()


def test_a_config_json_beside_a_safetensors_file_that_is_deep_is_one_line(cli, tmp_path, folder):
    m = _copy(folder, tmp_path)
    (m / "config.json").write_text(DEEP)
    one_line_error(cli("inspect", m / "model.safetensors"), 4, "config.json")


def _sharded(folder: Path, tmp_path: Path, weight_map: object) -> Path:
    m = _copy(folder, tmp_path)
    (m / "model.safetensors").rename(m / "model-00001-of-00001.safetensors")
    (m / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return m


@pytest.mark.parametrize(
    "bad",
    [{"a": ["model-00001-of-00001.safetensors"]}, {"a": {"x": 1}}, {"a": 7}, {"a": "x\0.safetensors"},
     {"a": "../outside.safetensors"}, {"a": ""}, {"a": 1, "b": "x"}],
)  # fmt: skip
def test_an_index_weight_map_value_is_checked_before_it_is_used(cli, tmp_path, folder, bad):
    m = _sharded(folder, tmp_path, bad)
    one_line_error(cli("inspect", m), 4, "model.safetensors.index.json")


def test_a_deep_index_is_one_line(cli, tmp_path, folder):
    m = _sharded(folder, tmp_path, {})
    (m / "model.safetensors.index.json").write_text(DEEP)
    one_line_error(cli("inspect", m), 4, "model.safetensors.index.json")


def test_a_prepared_manifest_that_is_deep_is_one_line(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(DEEP)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", data, "--size", "tiny", "--steps", "1")
    one_line_error(r, 4, "manifest.json")


def test_a_run_status_that_is_deep_or_not_an_object_reads_as_unreadable(cli, tmp_path):
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    for text in (DEEP, "[]", '{"status": [1]}'):
        (run / "status.json").write_text(text)
        r = cli("runs", run, "--json")
        assert r.code == 0, r.stderr
        assert r.json()["status"] == "unreadable"


def test_a_distill_state_that_is_deep_is_one_line(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.json").write_text(DEEP)
    (tmp_path / "corpus").mkdir()
    corpus = F.small_corpus(tmp_path / "corpus")
    r = cli("distill", "--teacher", MODEL, "--run-dir", out, "--corpus", corpus, "--steps", "1")
    after_progress(r, 4, "state.json")


def test_plot_skips_deep_and_huge_metrics_lines(cli, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    good = [json.dumps({"step": s, "loss": 3.0 - s / 10, "lr": 0.001}) for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("\n".join([good[0], DEEP, good[1], "9" * 5000, good[2]]) + "\n")
    r = cli("plot", run, "-o", tmp_path / "c.png", "--json")
    assert r.code == 0, r.stderr


def test_resume_keeps_the_metrics_lines_of_its_steps_and_drops_torn_deep_and_overlong_ones(tmp_path):
    from aprtool.train.metrics import MAX_LINE, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join([lines[0], DEEP, "x" * (3 * MAX_LINE), lines[1], '{"step": "2"}', lines[2],
                               lines[3], '{"step": 5, "lo']))  # fmt: skip
    truncate_metrics(path, 3)
    assert path.read_text().splitlines() == lines[:3]


def _strict(text: str) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_never_holds_nan_or_infinity(cli, tmp_path):
    import gguf

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_float32("test.nan", math.nan)
    w.add_float32("test.inf", math.inf)
    w.add_float64("test.minus_inf", -math.inf)
    w.add_tensor("x", np.array([[np.nan, np.inf], [1.0, -np.inf]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("inspect", path, "--json", "--stats")
    assert r.code == 0, r.stderr
    document = _strict(r.stdout)
    text = json.dumps(document)
    assert '"NaN"' in text and '"Infinity"' in text and '"-Infinity"' in text


def test_finite_keeps_every_finite_value_and_names_the_others():
    from aprtool.cli._common import finite

    value = {"a": [1.5, math.nan, {"b": -math.inf}], "c": (math.inf, 2), "d": "x", "e": None, "f": 3}
    assert finite(value) == {"a": [1.5, "NaN", {"b": "-Infinity"}], "c": ["Infinity", 2], "d": "x", "e": None,
                             "f": 3}  # fmt: skip


@pytest.mark.parametrize("bits", ["mlp=5,mlp=6", "6,7", "default=6,6"])
def test_bits_given_twice_for_one_kind_is_refused(cli, tmp_path, bits):
    one_line_error(cli("compress", MODEL, "-o", tmp_path / "x.apr", "--bits", bits), 2, "--bits", "twice")
    assert not (tmp_path / "x.apr").exists()


HEAD_COUNT = "llama.attention.head_count"


def _gguf_with_heads(path: Path, add_heads, q_shape=(8, 4)) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    add_heads(w)
    w.add_head_count_kv(1)
    w.add_tensor("blk.0.attn_q.weight", np.ones(q_shape, np.float32))
    w.add_tensor("blk.0.attn_k.weight", np.ones((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "kind, value",
    [("uint32", 0), ("uint32", 3), ("uint64", 2**63), ("int32", -2), ("string", "4"), ("float32", 2.0)],
    ids=["zero", "non-divisor", "2^63", "negative", "string", "float"],
)
def test_diff_of_a_gguf_with_a_hostile_head_count_is_one_line(cli, tmp_path, kind, value):
    bad = _gguf_with_heads(tmp_path / "bad.gguf", lambda w: getattr(w, f"add_{kind}")(HEAD_COUNT, value))
    good = _gguf_with_heads(tmp_path / "good.gguf", lambda w: w.add_uint32(HEAD_COUNT, 2))
    r = cli("diff", good, bad)
    assert r.code == 4, (r.code, r.stdout, r.stderr)
    assert len([x for x in r.stderr.splitlines() if x.strip()]) == 1


def _with_tokenizer(tmp_path: Path, entry: dict) -> Path:
    """The tiny fixture model, its tokenizer entry replaced by `entry` (written by aprtool's own writer)."""
    import aprtool

    with aprtool.open_apr(MODEL) as f:
        tensors = {n: f.numpy(n).copy() for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    vocab = metadata["tokenizer"]["vocab_size"]
    path = tmp_path / "m.apr"
    aprtool.write_apr(path, tensors, {**metadata, "tokenizer": {"kind": "hf", "vocab_size": vocab, **entry}})
    return path


def test_compress_refuses_an_embedded_tokenizer_that_does_not_match_its_sha256(cli, tmp_path):
    tok = F.bytelevel_tokenizer(300, specials=("<|endoftext|>",)).to_str()
    model = _with_tokenizer(tmp_path, {"json": tok, "sha256": "0" * 64, "eos_id": 0})
    out = tmp_path / "m.int6.apr"
    one_line_error(cli("compress", model, "-o", out), 4, "sha256")
    assert not out.exists()


@pytest.mark.parametrize("text", [5, ["a"], {"x": 1}])
def test_verify_fails_an_embedded_tokenizer_that_is_not_text(cli, tmp_path, text):
    model = _with_tokenizer(tmp_path, {"json": text, "sha256": "0" * 64})
    r = cli("verify", model, "--json")
    assert r.code == 4, (r.code, r.stdout, r.stderr)
    assert not r.json()["valid"]


def test_plot_skips_a_value_too_large_for_a_float(tmp_path):
    from aprtool.train.plot import read_curves

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": ' + "9" * 400 + '}\n{"step": 2, "loss": 2.5}\n')
    curves = read_curves(run)
    assert curves.series["loss"] == [(2, 2.5)]


def test_resume_with_a_fifo_for_metrics_is_one_line_not_a_hang(cli, tmp_path):
    import os

    run = tmp_path / "run"
    args = ("--size", "tiny", "--tokenizer", "bytes", "--seq-len", "64", "--batch-size", "2", "--corpus")
    (tmp_path / "c").mkdir()
    r = cli("pretrain", "--run-dir", run, *args, F.small_corpus(tmp_path / "c"), "--steps", "2", "--json")
    assert r.code == 0, r.stderr
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    r = cli("pretrain", "--run-dir", run, "--resume", "latest", "--steps", "4", timeout=120)
    after_progress(r, 3, "metrics.jsonl", "FIFO")


@pytest.mark.parametrize("command", ["compress", "export"])
def test_a_safetensors_metadata_aprtool_string_is_one_line_and_nothing_is_written(cli, tmp_path, command):
    from safetensors.numpy import save_file

    src = tmp_path / "m.safetensors"
    save_file({"w": np.ones((64, 64), np.float32)}, str(src), metadata={"aprtool": "not our records"})
    out = tmp_path / "out.apr"
    extra = ("--to", "apr") if command == "export" else ("--min-elements", "16")
    one_line_error(cli(command, src, "-o", out, *extra), 4, "metadata.aprtool")
    assert not out.exists()


def _model_of_300_rows(tmp_path: Path, text: str, vocab_size: int) -> Path:
    """The tiny fixture model with a 300-row embedding and `text` embedded as its tokenizer (sha256 right)."""
    import hashlib

    import aprtool

    with aprtool.open_apr(MODEL) as f:
        tensors = {n: f.numpy(n).copy() for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            t = tensors[name]
            tensors[name] = np.concatenate([t, np.zeros((300 - t.shape[0], t.shape[1]), t.dtype)])
    entry = {"kind": "hf", "vocab_size": vocab_size, "eos_id": 256, "json": text,
             "sha256": hashlib.sha256(text.encode()).hexdigest()}  # fmt: skip
    path = tmp_path / "m.apr"
    aprtool.write_apr(path, tensors, {**metadata, "vocab_size": 300, "tokenizer": entry})
    return path


def _tokenizer_case(case: str) -> tuple[str, int]:
    good = F.bytelevel_tokenizer(280, specials=("<|endoftext|>",)).to_str()
    if case == "not json":
        return "{not json", 280
    if case == "more tokens than rows":
        return F.bytelevel_tokenizer(600, specials=("<|endoftext|>",)).to_str(), 280
    if case == "vocab_size disagrees":
        return good, 290
    if case == "merge of unknown tokens":
        data = json.loads(good)
        data["model"]["merges"].append(["zzq", "qqz"])
        return json.dumps(data), 280
    if case == "subword prefix no merge has":  # tokenizers 0.23 aborts the process (a Rust panic) on it
        data = json.loads(good)
        data["model"]["continuing_subword_prefix"] = "##"
        return json.dumps(data), 280
    if case == "good":
        return good, 280
    data = json.loads(good)  # "id beyond the rows": 280 tokens, one of them numbered past the embedding
    token = next(t for t, i in data["model"]["vocab"].items() if i == 200)
    data["model"]["vocab"][token] = 299 + 1000
    return json.dumps(data), 280


@pytest.mark.parametrize("to", ["hf", "gguf"])
@pytest.mark.parametrize("case", ["not json", "more tokens than rows", "vocab_size disagrees",
                                  "merge of unknown tokens", "id beyond the rows",
                                  "subword prefix no merge has"])  # fmt: skip
def test_export_checks_the_tokenizer_against_the_model_before_writing(cli, tmp_path, case, to):
    text, vocab_size = _tokenizer_case(case)
    model = _model_of_300_rows(tmp_path, text, vocab_size)
    out = tmp_path / f"out.{to}"
    one_line_error(cli("export", model, "-o", out, "--to", to), 4, "tokenizer")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.apr"]


def test_eval_refuses_a_tokenizer_that_would_abort_the_process(cli, tmp_path):
    model = _model_of_300_rows(tmp_path, *_tokenizer_case("subword prefix no merge has"))
    (tmp_path / "text").mkdir()
    one_line_error(cli("eval", model, "--corpus", F.small_corpus(tmp_path / "text")), 4, "continuing_subword_prefix")


def test_export_publishes_a_tokenizer_that_fits(cli, tmp_path):
    from tokenizers import Tokenizer

    model = _model_of_300_rows(tmp_path, *_tokenizer_case("good"))
    r = cli("export", model, "-o", tmp_path / "hf", "--to", "hf")
    assert r.code == 0, r.stderr
    assert Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).get_vocab_size() == 280
