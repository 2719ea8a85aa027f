"""Data at scale (issue #13 item 12): a split is read through memory maps shard by shard, never
concatenated, and a corpus is tokenized as it streams in. Peak memory is measured in
benchmarks/bench_data.py; here, that the streamed and mapped data are exactly the data."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

import aprtool.data.prepare as prepare
from aprtool.data.corpus import split_by_file, text_files
from aprtool.data.loader import BatchLoader, LoaderState, eval_windows
from aprtool.data.shards import ShardedTokens, read_shard, write_shard

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture
def three_shards(tmp_path) -> tuple[ShardedTokens, np.ndarray]:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 257, size=n, dtype=np.uint16) for n in (1000, 1, 2345)]
    for i, part in enumerate(parts):
        write_shard(tmp_path / f"train-{i:04d}.tok", part, 257)
    write_shard(tmp_path / "empty.tok", np.zeros(0, np.uint16), 257)
    maps = [read_shard(tmp_path / f"train-{i:04d}.tok")[0] for i in range(3)] + [read_shard(tmp_path / "empty.tok")[0]]
    return ShardedTokens(maps), np.concatenate(parts)


def test_sharded_tokens_slices_across_shard_boundaries_equal_the_concatenation(three_shards):
    tokens, whole = three_shards
    assert len(tokens) == whole.size == 3346
    for start, stop in [(0, 10), (995, 1005), (999, 1002), (1000, 1001), (990, 3346), (0, 3346), (3340, 4000),
                        (5, 5), (3346, 3346), (-20, None)]:  # fmt: skip
        assert np.array_equal(tokens[start:stop], whole[start:stop]), (start, stop)
    assert np.array_equal(np.asarray(tokens, dtype=np.int64), whole.astype(np.int64))
    with pytest.raises(ValueError):
        tokens[::2]


def test_batches_and_held_out_windows_from_mapped_shards_are_those_of_the_whole_array(three_shards):
    tokens, whole = three_shards
    a = BatchLoader(tokens, 16, 4, 0, LoaderState())
    b = BatchLoader(whole, 16, 4, 0, LoaderState())
    for _ in range(120):  # several epochs, windows crossing every shard boundary
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert np.array_equal(eval_windows(tokens, 16, 10**6), eval_windows(whole, 16, 10**6))


def test_a_corpus_streams_into_shards_holding_exactly_its_documents(tmp_path, monkeypatch):
    """Tiny shards and encode batches: the streamed shards hold each training file's bytes then EOS, in order."""
    source = tmp_path / "text"
    source.mkdir()
    for name in ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "heapq.py", "this.py", "bisect.py"]:
        (source / name).write_bytes((STDLIB / name).read_bytes())
    (source / "empty.txt").write_text("")
    monkeypatch.setattr(prepare, "SHARD_TOKENS", 4096)
    monkeypatch.setattr(prepare, "ENCODE_CHARS", 10_000)
    corpus = prepare.prepare_corpus(source, tmp_path / "data", tokenizer="bytes", val_fraction=0.2)
    files = text_files(source)
    train_files, _ = split_by_file(files, source, 0.2)
    docs = [np.frombuffer(p.read_bytes(), np.uint8).astype(np.uint16) for p in train_files if p.stat().st_size]
    expected = np.concatenate([part for doc in docs for part in (doc, np.array([256], np.uint16))])
    shards = corpus.manifest["splits"]["train"]
    assert len(shards) > 3 and all(s["tokens"] == 4096 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 4096
    train = corpus.tokens("train")
    assert isinstance(train, ShardedTokens) and len(train) == expected.size
    assert np.array_equal(train[0 : len(train)], expected)
