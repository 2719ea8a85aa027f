"""export: safetensors / HF / GGUF / APR out, safetensors in; bit-exact round trips, real loaders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aprtool import open_apr, verify_file, write_apr
from aprtool.codecs import dequantize
from aprtool.errors import MetadataError, UsageError
from aprtool.interop.export import export_file
from aprtool.model.llama import PRESETS, LlamaForCausalLM
from aprtool.ops.compress import CompressOptions, compress_file

BYTES_TOKENIZER = {"kind": "bytes", "vocab_size": 257, "eos_id": 256, "file": None}


def make_model(path: Path, *, tie: bool = True, kv_heads: int = 2, seed: int = 0, **extra) -> LlamaForCausalLM:
    cfg = PRESETS["tiny"].with_overrides(vocab_size=257, tie_word_embeddings=tie, num_kv_heads=kv_heads)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1 so a mix-up between tensors shows
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    metadata = {
        "name": "export-test",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "created_at": "1700000000",
        **cfg.to_metadata(),
        "tokenizer": BYTES_TOKENIZER,
        **extra,
    }
    write_apr(path, model.weights(), metadata)
    return model


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    with open_apr(path) as f:
        return {n: np.array(f.numpy(n)) for n in f.names()}


def test_apr_to_safetensors_to_apr_is_bit_exact_for_every_float_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.f32": rng.standard_normal((4, 6)).astype(np.float32),
        "b.f16": rng.standard_normal(9).astype(np.float16),
        "c.f64": rng.standard_normal((2, 3)),
        "d.bf16": torch.randn(5, 3).bfloat16(),
        "e.scalar": np.array(2.5, np.float32),
    }
    meta = {"name": "rt", "created_at": "1700000000", "nested": {"k": [1, 2.5, None]}, "architecture": "x"}
    write_apr(tmp_path / "a.apr", tensors, meta)
    export_file(tmp_path / "a.apr", tmp_path / "m.safetensors", "safetensors")
    export_file(tmp_path / "m.safetensors", tmp_path / "b.apr", "apr")
    a, b = tensors_of(tmp_path / "a.apr"), tensors_of(tmp_path / "b.apr")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    with open_apr(tmp_path / "a.apr") as fa, open_apr(tmp_path / "b.apr") as fb:
        assert fa.metadata == fb.metadata
        assert fb.info("d.bf16").dtype.name == "BF16"
    assert (tmp_path / "a.apr").read_bytes() == (tmp_path / "b.apr").read_bytes()


def test_safetensors_import_keeps_metadata_and_config(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from fixtures.foreign import hf_folder

    hf_folder(tmp_path / "hf", "LlamaForCausalLM")
    save_file(load_file(str(tmp_path / "hf" / "model.safetensors")), str(tmp_path / "model.safetensors"),
              metadata={"format": "pt", "who": "hf"})  # fmt: skip
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    export_file(tmp_path / "model.safetensors", tmp_path / "m.apr", "apr")
    with open_apr(tmp_path / "m.apr") as f:
        assert f.metadata["who"] == "hf"
        assert f.metadata["hf_config"] == config
        assert (f.metadata["architecture"], f.metadata["num_layers"], f.metadata["num_kv_heads"]) == (
            "LlamaForCausalLM", 2, 2,
        )  # fmt: skip
        assert f.metadata["source"]["format"] == "safetensors"


def test_a_config_json_beside_tensors_that_are_no_model_is_refused_naming_the_field(cli, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2,
              "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1, "vocab_size": 2}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = cli("export", tmp_path / "model.safetensors", "-o", tmp_path / "m.apr", "--to", "apr")
    assert r.code == 4 and "intermediate_size" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m.apr").exists()


def test_training_state_is_never_exported(tmp_path):
    make_model(tmp_path / "m.apr")
    ckpt = tensors_of(tmp_path / "m.apr") | {"__training__.optim.x.exp_avg": np.ones(3, np.float32)}
    write_apr(tmp_path / "ckpt.apr", ckpt, {"architecture": "x", "training": {"step": 3}})
    export_file(tmp_path / "ckpt.apr", tmp_path / "m.safetensors", "safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("__training__")]  # noqa: SIM118
        assert "training" not in json.loads(f.metadata()["aprtool_metadata"])
    export_file(tmp_path / "ckpt.apr", tmp_path / "w.apr", "apr", weights_only=True)
    export_file(tmp_path / "ckpt.apr", tmp_path / "full.apr", "apr")
    with open_apr(tmp_path / "w.apr") as f:
        assert not [n for n in f.names() if n.startswith("__training__")] and "training" not in f.metadata
    with open_apr(tmp_path / "full.apr") as f:
        assert "__training__.optim.x.exp_avg" in f.names()


def test_int6_input_is_dequantized(tmp_path):
    make_model(tmp_path / "m.apr")
    compress_file(tmp_path / "m.apr", tmp_path / "q.apr", CompressOptions(min_elements=1000, compare=False))
    export_file(tmp_path / "q.apr", tmp_path / "q.safetensors", "safetensors")
    from safetensors.numpy import load_file

    got = load_file(str(tmp_path / "q.safetensors"))
    with open_apr(tmp_path / "q.apr") as f:
        encoded = [n for n in f.names() if f.info(n).dtype.name.startswith("INT6")]
        assert encoded
        for name in encoded:
            assert np.array_equal(got[name], dequantize(f, name))


@pytest.mark.parametrize(("tie", "kv_heads"), [(True, 2), (False, 4)], ids=["tied-gqa", "untied-mha"])
def test_hf_directory_loads_in_transformers_with_matching_logits(tmp_path, tie, kv_heads):
    transformers = pytest.importorskip("transformers")
    model = make_model(tmp_path / "m.apr", tie=tie, kv_heads=kv_heads).eval()
    report = export_file(tmp_path / "m.apr", tmp_path / "hf", "hf")
    names = sorted(Path(p).name for p in report["files"])
    assert names == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def f(x):\n    return 'é'\n"
    assert tok(text)["input_ids"] == list(text.encode())  # the bytes tokenizer, as HF sees it
    assert tok.decode(tok(text)["input_ids"]) == text


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_reads_back_every_tensor(tmp_path, dtype):
    gguf = pytest.importorskip("gguf")
    make_model(tmp_path / "m.apr", tie=False, kv_heads=2)
    export_file(tmp_path / "m.apr", tmp_path / "m.gguf", "gguf", dtype=dtype)
    source = tensors_of(tmp_path / "m.apr")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    back = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(back) == len(source)
    from aprtool.interop.gguf_io import gguf_name

    for name, want in source.items():
        got = back[gguf_name(name)]
        if name.endswith("q_proj.weight"):
            got = _unpermute(got, 4)
        elif name.endswith("k_proj.weight"):
            got = _unpermute(got, 2)
        tol = 0 if dtype == "f32" or want.ndim == 1 else 1e-3
        assert got.shape == want.shape, name
        assert np.allclose(got.astype(np.float32), want, atol=tol, rtol=tol), name
    fields = reader.fields
    for key in ["llama.context_length", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.attention.head_count_kv",
                "llama.block_count", "llama.embedding_length", "llama.feed_forward_length"]:  # fmt: skip
        assert key in fields, key
    assert len(fields["tokenizer.ggml.tokens"].data) == 257


def _no_output_left(directory: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in directory.iterdir() if ".tmp-" in p.name]


def test_zero_tensors_fails_with_exit_5_and_no_output(tmp_path, cli):
    write_apr(tmp_path / "empty.apr", {}, {"architecture": "LlamaForCausalLM"})
    result = cli("export", tmp_path / "empty.apr", "-o", tmp_path / "o.safetensors", "--to", "safetensors")
    assert result.code == 5 and "0 model tensors" in result.stderr
    _no_output_left(tmp_path, tmp_path / "o.safetensors")


def test_missing_architecture_fields_are_named(tmp_path, cli):
    model = LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=257))
    write_apr(tmp_path / "m.apr", model.weights(), {"architecture": "LlamaForCausalLM", "hidden_size": 64})
    for to, out in [("hf", tmp_path / "hf"), ("gguf", tmp_path / "m.gguf")]:
        result = cli("export", tmp_path / "m.apr", "-o", out, "--to", to)
        assert result.code == 5, result.stderr
        assert "num_layers" in result.stderr and "num_kv_heads" in result.stderr
        _no_output_left(tmp_path, out)


def test_tensors_that_do_not_match_the_architecture_fail_with_exit_4(tmp_path, cli):
    model = make_model(tmp_path / "m.apr", tie=True)
    tensors = {**tensors_of(tmp_path / "m.apr"), "lm_head.weight": model.lm_head.weight.detach().numpy()}
    with open_apr(tmp_path / "m.apr") as f:
        write_apr(tmp_path / "dup.apr", tensors, {k: v for k, v in f.metadata.items() if k != "aprtool"})
    result = cli("export", tmp_path / "dup.apr", "-o", tmp_path / "hf", "--to", "hf")
    assert result.code == 4 and "lm_head.weight" in result.stderr  # a tied model has no lm_head
    _no_output_left(tmp_path, tmp_path / "hf")
    with pytest.raises(MetadataError, match="unexpected 'extra.bias'"):
        write_apr(tmp_path / "odd.apr", {**tensors, "extra.bias": np.ones(2, np.float32)},
                  {k: v for k, v in f.metadata.items() if k != "aprtool"} | {"tie_word_embeddings": False})  # fmt: skip
        export_file(tmp_path / "odd.apr", tmp_path / "o.gguf", "gguf")
    _no_output_left(tmp_path, tmp_path / "o.gguf")


def test_hf_export_replaces_an_existing_directory_whole_only_with_force(tmp_path):
    make_model(tmp_path / "m.apr")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "stale.bin").write_bytes(b"old")
    with pytest.raises(UsageError, match="--force"):
        export_file(tmp_path / "m.apr", tmp_path / "hf", "hf")
    assert (tmp_path / "hf" / "stale.bin").read_bytes() == b"old"
    export_file(tmp_path / "m.apr", tmp_path / "hf", "hf", force=True)
    assert not (tmp_path / "hf" / "stale.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["hf", "m.apr"]
    assert verify_file(tmp_path / "m.apr").valid


def test_cli_exit_codes(tmp_path, cli):
    make_model(tmp_path / "m.apr")
    ok = cli("export", tmp_path / "m.apr", "-o", tmp_path / "m.safetensors", "--to", "safetensors", "--json")
    assert ok.code == 0 and ok.json()["tensors"] == 20
    assert cli("export", tmp_path / "m.apr", "-o", tmp_path / "x", "--to", "onnx").code == 2
    assert cli("export", tmp_path / "m.apr", "-o", tmp_path / "x", "--to", "apr", "--dtype", "f8").code == 2
    assert cli("export", tmp_path / "nope.apr", "-o", tmp_path / "x", "--to", "apr").code == 3
    (tmp_path / "junk.apr").write_bytes(b"not a model at all, just text" * 4)
    assert cli("export", tmp_path / "junk.apr", "-o", tmp_path / "x", "--to", "apr").code == 4
