"""Turn a corpus (a directory of text files, or the default) into tokenized shards + a manifest.

Layout of a prepared directory:
    manifest.json      what is in it: tokenizer, splits, the source's fingerprint
    tokenizer.json     (BPE only) the trained tokenizer
    train-NNNN.tok     token shards, documents separated by the EOS token
    val-NNNN.tok
A prepared directory can itself be passed as `--corpus`; it is then used as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.atomic import atomic_write_text, temp_path
from aprtool.data.corpus import split_by_file
from aprtool.data.documents import DEFAULT_TEXT_FIELD, SIDES, Documents, Tally, check_sides, files_fingerprint
from aprtool.data.shards import ShardedTokens, ShardWriter, checked_nanogpt, max_token, nanogpt_shards, read_shard
from aprtool.data.token_bytes import token_bytes
from aprtool.data.tokenizer import (
    TOKENIZER_FILE,
    BpeTokenizer,
    ByteTokenizer,
    check_tokenizer_info,
    file_sha256,
    load_tokenizer,
)
from aprtool.errors import FormatError, UsageError
from aprtool.paths import read_json

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"(train|val)-\d{4,}\.(tok|bin)")  # .bin: a modded-nanogpt shard, linked as it was
SHARD_TOKENS = 4 * 1024 * 1024
ENCODE_CHARS = 16 * 1024 * 1024  # text tokenized per batch: memory stays flat however large the corpus
FORMAT = "aprtool-shards"


@dataclass(frozen=True)
class PreparedCorpus:
    directory: Path
    manifest: dict[str, Any]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.directory / s["file"] for s in self.manifest["splits"][split]]

    def tokens(self, split: str) -> ShardedTokens:
        """The split's tokens (documents in order, EOS between them), memory-mapped shard by shard:
        a 200 M-token split costs no more memory than the windows read from it."""
        return ShardedTokens([read_shard(p)[0] for p in self.shard_paths(split)])

    def tokenizer(self):
        return load_tokenizer(self.manifest["tokenizer"], self.directory)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _text_sha256(tokenizer: Any) -> str | None:
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest() if tokenizer.kind != "bytes" else None


def _check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Types, the tokenizer entry, and shard names: only `train-NNNN.tok` / `val-NNNN.tok` in the same
    directory, so a manifest can never point the reader at another file."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path}: not an aprtool shard manifest")
    if not isinstance(manifest.get("fingerprint"), str):
        raise FormatError(f"{path}: fingerprint is missing or not a string")
    check_tokenizer_info(manifest.get("tokenizer"), f"{path}: tokenizer")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise FormatError(f"{path}: splits is missing or not an object")
    for split in ("train", "val"):
        shards = splits.get(split)
        if not isinstance(shards, list):
            raise FormatError(f"{path}: splits.{split} is missing or not a list")
        for shard in shards:
            name = shard.get("file") if isinstance(shard, dict) else None
            if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or not name.startswith(split):
                raise FormatError(f"{path}: splits.{split}: {str(name)[:60]!r} is not a {split}-NNNN.tok shard name")
    return manifest


def load_prepared(directory: Path) -> PreparedCorpus:
    path = directory / MANIFEST
    manifest = read_json(path)
    corpus = PreparedCorpus(directory, _check_manifest(manifest, path))
    vocab = manifest["tokenizer"]["vocab_size"]
    for split in ("train", "val"):
        for p in corpus.shard_paths(split):
            tokens, shard_vocab = read_shard(p)  # header and size checks
            if (shard_vocab is not None and shard_vocab != vocab) or max_token(tokens) >= vocab:
                raise FormatError(f"{p}: holds token ids outside the manifest's vocabulary of {vocab}")
    return corpus


def _link_prepared(corpus: PreparedCorpus, out_dir: Path) -> PreparedCorpus:
    """`corpus` in `out_dir` as well: hard links where the file system allows, copies otherwise; each
    file replaced atomically and the manifest written last, so a crash leaves no half-linked corpus."""
    if out_dir.resolve() == corpus.directory.resolve():
        return corpus
    if (out_dir / MANIFEST).is_file():
        existing = load_prepared(out_dir)
        if existing.fingerprint == corpus.fingerprint:
            return existing
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [p.name for split in ("train", "val") for p in corpus.shard_paths(split)]
    if corpus.manifest["tokenizer"]["kind"] != "bytes":
        names.append(TOKENIZER_FILE)
    for name in names:
        _link_file(corpus.directory / name, out_dir / name)
    atomic_write_text(out_dir / MANIFEST, json.dumps(corpus.manifest, indent=1) + "\n")
    return load_prepared(out_dir)


def _link_file(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` where the file system allows, a copy otherwise; replaced atomically."""
    tmp = temp_path(target)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _adopt_shards(source: Path, found: dict[str, list[Path]], out_dir: Path, tokenizer: str | Any,
                  log: Any) -> PreparedCorpus:  # fmt: skip
    """modded-nanogpt shards used as they are (linked into `out_dir`, memory-mapped, never re-tokenized), with
    the tokenizer they were made with: every id is checked below its vocabulary."""
    if tokenizer == "bpe":
        raise UsageError(f"--corpus {source} holds token shards: --tokenizer must name the tokenizer they were made "
                         "with (a tokenizer.json or SentencePiece .model)")  # fmt: skip
    tok = ByteTokenizer() if tokenizer == "bytes" or getattr(tokenizer, "kind", None) == "bytes" else tokenizer
    files = [p for side in SIDES for p in found[side]]
    settings = {"tokenizer": tok.kind, "sha256": _text_sha256(tok), "format": "modded-nanogpt"}
    fingerprint = files_fingerprint(files, source, settings)
    if (out_dir / MANIFEST).is_file() and (existing := load_prepared(out_dir)).fingerprint == fingerprint:
        return existing
    if log:
        log(f"using {len(files)} token shards from {source} as they are ({tok.kind}, vocab {tok.vocab_size})")
    table = token_bytes(tok)
    start = (tok.frame()[0] or tok.frame()[1])[0]  # the boundary token each document begins (or ends) with
    splits: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    read = {side: Tally() for side in SIDES}
    out_dir.mkdir(parents=True, exist_ok=True)
    for side in SIDES:
        checked = checked_nanogpt(found[side], tok.vocab_size, "the --tokenizer's")
        for i, (path, tokens) in enumerate(zip(found[side], checked, strict=True)):
            read[side].documents += int(np.count_nonzero(tokens == start))
            read[side].bytes += _token_bytes(table, tokens, start)
            name = f"{side}-{i:04d}.bin"
            _link_file(path, out_dir / name)
            splits[side].append({"file": name, "tokens": int(len(tokens)), "source": path.name})
    info = tok.info()
    if tok.kind != "bytes":
        tok.save(out_dir / TOKENIZER_FILE)
        info |= {"file": TOKENIZER_FILE, "sha256": file_sha256(out_dir / TOKENIZER_FILE)}
    manifest = {"format": FORMAT, "version": 1, "fingerprint": fingerprint,
                "source": {"root": str(source), "kind": "token-shards", "files": len(files), "default": False},
                "split": {"by": "file name (_train_ / _val_)"}, "tokenizer": info, "splits": splits,
                "tokens": {k: sum(s["tokens"] for s in v) for k, v in splits.items()},
                "read": _tally_record(read)}  # fmt: skip
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return load_prepared(out_dir)


