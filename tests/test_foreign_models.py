"""Models aprtool did not make (issue #24): Hugging Face folders written by transformers, GGUF files written
by gguf-py, their tokenizers, in every command.

Every model here is built on the spot (tiny, random, seeded) by the tools that make such models in the wild,
and every comparison is against those tools: transformers' logits, gguf-py's dequantization, SentencePiece's
and tokenizers' ids, the tokenizer's own decoding for byte counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import one_line_error

from aprtool import open_apr
from aprtool.data.token_bytes import token_bytes
from aprtool.data.tokenizer import load_tokenizer
from aprtool.model.io import load_model
from aprtool.model.sources import open_source

transformers = pytest.importorskip("transformers")
F = pytest.importorskip("fixtures.foreign")

SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}  # fmt: skip
ARCHS = {  # each family member with what sets it apart, tied and untied
    "llama3-rope-head-dim": ("LlamaForCausalLM", {"head_dim": 24, "rope_scaling": LLAMA3_ROPE}),
    "llama-biases-tied": ("LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    "llama-linear-rope": ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "mistral-window": ("MistralForCausalLM", {"sliding_window": 8}),
    "qwen2-biases-tied": ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-qk-norm": ("Qwen3ForCausalLM", {"head_dim": 32}),
}


@pytest.fixture(scope="module")
def tok():
    return F.bytelevel_tokenizer(400)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return F.small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, tok) -> Path:
    return F.hf_folder(tmp_path_factory.mktemp("qwen2") / "m", "Qwen2ForCausalLM", tok,
                       tokenizer_files={"eos_token": "<|end_of_text|>"}, tie_word_embeddings=True)  # fmt: skip


def _logits_gap(a, b, vocab: int) -> float:
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ta, tb = (getattr(out, "logits", out) for out in (a(ids), b(ids)))
    return float((ta - tb).abs().max())


@pytest.mark.parametrize("case", list(ARCHS))
def test_logits_equal_transformers_for_every_family_member(tmp_path, tok, case):
    arch, options = ARCHS[case]
    folder = F.hf_folder(tmp_path / case, arch, tok, tokenizer_files=SPECIALS, **options)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours, info = load_model(folder)
    assert info.format == "hf" and info.config.architecture == arch
    assert _logits_gap(hf, ours, 400) <= 1e-4  # 24 tokens: past the window of 8 and llama3's 32 / 4 short waves
    with_window = {k: v for k, v in options.items() if k != "sliding_window"}
    if with_window != options or "rope_scaling" in options:  # the option matters: without it the logits differ
        plain = F.hf_folder(tmp_path / "plain", arch, tok, **{**with_window, "rope_scaling": None})
        assert _logits_gap(transformers.AutoModelForCausalLM.from_pretrained(plain).eval(), ours, 400) > 1e-3


def _mapped_from(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `path` (/proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps")
def test_a_read_only_load_uses_the_files_pages_and_a_trainer_gets_its_own_copy(tmp_path, tok):
    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    file = folder / "model.safetensors"
    shared, _ = load_model(folder, share_file_pages=True)
    mapped = _mapped_from(file)
    inside = lambda t: any(a <= t.data_ptr() < b for a, b in mapped)  # noqa: E731
    assert all(inside(t) for t in shared.weights().values())  # eval and compress: no second copy
    copied, _ = load_model(folder)
    assert not any(inside(t) for t in copied.weights().values())
    with torch.no_grad():  # a write to the shared model stays in this process (copy-on-write), never the file
        before = file.read_bytes()
        shared.model.embed_tokens.weight.add_(1.0)
    assert file.read_bytes() == before
    assert _logits_gap(shared, copied, 400) > 0


def test_a_meta_model_does_not_pull_in_torchs_python_meta_kernels():
    """Building a model's shapes on the meta device once imported sympy (75 MB resident in eval)."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom aprtool.model.llama import LlamaConfig, LlamaForCausalLM\n"
            "cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,"
            " intermediate_size=64, max_position_embeddings=16, rope_theta=1e4, rms_norm_eps=1e-5,"
            " tie_word_embeddings=True)\n"
            "with torch.device('meta'):\n    LlamaForCausalLM(cfg)\nprint('sympy' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


