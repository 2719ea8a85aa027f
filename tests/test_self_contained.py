"""A model file stands on its own (issue #12 §1): the tokenizer travels inside the APR file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_hostile import one_line_error

import aprtool
from aprtool.container import constants as C
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
        assert f.metadata["tokenizer"]["json"] == sidecar
    info = aprtool.inspect_file(bpe_run / "model.apr")
    assert info["flags"]["has_vocab"] and info["metadata"]["tokenizer"]["json"].startswith("<embedded")


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
    metadata["tokenizer"] = {k: v for k, v in metadata["tokenizer"].items() if k != "json"}
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
        assert f.header.flags & C.FLAG_HAS_VOCAB and "json" in f.metadata["tokenizer"]


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
    metadata["tokenizer"]["json"] = metadata["tokenizer"]["json"].replace("<|endoftext|>", "<|endoftexT|>")
    aprtool.write_apr(tmp_path / "m.apr", tensors, metadata)
    one_line_error(cli("eval", tmp_path / "m.apr"), 4, "embedded tokenizer does not match")