def _token_bytes(table: Any, tokens: np.ndarray, boundary: int, chunk: int = 1 << 22) -> int:
    """The bytes a shard's tokens stand for (the first one after a boundary), a chunk at a time."""
    total, previous = 0, boundary
    for i in range(0, len(tokens), chunk):
        part = np.asarray(tokens[i : i + chunk], np.int64)
        before = np.concatenate([[previous], part[:-1]])
        total += int(table.of(part, before).sum())
        previous = int(part[-1])
    return total


def _write_splits(directory: Path, tok: Any, documents: Iterator[tuple[str, str]]) -> dict[str, list[dict]]:
    """Tokenize (side, text) documents in batches of about ENCODE_CHARS characters per side straight into
    each side's shards, in one pass over the corpus."""
    writers = {side: ShardWriter(directory, side, tok.frame(), tok.vocab_size, SHARD_TOKENS) for side in SIDES}
    batches: dict[str, list[str]] = {side: [] for side in SIDES}
    sizes = dict.fromkeys(SIDES, 0)

    def flush(side: str) -> None:
        for doc in tok.encode_batch(batches[side]) if batches[side] else []:
            writers[side].add(doc)
        batches[side], sizes[side] = [], 0

    for side, text in documents:
        batches[side].append(text)
        sizes[side] += len(text)
        if sizes[side] >= ENCODE_CHARS:
            flush(side)
    for side in SIDES:
        flush(side)
    return {side: writer.close() for side, writer in writers.items()}


def _tokenizer_for(out_dir: Path, documents: Documents, tokenizer: str | Any, vocab_size: int, val_fraction: float):
    """(tokenizer, its manifest entry): the one given, bytes, or a BPE trained on the training side (streamed);
    a tokenizer.json is written beside the shards for every kind but bytes."""
    if tokenizer == "bytes" or getattr(tokenizer, "kind", None) == "bytes":
        tok: Any = ByteTokenizer()
        return tok, tok.info()
    if tokenizer == "bpe":
        tok = BpeTokenizer.train(documents.texts(val_fraction, ("train",)), vocab_size)
        documents.tally["train"] = Tally()  # counted again when the shards are written
    else:
        tok = tokenizer
    tok.save(out_dir / TOKENIZER_FILE)
    return tok, tok.info() | {"file": TOKENIZER_FILE, "sha256": file_sha256(out_dir / TOKENIZER_FILE)}


