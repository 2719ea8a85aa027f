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
from tests.test_hostile import one_line_error as _one_line_error


def one_line_error(result, code: int, *words: str) -> str:
    """As test_hostile's, after the progress lines a run prints before it meets the bad input."""
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("[aprtool] "))
    return _one_line_error(result, code, *words)


EDGES = [F.MULTILINGUAL, " leading space", "  two  spaces  ", "tab\tend\n\nx", "ｆｕｌｌ width ①", " ", "x "]
TINY = ("--size", "tiny", "--seq-len", "64", "--batch-size", "2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return F.small_corpus(tmp_path_factory.mktemp("corpus"))


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


# --- corpora as rows: parquet, jsonl, jsonl.gz


def _documents() -> list[str]:
    """Documents of every size, multilingual text among them (each stdlib function body is one)."""
    text = "".join(F.stdlib_texts(("bisect.py", "heapq.py", "colorsys.py")))
    docs = [d for d in text.split("\ndef ") if d.strip()]
    return [*docs, F.MULTILINGUAL, "ä", " "]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    import gzip
    import json

    if path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        types = {k: pa.string() if all(v is None or isinstance(v, str) for v in vs) else pa.int64()
                 for k, vs in columns.items()}  # fmt: skip
        pq.write_table(pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()}), path, row_group_size=7)
        return path
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" + ("\n" if i % 5 == 0 else "") for i, r in enumerate(rows))
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["docs.parquet", "docs.jsonl", "docs.jsonl.gz"])
def test_every_row_is_read_exactly_once_and_a_row_that_is_not_text_is_counted(cli, tmp_path, name):
    docs = _documents()
    rows = [{"id": i, "content": d} for i, d in enumerate(docs)]
    rows.insert(3, {"id": 99, "content": None})  # a null: skipped, and said so
    corpus = _write_rows(tmp_path / name, rows)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--text-field", "content",
            "--tokenizer", "bytes", "--val-fraction", "0.2", *TINY, "--steps", "1", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    read = r.json()["corpus"]
    utf8 = sum(len(d.encode("utf-8")) for d in docs)
    assert (read["documents"], read["bytes"], read["skipped"]) == (len(docs), utf8, 1)
    # bytes: one token per byte and one EOS per document, on one side or the other, never both
    assert read["train_tokens"] + read["val_tokens"] == utf8 + len(docs) and read["val_tokens"] > 0


def test_a_directory_of_record_files_is_one_corpus_split_by_document(cli, tmp_path):
    docs = _documents()
    d = tmp_path / "dump"
    (d / "part").mkdir(parents=True)
    _write_rows(d / "a.jsonl", [{"text": t} for t in docs[:10]])
    _write_rows(d / "part" / "b.parquet", [{"text": t} for t in docs[10:]])
    (d / "README.md").write_text("not a document: a directory of record files reads only those")
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", d, "--tokenizer", "bytes", "--val-fraction", "0.2",
            *TINY, "--steps", "1", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["corpus"]["documents"] == len(docs) and r.json()["corpus"]["skipped"] == 0
    from aprtool.data.documents import Documents

    once, twice = Documents.open(d), Documents.open(d)
    assert list(once.stream(0.3)) == list(twice.stream(0.3))  # the same split on every read
    sides = {side for side, _ in once.stream(0.3)}
    assert sides == {"train", "val"}


@pytest.mark.parametrize("name", ["docs.parquet", "docs.jsonl"])
def test_a_missing_text_field_names_it_and_the_fields_present(cli, tmp_path, name):
    corpus = _write_rows(tmp_path / name, [{"body": t, "url": "x"} for t in _documents()])
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", "bytes", *TINY)
    line = one_line_error(r, 4, "'text'", "'body'", "'url'", name)
    assert "--text-field" in line


@pytest.mark.parametrize(
    "content, said",
    [(b'{"text": "a"}\n\n{"text": \n', ":3: not JSON"),
     (b'{"text": "a"}\n["text"]\n', ":2: a row must be a JSON object"),
     (b'{"text": "a"}\n' + b"[" * 100_000 + b"\n", ":2: not JSON")],
)  # fmt: skip
def test_a_bad_jsonl_line_is_one_line_naming_it(cli, tmp_path, content, said):
    (tmp_path / "docs.jsonl").write_bytes(content)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", tmp_path / "docs.jsonl", "--tokenizer", "bytes",
            *TINY)  # fmt: skip
    one_line_error(r, 4, said)