def _gguf_from(tmp_path: Path, folder: Path, tok, qtypes=None, bos: str | None = "<|begin_of_text|>") -> Path:
    vocab = F.bytelevel_vocab(tok, "llama-bpe", bos, "<|end_of_text|>")
    return F.gguf_from_hf(folder, tmp_path / "model.gguf", vocab, qtypes)


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_an_f32_gguf_gives_the_hf_models_logits(tmp_path, tok, arch):
    folder = F.hf_folder(tmp_path / "hf", arch, tok, tokenizer_files=SPECIALS, head_dim=24, attention_bias=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours, info = load_model(_gguf_from(tmp_path, folder, tok))  # llama: q/k rows permuted by the writer
    assert info.format == "gguf" and info.config.architecture == arch
    assert _logits_gap(hf, ours, 400) <= 1e-4


def test_gguf_import_values_equal_gguf_pys_dequantization(tmp_path, tok):
    import gguf

    folder = F.hf_folder(tmp_path / "hf", "LlamaForCausalLM", tok)
    kinds = {"q_proj.weight": "Q8_0", "k_proj.weight": "Q4_0", "v_proj.weight": "Q4_1", "o_proj.weight": "Q5_0",
             "gate_proj.weight": "Q5_1", "up_proj.weight": "F16", "down_proj.weight": "BF16"}  # fmt: skip
    path = _gguf_from(tmp_path, folder, tok, kinds)
    reader = gguf.GGUFReader(str(path))  # gguf-py's own reader and dequantizer, the reference
    expected = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    heads = {"attn_q": 4, "attn_k": 2}
    seen = set()
    with open_source(path) as source:
        assert source.quantized
        for name in source.shapes:
            gname = F._gguf_name(name)
            want = expected[gname].reshape(source.shapes[name])
            kind = gname.split(".")[2] if gname.startswith("blk.") else ""
            if kind in heads:  # llama.cpp's row order back to HF's: (heads, rows/2, 2) -> (heads, 2, rows/2)
                h = heads[kind]
                want = want.reshape(h, -1, 2, want.shape[1]).swapaxes(1, 2).reshape(want.shape)
            np.testing.assert_array_equal(source.float32(name), want)
            seen.add(str(reader.tensors[[t.name for t in reader.tensors].index(gname)].tensor_type.name))
    assert {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32"} <= seen


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"])
def test_k_quant_blocks_are_dequantized_as_gguf_py_does(tmp_path, qtype):
    """gguf-py cannot write k-quants, so the blocks are random bytes of the right size, written raw."""
    import gguf

    from aprtool.interop.gguf_reader import GgufFile

    t = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[t]
    raw = np.random.default_rng(0).integers(0, 256, (4, 256 // block * size), dtype=np.uint8)
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), arch="llama")
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GgufFile(tmp_path / "k.gguf") as f:
        np.testing.assert_array_equal(f.values("blk.0.ffn_up.weight"), gguf.quants.dequantize(raw, t).reshape(4, 256))


def test_a_sentencepiece_vocabulary_in_a_gguf_tokenizes_as_sentencepiece(tmp_path):
    import sentencepiece as spm

    from aprtool.interop.tokenizer_files import gguf_tokenizer

    model = F.sentencepiece_model(tmp_path / "sp")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    v = F.sentencepiece_vocab(model)
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": v["tokens"], "tokenizer.ggml.scores": v["scores"],
          "tokenizer.ggml.token_type": v["types"], "tokenizer.ggml.bos_token_id": v["bos"],
          "tokenizer.ggml.eos_token_id": v["eos"], "tokenizer.ggml.unknown_token_id": v["unk"]}  # fmt: skip
    entry = gguf_tokenizer(md)
    assert entry["add_bos"] is True and entry["bos_id"] == sp.bos_id()  # llama.cpp's default for SentencePiece
    ours = load_tokenizer(entry, tmp_path)
    texts = [F.MULTILINGUAL, *(p.read_text() for p in sorted(F.STDLIB.glob("[a-c]*.py"))[:6])]
    for text in texts:
        assert ours.encode(text) == sp.encode(text)
    _bytes_are_the_decoded_bytes(ours, texts)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_a_byte_level_vocabulary_in_a_gguf_tokenizes_as_the_original(tmp_path, pre):
    from aprtool.interop.tokenizer_files import QWEN2_SPLIT, gguf_tokenizer

    split = {"llama-bpe": F.LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT, "gpt-2": None}[pre]
    original = F.bytelevel_tokenizer(500, split)
    v = F.bytelevel_vocab(original, pre, None, "<|end_of_text|>")
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": v["tokens"],
          "tokenizer.ggml.merges": v["merges"], "tokenizer.ggml.token_type": v["types"],
          "tokenizer.ggml.eos_token_id": v["eos"]}  # fmt: skip
    ours = load_tokenizer(gguf_tokenizer(md), tmp_path)
    texts = [F.MULTILINGUAL, *(p.read_text() for p in sorted(F.STDLIB.glob("[d-f]*.py"))[:6])]
    for text in texts:
        assert ours.encode(text) == original.encode(text).ids
    _bytes_are_the_decoded_bytes(ours, texts)