def corpus_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a prepared corpus read: documents, their UTF-8 bytes, tokens per side, rows skipped (the summary's
    `corpus`, so a user can check that nothing was lost)."""
    read = manifest.get("read") or {}
    tokens = manifest.get("tokens") or {}
    return {**{k: read.get(k) for k in ("documents", "bytes", "skipped")},
            "train_tokens": tokens.get("train"), "val_tokens": tokens.get("val")}  # fmt: skip


def prepare_corpus(
    source: Path | None,
    out_dir: Path,
    *,
    tokenizer: str | Any = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    text_field: str = DEFAULT_TEXT_FIELD,
    log: Any = None,
) -> PreparedCorpus:
    """Prepare `source` (None: the default corpus; a directory of text files; a .parquet / .jsonl(.gz) file or
    a directory of them, one document per row from `text_field`) into `out_dir`, or reuse what is there. A
    prepared `source` is linked into `out_dir`, so a run directory holds its own data (resume needs no path).
    `tokenizer`: bpe (trained on the training split), bytes, or a tokenizer object to use as it is (a
    model's own: continued pretraining, a foreign teacher; a --tokenizer file)."""
    if source is not None and (source / MANIFEST).is_file():
        return _link_prepared(load_prepared(source), out_dir)
    if source is not None and (found := nanogpt_shards(source)) is not None:
        return _adopt_shards(source, found, out_dir, tokenizer, log)
    given = None if isinstance(tokenizer, str) else tokenizer
    if given is None and tokenizer not in ("bpe", "bytes"):
        raise UsageError(f"--tokenizer {tokenizer!r}: choose bpe, bytes or a tokenizer file")
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    documents = Documents.open(source, text_field)
    settings = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    if given is not None:  # the tokenizer itself is a setting: its text's digest
        settings = {"tokenizer": given.kind, "sha256": _text_sha256(given), "val_fraction": val_fraction}
    fingerprint = documents.fingerprint(settings)
    if (out_dir / MANIFEST).is_file():
        existing = load_prepared(out_dir)
        if existing.fingerprint == fingerprint:
            return existing
    if documents.kind == "text":
        split_by_file(documents.files, documents.root, val_fraction)  # at least two files, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    if log:
        vocab = given.vocab_size if given else vocab_size if tokenizer == "bpe" else ByteTokenizer.vocab_size
        log(f"tokenizing {len(documents.files)} {documents.kind} files from {documents.root} "
            f"({settings['tokenizer']}, vocab {vocab})")  # fmt: skip
    tok, info = _tokenizer_for(out_dir, documents, given or tokenizer, vocab_size, val_fraction)
    splits = _write_splits(out_dir, tok, documents.stream(val_fraction))
    check_sides(documents, documents.root)
    skipped = sum(t.skipped for t in documents.tally.values())
    if skipped and log:
        what = f"rows whose {documents.text_field!r} is not a string" if documents.kind == "records" else \
            "files that are not UTF-8 text"  # fmt: skip
        log(f"WARNING: {skipped:,} {what} were skipped (the summary's corpus.skipped)")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "fingerprint": fingerprint,
        "source": documents.describe(),
        "split": _split_record(documents, val_fraction),
        "tokenizer": info,
        "splits": splits,
        "tokens": {k: sum(s["tokens"] for s in v) for k, v in splits.items()},
        "read": _read_record(documents),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return PreparedCorpus(out_dir, manifest)


def _split_record(documents: Documents, val_fraction: float) -> dict[str, Any]:
    if documents.kind != "text":
        return {"by": "document", "val_fraction": val_fraction, "key": "sha256 of FILE#ROW"}
    train, val = split_by_file(documents.files, documents.root, val_fraction)
    return {"by": "file", "val_fraction": val_fraction,
            "train_files": [p.relative_to(documents.root).as_posix() for p in train],
            "val_files": [p.relative_to(documents.root).as_posix() for p in val]}  # fmt: skip


def _read_record(documents: Documents) -> dict[str, Any]:
    return _tally_record(documents.tally)


def _tally_record(tally: dict[str, Tally]) -> dict[str, Any]:
    total = {k: sum(t.as_dict()[k] for t in tally.values()) for k in ("documents", "bytes", "skipped")}
    return total | {side: t.as_dict() for side, t in tally.items()}