def test_too_few_documents_for_a_held_out_side_is_a_usage_error(cli, tmp_path):
    corpus = _write_rows(tmp_path / "docs.jsonl", [{"text": t} for t in _documents()[:3]])
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", corpus, "--tokenizer", "bytes", *TINY)
    one_line_error(r, 2, "held-out", "--val-fraction")


def test_a_file_that_is_not_parquet_is_one_line(cli, tmp_path):
    (tmp_path / "docs.parquet").write_bytes(b"PAR1 this is not parquet")
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", tmp_path / "docs.parquet", "--tokenizer", "bytes",
            *TINY)  # fmt: skip
    one_line_error(r, 4, "docs.parquet")


# --- modded-nanogpt / parameter-golf token shards


def _nanogpt_shard(path: Path, tokens: list[int] | np.ndarray, *, magic=20240520, version=1, count=None) -> Path:
    header = np.zeros(256, "<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, "<u2").tobytes())
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory, sp_lossless) -> tuple[Path, Path, list[str]]:
    """The documents as jsonl, and as shards of BOS + ids (what parameter-golf's fineweb shards hold)."""
    d = tmp_path_factory.mktemp("shards")
    tok, docs = open_tokenizer(sp_lossless), _documents() * 3
    stream = np.concatenate([[tok.bos_id, *tok.encode(t)] for t in docs]).astype(np.uint16)
    cut = len(stream) * 3 // 4
    cut = int(np.flatnonzero(stream[:cut] == tok.bos_id)[-1])  # shards end between documents
    half = int(np.flatnonzero(stream[: cut // 2] == tok.bos_id)[-1])
    folder = d / "fineweb10B_sp"
    folder.mkdir()
    _nanogpt_shard(folder / "fineweb_train_000000.bin", stream[:half])
    _nanogpt_shard(folder / "fineweb_train_000001.bin", stream[half:cut])
    _nanogpt_shard(folder / "fineweb_val_000000.bin", stream[cut:])
    text = _write_rows(d / "docs.jsonl", [{"text": t} for t in docs])
    return folder, text, docs


def test_token_shards_train_as_they_are_and_resume_bitwise(cli, tmp_path, shards, sp_lossless):
    folder, _, docs = shards
    args = ("--corpus", folder, "--tokenizer", sp_lossless, *TINY, "--steps", "6", "--checkpoint-every", "3",
            "--eval-every", "3", "--warmup-steps", "1", "--keep-epochs", "0")  # fmt: skip
    r = cli("pretrain", "--run-dir", tmp_path / "full", *args, "--json")
    assert r.code == 0, r.stderr
    read = r.json()["corpus"]
    sizes = [len(np.fromfile(p, "<u2", offset=1024)) for p in sorted(folder.iterdir())]
    assert read["train_tokens"] + read["val_tokens"] == sum(sizes) and read["val_tokens"] == sizes[-1]
    # parameter-golf's rule for the bytes of the tokens = the UTF-8 bytes of the text (a lossless tokenizer)
    assert read["documents"] == len(docs) and read["bytes"] == sum(len(t.encode()) for t in docs)
    data = tmp_path / "full" / "data"
    assert sorted(p.name for p in data.glob("*.bin")) == ["train-0000.bin", "train-0001.bin", "val-0000.bin"]
    assert (data / "val-0000.bin").stat().st_ino == (folder / "fineweb_val_000000.bin").stat().st_ino  # linked
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "ckpt" / "step-000006.apr").unlink()  # as if killed after the step-3 checkpoint
    (tmp_path / "cut" / "model.apr").unlink()
    r = cli("pretrain", "--run-dir", tmp_path / "cut", "--resume", "latest", "--json")
    assert r.code == 0, r.stderr
    with open_apr(tmp_path / "full" / "model.apr") as a, open_apr(tmp_path / "cut" / "model.apr") as b:
        assert all(a.numpy(n).tobytes() == b.numpy(n).tobytes() for n in a.names())


def test_eval_on_token_shards_scores_what_eval_on_their_text_scores(cli, tmp_path, shards, sp_lossless):
    folder, text, _ = shards
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", folder, "--tokenizer", sp_lossless, *TINY,
            "--steps", "2", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    model = tmp_path / "run" / "model.apr"
    on_shards = cli("eval", model, "--corpus", folder, "--split", "all", "--json")
    on_text = cli("eval", model, "--corpus", text, "--split", "all", "--json")
    assert on_shards.code == 0 and on_text.code == 0, (on_shards.stderr, on_text.stderr)
    a, b = on_shards.json(), on_text.json()
    assert a["tokens"] == b["tokens"] and a["bytes"] == b["bytes"] and a["bits_per_byte"] == b["bits_per_byte"]
    r = cli("compress", model, "-o", tmp_path / "m.int6.apr", "--calibrate", "--calib-data", folder,
            "--calib-tokens", "1024", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["calibration"]["source"] == str(folder)
    beyond = _bad_shards(tmp_path, "id beyond the vocabulary")  # 65000: past the model's 400 rows
    one_line_error(cli("eval", model, "--corpus", beyond), 4, "fineweb_val_000000.bin", "vocabulary")
    train_beyond = tmp_path / "train-beyond"
    train_beyond.mkdir()
    _nanogpt_shard(train_beyond / "fineweb_train_000000.bin", [1, 2, 65000])
    _nanogpt_shard(train_beyond / "fineweb_val_000000.bin", [1, 2, 3])
    r = cli("compress", model, "-o", tmp_path / "x.apr", "--calibrate", "--calib-data", train_beyond)
    one_line_error(r, 4, "fineweb_train_000000.bin", "vocabulary")
    assert not (tmp_path / "x.apr").exists()


def _bad_shards(tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    _nanogpt_shard(folder / "fineweb_train_000000.bin", np.arange(300) % 200)
    val = folder / "fineweb_val_000000.bin"
    if damage == "version":
        _nanogpt_shard(val, [1, 2, 3], version=7)
    elif damage == "count":
        _nanogpt_shard(val, [1, 2, 3], count=4)
    elif damage == "negative count":
        _nanogpt_shard(val, [1, 2, 3], count=-1)
    elif damage == "short header":
        val.write_bytes(np.array([20240520, 1], "<i4").tobytes())
    elif damage == "magic":
        _nanogpt_shard(val, [1, 2, 3], magic=1234)
    elif damage == "id beyond the vocabulary":
        _nanogpt_shard(val, [1, 2, 65000])
    return folder


@pytest.mark.parametrize("damage", ["version", "count", "negative count", "short header", "magic",
                                    "id beyond the vocabulary"])  # fmt: skip
def test_a_bad_token_shard_is_one_line_naming_the_file(cli, tmp_path, sp_lossless, damage):
    folder = _bad_shards(tmp_path, damage)
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", folder, "--tokenizer", sp_lossless, *TINY)
    one_line_error(r, 4, "fineweb_val_000000.bin")
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()


def test_token_shards_without_their_tokenizer_are_refused(cli, tmp_path, shards):
    folder, _, _ = shards
    r = cli("pretrain", "--run-dir", tmp_path / "run", "--corpus", folder, *TINY)
    one_line_error(r, 2, "--tokenizer", "token shards")


def test_distill_and_calibrate_read_rows_with_the_teachers_tokenizer(cli, tmp_path, sp_lossless):
    docs = _documents() * 2
    rows = _write_rows(tmp_path / "docs.jsonl.gz", [{"body": t} for t in docs])
    r = cli("pretrain", "--run-dir", tmp_path / "teacher", "--corpus", rows, "--text-field", "body",
            "--tokenizer", sp_lossless, "--val-fraction", "0.2", *TINY, "--steps", "2", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    teacher = tmp_path / "alone" / "teacher.apr"  # no run data beside it: --corpus is what is read
    teacher.parent.mkdir()
    shutil.copyfile(tmp_path / "teacher" / "model.apr", teacher)
    r = cli("distill", "--teacher", teacher, "--run-dir", tmp_path / "student", "--corpus", rows,
            "--text-field", "body", "--student-layers", "1", "--steps", "2", "--seq-len", "64", "--batch-size", "2",
            "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    read = r.json()["corpus"]
    assert read["documents"] == len(docs) and read["bytes"] == sum(len(t.encode()) for t in docs)
    r = cli("compress", teacher, "-o", tmp_path / "t.int6.apr", "--calibrate", "--calib-data", rows,
            "--text-field", "body", "--calib-tokens", "1024", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["calibration"]["source"] == str(rows)
    r = cli("compress", teacher, "-o", tmp_path / "u.int6.apr", "--calibrate", "--calib-data", rows, "--json")
    assert r.code == 4 and "'body'" in r.stdout + r.stderr  # the default field `text` is not there
