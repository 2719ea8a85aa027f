"""A model file stands on its own (issue #12 §1): the tokenizer travels inside the APR file."""

from __future__ import annotations

import base64
import json
import lzma
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _builders import metadata_bytes, replace_metadata, write
from test_hostile import one_line_error

import aprtool
from aprtool.container import constants as C
from aprtool.container.tokenizer_text import MAX_TEXT_BYTES, embedded_text
from aprtool.data.tokenizer import load_tokenizer
from aprtool.errors import FormatError
from aprtool.train.loop import pretrain


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("text")
    for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py"):
        shutil.copyfile(Path(json.__file__).parents[1] / name, corpus / name.replace("/", "_"))
    run = tmp_path_factory.mktemp("bpe") / "run"
    cfg = {"size": "tiny", "tokenizer": "bpe", "vocab_size": 300, "corpus": str(corpus), "steps": 3, "seq_len": 32,
           "batch_size": 2, "eval_tokens": 256, "val_fraction": 0.3}  # fmt: skip
    pretrain(run, cfg, log=lambda _m: None)
    return run


def test_pretrain_embeds_the_tokenizer_and_sets_has_vocab(bpe_run):
    sidecar = (bpe_run / "tokenizer.json").read_text()
    with aprtool.open_apr(bpe_run / "model.apr") as f:
        assert f.header.flags & C.FLAG_HAS_VOCAB
        assert embedded_text(f.metadata["tokenizer"]) == sidecar
        packed = f.metadata["tokenizer"]["json_xz"]  # stored xz-compressed: a fraction of the text
        assert "json" not in f.metadata["tokenizer"] and len(packed) < len(sidecar.encode()) / 2
    info = aprtool.inspect_file(bpe_run / "model.apr")
    assert info["flags"]["has_vocab"] and info["metadata"]["tokenizer"]["json"].startswith("<embedded")
    assert f"{len(sidecar.encode()):,} bytes" in info["metadata"]["tokenizer"]["json"]


def test_a_model_copied_alone_works_for_eval_compress_and_export(cli, bpe_run, tmp_path):
    alone = tmp_path / "elsewhere" / "model.apr"
    alone.parent.mkdir()
    shutil.copyfile(bpe_run / "model.apr", alone)  # no tokenizer.json, no data/ beside it
    r = cli("eval", alone, "--corpus", bpe_run / "data", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["tokens"] > 0
    r = cli("compress", alone, "-o", tmp_path / "elsewhere" / "model.int6.apr", "--min-elements", "1024")
    assert r.code == 0 and "warning" not in r.stdout, r.stdout
    for out, to in ((tmp_path / "hf", "hf"), (tmp_path / "m.gguf", "gguf")):
        r = cli("export", tmp_path / "elsewhere" / "model.int6.apr", "-o", out, "--to", to)
        assert r.code == 0, r.stderr
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == (bpe_run / "tokenizer.json").read_text()
    assert sorted(p.name for p in alone.parent.iterdir()) == ["model.apr", "model.int6.apr"]


def old_style_copy(bpe_run: Path, directory: Path) -> Path:
    """The model as files were written before: tokenizer metadata without the text, sidecar beside."""
    directory.mkdir()
    with aprtool.open_apr(bpe_run / "model.apr") as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    metadata["tokenizer"] = {k: v for k, v in metadata["tokenizer"].items() if k != "json_xz"}
    aprtool.write_apr(directory / "model.apr", tensors, metadata)
    shutil.copyfile(bpe_run / "tokenizer.json", directory / "tokenizer.json")
    return directory / "model.apr"


def test_files_written_before_keep_working_and_export_to_apr_embeds(cli, bpe_run, tmp_path):
    old = old_style_copy(bpe_run, tmp_path / "old")
    with aprtool.open_apr(old) as f:
        assert not f.header.flags & C.FLAG_HAS_VOCAB
    assert cli("eval", old, "--corpus", bpe_run / "data", "--max-tokens", "300").code == 0
    r = cli("export", old, "-o", tmp_path / "new.apr", "--to", "apr")
    assert r.code == 0, r.stderr
    with aprtool.open_apr(tmp_path / "new.apr") as f:
        assert f.header.flags & C.FLAG_HAS_VOCAB and embedded_text(f.metadata["tokenizer"]) is not None


def test_no_tokenizer_anywhere_is_one_line_with_the_fix(cli, bpe_run, tmp_path):
    old = old_style_copy(bpe_run, tmp_path / "old")
    (tmp_path / "old" / "tokenizer.json").unlink()
    line = one_line_error(cli("eval", old), 3, "does not embed", "tokenizer.json")
    assert "--to apr" in line  # the fix
    r = cli("compress", old, "-o", tmp_path / "c.apr", "--min-elements", "1024")
    assert r.code == 0 and "no tokenizer" in r.stdout  # compress still works, and says what is missing


def test_an_embedded_tokenizer_that_does_not_match_its_sha256_is_refused(cli, bpe_run, tmp_path):
    with aprtool.open_apr(bpe_run / "model.apr") as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k != "aprtool"}
    text = embedded_text(metadata["tokenizer"])
    metadata["tokenizer"]["json"] = text.replace("<|endoftext|>", "<|endoftexT|>")  # written packed again
    aprtool.write_apr(tmp_path / "m.apr", tensors, metadata)
    one_line_error(cli("eval", tmp_path / "m.apr"), 4, "embedded tokenizer does not match")


