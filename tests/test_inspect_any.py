"""inspect / verify / diff / runs for every format a user holds (issue #12 §2): real files written by
aprtool's own export and compress, recognised by content, then damaged by hand."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import one_line_error

from aprtool import open_apr, write_apr
from aprtool.interop.export import export_file
from aprtool.model.llama import PRESETS, LlamaForCausalLM
from aprtool.ops.compress import CompressOptions, compress_file
from aprtool.train.loop import pretrain

BYTES_TOKENIZER = {"kind": "bytes", "vocab_size": 257, "eos_id": 256, "file": None}


def write_model(path: Path, seed: int = 0) -> None:
    cfg = PRESETS["tiny"].with_overrides(vocab_size=257, num_kv_heads=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    metadata = {"name": "inspect-test", "architecture": "LlamaForCausalLM", "model_type": "llama",
                "created_at": "1700000000", **cfg.to_metadata(), "tokenizer": BYTES_TOKENIZER}  # fmt: skip
    write_apr(path, model.weights(), metadata)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    out = {"apr": d / "model.apr"}
    write_model(out["apr"])
    for target, name in (("safetensors", "model.safetensors"), ("gguf", "model.gguf"), ("hf", "hf")):
        out[target] = d / name
        export_file(out["apr"], out[target], target, dtype="f32")
    out["int6"] = d / "model.int6.apr"
    compress_file(out["apr"], out["int6"], CompressOptions(codec="rans", min_elements=4096))
    return out


def inspect_json(cli, *args) -> dict:
    r = cli("inspect", "--json", *args)
    assert r.code == 0, r.stderr
    return r.json()


@pytest.mark.parametrize("kind", ["apr", "safetensors", "gguf", "hf", "int6"])
def test_inspect_reports_the_same_model_in_every_format(cli, files, kind):
    info = inspect_json(cli, files[kind])
    reference = inspect_json(cli, files["apr"])
    assert info["valid"] is True
    assert info["format"].lower().startswith({"int6": "apr", "hf": "hugging face"}.get(kind, kind))
    assert info["tensor_count"] == reference["tensor_count"]
    assert info["param_count"] == reference["param_count"]
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size"):
        assert info["architecture_fields"][field] == reference["architecture_fields"][field], field
    names = {t["name"] for t in info["tensors"]}
    assert len(names) == info["tensor_count"] and sum(info["dtypes"].values()) == info["tensor_count"]


def test_format_is_recognised_by_content_not_extension(cli, files, tmp_path):
    for kind, fmt in (("gguf", "GGUF"), ("safetensors", "safetensors"), ("apr", "APR")):
        disguised = tmp_path / f"{kind}.bin"
        shutil.copyfile(files[kind], disguised)
        assert inspect_json(cli, disguised)["format"].startswith(fmt)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model at all" * 4)
    one_line_error(cli("inspect", fake), 4, "unrecognised magic")


def test_tensor_listing_has_bits_and_stats_match_numpy(cli, files):
    info = inspect_json(cli, files["int6"], "--tensors", "--stats")
    rows = {t["name"]: t for t in info["tensors"]}
    emb = rows["model.embed_tokens.weight"]
    assert emb["dtype"] == "INT6_RANS" and 2.0 < emb["bits_per_weight"] < 6.5 and emb["codec"] == "rans"
    with open_apr(files["apr"]) as f:
        norm = np.array(f.numpy("model.norm.weight"))
    s = rows["model.norm.weight"]["stats"]
    assert s["min"] == pytest.approx(norm.min()) and s["max"] == pytest.approx(norm.max())
    assert s["mean"] == pytest.approx(norm.mean(), rel=1e-6) and s["zero_fraction"] == 0.0
    gguf = inspect_json(cli, files["gguf"], "--stats")
    assert all(t["stats"]["nonfinite"] == 0 for t in gguf["tensors"])
    r = cli("inspect", files["gguf"], "--tensors")
    assert r.code == 0 and "token_embd.weight" in r.stdout and "bits/w" in r.stdout


def test_verify_passes_every_format(cli, files):
    for kind in ("safetensors", "gguf", "hf"):
        r = cli("verify", "--deep", "--json", files[kind])
        assert r.code == 0, (kind, r.stdout, r.stderr)
        assert r.json()["valid"] is True


def _safetensors_header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def test_verify_deep_names_the_safetensors_tensor_with_nan(cli, files, tmp_path):
    bad = tmp_path / "nan.safetensors"
    raw = bytearray(files["safetensors"].read_bytes())
    n, header = _safetensors_header(files["safetensors"])
    start = 8 + n + header["model.norm.weight"]["data_offsets"][0]
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    bad.write_bytes(bytes(raw))
    assert cli("verify", bad).code == 0  # structure alone is fine
    r = cli("verify", "--deep", bad)
    assert r.code == 5 and "model.norm.weight" in r.stdout + r.stderr


def test_verify_refuses_truncated_and_overlapping_files(cli, files, tmp_path):
    for kind in ("safetensors", "gguf"):
        cut = tmp_path / f"cut.{kind}"
        cut.write_bytes(files[kind].read_bytes()[:-100])
        assert cli("verify", cut).code == 4, kind
        assert cli("inspect", cut).code == 4, kind
    n, header = _safetensors_header(files["safetensors"])
    names = [k for k in header if k != "__metadata__"]
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]  # two tensors, one byte range
    text = json.dumps(header).encode().ljust(n)
    overlap = tmp_path / "overlap.safetensors"
    overlap.write_bytes(files["safetensors"].read_bytes()[:8] + text + files["safetensors"].read_bytes()[8 + n :])
    assert cli("verify", overlap).code == 4


def test_diff_same_model_across_formats_exits_0(cli, files):
    for kind in ("apr", "safetensors", "gguf", "hf"):
        r = cli("diff", "--json", files["apr"], files[kind])
        assert r.code == 0, (kind, r.stdout, r.stderr)
        report = r.json()
        assert report["same"] and report["compared"] == inspect_json(cli, files["apr"])["tensor_count"]
        assert not report["only_in_a"] and not report["only_in_b"]


def test_diff_int6_against_float_shows_the_cost_and_exits_5(cli, files):
    r = cli("diff", "--json", files["apr"], files["int6"])
    assert r.code == 5
    rows = {t["name"]: t for t in r.json()["tensors"]}
    emb = rows["model.embed_tokens.weight"]
    assert emb["different"] and emb["dtype"] == ["F32", "INT6_RANS"]
    assert 0.99 < emb["cosine"] < 1.0 and 0 < emb["max_abs"] < 0.1
    assert cli("diff", files["apr"], files["int6"], "--atol", "1").code == 0


def test_diff_names_tensors_only_in_one_side_and_changed_metadata(cli, files, tmp_path):
    with open_apr(files["apr"]) as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = dict(f.metadata)
    tensors.pop("model.norm.weight")
    tensors["extra"] = np.zeros(3, np.float32)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:, :-1].copy()
    other = tmp_path / "other.apr"
    write_apr(other, tensors, metadata | {"name": "other"})
    report = cli("diff", "--json", files["apr"], other).json()
    assert report["only_in_a"] == ["model.norm.weight"] and report["only_in_b"] == ["extra"]
    assert "name" in report["metadata_changed"] and not report["same"]
    shape = [t for t in report["tensors"] if "shape" in t]
    assert [t["name"] for t in shape] == ["model.layers.0.mlp.up_proj.weight"]
    r = cli("diff", files["apr"], other)
    assert r.code == 5 and "only in A: model.norm.weight" in r.stdout


def test_diff_bad_atol_is_a_usage_error(cli, files):
    assert cli("diff", files["apr"], files["apr"], "--atol", "-1").code == 2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = {"size": "tiny", "tokenizer": "bytes", "steps": 6, "seq_len": 32, "batch_size": 2, "eval_tokens": 256,
           "eval_every": 2, "checkpoint_every": 2, "log_every": 2}  # fmt: skip
    pretrain(run, cfg, log=lambda _m: None)
    return run


def test_checkpoint_view_shows_training_facts_and_state_tensors_apart(cli, run):
    ckpt = run / "ckpt" / "step-000004.apr"
    info = inspect_json(cli, ckpt)
    assert info["training"]["step"] == 4 and info["training"]["val_loss"] > 0
    assert info["training"]["saved_at"] and info["training"]["tokens_seen"] == 4 * 2 * 32
    groups = info["tensor_groups"]
    model_tensors = inspect_json(cli, run / "model.apr")["tensor_count"]
    assert groups["model"] == model_tensors and groups["training_state"] > 0
    r = cli("inspect", ckpt)
    assert "training state" in r.stdout and "training step" in r.stdout


def test_runs_lists_checkpoints_with_latest_and_best(cli, run):
    info = cli("runs", "--json", run).json()
    assert info["latest"] == "step-000006.apr" and info["best"] == "best.apr" and info["valid"]
    steps = {r["file"]: r["step"] for r in info["checkpoints"]}
    assert steps["step-000002.apr"] == 2 and steps["step-000006.apr"] == 6
    assert all(r["verified"] for r in info["checkpoints"])
    assert inspect_json(cli, run)["checkpoints"] == info["checkpoints"]  # inspect RUN_DIR is the same view
    text = cli("runs", run).stdout
    assert "latest" in text and "best" in text


def test_runs_flags_a_damaged_checkpoint(cli, run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = copy / "ckpt" / "step-000002.apr"
    raw = bytearray(target.read_bytes())
    raw[-200] ^= 0x01
    target.write_bytes(bytes(raw))
    r = cli("runs", "--json", copy)
    assert r.code == 5
    rows = {row["file"]: row for row in r.json()["checkpoints"]}
    assert rows["step-000002.apr"]["verified"] is False and rows["step-000004.apr"]["verified"] is True


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_reference_models_in_fixtures_are_valid_self_contained_and_scorable(cli, tmp_path):
    from fixtures.corpora import materialize

    model, packed = FIXTURES / "models" / "tiny-bytes.apr", FIXTURES / "models" / "tiny-bytes.int6.apr"
    r = cli("verify", "--deep", "--json", model, packed, "--require", "tokenizer.kind=bytes")
    assert r.code == 0, r.stdout
    corpus = materialize("tiny", tmp_path / "corpus")
    scores = [cli("eval", m, "--corpus", corpus, "--json").json()["bits_per_byte"] for m in (model, packed)]
    assert 0 < scores[0] < 6 and abs(scores[1] - scores[0]) < 0.1  # trained (bytes: 8 bits untrained)
    assert cli("diff", model, packed, "--atol", "0.5").code == 0


def test_export_imports_an_hf_folder_and_a_gguf_by_content(cli, files, tmp_path):
    back = tmp_path / "back.apr"
    r = cli("export", files["hf"], "-o", back, "--to", "apr")
    assert r.code == 0, r.stderr
    assert cli("diff", files["apr"], back).code == 0
    disguised = tmp_path / "model.safetensors"  # a GGUF file whatever its name says
    shutil.copyfile(files["gguf"], disguised)
    r = cli("export", disguised, "-o", tmp_path / "x.apr", "--to", "apr")
    assert r.code == 0, r.stderr
    assert cli("diff", files["apr"], tmp_path / "x.apr").code == 0  # f32 GGUF: the same values, q/k un-permuted
    with open_apr(tmp_path / "x.apr") as f:
        assert f.metadata["source"]["format"] == "gguf" and f.metadata["tokenizer"]["kind"] == "hf"


def test_verify_require_works_on_every_format(cli, files):
    for kind in ("apr", "safetensors", "gguf", "hf"):
        assert cli("verify", files[kind], "--require", "hidden_size=64").code == 0, kind
        r = cli("verify", files[kind], "--require", "hidden_size=65")
        assert r.code == 5 and "hidden_size=64, required 65" in r.stdout + r.stderr, (kind, r.stdout)