def _bytes_are_the_decoded_bytes(tokenizer, texts: list[str]) -> None:
    """Each document's bytes, counted from the token table after a boundary, are the UTF-8 bytes of the text
    the tokenizer decodes the document's tokens to."""
    from aprtool.data.tokenizer import encode_documents

    table = token_bytes(tokenizer)
    for text in texts:
        ids = encode_documents([text], tokenizer)
        before, after = tokenizer.frame()
        stream = np.concatenate([np.asarray(after or before, np.int64), ids])  # the previous document's boundary
        counted = int(table.of(stream[1:], stream[:-1]).sum())
        assert counted == len(tokenizer.decode(ids.tolist()).encode("utf-8")), text[:40]


def test_bytes_per_token_follow_each_tokenizer_kind(tmp_path, tok):
    """byte-level BPE, SentencePiece-style BPE with `▁` and byte fallback (as transformers writes Llama's),
    aprtool's own BPE and bytes: the decoded bytes of every document, a leading space never counted twice."""
    from tokenizers import Tokenizer

    from aprtool.data.tokenizer import BpeTokenizer, ByteTokenizer, HfTokenizer

    model = F.sentencepiece_model(tmp_path / "sp")
    v = F.sentencepiece_vocab(model)
    from transformers.tokenization_utils_base import generate_merges

    vocab = {t: i for i, t in enumerate(v["tokens"])}  # transformers' own Llama tokenizer.json: Metaspace, Strip
    merges = generate_merges(vocab, dict(zip(v["tokens"], v["scores"], strict=True)))
    llama = transformers.LlamaTokenizer(vocab=vocab, merges=merges)
    llama.save_pretrained(tmp_path / "llama")
    text = (tmp_path / "llama" / "tokenizer.json").read_text()
    sp_style = HfTokenizer(Tokenizer.from_str(text), text, 1, 2, True)
    texts = [F.MULTILINGUAL, " leading space", "  two", "tab\tend\n", *F.stdlib_texts(("bisect.py",))]
    hf = HfTokenizer(tok, tok.to_str(), 0, 1, False)
    bpe = BpeTokenizer.train(F.stdlib_texts(), 400)
    for tokenizer in (sp_style, hf, bpe, ByteTokenizer()):
        _bytes_are_the_decoded_bytes(tokenizer, texts)
    assert int(token_bytes(sp_style).lengths[v["tokens"].index("<0x41>")]) == 1  # a byte token is one byte


