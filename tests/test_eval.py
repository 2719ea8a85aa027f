"""eval: bits per byte count exactly the UTF-8 bytes of the scored held-out text."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from aprtool.data.tokenizer import load_tokenizer
from aprtool.evaluate.bpb import evaluate_bpb, held_out_tokens
from aprtool.model.io import load_model
from aprtool.ops.compress import CompressOptions, compress_file
from aprtool.train.loop import pretrain

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Non-ASCII text on purpose: multi-byte characters are where byte counts go wrong.
FILES = ["textwrap.py", "json/decoder.py", "shlex.py", "fnmatch.py", "colorsys.py", "heapq.py", "this.py"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-corpus")
    for name in FILES:
        (root / Path(name).name).write_bytes((STDLIB / name).read_bytes())
    (root / "unicode.txt").write_text("naïve café — 東京 ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\n" * 200, encoding="utf-8")
    return root


@pytest.fixture(scope="module", params=["bpe", "bytes"])
def model(request, tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp(f"eval-{request.param}")
    cfg = {"size": "tiny", "tokenizer": request.param, "vocab_size": 400, "corpus": str(corpus), "steps": 8,
           "seq_len": 32, "batch_size": 4, "eval_tokens": 256, "val_fraction": 0.3}  # fmt: skip
    return Path(pretrain(run, cfg, log=lambda _m: None)["model"])


def test_byte_total_equals_the_utf8_length_of_the_decoded_scored_text(model, corpus):
    result = evaluate_bpb(model, corpus=corpus, seq_len=32)
    metadata = load_model(model)[1].metadata
    tokenizer = load_tokenizer(metadata["tokenizer"], model.parent)
    tokens = held_out_tokens(corpus, tokenizer, metadata)
    windows = (len(tokens) - 1) // 32
    scored = tokens[1 : windows * 32 + 1]
    assert result["tokens"] == len(scored)
    assert result["bytes"] == len(tokenizer.decode(scored.tolist()).encode("utf-8"))
    assert result["bits_per_token"] == pytest.approx(result["loss_nats_per_token"] / math.log(2))
    assert result["bits_per_byte"] == pytest.approx(result["bits_per_token"] * result["tokens"] / result["bytes"])


def test_per_window_scores_are_each_windows_own_text(model, corpus):
    import torch
    import torch.nn.functional as F

    result = evaluate_bpb(model, corpus=corpus, max_tokens=600, seq_len=32, per_window=True)
    bits, nbytes = result["window_bits"], result["window_bytes"]
    assert len(bits) == len(nbytes) == result["tokens"] // 32 and sum(nbytes) == result["bytes"]
    assert sum(bits) / sum(nbytes) == pytest.approx(result["bits_per_byte"], rel=1e-12)
    net, info = load_model(model)
    tokenizer = load_tokenizer(info.metadata["tokenizer"], model.parent)
    tokens = held_out_tokens(corpus, tokenizer, info.metadata)
    k = len(bits) - 1  # the last window, scored here on its own
    window = torch.from_numpy(np.asarray(tokens[k * 32 : k * 32 + 33], np.int64))[None]
    with torch.no_grad():
        nats = F.cross_entropy(net(window[:, :-1])[0].float(), window[0, 1:], reduction="sum")
    assert bits[k] == pytest.approx(float(nats) / math.log(2), rel=1e-5)
    assert nbytes[k] == len(tokenizer.decode(tokens[k * 32 + 1 : k * 32 + 33].tolist()).encode("utf-8"))
    assert "window_bits" not in evaluate_bpb(model, corpus=corpus, max_tokens=600, seq_len=32)


def test_held_out_split_is_the_one_pretrain_used(model, corpus):
    metadata = load_model(model)[1].metadata
    tokenizer = load_tokenizer(metadata["tokenizer"], model.parent)
    from_text = held_out_tokens(corpus, tokenizer, metadata)
    from_shards = held_out_tokens(model.parent / "data", tokenizer, metadata)
    assert np.array_equal(from_text, from_shards)
    a = evaluate_bpb(model, corpus=model.parent / "data", max_tokens=300, seq_len=32)
    b = evaluate_bpb(model, corpus=corpus, max_tokens=300, seq_len=32)
    assert a == b


def test_int6_file_is_evaluated_dequantized(model, corpus, tmp_path):
    out = tmp_path / "q.apr"
    compress_file(model, out, CompressOptions(min_elements=1000, compare=False))
    float_result = evaluate_bpb(model, corpus=corpus, max_tokens=2000, seq_len=32)
    int6_result = evaluate_bpb(out, corpus=corpus, max_tokens=2000, seq_len=32)
    assert int6_result["quantized"] and not float_result["quantized"]
    assert int6_result["bytes"] == float_result["bytes"]
    assert int6_result["bits_per_byte"] != float_result["bits_per_byte"]
    assert abs(int6_result["bits_per_byte"] - float_result["bits_per_byte"]) < 0.1 * float_result["bits_per_byte"]


def test_eval_cli_json(model, corpus, cli):
    result = cli("eval", model, "--corpus", corpus, "--max-tokens", "500", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert {"loss_nats_per_token", "bits_per_token", "bits_per_byte", "tokens", "bytes"} <= set(data)
    assert cli("eval", model.parent / "nope.apr").code == 3


@pytest.mark.parametrize("max_logits", [1, 7 * 300, 1 << 30])  # one row a chunk, a partial last chunk, one chunk
def test_token_losses_in_a_reused_buffer_equal_cross_entropy_of_the_logits(max_logits):
    import torch
    import torch.nn.functional as F

    from aprtool.model.llama import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_position_embeddings=64, rope_theta=1e4, rms_norm_eps=1e-5,
                      tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 300, (3, 17))
    with torch.no_grad():
        want = F.cross_entropy(model(ids[:, :-1]).double().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    got = model.token_losses(ids[:, :-1], ids[:, 1:], max_logits=max_logits)
    assert got.shape == (3, 16) and got.dtype == torch.float32
    assert torch.allclose(got.double().flatten(), want, atol=1e-5, rtol=0)
