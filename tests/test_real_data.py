"""Real data in (issue #25): tokenizers users already have (a tokenizer.json, a SentencePiece .model),
corpora as parquet / jsonl(.gz) rows, and modded-nanogpt token shards; bytes counted exactly for each."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from aprtool.container.reader import open_apr
from aprtool.data.token_bytes import token_bytes
from aprtool.data.tokenizer import load_tokenizer
from aprtool.interop.tokenizer_files import open_tokenizer
from fixtures import foreign as F
from tests.test_hostile import one_line_error

EDGES = [F.MULTILINGUAL, " leading space", "  two  spaces  ", "tab\tend\n\nx", "ｆｕｌｌ width ①", " ", "x "]
TINY = ("--size", "tiny", "--seq-len", "64", "--batch-size", "2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for name in ("heapq.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "shlex.py", "fnmatch.py"):
        shutil.copyfile(F.STDLIB / name, d / name)
    (d / "multilingual.txt").write_text(F.MULTILINGUAL * 20, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def sp_lossless(tmp_path_factory) -> Path:
    return F.sentencepiece_model(tmp_path_factory.mktemp("sp"), 400)


SP_KINDS = {
    "bpe-identity": {},
    "bpe-nfkc": {"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True},
    "unigram-identity": {"model_type": "unigram"},
    "unigram-nfkc-no-fallback": {"model_type": "unigram", "byte_fallback": False,
                                 "normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True},
    "bpe-no-dummy-prefix": {"add_dummy_prefix": False},
}  # fmt: skip


@pytest.mark.parametrize("kind", SP_KINDS)
def test_a_sentencepiece_model_gives_sentencepieces_own_ids(tmp_path, kind):
    import sentencepiece as spm

    model = F.sentencepiece_model(tmp_path, 400, **SP_KINDS[kind])
    ours, theirs = open_tokenizer(model), spm.SentencePieceProcessor(model_file=str(model))
    texts = [*EDGES, *F.stdlib_texts(("bisect.py", "heapq.py"))]
    assert [ours.encode(t) for t in texts] == [theirs.encode(t) for t in texts]
    assert ours.bos_id == theirs.bos_id() and ours.eos_id == theirs.eos_id() and ours.add_bos
    assert ours.frame() == ([theirs.bos_id()], [])  # documents begin with BOS, as SentencePiece models do


def test_bytes_per_token_of_a_lossless_sentencepiece_model_are_the_bytes_of_the_text(sp_lossless):
    tok = open_tokenizer(sp_lossless)
    table = token_bytes(tok)
    for text in [*EDGES, *F.stdlib_texts(("bisect.py",))]:
        ids = np.array([tok.bos_id, *tok.encode(text)])
        assert tok.decode(ids[1:].tolist()) == text  # lossless: the count below is the text's own
        assert int(table.of(ids[1:], ids[:-1]).sum()) == len(text.encode("utf-8")), text[:30]


def test_parameter_golf_rule_for_a_piece_after_a_boundary(sp_lossless):
    """The leading `▁` of a document's first piece is the dummy prefix (no byte); later it is a space."""
    tok = open_tokenizer(sp_lossless)
    table = token_bytes(tok)
    (word,) = [i for i in tok.encode("def") if tok._tok.id_to_token(i).startswith("\u2581")] or [None]
    assert word is not None
    piece = tok._tok.id_to_token(word)
    after_bos = table.of(np.array([word]), np.array([tok.bos_id]))[0]
    after_text = table.of(np.array([word]), np.array([tok.encode("x")[-1]]))[0]
    assert after_bos == len(piece[1:].encode()) and after_text == after_bos + 1


def test_pretrain_with_a_sentencepiece_model_leaves_a_lone_file_that_evaluates(cli, tmp_path, sp_lossless, corpus):
    import sentencepiece as spm

    model = tmp_path / "sp.model"
    shutil.copyfile(sp_lossless, model)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", model, *TINY,
            "--steps", "4", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    lone = tmp_path / "elsewhere" / "m.apr"
    lone.parent.mkdir()
    shutil.copyfile(tmp_path / "run" / "model.apr", lone)
    model.unlink()  # the model carries its tokenizer: the .model is not needed again
    r = cli("eval", lone, "--corpus", corpus, "--json")
    assert r.code == 0, r.stderr
    with open_apr(lone) as f:
        info = f.metadata["tokenizer"]
    assert info["kind"] == "hf" and info["vocab_size"] == 400 and info["add_bos"]
    tok = load_tokenizer(info, lone.parent)
    theirs = spm.SentencePieceProcessor(model_file=str(F.sentencepiece_model(tmp_path / "again", 400)))
    assert tok.encode(F.MULTILINGUAL) == theirs.encode(F.MULTILINGUAL)  # the same training gives the same model
    # the held-out files' bytes, exactly: the identity-normalized model decodes them as they are
    assert r.json()["bytes"] < sum(len(p.read_bytes()) for p in corpus.iterdir())


def test_pretrain_with_a_bare_tokenizer_json(cli, tmp_path, corpus):
    tok = F.bytelevel_tokenizer(400, specials=("<|endoftext|>",))
    tok.save(str(tmp_path / "mine.json"))
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", tmp_path / "mine.json",
            *TINY, "--steps", "2", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    with open_apr(tmp_path / "run" / "model.apr") as f:
        info = f.metadata["tokenizer"]
    assert info["eos_id"] == tok.token_to_id("<|endoftext|>") and not info["add_bos"]


@pytest.mark.parametrize(
    "content, code, said",
    [
        (b"\x08\x96\x01garbage that is no protobuf \xff\xfe", 4, "SentencePiece"),
        (b"{ not json", 4, "JSON"),
        (b"", 4, "SentencePiece"),
    ],
)
def test_a_tokenizer_file_that_is_neither_kind_is_one_line(cli, tmp_path, corpus, content, code, said):
    bad = tmp_path / "tok.model"
    bad.write_bytes(content)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", bad, *TINY, "--steps", "1")
    one_line_error(r, code, said)
    assert not (tmp_path / "run" / "model.apr").exists()


def test_a_missing_tokenizer_file_is_one_line(cli, tmp_path, corpus):
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", tmp_path / "nope.model",
            *TINY, "--steps", "1")  # fmt: skip
    one_line_error(r, 3, "nope.model")