def test_an_hf_folders_tokenizer_gives_transformers_ids_and_its_bos_rule(tmp_path, tok):
    from aprtool.interop.tokenizer_files import folder_tokenizer

    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_bos_token"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    entry = folder_tokenizer(folder, json.loads((folder / "config.json").read_text()))
    ours = load_tokenizer(entry, folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.encode(F.MULTILINGUAL) == theirs(F.MULTILINGUAL, add_special_tokens=False)["input_ids"]
    assert (entry["bos_id"], entry["eos_id"]) == (
        tok.token_to_id("<|begin_of_text|>"),
        tok.token_to_id("<|end_of_text|>"),
    )
    assert ours.frame() == ([entry["bos_id"]], [])  # add_bos_token: a BOS before each document, no EOS


def test_eval_scores_an_hf_folder_a_gguf_and_their_import_alike(cli, tmp_path, tok, qwen2, corpus):
    gguf = _gguf_from(tmp_path, qwen2, tok, bos=None)  # the folder's tokenizer: no BOS, EOS after each document
    assert cli("export", qwen2, "-o", tmp_path / "q.apr", "--to", "apr").code == 0
    results = {}
    for model in (qwen2, gguf, tmp_path / "q.apr"):
        r = cli("eval", model, "--corpus", corpus, "--json")
        assert r.code == 0, r.stderr
        results[model.name] = r.json()
    assert {r["split"] for r in results.values()} == {"all"}  # no training split on record
    assert len({(r["tokens"], r["bytes"]) for r in results.values()}) == 1
    bpb = [r["bits_per_byte"] for r in results.values()]
    assert max(bpb) - min(bpb) <= 1e-5 * max(bpb)  # the same weights; f32 sums in other orders
    # the bytes are the decoded scored text's: every token but the first of the stream, windows of 256
    from aprtool.data.tokenizer import encode_documents

    with open_source(qwen2) as source:
        tokenizer = load_tokenizer(source.metadata["tokenizer"], qwen2)
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir())]
    stream = encode_documents(texts, tokenizer)
    scored = stream[1 : results["m"]["tokens"] + 1]
    assert results["m"]["bytes"] == len(tokenizer.decode(scored.tolist()).encode("utf-8"))
    assert cli("eval", qwen2, "--corpus", corpus, "--split", "val", "--json").json()["tokens"] < results["m"]["tokens"]


def test_import_export_round_trip_keeps_the_class_logits_and_tokenizer(cli, tmp_path, qwen2):
    apr = tmp_path / "q.apr"
    assert cli("export", qwen2, "-o", apr, "--to", "apr").code == 0
    with open_apr(apr) as f:
        assert f.metadata["architecture"] == "Qwen2ForCausalLM" and f.metadata["qkv_bias"] is True
        assert f.metadata["tokenizer"]["kind"] == "hf" and "json_xz" in f.metadata["tokenizer"]
        assert f.metadata["source"]["format"] == "hf"
        assert {x["name"] for x in f.metadata["source"]["files"]} >= {"model.safetensors", "config.json"}
    shutil.copy(apr, tmp_path / "alone.apr")  # self-contained: nothing beside it
    r = cli("export", tmp_path / "alone.apr", "-o", tmp_path / "hf", "--to", "hf")
    assert r.code == 0, r.stderr
    original = transformers.AutoModelForCausalLM.from_pretrained(qwen2, dtype=torch.float32).eval()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(back).__name__ == "Qwen2ForCausalLM"
    assert _logits_gap(original, back, 400) <= 1e-5
    a, b = (transformers.AutoTokenizer.from_pretrained(p) for p in (qwen2, tmp_path / "hf"))
    assert a(F.MULTILINGUAL)["input_ids"] == b(F.MULTILINGUAL)["input_ids"]
    r = cli("export", apr, "-o", tmp_path / "q.gguf", "--to", "gguf")
    assert r.code == 0, r.stderr
    ours_gguf, info = load_model(tmp_path / "q.gguf")
    assert info.config.architecture == "Qwen2ForCausalLM" and _logits_gap(original, ours_gguf, 400) <= 1e-4