# ---------------------------------------------------------------- the tokenizer.json stored xz-compressed


def with_tokenizer(bpe_run: Path, tmp_path: Path, **fields) -> Path:
    """The run's model with its tokenizer object's embedded text replaced by `fields` (crafted bytes:
    the writer itself always stores a valid json_xz)."""
    buf = bytearray((bpe_run / "model.apr").read_bytes())
    metadata = json.loads(metadata_bytes(buf))
    tok = {k: v for k, v in metadata["tokenizer"].items() if k not in ("json", "json_xz")}
    metadata["tokenizer"] = tok | fields
    path = tmp_path / "crafted" / "model.apr"
    path.parent.mkdir(exist_ok=True)
    return write(path, replace_metadata(buf, json.dumps(metadata).encode()))


def xz_base64(data: bytes) -> str:
    return base64.b64encode(lzma.compress(data, format=lzma.FORMAT_XZ)).decode()


def tokenizer_of(path: Path):
    with aprtool.open_apr(path) as f:
        return load_tokenizer(f.metadata["tokenizer"], path.parent)


def test_a_file_with_the_tokenizer_as_plain_text_is_read_and_compress_packs_it(cli, bpe_run, tmp_path):
    sidecar = (bpe_run / "tokenizer.json").read_text()
    old = with_tokenizer(bpe_run, tmp_path, json=sidecar)  # how files were written before json_xz
    with aprtool.open_apr(old) as f:
        assert f.header.flags & C.FLAG_HAS_VOCAB and f.metadata["tokenizer"]["json"] == sidecar
    assert tokenizer_of(old).encode("def f(): pass") == tokenizer_of(bpe_run / "model.apr").encode("def f(): pass")
    assert cli("compress", old, "-o", tmp_path / "c.apr", "--min-elements", "1024").code == 0
    with aprtool.open_apr(tmp_path / "c.apr") as f:
        assert "json" not in f.metadata["tokenizer"] and embedded_text(f.metadata["tokenizer"]) == sidecar
    assert (tmp_path / "c.apr").stat().st_size < old.stat().st_size - len(sidecar) / 2
    r = cli("diff", old, bpe_run / "model.apr", "--json")  # the same tokenizer, stored two ways
    assert r.code == 0 and "tokenizer" not in r.json()["metadata_changed"], r.stdout


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"json_xz": 42}, ["json_xz", "must be a string"]),
        ({"json_xz": "not base64!"}, ["json_xz", "not base64"]),
        ({"json_xz": base64.b64encode(b"{}" * 40).decode()}, ["json_xz", "not a valid xz stream"]),
        ({"json_xz": base64.b64encode(lzma.compress(b"{}" * 4000)[:-40]).decode()}, ["json_xz", "truncated"]),
        ({"json_xz": base64.b64encode(lzma.compress(b"{}") + b"more").decode()}, ["json_xz", "follow"]),
        ({"json_xz": xz_base64("é".encode("latin-1"))}, ["json_xz", "not UTF-8"]),
        ({"json_xz": xz_base64(b"{}"), "json": "{}"}, ["both"]),
        ({"json_xz": xz_base64(b'{"model": {}}')}, ["does not match the sha256"]),
    ],
    ids=["not-a-string", "not-base64", "not-xz", "truncated", "trailing-bytes", "not-utf8", "both-keys", "wrong-sha"],
)
def test_a_malformed_packed_tokenizer_is_refused(bpe_run, tmp_path, fields, words):
    path = with_tokenizer(bpe_run, tmp_path, **fields)
    with pytest.raises(FormatError) as exc:
        tokenizer_of(path)
    for word in words:
        assert word in str(exc.value), (word, str(exc.value))


def test_a_packed_tokenizer_that_expands_past_the_limit_is_refused_at_the_limit(bpe_run, tmp_path):
    bomb = lzma.compress(bytes(3 * MAX_TEXT_BYTES), format=lzma.FORMAT_XZ, preset=1)  # ~30 KB in the file
    path = with_tokenizer(bpe_run, tmp_path, json_xz=base64.b64encode(bomb).decode())
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="decodes to more than"):
            tokenizer_of(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_TEXT_BYTES + 16 * 2**20  # stopped at the limit (its buffer, then the bytes)


def test_a_malformed_packed_tokenizer_is_one_line_from_eval_and_inspect_still_works(cli, bpe_run, tmp_path):
    path = with_tokenizer(bpe_run, tmp_path, json_xz="AAAA")
    one_line_error(cli("eval", path), 4, "tokenizer.json_xz", "xz stream")
    r = cli("inspect", path, "--json")
    assert r.code == 0 and "unreadable" in r.json()["metadata"]["tokenizer"]["json"]


def test_verify_checks_the_embedded_tokenizer(cli, bpe_run, tmp_path):
    r = cli("verify", bpe_run / "model.apr", "--json")
    assert r.code == 0 and any(c["name"] == "tokenizer" and c["passed"] for c in r.json()["checks"]), r.stdout
    path = with_tokenizer(bpe_run, tmp_path, json_xz=xz_base64(b'{"model": {}}'))  # CRCs fine, wrong text
    r = cli("verify", path, "--json")
    assert r.code == 4 and any("does not match the sha256" in e for e in r.json()["errors"]), r.stdout
