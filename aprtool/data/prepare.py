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

from aprtool.atomic import atomic_write_text, temp_path
from aprtool.data.corpus import (
    default_corpus_files,
    default_corpus_root,
    read_text,
    split_by_file,
    text_files,
)
from aprtool.data.shards import ShardedTokens, ShardWriter, read_shard
from aprtool.data.tokenizer import (
    TOKENIZER_FILE,
    BpeTokenizer,
    ByteTokenizer,
    check_tokenizer_info,
    file_sha256,
    load_tokenizer,
)
from aprtool.errors import FileAccessError, FormatError, UsageError
from aprtool.paths import read_input

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"(train|val)-\d{4,}\.tok")
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


def _source_fingerprint(files: list[Path], root: Path, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


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
    try:
        manifest = json.loads(read_input(path))
    except ValueError as exc:
        raise FormatError(f"{path}: invalid JSON ({str(exc)[:120]})") from None
    corpus = PreparedCorpus(directory, _check_manifest(manifest, path))
    vocab = manifest["tokenizer"]["vocab_size"]
    for split in ("train", "val"):
        for p in corpus.shard_paths(split):
            tokens, shard_vocab = read_shard(p)  # header and size checks
            if shard_vocab != vocab or (tokens.size and int(tokens.max()) >= vocab):
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
        tmp = temp_path(out_dir / name)
        try:
            os.link(corpus.directory / name, tmp)
        except OSError:
            shutil.copyfile(corpus.directory / name, tmp)
        os.replace(tmp, out_dir / name)
    atomic_write_text(out_dir / MANIFEST, json.dumps(corpus.manifest, indent=1) + "\n")
    return load_prepared(out_dir)


def _texts(files: list[Path]) -> Iterator[str]:
    """The files' text, one file at a time (unreadable and empty files are skipped)."""
    for path in files:
        if text := read_text(path):
            yield text


def _write_split(directory: Path, split: str, tok: Any, files: list[Path]) -> list[dict]:
    """Tokenize `files` in batches of about ENCODE_CHARS characters straight into shards."""
    writer = ShardWriter(directory, split, tok.frame(), tok.vocab_size, SHARD_TOKENS)
    batch: list[str] = []
    size = 0
    for text in _texts(files):
        batch.append(text)
        size += len(text)
        if size >= ENCODE_CHARS:
            for doc in tok.encode_batch(batch):
                writer.add(doc)
            batch, size = [], 0
    for doc in tok.encode_batch(batch) if batch else []:
        writer.add(doc)
    return writer.close()


def prepare_corpus(
    source: Path | None,
    out_dir: Path,
    *,
    tokenizer: str | Any = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    log: Any = None,
) -> PreparedCorpus:
    """Prepare `source` (None: the default corpus) into `out_dir`, or reuse what is there. A prepared
    `source` is linked into `out_dir`, so a run directory holds its own data (resume needs no path).
    `tokenizer`: bpe (trained on the training split), bytes, or a tokenizer object to use as it is (a
    model's own: continued pretraining, a foreign teacher)."""
    if source is not None and (source / MANIFEST).is_file():
        return _link_prepared(load_prepared(source), out_dir)
    if source is not None and not source.is_dir():
        raise FileAccessError(f"--corpus {source}: not a directory")
    given = None if isinstance(tokenizer, str) else tokenizer
    if given is None and tokenizer not in ("bpe", "bytes"):
        raise UsageError(f"--tokenizer {tokenizer!r}: choose bpe or bytes")
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    root = default_corpus_root() if source is None else source
    files = default_corpus_files() if source is None else text_files(source)
    settings = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    if given is not None:  # the tokenizer itself is a setting: its text's digest
        settings = {"tokenizer": given.kind, "sha256": _text_sha256(given), "val_fraction": val_fraction}
    fingerprint = _source_fingerprint(files, root, settings)
    if (out_dir / MANIFEST).is_file():
        existing = load_prepared(out_dir)
        if existing.fingerprint == fingerprint:
            return existing
    train_files, val_files = split_by_file(files, root, val_fraction)
    if not any(read_text(p) for p in train_files) or not any(read_text(p) for p in val_files):
        raise UsageError(f"corpus {root}: no readable UTF-8 text on one side of the held-out split")
    out_dir.mkdir(parents=True, exist_ok=True)
    if log:
        vocab = given.vocab_size if given else vocab_size if tokenizer == "bpe" else ByteTokenizer.vocab_size
        log(f"tokenizing {len(files)} files from {root} ({settings['tokenizer']}, vocab {vocab})")
    if given is not None:
        tok = given
        info = tok.info()
        if tok.kind != "bytes":
            tok.save(out_dir / TOKENIZER_FILE)
            info |= {"file": TOKENIZER_FILE, "sha256": file_sha256(out_dir / TOKENIZER_FILE)}
    elif tokenizer == "bytes":
        tok: ByteTokenizer | BpeTokenizer = ByteTokenizer()
        info = tok.info()
    else:
        tok = BpeTokenizer.train(_texts(train_files), vocab_size)  # the training split only, streamed
        tok.save(out_dir / "tokenizer.json")
        info = tok.info() | {"file": "tokenizer.json", "sha256": file_sha256(out_dir / "tokenizer.json")}
    splits = {
        "train": _write_split(out_dir, "train", tok, train_files),
        "val": _write_split(out_dir, "val", tok, val_files),
    }
    manifest = {
        "format": FORMAT,
        "version": 1,
        "fingerprint": fingerprint,
        "source": {"root": str(root), "files": len(files), "default": source is None},
        "split": {
            "by": "file",
            "val_fraction": val_fraction,
            "train_files": [p.relative_to(root).as_posix() for p in train_files],
            "val_files": [p.relative_to(root).as_posix() for p in val_files],
        },
        "tokenizer": info,
        "splits": splits,
        "tokens": {k: sum(s["tokens"] for s in v) for k, v in splits.items()},
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return PreparedCorpus(out_dir, manifest)