def test_distill_from_a_gguf_teacher_in_bf16(cli, tmp_path, tok, corpus):
    folder = F.hf_folder(tmp_path / "hf", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    teacher = _gguf_from(tmp_path, folder, tok, {"mlp.up_proj.weight": "Q8_0"})
    run = tmp_path / "run"
    r = cli("distill", "--teacher", teacher, "--run-dir", run, "--corpus", corpus, "--student-layers", "1",
            "--steps", "4", "--seq-len", "64", "--batch-size", "2", "--teacher-dtype", "bf16", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    summary = r.json()
    assert summary["teacher_params"] > summary["params"]
    with open_apr(run / "model.apr") as f:
        assert f.metadata["tokenizer"]["kind"] == "hf" and f.metadata["num_layers"] == 1
    assert cli("eval", run / "model.apr", "--corpus", corpus, "--json").json()["split"] == "val"


def test_pretrain_init_from_an_hf_folder_then_resume_is_bitwise(cli, tmp_path, tok, corpus):
    folder = F.hf_folder(tmp_path / "hf", "Qwen3ForCausalLM", tok, tokenizer_files=SPECIALS, head_dim=24)
    args = ("--corpus", corpus, "--seq-len", "64", "--batch-size", "2", "--steps", "8", "--checkpoint-every", "4",
            "--eval-every", "4", "--warmup-steps", "2", "--keep-epochs", "0")  # fmt: skip
    r = cli("pretrain", "--run-dir", tmp_path / "full", "--init", folder, *args, "--json")
    assert r.code == 0, r.stderr
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "ckpt" / "step-000008.apr").unlink()  # as if killed after the step-4 checkpoint
    (tmp_path / "cut" / "model.apr").unlink()
    r = cli("pretrain", "--run-dir", tmp_path / "cut", "--resume", "latest", "--json")
    assert r.code == 0, r.stderr
    with open_apr(tmp_path / "full" / "model.apr") as a, open_apr(tmp_path / "cut" / "model.apr") as b:
        assert a.metadata["architecture"] == "Qwen3ForCausalLM" and a.metadata["init"]["format"] == "hf"
        assert all(a.numpy(n).tobytes() == b.numpy(n).tobytes() for n in a.names())
    start, _ = load_model(folder)
    trained, _ = load_model(tmp_path / "full" / "model.apr")
    assert not torch.equal(start.model.norm.weight, trained.model.norm.weight)  # it trained from the init
    one_line_error(cli("pretrain", "--run-dir", tmp_path / "x", "--init", folder, "--size", "tiny"), 2, "--size")


def test_compress_calibrates_an_hf_folder_with_its_own_tokenizer(cli, tmp_path, qwen2, corpus):
    out = tmp_path / "q.int6.apr"
    r = cli("compress", qwen2, "-o", out, "--calibrate", "--calib-data", corpus, "--calib-tokens", "2048",
            "--min-elements", "4096", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["calibration"]["source"] == str(corpus)
    e = cli("eval", out, "--corpus", corpus, "--json")
    assert e.code == 0 and e.json()["quantized"] is True, e.stderr


# --- bad input: one line, a documented exit code, nothing written ---------------------------------------


def _broken(tmp_path: Path, tok, edit) -> Path:
    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c.update(architectures=["GPTNeoXForCausalLM"]), "GPTNeoXForCausalLM"),
        (lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_type"),
        (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
        (lambda c: c.update(quantization_config={"quant_method": "gptq"}), "quantization_config"),
        (lambda c: c.pop("intermediate_size"), "intermediate_size"),
        (lambda c: c.update(vocab_size=300), "vocab_size"),  # the tokenizer has 400: more than the rows
    ],
)
def test_a_config_the_model_cannot_carry_is_refused_naming_the_field(cli, tmp_path, tok, edit, named):
    folder = _broken(tmp_path, tok, edit)
    one_line_error(cli("eval", folder), 4, named)
    one_line_error(cli("export", folder, "-o", tmp_path / "o.apr", "--to", "apr"), 4, named)
    assert not (tmp_path / "o.apr").exists()


def test_an_unknown_architecture_names_the_supported_ones(cli, tmp_path, tok):
    folder = _broken(tmp_path, tok, lambda c: c.update(architectures=["PhiForCausalLM"]))
    one_line_error(cli("eval", folder), 4, "PhiForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")


def test_a_deeply_nested_config_json_is_a_format_error(cli, tmp_path, tok):
    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(cli("eval", folder), 4, "config.json")


def test_a_sharded_index_naming_a_file_outside_the_folder_is_refused(cli, tmp_path, tok):
    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    one_line_error(cli("eval", folder), 4, "outside")


def test_a_gguf_tensor_type_that_cannot_be_dequantized_is_named(cli, tmp_path, tok):
    import gguf

    folder = F.hf_folder(tmp_path / "hf", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    path = _gguf_from(tmp_path, folder, tok)
    r = cli("inspect", path, "--json", "--tensors")
    assert r.code == 0
    raw = bytearray(path.read_bytes())  # retype one tensor as Q8_1 (gguf-py has no dequantizer for it)
    name = b"blk.0.ffn_up.weight"
    at = raw.index(name) + len(name) + 4 + 16  # after the name: n_dims (u32), two u64 dims, then the type
    raw[at : at + 4] = int(gguf.GGMLQuantizationType.Q8_1).to_bytes(4, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    r = cli("eval", bad)
    assert r.code == 4, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "blk.0.ffn_up" in r.stderr + r.stdout


def test_a_student_of_another_vocabulary_is_refused_naming_both_sizes(cli, tmp_path, tok, corpus):
    from aprtool.model.io import model_metadata, write_model
    from aprtool.model.llama import PRESETS, LlamaForCausalLM

    folder = F.hf_folder(tmp_path / "hf", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    student = LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=257))
    write_model(tmp_path / "s.apr", student.weights(), model_metadata(student, None, {"kind": "bytes",
                "vocab_size": 257, "eos_id": 256, "file": None}), len(student.weights()))  # fmt: skip
    r = cli("distill", "--teacher", folder, "--run-dir", tmp_path / "run", "--student", tmp_path / "s.apr",
            "--corpus", corpus, "--steps", "2")  # fmt: skip
    assert r.code == 2 and not (tmp_path / "run" / "model.apr").exists()
    error = r.stderr.strip().splitlines()[-1]  # after the corpus line: one error naming both vocabularies
    assert error.startswith("aprtool: error: ") and "400" in error and "257" in error, error


BAD_TOKENIZER_FILES = [("tokenizer.json", "{not json"), ("tokenizer_config.json", "[" * 50_000),
                       ("tokenizer.json", '{"model": {"type": "WordPiece", "vocab": {}}}')]  # fmt: skip


@pytest.mark.parametrize(("name", "text"), BAD_TOKENIZER_FILES)
def test_malformed_tokenizer_files_are_refused_naming_the_file(cli, tmp_path, tok, name, text):
    folder = F.hf_folder(tmp_path / "m", "LlamaForCausalLM", tok, tokenizer_files=SPECIALS)
    (folder / name).write_text(text)
    one_line_error(cli("eval", folder), 4, name)
    one_line_error(cli("export", folder, "-o", tmp_path / "o.apr", "--to", "apr"), 4, name)
    assert not (tmp_path / "o.apr").exists()


def test_an_embedding_padded_past_the_tokenizer_evaluates(cli, tmp_path, tok, corpus):
    folder = F.hf_folder(tmp_path / "m", "Qwen2ForCausalLM", tok, tokenizer_files={"eos_token": "<|end_of_text|>"},
                         vocab_size=448)  # fmt: skip
    r = cli("eval", folder, "--corpus", corpus, "--json")
    assert r.code == 0, r.stderr
    with open_source(folder) as source:
        assert source.config.vocab_size == 448 and source.metadata["tokenizer"]["vocab_size"] == 400
